"""`tagstream eval` on a few real photograph cases (the shipped eval sample): report keys, floors, and no false positive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.photos import EVAL_SAMPLE

from workbench.cli import main

CASES = ("oxford/graf/1to2", "oxford/boat/1to4", "cmp_homogr/adam")


@pytest.fixture
def small_cases(tmp_path: Path) -> Path:
    """A cases.json with three of the sample's cases; image folders linked so relative paths resolve."""
    full = json.loads(EVAL_SAMPLE.read_text())
    chosen = [c for c in full["cases"] if c["case_id"] in CASES]
    assert len(chosen) == len(CASES), [c["case_id"] for c in full["cases"]]
    for folder in ("oxford", "cmp_homogr"):
        (tmp_path / folder).symlink_to(EVAL_SAMPLE.parent / folder)
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({**full, "cases": chosen}))
    return path


def test_eval_reports_required_keys_floors_and_no_false_positive(
    small_cases: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAGSTREAM_CACHE_DIR", str(cache_dir))
    out = tmp_path / "report.json"

    assert main(["eval", "--cases", str(small_cases), "--json", str(out), "--offline"]) == 0

    report = json.loads(out.read_text())
    assert {"recall_iou50", "mean_iou", "false_positive_rate", "per_sequence", "cases", "seconds"} <= set(report)
    assert report["boxes"] == 9
    assert report["recall_iou50"] >= 0.85
    assert report["mean_iou"] >= 0.8
    assert report["negatives"] > 0 and report["false_positive_rate"] == 0.0
    for name, metrics in report["per_sequence"].items():
        assert metrics["mean_iou_all"] > metrics["trivial_baseline_iou"], name
    rows = [row for case in report["cases"] for row in case["box_results"]]
    assert {row["method"] for row in rows if row["found"]} == {"geometric"}
    assert {row["method"] for row in rows if not row["found"]} <= {"none"}


def test_eval_over_several_match_orders_reports_each_run(
    small_cases: Path,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TAGSTREAM_CACHE_DIR", str(cache_dir))
    out = tmp_path / "report.json"

    assert main(["eval", "--cases", str(small_cases), "--json", str(out), "--offline", "--match-orders", "2"]) == 0

    report = json.loads(out.read_text())
    spread = report["match_orders"]
    assert spread["runs"] == 2 and spread["seeds"] == [None, 1]
    natural = report["boxes"] - report["not_found"] - report["found_wrong_box"]
    assert spread["overall"]["right"][0] == natural
    assert min(spread["overall"]["right"]) >= 8, spread["overall"]
    assert spread["overall"]["false_positives"] == [0, 0]
    assert "over 2 match orders" in capsys.readouterr().out


def test_eval_refuses_no_match_order(small_cases: Path) -> None:
    assert main(["eval", "--cases", str(small_cases), "--offline", "--match-orders", "0"]) == 2


def test_a_catalogue_answers_a_box_with_the_view_of_its_product_that_finds_it(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """graf's first box tagged twice: on noise (a view that cannot find it) and on its photo, in another folder."""
    monkeypatch.setenv("TAGSTREAM_CACHE_DIR", str(cache_dir))
    graf = next(c for c in json.loads(EVAL_SAMPLE.read_text())["cases"] if c["case_id"] == "oxford/graf/1to2")
    box = {**graf["boxes"][0], "product": "graf-g1"}
    (tmp_path / "noise").mkdir()
    (tmp_path / "catalogue").mkdir()
    noise = np.random.default_rng(3).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise" / "n.png")
    (tmp_path / "catalogue" / "img1.png").symlink_to(EVAL_SAMPLE.parent / graf["source_image"])
    (tmp_path / "oxford").symlink_to(EVAL_SAMPLE.parent / "oxford")
    cases = [
        {**graf, "case_id": "blind", "source_image": "noise/n.png", "boxes": [box]},
        {**graf, "case_id": "seen", "sequence": "graf-catalogue", "source_image": "catalogue/img1.png", "boxes": [box]},
    ]
    (tmp_path / "cases.json").write_text(json.dumps({"cases": cases}))

    def found(*options: str) -> dict[str, bool]:
        out = tmp_path / "report.json"
        assert main(["eval", "--cases", str(tmp_path / "cases.json"), "--json", str(out), "--offline", *options]) == 0
        report = json.loads(out.read_text())
        assert report["catalogue"] == bool(options)
        return {case["case_id"]: case["box_results"][0]["iou"] >= 0.5 for case in report["cases"]}

    assert found() == {"blind": False, "seen": True}
    assert found("--catalogue") == {"blind": True, "seen": True}
