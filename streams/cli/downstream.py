"""The downstream commands of ``tagstream``: sink, suggestions, replay, dlq replay.

Kept apart from ``streams.cli.main`` so the product-DB and history tools can grow without touching
the worker's command line; ``streams.cli.main`` calls ``register`` to add them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import datetime

from streams.logs import configure_logging
from streams.settings import Settings

_TABLE_COLUMNS = ("product_id", "found", "confidence", "method", "bbox", "model_version", "processed_at")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sink = commands.add_parser(
        "sink", help="write tag-suggestion events into the product DB (PostgreSQL or SQLite), idempotently"
    )
    _broker_option(sink)
    _db_option(sink)
    sink.set_defaults(handler=_sink)

    suggestions = commands.add_parser(
        "suggestions", help="print an upload's suggestions from the product DB (latest model by default)"
    )
    suggestions.add_argument("upload_id", metavar="UPLOAD_ID")
    _db_option(suggestions)
    suggestions.add_argument(
        "--all-models", action="store_true", help="every model's suggestions (newest first), not only the latest"
    )
    suggestions.add_argument("--format", choices=("jsonl", "table"), default="jsonl", help="output (default jsonl)")
    suggestions.set_defaults(handler=_suggestions)

    replay = commands.add_parser(
        "replay", help="reprocess a time range of uploads with the current model (live workers keep running)"
    )
    _broker_option(replay)
    replay.add_argument("--topic", help="topic to replay (default: the uploads topic)")
    start = replay.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-beginning", action="store_true", help="from the oldest message")
    start.add_argument("--since", type=_time, metavar="ISO8601", help="from this record time (no zone = UTC)")
    replay.add_argument("--until", type=_time, metavar="ISO8601", help="up to this record time, exclusive")
    replay.add_argument("--group", help="consumer group recording the replay's progress (default: <app_id>-replay)")
    replay.add_argument("--resume", action="store_true", help="continue from the group's committed offsets")
    replay.add_argument("--offline", action="store_true", help="use random-init models (no pretrained weights needed)")
    replay.set_defaults(handler=_replay)

    dlq = commands.add_parser("dlq", help="dead-letter tools")
    dlq.set_defaults(handler=lambda _args: _usage(dlq))
    dlq_commands = dlq.add_subparsers(title="dlq commands", metavar="DLQ_COMMAND")
    dlq_replay = dlq_commands.add_parser("replay", help="re-publish dead letters (key and value as is) to their topic")
    _broker_option(dlq_replay)
    dlq_replay.add_argument(
        "--topic", help="dead-letter topic (default: the workers'; the sink's is TAGSTREAM_SINK__DEAD_LETTERS)"
    )
    dlq_replay.add_argument("--filter-kind", metavar="KIND", help="only this error kind, e.g. fetch_error")
    dlq_replay.add_argument("--max", type=int, metavar="N", help="re-publish at most N letters")
    dlq_replay.set_defaults(handler=_dlq_replay)


def _broker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="Kafka URL, e.g. kafka://127.0.0.1:9092 (default: TAGSTREAM_BROKER)")


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", help="postgresql://user@host/db or sqlite:///path.db (default: TAGSTREAM_SINK__DB)", metavar="URL"
    )


def _time(text: str) -> datetime:
    from streams.worker.replay import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "broker", None):
        settings.broker = args.broker
    if getattr(args, "db", None):
        settings.sink.db = args.db
    if getattr(args, "offline", False):
        settings.models.offline = True
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _sink(args: argparse.Namespace) -> int:
    from streams.productdb.sink import run_sink

    asyncio.run(run_sink(_settings(args)))
    return 0


def _suggestions(args: argparse.Namespace) -> int:
    import sqlite3

    import psycopg

    from streams.kafka import to_json
    from streams.productdb.db import ProductDB

    settings = _settings(args)

    async def query() -> list[dict[str, object]]:
        async with ProductDB.open(settings.sink.db) as db:
            return [s.as_record() for s in await db.suggestions(args.upload_id, args.all_models)]

    try:
        records = asyncio.run(query())
    except (sqlite3.Error, psycopg.Error) as exc:
        # Typically a database no sink has written to yet (no tables): say so, without a traceback.
        print(f"cannot read suggestions from the product DB: {exc}", file=sys.stderr)
        return 2
    if not records:
        print(f"no suggestions stored for upload {args.upload_id!r}", file=sys.stderr)
        return 1
    if args.format == "table":
        print(_table(records))
    else:
        for record in records:
            print(to_json(record))
    return 0


def _table(records: Sequence[dict[str, object]]) -> str:
    def cell(record: dict[str, object], column: str) -> str:
        value = record[column]
        if column == "bbox" and isinstance(value, dict):
            return f"({value['x']:g},{value['y']:g} {value['width']:g}x{value['height']:g})"
        if isinstance(value, float):
            return f"{value:.2f}"
        return "-" if value is None else str(value)

    rows = [list(_TABLE_COLUMNS)] + [[cell(r, c) for c in _TABLE_COLUMNS] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE_COLUMNS))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _replay(args: argparse.Namespace) -> int:
    from streams.worker.replay import ReplayRefused, ReplayRequest, ReplaySummary, replay

    settings = _settings(args)
    if args.since and args.until and args.until <= args.since:
        print("--until must be after --since", file=sys.stderr)
        return 2
    request = ReplayRequest(
        topic=args.topic or settings.topics.uploads,
        group=args.group or f"{settings.app_id}-replay",
        since=args.since,
        until=args.until,
        resume=args.resume,
    )

    def progress(summary: ReplaySummary) -> None:
        share = f" of {summary.total} ({100 * summary.read / summary.total:.0f}%)" if summary.total else ""
        print(
            f"replay: read {summary.read}{share}, replayed {summary.replayed}, {summary.suggestions} suggestions, "
            f"{sum(summary.dead_letters.values())} dead letters, {summary.replayed / max(summary.seconds, 1e-9):.1f}/s",
            file=sys.stderr,
            flush=True,
        )

    try:
        summary = asyncio.run(replay(settings, request, progress))
    except (ReplayRefused, LookupError) as exc:
        print(f"replay refused: {exc}", file=sys.stderr)
        return 2
    print(f"replay done: {summary}")
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    from streams.deadletters import DlqReplayRequest, replay_dead_letters

    settings = _settings(args)
    request = DlqReplayRequest(args.topic or settings.topics.dead_letters, args.filter_kind, args.max)
    try:
        summary = asyncio.run(replay_dead_letters(settings, request))
    except LookupError as exc:
        print(f"dlq replay: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0
