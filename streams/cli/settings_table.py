"""The settings as rows of (environment variable, default, meaning), for the CLI and README."""

from __future__ import annotations

from pydantic import BaseModel

from streams.settings import Settings

PREFIX = "TAGSTREAM_"


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
