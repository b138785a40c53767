"""A pipeline plugin that holds every batch until a test opens its gate: a worker stuck mid-batch.

Loaded by the worker through ``TAGSTREAM_PIPELINE_FACTORY=support.pipelines.blocking:build``; ``run``
waits (in the worker's inference thread) until the file named by ``BLOCKING_PIPELINE_OPEN``
exists, then answers like ``trivial_pipeline``. Events pile up behind it, which is what the
lag and stall tests need.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from inference.types import MatchRequest, MatchResult
from streams.settings import Settings
from support.pipelines.trivial import TrivialPipeline


class BlockingPipeline(TrivialPipeline):
    def __init__(self, gate: Path) -> None:
        self._gate = gate

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
        while not self._gate.exists():
            time.sleep(0.1)
        return super().run(requests)


def build(settings: Settings) -> BlockingPipeline:
    return BlockingPipeline(Path(os.environ["BLOCKING_PIPELINE_OPEN"]))
