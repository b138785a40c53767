"""``tagstream``: one parser assembled from the command groups, and the one place errors become a line.

The runtime commands live here (``streams.cli``); the measurement and demo commands (``eval``,
``bench``, ``demo``) belong to the workbench above, which assembles the full ``tagstream``
program with :func:`main` and its own registrars (``workbench.cli``). ``python -m streams.cli``
runs the runtime commands alone, without importing the workbench.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from streams.cli import config, history, productdb, runtime, topics
from streams.cli.options import CommandError, Registrar

RUNTIME_COMMANDS: tuple[Registrar, ...] = (
    runtime.register,
    topics.register,
    config.register,
    productdb.register,
    history.register,
)


def build_parser(registrars: Sequence[Registrar] = RUNTIME_COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagstream",
        description="Product-tag suggestions as a stream: image-uploaded events in, tag-suggestion events out. "
        "Every setting is also an environment variable (see 'tagstream settings').",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in registrars:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None, registrars: Sequence[Registrar] = RUNTIME_COMMANDS) -> int:
    from aiokafka.errors import KafkaConnectionError

    parser = build_parser(registrars)
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
