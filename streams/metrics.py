"""The worker's Prometheus metrics, on a registry of their own.

One :class:`Metrics` object is created per worker and handed to whatever records into it (the
agent, the shared pipeline and fetcher, the HTTP API). A private ``CollectorRegistry`` rather
than prometheus_client's global one keeps two apps in one process (tests, ``tagstream replay``
beside a worker) from colliding on metric names, and keeps ``/metrics`` free of anything that
did not come from tagstream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_END_TO_END_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_MiB = 1024 * 1024
_BYTES_BUCKETS = (_MiB / 16, _MiB / 4, _MiB, 4 * _MiB, 16 * _MiB, 64 * _MiB, 128 * _MiB)


class Metrics:
    """Every instrument of the worker; ``render`` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.events_consumed = Counter(
            "tagstream_events_consumed", "Upload events taken from the input topic.", registry=registry
        )
        self.suggestions_published = Counter(
            "tagstream_suggestions_published",
            "TagSuggestions events confirmed by the broker.",
            registry=registry,
        )
        self.dead_letters = Counter(
            "tagstream_dead_letters",
            "Dead letters confirmed by the broker, by reason (the dead letter's error_kind).",
            ["reason"],
            registry=registry,
        )
        self.publish_refused = Counter(
            "tagstream_publish_refused",
            "Records the producer or broker refused for good (over a size limit), by output: a refused "
            "suggestion is replaced by a publish_error dead letter, a refused dead letter by one without the "
            "original bytes.",
            ["output"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "tagstream_batch_size", "Events per micro-batch.", buckets=_BATCH_BUCKETS, registry=registry
        )
        self.stage_seconds = Histogram(
            "tagstream_stage_seconds",
            "Time per stage: fetch per fetch call (one batch's or one HTTP request's images); "
            "detect, verify, crop, embed, decide per request (its share of the pipeline batch).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end_seconds = Histogram(
            "tagstream_end_to_end_seconds",
            "From an upload's Kafka timestamp to the broker confirming its suggestion or dead letter.",
            buckets=_END_TO_END_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "tagstream_consumer_lag",
            "Events of each assigned partition not yet answered: log end offset minus the group's committed "
            "offset (refreshed every probe_interval_s).",
            ["topic", "partition"],
            registry=registry,
        )
        self.model_load_seconds = Gauge(
            "tagstream_model_load_seconds", "How long loading the models took.", registry=registry
        )
        self.model_load_failures = Counter(
            "tagstream_model_load_failures", "Attempts to load the models that failed.", registry=registry
        )
        self.fetch_image_bytes = Histogram(
            "tagstream_fetch_image_bytes",
            "Decoded size (H x W x 3) of each image a fetch returned, from the network or the image cache.",
            buckets=_BYTES_BUCKETS,
            registry=registry,
        )
        self.fetch_errors = Counter(
            "tagstream_fetch_errors", "Image fetches that failed, by FetchError kind.", ["kind"], registry=registry
        )
        self.http_requests = Counter(
            "tagstream_http_requests",
            "HTTP requests answered, by method, route and status.",
            ["method", "path", "status"],
            registry=registry,
        )
        self.http_request_seconds = Histogram(
            "tagstream_http_request_seconds",
            "HTTP request handling time, by method and route.",
            ["method", "path"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )

    def observe_stages(self, stage_ms: Mapping[str, float]) -> None:
        for stage, ms in stage_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1000.0)

    def delivered(self, reason: str | None, produced_at: float | None) -> None:
        """One event's outcome confirmed: a suggestion (``reason`` None) or a dead letter."""
        if reason is None:
            self.suggestions_published.inc()
        else:
            self.dead_letters.labels(reason).inc()
        if produced_at is not None:
            self.end_to_end_seconds.observe(max(time.time() - produced_at, 0.0))

    def set_consumer_lag(self, lag: Mapping[TP, int]) -> None:
        """Replace every partition's lag, so partitions moved to another worker disappear."""
        self.consumer_lag.clear()
        for tp, messages in lag.items():
            self.consumer_lag.labels(tp.topic, str(tp.partition)).set(messages)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
