"""The strategy of the synchronous service we replace, re-implemented faithfully for benchmarks.

From its guide: per tag, YOLO detections (padded 10 %) plus a coarse grid of up to 150 windows
sized from the tag, then a fine search around the top 2 candidates at 5 scales (0.75 … 1.25),
then an ultra-fine 2 px refinement around the best; every crop is cut from a PIL image and
embedded with CLIP, and all of it is redone for every tag. Where the guide is silent we chose
the cheaper reading: fine search = 3x3 positions within +-0.375 of the box size per scale
(90 crops for 2 candidates); ultra-fine = 5x5 offsets of 2 px (25 crops). About 275 crops per tag.

Two paths are measured, because the service's cost depends on how soon it stops: ``full_search``
runs coarse, fine and ultra-fine search for every tag (its full path); without it every tag stops
after the coarse grid (its best path, the least work it ever does for a tag: detections plus
~50-150 windows). Used only by ``tagstream bench`` so the speed-up is measured, not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from inference.candidates import detection_boxes, sliding_windows
from inference.detector import Detector
from inference.embedder import Embedder
from inference.fusion import detected_class
from inference.pipeline import StageClock
from inference.types import BBox, Detection, MatchRequest, MatchResult, Method, RGBImage, TagMatch

COARSE_MAX = 150
FINE_SCALES = (0.75, 0.875, 1.0, 1.125, 1.25)
FINE_OFFSETS = (-0.375, 0.0, 0.375)
ULTRA_OFFSETS = (-4.0, -2.0, 0.0, 2.0, 4.0)


class ReferenceMatcher:
    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        threshold: float = 0.75,
        confidence: float = 0.10,
        *,
        full_search: bool = True,
    ) -> None:
        self.detector = detector
        self.full_search = full_search
        self.crops = 0  # crops embedded so far, for the bench report
        self.embedder = embedder
        self.threshold = threshold
        self.confidence = confidence
        self.model_version = "reference"

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
        results = []
        for request in requests:
            clock = StageClock()
            with clock.stage("detect"):
                (detections,) = self.detector.detect([request.target], self.confidence)
            target = Image.fromarray(request.target)
            matches = []
            for source in request.sources:
                source_image = Image.fromarray(source.image)
                for tag in source.tags:
                    matches.append(self._match_tag(source_image, tag.product_id, tag.bbox, target, detections, clock))
            results.append(MatchResult(request.request_id, tuple(matches), len(detections), dict(clock.ms)))
        return results

    def _match_tag(
        self,
        source: Image.Image,
        product_id: str,
        box: BBox,
        target: Image.Image,
        detections: list[Detection],
        clock: StageClock,
    ) -> TagMatch:
        width, height = target.size
        query = self._embed(source, [box], clock)[0]
        candidates = detection_boxes(detections, 0.1, width, height)
        candidates += sliding_windows((box.width, box.height), 0.5, COARSE_MAX, width, height)
        scores = self._embed(target, candidates, clock) @ query
        if not self.full_search:
            return self._answer(product_id, candidates, scores, detections)
        top = torch.topk(scores, min(2, len(candidates))).indices.tolist()
        fine = [
            BBox(
                c.center[0] + dx * c.width - c.width * s / 2,
                c.center[1] + dy * c.height - c.height * s / 2,
                c.width * s,
                c.height * s,
            )
            for c in (candidates[i] for i in top)
            for s in FINE_SCALES
            for dx in FINE_OFFSETS
            for dy in FINE_OFFSETS
        ]
        fine_scores = self._embed(target, fine, clock) @ query
        pool = candidates + fine
        pool_scores = torch.cat([scores, fine_scores])
        best = pool[int(torch.argmax(pool_scores))]
        ultra = [
            BBox(best.x + dx, best.y + dy, best.width, best.height) for dx in ULTRA_OFFSETS for dy in ULTRA_OFFSETS
        ]
        ultra_scores = self._embed(target, ultra, clock) @ query
        return self._answer(product_id, pool + ultra, torch.cat([pool_scores, ultra_scores]), detections)

    def _answer(
        self, product_id: str, all_boxes: list[BBox], all_scores: torch.Tensor, detections: list[Detection]
    ) -> TagMatch:
        """The best-scoring box, found when it reaches the threshold."""
        index = int(torch.argmax(all_scores))
        score = float(all_scores[index])
        found = score >= self.threshold
        bbox = all_boxes[index] if found else None
        return TagMatch(
            product_id,
            found,
            round(score, 4),
            bbox,
            detected_class(all_boxes[index], detections) if found else None,
            Method.CLIP if found else Method.NONE,
        )

    def _embed(self, image: Image.Image, boxes: list[BBox], clock: StageClock) -> torch.Tensor:
        """One PIL crop and resize per box, as the reference did, then one batched forward."""
        size = self.embedder.input_size
        self.crops += len(boxes)
        with clock.stage("crop"):
            arrays: list[RGBImage] = [
                np.asarray(
                    image.crop((int(b.x), int(b.y), int(b.x2), int(b.y2))).resize(
                        (size, size), Image.Resampling.BICUBIC
                    )
                )
                for b in boxes
            ]
            batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0).to(self.embedder.device)
        with clock.stage("embed"):
            return torch.cat([self.embedder.embed(batch[i : i + 64]) for i in range(0, len(boxes), 64)])
