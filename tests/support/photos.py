"""The real photographs that ship with the repository (``data/``), for tests that need real pixels.

They are part of the checkout, so a test that cannot find them fails (a broken checkout), it
never skips.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EVAL_SAMPLE = REPO / "data" / "eval-sample" / "cases.json"
"""Seven eval-dev cases of planar scenes with published homographies (see its SOURCES.md)."""
