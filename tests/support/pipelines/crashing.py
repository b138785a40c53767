"""A pipeline plugin that fails past every handler the worker has: a bug, not a model error.

Loaded by the worker through ``TAGSTREAM_PIPELINE_FACTORY=support.pipelines.crashing:build``. A batch
holding a request whose event id starts with ``crash`` raises :class:`InjectedBug`, which derives
from ``BaseException`` so that the processor's ``except Exception`` (which turns a model error
into dead letters) lets it through, as it would let through a bug in the agent itself.
Otherwise it answers like ``trivial_pipeline``.
"""

from __future__ import annotations

from collections.abc import Sequence

from inference.types import MatchRequest, MatchResult
from streams.settings import Settings
from support.pipelines.trivial import TrivialPipeline


class InjectedBug(BaseException):
    """Nothing in the worker expects this."""


class CrashingPipeline(TrivialPipeline):
    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
        doomed = [r.request_id for r in requests if r.request_id.startswith("crash")]
        if doomed:
            raise InjectedBug(f"injected bug on {doomed[0]}")
        return super().run(requests)


def build(settings: Settings) -> CrashingPipeline:
    return CrashingPipeline()
