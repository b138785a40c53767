"""Assembles a suggestion worker: settings → pipeline, fetcher, processor, Faust app."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import cast

import faust

from inference.pipeline import Pipeline
from streams.agent import SuggestAgent
from streams.app import create_app, raw_topic
from streams.fetch import FetchPolicy, ImageFetcher
from streams.processor import PipelineLike, RetryPolicy, SuggestionProcessor, Topics
from streams.settings import Settings

log = logging.getLogger(__name__)


def load_pipeline(settings: Settings) -> PipelineLike:
    """The configured pipeline, or the one a ``pipeline_factory`` plugin builds from it."""
    config = settings.pipeline_config()
    if settings.pipeline_factory:
        module_name, _, attribute = settings.pipeline_factory.partition(":")
        factory = cast(Callable[[Settings], PipelineLike], getattr(importlib.import_module(module_name), attribute))
        return factory(settings)
    return Pipeline.load(config)


def fetch_policy(settings: Settings) -> FetchPolicy:
    fetch = settings.fetch
    return FetchPolicy(
        allow_private_networks=fetch.allow_private_networks,
        max_bytes=fetch.max_bytes,
        max_pixels=fetch.max_pixels,
        max_redirects=fetch.max_redirects,
        connect_timeout=fetch.connect_timeout_s,
        read_timeout=min(fetch.read_timeout_s, FetchPolicy.read_timeout),
        total_timeout=fetch.read_timeout_s,
        max_concurrency=fetch.max_concurrency,
        cache_max_items=fetch.cache_images,
    )


class ProcessorProvider:
    """Builds the processor once, off the event loop, however often Faust restarts the agent."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()
        self._processor: SuggestionProcessor | None = None

    async def __call__(self) -> SuggestionProcessor:
        async with self._lock:
            if self._processor is None:
                self._processor = await self._build()
            return self._processor

    async def _build(self) -> SuggestionProcessor:
        settings = self._settings
        log.info("loading models (%s, %s)", settings.models.detector, settings.models.embedder)
        pipeline = await asyncio.to_thread(load_pipeline, settings)
        log.info("models loaded; model version %s", pipeline.model_version)
        fetcher = ImageFetcher(fetch_policy(settings))
        await fetcher.__aenter__()
        model = {
            "detector": settings.models.detector,
            "embedder": settings.models.embedder,
            "version": pipeline.model_version,
        }
        return SuggestionProcessor(
            pipeline,
            fetcher,
            Topics(settings.topics.suggestions, settings.topics.dead_letters),
            model,
            RetryPolicy(settings.fetch.attempts, settings.fetch.backoff_s, settings.pipeline_attempts),
        )


def build_worker_app(settings: Settings) -> faust.App:
    app = create_app(settings)
    topics = settings.topics
    uploads = raw_topic(app, topics.uploads, topics.partitions)
    outputs = {
        topics.suggestions: raw_topic(app, topics.suggestions, topics.partitions),
        topics.dead_letters: raw_topic(app, topics.dead_letters, topics.partitions),
    }
    SuggestAgent(app, uploads, outputs, ProcessorProvider(settings), settings.max_batch, settings.max_wait_s)
    return app


def run_worker(settings: Settings) -> None:
    app = build_worker_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
