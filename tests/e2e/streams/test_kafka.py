"""Plain aiokafka helpers against a real broker."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from support.brokers import Broker, new_broker
from support.streams import create_topics

from streams.kafka import ensure_topics, wait_for_broker


def test_wait_for_broker_retries_until_the_broker_comes_up(tmp_path: Path) -> None:
    broker = new_broker(tmp_path, "late")  # its port is chosen, nobody listens yet
    retries: list[float] = []

    async def scenario() -> None:
        waiting = asyncio.create_task(
            wait_for_broker(broker.url, lambda _error, delay_s: retries.append(delay_s), max_delay_s=1.0)
        )
        while len(retries) < 3:
            assert not waiting.done(), "returned while no broker was listening"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(waiting, timeout=30)

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()
    assert retries[:3] == [0.5, 1.0, 1.0]  # doubling, capped at max_delay_s


def test_ensure_topics_creates_only_the_missing_ones(broker: Broker) -> None:
    existing, missing = f"ensure-{uuid.uuid4().hex[:8]}-a", f"ensure-{uuid.uuid4().hex[:8]}-b"
    create_topics(broker, [existing], partitions=1)

    created = asyncio.run(ensure_topics(broker.url, [existing, missing, missing], partitions=3, replication=1))
    again = asyncio.run(ensure_topics(broker.url, [existing, missing], partitions=3, replication=1))

    assert created == [missing]
    assert again == []
    assert len(asyncio.run(_partitions(broker, missing))) == 3


async def _partitions(broker: Broker, topic: str) -> set[int]:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        return set(await producer.partitions_for(topic))
    finally:
        await producer.stop()
