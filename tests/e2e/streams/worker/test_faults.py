"""Faults through a real broker and real worker processes: nothing lost, every failure explained.

The worker runs with ``trivial_pipeline`` (no models) where the fault is in the stream machinery
(broker outages, image hosts, poison messages, validation), so these tests spend their time on
the fault and not on CLIP; the model-raising and SIGKILL cases with the real (offline) models
are in test_worker_e2e.py. Each test appends its figures to reliability.jsonl (see
tests/support/reliability_report.py); docs/reliability.md is filled from them.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from PIL import Image
from support.brokers import Broker, new_broker
from support.hostile_http import HostileServer, delayed, flaky, stall, status
from support.processes import WorkerFactory
from support.reliability_report import report
from support.streams import collect, committed_offset, create_topics, upload_records
from support.web_worker import sample, start_web_worker

from schemas import DEAD_LETTER, IMAGE_UPLOADED, encode
from streams.kafka import complete_upload, produce_uploads
from streams.worker.service import EXIT_BATCH_FAILED
from workbench.image_server import ImageServer
from workbench.scenes import DemoSet

TRIVIAL = {"TAGSTREAM_PIPELINE_FACTORY": "support.pipelines.trivial:build"}


def _topics(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}.image-uploaded", f"{prefix}.tag-suggestions", f"{prefix}.image-uploaded.dlq"


def _ids(records: list[dict[str, object]]) -> set[str]:
    return {str(r["upload_event_id"]) for r in records}


def _wait_ids(broker: Broker, topic: str, wanted: set[str], timeout_s: float) -> set[str]:
    """Distinct upload_event_ids on ``topic`` once all of ``wanted`` arrived (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline and not wanted <= seen:
        seen = _ids(collect(broker, topic, 100_000, timeout_s=3))
    return seen


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, so stopping or freezing it disturbs no other test."""
    broker = new_broker(tmp_path, "own")
    yield broker
    broker.stop()


def _many(demo_set: DemoSet, server: ImageServer, prefix: str, n: int) -> list[dict[str, Any]]:
    records = upload_records(demo_set, server)
    return [{**records[i % len(records)], "upload_id": f"{prefix}-{i}"} for i in range(n)]


# --- broker faults ------------------------------------------------------------------------


def test_broker_unavailable_at_start(
    own_broker: Broker,
    workers: WorkerFactory,
    demo_set: DemoSet,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    uploads, suggestions, _ = _topics("nobroker")
    worker = workers.start("nobroker", "nobroker", TAGSTREAM_BROKER=own_broker.url, **TRIVIAL)
    time.sleep(15)  # the worker starts, finds nobody on the port, and must keep trying
    assert worker.process.poll() is None, worker.output()[-3000:]
    own_broker.start()
    sent = asyncio.run(produce_uploads(own_broker.url, uploads, _many(demo_set, image_server, "nobroker", 20)))
    wanted = {e["event_id"] for e in sent}

    answered = _wait_ids(own_broker, suggestions, wanted, timeout_s=180)

    assert answered == wanted
    report(tmp_path_factory, "broker unavailable at worker start (15 s)", len(sent), len(answered), 0)


def test_broker_frozen_mid_stream(
    own_broker: Broker, workers: WorkerFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGSTOP for 20 s while batches are being fetched and published (a network partition).

    Images answer after 0.4 s, so the worker is still busy with the first 40 events when the
    broker freezes; suggestions stamped after the thaw prove the outage hit mid-stream.
    """
    uploads, suggestions, _ = _topics("frozen")
    with HostileServer() as host:
        host.routes["/slow.png"] = delayed(0.4, status(200, _png(), "image/png"))
        records = [
            {"upload_id": f"frozen-{i}", "target_image_url": host.url("/slow.png"), "sources": []} for i in range(60)
        ]
        # Distinct URLs defeat the image cache: every event waits for its own download.
        for index, record in enumerate(records):
            record["target_image_url"] = f"{record['target_image_url']}?n={index}"
            host.routes[f"/slow.png?n={index}"] = host.routes["/slow.png"]
        own_broker.start()
        first = asyncio.run(produce_uploads(own_broker.url, uploads, records[:40]))
        workers.start("frozen", "frozen", TAGSTREAM_BROKER=own_broker.url, TAGSTREAM_MAX_BATCH="2", **TRIVIAL)
        collect(own_broker, suggestions, 4, timeout_s=120)
        own_broker.pause()
        time.sleep(20)  # longer than the 6 s session timeout: the group falls apart too
        thawed = datetime.now(timezone.utc)
        own_broker.resume()
        second = asyncio.run(produce_uploads(own_broker.url, uploads, records[40:]))
        wanted = {e["event_id"] for e in first + second}

        answered = _wait_ids(own_broker, suggestions, wanted, timeout_s=240)
        raw = collect(own_broker, suggestions, 100_000, timeout_s=3)

    assert answered == wanted
    first_ids = {e["event_id"] for e in first}
    after_thaw = {str(r["upload_event_id"]) for r in raw if r["processed_at"] >= thawed} & first_ids  # type: ignore[operator]
    assert after_thaw, "the freeze did not hit the stream mid-way"
    report(
        tmp_path_factory,
        "broker frozen (SIGSTOP) 20 s mid-stream",
        len(wanted),
        len(answered),
        0,
        duplicates=len(raw) - len(answered),
        first_wave_finished_after_thaw=len(after_thaw),
    )


def test_a_batch_finishing_before_an_earlier_one_commits_nothing_past_it(
    broker: Broker, workers: WorkerFactory, image_server: ImageServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Batches finish out of order: a later batch's answer must not commit an earlier upload away.

    Upload A's image hangs, so its batch is still fetching when B's batch, taken after it from
    the same partition, is answered. Faust commits the offsets that it was told are done, and
    with A missing just past the last commit it commits past A (it checks for a gap of more
    than one offset). A worker killed then lost A for good: its successor started after it.
    Acks are therefore released in each partition's order, and A must come through here.
    """
    uploads, suggestions, _ = _topics("outoforder")
    create_topics(broker, [uploads], partitions=1)
    with HostileServer() as host:
        host.routes["/hung.png"] = stall(600)
        records = [
            {"upload_id": "outoforder-a", "target_image_url": host.url("/hung.png"), "sources": []},
            {"upload_id": "outoforder-b", "target_image_url": image_server.url("upload-01.png"), "sources": []},
        ]
        first, later = asyncio.run(produce_uploads(broker.url, uploads, records))
        hung = workers.start(
            "outoforder",
            "outoforder",
            TAGSTREAM_MAX_BATCH="1",
            TAGSTREAM_BATCHES_IN_FLIGHT="2",
            TAGSTREAM_FETCH__READ_TIMEOUT_S="300",
            **TRIVIAL,
        )
        assert _wait_ids(broker, suggestions, {later["event_id"]}, timeout_s=120) == {later["event_id"]}
        time.sleep(3)  # three commit intervals: time for a wrong commit to happen
        committed = committed_offset(broker, "outoforder", uploads)
        hung.kill()
        host.routes["/hung.png"] = status(200, _png(), "image/png")
        workers.start("outoforder", "outoforder", TAGSTREAM_MAX_BATCH="1", **TRIVIAL)
        answered = _wait_ids(broker, suggestions, {first["event_id"], later["event_id"]}, timeout_s=120)

    assert committed in (None, 0), f"committed past the unanswered upload: {committed}"
    assert first["event_id"] in answered, "the upload in hand when its worker died was never answered"
    report(
        tmp_path_factory,
        "a later batch answered while an earlier one hangs on its image, then SIGKILL",
        2,
        len(answered),
        0,
        committed_offset_before_the_kill=committed,
    )


def test_a_worker_stopped_with_uploads_in_hand_and_in_its_buffer_commits_none_of_them(
    broker: Broker,
    workers: WorkerFactory,
    demo_set: DemoSet,
    image_server: ImageServer,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """SIGTERM (a deploy, a scale-in) while batches are in hand and more uploads wait in Faust's buffer.

    The worker drains what it holds (the pipeline is let go two seconds after the signal) and
    stops. Faust skips the buffered events it will not hand over any more (its pure-Python
    stream iterator also acks them, see ``streams/worker/transport.py``); the commit must still
    stop at the first upload that was not answered, because the successor starts there.
    """
    uploads, suggestions, _ = _topics("graceful")
    create_topics(broker, [uploads], partitions=1)
    gate = tmp_path / "open"
    stopping = start_web_worker(
        workers,
        "graceful",
        TAGSTREAM_PIPELINE_FACTORY="support.pipelines.blocking:build",
        BLOCKING_PIPELINE_OPEN=str(gate),
        TAGSTREAM_MAX_BATCH="2",
        TAGSTREAM_BATCHES_IN_FLIGHT="2",
    )
    stopping.wait_for("/ready", 200, timeout_s=120)
    sent = asyncio.run(produce_uploads(broker.url, uploads, _many(demo_set, image_server, "graceful", 20)))
    time.sleep(5)  # two batches taken and blocked; the rest of the fetch waits in the buffer
    stopping.process.process.terminate()
    time.sleep(2)
    gate.touch()
    stopping.process.process.wait(timeout=60)
    committed = committed_offset(broker, "graceful", uploads) or 0
    answered_before = _ids(collect(broker, suggestions, 100_000, timeout_s=3))
    workers.start("graceful", "graceful", **TRIVIAL)
    answered = _wait_ids(broker, suggestions, {e["event_id"] for e in sent}, timeout_s=120)

    # One partition: the i-th upload sent is at offset i.
    unanswered_but_committed = [e["upload_id"] for e in sent[:committed] if e["event_id"] not in answered_before]
    assert not unanswered_but_committed, f"committed {committed}, unanswered: {unanswered_but_committed}"
    assert len(answered) == len(sent)
    report(
        tmp_path_factory,
        "SIGTERM with two batches blocked in the pipeline and the rest buffered",
        len(sent),
        len(answered),
        0,
        committed_offset_after_the_stop=committed,
        answered_before_the_stop=len(answered_before),
    )


def test_a_batch_that_fails_past_every_handler_stops_the_worker_and_loses_nothing(
    broker: Broker, workers: WorkerFactory, image_server: ImageServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A batch task that raises (a bug: the processor dead-letters every error it knows) stops the worker.

    Its events can never be answered by that worker, so nothing after them may be acked (Faust
    would commit past them), and held they would keep Faust's ``wait_empty`` from ever letting
    the worker stop or rebalance. The worker leaves and exits with status 4; the next worker
    consumes from the last commit, which is not past the failed event, and answers everything.
    """
    uploads, suggestions, _ = _topics("crashing")
    create_topics(broker, [uploads], partitions=1)
    target = image_server.url("upload-01.png")
    records = [
        {
            "upload_id": f"crashing-{i}",
            "event_id": f"crash-{uuid.uuid4()}" if i == 2 else str(uuid.uuid4()),
            "target_image_url": target,
            "sources": [],
        }
        for i in range(6)
    ]
    sent = asyncio.run(produce_uploads(broker.url, uploads, records))
    crashing = workers.start(
        "crashing",
        "crashing",
        TAGSTREAM_PIPELINE_FACTORY="support.pipelines.crashing:build",
        TAGSTREAM_MAX_BATCH="1",
        TAGSTREAM_BATCHES_IN_FLIGHT="2",
    )
    status = crashing.process.wait(timeout=120)
    committed = committed_offset(broker, "crashing", uploads)
    workers.start("crashing", "crashing", TAGSTREAM_MAX_BATCH="1", **TRIVIAL)
    answered = _wait_ids(broker, suggestions, {e["event_id"] for e in sent}, timeout_s=120)

    assert status == EXIT_BATCH_FAILED, crashing.output()[-3000:]
    assert "injected bug on crash-" in crashing.output()
    assert committed is None or committed <= 2, f"committed past the failed upload (offset 2): {committed}"
    assert answered == {e["event_id"] for e in sent}
    report(
        tmp_path_factory,
        "a batch task raising past every handler (injected BaseException)",
        len(sent),
        len(answered),
        0,
        exit_status=status,
        committed_offset_at_exit=committed,
    )


# --- image hosts --------------------------------------------------------------------------


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 100, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_image_host_flaky_slow_and_broken(
    broker: Broker, workers: WorkerFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """500 twice then 200 succeeds; hanging, always-500 and 404 hosts end as dead letters."""
    uploads, suggestions, dead_letters = _topics("hosts")
    png = _png()
    with HostileServer() as host:
        host.routes["/ok.png"] = status(200, png, "image/png")
        host.routes["/flaky.png"] = flaky(2, status(200, png, "image/png"))
        host.routes["/slow.png"] = stall(60)
        host.routes["/down.png"] = status(503, b"down")
        source = {
            "image_url": host.url("/ok.png"),
            "tags": [{"product_id": "p1", "bbox": {"x": 1.0, "y": 1.0, "width": 20.0, "height": 20.0}}],
        }
        names = ["ok", "flaky", "slow", "down", "missing"]
        records = [{"upload_id": n, "target_image_url": host.url(f"/{n}.png"), "sources": [source]} for n in names]
        sent = asyncio.run(produce_uploads(broker.url, uploads, records))
        workers.start(
            "hosts",
            "hosts",
            TAGSTREAM_FETCH__ATTEMPTS="3",
            TAGSTREAM_FETCH__BACKOFF_S="0.2",
            TAGSTREAM_FETCH__READ_TIMEOUT_S="1.5",
            **TRIVIAL,
        )
        answered = collect(broker, suggestions, 2, timeout_s=120)
        letters = collect(broker, dead_letters, 3, timeout_s=60)

        assert sorted(str(a["upload_id"]) for a in answered) == ["flaky", "ok"]
        by_upload = {str(letter["upload_id"]): letter for letter in letters}
        assert set(by_upload) == {"slow", "down", "missing"}
        assert str(by_upload["slow"]["error_message"]).startswith("timeout:")
        assert by_upload["slow"]["attempts"] == 3
        assert "HTTP 503" in str(by_upload["down"]["error_message"])
        assert by_upload["down"]["attempts"] == 3
        assert "HTTP 404" in str(by_upload["missing"]["error_message"])
        assert by_upload["missing"]["attempts"] == 1
        assert host.hits["/flaky.png"] == 3  # two 500s, then the image
        assert host.hits["/slow.png"] == 3
        assert host.hits["/down.png"] == 3
        assert host.hits["/missing.png"] == 1  # permanent: not retried
        assert _ids(answered) | _ids(letters) == {e["event_id"] for e in sent}
        report(
            tmp_path_factory,
            "image host: 500x2 then 200 / hangs / always 503 / 404",
            len(sent),
            len(answered),
            len(letters),
            reasons={n: f"{x['error_message']} (attempts {x['attempts']})" for n, x in sorted(by_upload.items())},
            hits=dict(host.hits),
        )


# --- poison messages and invalid events -----------------------------------------------------


def _dead_letter_bytes() -> bytes:
    """A well-formed Avro message of the wrong record type (a DeadLetter on the uploads topic)."""
    return encode(
        DEAD_LETTER,
        {
            "event_id": str(uuid.uuid4()),
            "original_topic": "x",
            "original_partition": 0,
            "original_offset": 0,
            "key": None,
            "value": b"",
            "error_kind": "x",
            "error_message": "x",
            "attempts": 1,
            "failed_at": datetime.now(timezone.utc),
            "upload_id": None,
            "upload_event_id": None,
        },
    )


async def _produce_partition0(broker: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.removeprefix("kafka://"), acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic=_POISON_TOPIC, value=value, key=key, partition=0)
    finally:
        await producer.stop()


_POISON_TOPIC = "poison.image-uploaded"


def test_poison_messages_never_block_their_partition(
    broker: Broker,
    workers: WorkerFactory,
    demo_set: DemoSet,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    _, suggestions, dead_letters = _topics("poison")
    good = [complete_upload(r) for r in _many(demo_set, image_server, "poison", 8)]
    valid = encode(IMAGE_UPLOADED, good[0])
    poisons = {
        b"p-garbage": b"\xffnot avro at all",
        b"p-empty": b"",
        b"p-unknown-schema": b"\x00" + (987654).to_bytes(4, "big") + b"\x02\x04",
        b"p-wrong-record": _dead_letter_bytes(),
        b"p-truncated": valid[:-7],
        b"p-trailing": valid + b"\x00\x00junk",
    }
    # Poison first, then alternating with good events, all on partition 0.
    messages: list[tuple[bytes, bytes]] = []
    poison_items = list(poisons.items())
    for index, record in enumerate(good):
        if index < len(poison_items):
            messages.append(poison_items[index])
        messages.append((record["upload_id"].encode(), encode(IMAGE_UPLOADED, record)))
    asyncio.run(_produce_partition0(broker.url, messages))
    workers.start("poison", "poison", TAGSTREAM_MAX_BATCH="3", **TRIVIAL)

    answered = _wait_ids(broker, suggestions, {e["event_id"] for e in good}, timeout_s=120)
    letters = collect(broker, dead_letters, len(poisons), timeout_s=60)

    assert answered == {e["event_id"] for e in good}
    by_key = {bytes(letter["key"]): letter for letter in letters}  # type: ignore[arg-type]
    assert set(by_key) == set(poisons)
    expected_reason = {
        b"p-garbage": "bad_magic",
        b"p-empty": "too_short",
        b"p-unknown-schema": "unknown_schema_id",
        b"p-wrong-record": "unexpected_record",
        b"p-truncated": "corrupt_body",
        b"p-trailing": "trailing_bytes",
    }
    for key, letter in by_key.items():
        assert letter["error_kind"] == "decode_error"
        assert str(letter["error_message"]).startswith(expected_reason[key] + ":"), letter["error_message"]
        assert letter["value"] == poisons[key]  # re-publishable as is
        assert letter["original_partition"] == 0
    report(
        tmp_path_factory,
        "poison messages interleaved with good events on one partition",
        len(messages),
        len(answered),
        len(letters),
        reasons={k.decode(): str(v["error_message"])[:90] for k, v in sorted(by_key.items())},
    )


def test_invalid_events_get_precise_reasons(
    broker: Broker,
    workers: WorkerFactory,
    demo_set: DemoSet,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Event-level problems → dead letters; tag-level problems → that tag's ``error``.

    The limits come from settings (TAGSTREAM_MAX_SOURCES / TAGSTREAM_MAX_TAGS), which this
    worker lowers to 2 and 8: exactly at the limit passes, one over is dead-lettered.
    """
    uploads, suggestions, dead_letters = _topics("invalid")
    image = image_server.url(f"{next(iter(demo_set.source_tags))}.png")
    target = image_server.url(f"{next(iter(demo_set.uploads))}.png")

    def tag(product_id: str, x: float = 5.0, y: float = 5.0, w: float = 30.0, h: float = 30.0) -> dict[str, Any]:
        return {"product_id": product_id, "bbox": {"x": x, "y": y, "width": w, "height": h}}

    def source(tags: list[dict[str, Any]]) -> dict[str, Any]:
        return {"image_url": image, "tags": tags}

    per_tag = [
        tag("good"),
        tag("nan", x=math.nan),
        tag("inf", w=math.inf),
        tag("zero", w=0.0),
        tag("negative", h=-4.0),
        tag("outside", x=100_000.0, y=100_000.0),
        tag("  "),
    ]
    good_tags = [tag(f"t{i}") for i in range(8)]
    records = {
        "at-limits": {"sources": [source(good_tags[:4]), source(good_tags[4:])]},
        "per-tag": {"sources": [source(per_tag[:4]), source(per_tag[4:])]},
        "too-many-sources": {"sources": [source([tag("a")]) for _ in range(3)]},
        "too-many-tags": {"sources": [source([*good_tags, tag("t9")])]},
        "empty-event-id": {"event_id": "", "sources": []},
        "bad-url": {"target_image_url": "ftp://example.com/x.png", "sources": []},
        "relative-url": {"target_image_url": "/images/x.png", "sources": []},
        "bad-threshold": {"similarity_threshold": 1.5, "sources": []},
        "nan-threshold": {"similarity_threshold": math.nan, "sources": []},
        "long-id": {"sources": [source([tag("a"), tag("b"), tag("c"), tag("p" * 300)])]},
        "long-url": {"target_image_url": target + "?" + "q" * 9000, "sources": []},
        "big-attributes": {"attributes": {"note": "n" * 19996}, "sources": []},
    }
    events = [{"upload_id": name, "target_image_url": target, **fields} for name, fields in records.items()]
    events.append({"upload_id": " ", "target_image_url": target, "sources": []})  # blank upload id
    sent = asyncio.run(produce_uploads(broker.url, uploads, events))
    workers.start("invalid", "invalid", TAGSTREAM_MAX_SOURCES="2", TAGSTREAM_MAX_TAGS="8", **TRIVIAL)

    answered = collect(broker, suggestions, 2, timeout_s=120)
    letters = collect(broker, dead_letters, len(sent) - 2, timeout_s=60)

    assert sorted(str(a["upload_id"]) for a in answered) == ["at-limits", "per-tag"]
    errors = {
        s["product_id"]: s["error"]
        for a in answered
        if a["upload_id"] == "per-tag"
        for s in a["suggestions"]  # type: ignore[attr-defined]
    }
    assert errors["good"] is None
    assert errors["nan"].startswith("bbox_not_finite:")
    assert errors["inf"].startswith("bbox_not_finite:")
    assert errors["zero"].startswith("bbox_not_positive:")
    assert errors["negative"].startswith("bbox_not_positive:")
    assert errors["outside"].startswith("bbox_outside_image:")
    assert errors["  "].startswith("empty_product_id:")
    by_key = {bytes(letter["key"]).decode(): letter for letter in letters}  # type: ignore[arg-type]
    expected = {
        "too-many-sources": "too_many_sources: 3 sources, limit 2",
        "too-many-tags": "too_many_tags: 9 tags, limit 8",
        "empty-event-id": "empty_field: event_id is empty",
        "bad-url": "bad_url:",
        "relative-url": "bad_url:",
        "bad-threshold": "bad_threshold:",
        "nan-threshold": "bad_threshold:",
        " ": "empty_field: upload_id is empty",
        "long-id": "id_too_long: sources[0].tags[3].product_id has 300 characters, limit 256",
        "long-url": f"url_too_long: target_image_url has {len(target) + 9001} characters, limit 8192",
        "big-attributes": "attributes_too_large: attributes hold 20000 bytes, limit 16384",
    }
    assert set(by_key) == set(expected)
    sent_by_upload = {e["upload_id"]: e for e in sent}
    for key, prefix in expected.items():
        assert by_key[key]["error_kind"] == "invalid_event"
        assert str(by_key[key]["error_message"]).startswith(prefix), (key, by_key[key]["error_message"])
        # The event decoded, so its dead letter says which upload and event it was.
        assert (by_key[key]["upload_id"], by_key[key]["upload_event_id"]) == (key, sent_by_upload[key]["event_id"])
    report(
        tmp_path_factory,
        "invalid events (limits from settings: max_sources=2, max_tags=8)",
        len(sent),
        len(answered),
        len(letters),
        dead_letter_reasons={k: str(v["error_message"]) for k, v in sorted(by_key.items())},
        tag_errors={k: v for k, v in errors.items() if v},
    )


# --- hostile input that once stalled or silenced the stream -----------------------------------


def test_malformed_urls_cost_only_their_own_events(
    broker: Broker,
    workers: WorkerFactory,
    demo_set: DemoSet,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A bracketed IPv4 host or an unclosed IPv6 bracket once killed the whole micro-batch."""
    uploads, suggestions, dead_letters = _topics("badurl")
    good = _many(demo_set, image_server, "badurl", 6)
    hostile = {
        "bracketed-ipv4": "http://[127.0.0.1]:18080/x.png",
        "open-bracket": "http://[::1/x.png",
        "bad-port": "http://127.0.0.1:99999/x.png",
    }
    bad = [{**good[0], "upload_id": name, "target_image_url": url} for name, url in hostile.items()]
    # Interleaved, so every micro-batch of 4 holds a malformed URL next to good events.
    records = [record for pair in zip(good, [*bad, *bad], strict=False) for record in pair]
    sent = asyncio.run(produce_uploads(broker.url, uploads, records))
    worker = workers.start("badurl", "badurl", TAGSTREAM_MAX_BATCH="4", **TRIVIAL)

    answered = _wait_ids(broker, suggestions, {e["event_id"] for e in sent if e["upload_id"] not in hostile}, 120)
    letters = collect(broker, dead_letters, len(records) - len(good), timeout_s=60)

    assert answered == {e["event_id"] for e in sent if e["upload_id"] not in hostile}
    assert sorted(str(letter["upload_id"]) for letter in letters) == sorted(r["upload_id"] for r in records[1::2])
    for letter in letters:
        assert letter["error_kind"] == "invalid_event" and str(letter["error_message"]).startswith("bad_url:")
        assert letter["upload_event_id"] is not None
    assert "batch task failed" not in worker.output()
    report(
        tmp_path_factory,
        "malformed URLs ([IPv4], unclosed [IPv6, port 99999) inside micro-batches",
        len(sent),
        len(answered),
        len(letters),
    )


def test_oversized_events_are_dead_lettered_and_the_worker_still_stops_promptly(
    broker: Broker,
    workers: WorkerFactory,
    demo_set: DemoSet,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Two ~1 MB events (a product id of 1,000,000 characters) once stalled the worker for good."""
    uploads, suggestions, dead_letters = _topics("oversized")
    good = _many(demo_set, image_server, "oversized", 4)
    huge = [
        {
            **good[0],
            "upload_id": f"huge-{i}",
            "sources": [
                {
                    "image_url": good[0]["target_image_url"],
                    "tags": [
                        {"product_id": "p" * 1_000_000, "bbox": {"x": 1.0, "y": 1.0, "width": 9.0, "height": 9.0}}
                    ],
                }
            ],
        }
        for i in range(2)
    ]
    sent = asyncio.run(produce_uploads(broker.url, uploads, [huge[0], *good[:2], huge[1], *good[2:]]))
    worker = workers.start("oversized", "oversized", **TRIVIAL)

    answered = _wait_ids(broker, suggestions, {e["event_id"] for e in sent[1:3] + sent[4:]}, 120)
    letters = collect(broker, dead_letters, 2, timeout_s=60)
    worker.process.terminate()
    stopping = time.monotonic()
    worker.process.wait(timeout=60)
    stop_s = time.monotonic() - stopping

    assert len(answered) == 4
    assert sorted(str(letter["upload_id"]) for letter in letters) == ["huge-0", "huge-1"]
    for letter in letters:
        message = str(letter["error_message"])
        assert message.startswith(f"event_too_large: event is {letter['value_size']} bytes, limit 262144"), message
        assert letter["value_truncated"] is True and letter["value_size"] > 1_000_000
        assert len(letter["value"]) == 256 * 1024  # type: ignore[arg-type]
    assert stop_s < 6, f"SIGTERM took {stop_s:.1f} s, more than the 6 s consumer session timeout"
    report(
        tmp_path_factory,
        "two ~1 MB events among good ones, then SIGTERM",
        len(sent),
        len(answered),
        len(letters),
        seconds_to_stop_after_sigterm=round(stop_s, 1),
    )


def test_a_record_the_producer_refuses_becomes_a_smaller_dead_letter(
    broker: Broker,
    workers: WorkerFactory,
    demo_set: DemoSet,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A suggestion over the producer's limit is refused for good: retrying it once held a batch slot forever.

    With a 1500-byte limit, 8 tags of 200-character ids give a suggestion of about 1.9 kB:
    refused; so is its dead letter (it carries the 2 kB event); the one without the
    original bytes goes through. The good events around it are answered as usual.
    """
    uploads, suggestions, dead_letters = _topics("refused")
    good = _many(demo_set, image_server, "refused", 3)
    tags = [{"product_id": f"{i}" * 200, "bbox": {"x": 1.0, "y": 1.0, "width": 9.0, "height": 9.0}} for i in range(8)]
    wordy = {**good[0], "upload_id": "wordy", "sources": [{"image_url": good[0]["target_image_url"], "tags": tags}]}
    sent = asyncio.run(produce_uploads(broker.url, uploads, [good[0], wordy, *good[1:]]))
    worker = start_web_worker(workers, "refused", TAGSTREAM_PRODUCER_MAX_REQUEST_BYTES="1500", **TRIVIAL)

    answered = _wait_ids(broker, suggestions, {e["event_id"] for e in sent if e["upload_id"] != "wordy"}, 120)
    (letter,) = collect(broker, dead_letters, 1, timeout_s=60)
    samples = worker.scrape()

    assert len(answered) == 3
    assert (letter["upload_id"], letter["error_kind"]) == ("wordy", "publish_error")
    message = str(letter["error_message"])
    assert message.startswith("the suggestion (") and "then its dead letter (" in message, message
    assert message.endswith(f"[value cut from {letter['value_size']} to 0 bytes]"), message
    assert letter["value"] == b"" and letter["value_truncated"] is True and letter["value_size"] > 1500
    assert sample(samples, "tagstream_publish_refused_total", output="suggestion") == 1
    assert sample(samples, "tagstream_publish_refused_total", output="dead_letter") == 1
    assert sample(samples, "tagstream_dead_letters_total", reason="publish_error") == 1
    report(
        tmp_path_factory,
        "an answer over the producer's size limit (1500 bytes here)",
        len(sent),
        len(answered),
        1,
        dead_letter=str(letter["error_message"])[:120],
    )


# --- memory --------------------------------------------------------------------------------

# The documented bound (docs/reliability.md): a worker with the tiny offline models idles at
# ~0.9 GiB; on top come the image cache (256 MiB), two decodes at full size (2 x 108 MB for
# 36 MP), one group of working-size images (<= 15 x 12 MB) and the pipeline's buffers.
LARGE_IMAGE_RSS_BOUND_MB = 2048


def _peak_rss_mb(pid: int) -> float:
    """The process's high-water resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def _settled_rss_mb(pid: int, window_s: float = 3.0) -> float:
    """The process's lowest resident memory (VmRSS) over a short idle window, in MiB."""
    lowest = float("inf")
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                lowest = min(lowest, int(line.split()[1]) / 1024)
        time.sleep(0.2)
    return lowest


def test_large_images_keep_the_worker_within_its_memory_bound(
    broker: Broker, workers: WorkerFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A 120 KB PNG that decodes to 36 MP, as the target and 16 distinct sources of every event.

    Before images were reduced on decode, two such events took the worker to 6.6 GB. Now each
    decoded copy is at most 2048 px a side and a batch holds a bounded number of them: the
    peak stays under the bound, and later rounds of events (new URLs) leave the idle worker no
    bigger. The peak itself is not compared between rounds: with two batches in flight it
    depends on whether a round's two events share a batch (1557 or 1758 MiB in CI: 16 decoded images).
    """
    uploads, suggestions, _ = _topics("bigpixels")
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (90, 120, 150)).save(buffer, "PNG", optimize=True)
    tag = {"product_id": "p", "bbox": {"x": 1000.0, "y": 1000.0, "width": 900.0, "height": 900.0}}

    def event(number: int) -> dict[str, Any]:
        first = 17 * number
        return {
            "upload_id": f"big-{number}",
            "target_image_url": host.url(f"/big.png?n={first}"),
            "sources": [{"image_url": host.url(f"/big.png?n={first + s}"), "tags": [tag]} for s in range(1, 17)],
        }

    with HostileServer() as host:
        for index in range(17 * 6):
            host.routes[f"/big.png?n={index}"] = status(200, buffer.getvalue(), "image/png")
        worker = workers.start("bigpixels", "bigpixels")
        peaks = []
        settled: list[float] = []
        sent: list[dict[str, Any]] = []
        for round_ in range(3):
            sent += asyncio.run(produce_uploads(broker.url, uploads, [event(2 * round_), event(2 * round_ + 1)]))
            answered = _wait_ids(broker, suggestions, {e["event_id"] for e in sent}, timeout_s=300)
            peaks.append(_peak_rss_mb(worker.process.pid))
            settled.append(_settled_rss_mb(worker.process.pid))
        fetched = sum(host.hits.values())

    assert answered == {e["event_id"] for e in sent}
    assert fetched == 17 * 6
    assert max(peaks) < LARGE_IMAGE_RSS_BOUND_MB, f"peak RSS {peaks} MiB"
    assert settled[2] - settled[0] < 64, f"later rounds left the idle worker bigger: {settled} MiB"
    report(
        tmp_path_factory,
        "36 MP images (120 KB PNG): 3 rounds of 2 events x (target + 16 distinct sources)",
        len(sent),
        len(answered),
        0,
        peak_rss_mib_after_each_round=[round(p) for p in peaks],
        settled_rss_mib_after_each_round=[round(p) for p in settled],
        bound_mib=LARGE_IMAGE_RSS_BOUND_MB,
    )
