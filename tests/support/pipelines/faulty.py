"""A pipeline plugin for fault tests: the real pipeline, but it raises on chosen events.

Loaded by the worker through ``TAGSTREAM_PIPELINE_FACTORY=support.pipelines.faulty:build``. Any batch
containing a request whose event id starts with ``boom`` raises, like a model crashing on
one bad input in the middle of a micro-batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from inference.pipeline import Pipeline
from inference.types import MatchRequest, MatchResult
from streams.settings import Settings
from streams.worker.engine import pipeline_config


class FaultyPipeline:
    def __init__(self, inner: Pipeline) -> None:
        self._inner = inner
        self.lineage = inner.lineage

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
        doomed = [r.request_id for r in requests if r.request_id.startswith("boom")]
        if doomed:
            raise RuntimeError(f"injected model failure on {doomed[0]}")
        return self._inner.run(requests)


def build(settings: Settings) -> FaultyPipeline:
    return FaultyPipeline(Pipeline.load(pipeline_config(settings)))
