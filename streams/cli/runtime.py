"""``tagstream broker`` and ``tagstream worker``: the two long-running processes of a deployment."""

from __future__ import annotations

import argparse
import signal

from streams.cli.options import Commands, broker_option, offline_option, service_settings


def register(commands: Commands) -> None:
    broker = commands.add_parser("broker", help="run the embedded Kafka-API broker (Tansu) on loopback")
    broker.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default 9092; 0 picks a free one)")
    broker.set_defaults(handler=_broker)

    worker = commands.add_parser("worker", help="run the suggestion stream processor")
    broker_option(worker)
    offline_option(worker, "use random-init models (no pretrained weights needed)")
    worker.set_defaults(handler=_worker)


def _broker(args: argparse.Namespace) -> int:
    from streams.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port or None).start()
    print(f"broker listening: {broker.url}  (bootstrap {broker.bootstrap}; in-memory; Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return broker.wait()
    except KeyboardInterrupt:
        print("stopping broker", flush=True)
        broker.stop()
        return 0


def _worker(args: argparse.Namespace) -> int:
    from streams.worker.service import run_worker

    run_worker(service_settings(args))
    return 0
