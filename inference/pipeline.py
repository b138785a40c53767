"""The batch pipeline: a micro-batch of match requests in, one result per request out.

Work is arranged so each expensive step happens once per unit it depends on:
detection once per target image (batched across requests), local features once per target
image, source features and embeddings once per (source image, box) thanks to caches (a source
box's simulated views only once its frontal view fails to settle a match), and
candidate windows embedded once per target image and scored against every tag in one matrix
product. CLIP only runs for tags the geometric verifier did not already confirm, and for a
textured tag only where its matches agree locally (a deformed product): there the local model
already places the product, so CLIP judges one box instead of searching.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from inference.cache import LruCache
from inference.candidates import detection_boxes, refinements, sliding_windows, window_sizes
from inference.config import PipelineConfig
from inference.crops import crop_and_resize, image_to_tensor
from inference.detector import Detector, YoloDetector
from inference.embedder import ClipEmbedder, Embedder
from inference.fusion import ClipEvidence, GeometricEvidence, decide, pool_views, standout
from inference.geometry import Correspondences, GeometricVerifier, LocalMatch, SourceFeatures, TargetFeatures
from inference.runtime import keep_thread_count
from inference.tags import tag_error
from inference.types import BBox, Copy, Detection, MatchRequest, MatchResult, SourceImage, SourceTag, TagMatch
from inference.warm_up import DEFAULT_SHAPES, warm_up


@dataclass
class StageClock:
    """Milliseconds per stage, summed over a batch, for benchmarks and metrics."""

    ms: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0


_Views = Literal["frontal", "tilted"]
_FeaturesKey = tuple[str, tuple[float, ...], _Views]
"""The two halves of a source box's features, cached apart: the tilted views are often never needed."""


@dataclass
class _TagJob:
    """One source tag inside one request, with what each stage learned about it."""

    request_index: int
    source: SourceImage
    tag: SourceTag
    box: BBox
    error: str | None = None
    textured: bool = False
    matches: Correspondences | None = None
    local: LocalMatch | None = None
    geometric: GeometricEvidence | None = None
    clip: ClipEvidence | None = None


