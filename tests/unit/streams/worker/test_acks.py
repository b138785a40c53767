"""OrderedAcks: each partition acked in the order its events were taken, whatever order they are answered in."""

from __future__ import annotations

import asyncio
import gc
import weakref
from dataclasses import dataclass
from typing import Any, cast

from faust.types import TP, EventT

from streams.worker.acks import OrderedAcks


@dataclass(frozen=True)
class _Message:
    tp: TP
    offset: int


@dataclass(frozen=True, eq=False)
class _Event:
    message: _Message


def _events(topic: str, partition: int, offsets: range) -> list[EventT]:
    return [cast(EventT, _Event(_Message(TP(topic, partition), o))) for o in offsets]


def _offsets(acked: list[Any]) -> list[tuple[int, int]]:
    return [(e.message.tp.partition, e.message.offset) for e in acked]


def _recorder() -> tuple[OrderedAcks, list[Any]]:
    acked: list[Any] = []

    async def ack(event: EventT) -> bool:
        acked.append(event)
        return True

    return OrderedAcks(ack), acked


def test_a_later_batch_answered_first_waits_for_the_earlier_one() -> None:
    acks, acked = _recorder()
    first, later = _events("t", 0, range(10, 12)), _events("t", 0, range(12, 14))
    acks.taken(first)
    acks.taken(later)

    async def run() -> None:
        for event in later:
            await acks.answered(event)
        assert acked == []  # 10 and 11 are still in hand: acking 12 would let Faust commit past them
        await acks.answered(first[0])
        assert _offsets(acked) == [(0, 10)]
        await acks.answered(first[1])

    asyncio.run(run())
    assert _offsets(acked) == [(0, 10), (0, 11), (0, 12), (0, 13)]


def test_partitions_do_not_wait_for_each_other() -> None:
    acks, acked = _recorder()
    slow, fast = _events("t", 0, range(5, 6)), _events("t", 1, range(7, 9))
    acks.taken([*slow, *fast])

    async def run() -> None:
        for event in fast:
            await acks.answered(event)

    asyncio.run(run())
    assert _offsets(acked) == [(1, 7), (1, 8)]


def test_an_unanswered_event_holds_back_only_what_came_after_it_in_its_partition() -> None:
    acks, acked = _recorder()
    events = _events("t", 0, range(0, 4))
    acks.taken(events)

    async def run() -> None:
        await acks.answered(events[0])
        await acks.answered(events[2])
        await acks.answered(events[3])

    asyncio.run(run())
    assert _offsets(acked) == [(0, 0)]  # 1 never answered (a crashed batch): 2 and 3 stay unacked too


def test_abandoned_acks_ack_nothing_more_and_hold_no_event() -> None:
    acks, acked = _recorder()
    first, _never_answered, later = _events("t", 0, range(0, 3))
    acks.taken([first, _never_answered, later])
    watched = weakref.ref(later)

    async def run(answered_first: EventT, answered_later: EventT) -> None:
        await acks.answered(answered_first)
        acks.abandon()
        await acks.answered(answered_later)
        acks.taken(_events("t", 0, range(3, 4)))

    asyncio.run(run(first, later))
    assert _offsets(acked) == [(0, 0)]
    del later
    gc.collect()
    assert watched() is None  # Faust's wait_empty waits only for messages something still holds
