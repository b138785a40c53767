"""Inference-only benchmark: the pipeline against the reference strategy, side by side.

Both run in the same process on the same uploads, with the same models and thread count, so
their ratio is meaningful on a noisy shared machine even when absolute times drift.

Real photographs come first (a ``cases.json``: each case's target photo is an upload, its source
photo and boxes the catalogue); generated scenes are the second table. The reference strategy
runs on both of its paths: early exit after the coarse grid (its best case) and the full coarse +
fine + ultra-fine search. Each decodes uploads the way its service does: the pipeline as the
worker's fetcher does (reduced to the working resolution), the reference at full size.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from inference.config import DetectorRuntime, ModelConfig, PipelineConfig
from inference.detector import YoloDetector
from inference.embedder import ClipEmbedder
from inference.geometry import GeometricVerifier
from inference.offline_models import build_clip, build_yolo
from inference.pipeline import Pipeline
from inference.types import MatchRequest, MatchResult, SourceImage, SourceTag
from streams.fetch.decode import DecodedImage, decode_image
from workbench.evaluation import SAMPLE_CASES, load_cases
from workbench.reference import ReferenceMatcher
from workbench.scenes import make_demo_set

Progress = Callable[[str], None]
Decoder = Callable[[bytes], DecodedImage]
Strategy = Callable[[Sequence[MatchRequest]], list[MatchResult]]


@dataclass(frozen=True)
class BenchConfig:
    detectors: tuple[str, ...] = ("yolo26n", "yolo26m")
    # Real photographs: every case of this file with boxes is one upload with 1-3 tags.
    cases: Path = SAMPLE_CASES
    # Uploads the reference runs on, spread evenly over the photos (its full path costs 10-60 s each).
    reference_uploads: int = 4
    reference_full_uploads: int = 2
    # Also measured with the first detector: the pipeline with geometry switched off, so every
    # tag is searched by CLIP (a catalogue of textureless products, the pipeline's worst case).
    clip_only: bool = True
    generated: bool = True
    generated_uploads: int = 8
    batch_size: int = 4
    tags_per_upload: int = 3
    working_max_side: int = 2048  # as the worker's fetcher reduces photos (``TAGSTREAM_FETCH__WORKING_MAX_SIDE``)
    precision: str = "fp32"
    device: str = "cpu"
    # ``ModelConfig.detector_runtime``: the pipeline and the reference share the detector instances.
    detector_runtime: DetectorRuntime = "auto"
    seed: int = 11


@dataclass(frozen=True)
class BenchUpload:
    """One upload as it arrives: the target photo's bytes and its catalogue photos' bytes with their tags."""

    name: str
    target: bytes
    sources: tuple[tuple[str, bytes, tuple[SourceTag, ...]], ...]


@dataclass
class StrategyRun:
    uploads: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds per upload (its batch's time in a batch)
    stage_ms: dict[str, float] = field(default_factory=dict)
    crops: int | None = None

    @property
    def uploads_per_s(self) -> float:
        return self.uploads / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        per_upload = {k: round(v / max(self.uploads, 1), 2) for k, v in sorted(self.stage_ms.items())}
        report: dict[str, Any] = {
            "uploads": self.uploads,
            "seconds": round(self.seconds, 3),
            "uploads_per_s": round(self.uploads_per_s, 4),
            "ms_per_upload": round(1000 * self.seconds / max(self.uploads, 1), 1),
            "latency_ms": _percentiles(self.latencies),
            "stage_ms_per_upload": per_upload,
        }
        if self.crops is not None:
            report["crops_per_upload"] = round(self.crops / max(self.uploads, 1), 1)
        return report


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    values = np.array(seconds) * 1000
    return {p: round(float(np.percentile(values, q)), 1) for p, q in (("p50", 50), ("p95", 95))}


def photo_uploads(cases_json: Path) -> list[BenchUpload]:
    """Every case with boxes: its target photo is the upload, its source photo and boxes the catalogue."""
    uploads = []
    for case in load_cases(cases_json):
        if not case.boxes:
            continue
        tags = tuple(SourceTag(box.box_id, box.source_box) for box in case.boxes)
        source = (str(case.source_path), case.source_path.read_bytes(), tags)
        uploads.append(BenchUpload(case.case_id, case.target_path.read_bytes(), (source,)))
    return uploads


def generated_uploads(config: BenchConfig) -> list[BenchUpload]:
    """Generated 640x480 scenes (JPEG) with ``tags_per_upload`` catalogued products, one catalogue photo each."""
    demo = make_demo_set(seed=config.seed, n_products=config.tags_per_upload, n_uploads=config.generated_uploads)
    sources = tuple((s.key, _png(s.image), s.tags) for s in demo.source_images())
    return [
        BenchUpload(name, _jpeg(image), sources)
        for name, image in sorted(demo.uploads.items())[: config.generated_uploads]
    ]


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def worker_decoder(max_side: int) -> Decoder:
    """Decoding as the worker's fetcher does it: upright, reduced to ``max_side`` (JPEG in the DCT)."""
    return lambda data: decode_image(data, max_pixels=sys.maxsize, max_side=max_side, url="bench")


