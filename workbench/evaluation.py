"""Scores a box locator on real photographs described by a ``cases.json`` (eval-dev format).

A pure library: the command line wraps it elsewhere. The locator is a plain batched callable, so
the geometry alone (`geometric_locator`) and the full pipeline are measured by the same code.

Three kinds of items are built from the cases:

* positive: every box of a case with ground truth; scored by IoU against ``target_box``, or
  against the best-overlapped of ``target_box`` and the box's optional ``other_target_boxes``
  (further copies of the same product in the target photo: a shelf of two, where either place
  is a right answer).
* negative: a source box paired with a target photo of another scene; any "found" is a false
  positive. Without them a locator that always answers would look perfect.
* qualitative: boxes of cases without ground truth; run so their answers can be inspected,
  never scored.

With a catalogue (`with_catalogue`), positives and negatives also carry the product's other views:
every box of the same ``product`` the set holds in photos of other scenes, as a catalogue that
tagged it in several earlier photos would send them. Scores then measure the pipeline's pooling
of views (`inference.fusion.pool_views`), extra chances for a false positive included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from inference.geometry import GeometricVerifier, GeometryConfig, SourceFeatures, TargetFeatures, Verification
from inference.types import BBox, Method, RGBImage

ItemKind = Literal["positive", "negative", "qualitative"]
ProgressCallback = Callable[[int, int], None]
"""Called after every batch with (items done, items total)."""

IOU_SUCCESS = 0.5

SAMPLE_CASES = Path(__file__).resolve().parents[1] / "data" / "eval-sample" / "cases.json"
"""Real photographs that ship with the repository: a few eval-dev cases (see its SOURCES.md)."""

Category = Literal["planar", "textured_3d", "plain_3d"]
"""What kind of thing a box holds: a planar region (published homography), or a 3D object with or
without texture (``kind`` of eval3d boxes)."""
VIEW_CHANGE_BUCKETS = ((0.0, 15.0), (15.0, 30.0), (30.0, 60.0), (60.0, 90.0), (90.0, 120.0), (120.0, 180.0))


@dataclass(frozen=True)
class CaseBox:
    box_id: str
    source_box: BBox
    target_box: BBox | None
    trivial_baseline_iou: float | None
    category: Category = "planar"
    view_change_deg: float | None = None
    other_target_boxes: tuple[BBox, ...] = ()
    # The product the box holds (eval3d boxes' ``product``): boxes of one product are its views.
    product: str | None = None


@dataclass(frozen=True)
class EvalCase:
    """One (source photo, target photo) pair with its boxes; image paths are absolute."""

    case_id: str
    dataset: str
    sequence: str
    source_path: Path
    target_path: Path
    has_ground_truth: bool
    boxes: tuple[CaseBox, ...]
    # The folder of the scene the target photo was taken in (`with_catalogue`): its own folder,
    # unless the set moved it (``target_scene`` of a set written by `tagstream perturb`).
    target_scene: Path | None = None

    @property
    def target_folder(self) -> Path:
        return self.target_scene or self.target_path.parent

    @property
    def sequence_key(self) -> str:
        """Photos of one scene share this key; negatives must come from a different key."""
        return f"{self.dataset}/{self.sequence}"


@dataclass(frozen=True)
class View:
    """One tagged photo of a product: the photo's path, the product's box in it, the photo's scene folder."""

    path: Path
    box: BBox
    folder: Path


