"""Assembles a suggestion worker: settings → engine (models, fetcher), processor, agent, HTTP API."""

from __future__ import annotations

import asyncio
import logging

import faust

from streams.agent import SuggestAgent
from streams.app import create_app, raw_topic
from streams.engine import EngineProvider
from streams.kafka_io import wait_for_broker
from streams.metrics import Metrics
from streams.processor import RetryPolicy, SuggestionProcessor, Topics
from streams.settings import Settings
from streams.web import HttpApi, install_http_api, observe_requests

log = logging.getLogger(__name__)


class ProcessorProvider:
    """Builds the processor once, however often Faust restarts the agent.

    ``engines`` is the worker's shared engine provider; without one (``tagstream replay``) the
    processor gets an engine of its own.
    """

    def __init__(self, settings: Settings, engines: EngineProvider | None = None) -> None:
        self._settings = settings
        self._engines = engines or EngineProvider(settings, Metrics())
        self._lock = asyncio.Lock()
        self._processor: SuggestionProcessor | None = None

    async def __call__(self) -> SuggestionProcessor:
        async with self._lock:
            if self._processor is None:
                settings = self._settings
                engine = await self._engines()
                self._processor = SuggestionProcessor(
                    engine.pipeline,
                    engine.fetcher,
                    Topics(settings.topics.suggestions, settings.topics.dead_letters),
                    RetryPolicy(settings.fetch.attempts, settings.fetch.backoff_s, settings.pipeline_attempts),
                    settings.event_limits(),
                )
            return self._processor


def build_worker_app(settings: Settings) -> faust.App:
    metrics = Metrics()
    app = create_app(settings, middlewares=[observe_requests(metrics)])
    topics = settings.topics
    uploads = raw_topic(app, topics.uploads, topics.partitions)
    outputs = {
        topics.suggestions: raw_topic(app, topics.suggestions, topics.partitions),
        topics.dead_letters: raw_topic(app, topics.dead_letters, topics.partitions),
    }
    engines = EngineProvider(settings, metrics)
    processors = ProcessorProvider(settings, engines)
    SuggestAgent(
        app, uploads, outputs, processors, settings.max_batch, settings.max_wait_s, metrics, settings.batches_in_flight
    )
    install_http_api(app, HttpApi(app, engines, metrics, settings.event_limits()))
    return app


def run_worker(settings: Settings) -> None:
    # One event loop, current before the app exists so everything Faust builds binds to it: it
    # first waits for the broker, then runs the worker.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(wait_for_broker(settings.broker, _broker_unavailable))
    except KeyboardInterrupt:
        loop.close()
        return  # stopped while waiting: nothing was consumed, nothing to hand back
    app = build_worker_app(settings)
    # Logging is the CLI's (streams.logs): mode's worker would replace it with its own format.
    worker = faust.Worker(app, loop=loop, loglevel=settings.log_level.upper(), quiet=True, override_logging=False)
    worker.execute_from_commandline()


def _broker_unavailable(error: Exception, delay_s: float) -> None:
    log.warning("broker unavailable (%s); retrying in %.1fs", error, delay_s)
