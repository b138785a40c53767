"""The Faust app and its topics, configured from the settings object."""

from __future__ import annotations

import faust

from streams.settings import Settings


def create_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=settings.broker,
        store="memory://",
        # Events published before a worker first joins must still be processed.
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(settings.session_timeout_s / 6, 0.5),
        broker_commit_every=settings.max_batch,
        broker_commit_interval=1.0,
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=1,
        web_enabled=False,
        # A micro-batch of CLIP work can take seconds on a CPU; keep Faust's stall
        # detectors from logging false alarms about it.
        stream_processing_timeout=300.0,
        producer_request_timeout=30.0,
    )


def raw_topic(app: faust.App, name: str, partitions: int | None = None) -> faust.TopicT:
    """Bytes in, bytes out: our Avro codec owns (de)serialisation so bad bytes can be dead-lettered."""
    return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=partitions)
