"""Dead letters: the one builder of DeadLetter records, and re-publishing them (``tagstream dlq replay``).

The worker and the sink both dead-letter what they cannot process, with the same record and
the same size policy: the original key and value as received (cut, and marked as cut, when
they would make the letter itself too large to publish), the error kind and message (cut to
``MAX_ERROR_CHARS``), and the upload's ids when they are known.

Re-publishing is safe to repeat: the original bytes carry the original event id, so a worker
answers a re-published upload with the same suggestion event id (same model), and the sink
stores it once. The read stops at the end the dead-letter topic had when the command started,
so letters written by the re-published events failing again are left for the next run instead
of being re-published in a loop.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import DEAD_LETTER, DecodeError, decode
from streams.kafka import PartitionRange, bootstrap_servers, read_ranges, topic_partitions
from streams.settings import Settings

log = logging.getLogger(__name__)

# A dead letter quotes its error; a message longer than this (an exception quoting a huge input)
# is cut, so that the letter itself stays small enough to publish.
MAX_ERROR_CHARS = 4096
# The original key travels with the dead letter (it decides the partition); a key longer than
# this is cut, and the letter says so.
MAX_KEY_BYTES = 1024
# Ids echoed into a letter are cut to this many characters by default (an over-long id may be
# the very reason for the letter).
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class Original:
    """Where a failed message came from, and its bytes as received."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def dead_letter_record(
    original: Original,
    kind: str,
    error: str,
    *,
    attempts: int = 1,
    upload_id: str | None = None,
    upload_event_id: str | None = None,
    max_value_bytes: int | None = None,
    max_id_chars: int = MAX_ID_CHARS,
) -> dict[str, Any]:
    """A DeadLetter record; ``max_value_bytes`` (None: no limit) cuts the original value, and says so."""
    value = original.value if max_value_bytes is None else original.value[:max_value_bytes]
    key = original.key[:MAX_KEY_BYTES] if original.key is not None else None
    notes = []
    if len(value) < len(original.value):
        notes.append(f"value cut from {len(original.value)} to {len(value)} bytes")
    if key is not None and original.key is not None and len(key) < len(original.key):
        notes.append(f"key cut from {len(original.key)} to {len(key)} bytes")
    return {
        "event_id": str(uuid.uuid4()),
        "original_topic": original.topic,
        "original_partition": original.partition,
        "original_offset": original.offset,
        "key": key,
        "value": value,
        "error_kind": kind,
        "error_message": clip(error, MAX_ERROR_CHARS) + (f" [{'; '.join(notes)}]" if notes else ""),
        "attempts": attempts,
        "failed_at": datetime.now(timezone.utc),
        "upload_id": None if upload_id is None else clip(upload_id, max_id_chars),
        "upload_event_id": None if upload_event_id is None else clip(upload_event_id, max_id_chars),
        "value_truncated": len(value) < len(original.value),
        "value_size": len(original.value),
    }


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (saying so), and always encodable as UTF-8."""
    clipped = text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    return clipped.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class DlqReplayRequest:
    topic: str
    """The dead-letter topic to read (the workers' or the sink's)."""
    kind: str | None = None
    """Only letters of this error kind (e.g. fetch_error); None: every kind."""
    max_letters: int | None = None


@dataclass
class DlqReplaySummary:
    republished: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(original topic, error kind) → letters re-published."""
    other_kinds: int = 0
    undecodable: int = 0
    truncated: int = 0
    """Letters that kept only part of the original bytes (too large to keep whole): not re-publishable."""

    def __str__(self) -> str:
        parts = [f"{n} {kind} to {topic}" for (topic, kind), n in sorted(self.republished.items())]
        return (
            f"re-published {sum(self.republished.values())} dead letters ({', '.join(parts) or 'none'}); "
            f"{self.other_kinds} of other kinds left, {self.undecodable} undecodable skipped, "
            f"{self.truncated} with truncated values skipped"
        )


async def replay_dead_letters(settings: Settings, request: DlqReplayRequest) -> DlqReplaySummary:
    summary = DlqReplaySummary()
    servers = bootstrap_servers(settings.broker)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, fetch_max_wait_ms=settings.fetch_wait_ms
    )
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await consumer.start()
    await producer.start()
    try:
        tps = await topic_partitions(consumer, request.topic, wait_s=5.0)
        consumer.assign(tps)
        beginning, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        ranges = {tp: PartitionRange(beginning[tp], end[tp]) for tp in tps}
        async with aclosing(read_ranges(consumer, ranges, max_records=100)) as batches:
            async for batch in batches:
                for message in batch:
                    if request.max_letters is not None and sum(summary.republished.values()) >= request.max_letters:
                        return summary
                    try:
                        letter = decode(message.value or b"", expected=DEAD_LETTER)
                    except DecodeError as exc:
                        log.warning(
                            "skipping %s[%d]@%d: not a dead letter (%s)",
                            message.topic,
                            message.partition,
                            message.offset,
                            exc,
                        )
                        summary.undecodable += 1
                        continue
                    if request.kind is not None and letter["error_kind"] != request.kind:
                        summary.other_kinds += 1
                        continue
                    if letter["value_truncated"]:
                        log.warning(
                            "skipping %s[%d]@%d: it keeps only %d of the original %s bytes",
                            message.topic,
                            message.partition,
                            message.offset,
                            len(letter["value"]),
                            letter["value_size"],
                        )
                        summary.truncated += 1
                        continue
                    await producer.send_and_wait(letter["original_topic"], letter["value"], key=letter["key"])
                    summary.republished[(letter["original_topic"], letter["error_kind"])] += 1
    finally:
        await producer.stop()
        await consumer.stop()
    return summary
