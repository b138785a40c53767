"""``tagstream bench``: inference side by side with the reference, then end to end through a broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from inference.benchmark import BenchConfig, run_benchmark
from inference.offline_models import build_clip, build_yolo
from inference.scenes import make_demo_set
from streams.broker import EmbeddedBroker, free_port
from streams.demo import demo_uploads
from streams.image_server import ImageServer
from streams.kafka_io import produce_uploads, read_topic
from streams.settings import Settings


def run_bench(
    settings: Settings, json_out: Path | None, inference_only: bool, e2e_only: bool, rate: float, seconds: float
) -> int:
    report: dict[str, Any] = {}
    model_dir = settings.cache_dir / "models"
    if not e2e_only:
        config = BenchConfig(device=settings.models.device, precision=settings.models.precision)
        report["inference"] = run_benchmark(config, model_dir)
        report["speedup_vs_reference"] = report["inference"]["speedup_vs_reference"]
    if not inference_only:
        report["end_to_end"] = asyncio.run(_end_to_end(settings, model_dir, rate, seconds))
    print(json.dumps(report, indent=1))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1))
    return 0


async def _end_to_end(settings: Settings, model_dir: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Produce at ``rate`` uploads/s for ``seconds``; latency = suggestion received - upload occurred_at."""
    work = Path(tempfile.mkdtemp(prefix="tagstream-bench-"))
    count = max(int(rate * seconds), 1)
    demo = make_demo_set(seed=5, n_products=3, n_uploads=12)
    demo.write_png(work / "images")
    detector, embedder = build_yolo(model_dir, "yolo26n"), build_clip(model_dir, tiny=False)
    with EmbeddedBroker(log_path=work / "broker.log") as broker, ImageServer(work / "images") as server:
        env = {
            **os.environ,
            "TAGSTREAM_BROKER": broker.url,
            "TAGSTREAM_FETCH__ALLOW_PRIVATE_NETWORKS": "true",
            "TAGSTREAM_MODELS__DETECTOR": str(detector),
            "TAGSTREAM_MODELS__EMBEDDER": str(embedder),
            "TAGSTREAM_MODELS__PRECISION": settings.models.precision,
            "TAGSTREAM_MODELS__DEVICE": settings.models.device,
            "TAGSTREAM_LOG_LEVEL": "warning",
            "TAGSTREAM_WEB_PORT": str(free_port()),
        }
        with (work / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            uploads = demo_uploads(demo, server)
            print(f"e2e: warming up the worker (logs in {work})", flush=True)
            await produce_uploads(broker.url, settings.topics.uploads, [{**uploads[0], "upload_id": "warm-up"}])
            received: dict[str, float] = {}
            consumer = asyncio.create_task(_receive(broker.url, settings.topics.suggestions, received))
            await _wait_for(lambda: "warm-up" in received, 600)
            print(f"e2e: producing {count} uploads at {rate:g}/s", flush=True)
            sent_at: dict[str, float] = {}
            start = time.time()
            for i in range(count):
                await asyncio.sleep(max(0.0, start + i / rate - time.time()))
                upload_id = f"bench-{i}"
                sent_at[upload_id] = time.time()
                record = {
                    **uploads[i % len(uploads)],
                    "upload_id": upload_id,
                    "occurred_at": datetime.now(timezone.utc),
                }
                await produce_uploads(broker.url, settings.topics.uploads, [record])
            await _wait_for(lambda: all(u in received for u in sent_at), 120 + seconds * 4)
            consumer.cancel()
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    latencies = np.array([received[u] - sent_at[u] for u in sent_at]) * 1000
    duration = max(received[u] for u in sent_at) - start
    return {
        "rate_offered_per_s": rate,
        "uploads": count,
        "sustained_uploads_per_s": round(count / duration, 3),
        "latency_ms": {
            p: round(float(np.percentile(latencies, q)), 1) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
        },
        "models": {"detector": "yolo26n (random init)", "embedder": "CLIP ViT-B/32 (random init)"},
    }


async def _receive(broker: str, topic: str, received: dict[str, float]) -> None:
    async for _, record in read_topic(broker, topic, from_beginning=True, topic_wait_s=600):
        received.setdefault(str(record["upload_id"]), time.time())


async def _wait_for(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not answer in time")
        await asyncio.sleep(0.05)
