"""How much of an evaluation is the robust fit's luck: one set scored with its matches in several orders.

OpenCV's RANSAC/MAGSAC samples from a fixed random state, so the order in which matches reach
it decides which models it tries. On planar photos that changes nothing; on a turned 3D product
with a handful of coherent matches among many, another order can find the box, miss it, or fit
a wrong one. A change to the verifier that moves a figure by less than this spread has not been
shown to help (docs/accuracy.md).
"""

from __future__ import annotations

from statistics import fmean
from typing import Any


def order_seeds(runs: int) -> list[int | None]:
    """The natural order first (what the stream runs), then seeds 1 .. runs - 1."""
    if runs < 1:
        raise ValueError("at least one match order is needed")
    return [None, *range(1, runs)]


def order_spread(seeds: list[int | None], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run counts of every row of ``reports`` (``EvalReport.to_json`` of each order), row by row.

    Counts, not rates, so that rows can be added up (e.g. the view-change buckets up to 60
    degrees) run by run: ``right`` (IoU >= 0.5), ``found_wrong_box``, ``not_found`` and
    ``false_positives``, each a list in the order of ``seeds``; where the set has repeated
    products, also ``copies_found`` and ``copies_wrong``.
    """
    if len(seeds) != len(reports) or not reports:
        raise ValueError("one report per seed is needed")
    first = reports[0]
    return {
        "runs": len(reports),
        "seeds": seeds,
        "overall": _row(reports),
        "per_category": {name: _row([r["per_category"][name] for r in reports]) for name in first["per_category"]},
        "per_view_change": {
            category: {bucket: _row([r["per_view_change"][category][bucket] for r in reports]) for bucket in buckets}
            for category, buckets in first["per_view_change"].items()
        },
    }


def _row(scores: list[dict[str, Any]]) -> dict[str, Any]:
    boxes = {s["boxes"] for s in scores}
    if len(boxes) != 1:
        raise ValueError(f"runs scored different sets of boxes: {sorted(boxes)}")
    return {
        "boxes": boxes.pop(),
        "right": [s["boxes"] - s["not_found"] - s["found_wrong_box"] for s in scores],
        "found_wrong_box": [s["found_wrong_box"] for s in scores],
        "not_found": [s["not_found"] for s in scores],
        "false_positives": [s["false_positives"] for s in scores],
        "copies_found": [s["copies_found"] for s in scores],
        "copies_wrong": [s["copies_wrong"] for s in scores],
    }


def spread_summary(spread: dict[str, Any]) -> str:
    """The spread as a table: per row, the natural order's count and the min / mean / max over all orders."""
    header = (
        f"{'':28} {'boxes':>5} {'right: natural  min  mean  max':>31} {'wrong box: natural  min  mean  max':>35} "
        f"{'false pos: max':>14}"
    )
    lines = [f"over {spread['runs']} match orders (natural first, then seeds 1..{spread['runs'] - 1})", header]
    lines += [_line(f"kind {name}", row) for name, row in spread["per_category"].items()]
    for category, buckets in spread["per_view_change"].items():
        lines += [_line(f"{category} {bucket}", row) for bucket, row in buckets.items()]
    lines.append(_line("OVERALL", spread["overall"]))
    overall = spread["overall"]
    if any(overall["copies_found"]) or any(overall["copies_wrong"]):
        found, wrong = overall["copies_found"], overall["copies_wrong"]
        lines.append(
            f"further copies found: natural {found[0]}, mean {fmean(found):.2f}; "
            f"answered where no copy is: natural {wrong[0]}, mean {fmean(wrong):.2f}, max {max(wrong)}"
        )
    return "\n".join(lines)


def _line(name: str, row: dict[str, Any]) -> str:
    def counts(values: list[int]) -> str:
        return f"{values[0]:>7} {min(values):>4} {fmean(values):>5.2f} {max(values):>4}"

    return (
        f"{name:28} {row['boxes']:>5} {counts(row['right']):>31} {counts(row['found_wrong_box']):>35} "
        f"{max(row['false_positives']):>14}"
    )