@dataclass(frozen=True)
class EvalItem:
    """One question for the locator plus its expected answer; images are referenced by path."""

    item_id: str
    kind: ItemKind
    case_id: str
    box_id: str
    sequence: str
    source_path: Path
    source_box: BBox
    target_path: Path
    target_box: BBox | None
    trivial_baseline_iou: float | None
    category: Category = "planar"
    view_change_deg: float | None = None
    other_target_boxes: tuple[BBox, ...] = ()  # more copies of the product: right answers too
    # Further views of the product sent beside ``source_box`` (a multi-view catalogue, `with_catalogue`).
    views: tuple[View, ...] = ()
    product: str | None = None
    target_folder: Path | None = None  # `EvalCase.target_folder` of the target photo

    def truth_for(self, answer: BBox | None) -> BBox | None:
        """The true box ``answer`` is judged against: of the product's copies, the one it overlaps most."""
        if self.target_box is None or answer is None:
            return self.target_box
        return max((self.target_box, *self.other_target_boxes), key=answer.iou)

    @property
    def view_change_bucket(self) -> str | None:
        """``"30-60"`` and the like (degrees of viewpoint change), for per-bucket scores."""
        if self.view_change_deg is None:
            return None
        for low, high in VIEW_CHANGE_BUCKETS:
            if self.view_change_deg < high or high == VIEW_CHANGE_BUCKETS[-1][1]:
                return f"{low:g}-{high:g}"
        return None


@dataclass(frozen=True, eq=False)
class QueryView:
    """A `View` as a locator sees it: the photo's key (for caching), the decoded photo and the box."""

    key: str
    image: RGBImage
    box: BBox


@dataclass(frozen=True, eq=False)
class EvalQuery:
    """What a locator sees: no ground truth. Keys identify images for caching (decoded once)."""

    item_id: str
    case_id: str
    box_id: str
    source_key: str
    source_image: RGBImage
    source_box: BBox
    target_key: str
    target_image: RGBImage
    # The product's further views (``EvalItem.views``), decoded.
    views: tuple[QueryView, ...] = ()


@dataclass(frozen=True)
class EvalAnswer:
    found: bool
    bbox: BBox | None
    confidence: float
    method: str | None = None  # which route answered (``inference.types.Method``), when the locator says
    copies: tuple[BBox, ...] = ()  # further copies of the product answered beside ``bbox``


Locator = Callable[[list[EvalQuery]], list[EvalAnswer]]
"""Answers a batch of queries, in order. Every batch the evaluator sends shares one target image.

A query's ``views`` (a catalogue) are the pipeline locator's to pool; `geometric_locator` reads
the query's own box only."""


# ---------------------------------------------------------------------------------------- loading


def load_cases(cases_json: Path) -> list[EvalCase]:
    """Cases in file order; image paths in the file are relative to its folder."""
    root = cases_json.resolve().parent
    data = json.loads(cases_json.read_text(encoding="utf-8"))
    return [_parse_case(raw, root) for raw in data["cases"]]


def _parse_case(raw: dict[str, Any], root: Path) -> EvalCase:
    has_truth = bool(raw["has_ground_truth"])
    return EvalCase(
        case_id=str(raw["case_id"]),
        dataset=str(raw["dataset"]),
        sequence=str(raw["sequence"]),
        source_path=root / str(raw["source_image"]),
        target_path=root / str(raw["target_image"]),
        has_ground_truth=has_truth,
        boxes=tuple(_parse_box(box, has_truth, _nominal_view_change(raw)) for box in raw["boxes"]),
        target_scene=root / str(raw["target_scene"]) if raw.get("target_scene") else None,
    )


def _nominal_view_change(raw: dict[str, Any]) -> float | None:
    change = raw.get("nominal_change") or {}
    return float(change["value"]) if "viewpoint" in str(change.get("unit", "")) else None


def _parse_box(raw: dict[str, Any], has_truth: bool, nominal_view_change: float | None) -> CaseBox:
    source = BBox(*(float(v) for v in raw["source_box"]))
    target = BBox(*(float(v) for v in raw["target_box"])) if has_truth else None
    trivial = raw.get("trivial_baseline_iou")
    if trivial is None and target is not None:
        trivial = source.iou(target)
    kind = raw.get("kind")
    category: Category = kind if kind in ("textured_3d", "plain_3d") else "planar"
    view_change = raw.get("viewpoint_change_deg", nominal_view_change)
    others = tuple(BBox(*(float(v) for v in box)) for box in raw.get("other_target_boxes") or ()) if has_truth else ()
    return CaseBox(
        str(raw["box_id"]),
        source,
        target,
        None if trivial is None else float(trivial),
        category,
        None if view_change is None else float(view_change),
        others,
        None if raw.get("product") is None else str(raw["product"]),
    )


