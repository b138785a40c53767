"""Acks released in each partition's offset order, whatever order the batches finish in.

Faust commits, per partition, the run of consecutive acked offsets that follows the last
commit; but it checks that the run starts at the committed offset only when more than one
offset is missing (``Consumer._new_offset``: ``min(acked) - committed > 1``), and not at all
when it knows no commit for the partition (before the first, and after every rebalance). With
two batches in flight, a later batch can be answered first: Faust then committed past the
upload still in hand, and a worker killed at that moment lost it (its successor starts after
the commit). Measured: tests/e2e/streams/worker/test_faults.py, the out-of-order batch test.

So an answered event is acked only once every event taken before it from the same partition
is answered too. Faust then only ever sees a prefix of each partition acked, and any commit
it makes covers answered events alone. Answering is not delayed: only the ack waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from faust.types import TP, EventT


@dataclass
class _Held:
    event: EventT
    answered: bool = False


class OrderedAcks:
    """Holds the events taken from the stream, per partition in the order taken, until their turn to be acked."""

    def __init__(self, ack: Callable[[EventT], Awaitable[object]]) -> None:
        self._ack = ack
        self._queues: dict[TP, deque[_Held]] = {}
        self._by_event: dict[int, _Held] = {}
        # A release acks several events; two releases interleaving at an await would ack out of order.
        self._releasing = asyncio.Lock()

    def taken(self, events: Sequence[EventT]) -> None:
        """Record ``events`` in the order the stream handed them over (offset order within a partition)."""
        for event in events:
            held = _Held(event)
            self._queues.setdefault(event.message.tp, deque()).append(held)
            self._by_event[id(event)] = held

    async def answered(self, event: EventT) -> None:
        """``event`` is answered: ack it and the answered events behind it, once nothing taken before is open."""
        held = self._by_event[id(event)]
        held.answered = True
        async with self._releasing:
            queue = self._queues[event.message.tp]
            while queue and queue[0].answered:
                done = queue.popleft()
                del self._by_event[id(done.event)]
                await self._ack(done.event)
            if not queue:
                del self._queues[event.message.tp]
