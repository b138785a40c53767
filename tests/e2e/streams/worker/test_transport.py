"""The worker's Faust consumer on a real broker: the configured fetch wait, its seek back to the committed offsets, and the restart it falls back on."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from support.brokers import Broker
from support.streams import create_topics

from streams.settings import Settings
from streams.worker.app import create_app
from streams.worker.transport import FetchWaitTransport, restart_from_committed


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


def test_a_consumer_restarted_from_the_committed_offsets_reads_on_from_there(broker: Broker) -> None:
    """What the worker falls back on where its seek back to the committed offsets fails (`restart_from_committed`).

    A consumer reads six events and commits after the second; restarted, it pauses, rejoins its
    group and reads from the third again, on a real broker: the new assignment is unpaused and
    positioned at the committed offset. Also fails if aiokafka renames the trigger it pulls.
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
            await restart_from_committed(consumer)
            assert consumer.paused() == {tp}, "nothing may be fetched past the old positions before the rejoin"
            again: list[int] = []
            while len(again) < 4:
                again += [r.offset for records in (await consumer.getmany(timeout_ms=1000)).values() for r in records]
            return again
        finally:
            await consumer.stop()

    assert asyncio.run(asyncio.wait_for(offsets_read_after_a_rejoin(), 60)) == [2, 3, 4, 5]


def test_the_worker_consumer_thread_hands_the_restart_to_its_aiokafka_consumer(broker: Broker) -> None:
    """The worker's consumer asks for the restart from Faust's loop; the aiokafka consumer lives on its own thread."""

    async def rejoin_requested() -> tuple[bool, bool]:
        app = create_app(Settings(broker=broker.url, app_id="restart-thread-test"))
        thread = app.consumer._thread  # type: ignore[attr-defined]
        await thread.start()
        try:
            rejoin = thread._ensure_consumer()._coordinator._rejoin_needed_fut
            before = rejoin.done()
            await thread.restart_from_committed()
            return before, rejoin.done()
        finally:
            await thread.stop()

    assert asyncio.run(asyncio.wait_for(rejoin_requested(), 60)) == (False, True)


def test_the_worker_consumer_s_seek_back_to_the_committed_offsets_rewinds_a_partition_nobody_committed(
    broker: Broker,
) -> None:
    """Faust's seek back to the committed offsets (after events discarded in a rebalance), on a real broker.

    Both partitions were read to their end (position 3). Partition 1 has a commit at 2 and goes
    back there (aiokafka's own seek); partition 0 has none, as after an owner that died before
    its first commit, and goes back to its first offset (the worker's addition: aiokafka
    leaves it at 3, past the events to be read again).
    """
    topic = "seek-test"
    create_topics(broker, [topic], partitions=2)

    async def positions_after_the_seek() -> tuple[dict[TopicPartition, int | None], list[int]]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for partition in (0, 1):
                for i in range(3):
                    await producer.send_and_wait(topic, f"event {i}".encode(), partition=partition)
        finally:
            await producer.stop()
        app = create_app(Settings(broker=broker.url, app_id="seek-test"))
        thread = app.consumer._thread  # type: ignore[attr-defined]
        await thread.start()
        try:
            consumer = thread._ensure_consumer()
            await thread.call_thread(lambda: consumer.subscribe([topic]))  # without Faust's rebalance listener
            read = 0
            while read < 6:
                fetched = await thread.call_thread(consumer.getmany, timeout_ms=1000)
                read += sum(len(records) for records in fetched.values())
            await thread.call_thread(consumer.commit, {TopicPartition(topic, 1): 2})
            committed = await app.consumer.seek_to_committed()
            positions = [await thread.call_thread(consumer.position, TopicPartition(topic, p)) for p in (0, 1)]
            return dict(committed), positions
        finally:
            await thread.stop()

    committed, positions = asyncio.run(asyncio.wait_for(positions_after_the_seek(), 60))

    assert committed == {TopicPartition(topic, 0): None, TopicPartition(topic, 1): 2}
    assert positions == [0, 2]
