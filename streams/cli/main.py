"""``tagstream``: the command line of the stream processor and its tools."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from streams.cli.downstream import register as register_downstream
from streams.settings import Settings
from workbench.pretrained import with_available_models


class CommandError(Exception):
    """A mistake the user can fix (a bad input line, a topic that does not exist): one line, no traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    from aiokafka.errors import KafkaConnectionError

    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        print(f"tagstream: {exc}", file=sys.stderr)
    except KafkaConnectionError as exc:
        print(f"tagstream: cannot reach the Kafka broker ({exc}); check --broker or TAGSTREAM_BROKER", file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagstream",
        description="Product-tag suggestions as a stream: image-uploaded events in, tag-suggestion events out. "
        "Every setting is also an environment variable (see 'tagstream settings').",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    broker = commands.add_parser("broker", help="run the embedded Kafka-API broker (Tansu) on loopback")
    broker.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default 9092; 0 picks a free one)")
    broker.set_defaults(handler=_broker)

    worker = commands.add_parser("worker", help="run the suggestion stream processor")
    _broker_option(worker)
    worker.add_argument("--offline", action="store_true", help="use random-init models (no pretrained weights needed)")
    worker.set_defaults(handler=_worker)

    produce = commands.add_parser("produce", help="publish ImageUploaded events from a JSON-lines file ('-' = stdin)")
    _broker_option(produce)
    produce.add_argument(
        "file", help="JSON lines, one ImageUploaded per line; event_id and occurred_at are filled in if missing"
    )
    produce.add_argument("--topic", help="topic (default: the uploads topic)")
    produce.set_defaults(handler=_produce)

    tail = commands.add_parser(
        "tail", help="print a topic's events as JSON lines (Avro-aware, any of the three topics)"
    )
    _broker_option(tail)
    tail.add_argument("--topic", required=True, help="topic to read, e.g. tag-suggestions")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest message instead of new ones")
    tail.add_argument("--max", type=int, help="stop after this many messages")
    tail.add_argument("--idle-timeout", type=float, help="stop after this many seconds without a message")
    tail.set_defaults(handler=_tail)

    settings = commands.add_parser("settings", help="list every setting: environment variable, default, meaning")
    settings.add_argument("--markdown", action="store_true", help="as a Markdown table (the README's)")
    settings.set_defaults(handler=_settings)

    evaluate = commands.add_parser("eval", help="score the pipeline offline on an evaluation set (cases.json format)")
    evaluate.add_argument(
        "--cases", type=Path, help="path to cases.json (default: the real photographs shipped in data/eval-sample)"
    )
    evaluate.add_argument("--json", type=Path, help="also write the full report (per case) as JSON here")
    evaluate.add_argument("--offline", action="store_true", help="use random-init models even if pretrained ones exist")
    evaluate.set_defaults(handler=_eval)

    bench = commands.add_parser(
        "bench", help="measure: pipeline vs reference strategy, then end to end through a broker"
    )
    bench.add_argument("--json", type=Path, help="also write the report here")
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

    register_downstream(commands)

    demo = commands.add_parser("demo", help="the 'make run' demo: broker, worker, generated uploads, live suggestions")
    demo.add_argument("--port", type=int, default=9092, help="embedded broker port (0 picks a free one)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the generated demo images")
    demo.add_argument("--exit-after-demo", action="store_true", help="stop once the demo uploads are answered")
    demo.set_defaults(handler=_demo)
    return parser


def _broker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="Kafka URL, e.g. kafka://127.0.0.1:9092 (default: TAGSTREAM_BROKER)")


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {"broker": args.broker} if getattr(args, "broker", None) else {}
    settings = Settings(**overrides)
    if getattr(args, "offline", False):
        settings.models.offline = True
    return settings


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
    from streams.logs import configure_logging
    from streams.worker.service import run_worker

    settings = _settings_from(args)
    configure_logging(settings.log_level, settings.log_format)
    run_worker(settings)
    return 0


def _produce(args: argparse.Namespace) -> int:
    from schemas import IMAGE_UPLOADED, EncodeError, encode
    from streams.kafka import complete_upload, produce_uploads

    settings = _settings_from(args)
    name = "stdin" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from exc
    records = []
    # Every line is checked before anything is published: a bad line never leaves half a file sent.
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = complete_upload(json.loads(line))
            encode(IMAGE_UPLOADED, record)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{name} line {number}: not JSON: {exc.msg} (column {exc.colno})") from exc
        except (EncodeError, AttributeError, TypeError, ValueError, KeyError) as exc:
            raise CommandError(f"{name} line {number}: not an ImageUploaded event: {exc}") from exc
        records.append(record)
    sent = asyncio.run(produce_uploads(settings.broker, args.topic or settings.topics.uploads, records))
    for record in sent:
        print(f"published upload {record['upload_id']} (event {record['event_id']})")
    return 0


def _tail(args: argparse.Namespace) -> int:
    from streams.kafka import read_topic, to_json

    settings = _settings_from(args)

    async def run() -> None:
        count = 0
        async for _message, record in read_topic(settings.broker, args.topic, args.from_beginning, args.idle_timeout):
            print(to_json(record), flush=True)
            count += 1
            if args.max is not None and count >= args.max:
                return

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except LookupError as exc:  # the topic does not exist
        raise CommandError(str(exc)) from exc
    return 0


def _settings(args: argparse.Namespace) -> int:
    from streams.cli.settings_table import settings_rows

    rows = settings_rows()
    if args.markdown:
        print("| variable | default | meaning |\n|---|---|---|")
        for name, default, meaning in rows:
            print(f"| `{name}` | `{default}` | {meaning} |")
    else:
        for name, default, meaning in rows:
            print(f"{name}={default}\n    {meaning}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from workbench.evaluate import SAMPLE_CASES, run_eval

    settings, offline = with_available_models(_settings_from(args))
    return run_eval(settings, offline, args.cases or SAMPLE_CASES, args.json)


def _bench(args: argparse.Namespace) -> int:
    from workbench.bench import run_bench

    return run_bench(_settings_from(args), args.json, args.inference_only, args.e2e_only, args.rate, args.seconds)


def _demo(args: argparse.Namespace) -> int:
    from workbench.demo import run_demo

    return run_demo(port=args.port, seed=args.seed, exit_after_demo=args.exit_after_demo)


if __name__ == "__main__":
    sys.exit(main())
