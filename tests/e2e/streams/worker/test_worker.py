"""The whole spine through a real broker and real worker processes."""

from __future__ import annotations

import asyncio
import uuid

from support.brokers import Broker
from support.processes import WorkerFactory
from support.streams import collect, upload_records

from inference.types import BBox
from streams.broker import free_port
from streams.events import suggestion_event_id
from streams.kafka import produce_raw, produce_uploads
from workbench.image_server import ImageServer
from workbench.scenes import DemoSet


def _topics(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}.image-uploaded", f"{prefix}.tag-suggestions", f"{prefix}.image-uploaded.dlq"


def test_every_upload_gets_one_correct_suggestion_event(
    broker: Broker, workers: WorkerFactory, demo_set: DemoSet, image_server: ImageServer
) -> None:
    uploads, suggestions, _ = _topics("e2e")
    records = upload_records(demo_set, image_server)
    records[0]["sources"][0]["tags"].append(  # type: ignore[index]
        {"product_id": "sku-broken", "bbox": {"x": 10.0, "y": 10.0, "width": -5.0, "height": 20.0}}
    )
    records[1]["attributes"] = {"tenant": "acme"}
    sent = asyncio.run(produce_uploads(broker.url, uploads, records))
    workers.start("e2e", "e2e")

    received = collect(broker, suggestions, len(sent), timeout_s=180)

    assert len(received) == len(sent)
    by_upload = {r["upload_id"]: r for r in received}
    truth = demo_set.ground_truth
    for event in sent:
        out = by_upload[event["upload_id"]]
        assert out["upload_event_id"] == event["event_id"]
        # Lineage names what ran: the offline random-init models, never the pretrained defaults.
        assert out["model"] == {
            "detector": "yolo26n-random.pt",
            "embedder": "clip-tiny-random",
            "version": "yolo26n-random.pt+clip-tiny-random",
        }
        assert out["event_id"] == suggestion_event_id(event["event_id"], "yolo26n-random.pt+clip-tiny-random")
        assert out["latency_ms"] >= 0
        product_ids = [t["product_id"] for s in event["sources"] for t in s["tags"]]
        assert [s["product_id"] for s in out["suggestions"]] == product_ids  # type: ignore[union-attr]
        for suggestion in out["suggestions"]:  # type: ignore[union-attr]
            if suggestion["product_id"] == "sku-broken":
                assert suggestion["found"] is False and "non-positive size" in suggestion["error"]
                continue
            expected = truth[event["upload_id"]][suggestion["product_id"]]
            if expected is None:
                assert suggestion["found"] is False, suggestion
            else:
                assert suggestion["found"] is True, suggestion
                assert BBox(**suggestion["bbox"]).iou(expected) > 0.5, (suggestion, expected)
    assert by_upload[sent[1]["upload_id"]]["attributes"] == {"tenant": "acme"}