def full_decoder(data: bytes) -> DecodedImage:
    """Decoding as the reference service did it: the whole photo, ``Image.open(...).convert("RGB")``."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    return DecodedImage(pixels, pixels.shape[1], pixels.shape[0], 1.0)


def run_strategy(
    run: Strategy,
    uploads: Sequence[BenchUpload],
    decode: Decoder,
    batch_size: int,
    crops: Callable[[], int] | None = None,
) -> StrategyRun:
    """Uploads in order, ``batch_size`` at a time; target decoding is timed, catalogue photos come decoded.

    A worker caches decoded catalogue photos; uploads arrive as bytes.
    """
    sources: dict[str, SourceImage] = {}
    for upload in uploads:
        for key, data, tags in upload.sources:
            if key not in sources:
                decoded = decode(data)
                sources[key] = SourceImage(key, decoded.pixels, tags, decoded.scale)
    crops_before = crops() if crops else 0
    stages: dict[str, float] = {}
    latencies: list[float] = []
    start = time.perf_counter()
    for offset in range(0, len(uploads), batch_size):
        chunk = uploads[offset : offset + batch_size]
        batch_start = time.perf_counter()
        targets = [decode(upload.target) for upload in chunk]
        stages["fetch_decode"] = stages.get("fetch_decode", 0.0) + (time.perf_counter() - batch_start) * 1000
        requests = [
            MatchRequest(
                upload.name,
                target.pixels,
                tuple(replace(sources[key], tags=tags) for key, _, tags in upload.sources),
                target_scale=target.scale,
            )
            for upload, target in zip(chunk, targets, strict=True)
        ]
        for result in run(requests):
            for name, ms in result.stage_ms.items():
                stages[name] = stages.get(name, 0.0) + ms
        latencies += [time.perf_counter() - batch_start] * len(chunk)
    elapsed = time.perf_counter() - start
    return StrategyRun(len(uploads), elapsed, latencies, stages, crops() - crops_before if crops else None)


def _spread(count: int, total: int) -> list[int]:
    """``count`` indices spread evenly over ``total`` uploads, so sizes and tag counts vary as in the whole set.

    Fewer indices are nested in more (0 and the last one always), so both reference paths share uploads.
    """
    if count >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})


def run_benchmark(config: BenchConfig, model_dir: Path, progress: Progress = print) -> dict[str, Any]:
    threads = torch.get_num_threads()
    photos = photo_uploads(config.cases)
    if not photos:
        raise ValueError(f"no case with boxes in {config.cases}")
    progress(f"building random-init models (CLIP ViT-B/32, {', '.join(config.detectors)}) in {model_dir}")
    clip_path = build_clip(model_dir, tiny=False)
    embedder = ClipEmbedder(str(clip_path), config.device, config.precision, threads)
    detectors = {
        name: YoloDetector(
            str(build_yolo(model_dir, name)),
            config.device,
            torch_threads=threads,
            runtime=config.detector_runtime,
            export_dir=model_dir.parent / "onnx",
        )
        for name in config.detectors
    }
    runtimes = sorted({detector.runtime for detector in detectors.values()})
    report: dict[str, Any] = {
        "machine": {
            "torch_threads": threads,
            "device": config.device,
            "precision": config.precision,
            "detector_runtime": ",".join(runtimes),
        },
        "photos": {"inputs": _photo_inputs(config.cases, photos), "detectors": {}},
    }
    for name, detector in detectors.items():
        progress(f"[photos, {name}]")
        report["photos"]["detectors"][name] = _compare(name, detector, embedder, photos, config, progress)
    for key in ("speedup_vs_reference_best", "speedup_vs_reference_full"):
        report["photos"][key] = min(d[key] for d in report["photos"]["detectors"].values())
    if config.generated:
        _generated(report, detectors, embedder, config, progress)
    return report


def _generated(
    report: dict[str, Any],
    detectors: dict[str, YoloDetector],
    embedder: ClipEmbedder,
    config: BenchConfig,
    progress: Progress,
) -> None:
    """The second table, in the report's original keys (``inputs``, ``detectors``, ``speedup_vs_reference``)."""
    uploads = generated_uploads(config)
    report["inputs"] = {"uploads": len(uploads), "tags_per_upload": config.tags_per_upload, "image": "640x480 JPEG"}
    report["detectors"] = {}
    for name, detector in detectors.items():
        progress(f"[generated, {name}]")
        generated = replace(config, reference_uploads=1, reference_full_uploads=1)
        measured = _compare(name, detector, embedder, uploads, generated, progress)
        measured["reference"] = measured["reference_full"]
        # As before photographs were measured: micro-batched pipeline throughput over the full path's.
        measured["speedup_vs_reference"] = measured["speedup_warm_vs_reference_full"]
        report["detectors"][name] = measured
        if config.clip_only and name == config.detectors[0]:
            progress(f"[generated, {name}] pipeline with geometry off (every tag searched by CLIP)")
            pipeline = _clip_only(_pipeline(name, detector, embedder, config))
            decode = worker_decoder(config.working_max_side)
            searched = run_strategy(pipeline.run, uploads, decode, config.batch_size)
            full_per_s = measured["reference_full"]["uploads_per_s"]
            report["clip_only"] = {
                "detector": name,
                "pipeline": searched.to_json(),
                "speedup_vs_reference": round(searched.uploads_per_s / full_per_s, 1),
            }
    report["speedup_vs_reference"] = min(d["speedup_vs_reference"] for d in report["detectors"].values())


