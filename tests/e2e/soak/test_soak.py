"""Bounded soak: N events at a steady rate through the real broker and a real worker process.

Not part of ``make test`` (marked ``soak``, deselected by default); run it with ``make soak``.
``SOAK_EVENTS`` (default 10 000) and ``SOAK_RATE`` (events per second, default 25) size it.

It tests the stream machinery — fetching (every event's target URL is distinct, so every event
is a real HTTP download and decode), micro-batching, acking, publishing — not the models: the
worker runs ``trivial_pipeline`` so that 10 000 events fit on a 2-core machine. About 1% of the
events are bad (garbage bytes, 404 image URLs) so dead letters flow too.

Asserts: nothing lost (every event id appears as a suggestion or a dead letter) and the worker's
resident memory stays bounded (the last third's peak within 25% of the first third's).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from PIL import Image
from support.brokers import Broker
from support.processes import WorkerFactory
from support.streams import collect

from schemas import IMAGE_UPLOADED, encode
from streams.kafka import complete_upload
from workbench.image_server import ImageServer

pytestmark = pytest.mark.soak

UPLOADS, SUGGESTIONS, DEAD_LETTERS = "soak.image-uploaded", "soak.tag-suggestions", "soak.image-uploaded.dlq"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopped.wait(self.interval_s):
            try:
                self.samples.append((time.monotonic() - started, _rss_kib(self.pid)))
            except OSError:
                return


def _events(n: int, image_server: ImageServer) -> list[tuple[bytes, bytes, str | None]]:
    """(key, value, event_id or None for garbage); 0.5% garbage, 0.5% 404 URLs."""
    source = {
        "image_url": image_server.url("source.png"),
        "tags": [{"product_id": "p1", "bbox": {"x": 4.0, "y": 4.0, "width": 40.0, "height": 30.0}}],
    }
    out: list[tuple[bytes, bytes, str | None]] = []
    for i in range(n):
        key = f"soak-{i}".encode()
        if i % 200 == 199:
            out.append((key, b"\xffgarbage " + key, None))
            continue
        name = "missing.png" if i % 200 == 99 else "target.png"
        record = complete_upload(
            {
                "event_id": str(uuid.uuid4()),
                "upload_id": key.decode(),
                # A distinct query string per event: a distinct cache key, so a real download.
                "target_image_url": image_server.url(f"{name}?n={i}"),
                "sources": [source],
            }
        )
        out.append((key, encode(IMAGE_UPLOADED, record), record["event_id"]))
    return out


async def _produce_steadily(broker: str, messages: list[tuple[bytes, bytes, str | None]], rate: float) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=broker.removeprefix("kafka://"), acks="all", linger_ms=5)
    await producer.start()
    started = time.monotonic()
    try:
        pending = []
        for index, (key, value, _) in enumerate(messages):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(await producer.send(UPLOADS, value, key=key))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


def test_soak(broker: Broker, workers: WorkerFactory, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    n = int(os.environ.get("SOAK_EVENTS", "10000"))
    rate = float(os.environ.get("SOAK_RATE", "25"))
    images = tmp_path / "images"
    images.mkdir()
    for name, size in (("target.png", (240, 320)), ("source.png", (120, 160))):
        pixels = np.random.default_rng(len(name)).integers(0, 255, (*size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        (images / name).write_bytes(buffer.getvalue())
    with ImageServer(images) as server:
        messages = _events(n, server)
        worker = workers.start("soak", "soak", TAGSTREAM_PIPELINE_FACTORY="support.pipelines.trivial:build")
        # Memory is compared from a warm worker on: its agent has started and built its engine.
        ready_by = time.monotonic() + 180
        while "models loaded" not in worker.output() and time.monotonic() < ready_by:
            time.sleep(0.5)
        sampler = RssSampler(worker.process.pid)
        sampler.start()
        produce_s = asyncio.run(_produce_steadily(broker.url, messages, rate))
        produced_at = time.monotonic()

        wanted_ids = {event_id for _, _, event_id in messages if event_id}
        wanted_garbage = {key for key, _, event_id in messages if event_id is None}
        deadline = time.monotonic() + max(300.0, n / rate)
        seen_ids: set[str] = set()
        garbage_seen: set[bytes] = set()
        suggestion_ids: set[str] = set()
        letters_total = suggestions_total = 0
        while time.monotonic() < deadline:
            suggestions = collect(broker, SUGGESTIONS, 10**9, timeout_s=8)
            letters = collect(broker, DEAD_LETTERS, 10**9, timeout_s=4)
            suggestion_ids = {str(s["upload_event_id"]) for s in suggestions}
            letter_ids = {str(d["upload_event_id"]) for d in letters if d["upload_event_id"]}
            garbage_seen = {bytes(d["key"]) for d in letters if d["upload_event_id"] is None}  # type: ignore[arg-type]
            seen_ids = suggestion_ids | letter_ids
            suggestions_total, letters_total = len(suggestions), len(letters)
            if wanted_ids <= seen_ids and wanted_garbage <= garbage_seen:
                break
            time.sleep(5)
        drained_s = time.monotonic() - produced_at
        sampler.stopped.set()
        sampler.join()
        worker.stop()

    rss = [kib for _, kib in sampler.samples]
    third = max(len(rss) // 3, 1)
    first_peak, last_peak = max(rss[:third]), max(rss[-third:])
    summary = {
        "events": n,
        "rate_per_s": rate,
        "produce_s": round(produce_s, 1),
        "drain_after_produce_s": round(drained_s, 1),
        "suggestions_distinct": len(suggestion_ids),
        "dead_letters_distinct": len(seen_ids - suggestion_ids) + len(garbage_seen),
        "records_on_topics": suggestions_total + letters_total,
        "lost": len(wanted_ids - seen_ids) + len(wanted_garbage - garbage_seen),
        "rss_mib_first_third_peak": round(first_peak / 1024, 1),
        "rss_mib_last_third_peak": round(last_peak / 1024, 1),
        "rss_mib_max": round(max(rss) / 1024, 1),
        "rss_samples": len(rss),
    }
    path = tmp_path_factory.getbasetemp() / "soak.json"
    path.write_text(json.dumps(summary, indent=2))
    print("SOAK", json.dumps(summary))
    assert summary["lost"] == 0, summary
    assert last_peak <= first_peak * 1.25, summary
