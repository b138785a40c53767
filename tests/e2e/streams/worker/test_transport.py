"""The worker's Faust consumer on a real broker: the configured fetch wait, and the rejoin it falls back on."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from support.brokers import Broker
from support.streams import create_topics

from streams.settings import Settings
from streams.worker.app import create_app
from streams.worker.transport import FetchWaitTransport, request_rejoin


def test_the_worker_consumer_fetches_with_the_configured_wait(broker: Broker) -> None:
    async def fetcher_wait_ms() -> int:
        app = create_app(Settings(broker=broker.url, app_id="fetch-wait-test", fetch_wait_s=0.04))
        assert isinstance(app.transport, FetchWaitTransport)
        # The aiokafka consumer Faust's consumer thread builds for a worker, started for real:
        # its fetcher is what sends fetch requests with this wait.
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
        await consumer.start()
        try:
            return int(consumer._fetcher._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(fetcher_wait_ms()) == 40


def test_a_consumer_that_rejoins_its_group_reads_on_from_the_committed_offset(broker: Broker) -> None:
    """What the worker falls back on where its seek back to the committed offsets fails (`request_rejoin`).

    A consumer reads six events and commits after the second; after the rejoin it reads from
    the third again, on a real broker. Also fails if aiokafka renames the trigger it pulls.
    """
    topic = "rejoin-test"
    create_topics(broker, [topic])

    async def offsets_read_after_a_rejoin() -> list[int]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for i in range(6):
                await producer.send_and_wait(topic, f"event {i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id="rejoin-test",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            read: list[int] = []
            while len(read) < 6:
                read += [r.offset for records in (await consumer.getmany(timeout_ms=1000)).values() for r in records]
            tp = TopicPartition(topic, 0)
            await consumer.commit({tp: 2})
            assert await consumer.position(tp) == 6
            await request_rejoin(consumer)
            again: list[int] = []
            while len(again) < 4:
                again += [r.offset for records in (await consumer.getmany(timeout_ms=1000)).values() for r in records]
            return again
        finally:
            await consumer.stop()

    assert asyncio.run(asyncio.wait_for(offsets_read_after_a_rejoin(), 60)) == [2, 3, 4, 5]
