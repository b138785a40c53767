"""``tagstream dlq replay``: re-publish dead letters, byte for byte, to the topic they came from.

Re-publishing is safe to repeat: the original bytes carry the original event id, so a worker
answers a re-published upload with the same suggestion event id (same model), and the sink
stores it once. The read stops at the end the dead-letter topic had when the command started,
so letters written by the re-published events failing again are left for the next run instead
of being re-published in a loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import DEAD_LETTER, DecodeError, decode
from streams.kafka import bootstrap_servers, topic_partitions
from streams.settings import Settings
from streams.worker.replay import PartitionRange, read_ranges

log = logging.getLogger(__name__)


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