class Pipeline:
    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        verifier: GeometricVerifier,
        config: PipelineConfig,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.verifier = verifier
        self.config = config
        self._source_embeddings: LruCache[tuple[str, tuple[float, ...]], torch.Tensor] = LruCache(
            config.source_cache_size
        )
        self._source_features: LruCache[_FeaturesKey, SourceFeatures] = LruCache(
            config.source_cache_size,
            max_weight=config.source_features_cache_bytes,
            weigh=lambda features: int(features.keypoints.nbytes + features.descriptors.nbytes),
        )

    @classmethod
    def load(cls, config: PipelineConfig) -> Pipeline:
        """Load the configured models through their standard loaders."""
        models = config.models
        with keep_thread_count(models.torch_threads):
            detector = YoloDetector(
                models.detector,
                device=models.device,
                half=models.precision == "fp16",
                torch_threads=models.torch_threads,
                runtime=models.detector_runtime,
                export_dir=Path(models.export_dir) if models.export_dir else None,
            )
            embedder = ClipEmbedder(models.embedder, models.device, models.precision, models.torch_threads)
        return cls(detector, embedder, GeometricVerifier(config.geometry, models.torch_threads), config)

    def with_match_order(self, seed: int | None) -> Pipeline:
        """This pipeline with its verifier's matches fitted in another order (`GeometryConfig.match_order_seed`).

        The models and the caches are shared: source features and embeddings do not depend on
        the order, so scoring a set over several orders extracts them once.
        """
        geometry = replace(self.config.geometry, match_order_seed=seed)
        verifier = GeometricVerifier(geometry, self.config.models.torch_threads)
        twin = Pipeline(self.detector, self.embedder, verifier, replace(self.config, geometry=geometry))
        twin._source_embeddings, twin._source_features = self._source_embeddings, self._source_features
        return twin

    def warm_up(self, shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES, batch_size: int = 1) -> None:
        """Pays the process's one-time costs (lazy imports, per-shape set-up) before the first upload.

        Generated pictures of ``shapes`` (height, width) go through every network and the
        verifier; the caches are not touched (`inference.warm_up`).
        """
        search = self.config.search
        warm_up(self.detector, self.embedder, self.verifier, shapes, batch_size, search.detection_confidence)

    @property
    def source_cache_misses(self) -> int:
        """Source boxes whose features or embedding had to be computed (not served from cache)."""
        return self._source_features.misses + self._source_embeddings.misses

    @property
    def model_version(self) -> str:
        return self.config.models.model_version

    @property
    def lineage(self) -> dict[str, str]:
        """What ran, as stamped on every suggestion: the models actually loaded, and the version key.

        Names come from the loaded models, not from the settings: offline (random-init) models
        must never be reported under the pretrained names they stand in for.
        """
        return {"detector": self.detector.name, "embedder": self.embedder.name, "version": self.model_version}

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
        clock = StageClock()
        search = self.config.search
        with clock.stage("detect"):
            detections = self.detector.detect([r.target for r in requests], search.detection_confidence)
        jobs = [job for index, request in enumerate(requests) for job in _tag_jobs(index, request)]
        valid = [job for job in jobs if job.error is None]
        with clock.stage("verify"):
            self._verify(requests, valid)
        pending = [job for job in valid if job.geometric is None and self._clip_could_decide(job)]
        if search.pool_views:
            # Pooling answers a product that geometry found anywhere with that match: CLIP on its other views is wasted.
            found = {(j.request_index, j.tag.product_id) for j in valid if self._geometry_decides(j, requests)}
            pending = [job for job in pending if (job.request_index, job.tag.product_id) not in found]
        if pending:
            self._clip_search(requests, detections, pending, clock)
        with clock.stage("decide"):
            results = self._decide(requests, detections, jobs)
        per_request_ms = {name: ms / max(len(requests), 1) for name, ms in clock.ms.items()}
        return [
            MatchResult(r.request_id, tuple(matches), len(dets), dict(per_request_ms))
            for r, matches, dets in zip(requests, results, detections, strict=True)
        ]

    def _threshold(self, request: MatchRequest) -> float:
        """The request's own threshold, else the configured one."""
        own = request.similarity_threshold
        return own if own is not None else self.config.search.similarity_threshold

    def _geometry_decides(self, job: _TagJob, requests: Sequence[MatchRequest]) -> bool:
        """Whether ``job``'s geometric match is sure enough to be its answer (`fusion.decide`'s first rule)."""
        return job.geometric is not None and job.geometric.confidence >= self._threshold(requests[job.request_index])

    def _verify(self, requests: Sequence[MatchRequest], jobs: list[_TagJob]) -> None:
        targets, first_seen = self._extract(requests, jobs)
        for job in jobs:
            threshold = self._threshold(requests[job.request_index])
            key = _features_key(job, "frontal")
            checked = self.verifier.verify_views(
                first_seen[key] if key in first_seen else self._cached_features(job, "frontal"),
                lambda job=job: self._cached_features(job, "tilted"),  # type: ignore[misc]
                targets[job.request_index],
                job.box,
                max(self.verifier.config.settle_confidence, threshold),
            )
            job.textured = len(checked.source.keypoints) >= self.config.search.textured_min_keypoints
            job.matches = checked.matches
            if checked.match is not None:
                job.geometric = GeometricEvidence(
                    checked.match.bbox,
                    checked.match.confidence,
                    tuple(Copy(copy.bbox, copy.confidence) for copy in checked.copies),
                )
            elif job.textured and len(job.matches) >= self.config.search.min_local_support:
                job.local = self.verifier.local_model(job.matches, checked.source, targets[job.request_index], job.box)

    def _extract(
        self, requests: Sequence[MatchRequest], jobs: list[_TagJob]
    ) -> tuple[dict[int, TargetFeatures], dict[_FeaturesKey, SourceFeatures]]:
        """Each request's target features, and the frontal views of the boxes not cached, extracted side by side.

        The frontal views are also cached for later uploads; the simulated views stay lazy.
        """
        indices = sorted({job.request_index for job in jobs})
        unseen: dict[_FeaturesKey, _TagJob] = {}
        for job in jobs:
            key = _features_key(job, "frontal")
            if key not in unseen and self._source_features.get(key) is None:
                unseen[key] = job
        targets, frontal = self.verifier.features(
            [requests[i].target for i in indices], [(job.source.image, job.box) for job in unseen.values()]
        )
        for key, features in zip(unseen, frontal, strict=True):
            self._source_features.put(key, features)
        return dict(zip(indices, targets, strict=True)), dict(zip(unseen, frontal, strict=True))

    def _cached_features(self, job: _TagJob, views: _Views) -> SourceFeatures:
        """A source box's features of the frontal or the simulated views, computed once and cached."""
        extract = self.verifier.frontal_features if views == "frontal" else self.verifier.tilted_features
        return self._source_features.get_or_compute(
            _features_key(job, views), lambda: extract(job.source.image, job.box)
        )

    def _clip_could_decide(self, job: _TagJob) -> bool:
        """Skip CLIP for a textured tag without locally coherent matches: the veto would reject it anyway."""
        if not job.textured:
            return True
        return job.local is not None and job.local.inliers >= self.config.search.min_local_support

    def _clip_search(
        self,
        requests: Sequence[MatchRequest],
        detections: list[list[Detection]],
        jobs: list[_TagJob],
        clock: StageClock,
    ) -> None:
        search = self.config.search
        device = self.embedder.device
        with clock.stage("embed"):
            tag_vectors = self._tag_embeddings(jobs, clock)
        by_request: dict[int, list[int]] = {}
        for position, job in enumerate(jobs):
            by_request.setdefault(job.request_index, []).append(position)
        for request_index, positions in by_request.items():
            target = requests[request_index].target
            height, width = target.shape[:2]
            request_jobs = [jobs[p] for p in positions]
            with clock.stage("crop"):
                image = image_to_tensor(target, device)
                boxes = detection_boxes(detections[request_index], search.detection_padding, width, height)
                boxes += self._windows(request_jobs, width, height)
                placed: dict[int, int] = {}  # column -> index of the box its local model gave
                for column, job in enumerate(request_jobs):
                    if job.local is not None:
                        placed[column] = len(boxes)
                        boxes.append(job.local.bbox)
            scores = self._score(image, boxes, tag_vectors[positions], clock)
            refined_boxes: dict[int, list[BBox]] = {}
            for column in range(len(positions)):
                if column not in placed:
                    top = torch.topk(scores[:, column], min(search.refine_top_k, len(boxes))).indices.tolist()
                    refined_boxes[column] = [
                        r
                        for i in top
                        for r in refinements(boxes[i], search.refine_scales, search.refine_shift, width, height)
                    ]
            flat = [b for group in refined_boxes.values() for b in group]
            refined_scores = self._score(image, flat, tag_vectors[positions], clock) if flat else scores[:0]
            offset = 0
            for column, job in enumerate(request_jobs):
                if column in placed:
                    evidence = _evidence(boxes, scores[:, column], placed[column])
                else:
                    own = refined_scores[offset : offset + len(refined_boxes[column]), column]
                    offset += len(refined_boxes[column])
                    evidence = _best_evidence(boxes, scores[:, column], refined_boxes[column], own)
                job.clip = _with_local_evidence(evidence, job)

    def _windows(self, jobs: list[_TagJob], width: int, height: int) -> list[BBox]:
        """The multi-scale grid when a tag without texture must be searched; else a coarse background grid.

        A textured tag reaches CLIP only with a local model that already placed it, so CLIP
        judges that one box; the coarse grid gives the standout test its background.
        """
        search = self.config.search
        plain = [job.box for job in jobs if not job.textured]
        if plain:
            sizes, budget = window_sizes(plain, search.window_scales, width, height), search.max_windows
        else:
            sizes, budget = window_sizes([job.box for job in jobs], (1.0,), width, height), search.background_windows
        per_size = max(budget // max(len(sizes), 1), 1)
        return [w for size in sizes for w in sliding_windows(size, search.window_overlap, per_size, width, height)]

    def _tag_embeddings(self, jobs: list[_TagJob], clock: StageClock) -> torch.Tensor:
        """Tag embeddings from the cache, computing the missing ones in one batch per source image.

        Uploads of one batch often share their catalogue photos: each (source, box) is embedded once.
        """
        missing: dict[str, dict[tuple[float, ...], _TagJob]] = {}
        for job in jobs:
            if self._source_embeddings.get((job.source.key, _box_key(job.box))) is None:
                missing.setdefault(job.source.key, {}).setdefault(_box_key(job.box), job)
        size = self.embedder.input_size
        for by_box in missing.values():
            group = list(by_box.values())
            with clock.stage("crop"):
                crops = crop_and_resize(
                    image_to_tensor(group[0].source.image, self.embedder.device), [j.box for j in group], size
                )
            vectors = self._embed(crops)
            for job, vector in zip(group, vectors, strict=True):
                self._source_embeddings.put((job.source.key, _box_key(job.box)), vector)
        return torch.stack([self._cached_embedding(job) for job in jobs])

    def _cached_embedding(self, job: _TagJob) -> torch.Tensor:
        vector = self._source_embeddings.get((job.source.key, _box_key(job.box)))
        assert vector is not None, "embedding computed above"
        return vector

    def _score(self, image: torch.Tensor, boxes: list[BBox], tags: torch.Tensor, clock: StageClock) -> torch.Tensor:
        """Cosine of every box against every tag: (len(boxes), n_tags)."""
        with clock.stage("crop"):
            crops = crop_and_resize(image, boxes, self.embedder.input_size)
        with clock.stage("embed"):
            vectors = self._embed(crops)
        return vectors @ tags.T

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        batch = self.config.search.embed_batch_size
        if crops.shape[0] <= batch:
            return self.embedder.embed(crops)
        return torch.cat([self.embedder.embed(crops[i : i + batch]) for i in range(0, crops.shape[0], batch)])

    def _decide(
        self, requests: Sequence[MatchRequest], detections: list[list[Detection]], jobs: list[_TagJob]
    ) -> list[list[TagMatch]]:
        results: list[list[TagMatch]] = [[] for _ in requests]
        for job in jobs:
            request = requests[job.request_index]
            if job.error is not None:
                results[job.request_index].append(TagMatch.invalid(job.tag.product_id, job.error))
                continue
            match = decide(
                job.tag.product_id,
                self._threshold(request),
                job.clip,
                job.geometric,
                job.textured,
                detections[job.request_index],
                self.config.search,
            )
            if request.target_scale != 1.0:
                match = match.scaled(1.0 / request.target_scale)
            results[job.request_index].append(match)
        if not self.config.search.pool_views:
            return results
        geometry = self.verifier.config
        return [pool_views(matches, geometry.max_copies, geometry.max_copy_overlap) for matches in results]


def _tag_jobs(index: int, request: MatchRequest) -> Iterator[_TagJob]:
    """One job per tag, its box in working pixels; a tag that cannot be answered carries its error."""
    for source in request.sources:
        height, width = source.image.shape[:2]
        photo_size = (round(width / source.scale), round(height / source.scale))
        for tag in source.tags:
            error = tag.error or tag_error(tag.product_id, tag.bbox, photo_size, source.scale)
            box = tag.bbox.scaled(source.scale).clip(width, height) if error is None else tag.bbox
            yield _TagJob(index, source, tag, box, error)


def _features_key(job: _TagJob, views: _Views) -> _FeaturesKey:
    return (job.source.key, _box_key(job.box), views)


def _box_key(box: BBox) -> tuple[float, ...]:
    return (round(box.x, 1), round(box.y, 1), round(box.width, 1), round(box.height, 1))


def _best_evidence(
    boxes: list[BBox], scores: torch.Tensor, refined: list[BBox], refined_scores: torch.Tensor
) -> ClipEvidence:
    """Best box over coarse and refined candidates; standout is judged against non-overlapping windows."""
    all_boxes = boxes + refined
    all_scores = torch.cat([scores, refined_scores]).tolist()
    best = max(range(len(all_boxes)), key=all_scores.__getitem__)
    return _standing_out(all_boxes[best], float(all_scores[best]), boxes, scores)


def _evidence(boxes: list[BBox], scores: torch.Tensor, index: int) -> ClipEvidence:
    """CLIP's verdict on one given box, against the other windows of the image."""
    return _standing_out(boxes[index], float(scores[index]), boxes, scores)


def _standing_out(box: BBox, score: float, boxes: list[BBox], scores: torch.Tensor) -> ClipEvidence:
    """Judged against windows elsewhere only: overlapping ones see the same product and would mask it."""
    others = [s for b, s in zip(boxes, scores.tolist(), strict=True) if b.iou(box) < 0.3]
    return ClipEvidence(box, score, standout(score, others))


def _with_local_evidence(evidence: ClipEvidence, job: _TagJob) -> ClipEvidence:
    """The descriptor matches behind a CLIP box: coherent ones for a textured tag, any inside it otherwise."""
    matches = job.matches
    inside = matches.count_inside(evidence.bbox) if matches is not None else 0
    support = job.local.inliers if job.local is not None else inside
    share = inside / len(matches) if matches else 0.0
    return replace(evidence, local_support=support, local_share=share)
