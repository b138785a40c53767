"""Fault tests report what went in and what came out; docs/reliability.md is filled from these rows.

Rows are printed (visible with ``pytest -s`` or in the ``-rA`` summary) and appended as JSON
lines to ``reliability.jsonl`` in pytest's base temporary directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def report(
    factory: pytest.TempPathFactory, fault: str, events_in: int, suggestions: int, dead_letters: int, **extra: Any
) -> Path:
    row = {
        "fault": fault,
        "events_in": events_in,
        "suggestions": suggestions,
        "dead_letters": dead_letters,
        "lost": events_in - suggestions - dead_letters,
        **extra,
    }
    path = factory.getbasetemp() / "reliability.jsonl"
    with path.open("a") as handle:
        handle.write(json.dumps(row, default=str) + "\n")
    print("RELIABILITY", json.dumps(row, default=str))
    return path
