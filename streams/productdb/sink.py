"""The product-DB sink: tag-suggestions in, rows out; a batch's offsets are committed after its DB commit.

It is a plain aiokafka consumer group (``<app_id>-sink`` by default), not a Faust agent. The
whole job is "poll a batch → one DB transaction → commit exactly those offsets", which
``getmany`` + ``commit(offsets)`` say directly; Faust would commit acked offsets later on its own
timer and need the agent's incref trick to keep ``take``'s implicit acks from committing
unwritten events. Being its own group, the sink scales and restarts independently of the
workers (more sink replicas than partitions is pointless; see docs/downstream.md).

Failure handling, by what failed:
- a message that is not a TagSuggestions event, or one the database refuses as data (a NUL
  byte, a value out of range): logged, counted, sent to the sink's dead-letter topic when one
  is configured, and committed past, so one bad message never blocks its partition;
- the database or the dead-letter topic being unreachable: retried with backoff forever,
  nothing committed meanwhile; stopping then exits without committing, so the batch comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from schemas import DEAD_LETTER, TAG_SUGGESTIONS, DecodeError, decode, encode
from streams.deadletters import Original, dead_letter_record
from streams.kafka import bootstrap_servers
from streams.productdb.db import ProductDB, WriteResult
from streams.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
BACKOFF_MAX_S = 30.0
STATS_EVERY_S = 10.0


def sink_group(settings: Settings) -> str:
    return settings.sink.group_id or f"{settings.app_id}-sink"


@dataclass
class SinkStats:
    stored: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def add(self, result: WriteResult) -> None:
        self.stored += result.written
        self.duplicates += result.duplicates

    def __str__(self) -> str:
        rejected = ", ".join(f"{n} {kind}" for kind, n in sorted(self.rejected.items())) or "none"
        return f"{self.stored} events stored, {self.duplicates} duplicates skipped, rejected: {rejected}"


@dataclass(frozen=True)
class _Reject:
    message: ConsumerRecord[bytes, bytes]
    kind: str  # decode_error | sink_error
    reason: str
    record: dict[str, Any] | None


class _Stopping(Exception):
    """Stop was requested while an operation was still being retried: leave it uncommitted."""


class SuggestionSink:
    def __init__(self, settings: Settings, db: ProductDB, stop: asyncio.Event) -> None:
        self._settings = settings
        self._db = db
        self._stop = stop
        self.stats = SinkStats()
        self._producer: AIOKafkaProducer | None = None

    async def run(self) -> SinkStats:
        """Consume until ``stop`` is set; the schema is created or migrated first."""
        settings = self._settings
        try:
            version = await self._retrying("migrate the product DB", self._db.migrate)
        except _Stopping:
            log.info("stopped before the product DB could be reached")
            return self.stats
        log.info(
            "product DB at schema v%d; consuming %s as group %s",
            version,
            settings.topics.suggestions,
            sink_group(settings),
        )
        consumer = AIOKafkaConsumer(
            settings.topics.suggestions,
            bootstrap_servers=bootstrap_servers(settings.broker),
            group_id=sink_group(settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.fetch_wait_ms,
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(max(settings.session_timeout_s / 6, 0.5) * 1000),
            # The topic may not exist until the first worker creates it: notice it soon.
            metadata_max_age_ms=5000,
        )
        if settings.sink.dead_letters:
            self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.broker), acks="all")
            await self._producer.start()
        await consumer.start()
        last_report, reported = time.monotonic(), str(self.stats)
        try:
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=settings.sink.max_batch)
                messages = [message for partition in batches.values() for message in partition]
                if messages:
                    await self._handle(consumer, messages)
                if time.monotonic() - last_report > STATS_EVERY_S and str(self.stats) != reported:
                    last_report, reported = time.monotonic(), str(self.stats)
                    log.info("sink: %s", reported)
        except _Stopping:
            log.info("stopping with a batch unfinished; it was not committed and will be consumed again")
        finally:
            await consumer.stop()
            if self._producer is not None:
                await self._producer.stop()
        log.info("sink stopped: %s", self.stats)
        return self.stats

    async def _handle(self, consumer: AIOKafkaConsumer, messages: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        decoded: list[tuple[ConsumerRecord[bytes, bytes], dict[str, Any]]] = []
        rejects: list[_Reject] = []
        for message in messages:
            try:
                decoded.append((message, decode(message.value or b"", expected=TAG_SUGGESTIONS)))
            except DecodeError as exc:
                rejects.append(_Reject(message, "decode_error", f"{exc.reason.value}: {exc}", None))
        rejects += await self._store(decoded)
        for reject in rejects:
            await self._reject(reject)
        await _commit(consumer, messages)

    async def _store(self, decoded: Sequence[tuple[ConsumerRecord[bytes, bytes], dict[str, Any]]]) -> list[_Reject]:
        """Write the batch in one transaction; if the data is refused, write event by event to find the culprits."""
        if not decoded:
            return []
        try:
            self.stats.add(await self._retrying("write to the product DB", self._db.write, [r for _, r in decoded]))
            return []
        except self._db.data_errors as exc:
            log.warning("product DB refused a batch of %d (%s); writing its events one by one", len(decoded), exc)
        rejects = []
        for message, record in decoded:
            try:
                self.stats.add(await self._retrying("write to the product DB", self._db.write, [record]))
            except self._db.data_errors as exc:
                rejects.append(_Reject(message, "sink_error", f"{type(exc).__name__}: {exc}", record))
        return rejects

    async def _reject(self, reject: _Reject) -> None:
        message, record = reject.message, reject.record or {}
        self.stats.rejected[reject.kind] = self.stats.rejected.get(reject.kind, 0) + 1
        target = self._settings.sink.dead_letters or "nowhere (no sink dead-letter topic configured)"
        log.error(
            "rejected %s[%d]@%d (%s: %s); dead letter to %s",
            message.topic,
            message.partition,
            message.offset,
            reject.kind,
            reject.reason,
            target,
        )
        if self._producer is None:
            return
        letter = dead_letter_record(
            Original(message.topic, message.partition, message.offset, message.key, message.value or b""),
            reject.kind,
            reject.reason,
            upload_id=record.get("upload_id"),
            upload_event_id=record.get("upload_event_id"),
            max_value_bytes=self._settings.max_event_bytes,
        )
        producer, topic = self._producer, self._settings.sink.dead_letters
        await self._retrying(
            f"publish a dead letter to {topic}",
            lambda: producer.send_and_wait(topic, encode(DEAD_LETTER, letter), key=message.key),
        )

    async def _retrying(self, what: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``call(*args)`` until it succeeds; the DB's data errors are not worth retrying and pass through.

        Everything else (connection refused, server restarting, broker unreachable) is retried
        with exponential backoff, until stop is requested.
        """
        delay = 0.5
        while True:
            try:
                return await call(*args)
            except self._db.data_errors:
                raise
            except Exception as exc:
                if self._stop.is_set():
                    raise _Stopping() from exc
                log.warning("could not %s (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, BACKOFF_MAX_S)


async def _commit(consumer: AIOKafkaConsumer, messages: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
    offsets: dict[TopicPartition, int] = {}
    for message in messages:
        partition = TopicPartition(message.topic, message.partition)
        offsets[partition] = max(offsets.get(partition, 0), message.offset + 1)
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        # Rebalanced away (or the coordinator moved): the rows are stored; whoever owns the
        # partition now re-reads from the last commit and the DB skips what it already has.
        log.warning("offset commit failed (%s); those events may be delivered again (harmless)", exc)


async def run_sink(settings: Settings) -> SinkStats:
    """The ``tagstream sink`` process: runs until SIGTERM or SIGINT, then finishes its batch."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with ProductDB.open(settings.sink.db) as db:
        return await SuggestionSink(settings, db, stop).run()
