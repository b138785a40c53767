"""``tagstream bench``: inference side by side with the reference, then end to end through a broker."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from inference.offline_models import build_clip, build_yolo
from streams.broker import EmbeddedBroker, free_port
from streams.cli.options import Commands, settings_from
from streams.kafka import UploadProducer, read_topic
from streams.settings import Settings
from workbench.benchmark import BenchConfig, run_benchmark
from workbench.demo import demo_uploads
from workbench.evaluation import SAMPLE_CASES
from workbench.image_server import ImageServer
from workbench.scenes import make_demo_set


def register(commands: Commands) -> None:
    bench = commands.add_parser(
        "bench", help="measure: pipeline vs reference strategy, then end to end through a broker"
    )
    bench.add_argument("--json", type=Path, help="also write the report here")
    bench.add_argument(
        "--cases",
        type=Path,
        help="real photographs to measure on, cases.json format (default: the photos shipped in data/eval-sample)",
    )
    bench.add_argument(
        "--reference-uploads",
        type=int,
        default=4,
        help="photos the reference's best path runs on, spread over the set (default 4)",
    )
    bench.add_argument(
        "--reference-full-uploads",
        type=int,
        default=2,
        help="photos the reference's full path runs on (default 2; 10-60 s each on a 2-core CPU)",
    )
    bench.add_argument("--no-generated", action="store_true", help="skip the second table (generated scenes)")
    bench.add_argument("--inference-only", action="store_true", help="skip the end-to-end part")
    bench.add_argument("--e2e-only", action="store_true", help="skip the inference part")
    bench.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[1.0, 2.0],
        help="end-to-end offered rates, uploads/s, measured in turn on one worker (default 1 2)",
    )
    bench.add_argument("--seconds", type=float, default=30.0, help="end-to-end duration per rate (default 30)")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    cases = args.cases or SAMPLE_CASES
    if not args.e2e_only and not cases.is_file():
        print(f"no evaluation cases at {cases}: pass --cases PATH/cases.json", file=sys.stderr)
        return 2
    config = BenchConfig(
        cases=cases,
        reference_uploads=args.reference_uploads,
        reference_full_uploads=args.reference_full_uploads,
        generated=not args.no_generated,
        working_max_side=settings.fetch.working_max_side,
        device=settings.models.device,
        precision=settings.models.precision,
        detector_runtime=settings.models.detector_runtime,
    )
    return run_bench(settings, config, args.json, args.inference_only, args.e2e_only, args.rate, args.seconds)


def run_bench(
    settings: Settings,
    config: BenchConfig,
    json_out: Path | None,
    inference_only: bool,
    e2e_only: bool,
    rates: Sequence[float],
    seconds: float,
) -> int:
    """Real photographs first (``speedup_vs_reference_best``/``_full``), generated scenes second
    (``speedup_vs_reference``, the full path, as reported before photographs were measured)."""
    report: dict[str, Any] = {}
    model_dir = settings.cache_dir / "models"
    if not e2e_only:
        report["inference"] = run_benchmark(config, model_dir)
        for key in ("speedup_vs_reference_best", "speedup_vs_reference_full"):
            report[key] = report["inference"]["photos"][key]
        if "speedup_vs_reference" in report["inference"]:
            report["speedup_vs_reference"] = report["inference"]["speedup_vs_reference"]
    if not inference_only:
        report["end_to_end"] = asyncio.run(_end_to_end(settings, model_dir, rates, seconds))
    print(json.dumps(report, indent=1))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1))
    return 0


@dataclass(frozen=True)
class _Arrival:
    """When a suggestion was read back, and what it says of its own time in the worker."""

    received_at: float
    processed_at: float
    in_worker_ms: float


async def _end_to_end(settings: Settings, model_dir: Path, rates: Sequence[float], seconds: float) -> dict[str, Any]:
    """Produce at each rate for ``seconds``; latency = suggestion read back - upload sent.

    One worker serves every rate in turn, warmed up first (models loaded, catalogue features
    cached), as a long-running worker would be. The producer stays connected, as a backend's does.
    """
    work = Path(tempfile.mkdtemp(prefix="tagstream-bench-"))
    demo = make_demo_set(seed=5, n_products=3, n_uploads=12)
    demo.write_png(work / "images")
    detector, embedder = build_yolo(model_dir, "yolo26n"), build_clip(model_dir, tiny=False)
    web_port = free_port()
    with EmbeddedBroker(log_path=work / "broker.log") as broker, ImageServer(work / "images") as server:
        env = {
            **os.environ,
            "TAGSTREAM_BROKER": broker.url,
            "TAGSTREAM_FETCH__ALLOW_PRIVATE_NETWORKS": "true",
            "TAGSTREAM_MODELS__DETECTOR": str(detector),
            "TAGSTREAM_MODELS__EMBEDDER": str(embedder),
            "TAGSTREAM_MODELS__PRECISION": settings.models.precision,
            "TAGSTREAM_MODELS__DEVICE": settings.models.device,
            "TAGSTREAM_MODELS__DETECTOR_RUNTIME": settings.models.detector_runtime,
            "TAGSTREAM_LOG_LEVEL": "warning",
            "TAGSTREAM_WEB_PORT": str(web_port),
        }
        with (work / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            uploads = demo_uploads(demo, server)
            received: dict[str, _Arrival] = {}
            consumer = asyncio.create_task(
                _receive(broker.url, settings.topics.suggestions, settings.fetch_wait_ms, received)
            )
            async with UploadProducer(broker.url, settings.topics.uploads) as producer:
                print(f"e2e: warming up the worker (logs in {work})", flush=True)
                await producer.send({**uploads[0], "upload_id": "warm-up"})
                await _wait_for(lambda: "warm-up" in received, 600)
                runs = []
                for index, rate in enumerate(rates):
                    stages_before = await _stage_totals(web_port)
                    run = await _offer(producer, uploads, f"bench-{index}", rate, seconds, received)
                    run["worker_stage_ms_mean"] = stage_means(stages_before, await _stage_totals(web_port))
                    runs.append(run)
            consumer.cancel()
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    return {
        "models": {"detector": "yolo26n (random init)", "embedder": "CLIP ViT-B/32 (random init)"},
        "worker": {
            "max_batch": settings.max_batch,
            "max_wait_s": settings.max_wait_s,
            "fetch_wait_s": settings.fetch_wait_s,
        },
        "runs": runs,
    }


async def _offer(
    producer: UploadProducer,
    uploads: list[dict[str, Any]],
    prefix: str,
    rate: float,
    seconds: float,
    received: dict[str, _Arrival],
) -> dict[str, Any]:
    """Send uploads on a fixed schedule (not waiting for answers, as a backend would not) and wait for all."""
    count = max(int(rate * seconds), 1)
    print(f"e2e: producing {count} uploads at {rate:g}/s", flush=True)
    sent_at: dict[str, float] = {}
    start = time.time()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - time.time()))
        upload_id = f"{prefix}-{i}"
        sent_at[upload_id] = time.time()
        record = {**uploads[i % len(uploads)], "upload_id": upload_id, "occurred_at": datetime.now(timezone.utc)}
        await producer.send(record)
    await _wait_for(lambda: all(u in received for u in sent_at), 120 + seconds * 4)
    arrivals = {u: received[u] for u in sent_at}
    latencies = [arrivals[u].received_at - sent_at[u] for u in sent_at]
    # Where an upload's time went: broker hop and batching, the worker (fetch + models), the way back.
    to_worker = [a.processed_at - a.in_worker_ms / 1000 - sent_at[u] for u, a in arrivals.items()]
    to_reader = [a.received_at - a.processed_at for a in arrivals.values()]
    duration = max(a.received_at for a in arrivals.values()) - start
    return {
        "rate_offered_per_s": rate,
        "uploads": count,
        "sustained_uploads_per_s": round(count / duration, 3),
        "latency_ms": _percentiles(latencies),
        "p50_breakdown_ms": {
            "to_worker": _percentiles(to_worker)["p50"],
            "in_worker": _percentiles([a.in_worker_ms / 1000 for a in arrivals.values()])["p50"],
            "to_reader": _percentiles(to_reader)["p50"],
        },
    }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds: the tail is what a user waiting on a suggestion notices."""
    values = np.array(seconds) * 1000
    return {p: round(float(np.percentile(values, q)), 1) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}


