"""Assembles a suggestion worker: settings → engine (models, fetcher), processor, agent, HTTP API."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from collections.abc import Callable

import faust

from streams.events import suggestions_codec
from streams.kafka import ensure_topics, wait_for_broker
from streams.metrics import Metrics
from streams.settings import Settings
from streams.worker.agent import SuggestAgent
from streams.worker.app import create_app, raw_topic
from streams.worker.engine import EngineProvider, ModelsUnavailable
from streams.worker.health import BrokerProbe, Health, Progress
from streams.worker.processor import RetryPolicy, SuggestionProcessor, Topics
from streams.worker.web import HttpApi, install_http_api, observe_requests

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
EXIT_MODELS_UNAVAILABLE = 3
"""The worker's exit status when its models could not be loaded within ``model_load_attempts``."""
EXIT_BATCH_FAILED = 4
"""The worker's exit status when handling a batch failed in a way no dead letter covers (a bug)."""


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
                    images_at_once=settings.fetch.max_batch_pixels // settings.fetch.working_max_side**2,
                    codec=suggestions_codec(settings.topics.suggestions_schema_version),
                )
            return self._processor


class FatalStop:
    """A condition the worker cannot recover from: stop as on SIGTERM (leaving the group, so the
    partitions move to a worker that can answer them), then exit with :attr:`exit_status`."""

    def __init__(self) -> None:
        self.reason: BaseException | None = None

    def __call__(self, reason: BaseException) -> None:
        if self.reason is None:
            self.reason = reason
            log.critical("stopping the worker: %s", reason)
            os.kill(os.getpid(), signal.SIGTERM)

    @property
    def exit_status(self) -> int:
        return EXIT_MODELS_UNAVAILABLE if isinstance(self.reason, ModelsUnavailable) else EXIT_BATCH_FAILED


def build_worker_app(settings: Settings, on_fatal: Callable[[BaseException], None]) -> faust.App:
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
    progress = Progress()
    SuggestAgent(
        app,
        uploads,
        outputs,
        processors,
        settings.max_batch,
        settings.max_wait_s,
        metrics,
        progress,
        on_fatal,
        settings.batches_in_flight,
    )
    health = Health(
        app,
        BrokerProbe(settings.broker, settings.app_id, timeout_s=max(settings.probe_interval_s, 1.0)),
        progress,
        metrics,
        engines.status,
        stall_timeout_s=settings.stall_timeout_s,
        probe_interval_s=settings.probe_interval_s,
    )
    app.timer(interval=settings.probe_interval_s, name="health-probe")(health.refresh)
    install_http_api(app, HttpApi(engines, health, metrics, settings.event_limits()))
    return app


def release_large_buffers_to_the_os() -> None:
    """Make glibc serve every allocation of 1 MiB or more from mmap, and so unmap it when freed.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after
    which decoded images and tensors come from the heap, where freed space fragments and RSS
    creeps up image after image (measured: +40 MiB per 34 images of 12 MB, never returned).
    A fixed threshold keeps the worker's memory flat. Operators who set
    ``MALLOC_MMAP_THRESHOLD_`` themselves keep their value; elsewhere than glibc this does nothing.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def run_worker(settings: Settings) -> None:
    release_large_buffers_to_the_os()
    # One event loop, current before the app exists so everything Faust builds binds to it: it
    # first waits for the broker, then runs the worker.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(wait_for_broker(settings.broker, _broker_unavailable))
        topics = settings.topics
        created = loop.run_until_complete(
            ensure_topics(
                settings.broker,
                [topics.uploads, topics.suggestions, topics.dead_letters],
                topics.partitions,
                topics.replication,
            )
        )
    except KeyboardInterrupt:
        loop.close()
        return  # stopped while waiting: nothing was consumed, nothing to hand back
    if created:
        log.info("created topics %s (%d partitions, replication %d)", created, topics.partitions, topics.replication)
    fatal = FatalStop()
    app = build_worker_app(settings, fatal)
    # Logging is the CLI's (streams.logs): mode's worker would replace it with its own format.
    worker = faust.Worker(app, loop=loop, loglevel=settings.log_level.upper(), quiet=True, override_logging=False)
    # Its start-up spinner ends by writing a cursor escape and no newline to stdout, even when
    # stdout is not a terminal: that glued itself to the next log line and broke JSON-lines logs.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if fatal.reason is not None:
            raise SystemExit(fatal.exit_status) from None
        raise


def _broker_unavailable(error: Exception, delay_s: float) -> None:
    log.warning("broker unavailable (%s); retrying in %.1fs", error, delay_s)
