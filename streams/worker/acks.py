"""Acks released in each partition's offset order, whatever order the batches finish in.

Faust commits, per partition, the run of consecutive acked offsets that follows the last
commit; but it checks that the run starts at the committed offset only when more than one
offset is missing (``Consumer._new_offset``: ``min(acked) - committed > 1``), and not at all
while it knows no commit for the partition (before the first commit, at a committed offset of
0, and between a revocation and the next assignment's seek). With two batches in flight, a later
batch can be answered first: Faust then committed past the upload still in hand, and a worker
killed at that moment lost it (its successor starts after the commit). Measured:
tests/e2e/streams/worker/test_faults.py, the out-of-order batch test.

So an answered event is acked only once every event taken before it from the same partition
is answered too. Faust then only ever sees a prefix of each partition acked, and any commit
it makes covers answered events alone. Answering is not delayed: only the ack waits. This
holds for one agent instance per worker (the ``suggest`` agent's default concurrency of 1):
instances with their own OrderedAcks would split a partition between them.
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
        self._abandoned = False
        # Faust's Stream.ack never suspends, so releases cannot interleave today; the lock keeps
        # them in order for any ``ack`` that does.
        self._releasing = asyncio.Lock()

    def taken(self, events: Sequence[EventT]) -> None:
        """Record ``events`` in the order the stream handed them over (offset order within a partition)."""
        if self._abandoned:
            return
        for event in events:
            held = _Held(event)
            self._queues.setdefault(event.message.tp, deque()).append(held)
            self._by_event[id(event)] = held

    async def answered(self, event: EventT) -> None:
        """``event`` is answered: ack it and the answered events behind it, once nothing taken before is open."""
        if self._abandoned:
            return
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

    def abandon(self) -> None:
        """Ack nothing more and let go of every event held: an event will never be answered.

        Acking the events after it would let Faust commit past it. The worker must stop (and
        not wait for its stream to empty, which it never will): what it did not ack is
        consumed again from the last commit.
        """
        self._abandoned = True
        self._queues.clear()
        self._by_event.clear()