def load_image(path: Path) -> RGBImage:
    """RGB uint8 (H, W, 3) whatever the file holds (grey, palette, alpha)."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


class ImageStore:
    """Decodes every image once per evaluation; queries share the same arrays."""

    def __init__(self) -> None:
        self._images: dict[Path, RGBImage] = {}

    def get(self, path: Path) -> RGBImage:
        if path not in self._images:
            self._images[path] = load_image(path)
        return self._images[path]


# ------------------------------------------------------------------------------------------ items


def positive_items(cases: Iterable[EvalCase]) -> list[EvalItem]:
    return [
        _item(f"pos:{case.case_id}:{box.box_id}", "positive", case, box, case, box.target_box)
        for case in cases
        if case.has_ground_truth
        for box in case.boxes
    ]


def qualitative_items(cases: Iterable[EvalCase]) -> list[EvalItem]:
    return [
        _item(f"qual:{case.case_id}:{box.box_id}", "qualitative", case, box, case, None)
        for case in cases
        if not case.has_ground_truth
        for box in case.boxes
    ]


def negative_items(cases: Sequence[EvalCase]) -> list[EvalItem]:
    """Every source box against one target photo of every other scene (sequence key).

    Rule: the case at position i of its sequence (file order) takes, from each other sequence with
    n cases, the target of that sequence's case at position i mod n. Pairs already asked (same
    source image, box and target image) and target photos that also belong to the source's own
    sequence are skipped. This is deterministic, visits every target image, and grows like
    boxes x sequences rather than boxes x cases (eval-dev: 258 negatives). Cases without ground
    truth take part: a negative needs no box, only a different scene.
    """
    by_sequence: dict[str, list[EvalCase]] = {}
    for case in cases:
        by_sequence.setdefault(case.sequence_key, []).append(case)
    own_photos = {
        key: {path for case in group for path in (case.source_path, case.target_path)}
        for key, group in by_sequence.items()
    }
    items: list[EvalItem] = []
    asked: set[tuple[Path, BBox, Path]] = set()
    for case in cases:
        position = by_sequence[case.sequence_key].index(case)
        for key, others in by_sequence.items():
            other = others[position % len(others)]
            if key == case.sequence_key or other.target_path in own_photos[case.sequence_key]:
                continue
            for box in case.boxes:
                pair = (case.source_path, box.source_box, other.target_path)
                if pair not in asked:
                    asked.add(pair)
                    item_id = f"neg:{case.case_id}:{box.box_id}->{other.case_id}"
                    items.append(_item(item_id, "negative", case, box, other, None))
    return items


def build_items(cases: Sequence[EvalCase]) -> list[EvalItem]:
    return positive_items(cases) + qualitative_items(cases) + negative_items(cases)


def _item(
    item_id: str, kind: ItemKind, case: EvalCase, box: CaseBox, target: EvalCase, target_box: BBox | None
) -> EvalItem:
    """The item asking ``case``'s ``box`` in the target photo of ``target`` (``case`` itself, or another scene's)."""
    return EvalItem(
        item_id=item_id,
        kind=kind,
        case_id=case.case_id,
        box_id=box.box_id,
        sequence=case.sequence_key,
        source_path=case.source_path,
        source_box=box.source_box,
        target_path=target.target_path,
        target_box=target_box,
        trivial_baseline_iou=box.trivial_baseline_iou if kind == "positive" else None,
        category=box.category,
        view_change_deg=box.view_change_deg if kind == "positive" else None,
        other_target_boxes=box.other_target_boxes if kind == "positive" else (),
        product=box.product,
        target_folder=target.target_folder,
    )


def with_catalogue(items: Sequence[EvalItem], cases: Sequence[EvalCase]) -> list[EvalItem]:
    """``items`` with every further view of their product the cases hold, from other scenes than the target's.

    A product's views are its source boxes and its true target boxes over all cases. Photos in
    one folder are one scene (the datasets' layout: a video, an object's ring of views; a set
    whose target photos were moved names their folder in ``target_scene``), and a view from the
    target's own scene would be a near-copy of the answer, so only other folders count: YCB products gain their photos in other rooms, a statue photographed on one ring
    gains nothing. Qualitative items and boxes without a ``product`` are left as they are.
    """
    catalogue: dict[str, list[View]] = {}
    for case in cases:
        for box in case.boxes:
            if box.product is None:
                continue
            views = catalogue.setdefault(box.product, [])
            seen = [View(case.source_path, box.source_box, case.source_path.parent)]
            if box.target_box is not None:
                seen.append(View(case.target_path, box.target_box, case.target_folder))
            for view in seen:
                if view not in views:
                    views.append(view)
    return [_with_views(item, catalogue) for item in items]


def _with_views(item: EvalItem, catalogue: dict[str, list[View]]) -> EvalItem:
    if item.kind == "qualitative" or item.product is None:
        return item
    views = catalogue.get(item.product, [])
    own, folder = (item.source_path, item.source_box), item.target_folder or item.target_path.parent
    return replace(item, views=tuple(v for v in views if (v.path, v.box) != own and v.folder != folder))


# ---------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ItemResult:
    item: EvalItem
    answer: EvalAnswer

    @property
    def truth(self) -> BBox | None:
        return self.item.truth_for(self.answer.bbox)

    @property
    def iou(self) -> float:
        """IoU with the ground truth; a miss or a positive answered without a box scores 0."""
        if self.truth is None or not self.answer.found or self.answer.bbox is None:
            return 0.0
        return self.answer.bbox.iou(self.truth)

    @property
    def success(self) -> bool:
        return self.iou >= IOU_SUCCESS

    @property
    def found(self) -> bool:
        return self.answer.found and self.answer.bbox is not None

    @property
    def copies_right(self) -> int:
        """Answered copies that land (IoU >= 0.5) on a further true copy, each true copy counted once.

        The true copies are those ``truth`` (the one the main answer is judged against) leaves;
        a copy answered on a product that is not there, or twice on one copy, is wrong.
        """
        if not self.found:
            return 0
        left = [box for box in (self.item.target_box, *self.item.other_target_boxes) if box is not self.truth]
        right = 0
        for copy in self.answer.copies:
            hit = next((box for box in left if box is not None and copy.iou(box) >= IOU_SUCCESS), None)
            if hit is not None:
                left.remove(hit)
                right += 1
        return right

    @property
    def copies_wrong(self) -> int:
        return len(self.answer.copies) - self.copies_right if self.found else 0

    @property
    def area_ratio(self) -> float | None:
        """Returned area over true area: above 1 an inflated box, below 1 a shrunken one."""
        truth = self.truth
        if not self.found or truth is None or truth.area <= 0:
            return None
        assert self.answer.bbox is not None
        return self.answer.bbox.area / truth.area


@dataclass(frozen=True)
class Scores:
    """Scores of a group of results; None where the group has nothing to score."""

    boxes: int
    recall_iou50: float | None
    mean_iou: float | None  # over found positives: how precise the returned boxes are
    mean_iou_all: float | None  # misses count 0: the number comparable with the trivial baseline
    trivial_baseline_iou: float | None
    negatives: int
    false_positives: int
    false_positive_rate: float | None
    found_wrong_box: int = 0  # found, but IoU < 0.5: a tag in the wrong place
    not_found: int = 0
    # Of every box the locator answered (positives and negatives alike), the share that is right:
    # what a user sees of the suggestions made.
    precision: float | None = None
    median_area_ratio: float | None = None  # returned / true area of found boxes (inflation)
    # Repeated products (cases.json ``other_target_boxes``): further true copies of the positives,
    # how many of them an answered copy found, and answered copies that hit none (negatives too).
    copies_expected: int = 0
    copies_found: int = 0
    copies_wrong: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "boxes": self.boxes,
            "recall_iou50": _round(self.recall_iou50),
            "mean_iou": _round(self.mean_iou),
            "mean_iou_all": _round(self.mean_iou_all),
            "trivial_baseline_iou": _round(self.trivial_baseline_iou),
            "negatives": self.negatives,
            "false_positives": self.false_positives,
            "false_positive_rate": _round(self.false_positive_rate),
            "found_wrong_box": self.found_wrong_box,
            "not_found": self.not_found,
            "precision": _round(self.precision),
            "median_area_ratio": _round(self.median_area_ratio),
            "copies_expected": self.copies_expected,
            "copies_found": self.copies_found,
            "copies_wrong": self.copies_wrong,
        }


def compute_scores(results: Iterable[ItemResult]) -> Scores:
    results = list(results)
    positives = [r for r in results if r.item.kind == "positive"]
    negatives = [r for r in results if r.item.kind == "negative"]
    found = [r for r in positives if r.found]
    trivial = [r.item.trivial_baseline_iou for r in positives if r.item.trivial_baseline_iou is not None]
    false_positives = sum(r.answer.found for r in negatives)
    correct = sum(r.success for r in positives)
    answered = len(found) + false_positives
    ratios = [ratio for r in found if (ratio := r.area_ratio) is not None]
    return Scores(
        boxes=len(positives),
        recall_iou50=_mean([float(r.success) for r in positives]),
        mean_iou=_mean([r.iou for r in found]),
        mean_iou_all=_mean([r.iou for r in positives]),
        trivial_baseline_iou=_mean(trivial),
        negatives=len(negatives),
        false_positives=false_positives,
        false_positive_rate=false_positives / len(negatives) if negatives else None,
        found_wrong_box=len(found) - correct,
        not_found=len(positives) - len(found),
        precision=correct / answered if answered else None,
        median_area_ratio=float(np.median(ratios)) if ratios else None,
        copies_expected=sum(len(r.item.other_target_boxes) for r in positives),
        copies_found=sum(r.copies_right for r in positives),
        copies_wrong=sum(r.copies_wrong for r in (*positives, *negatives)),
    )


@dataclass(frozen=True)
class EvalReport:
    overall: Scores
    per_sequence: dict[str, Scores]
    results: list[ItemResult]
    seconds: float
    per_category: dict[str, Scores] = field(default_factory=dict)
    per_view_change: dict[str, dict[str, Scores]] = field(default_factory=dict)
    """Category -> viewpoint-change bucket ("30-60") -> scores (boxes with a known view change)."""

    @property
    def cases(self) -> list[dict[str, Any]]:
        return _case_rows(self.results)

    def to_json(self) -> dict[str, Any]:
        overall = self.overall.to_json()
        return {
            "recall_iou50": overall.pop("recall_iou50"),
            "mean_iou": overall.pop("mean_iou"),
            "false_positive_rate": overall.pop("false_positive_rate"),
            **overall,
            "per_sequence": {key: metrics.to_json() for key, metrics in self.per_sequence.items()},
            "per_category": {key: metrics.to_json() for key, metrics in self.per_category.items()},
            "per_view_change": {
                category: {bucket: metrics.to_json() for bucket, metrics in buckets.items()}
                for category, buckets in self.per_view_change.items()
            },
            "cases": self.cases,
            "qualitative": [_result_row(r) for r in self.results if r.item.kind == "qualitative"],
            "seconds": round(self.seconds, 3),
        }


def _case_rows(results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    """One row per case with scored items: its boxes, and the negatives asked with its boxes."""
    by_case: dict[str, list[ItemResult]] = {}
    for result in results:
        if result.item.kind != "qualitative":
            by_case.setdefault(result.item.case_id, []).append(result)
    rows = []
    for case_id, case_results in by_case.items():
        metrics = compute_scores(case_results)
        rows.append(
            {
                "case_id": case_id,
                "sequence": case_results[0].item.sequence,
                **metrics.to_json(),
                "box_results": [_result_row(r) for r in case_results if r.item.kind == "positive"],
                "false_positive_ids": [
                    r.item.item_id for r in case_results if r.item.kind == "negative" and r.answer.found
                ],
            }
        )
    return rows


def _result_row(result: ItemResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "box_id": result.item.box_id,
        "found": result.answer.found,
        "confidence": round(result.answer.confidence, 4),
        "bbox": _box_json(result.answer.bbox),
        "method": result.answer.method,
    }
    if result.answer.copies:
        row["copies"] = [_box_json(box) for box in result.answer.copies]
    if result.item.kind == "positive":
        row.update(
            iou=round(result.iou, 4),
            target_box=_box_json(result.item.target_box),
            trivial_baseline_iou=_round(result.item.trivial_baseline_iou),
            category=result.item.category,
            view_change_deg=result.item.view_change_deg,
            area_ratio=_round(result.area_ratio),
        )
        if result.item.other_target_boxes:
            row["other_target_boxes"] = [_box_json(box) for box in result.item.other_target_boxes]
    return row


def _box_json(box: BBox | None) -> list[float] | None:
    return None if box is None else [round(box.x, 2), round(box.y, 2), round(box.width, 2), round(box.height, 2)]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# -------------------------------------------------------------------------------------- evaluator


class Evaluator:
    """Runs a locator over items in batches that share a target image, then scores the answers.

    Batches mirror a real upload (one target photo, many tags), so a pipeline extracts target
    features once per batch.
    """

    def __init__(self, locate: Locator, *, batch_size: int = 16, progress: ProgressCallback | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.locate = locate
        self.batch_size = batch_size
        self.progress = progress

    def run(self, items: Sequence[EvalItem]) -> EvalReport:
        started = time.perf_counter()
        images = ImageStore()
        results: list[ItemResult] = []
        for batch in self._batches(items):
            queries = [_query(item, images) for item in batch]
            answers = self.locate(queries)
            if len(answers) != len(queries):
                raise ValueError(f"locator returned {len(answers)} answers for {len(queries)} queries")
            results.extend(ItemResult(item, answer) for item, answer in zip(batch, answers, strict=True))
            if self.progress is not None:
                self.progress(len(results), len(items))
        return EvalReport(
            overall=compute_scores(results),
            per_sequence=_per_sequence(results),
            results=results,
            seconds=time.perf_counter() - started,
            per_category=_per_category(results),
            per_view_change=_per_view_change(results),
        )

    def _batches(self, items: Sequence[EvalItem]) -> list[list[EvalItem]]:
        by_target: dict[Path, list[EvalItem]] = {}
        for item in items:
            by_target.setdefault(item.target_path, []).append(item)
        return [
            group[start : start + self.batch_size]
            for group in by_target.values()
            for start in range(0, len(group), self.batch_size)
        ]


def evaluate(
    cases_json: Path,
    locate: Locator,
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    catalogue: bool = False,
) -> EvalReport:
    """Loads the cases, builds positive, qualitative and negative items, and scores ``locate``.

    ``catalogue``: each box is asked with every view of its product from other scenes too
    (`with_catalogue`).
    """
    cases = load_cases(cases_json)
    items = with_catalogue(build_items(cases), cases) if catalogue else build_items(cases)
    return Evaluator(locate, batch_size=batch_size, progress=progress).run(items)


def _per_sequence(results: Sequence[ItemResult]) -> dict[str, Scores]:
    """Negatives count for the sequence of their source box: the product that must not be found."""
    groups: dict[str, list[ItemResult]] = {}
    for result in results:
        if result.item.kind != "qualitative":
            groups.setdefault(result.item.sequence, []).append(result)
    return {key: compute_scores(group) for key, group in groups.items()}


def _per_category(results: Sequence[ItemResult]) -> dict[str, Scores]:
    """Negatives count for the category of their source box, like per sequence."""
    groups: dict[str, list[ItemResult]] = {}
    for result in results:
        if result.item.kind != "qualitative":
            groups.setdefault(result.item.category, []).append(result)
    return {key: compute_scores(group) for key, group in sorted(groups.items())}


def _per_view_change(results: Sequence[ItemResult]) -> dict[str, dict[str, Scores]]:
    groups: dict[str, dict[str, list[ItemResult]]] = {}
    for result in results:
        bucket = result.item.view_change_bucket
        if result.item.kind == "positive" and bucket is not None:
            groups.setdefault(result.item.category, {}).setdefault(bucket, []).append(result)
    order = [f"{low:g}-{high:g}" for low, high in VIEW_CHANGE_BUCKETS]
    return {
        category: {bucket: compute_scores(buckets[bucket]) for bucket in order if bucket in buckets}
        for category, buckets in sorted(groups.items())
    }


def _query(item: EvalItem, images: ImageStore) -> EvalQuery:
    return EvalQuery(
        item_id=item.item_id,
        case_id=item.case_id,
        box_id=item.box_id,
        source_key=str(item.source_path),
        source_image=images.get(item.source_path),
        source_box=item.source_box,
        target_key=str(item.target_path),
        target_image=images.get(item.target_path),
        views=tuple(QueryView(str(view.path), images.get(view.path), view.box) for view in item.views),
    )


# ------------------------------------------------------------------------------ geometry locator


def geometric_locator(config: GeometryConfig | None = None) -> Locator:
    """A locator using local-feature geometry alone, to measure that stage on its own."""
    verifier = CachingVerifier(config)

    def locate(queries: list[EvalQuery]) -> list[EvalAnswer]:
        answers = []
        for query in queries:
            checked = verifier.verification(
                query.source_key, query.source_image, query.source_box, query.target_key, query.target_image
            )
            match = checked.match
            if match is None:
                answers.append(EvalAnswer(found=False, bbox=None, confidence=0.0, method=Method.NONE.value))
            else:
                copies = tuple(copy.bbox for copy in checked.copies)
                answers.append(EvalAnswer(True, match.bbox, match.confidence, Method.GEOMETRIC.value, copies))
        return answers

    return locate


class CachingVerifier:
    """The geometric verifier as a service runs it: features cached, the simulated views only when needed.

    Target features are computed once per distinct target image, a source box's frontal and
    tilted views once per (source image, box), and the cascade is the pipeline's
    (`GeometricVerifier.verify_views`), so measurements and calibration see what it sees.
    """

    def __init__(self, config: GeometryConfig | None = None) -> None:
        self.verifier = GeometricVerifier(config)
        self._targets: dict[Hashable, TargetFeatures] = {}
        self._frontal: dict[tuple[Hashable, BBox], SourceFeatures] = {}
        self._tilted: dict[tuple[Hashable, BBox], SourceFeatures] = {}

    def verification(
        self, source_key: Hashable, source: RGBImage, box: BBox, target_key: Hashable, target: RGBImage
    ) -> Verification:
        """The pipeline's verdict on ``box`` in ``target``: the match, its matches and the product's further copies."""
        if target_key not in self._targets:
            self._targets[target_key] = self.verifier.target_features(target)
        key = (source_key, box)
        if key not in self._frontal:
            self._frontal[key] = self.verifier.frontal_features(source, box)

        def tilted() -> SourceFeatures:
            if key not in self._tilted:
                self._tilted[key] = self.verifier.tilted_features(source, box)
            return self._tilted[key]

        return self.verifier.verify_views(self._frontal[key], tilted, self._targets[target_key], box)
