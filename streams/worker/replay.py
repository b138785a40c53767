"""``tagstream replay``: reprocess a time range of the uploads topic with the current model.

The replay reads the range itself, through the same processor the workers run, and publishes
to the same output topics; it does not reset the workers' consumer group. That choice:
- the live workers keep serving new uploads while history is replayed (no stop, no downtime);
- ``--until`` can be honoured (a reset group would run on into the present);
- the summary (events replayed, suggestions, dead letters) is exact, counted where the work is done;
- it needs nothing from the broker beyond fetching, listing offsets and committing offsets, so
  it works the same on Apache Kafka and on the embedded Tansu broker.

Where a replay starts and stops is decided by each record's own timestamp, read as it streams
by, because brokers' time indexes cannot be relied on: Tansu 0.6 answers ListOffsets by
timestamp from the append time (or with offset 0 and timestamp -1), and even Kafka's index says
nothing about a record appended after ``--until`` but stamped before it. The index is used for
the one thing it answers safely, where to start for ``--since``: Kafka's is over the records'
own timestamps, and by an append-time index a record stamped at or after ``--since`` was also
appended at or after it. Incoherent answers (timestamp -1) are ignored. A partition's end is what
existed at its first fetch: the larger of ListOffsets(latest) and that fetch's high watermark,
since Tansu under-reports the former after a multi-record batch.

Progress is committed to a dedicated replay group (``<app_id>-replay`` by default), so standard
Kafka tools show a replay's lag and ``--resume`` continues an interrupted one. The replay joins
no group (it assigns partitions itself); it refuses a group with active members, which would
be a live group whose position it must not move, and the workers' own group. Not being a
member, it cannot see another replay committing to the same group: one replay per group.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.kafka import PartitionRange, bootstrap_servers, read_ranges, topic_partitions
from streams.settings import Settings
from streams.worker.processor import Inbound, SuggestionProcessor
from streams.worker.service import ProcessorProvider


class ReplayRefused(RuntimeError):
    """The replay would disturb a live consumer group; nothing was read or written."""


@dataclass(frozen=True)
class ReplayRequest:
    topic: str
    group: str
    since: datetime | None = None
    """Replay records whose Kafka timestamp is at or after this; None: from the beginning."""
    until: datetime | None = None
    """Replay records whose Kafka timestamp is before this; None: up to the end at start time."""
    resume: bool = False
    """Start each partition at the group's committed offset when it lies inside the range."""


@dataclass
class ReplaySummary:
    total: int = 0
    """Messages in the range's offsets (known once every partition's end is known)."""
    read: int = 0
    replayed: int = 0
    suggestions: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    """Read but outside [since, until) by record timestamp."""
    model_version: str = ""
    seconds: float = 0.0

    def __str__(self) -> str:
        letters = sum(self.dead_letters.values())
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.dead_letters.items()))
        return (
            f"{self.replayed} events replayed with model {self.model_version} in {self.seconds:.1f}s: "
            f"{self.suggestions} suggestions, {letters} dead letters{f' ({kinds})' if kinds else ''}, "
            f"{self.skipped} messages outside the time range skipped"
        )


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without a zone is taken as UTC (never the host's zone)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


async def check_group_idle(settings: Settings, group: str) -> None:
    """Raise ReplayRefused when committing to ``group`` would move a live consumer's position."""
    if group == settings.app_id:
        raise ReplayRefused(f"group {group!r} is the suggestion workers' own group; replay into a dedicated group")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.broker))
    await admin.start()
    try:
        responses = await _describe_group(admin, group)
    finally:
        await admin.close()
    # Each group is (error_code, group_id, state, protocol_type, protocol, members, ...) in every
    # DescribeGroups version; Tansu answers an unknown group with a garbled entry but no members.
    members = [member for response in responses for entry in response.groups for member in entry[5]]
    if members:
        raise ReplayRefused(f"group {group!r} has {len(members)} active member(s); stop them or pick another --group")


async def _describe_group(admin: AIOKafkaAdminClient, group: str, attempts: int = 20) -> list[Any]:
    """DescribeGroups, retried while the broker says it is not ready yet.

    A fresh Apache Kafka cluster creates its offsets topic on the first group request and
    answers "coordinator not available" until it exists (a few seconds); that is not a refusal.
    """
    attempt = 1
    while True:
        try:
            return list(await admin.describe_consumer_groups([group]))
        except KafkaError as error:
            if not error.retriable or attempt >= attempts:
                raise
        attempt += 1
        await asyncio.sleep(0.5)


