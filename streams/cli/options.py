"""What every command shares: its options, the one way to build settings from them, its one error type."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

from streams.logs import configure_logging
from streams.settings import Settings

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Registrar = Callable[[Commands], None]
"""Adds a group of commands to the ``tagstream`` parser."""


class CommandError(Exception):
    """A mistake the user can fix (a bad input line, a topic that does not exist): one line, no traceback."""


def broker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="Kafka URL, e.g. kafka://127.0.0.1:9092 (default: TAGSTREAM_BROKER)")


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", help="postgresql://user@host/db or sqlite:///path.db (default: TAGSTREAM_SINK__DB)", metavar="URL"
    )


def offline_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--offline", action="store_true", help=help_text)


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings: the environment, then the command's ``--broker``, ``--db`` and ``--offline``."""
    settings = Settings()
    if getattr(args, "broker", None):
        settings.broker = args.broker
    if getattr(args, "db", None):
        settings.sink.db = args.db
    if getattr(args, "offline", False):
        settings.models.offline = True
    return settings


def service_settings(args: argparse.Namespace) -> Settings:
    """The settings of a long-running command (worker, sink, replay), with its logging configured.

    One-shot commands (produce, tail) leave logging alone: their stderr is for their own
    one-line errors, not for the Kafka client's chatter.
    """
    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format)
    return settings
