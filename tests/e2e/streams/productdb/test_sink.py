"""The product-DB sink as a real process against the real broker and a real database.

Offsets are committed after the DB transaction, never before: a sink killed with its write
pending loses nothing, and a locked database holds the offsets back until it is written.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.brokers import Broker
from support.processes import WorkerFactory
from support.sinks import SinkFactory, Topics, migrate, stored
from support.streams import collect, committed_offset, upload_records, wait_for

from schemas import TAG_SUGGESTIONS, encode
from streams.events import suggestion_event_id
from streams.kafka import produce_raw, produce_uploads
from workbench.image_server import ImageServer
from workbench.scenes import DemoSet

# Runs the `sink` command through the downstream CLI's own parser (what `tagstream sink` runs).


@pytest.fixture
def sinks(broker: Broker, tmp_path: Path) -> Iterator[SinkFactory]:
    factory = SinkFactory(broker, tmp_path)
    yield factory
    for sink in factory.started:
        sink.stop()


def suggestion_event(upload_id: str, product_id: str = "sku-1") -> dict[str, Any]:
    upload_event_id = str(uuid.uuid4())
    return {
        "event_id": suggestion_event_id(upload_event_id, "v1"),
        "upload_event_id": upload_event_id,
        "upload_id": upload_id,
        "processed_at": datetime.now(timezone.utc),
        "latency_ms": 5.0,
        "suggestions": [
            {
                "product_id": product_id,
                "found": True,
                "confidence": 0.8,
                "bbox": {"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0},
                "detected_class": None,
                "method": "clip",
            }
        ],
        "detections_count": 1,
        "model": {"detector": "d", "embedder": "e", "version": "v1"},
    }


def publish(broker: Broker, topic: str, messages: list[dict[str, Any] | bytes]) -> None:
    raw = [
        (m["upload_id"].encode(), encode(TAG_SUGGESTIONS, m)) if isinstance(m, dict) else (b"bad", m) for m in messages
    ]
    asyncio.run(produce_raw(broker.url, topic, raw))


def test_upload_becomes_rows_in_postgres(
    broker: Broker,
    workers: WorkerFactory,
    sinks: SinkFactory,
    demo_set: DemoSet,
    image_server: ImageServer,
    postgres_url: str,
) -> None:
    topics = Topics.create(broker, "sinke2e")
    sent = asyncio.run(produce_uploads(broker.url, topics.uploads, upload_records(demo_set, image_server)))
    prefix = topics.uploads.removesuffix(".image-uploaded")
    workers.start(f"{prefix}-workers", prefix)
    sinks.start(topics, postgres_url)

    events = collect(broker, topics.suggestions, len(sent), timeout_s=120)
    uploads = [str(e["upload_id"]) for e in sent]
    wait_for(lambda: committed_offset(broker, topics.sink_group, topics.suggestions) == len(sent), timeout_s=60)

    assert len(events) == len(sent)
    rows = stored(postgres_url, uploads)
    for event in events:
        runs = rows[str(event["upload_id"])]
        suggestions: list[dict[str, Any]] = event["suggestions"]  # type: ignore[assignment]
        assert {r.event_id for r in runs} == {event["event_id"]}, "one run per upload, no duplicates"
        assert [(r.product_id, r.found, r.method) for r in runs] == [
            (s["product_id"], s["found"], s["method"]) for s in suggestions
        ]
        assert {(r.model_version, r.upload_event_id) for r in runs} == {
            (event["model"]["version"], event["upload_event_id"])  # type: ignore[index]
        }


def test_bad_and_duplicate_messages_do_not_block_the_partition(
    broker: Broker, sinks: SinkFactory, postgres_url: str
) -> None:
    topics = Topics.create(broker, "sinkbad")
    first, poisoned, last = (
        suggestion_event("u-first"),
        suggestion_event("u-nul", "sku\x00nul"),
        suggestion_event("u-last"),
    )
    publish(broker, topics.suggestions, [first, b"\x00\x00\x00\x00\x63 not avro", first, poisoned, last])
    sink = sinks.start(topics, postgres_url)

    letters = collect(broker, topics.sink_dead_letters, 2, timeout_s=60)
    wait_for(lambda: committed_offset(broker, topics.sink_group, topics.suggestions) == 5, timeout_s=30)
    late = suggestion_event("u-late")
    publish(broker, topics.suggestions, [late, first])
    wait_for(lambda: committed_offset(broker, topics.sink_group, topics.suggestions) == 7, timeout_s=30)
    sink.stop()

    rows = stored(postgres_url, ["u-first", "u-nul", "u-last", "u-late"])
    assert [r.event_id for r in rows["u-first"]] == [first["event_id"]]
    assert rows["u-nul"] == []
    assert [r.event_id for r in rows["u-last"]] == [last["event_id"]]
    assert [r.event_id for r in rows["u-late"]] == [late["event_id"]]
    by_kind = {letter["error_kind"]: letter for letter in letters}
    assert by_kind.keys() == {"decode_error", "sink_error"}
    assert by_kind["decode_error"]["value"] == b"\x00\x00\x00\x00\x63 not avro"
    assert (by_kind["decode_error"]["original_topic"], by_kind["decode_error"]["original_offset"]) == (
        topics.suggestions,
        1,
    )
    assert by_kind["sink_error"]["upload_event_id"] == poisoned["upload_event_id"]
    assert "NUL" in str(by_kind["sink_error"]["error_message"])
    assert sink.process.returncode == 0
    assert "3 events stored, 2 duplicates skipped, rejected: 1 decode_error, 1 sink_error" in sink.output()


def test_sink_killed_while_its_write_waits_loses_nothing(
    broker: Broker, sinks: SinkFactory, postgres_url: str, postgres_server: str
) -> None:
    topics = Topics.create(broker, "sinkkill")
    application = postgres_url.rsplit("application_name=", 1)[1]
    migrate(postgres_url)
    events = [suggestion_event(f"u-{i}") for i in range(3)]
    publish(broker, topics.suggestions, list(events))
    with psycopg.connect(postgres_url) as locker:
        locker.execute("LOCK TABLE suggestion_runs IN ACCESS EXCLUSIVE MODE")
        first = sinks.start(topics, postgres_url)

        def sink_waits_on_the_lock() -> bool:
            with psycopg.connect(postgres_server) as observer:
                waiting = observer.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
                    " AND query LIKE '%%INSERT INTO suggestion_runs%%'",
                    (application,),
                ).fetchone()
            return bool(waiting and waiting[0])

        wait_for(sink_waits_on_the_lock, timeout_s=60)
        assert committed_offset(broker, topics.sink_group, topics.suggestions) is None
        first.kill()
        locker.rollback()

    time.sleep(1)
    assert all(rows == [] for rows in stored(postgres_url, [e["upload_id"] for e in events]).values())
    sinks.start(topics, postgres_url)
    wait_for(lambda: committed_offset(broker, topics.sink_group, topics.suggestions) == 3, timeout_s=60)
    rows = stored(postgres_url, [e["upload_id"] for e in events])
    assert [[r.event_id for r in rows[e["upload_id"]]] for e in events] == [[e["event_id"]] for e in events]


def test_locked_sqlite_database_is_retried_and_holds_the_offsets_back(
    broker: Broker, sinks: SinkFactory, tmp_path: Path
) -> None:
    topics = Topics.create(broker, "sinklock")
    db_url = f"sqlite:///{tmp_path}/products.db"
    sink = sinks.start(topics, db_url)
    wait_for(lambda: "consuming" in sink.output(), timeout_s=30)
    locker = sqlite3.connect(tmp_path / "products.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    events = [suggestion_event(f"u-{i}") for i in range(2)]
    publish(broker, topics.suggestions, list(events))

    wait_for(lambda: "database is locked" in sink.output(), timeout_s=60)
    held_back = committed_offset(broker, topics.sink_group, topics.suggestions)
    locker.execute("ROLLBACK")
    locker.close()
    wait_for(lambda: committed_offset(broker, topics.sink_group, topics.suggestions) == 2, timeout_s=60)

    assert held_back is None
    rows = stored(db_url, [e["upload_id"] for e in events])
    assert [[r.event_id for r in rows[e["upload_id"]]] for e in events] == [[e["event_id"]] for e in events]
