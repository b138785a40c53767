"""Evaluation library: case loading, item building, metrics with fake locators, geometry locator."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.photos import EVAL_SAMPLE, one_sample_case

from inference.types import BBox
from workbench.evaluation import (
    EvalAnswer,
    EvalItem,
    EvalQuery,
    Evaluator,
    build_items,
    evaluate,
    geometric_locator,
    load_cases,
    load_image,
    negative_items,
    positive_items,
    qualitative_items,
    with_catalogue,
)
from workbench.perturb import write_variant
from workbench.pictures import write_pictures

TOP_LEVEL_KEYS = {"recall_iou50", "mean_iou", "false_positive_rate", "per_sequence", "cases", "seconds"}


def _write_png(path: Path, size: tuple[int, int], grey: bool = False) -> None:
    rng = np.random.default_rng(len(path.name))
    shape = (size[1], size[0]) if grey else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)


def _case(
    case_id: str, dataset: str, sequence: str, src: str, tgt: str, boxes: list[dict[str, object]]
) -> dict[str, object]:
    return {
        "case_id": case_id,
        "dataset": dataset,
        "sequence": sequence,
        "source_image": src,
        "target_image": tgt,
        "has_ground_truth": all(box.get("target_box") is not None for box in boxes),
        "boxes": boxes,
    }


@pytest.fixture
def small_cases(tmp_path: Path) -> Path:
    """Two scenes with ground truth (one with two pairs, one grey) and one qualitative-only pair."""
    for name, grey in [("a1", False), ("a2", False), ("a3", False), ("b1", True), ("b2", True), ("q1", False)]:
        _write_png(tmp_path / f"{name}.png", (64, 48), grey)
    box: dict[str, object] = {"box_id": "x", "source_box": [10, 10, 20, 20], "target_box": [12, 10, 20, 20]}
    far: dict[str, object] = {
        "box_id": "y",
        "source_box": [0, 0, 10, 10],
        "target_box": [40, 30, 10, 10],
        "trivial_baseline_iou": 0.0,
    }
    cases = [
        _case("a/1to2", "set", "a", "a1.png", "a2.png", [box, far]),
        _case("a/1to3", "set", "a", "a1.png", "a3.png", [box, far]),
        _case("b/pair", "other", "b", "b1.png", "b2.png", [box]),
        _case(
            "q/demo",
            "demo",
            "q",
            "q1.png",
            "a2.png",
            [{"box_id": "w", "source_box": [0, 0, 64, 48], "target_box": None}],
        ),
    ]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"cases": cases}))
    return path


def _truth_locator(items: list[EvalItem]) -> Callable[[list[EvalQuery]], list[EvalAnswer]]:
    """Answers exactly the ground truth: found with the target box on positives, not found otherwise."""
    truth = {item.item_id: item.target_box for item in items}

    def locate(queries: list[EvalQuery]) -> list[EvalAnswer]:
        answers = []
        for query in queries:
            box = truth[query.item_id]
            answers.append(EvalAnswer(found=box is not None, bbox=box, confidence=1.0 if box else 0.0))
        return answers

    return locate


def _never(queries: list[EvalQuery]) -> list[EvalAnswer]:
    return [EvalAnswer(found=False, bbox=None, confidence=0.0) for _ in queries]


def _source_box(queries: list[EvalQuery]) -> list[EvalAnswer]:
    return [EvalAnswer(found=True, bbox=q.source_box, confidence=0.5) for q in queries]


def test_load_cases_resolves_paths_and_ground_truth(small_cases: Path) -> None:
    cases = load_cases(small_cases)
    assert [c.case_id for c in cases] == ["a/1to2", "a/1to3", "b/pair", "q/demo"]
    assert cases[0].source_path == small_cases.parent / "a1.png"
    assert cases[0].sequence_key == "set/a"
    first = cases[0].boxes[0]
    assert first.target_box == BBox(12, 10, 20, 20)
    assert first.trivial_baseline_iou == pytest.approx(BBox(10, 10, 20, 20).iou(BBox(12, 10, 20, 20)))
    assert cases[0].boxes[1].trivial_baseline_iou == 0.0
    assert not cases[3].has_ground_truth and cases[3].boxes[0].target_box is None


def test_load_image_makes_grey_files_rgb(small_cases: Path) -> None:
    image = load_image(small_cases.parent / "b1.png")
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])


def test_items_split_positive_qualitative_and_negative(small_cases: Path) -> None:
    cases = load_cases(small_cases)
    assert len(positive_items(cases)) == 5
    assert [i.item_id for i in qualitative_items(cases)] == ["qual:q/demo:w"]
    negatives = negative_items(cases)
    # Every negative pairs a source box with a target photo of another scene.
    by_id = {c.case_id: c for c in cases}
    for item in negatives:
        assert item.target_path != by_id[item.case_id].target_path
        assert item.sequence == by_id[item.case_id].sequence_key
        assert item.target_box is None
    # a/1to2 (position 0) -> b/pair and q/demo; a/1to3 (position 1) -> the same, already asked: skipped.
    assert {i.item_id for i in negatives if i.case_id.startswith("a/")} == {
        "neg:a/1to2:x->b/pair",
        "neg:a/1to2:y->b/pair",
    }
    # q/demo's target is a2.png, also a photo of scene "a": never a negative between a and q.
    assert {i.item_id for i in negatives if i.case_id == "b/pair"} == {"neg:b/pair:x->a/1to2"}
    assert {i.item_id for i in negatives if i.case_id == "q/demo"} == {"neg:q/demo:w->b/pair"}
    assert len({(i.source_path, i.source_box, i.target_path) for i in negatives}) == len(negatives)
    assert negative_items(cases) == negatives  # deterministic


def test_perfect_locator_scores_one(small_cases: Path) -> None:
    items = build_items(load_cases(small_cases))
    report = Evaluator(_truth_locator(items)).run(items)
    assert report.overall.recall_iou50 == 1.0
    assert report.overall.mean_iou == pytest.approx(1.0)
    assert report.overall.false_positive_rate == 0.0
    assert set(report.per_sequence) == {"set/a", "other/b", "demo/q"}
    assert report.per_sequence["set/a"].boxes == 4


def test_never_found_has_no_recall_and_no_false_positive(small_cases: Path) -> None:
    report = evaluate(small_cases, _never)
    assert report.overall.recall_iou50 == 0.0
    assert report.overall.false_positive_rate == 0.0
    assert report.overall.mean_iou is None  # nothing found
    assert report.overall.mean_iou_all == 0.0


def test_always_found_at_source_box_is_all_false_positives(small_cases: Path) -> None:
    report = evaluate(small_cases, _source_box)
    assert report.overall.false_positive_rate == 1.0
    # The trivial answer scores exactly the trivial baseline.
    assert report.overall.mean_iou_all == pytest.approx(report.overall.trivial_baseline_iou)
    assert report.overall.recall_iou50 == pytest.approx(3 / 5)  # box x (IoU 0.82) passes, box y (0) fails


def test_report_json_shape(small_cases: Path) -> None:
    data = evaluate(small_cases, _source_box).to_json()
    assert set(data) >= TOP_LEVEL_KEYS
    json.dumps(data)  # plain JSON types only
    row = next(r for r in data["cases"] if r["case_id"] == "a/1to2")
    assert [b["box_id"] for b in row["box_results"]] == ["x", "y"]
    assert row["false_positive_ids"] == ["neg:a/1to2:x->b/pair", "neg:a/1to2:y->b/pair"]
    assert [q["box_id"] for q in data["qualitative"]] == ["w"]
    assert data["per_sequence"]["set/a"]["boxes"] == 4


def test_wrong_boxes_misses_precision_and_kinds_are_told_apart(tmp_path: Path) -> None:
    """A 3D set: per kind and per viewpoint-change bucket, a wrong box is not a miss, and precision counts both."""
    for name in ("s", "t1", "t2", "u"):
        _write_png(tmp_path / f"{name}.png", (64, 48))
    near = {"box_id": "near", "kind": "textured_3d", "viewpoint_change_deg": 10.0}
    turned = {"box_id": "turned", "kind": "textured_3d", "viewpoint_change_deg": 70.0}
    plain = {"box_id": "plain", "kind": "plain_3d", "viewpoint_change_deg": 20.0}
    for box in (near, turned, plain):
        box.update(source_box=[10, 10, 20, 20], target_box=[10, 10, 20, 20])
    cases = [
        _case("o/1", "objects", "o", "s.png", "t1.png", [near, turned]),
        _case("o/2", "objects", "o", "s.png", "t2.png", [plain]),
        _case("p/1", "other", "p", "u.png", "u.png", []),
    ]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"cases": cases}))

    def locate(queries: list[EvalQuery]) -> list[EvalAnswer]:
        """Right on 'near', 16 px off (IoU 0.11) on 'turned', nothing on 'plain' nor on the negatives."""
        answers = []
        for query in queries:
            box = {"pos:o/1:near": BBox(10, 10, 20, 20), "pos:o/1:turned": BBox(26, 10, 20, 20)}.get(query.item_id)
            answers.append(EvalAnswer(found=box is not None, bbox=box, confidence=0.9))
        return answers

    report = evaluate(path, locate).to_json()

    textured = report["per_category"]["textured_3d"]
    assert (textured["boxes"], textured["found_wrong_box"], textured["not_found"]) == (2, 1, 0)
    assert textured["precision"] == 0.5 and textured["recall_iou50"] == 0.5
    assert report["per_category"]["plain_3d"]["not_found"] == 1
    buckets = report["per_view_change"]["textured_3d"]
    assert list(buckets) == ["0-15", "60-90"] and buckets["60-90"]["found_wrong_box"] == 1
    rows = {row["box_id"]: row for case in report["cases"] for row in case["box_results"]}
    assert rows["turned"]["category"] == "textured_3d" and rows["turned"]["view_change_deg"] == 70.0
    assert rows["turned"]["area_ratio"] == 1.0
    assert report["precision"] == 0.5


def test_an_answer_on_another_copy_of_the_product_is_right(tmp_path: Path) -> None:
    """``other_target_boxes`` lists more copies of the product: either copy is right, elsewhere is wrong."""
    path = _shelf_cases(tmp_path, 128, [[80, 10, 20, 20]])

    def locate(queries: list[EvalQuery]) -> list[EvalAnswer]:
        """Both answers at the shelf's copy: right for 'shelf', a wrong box for 'lone'."""
        copy = BBox(81, 10, 20, 20)
        return [EvalAnswer(found=q.item_id.startswith("pos:"), bbox=copy, confidence=0.9) for q in queries]

    report = evaluate(path, locate).to_json()

    rows = {row["box_id"]: row for case in report["cases"] for row in case["box_results"]}
    assert rows["shelf"]["iou"] > 0.9 and rows["shelf"]["other_target_boxes"] == [[80.0, 10.0, 20.0, 20.0]]
    assert rows["shelf"]["target_box"] == [10.0, 10.0, 20.0, 20.0]
    assert rows["lone"]["iou"] == 0.0 and "other_target_boxes" not in rows["lone"]
    assert (report["recall_iou50"], report["found_wrong_box"]) == (0.5, 1)


