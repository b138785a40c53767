"""A model-free pipeline plugin for soak and fault tests of the stream machinery.

Loaded by the worker through ``TAGSTREAM_PIPELINE_FACTORY=support.pipelines.trivial:build``. It answers
every tag "not found" at once, so a test exercises fetching, batching, acks and publishing at a
rate a 2-core machine can sustain, without spending its CPU on YOLO and CLIP. It does not test
the models (tests/unit/inference and the other e2e tests do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from inference.types import Detection, MatchRequest, MatchResult, Method, RGBImage, TagMatch
from streams.settings import Settings


class _NoDetector:
    class_names: tuple[str, ...] = ()

    def detect(self, images: Sequence[RGBImage], confidence: float) -> list[list[Detection]]:
        return [[] for _ in images]


class TrivialPipeline:
    lineage: ClassVar[dict[str, str]] = {"detector": "none", "embedder": "none", "version": "trivial-1"}
    detector = _NoDetector()

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
        return [
            MatchResult(
                r.request_id,
                tuple(
                    TagMatch.invalid(t.product_id, t.error)
                    if t.error
                    else TagMatch(t.product_id, False, 0.0, None, None, Method.NONE)
                    for s in r.sources
                    for t in s.tags
                ),
                0,
            )
            for r in requests
        ]


def build(settings: Settings) -> TrivialPipeline:
    return TrivialPipeline()
