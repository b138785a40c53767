"""The Faust app and its topics, configured from the settings object."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import faust
from aiohttp.typedefs import Middleware

from streams.settings import Settings
from streams.worker.transport import use_fetch_wait


def create_app(settings: Settings, middlewares: Sequence[Middleware] = ()) -> faust.App:
    """``middlewares`` wrap every request of the worker's web server (aiohttp, Faust's built-in driver)."""
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        store="memory://",
        # Faust keeps per-app state in a folder; not in the working directory of whoever starts it.
        datadir=str(_data_dir(settings)),
        # Events published before a worker first joins must still be processed.
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(settings.session_timeout_s / 6, 0.5),
        broker_commit_every=settings.max_batch,
        broker_commit_interval=1.0,
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication,
        # The web server carries the HTTP API, health, readiness and metrics (streams.worker.web).
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_application_options={"middlewares": list(middlewares)},
        # No tables: Faust's table and routing views would only expose cluster internals.
        web_tables_enabled=False,
        web_router_enabled=False,
        # A micro-batch of CLIP work can take seconds on a CPU; keep Faust's stall
        # detectors from logging false alarms about it.
        stream_processing_timeout=300.0,
        producer_request_timeout=30.0,
        producer_max_request_size=settings.producer_max_request_bytes,
    )
    use_fetch_wait(app, settings.fetch_wait_ms)
    return app


def raw_topic(app: faust.App, name: str, partitions: int | None = None) -> faust.TopicT:
    """Bytes in, bytes out: our Avro codec owns (de)serialisation so bad bytes can be dead-lettered."""
    return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=partitions)


def _data_dir(settings: Settings) -> Path:
    """Faust creates only the last level of its data directory itself."""
    directory = settings.cache_dir / "faust" / settings.app_id
    directory.parent.mkdir(parents=True, exist_ok=True)
    return directory
