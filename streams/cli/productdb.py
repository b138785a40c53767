"""``tagstream sink`` and ``tagstream suggestions``: the product DB's side of the stream."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from streams.cli.options import Commands, broker_option, db_option, service_settings, settings_from

_TABLE_COLUMNS = ("product_id", "found", "confidence", "method", "bbox", "copies", "model_version", "processed_at")


def register(commands: Commands) -> None:
    sink = commands.add_parser(
        "sink", help="write tag-suggestion events into the product DB (PostgreSQL or SQLite), idempotently"
    )
    broker_option(sink)
    db_option(sink)
    sink.set_defaults(handler=_sink)

    suggestions = commands.add_parser(
        "suggestions", help="print an upload's suggestions from the product DB (latest model by default)"
    )
    suggestions.add_argument("upload_id", metavar="UPLOAD_ID")
    db_option(suggestions)
    suggestions.add_argument(
        "--all-models", action="store_true", help="every model's suggestions (newest first), not only the latest"
    )
    suggestions.add_argument("--format", choices=("jsonl", "table"), default="jsonl", help="output (default jsonl)")
    suggestions.set_defaults(handler=_suggestions)


def _sink(args: argparse.Namespace) -> int:
    from streams.productdb.sink import run_sink

    asyncio.run(run_sink(service_settings(args)))
    return 0


def _suggestions(args: argparse.Namespace) -> int:
    import sqlite3

    import psycopg

    from streams.kafka import to_json
    from streams.productdb.db import ProductDB

    settings = settings_from(args)

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
        if column == "copies" and isinstance(value, list):
            return str(len(value)) if value else "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        return "-" if value is None else str(value)

    rows = [list(_TABLE_COLUMNS)] + [[cell(r, c) for c in _TABLE_COLUMNS] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE_COLUMNS))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
