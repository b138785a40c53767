"""``tagstream settings``: every setting as (environment variable, default, meaning); the README's table."""

from __future__ import annotations

import argparse

from pydantic import BaseModel

from streams.cli.options import Commands
from streams.settings import Settings

PREFIX = "TAGSTREAM_"


def register(commands: Commands) -> None:
    settings = commands.add_parser("settings", help="list every setting: environment variable, default, meaning")
    settings.add_argument("--markdown", action="store_true", help="as a Markdown table (the README's)")
    settings.set_defaults(handler=_settings)


def _settings(args: argparse.Namespace) -> int:
    rows = settings_rows()
    if args.markdown:
        print("| variable | default | meaning |\n|---|---|---|")
        for name, default, meaning in rows:
            print(f"| `{name}` | `{default}` | {meaning} |")
    else:
        for name, default, meaning in rows:
            print(f"{name}={default}\n    {meaning}")
    return 0


def settings_rows() -> list[tuple[str, str, str]]:
    return list(_rows(Settings, PREFIX, Settings.model_construct()))


def _rows(model: type[BaseModel], prefix: str, instance: BaseModel) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        value = getattr(instance, name)
        if isinstance(value, BaseModel):
            rows += _rows(type(value), f"{prefix}{name.upper()}__", value)
        else:
            rows.append((f"{prefix}{name.upper()}", str(value), field.description or ""))
    return rows
