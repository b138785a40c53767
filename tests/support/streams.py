"""Reading what the workers published, and waiting for a condition, in end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.kafka import read_topic, topic_partitions
from streams.settings import Settings
from support.brokers import Broker
from workbench.demo import demo_uploads
from workbench.image_server import ImageServer
from workbench.scenes import DemoSet


def wait_for(predicate: object, timeout_s: float, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s}s")


def collect(broker: Broker, topic: str, count: int, timeout_s: float) -> list[dict[str, object]]:
    """Read ``topic`` from the beginning until ``count`` records arrived or the time is up."""

    async def run() -> list[dict[str, object]]:
        records: list[dict[str, object]] = []

        async def consume() -> None:
            async for _, record in read_topic(
                broker.url, topic, Settings().fetch_wait_ms, from_beginning=True, topic_wait_s=timeout_s
            ):
                records.append(record)
                if len(records) >= count:
                    return

        with contextlib.suppress(TimeoutError, asyncio.TimeoutError, LookupError):
            await asyncio.wait_for(consume(), timeout_s)
        return records

    return asyncio.run(run())


def upload_records(demo_set: DemoSet, server: ImageServer, names: list[str] | None = None) -> list[dict[str, Any]]:
    """ImageUploaded records (as `tagstream produce` takes them) for the demo set's uploads."""
    records = demo_uploads(demo_set, server)
    return records if names is None else [r for r in records if r["upload_id"] in names]


def create_topics(broker: Broker, names: list[str], partitions: int = 1, replication: int = 1) -> None:
    """Topics created up front, as in production (no auto-creation race with the first producer)."""

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(n, num_partitions=partitions, replication_factor=replication) for n in names]
            )
        finally:
            await admin.close()

    asyncio.run(create())


def committed_offset(broker: Broker, group: str, topic: str) -> int | None:
    """The group's committed offsets summed over the topic's partitions (None: nothing committed)."""

    async def query() -> int | None:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            offsets = [await consumer.committed(tp) for tp in await topic_partitions(consumer, topic, wait_s=10)]
        finally:
            await consumer.stop()
        found = [offset for offset in offsets if offset is not None]
        return sum(found) if found else None

    return asyncio.run(query())
