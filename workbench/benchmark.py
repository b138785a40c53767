"""Inference-only benchmark: the pipeline against the reference strategy, side by side.

Both run in the same process on the same uploads, with the same models and thread count, so
their ratio is meaningful on a noisy shared machine even when absolute times drift.
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

from inference.config import ModelConfig, PipelineConfig
from inference.detector import YoloDetector
from inference.embedder import ClipEmbedder
from inference.geometry import GeometricVerifier
from inference.offline_models import build_clip, build_yolo
from inference.pipeline import Pipeline
from inference.types import MatchRequest, MatchResult, SourceImage
from workbench.reference import ReferenceMatcher
from workbench.scenes import make_demo_set

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    detectors: tuple[str, ...] = ("yolo26n", "yolo26m")
    # Also measured with the first detector: the pipeline with geometry switched off, so every
    # tag is searched by CLIP (a catalogue of textureless products, the pipeline's worst case).
    clip_only: bool = True
    uploads: int = 8
    reference_uploads: int = 1
    batch_size: int = 4
    tags_per_upload: int = 3
    precision: str = "fp32"
    device: str = "cpu"
    seed: int = 11


@dataclass
class StrategyRun:
    uploads: int
    seconds: float
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def uploads_per_s(self) -> float:
        return self.uploads / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        per_upload = {k: round(v / max(self.uploads, 1), 2) for k, v in sorted(self.stage_ms.items())}
        return {
            "uploads": self.uploads,
            "seconds": round(self.seconds, 3),
            "uploads_per_s": round(self.uploads_per_s, 4),
            "ms_per_upload": round(1000 * self.seconds / max(self.uploads, 1), 1),
            "stage_ms_per_upload": per_upload,
        }


def bench_uploads(config: BenchConfig) -> tuple[list[bytes], tuple[SourceImage, ...]]:
    """Encoded 640x480 uploads (PNG bytes, as they arrive from a fetch) and the catalogue sources."""
    demo = make_demo_set(seed=config.seed, n_products=config.tags_per_upload, n_uploads=config.uploads)
    encoded = []
    for image in demo.uploads.values():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded, demo.source_images()


def run_strategy(
    run: Callable[[Sequence[MatchRequest]], list[MatchResult]],
    encoded: list[bytes],
    sources: tuple[SourceImage, ...],
    batch_size: int,
) -> StrategyRun:
    stages: dict[str, float] = {}
    start = time.perf_counter()
    for offset in range(0, len(encoded), batch_size):
        chunk = encoded[offset : offset + batch_size]
        decode_start = time.perf_counter()
        targets = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in chunk]
        stages["fetch_decode"] = stages.get("fetch_decode", 0.0) + (time.perf_counter() - decode_start) * 1000
        requests = [MatchRequest(f"u{offset + i}", t, sources) for i, t in enumerate(targets)]
        for result in run(requests):
            for name, ms in result.stage_ms.items():
                stages[name] = stages.get(name, 0.0) + ms
    return StrategyRun(len(encoded), time.perf_counter() - start, stages)


def run_benchmark(config: BenchConfig, model_dir: Path, progress: Progress = print) -> dict[str, Any]:
    threads = torch.get_num_threads()
    encoded, sources = bench_uploads(config)
    progress(f"building random-init models (CLIP ViT-B/32, {', '.join(config.detectors)}) in {model_dir}")
    clip_path = build_clip(model_dir, tiny=False)
    embedder = ClipEmbedder(str(clip_path), config.device, config.precision, threads)
    report: dict[str, Any] = {
        "machine": {"torch_threads": threads, "device": config.device, "precision": config.precision},
        "inputs": {"uploads": config.uploads, "tags_per_upload": config.tags_per_upload, "image": "640x480 JPEG"},
        "detectors": {},
    }
    for name in config.detectors:
        detector = YoloDetector(str(build_yolo(model_dir, name)), config.device, torch_threads=threads)
        models = ModelConfig(detector=name, embedder="clip-vit-b32", device=config.device, precision=config.precision)
        pipeline = Pipeline(detector, embedder, GeometricVerifier(), PipelineConfig(models=models))
        reference = ReferenceMatcher(detector, embedder)
        progress(f"[{name}] warm-up")
        pipeline.run([MatchRequest("warm", np.zeros((480, 640, 3), np.uint8), ())])
        embedder.embed(torch.rand(8, 3, embedder.input_size, embedder.input_size))
        progress(f"[{name}] pipeline on {config.uploads} uploads, batches of {config.batch_size}")
        fast = run_strategy(pipeline.run, encoded, sources, config.batch_size)
        progress(f"[{name}] reference on {config.reference_uploads} upload(s) ...")
        slow = run_strategy(reference.run, encoded[: config.reference_uploads], sources, 1)
        speedup = fast.uploads_per_s / slow.uploads_per_s if slow.uploads_per_s else float("inf")
        report["detectors"][name] = {
            "pipeline": fast.to_json(),
            "reference": slow.to_json(),
            "speedup_vs_reference": round(speedup, 1),
        }
        progress(
            f"[{name}] pipeline {fast.uploads_per_s:.2f} uploads/s, reference {slow.uploads_per_s:.4f} uploads/s, speedup {speedup:.1f}x"
        )
        if config.clip_only and name == config.detectors[0]:
            progress(f"[{name}] pipeline with geometry off (every tag searched by CLIP) on {config.uploads} uploads")
            searched = run_strategy(_clip_only(pipeline).run, encoded, sources, config.batch_size)
            report["clip_only"] = {
                "detector": name,
                "pipeline": searched.to_json(),
                "speedup_vs_reference": round(searched.uploads_per_s / slow.uploads_per_s, 1),
            }
            progress(f"[{name}] clip-only pipeline {searched.uploads_per_s:.3f} uploads/s")
    report["speedup_vs_reference"] = min(d["speedup_vs_reference"] for d in report["detectors"].values())
    return report


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
