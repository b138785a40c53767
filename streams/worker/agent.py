"""The ``suggest`` agent: micro-batches of uploads in, suggestions or dead letters out.

**No event is lost.** Faust's ``take``/``take_events`` ack every buffered event in a
``finally`` when the loop body exits, even by an exception or a cancellation at shutdown, and
an acked offset gets committed. So each event's message is held by one extra reference
(``Message.incref``) from the moment its batch is handed to us, and that reference is released
only after the event's suggestion or dead letter is confirmed delivered by the broker. If the
body dies half-way, take's ack drops the count to one, never zero: the offset is not committed
and the event is consumed again after a restart (at-least-once; duplicates are possible,
losses are not). ``take_events`` is used instead of ``take`` because dead letters need each
event's topic, partition, offset and raw key.

Batches finish out of order (two are in flight), so the releasing acks go through
:class:`~streams.worker.acks.OrderedAcks`: an event is acked only after every event taken
before it from its partition is answered, else Faust could commit past an upload still in hand.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import cast

import faust
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from faust.types import EventT, StreamT

from streams.metrics import Metrics
from streams.worker.acks import OrderedAcks
from streams.worker.engine import ModelsUnavailable
from streams.worker.health import Progress
from streams.worker.processor import Inbound, Outbound, SuggestionProcessor

log = logging.getLogger(__name__)

PUBLISH_BACKOFF_MAX_S = 10.0
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


class SuggestAgent:
    def __init__(
        self,
        app: faust.App,
        uploads: faust.TopicT,
        outputs: dict[str, faust.TopicT],
        processor: Callable[[], Awaitable[SuggestionProcessor]],
        max_batch: int,
        max_wait_s: float,
        metrics: Metrics,
        progress: Progress,
        on_fatal: Callable[[BaseException], None],
        batches_in_flight: int = 2,
    ) -> None:
        """``on_fatal`` stops the worker: called when the models cannot be loaded at all, and when a
        batch failed in a way that no dead letter covers (a bug), since nothing after its events
        can be acked then (see :meth:`OrderedAcks.abandon`)."""
        self._app = app
        self._outputs = outputs
        self._processor = processor
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._metrics = metrics
        self._progress = progress
        self._on_fatal = on_fatal
        self._batches_in_flight = batches_in_flight
        self.agent = app.agent(uploads, name="suggest")(self._consume)

    async def _consume(self, stream: StreamT) -> None:
        """Hand each batch to a task and take the next one while it runs.

        With two batches in flight, the next batch's images are fetched and decoded while the
        current one is in the model (model calls themselves are serialised by the engine). The
        extra reference taken here is what makes it safe to leave the loop body early.
        """
        try:
            processor = await self._processor()
        except ModelsUnavailable as exc:
            # Crash-looping would keep this worker's partitions from every healthy worker.
            self._on_fatal(exc)
            return
        slots = asyncio.Semaphore(self._batches_in_flight)
        acks = OrderedAcks(stream.ack)
        running: set[asyncio.Task[None]] = set()
        # take_events is on faust.Stream but missing from its StreamT interface.
        batches = cast(faust.Stream, stream).take_events(self._max_batch, within=self._max_wait_s)
        try:
            async for events in batches:
                for event in events:
                    event.message.incref()
                acks.taken(events)
                self._progress.taken(len(events))
                await slots.acquire()
                task = asyncio.create_task(self._handle(acks, processor, events))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: slots.release())
                task.add_done_callback(functools.partial(self._batch_done, acks))
        except Exception as exc:
            # Faust would restart the agent with new acks, blind to the batches cancelled below.
            self._give_up(acks, exc)
            # Returning would close take_events, which turns Faust's own acking back on: what the
            # stream reads until the stop would be acked unprocessed. Wait for the stop instead.
            await asyncio.Event().wait()
        finally:
            # Unfinished batches stay unacknowledged, so they are consumed again after a restart.
            for task in running:
                task.cancel()

    async def _handle(self, acks: OrderedAcks, processor: SuggestionProcessor, events: Sequence[EventT]) -> None:
        received_at = datetime.now(timezone.utc)
        self._metrics.events_consumed.inc(len(events))
        self._metrics.batch_size.observe(len(events))
        batch = [
            Inbound(
                topic=e.message.topic,
                partition=e.message.partition,
                offset=e.message.offset,
                key=e.message.key,
                value=e.message.value or b"",
                received_at=received_at,
            )
            for e in events
        ]
        answered = 0
        try:
            outcomes = await processor.process(batch)
            deliveries = [
                asyncio.ensure_future(self._deliver(processor, message, outcome, event.message.timestamp))
                for event, message, outcome in zip(events, batch, outcomes, strict=True)
            ]
            try:
                for event, delivered in zip(events, deliveries, strict=True):
                    await delivered
                    answered += 1
                    self._progress.answered()
                    await acks.answered(event)
            finally:
                for delivery in deliveries:
                    delivery.cancel()
        finally:
            # Cancelled at a shutdown, or failed: the rest come again, they are no longer in hand.
            self._progress.dropped(len(events) - answered)

    def _batch_done(self, acks: OrderedAcks, task: asyncio.Task[None]) -> None:
        """A batch task that raised stops the worker.

        The processor turns every known failure into a dead letter, so this is a bug. Its
        events are not lost: nothing is acked any more (in any partition), and they are
        consumed again from the last commit by the worker that takes the partitions over.
        """
        if not task.cancelled() and task.exception() is not None:
            self._give_up(acks, cast(BaseException, task.exception()))

    def _give_up(self, acks: OrderedAcks, error: BaseException) -> None:
        log.error("batch handling failed; stopping the worker, unacked events will be consumed again", exc_info=error)
        acks.abandon()
        # Faust's stop waits until every message in hand is acked, which none will be any more.
        self._app.conf.stream_wait_empty = False
        self._on_fatal(error)

    async def _deliver(
        self, processor: SuggestionProcessor, message: Inbound, outcome: Outbound, produced_at: float | None
    ) -> None:
        """Publish ``outcome``, or what replaces it if the broker refuses it for good.

        A refusal no retry can fix (the record is over the producer's or broker's size limit)
        must not hold the batch forever: the suggestion becomes a dead letter, a refused dead
        letter becomes one without the original bytes. Only if even that is refused is the
        event given up, loudly (an error log and ``tagstream_publish_refused_total``).
        """
        where = f"{message.topic}[{message.partition}]@{message.offset}"
        current: Outbound | None = outcome
        while current is not None:
            try:
                await self._publish(current)
            except PublishRefused as refused:
                self._metrics.publish_refused.labels("suggestion" if current.reason is None else "dead_letter").inc()
                log.warning("%s: its %s was refused for good: %s", where, current.reason or "suggestion", refused)
                current = processor.undeliverable(message, current, refused)
            else:
                self._metrics.delivered(current.reason, produced_at)
                return
        log.error("%s: even a dead letter without the original bytes was refused; the event is given up", where)

    async def _publish(self, outcome: Outbound) -> None:
        """Send and wait for the broker's confirmation, retrying until it comes.

        While the broker is down the batch waits here, unacknowledged: the worker resumes
        when it returns instead of dropping or committing anything. A refusal that no retry
        can change raises :class:`PublishRefused`.
        """
        topic = self._outputs[outcome.topic]
        delay = 0.5
        while True:
            try:
                pending = await topic.send(key=outcome.key, value=outcome.value)
                await pending
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _too_large(exc):
                    raise PublishRefused(f"{type(exc).__name__}: {exc}") from exc
                log.warning("publish to %s failed (%r); retrying in %.1fs", outcome.topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, PUBLISH_BACKOFF_MAX_S)


class PublishRefused(Exception):
    """The broker or the producer refused a record in a way that sending it again cannot change."""


def _too_large(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: Faust wraps send errors) says the record is too large."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, _TOO_LARGE):
            return True
        current = current.__cause__ or current.__context__
    return False