async def _stage_totals(web_port: int) -> dict[str, tuple[float, float]]:
    async with httpx.AsyncClient() as client:
        return stage_totals((await client.get(f"http://127.0.0.1:{web_port}/metrics", timeout=10)).text)


def stage_totals(text: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) per stage from the worker's Prometheus ``tagstream_stage_seconds``."""
    totals: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "tagstream_stage_seconds":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage", "")
            total, count = totals.get(stage, (0.0, 0.0))
            if sample.name.endswith("_sum"):
                totals[stage] = (sample.value, count)
            elif sample.name.endswith("_count"):
                totals[stage] = (total, sample.value)
    return totals


def stage_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean milliseconds per observation of each stage between two scrapes."""
    means = {}
    for stage, (total, count) in sorted(after.items()):
        total_before, count_before = before.get(stage, (0.0, 0.0))
        if count > count_before:
            means[stage] = round(1000 * (total - total_before) / (count - count_before), 1)
    return means


async def _receive(broker: str, topic: str, fetch_wait_ms: int, received: dict[str, _Arrival]) -> None:
    async for _, record in read_topic(broker, topic, fetch_wait_ms, from_beginning=True, topic_wait_s=600):
        if str(record["upload_id"]) not in received:
            received[str(record["upload_id"])] = _Arrival(
                time.time(), record["processed_at"].timestamp(), float(record["latency_ms"])
            )


async def _wait_for(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not answer in time")
        await asyncio.sleep(0.05)