def _compare(
    name: str,
    detector: YoloDetector,
    embedder: ClipEmbedder,
    uploads: Sequence[BenchUpload],
    config: BenchConfig,
    progress: Progress,
) -> dict[str, Any]:
    """The pipeline twice (from empty caches one upload at a time, then warm in batches) and both reference paths.

    The first pass is what a freshly started worker does with these uploads: catalogue features
    are computed where a catalogue photo first appears and reused after, as in a stream. The
    second is a worker whose catalogue is cached, taking micro-batches.
    """
    pipeline = _pipeline(name, detector, embedder, config)
    decode = worker_decoder(config.working_max_side)
    _warm_up(pipeline, uploads, decode, config)
    progress(f"  pipeline, empty caches, one upload at a time: {len(uploads)} uploads")
    first = run_strategy(pipeline.run, uploads, decode, 1)
    progress(f"  pipeline, warm, batches of {config.batch_size}")
    warm = run_strategy(pipeline.run, uploads, decode, config.batch_size)
    best_matcher = ReferenceMatcher(detector, embedder, full_search=False)
    full_matcher = ReferenceMatcher(detector, embedder, full_search=True)
    best_at = _spread(config.reference_uploads, len(uploads))
    full_at = _spread(config.reference_full_uploads, len(uploads))
    progress(f"  reference, best path (coarse grid, early exit): {len(best_at)} uploads")
    best = run_strategy(best_matcher.run, [uploads[i] for i in best_at], full_decoder, 1, lambda: best_matcher.crops)
    progress(f"  reference, full path (coarse + fine + ultra-fine): {len(full_at)} uploads")
    full = run_strategy(full_matcher.run, [uploads[i] for i in full_at], full_decoder, 1, lambda: full_matcher.crops)
    measured: dict[str, Any] = {
        "pipeline_first_pass": first.to_json(),
        "pipeline": warm.to_json(),
        "reference_best": {**best.to_json(), "upload_indices": best_at},
        "reference_full": {**full.to_json(), "upload_indices": full_at},
        # Same uploads on both sides: the reference's time over the pipeline's first-pass time on them.
        "speedup_vs_reference_best": _same_uploads_ratio(first, best, best_at),
        "speedup_vs_reference_full": _same_uploads_ratio(first, full, full_at),
        # A worker with its catalogue cached, in micro-batches, over all uploads, against the reference's rate.
        "speedup_warm_vs_reference_best": _ratio(warm, best),
        "speedup_warm_vs_reference_full": _ratio(warm, full),
    }
    progress(
        f"  pipeline {first.uploads_per_s:.2f} uploads/s (warm {warm.uploads_per_s:.2f}), p50 "
        f"{measured['pipeline_first_pass']['latency_ms']['p50']:.0f} ms; reference best "
        f"{best.uploads_per_s:.3f}/s, full {full.uploads_per_s:.4f}/s: on the same uploads "
        f"{measured['speedup_vs_reference_best']}x best, {measured['speedup_vs_reference_full']}x full"
    )
    return measured


