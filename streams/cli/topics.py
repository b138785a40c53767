"""``tagstream produce`` and ``tagstream tail``: events in and out of a topic by hand."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from streams.cli.options import CommandError, Commands, broker_option, settings_from


def register(commands: Commands) -> None:
    produce = commands.add_parser("produce", help="publish ImageUploaded events from a JSON-lines file ('-' = stdin)")
    broker_option(produce)
    produce.add_argument(
        "file", help="JSON lines, one ImageUploaded per line; event_id and occurred_at are filled in if missing"
    )
    produce.add_argument("--topic", help="topic (default: the uploads topic)")
    produce.set_defaults(handler=_produce)

    tail = commands.add_parser(
        "tail", help="print a topic's events as JSON lines (Avro-aware, any of the three topics)"
    )
    broker_option(tail)
    tail.add_argument("--topic", required=True, help="topic to read, e.g. tag-suggestions")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest message instead of new ones")
    tail.add_argument("--max", type=int, help="stop after this many messages")
    tail.add_argument("--idle-timeout", type=float, help="stop after this many seconds without a message")
    tail.set_defaults(handler=_tail)


def _produce(args: argparse.Namespace) -> int:
    from schemas import IMAGE_UPLOADED, EncodeError, encode
    from streams.kafka import complete_upload, produce_uploads

    settings = settings_from(args)
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

    settings = settings_from(args)

    async def run() -> None:
        count = 0
        async for _message, record in read_topic(
            settings.broker, args.topic, settings.fetch_wait_ms, args.from_beginning, args.idle_timeout
        ):
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
