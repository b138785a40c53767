"""``tagstream perturb``: target photos changed one way, true boxes moved with them, sources untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.photos import one_sample_case

from workbench.cli import main
from workbench.evaluation import EvalCase, load_cases, load_image
from workbench.perturb import LARGE_FACTOR, SHELF_COPY_SCALE, VARIANTS, write_variant

CASE = "oxford/leuven/1to4"


@pytest.fixture(scope="module")
def one_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The eval sample's leuven case alone, its images read where they are."""
    return one_sample_case(CASE, tmp_path_factory.mktemp("one"))


def _variant(one_case: Path, tmp_path: Path, kind: str) -> tuple[EvalCase, EvalCase]:
    assert write_variant(one_case, tmp_path, kind) == 1
    (original,) = load_cases(one_case)
    (changed,) = load_cases(tmp_path / "cases.json")
    return original, changed


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_every_variant_changes_the_target_photo_and_keeps_the_source(one_case: Path, tmp_path: Path, kind: str) -> None:
    original, changed = _variant(one_case, tmp_path, kind)
    assert changed.source_path == original.source_path
    before, after = load_image(original.target_path), load_image(changed.target_path)
    assert before.shape != after.shape or np.abs(before.astype(int) - after.astype(int)).mean() > 1.0
    assert [box.source_box for box in changed.boxes] == [box.source_box for box in original.boxes]


def test_a_large_photo_scales_its_true_boxes(one_case: Path, tmp_path: Path) -> None:
    original, changed = _variant(one_case, tmp_path, "large")
    with Image.open(original.target_path) as before, Image.open(changed.target_path) as after:
        assert after.size == (before.size[0] * LARGE_FACTOR, before.size[1] * LARGE_FACTOR)
    for old, new in zip(original.boxes, changed.boxes, strict=True):
        assert new.target_box is not None and old.target_box is not None
        assert new.target_box.x == pytest.approx(old.target_box.x * LARGE_FACTOR)
        assert new.target_box.width == pytest.approx(old.target_box.width * LARGE_FACTOR)


def test_a_repeated_product_lists_its_copy(one_case: Path, tmp_path: Path) -> None:
    original, changed = _variant(one_case, tmp_path, "repeated")
    width = load_image(original.target_path).shape[1]
    for old, new in zip(original.boxes, changed.boxes, strict=True):
        assert new.target_box == old.target_box and old.target_box is not None
        (copy,) = new.other_target_boxes
        assert (copy.x, copy.y, copy.width) == (old.target_box.x + width, old.target_box.y, old.target_box.width)


def test_a_shelf_shows_a_smaller_copy_beside_the_photo(one_case: Path, tmp_path: Path) -> None:
    original, changed = _variant(one_case, tmp_path, "shelf")
    before, after = load_image(original.target_path), load_image(changed.target_path)
    height, width = before.shape[:2]
    assert after.shape[0] == height and after.shape[1] == width + round(width * SHELF_COPY_SCALE)
    assert np.array_equal(after[:, :width], before)
    size = (after.shape[1] - width, round(height * SHELF_COPY_SCALE))
    farther = np.asarray(Image.fromarray(before).resize(size, Image.Resampling.LANCZOS))
    top = (height - farther.shape[0]) // 2
    assert np.abs(after[top : top + farther.shape[0], width:].astype(int) - farther.astype(int)).max() <= 1
    for old, new in zip(original.boxes, changed.boxes, strict=True):
        assert new.target_box == old.target_box and old.target_box is not None
        (copy,) = new.other_target_boxes
        assert copy.x == pytest.approx(width + old.target_box.x * SHELF_COPY_SCALE, abs=0.5)
        assert copy.y == pytest.approx(top + old.target_box.y * SHELF_COPY_SCALE, abs=0.5)
        assert copy.width == pytest.approx(old.target_box.width * SHELF_COPY_SCALE, abs=0.5)


def test_occlusion_covers_the_right_of_each_true_box(one_case: Path, tmp_path: Path) -> None:
    _, changed = _variant(one_case, tmp_path, "occlusion")
    after = load_image(changed.target_path)
    for box in changed.boxes:
        assert box.target_box is not None
        right = after[int(box.target_box.y) + 1, int(box.target_box.x2) - 2]
        assert right.tolist() == [128, 128, 128]


def test_a_photo_of_several_cases_is_changed_once_with_all_their_boxes(one_case: Path, tmp_path: Path) -> None:
    """Two cases with one target photo and a box each: occlusion covers both boxes, in one file."""
    data = json.loads(one_case.read_text(encoding="utf-8"))
    (case,) = data["cases"]
    other = json.loads(json.dumps(case))
    other["case_id"] = "second"
    other["boxes"] = [dict(case["boxes"][0], box_id="elsewhere", target_box=[5, 5, 60, 40])]
    case["boxes"] = case["boxes"][:1]
    data["cases"] = [case, other]
    both = tmp_path / "both" / "cases.json"
    both.parent.mkdir()
    both.write_text(json.dumps(data), encoding="utf-8")

    assert write_variant(both, tmp_path / "out", "occlusion") == 1
    first, second = load_cases(tmp_path / "out" / "cases.json")
    assert first.target_path == second.target_path
    after = load_image(first.target_path)
    for box in (first.boxes[0].target_box, second.boxes[0].target_box):
        assert box is not None
        assert after[int(box.y) + 1, int(box.x2) - 2].tolist() == [128, 128, 128]


def test_the_command_writes_the_set_and_refuses_a_missing_one(one_case: Path, tmp_path: Path) -> None:
    assert main(["perturb", "--cases", str(one_case), "--out", str(tmp_path), "--kind", "dim"]) == 0
    assert load_cases(tmp_path / "cases.json")[0].case_id == CASE
    assert main(["perturb", "--cases", str(tmp_path / "none.json"), "--out", str(tmp_path), "--kind", "dim"]) == 2
