"""Kafka helpers on plain aiokafka: broker URLs, waiting for a broker, producing and reading topics.

Faust is for the long-running agents; the one-shot tools (produce, tail, replay, dlq replay),
the health probe and the tests are simpler and quicker on aiokafka.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, for_code

from schemas import IMAGE_UPLOADED, DecodeError, decode, encode


def bootstrap_servers(broker: str) -> list[str]:
    """``kafka://a:9092;b:9092`` (Faust style) or ``a:9092,b:9092`` → ``["a:9092", "b:9092"]``."""
    hosts = broker.replace(";", ",").split(",")
    return [h.strip().removeprefix("kafka://") for h in hosts if h.strip()]


async def wait_for_broker(broker: str, on_retry: Callable[[Exception, float], None], max_delay_s: float = 10.0) -> None:
    """Return once the broker answers a metadata request; until then retry with growing delays.

    A worker started before its broker (a deploy, a host reboot) must wait for it: the consumer
    and producer Faust builds give up, and the worker exits, at the first refused connection.
    ``on_retry(error, delay_s)`` is called before each wait.
    """
    delay = min(0.5, max_delay_s)
    while True:
        client = AIOKafkaClient(bootstrap_servers=bootstrap_servers(broker))
        try:
            await client.bootstrap()
            return
        except KafkaConnectionError as exc:
            on_retry(exc, delay)
        finally:
            await client.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_s)


def complete_upload(record: dict[str, Any]) -> dict[str, Any]:
    """Fill what a hand-written event may leave out: ids, timestamps and defaulted fields."""
    completed = dict(record)
    completed.setdefault("event_id", str(uuid.uuid4()))
    completed.setdefault("occurred_at", datetime.now(timezone.utc))
    if isinstance(completed["occurred_at"], str):
        completed["occurred_at"] = datetime.fromisoformat(completed["occurred_at"].replace("Z", "+00:00"))
    completed.setdefault("similarity_threshold", None)
    completed.setdefault("attributes", {})
    return completed


class UploadProducer:
    """An open producer of ImageUploaded events, keyed by upload_id, for as many sends as needed.

    An application backend keeps its producer connected; whatever measures latency from the
    moment of sending should too, or it times the connection set-up instead.
    """

    def __init__(self, broker: str, topic: str) -> None:
        self._topic = topic
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(broker), acks="all")

    async def __aenter__(self) -> UploadProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()

    async def send(self, record: dict[str, Any]) -> dict[str, Any]:
        """Publish one upload once the broker confirms it; returns the completed record."""
        completed = complete_upload(record)
        value = encode(IMAGE_UPLOADED, completed)
        await self._producer.send_and_wait(self._topic, value, key=completed["upload_id"].encode())
        return completed


async def ensure_topics(broker: str, names: Iterable[str], partitions: int, replication: int) -> list[str]:
    """Create those of ``names`` that do not exist yet; returns the ones this call created.

    Apache Kafka creates no topic for a consumer, and aiokafka notices a topic created after it
    subscribed only at its next metadata refresh (5 minutes by default): a worker started before
    its uploads topic existed would sit idle, and report itself ready, until then. Tansu creates
    topics on first use, where this changes nothing. Another worker creating the same topic at
    the same moment is not an error.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(broker))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics([NewTopic(name, partitions, replication) for name in missing])
    finally:
        await admin.close()
    created = []
    for topic, code, *_ in response.topic_errors:
        if code == 0:
            created.append(topic)
        elif code != TopicAlreadyExistsError.errno:
            raise for_code(code)(f"cannot create topic {topic!r}")
    return created


async def produce_uploads(broker: str, topic: str, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Publish ImageUploaded events keyed by upload_id; returns the completed records."""
    async with UploadProducer(broker, topic) as producer:
        return [await producer.send(record) for record in records]


async def produce_raw(broker: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(broker), acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_topic(
    broker: str,
    topic: str,
    fetch_wait_ms: int,
    from_beginning: bool = True,
    idle_timeout_s: float | None = None,
    topic_wait_s: float = 10.0,
) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """Yield (message, decoded-or-error record) from every partition, without a consumer group.

    Stops after ``idle_timeout_s`` without a new message, or runs forever when None. A topic
    that does not exist yet is waited for ``topic_wait_s`` (it appears with its first record).
    ``fetch_wait_ms`` is the settings' ``fetch_wait_ms`` (how long the broker may hold a fetch).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(broker),
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
    )
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic, topic_wait_s)
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        last = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for message in messages:
                    last = time.monotonic()
                    yield message, decode_message(message.value)
            if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                return
    finally:
        await consumer.stop()


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, wait_s: float) -> list[TopicPartition]:
    """The topic's partitions; a topic nobody wrote to yet may need a moment to appear."""
    deadline = time.monotonic() + wait_s
    while True:
        found = consumer.partitions_for_topic(topic)
        if not found:
            await consumer._client.force_metadata_update()
            found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        if time.monotonic() > deadline:
            raise LookupError(f"topic {topic!r} does not exist on the broker")
        await asyncio.sleep(0.2)


def decode_message(value: bytes | None) -> dict[str, Any]:
    """The decoded record; undecodable bytes become ``{"_undecodable": reason, "_raw_b64": ...}``.

    A dead letter's ``value`` (the original message) is decoded too when it can be, so ``tail``
    on the dead-letter topic shows what the failed event said.
    """
    try:
        record = decode(value or b"")
    except DecodeError as exc:
        return {"_undecodable": f"{exc.reason.value}: {exc}", "_raw_b64": base64.b64encode(value or b"").decode()}
    if "original_topic" in record and isinstance(record.get("value"), bytes):
        record["value_decoded"] = decode_message(record["value"])
    return record


def to_json(record: Any) -> str:
    return json.dumps(record, default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass
class PartitionRange:
    start: int
    listed_end: int
    end: int | None = None
    """Known after the partition's first fetch."""


async def read_ranges(
    consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, PartitionRange], max_records: int
) -> AsyncGenerator[list[ConsumerRecord[bytes, bytes]], None]:
    """Batches of the records in each assigned partition's [start, end), then stop.

    The end is the larger of the listed end offset and the high watermark of the partition's
    first fetch (a broker may under-report the former), fixed from then on: records published
    later, such as the outcomes of a replay of this very topic, are never read, so a reader of
    history cannot feed itself.
    """
    for tp, partition in ranges.items():
        consumer.seek(tp, partition.start)
    pending = set(ranges)
    while pending:
        fetched = await consumer.getmany(*pending, timeout_ms=500, max_records=max_records)
        batch: list[ConsumerRecord[bytes, bytes]] = []
        for tp in list(pending):
            partition, highwater = ranges[tp], consumer.highwater(tp)
            if partition.end is None and highwater is not None:
                partition.end = max(partition.listed_end, highwater)
            end = partition.end
            batch += [m for m in fetched.get(tp, []) if end is None or m.offset < end]
            if end is not None and await consumer.position(tp) >= end:
                pending.discard(tp)
                consumer.pause(tp)
        if batch:
            yield batch