async def replay(
    settings: Settings, request: ReplayRequest, progress: Callable[[ReplaySummary], None] | None = None
) -> ReplaySummary:
    await check_group_idle(settings, request.group)
    processor = await ProcessorProvider(settings)()
    async with processor.fetcher:  # this engine is the replay's own: close its connections at the end
        return await _replay(settings, request, processor, progress)


async def _replay(
    settings: Settings,
    request: ReplayRequest,
    processor: SuggestionProcessor,
    progress: Callable[[ReplaySummary], None] | None,
) -> ReplaySummary:
    summary = ReplaySummary(model_version=processor.model["version"])
    began = time.monotonic()
    servers = bootstrap_servers(settings.broker)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers,
        group_id=request.group,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_wait_ms,
    )
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await consumer.start()
    await producer.start()
    try:
        ranges = await _resolve_range(consumer, request)
        async with aclosing(read_ranges(consumer, ranges, settings.max_batch)) as batches:
            async for batch in batches:
                summary.total = sum(r.end - r.start for r in ranges.values() if r.end is not None)
                summary.read += len(batch)
                inbound = [_inbound(m) for m in batch if _in_range(m, request)]
                summary.skipped += len(batch) - len(inbound)
                if inbound:
                    await _process(processor, producer, inbound, summary)
                await consumer.commit({TopicPartition(m.topic, m.partition): m.offset + 1 for m in batch})
                summary.seconds = time.monotonic() - began
                if progress is not None:
                    progress(summary)
    finally:
        await producer.stop()
        await consumer.stop()
    summary.seconds = time.monotonic() - began
    return summary


async def _resolve_range(consumer: AIOKafkaConsumer, request: ReplayRequest) -> dict[TopicPartition, PartitionRange]:
    """Assign every partition of the topic and find the first offset worth reading in each."""
    tps = await topic_partitions(consumer, request.topic, wait_s=5.0)
    consumer.assign(tps)
    beginning = await consumer.beginning_offsets(tps)
    listed_end = await consumer.end_offsets(tps)
    ranges = {tp: PartitionRange(beginning[tp], listed_end[tp]) for tp in tps}
    if request.since is not None:
        for tp, offset in (await _time_index(consumer, tps, request.since)).items():
            ranges[tp].start = max(ranges[tp].start, listed_end[tp] if offset is None else offset)
    if request.resume:
        for tp, partition in ranges.items():
            committed = await consumer.committed(tp)
            if committed is not None and committed > partition.start:
                partition.start = committed
    return ranges


async def _time_index(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], moment: datetime
) -> dict[TopicPartition, int | None]:
    """Per partition, no record stamped at or after ``moment`` lies before this offset (None: none at all).

    Partitions whose answer is incoherent (Tansu: timestamp -1) are left out.
    """
    wanted = int(moment.timestamp() * 1000)
    found = await consumer.offsets_for_times({tp: wanted for tp in tps})
    trusted: dict[TopicPartition, int | None] = {}
    for tp, hit in found.items():
        if hit is None or hit.timestamp >= wanted:
            trusted[tp] = None if hit is None else hit.offset
    return trusted


def _in_range(message: ConsumerRecord[bytes, bytes], request: ReplayRequest) -> bool:
    moment = datetime.fromtimestamp(message.timestamp / 1000, timezone.utc)
    return (request.since is None or moment >= request.since) and (request.until is None or moment < request.until)


def _inbound(message: ConsumerRecord[bytes, bytes]) -> Inbound:
    return Inbound(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value or b"",
        received_at=datetime.now(timezone.utc),
    )


async def _process(
    processor: SuggestionProcessor, producer: AIOKafkaProducer, batch: list[Inbound], summary: ReplaySummary
) -> None:
    """One micro-batch through the workers' processor; returns once the broker has every outcome."""
    outcomes = await processor.process(batch)
    deliveries = [await producer.send(o.topic, o.value, key=o.key) for o in outcomes]
    await asyncio.gather(*deliveries)
    summary.replayed += len(batch)
    for outcome in outcomes:
        if outcome.reason is None:
            summary.suggestions += 1
        else:
            summary.dead_letters[outcome.reason] = summary.dead_letters.get(outcome.reason, 0) + 1
