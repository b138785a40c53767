"""Observability of a real worker: Prometheus metrics that move with the stream, and JSON logs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.brokers import Broker
from support.streams import collect, upload_records
from support.web_worker import WebWorker, sample, start_web_worker, worker_factory

from streams.broker import free_port
from streams.kafka import produce_raw, produce_uploads
from workbench.image_server import ImageServer
from workbench.scenes import DemoSet

NAME = "observed"
UPLOADS, SUGGESTIONS, DEAD_LETTERS = f"{NAME}.image-uploaded", f"{NAME}.tag-suggestions", f"{NAME}.image-uploaded.dlq"


@pytest.fixture(scope="module")
def observed(broker: Broker, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebWorker]:
    with worker_factory(broker, cache_dir, tmp_path_factory.mktemp("metrics-workers")) as factory:
        worker = start_web_worker(factory, NAME, TAGSTREAM_LOG_FORMAT="json", TAGSTREAM_FETCH__ATTEMPTS="1")
        worker.wait_for("/ready", 200, timeout_s=180)
        yield worker


def _unreachable(record: dict[str, Any], upload_id: str) -> dict[str, Any]:
    return {**record, "upload_id": upload_id, "target_image_url": f"http://127.0.0.1:{free_port()}/gone.png"}


def _wait_for_samples(
    worker: WebWorker, done: Any, timeout_s: float
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scrape until ``done(samples)``: the broker may show an outcome a moment before the worker counts it."""
    deadline = time.monotonic() + timeout_s
    samples = worker.scrape()
    while not done(samples) and time.monotonic() < deadline:
        time.sleep(0.3)
        samples = worker.scrape()
    return samples


def test_counters_move_when_events_flow(
    observed: WebWorker, broker: Broker, demo_set: DemoSet, image_server: ImageServer
) -> None:
    before = observed.scrape()
    good = upload_records(demo_set, image_server, ["upload-01", "upload-02"])
    asyncio.run(produce_raw(broker.url, UPLOADS, [(b"garbage", b"\x00not avro")]))
    asyncio.run(produce_uploads(broker.url, UPLOADS, [*good, _unreachable(good[0], "counted-unreachable")]))
    assert len(collect(broker, SUGGESTIONS, 2, timeout_s=120)) == 2
    assert len(collect(broker, DEAD_LETTERS, 2, timeout_s=60)) == 2

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    def uploads_lags(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
        return {
            dict(labels)["partition"]: value
            for (name, labels), value in samples.items()
            if name == "tagstream_consumer_lag" and ("topic", UPLOADS) in labels
        }

    # The lag is measured against committed offsets by a probe every couple of seconds: it reaches
    # 0 a moment after the last answer (Kafka commits at the next commit interval).
    after = _wait_for_samples(
        observed,
        lambda s: (
            sample(s, "tagstream_end_to_end_seconds_count") - sample(before, "tagstream_end_to_end_seconds_count") >= 4
            and set(uploads_lags(s).values()) == {0.0}
        ),
        timeout_s=30,
    )

    assert delta("tagstream_events_consumed_total") == 4
    assert delta("tagstream_suggestions_published_total") == 2
    assert delta("tagstream_dead_letters_total", reason="decode_error") == 1
    assert delta("tagstream_dead_letters_total", reason="fetch_error") == 1
    assert delta("tagstream_end_to_end_seconds_count") == 4
    assert delta("tagstream_batch_size_sum") == 4
    assert delta("tagstream_batch_size_count") >= 1
    for stage in ("detect", "verify", "decide"):
        assert delta("tagstream_stage_seconds_count", stage=stage) == 2, stage
    assert delta("tagstream_stage_seconds_count", stage="fetch") >= 1
    assert delta("tagstream_fetch_errors_total", kind="connection") == 1
    assert delta("tagstream_fetch_image_bytes_count") >= 3
    assert sample(after, "tagstream_model_load_seconds") > 0
    lags = uploads_lags(after)
    assert lags, "every assigned uploads partition reports its lag"
    assert set(lags.values()) == {0.0}, lags


def test_http_requests_are_counted_by_route_and_status(observed: WebWorker) -> None:
    before = observed.scrape()

    for _ in range(2):
        assert observed.get("/api/classes").status_code == 200
    assert observed.post("/api/detect", {}).status_code == 422
    assert observed.get("/no/such/route").status_code == 404

    after = observed.scrape()

    def delta(**labels: str) -> float:
        name = "tagstream_http_requests_total"
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta(method="GET", path="/api/classes", status="200") == 2
    assert delta(method="POST", path="/api/detect", status="422") == 1
    assert delta(method="GET", path="unmatched", status="404") == 1
    assert sample(after, "tagstream_http_request_seconds_count", method="GET", path="/api/classes") >= 2


def test_logs_are_json_lines_carrying_the_event(
    observed: WebWorker, broker: Broker, demo_set: DemoSet, image_server: ImageServer
) -> None:
    record = _unreachable(upload_records(demo_set, image_server, ["upload-03"])[0], "logged-unreachable")
    [sent] = asyncio.run(produce_uploads(broker.url, UPLOADS, [record]))

    deadline = time.monotonic() + 60
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not any(e.get("upload_id") == "logged-unreachable" for e in entries):
        time.sleep(0.3)
        entries = [json.loads(line) for line in observed.process.output().splitlines() if line.startswith("{")]

    letter = next(e for e in entries if e.get("upload_id") == "logged-unreachable")
    assert letter["event_id"] == sent["event_id"]
    assert letter["level"] == "warning" and letter["logger"] == "streams.worker.processor"
    assert letter["error_kind"] == "fetch_error" and "dead letter" in letter["message"]
    assert {"ts", "level", "logger", "message"} <= set(letter)
    loaded = next(e for e in entries if e["message"].startswith("models loaded in"))
    assert loaded["load_seconds"] > 0
    ours = [line for line in observed.process.output().splitlines() if " streams." in line and not line.startswith("{")]
    assert ours == [], "every log line of ours is JSON"
    assert "\x1b[" not in observed.process.output(), "no terminal escapes (faust's spinner) mangle the log lines"