def test_pictures_show_the_worst_cases_first(small_cases: Path, tmp_path: Path) -> None:
    report = evaluate(small_cases, _source_box)
    (tmp_path / "viz" / "99-stale-from-an-earlier-run.png").parent.mkdir()
    (tmp_path / "viz" / "99-stale-from-an-earlier-run.png").write_bytes(b"old")

    written = write_pictures(report, tmp_path / "viz", limit=3)

    assert [p.name.split("-", 2)[1] for p in written] == ["wrong", "wrong", "false"]
    assert sorted(p.name for p in (tmp_path / "viz").iterdir()) == sorted(p.name for p in written)
    with Image.open(written[0]) as picture:
        assert picture.width > picture.height > 0


def test_batches_share_a_target_and_progress_is_reported(small_cases: Path) -> None:
    items = build_items(load_cases(small_cases))
    targets_per_batch: list[set[str]] = []
    progress: list[tuple[int, int]] = []

    def locate(queries: list[EvalQuery]) -> list[EvalAnswer]:
        targets_per_batch.append({q.target_key for q in queries})
        return _never(queries)

    Evaluator(locate, batch_size=2, progress=lambda done, total: progress.append((done, total))).run(items)
    assert all(len(targets) == 1 for targets in targets_per_batch)
    assert progress[-1] == (len(items), len(items))
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


