"""Faust's Kafka transport, with the worker consumer's fetch wait made a setting and skipped events not acked.

faust-streaming builds the worker's aiokafka consumer with ``fetch_max_wait_ms=1500`` written
into the call. Apache Kafka answers a fetch as soon as data arrives, so there the value only
bounds idle polling. A broker that holds every fetch until the wait expires (Tansu, the
development and test broker) adds up to that much to every event's latency: with 1.5 s it was
the largest part of the end-to-end latency here.

The consumer also refuses the acks of events the stream skipped instead of handing them over
(`_Consumer.ack`), which Faust's pure-Python stream iterator sends, and its seek back to the
committed offsets also rewinds the partitions nobody has committed yet, and stops fetching and
rejoins the group where that seek fails (`_Consumer.seek_to_committed`). Nothing else of the
transport changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import aiokafka
import faust
from aiokafka.errors import IllegalStateError
from faust import transport as faust_transports
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from yarl import URL

log = logging.getLogger(__name__)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher, i.e. after this point;
        # tests/e2e/streams/worker/test_transport.py fails if an aiokafka release renames it.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer

    async def restart_from_committed(self) -> None:
        """Stop fetching and rejoin the group (see :func:`restart_from_committed`), on the consumer thread."""
        await self.call_thread(restart_from_committed, self._ensure_consumer())


async def restart_from_committed(consumer: aiokafka.AIOKafkaConsumer) -> None:
    """Pause every assigned partition and make ``consumer`` rejoin its group.

    The new assignment starts every partition at its committed offset: aiokafka builds a fresh
    position state for each partition of an assignment, read from the committed offsets (or
    the reset policy where none), and unpaused. So a rejoin restores what a failed seek to the
    committed offsets should have done. The rejoin is only requested here and happens later;
    the pause keeps anything past the old positions from being delivered (and acked, then
    committed over the gap) before it. aiokafka has no public call for the rejoin: this pulls
    its group coordinator's own trigger, the one a failed heartbeat pulls.
    tests/e2e/streams/worker/test_transport.py fails if a release renames it. A coroutine
    function because the consumer thread's ``call_thread`` takes one.
    """
    consumer.pause(*consumer.assignment())
    consumer._coordinator.request_rejoin()


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Every assigned partition back to its committed offset, or to its first one where none was committed.

        Faust discards what it fetched while its flow was stopped (a rebalance under way, the
        recovery after it) and counts on this seek to read it again. aiokafka seeks only the
        partitions with a committed offset above 0. The others keep their fetch position,
        past the discarded events, and the first event answered after them commits over
        them. This happens to a partition whose previous owner died before its first commit.
        It was seen in the scale-out test on Apache Kafka under load: a worker killed 0.1 s
        after taking its partitions, and 31 uploads never answered. For such a partition the
        first offset is what "committed" means where ``consumer_auto_offset_reset`` is "earliest"
        (the worker's, `streams.worker.app`). Events a dead owner had answered without
        committing are answered again.

        Where the seek fails, Faust only logs a warning and reads on past the discarded events.
        A failure because the assignment changed meanwhile (aiokafka's ``IllegalStateError``, or
        its assertion that none is left) is harmless: a new assignment starts from the committed
        offsets. Any other failure (an error reading the committed offsets that aiokafka does
        not retry) would lose them, so the consumer stops fetching and rejoins the group, which
        restarts every partition from its committed offset. The error goes on to Faust either
        way.
        """
        try:
            committed = await super().seek_to_committed()
            if self.app.conf.consumer_auto_offset_reset != "earliest":
                return committed  # "latest": where aiokafka leaves them is where the setting says to start
            never = [tp for tp, offset in committed.items() if offset is None or offset <= 0]
            if never:  # no arguments would rewind every partition
                await self._thread.seek_to_beginning(*never)
            return committed
        except (IllegalStateError, AssertionError):
            raise  # the assignment changed: a rejoin would only cost the group another rebalance
        except Exception as error:
            log.warning(
                "seek back to the committed offsets failed (%r): rejoining the group to restart from them", error
            )
            try:
                await cast(_ConsumerThread, self._thread).restart_from_committed()
            except Exception:
                log.exception("could not rejoin the group after the failed seek")
            raise

    def ack(self, message: Message) -> bool:
        """Count ``message`` as done only if the stream handed it over (Faust's ``message.tracked``).

        A stream skips the events it will not hand over: those fetched before a rebalance (an
        older consumer generation) and those read while the flow is paused; the consumer reads
        them again from the committed offset. Faust's compiled stream iterator (the Cython
        extension of its Linux wheels) leaves them unacked, but its pure-Python one (``NO_CYTHON``,
        or an install without the extension) acks them. Once a revocation has cleared the
        partition's committed offset, Faust commits any run of acked offsets without looking for
        a gap, so such acks could commit past events nobody answered, and the re-read would
        start after them. Refusing them here makes both iterators safe.
        """
        if not message.tracked:
            return False
        return bool(super().ack(message))


class FetchWaitTransport(faust_aiokafka.Transport):
    """The aiokafka transport whose worker consumer waits at most ``fetch_max_wait_ms`` per fetch."""

    Consumer = _Consumer

    def __init__(self, url: list[URL], app: faust.App, fetch_max_wait_ms: int) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms


def use_fetch_wait(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Make ``app`` consume through :class:`FetchWaitTransport` (call before the app starts).

    Only where Faust would use its aiokafka transport anyway (``kafka://`` and ``aiokafka://``
    URLs); another transport is left as it is.
    """
    urls = app.conf.broker_consumer
    if faust_transports.by_url(urls[0]) is faust_aiokafka.Transport:
        app.transport = FetchWaitTransport(urls, app, fetch_max_wait_ms)
    else:
        log.warning("broker %s does not use the aiokafka transport; fetch_wait_s does not apply", urls[0])
