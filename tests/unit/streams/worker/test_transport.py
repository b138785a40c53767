"""The worker's Faust consumer: no ack for an event its stream skipped, and every skipped event read again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust.streams
import pytest
from aiokafka import TopicPartition
from faust.events import Event
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.settings import Settings
from streams.worker.app import create_app

UPLOADS = "uploads"


@pytest.mark.parametrize("iterator", ["compiled", "pure Python"])
def test_an_event_skipped_as_of_an_older_consumer_generation_is_not_counted_done(
    iterator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event fetched before a rebalance (older generation) is skipped, to be read again from the committed offset.

    So its offset must not count as done, whichever of Faust's stream iterators runs: the
    compiled one never acks it, the pure-Python one does and the consumer refuses the ack.
    """
    if iterator == "pure Python":
        monkeypatch.setattr(faust.streams, "_CStreamIterator", None)
    elif faust.streams._CStreamIterator is None:
        pytest.fail("faust-streaming's compiled stream iterator is missing: the install differs from the image's")

    async def stream_one() -> tuple[list[bytes], list[int]]:
        app = create_app(Settings(cache_dir=tmp_path))
        consumer = app.consumer
        # What subscribing an acking stream to the topic records (Conductor._update_indices).
        app.topics._acking_topics.add(UPLOADS)  # type: ignore[attr-defined]
        app.flow_control.resume()
        channel = app.channel(maxsize=10)
        stream = channel.stream()
        old = ConsumerMessage(UPLOADS, 0, 0, 0.0, 0, None, None, b"old", None, generation_id=-1)
        new = ConsumerMessage(UPLOADS, 0, 1, 0.0, 0, None, None, b"new", None, generation_id=app.consumer_generation_id)
        for message in (old, new):
            message.incref(1)
            await channel.put(Event(app, None, message.value, None, message))
        handed: list[bytes] = []
        async for value in stream:
            handed.append(value)
            break
        return handed, list(consumer._acked[TP(UPLOADS, 0)])  # type: ignore[attr-defined]

    handed, acked = asyncio.run(asyncio.wait_for(stream_one(), 10))

    assert handed == [b"new"]
    assert 0 not in acked, "the skipped event's offset counts as done"


class _ThreeAssignedPartitions:
    """The aiokafka consumer thread's side of a seek, for three assigned partitions: never committed, at 0, at 7.

    It answers ``seek_to_committed`` as aiokafka does (None where nothing was committed; it
    seeks only offsets above 0 itself) and records which partitions are sent back to their first offset.
    """

    partitions = tuple(TopicPartition(UPLOADS, p) for p in range(3))

    def __init__(self) -> None:
        self.rewound: list[TopicPartition] = []

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        never, zero, seven = self.partitions
        return {never: None, zero: 0, seven: 7}

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.rewound.extend(partitions)


def test_faust_s_seek_back_to_the_committed_offsets_rewinds_partitions_nobody_committed(tmp_path: Path) -> None:
    """Faust discards what it fetched while its flow was stopped and seeks back to the committed offsets to read it again.

    A partition without a committed offset (its last owner died before its first commit) must
    go back to its first offset, or the discarded events are never read again and the next
    answered one commits over them.
    """
    app = create_app(Settings(cache_dir=tmp_path))
    thread = _ThreeAssignedPartitions()
    app.consumer._thread = thread  # type: ignore[attr-defined]

    asyncio.run(app.consumer.perform_seek())

    never, zero, _ = thread.partitions
    assert thread.rewound == [never, zero]