def test_locator_must_answer_every_query(small_cases: Path) -> None:
    with pytest.raises(ValueError, match="answers"):
        evaluate(small_cases, lambda queries: [])


def test_eval_sample_items_and_perfect_locator() -> None:
    cases = load_cases(EVAL_SAMPLE)
    items = build_items(cases)
    positives = [i for i in items if i.kind == "positive"]
    negatives = [i for i in items if i.kind == "negative"]
    assert len(positives) == 18
    assert len([i for i in items if i.kind == "qualitative"]) == 1
    assert 40 <= len(negatives) <= 120
    # Only the target images are needed to score the oracle; keep the test light by asking a subset.
    subset = positives[::3] + negatives[::10]
    report = Evaluator(_truth_locator(subset)).run(subset)
    assert report.overall.recall_iou50 == 1.0
    assert report.overall.false_positive_rate == 0.0


def test_geometric_locator_on_real_photographs() -> None:
    """Geometry alone finds the graf 1->2 boxes and answers nothing on photos of other scenes."""
    items = build_items(load_cases(EVAL_SAMPLE))
    positives = [i for i in items if i.case_id == "oxford/graf/1to2" and i.kind == "positive"]
    negatives = [i for i in items if i.case_id == "oxford/graf/1to2" and i.kind == "negative"]
    subset = positives + negatives[:6]  # two other scenes keep the test short
    report = Evaluator(geometric_locator()).run(subset)
    assert report.overall.recall_iou50 == 1.0
    assert report.overall.mean_iou is not None and report.overall.mean_iou > 0.9
    assert report.overall.false_positives == 0


