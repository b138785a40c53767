"""The worker's Faust consumer: no ack for an event its stream skipped, and every skipped event read again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust.streams
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, IllegalStateError
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


class _AssignedPartitions:
    """The aiokafka consumer thread's side of a seek: committed offsets as aiokafka reports them, and the rewinds asked.

    aiokafka reports None where nothing was committed and seeks only offsets above 0 itself.
    """

    def __init__(self, committed: dict[TopicPartition, int | None], failure: Exception | None = None) -> None:
        self.committed = committed
        self.failure = failure
        self.rewound: list[TopicPartition] = []
        self.restarts = 0

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        if self.failure is not None:
            raise self.failure
        return self.committed

    async def restart_from_committed(self) -> None:
        self.restarts += 1

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        assert partitions, "no partitions would rewind every assigned one"
        assert all(isinstance(p, TopicPartition) for p in partitions), "aiokafka refuses Faust's TP"
        self.rewound.extend(partitions)


NEVER, ZERO, SEVEN = (TopicPartition(UPLOADS, p) for p in range(3))


@pytest.mark.parametrize(
    ("committed", "rewound"),
    [({NEVER: None, ZERO: 0, SEVEN: 7}, [NEVER, ZERO]), ({SEVEN: 7}, [])],
    ids=["some never committed", "all committed"],
)
def test_faust_s_seek_back_to_the_committed_offsets_rewinds_partitions_nobody_committed(
    committed: dict[TopicPartition, int | None], rewound: list[TopicPartition], tmp_path: Path
) -> None:
    """Faust discards what it fetched while its flow was stopped and seeks back to the committed offsets to read it again.

    A partition without a committed offset (its last owner died before its first commit) must
    go back to its first offset, or the discarded events are never read again and the next
    answered one commits over them. Partitions with a commit are aiokafka's to seek.
    """
    app = create_app(Settings(cache_dir=tmp_path))
    thread = _AssignedPartitions(committed)
    app.consumer._thread = thread  # type: ignore[attr-defined]

    asyncio.run(app.consumer.perform_seek())

    assert thread.rewound == rewound
    assert thread.restarts == 0
    # None or 0: Faust's read-offset filter lets the re-read events through.
    assert all(not app.consumer._read_offset[tp] for tp in rewound)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("failure", "restarts"),
    [
        (GroupAuthorizationFailedError(), 1),
        (IllegalStateError("Partitions {TopicPartition(topic='uploads', partition=0)} are not assigned"), 0),
    ],
    ids=["reading the committed offsets failed", "the assignment changed"],
)
def test_a_failed_seek_back_to_the_committed_offsets_restarts_the_consumer_from_them_unless_the_assignment_changed(
    failure: Exception, restarts: int, tmp_path: Path
) -> None:
    """Faust only warns when that seek raises and reads on past the discarded events: they would be lost.

    An error reading the committed offsets that aiokafka does not retry is such a failure: the
    consumer stops fetching and rejoins its group, which gives every partition a new position
    from its committed offset (the real broker's side of it:
    tests/e2e/streams/worker/test_transport.py). Where the assignment changed meanwhile, the new
    one already starts there, and another rebalance of the whole group would buy nothing. The
    error still reaches Faust.
    """
    app = create_app(Settings(cache_dir=tmp_path))
    thread = _AssignedPartitions({}, failure=failure)
    app.consumer._thread = thread  # type: ignore[attr-defined]

    with pytest.raises(type(failure)):
        asyncio.run(app.consumer.perform_seek())

    assert thread.restarts == restarts
