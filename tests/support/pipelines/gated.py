"""A pipeline plugin whose loading waits for a test's go-ahead, to observe a worker still loading.

Loaded by the worker through ``TAGSTREAM_PIPELINE_FACTORY=support.pipelines.gated:build``; loading
blocks (in the worker's loader thread) until the file named by ``GATED_PIPELINE_OPEN`` exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from inference.pipeline import Pipeline
from streams.settings import Settings
from streams.worker.engine import pipeline_config


def build(settings: Settings) -> Pipeline:
    gate = Path(os.environ["GATED_PIPELINE_OPEN"])
    while not gate.exists():
        time.sleep(0.1)
    return Pipeline.load(pipeline_config(settings))