def _warm_up(pipeline: Pipeline, uploads: Sequence[BenchUpload], decode: Decoder, config: BenchConfig) -> None:
    """The pipeline's warm-up at every input shape of the measured passes (their shapes, never their pixels).

    The reference is measured after the pipeline, on models and code the pipeline's passes have
    already warmed; without this the pipeline's first upload alone would pay the process's
    one-time costs (`inference.warm_up`: 502 instead of 228 ms for eval-dev's first upload).
    """
    shapes = sorted({decode(upload.target).pixels.shape[:2] for upload in uploads})
    pipeline.warm_up(shapes, config.batch_size)


def _ratio(fast: StrategyRun, slow: StrategyRun) -> float:
    return round(fast.uploads_per_s / slow.uploads_per_s, 1) if slow.uploads_per_s else float("inf")


def _same_uploads_ratio(one_by_one: StrategyRun, slow: StrategyRun, indices: list[int]) -> float:
    """``slow``'s seconds over ``one_by_one``'s on the uploads at ``indices`` (its runs one upload at a time)."""
    fast_seconds = sum(one_by_one.latencies[i] for i in indices)
    return round(slow.seconds / fast_seconds, 1) if fast_seconds else float("inf")


def _pipeline(name: str, detector: YoloDetector, embedder: ClipEmbedder, config: BenchConfig) -> Pipeline:
    """A pipeline with empty caches over the shared model instances."""
    models = ModelConfig(detector=name, embedder="clip-vit-b32", device=config.device, precision=config.precision)
    return Pipeline(detector, embedder, GeometricVerifier(), PipelineConfig(models=models))


def _photo_inputs(cases: Path, uploads: Sequence[BenchUpload]) -> dict[str, Any]:
    sizes = []
    for upload in uploads:
        with Image.open(io.BytesIO(upload.target)) as image:
            sizes.append(image.size[0] * image.size[1] / 1e6)
    return {
        "cases": str(cases),
        "uploads": len(uploads),
        "tags": sum(len(tags) for upload in uploads for _, _, tags in upload.sources),
        "catalogue_photos": len({key for upload in uploads for key, _, _ in upload.sources}),
        "megapixels": {
            "min": round(min(sizes), 2),
            "median": round(float(np.median(sizes)), 2),
            "max": round(max(sizes), 2),
        },
    }


def _clip_only(pipeline: Pipeline) -> Pipeline:
    """The same models and search, with no tag textured and no geometric model ever accepted."""
    config = pipeline.config
    search = replace(config.search, textured_min_keypoints=sys.maxsize)
    geometry = replace(config.geometry, min_inliers=sys.maxsize)
    return Pipeline(
        pipeline.detector,
        pipeline.embedder,
        GeometricVerifier(geometry),
        replace(config, search=search, geometry=geometry),
    )
