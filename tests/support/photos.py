"""The real photographs that ship with the repository (``data/``), for tests that need real pixels.

They are part of the checkout, so a test that cannot find them fails (a broken checkout), it
never skips.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EVAL_SAMPLE = REPO / "data" / "eval-sample" / "cases.json"
"""Seven eval-dev cases of planar scenes with published homographies (see its SOURCES.md)."""


def one_sample_case(case_id: str, directory: Path) -> Path:
    """A cases.json in ``directory`` holding the eval sample's ``case_id`` alone, its images read where they are."""
    data = json.loads(EVAL_SAMPLE.read_text(encoding="utf-8"))
    data["cases"] = [case for case in data["cases"] if case["case_id"] == case_id]
    for case in data["cases"]:
        for image in ("source_image", "target_image"):
            case[image] = str(EVAL_SAMPLE.parent / case[image])
    path = directory / "cases.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