def test_undecodable_and_unfetchable_events_become_dead_letters(
    broker: Broker, workers: WorkerFactory, demo_set: DemoSet, image_server: ImageServer
) -> None:
    uploads, suggestions, dead_letters = _topics("dlq")
    good = upload_records(demo_set, image_server)[0]
    closed_port = free_port()
    unreachable = {**good, "upload_id": "unreachable", "target_image_url": f"http://127.0.0.1:{closed_port}/gone.png"}
    missing = {**good, "upload_id": "missing", "target_image_url": image_server.url("no-such-file.png")}
    not_image = {**good, "upload_id": "not-image", "target_image_url": image_server.url("not-an-image.png")}
    asyncio.run(produce_raw(broker.url, uploads, [(b"garbage", b"\xffnot avro at all"), (None, b"")]))
    sent = asyncio.run(produce_uploads(broker.url, uploads, [unreachable, missing, not_image, good]))
    workers.start("dlq", "dlq", TAGSTREAM_FETCH__ATTEMPTS="2")

    letters = collect(broker, dead_letters, 5, timeout_s=180)
    answered = collect(broker, suggestions, 1, timeout_s=30)

    assert [a["upload_id"] for a in answered] == [good["upload_id"]]
    assert len(letters) == 5
    by_kind: dict[str, list[dict[str, object]]] = {}
    for letter in letters:
        by_kind.setdefault(str(letter["error_kind"]), []).append(letter)
    # The two undecodable messages may land on different partitions: order them by key, not offset.
    decode_errors = sorted(by_kind["decode_error"], key=lambda r: r["key"] is None)
    assert [d["key"] for d in decode_errors] == [b"garbage", None]
    assert "bad_magic" in str(decode_errors[0]["error_message"])
    assert "too_short" in str(decode_errors[1]["error_message"])
    assert decode_errors[0]["value"] == b"\xffnot avro at all"
    fetch = {str(f["upload_id"]): f for f in by_kind["fetch_error"]}
    assert "connection" in str(fetch["unreachable"]["error_message"])
    assert fetch["unreachable"]["attempts"] == 2
    assert "404" in str(fetch["missing"]["error_message"])
    assert fetch["missing"]["attempts"] == 1
    assert "not_an_image" in str(fetch["not-image"]["error_message"])
    assert {str(f["upload_event_id"]) for f in fetch.values()} == {e["event_id"] for e in sent[:3]}
    for letter in letters:
        assert letter["original_topic"] == uploads


def test_pipeline_raising_mid_batch_loses_nothing(
    broker: Broker, workers: WorkerFactory, demo_set: DemoSet, image_server: ImageServer
) -> None:
    uploads, suggestions, dead_letters = _topics("faulty")
    records = upload_records(demo_set, image_server)
    batch = []
    for index, record in enumerate(records * 2):
        event_id = f"boom-{uuid.uuid4()}" if index in (1, 4) else str(uuid.uuid4())
        batch.append({**record, "upload_id": f"{record['upload_id']}-{index}", "event_id": event_id})
    sent = asyncio.run(produce_uploads(broker.url, uploads, batch))
    workers.start(
        "faulty", "faulty", TAGSTREAM_PIPELINE_FACTORY="support.pipelines.faulty:build", TAGSTREAM_MAX_BATCH="8"
    )

    answered = collect(broker, suggestions, len(sent) - 2, timeout_s=180)
    letters = collect(broker, dead_letters, 2, timeout_s=60)

    doomed = {e["event_id"] for e in sent if e["event_id"].startswith("boom")}
    assert {a["upload_event_id"] for a in answered} == {e["event_id"] for e in sent} - doomed
    assert {d["upload_event_id"] for d in letters} == doomed
    for letter in letters:
        assert letter["error_kind"] == "pipeline_error"
        assert "injected model failure" in str(letter["error_message"])
        assert letter["attempts"] == 2


def test_worker_killed_mid_stream_loses_nothing(
    broker: Broker, workers: WorkerFactory, demo_set: DemoSet, image_server: ImageServer
) -> None:
    uploads, suggestions, _ = _topics("kill")
    records = upload_records(demo_set, image_server)
    batch = [{**records[i % len(records)], "upload_id": f"kill-{i}"} for i in range(16)]
    sent = asyncio.run(produce_uploads(broker.url, uploads, batch))
    first = workers.start("kill", "kill", TAGSTREAM_MAX_BATCH="2")
    collect(broker, suggestions, 3, timeout_s=180)
    first.kill()
    workers.start("kill", "kill", TAGSTREAM_MAX_BATCH="2")

    answered = _wait_all(broker, suggestions, {e["event_id"] for e in sent}, timeout_s=240)
    assert answered >= {e["event_id"] for e in sent}


def _wait_all(broker: Broker, topic: str, wanted: set[str], timeout_s: float) -> set[str]:
    import time

    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline and not wanted <= seen:
        seen = {str(r["upload_event_id"]) for r in collect(broker, topic, 10_000, timeout_s=3)}
    return seen
