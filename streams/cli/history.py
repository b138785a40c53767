"""``tagstream replay`` and ``tagstream dlq replay``: reprocessing history, re-publishing dead letters."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

from streams.cli.options import Commands, broker_option, offline_option, service_settings


def register(commands: Commands) -> None:
    replay = commands.add_parser(
        "replay", help="reprocess a time range of uploads with the current model (live workers keep running)"
    )
    broker_option(replay)
    replay.add_argument("--topic", help="topic to replay (default: the uploads topic)")
    start = replay.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-beginning", action="store_true", help="from the oldest message")
    start.add_argument("--since", type=_time, metavar="ISO8601", help="from this record time (no zone = UTC)")
    replay.add_argument("--until", type=_time, metavar="ISO8601", help="up to this record time, exclusive")
    replay.add_argument("--group", help="consumer group recording the replay's progress (default: <app_id>-replay)")
    replay.add_argument("--resume", action="store_true", help="continue from the group's committed offsets")
    offline_option(replay, "use random-init models (no pretrained weights needed)")
    replay.set_defaults(handler=_replay)

    dlq = commands.add_parser("dlq", help="dead-letter tools")
    dlq.set_defaults(handler=lambda _args: _usage(dlq))
    dlq_commands = dlq.add_subparsers(title="dlq commands", metavar="DLQ_COMMAND")
    dlq_replay = dlq_commands.add_parser("replay", help="re-publish dead letters (key and value as is) to their topic")
    broker_option(dlq_replay)
    dlq_replay.add_argument(
        "--topic", help="dead-letter topic (default: the workers'; the sink's is TAGSTREAM_SINK__DEAD_LETTERS)"
    )
    dlq_replay.add_argument("--filter-kind", metavar="KIND", help="only this error kind, e.g. fetch_error")
    dlq_replay.add_argument("--max", type=int, metavar="N", help="re-publish at most N letters")
    dlq_replay.set_defaults(handler=_dlq_replay)


def _time(text: str) -> datetime:
    from streams.worker.replay import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _replay(args: argparse.Namespace) -> int:
    from streams.worker.replay import ReplayRefused, ReplayRequest, ReplaySummary, replay

    settings = service_settings(args)
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

    settings = service_settings(args)
    request = DlqReplayRequest(args.topic or settings.topics.dead_letters, args.filter_kind, args.max)
    try:
        summary = asyncio.run(replay_dead_letters(settings, request))
    except LookupError as exc:
        print(f"dlq replay: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0