def test_geometric_locator_answers_every_copy_of_a_repeated_product(tmp_path: Path) -> None:
    """leuven 1to4 with its target photo twice side by side (``tagstream perturb --kind repeated``)."""
    assert write_variant(one_sample_case("oxford/leuven/1to4", tmp_path), tmp_path / "repeated", "repeated") == 1

    report = evaluate(tmp_path / "repeated" / "cases.json", geometric_locator()).to_json()

    assert report["recall_iou50"] == 1.0 and report["copies_expected"] == report["boxes"] > 0
    assert (report["copies_found"], report["copies_wrong"]) == (report["boxes"], 0)


def test_answered_copies_count_once_per_true_copy_and_elsewhere_as_wrong(tmp_path: Path) -> None:
    """A shelf of three: the main answer on the middle copy, copies on both others, one twice, one on nothing."""
    path = _shelf_cases(tmp_path, 160, [[60, 10, 20, 20], [110, 10, 20, 20]])

    def locate(queries: list[EvalQuery]) -> list[EvalAnswer]:
        answers = []
        for query in queries:
            if query.item_id == "pos:r/1:shelf":
                copies = (BBox(11, 10, 20, 20), BBox(110, 11, 20, 20), BBox(12, 10, 20, 20), BBox(140, 30, 10, 10))
                answers.append(EvalAnswer(True, BBox(61, 10, 20, 20), 0.9, copies=copies))
            elif query.item_id == "pos:r/1:lone":
                answers.append(EvalAnswer(True, BBox(40, 10, 20, 20), 0.9))
            else:
                answers.append(EvalAnswer(False, None, 0.1, copies=(BBox(0, 0, 5, 5),)))
        return answers

    report = evaluate(path, locate).to_json()

    assert (report["copies_expected"], report["copies_found"], report["copies_wrong"]) == (2, 2, 2)
    rows = {row["box_id"]: row for case in report["cases"] for row in case["box_results"]}
    assert rows["shelf"]["copies"][:2] == [[11.0, 10.0, 20.0, 20.0], [110.0, 11.0, 20.0, 20.0]]
    assert "copies" not in rows["lone"]
    assert report["recall_iou50"] == 1.0 and report["false_positives"] == 0


def _shelf_cases(tmp_path: Path, width: int, other_copies: list[list[int]]) -> Path:
    """Case r/1: 'shelf' at (10, 10) with ``other_copies``, and 'lone' at (40, 10); case o/1 gives negatives."""
    for name in ("s", "t", "u"):
        _write_png(tmp_path / f"{name}.png", (width, 48))
    shelf = {"box_id": "shelf", "source_box": [10, 10, 20, 20], "target_box": [10, 10, 20, 20]}
    shelf["other_target_boxes"] = other_copies
    lone = {"box_id": "lone", "source_box": [40, 10, 20, 20], "target_box": [40, 10, 20, 20]}
    cases = [
        _case("r/1", "set", "r", "s.png", "t.png", [shelf, lone]),
        _case("o/1", "other", "o", "u.png", "u.png", []),
    ]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"cases": cases}))
    return path


