"""``make run``: a complete local stack with generated uploads and live suggestions.

Starts the embedded broker, serves generated product photos on loopback, runs a worker,
publishes a few uploads, prints each suggestion beside the ground truth, then keeps running so
the user can send their own events. It needs nothing from outside this repository.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inference.types import BBox
from streams.broker import EmbeddedBroker, free_port
from streams.cli.options import Commands
from streams.kafka import produce_uploads, read_topic
from streams.settings import Settings
from workbench.image_server import ImageServer
from workbench.pretrained import with_available_models
from workbench.scenes import DemoSet, make_demo_set


def demo_uploads(demo: DemoSet, server: ImageServer) -> list[dict[str, Any]]:
    sources = [
        {
            "image_url": server.url(f"{name}.png"),
            "tags": [
                {
                    "product_id": t.product_id,
                    "bbox": {"x": t.bbox.x, "y": t.bbox.y, "width": t.bbox.width, "height": t.bbox.height},
                }
                for t in tags
            ],
        }
        for name, tags in demo.source_tags.items()
    ]
    return [
        {"upload_id": name, "target_image_url": server.url(f"{name}.png"), "sources": sources} for name in demo.uploads
    ]


def register(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="the 'make run' demo: broker, worker, generated uploads, live suggestions")
    demo.add_argument("--port", type=int, default=9092, help="embedded broker port (0 picks a free one)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the generated demo images")
    demo.add_argument("--exit-after-demo", action="store_true", help="stop once the demo uploads are answered")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    return run_demo(port=args.port, seed=args.seed, exit_after_demo=args.exit_after_demo)


def run_demo(port: int, seed: int, exit_after_demo: bool) -> int:
    settings, offline = with_available_models(Settings())
    if offline:
        print(
            "NOTE: pretrained weights are not available here (no internet to download them), so this demo uses\n"
            "      random-init models of the real architectures. Their CLIP similarities are meaningless; the\n"
            "      matches you will see come from local-feature geometric verification.",
            flush=True,
        )
    work = Path(tempfile.mkdtemp(prefix="tagstream-demo-"))
    broker_port = port if port and _port_free(port) else free_port()
    demo = make_demo_set(seed=seed, n_products=3, n_uploads=4)
    demo.write_png(work / "images")
    with EmbeddedBroker(broker_port, log_path=work / "broker.log") as broker, ImageServer(work / "images") as server:
        print(f"broker: {broker.url}   images: http://127.0.0.1:{server.port}/   logs: {work}", flush=True)
        worker = _start_worker(broker, offline, work / "worker.log")
        try:
            uploads = demo_uploads(demo, server)
            _write_example(work / "my-uploads.jsonl", uploads[0])
            asyncio.run(produce_uploads(broker.url, settings.topics.uploads, uploads))
            print(f"published {len(uploads)} demo uploads; waiting for suggestions (models load first) ...", flush=True)
            asyncio.run(
                _print_suggestions(broker.url, settings.topics.suggestions, settings.fetch_wait_ms, demo, len(uploads))
            )
            _print_next_steps(broker, work)
            if not exit_after_demo:
                while worker.poll() is None:
                    time.sleep(1)
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    return 0


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _start_worker(broker: EmbeddedBroker, offline: bool, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TAGSTREAM_BROKER": broker.url,
        # The demo's images are served from loopback, which the SSRF guard refuses by default.
        "TAGSTREAM_FETCH__ALLOW_PRIVATE_NETWORKS": "true",
        # The HTTP API gets a free port, so a busy 6066 cannot stop the demo.
        "TAGSTREAM_WEB_PORT": str(free_port()),
        "TAGSTREAM_MODELS__OFFLINE": str(offline).lower(),
    }
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=handle, stderr=subprocess.STDOUT
        )


async def _print_suggestions(broker: str, topic: str, fetch_wait_ms: int, demo: DemoSet, expected: int) -> None:
    truth = demo.ground_truth
    seen = 0
    async for _, record in read_topic(broker, topic, fetch_wait_ms, from_beginning=True, topic_wait_s=600):
        seen += 1
        print(f"\nupload {record['upload_id']}  ({record['latency_ms']:.0f} ms, model {record['model']['version']})")
        for s in record["suggestions"]:
            real = truth.get(record["upload_id"], {}).get(s["product_id"])
            got = BBox(**s["bbox"]) if s["bbox"] else None
            verdict = _verdict(got, real)
            where = f"at ({got.x:.0f},{got.y:.0f} {got.width:.0f}x{got.height:.0f})" if got else ""
            truth_text = (
                f"truth ({real.x:.0f},{real.y:.0f} {real.width:.0f}x{real.height:.0f})" if real else "truth: absent"
            )
            print(
                f"  {s['product_id']}: found={s['found']!s:5} conf={s['confidence']:.2f} via {s['method']:9} "
                f"{where:28} {truth_text:32} {verdict}"
            )
        if seen >= expected:
            return


def _verdict(got: BBox | None, real: BBox | None) -> str:
    if real is None:
        return "OK (correctly absent)" if got is None else "WRONG (false positive)"
    if got is None:
        return "MISSED"
    iou = got.iou(real)
    return f"{'OK' if iou >= 0.5 else 'WRONG'} (IoU {iou:.2f})"


def _write_example(path: Path, upload: dict[str, Any]) -> None:
    path.write_text(json.dumps({**upload, "upload_id": "my-first-upload"}) + "\n")


def _print_next_steps(broker: EmbeddedBroker, work: Path) -> None:
    print(
        f"""
The stack keeps running (Ctrl-C stops it). Send your own events from another terminal:

  .venv/bin/tagstream produce --broker {broker.url} {work / "my-uploads.jsonl"}
  .venv/bin/tagstream tail --broker {broker.url} --topic tag-suggestions --from-beginning
  .venv/bin/tagstream tail --broker {broker.url} --topic image-uploaded.dlq --from-beginning

Each line of the .jsonl file is one ImageUploaded event (event_id and occurred_at are filled in).
Image URLs on loopback are allowed in this demo only (TAGSTREAM_FETCH__ALLOW_PRIVATE_NETWORKS=true).""",
        flush=True,
    )