def _catalogue_cases(tmp_path: Path) -> Path:
    """Product "can" in three scene folders (s1, s2, s3), an anonymous box, and a qualitative case."""
    for folder in ("s1", "s2", "s3"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("s1/a", "s1/b", "s2/c", "s3/d"):
        _write_png(tmp_path / f"{name}.png", (64, 48))
    can = {"box_id": "can", "product": "can", "source_box": [1, 1, 20, 20], "target_box": [2, 2, 20, 20]}
    can_again = {**can, "source_box": [5, 5, 20, 20], "target_box": [6, 6, 20, 20]}
    anonymous = {"box_id": "x", "source_box": [30, 20, 20, 20], "target_box": [30, 20, 20, 20]}
    cases = [
        _case("one", "set", "p", "s1/a.png", "s1/b.png", [can, anonymous]),
        _case("two", "set", "q", "s2/c.png", "s3/d.png", [can_again]),
        _case("look", "demo", "r", "s2/c.png", "s1/a.png", [{**can, "target_box": None}]),
    ]
    (tmp_path / "cases.json").write_text(json.dumps({"cases": cases}))
    return tmp_path / "cases.json"


def test_a_catalogue_adds_the_products_views_from_other_scenes_only(tmp_path: Path) -> None:
    loaded = load_cases(_catalogue_cases(tmp_path))
    items = {item.item_id: item for item in with_catalogue(build_items(loaded), loaded)}

    def views(item_id: str) -> set[tuple[str, tuple[float, ...]]]:
        return {(v.path.relative_to(tmp_path).as_posix(), v.box.as_xyxy()) for v in items[item_id].views}

    # Own scene (s1) and own tag excluded; every other tag of the product counts: sources (the
    # qualitative case's too) and true target boxes.
    assert views("pos:one:can") == {
        ("s2/c.png", (5, 5, 25, 25)),
        ("s2/c.png", (1, 1, 21, 21)),
        ("s3/d.png", (6, 6, 26, 26)),
    }
    assert views("pos:two:can") == {
        ("s1/a.png", (1, 1, 21, 21)),
        ("s1/b.png", (2, 2, 22, 22)),
        ("s2/c.png", (1, 1, 21, 21)),
    }
    assert views("pos:one:x") == set()  # no product name, no views
    assert items["qual:look:can"].views == ()
    negatives = [item for item in items.values() if item.kind == "negative" and item.product == "can"]
    assert any(item.views for item in negatives)
    for item in negatives:
        assert all(v.path.parent != item.target_path.parent for v in item.views)
        assert (item.source_path, item.source_box) not in {(v.path, v.box) for v in item.views}
    assert all(item.views == () for item in build_items(loaded))


def test_a_perturbed_set_keeps_its_target_photos_scenes_for_the_catalogue(tmp_path: Path) -> None:
    """`perturb` moves every target photo into one folder; the catalogue must still exclude the target's own scene."""
    original = _catalogue_cases(tmp_path / "set")
    write_variant(original, tmp_path / "dim", "dim")

    def views(cases_json: Path) -> dict[str, set[tuple[Path, tuple[float, ...]]]]:
        loaded = load_cases(cases_json)
        return {
            item.item_id: {(v.folder.resolve(), v.box.as_xyxy()) for v in item.views}
            for item in with_catalogue(build_items(loaded), loaded)
        }

    moved, kept = views(tmp_path / "dim" / "cases.json"), views(original)
    # (A moved photo is no longer a source's own photo, so the moved set may ask more negatives.)
    common = [item_id for item_id in kept if item_id in moved]
    assert {i for i in common if i.startswith("pos:")} == {i for i in kept if i.startswith("pos:")}
    assert all(moved[item_id] == kept[item_id] for item_id in common)
    assert kept["pos:one:can"] and kept["pos:two:can"]
