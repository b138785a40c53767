"""The spread of an evaluation over match orders: counts per row and run, and the table that shows them."""

from __future__ import annotations

from typing import Any

import pytest

from workbench.match_orders import order_seeds, order_spread, spread_summary


def _scores(boxes: int, wrong: int, missed: int, false_positives: int = 0, copies: int = 0) -> dict[str, Any]:
    return {
        "boxes": boxes,
        "found_wrong_box": wrong,
        "not_found": missed,
        "false_positives": false_positives,
        "copies_found": copies,
        "copies_wrong": wrong if copies else 0,
    }


def _report(wrong: int, missed: int, copies: int = 0) -> dict[str, Any]:
    """A report shaped like ``EvalReport.to_json``: one kind with two view-change buckets."""
    near, far = _scores(6, 0, 1), _scores(4, wrong, missed - 1)
    return {
        **_scores(10, wrong, missed, false_positives=wrong, copies=copies),
        "per_category": {"textured_3d": _scores(10, wrong, missed)},
        "per_view_change": {"textured_3d": {"0-15": near, "60-90": far}},
    }


def test_the_natural_order_comes_first() -> None:
    assert order_seeds(1) == [None]
    assert order_seeds(4) == [None, 1, 2, 3]
    with pytest.raises(ValueError):
        order_seeds(0)


def test_each_row_keeps_every_run_s_counts_in_seed_order() -> None:
    spread = order_spread([None, 1, 2], [_report(0, 3), _report(1, 2), _report(2, 3)])

    assert spread["runs"] == 3 and spread["seeds"] == [None, 1, 2]
    assert spread["overall"] == {
        "boxes": 10,
        "right": [7, 7, 5],
        "found_wrong_box": [0, 1, 2],
        "not_found": [3, 2, 3],
        "false_positives": [0, 1, 2],
        "copies_found": [0, 0, 0],
        "copies_wrong": [0, 0, 0],
    }
    assert spread["per_category"]["textured_3d"]["right"] == [7, 7, 5]
    assert spread["per_view_change"]["textured_3d"]["0-15"]["right"] == [5, 5, 5]
    assert spread["per_view_change"]["textured_3d"]["60-90"]["right"] == [2, 2, 0]


def test_runs_over_different_boxes_are_refused() -> None:
    other = _report(0, 3)
    other["per_category"]["textured_3d"] = _scores(9, 0, 3)
    with pytest.raises(ValueError, match="different sets of boxes"):
        order_spread([None, 1], [_report(0, 3), other])
    with pytest.raises(ValueError):
        order_spread([None, 1], [_report(0, 3)])


def test_the_table_shows_natural_min_mean_and_max() -> None:
    table = spread_summary(order_spread([None, 1, 2, 3], [_report(0, 3), _report(1, 2), _report(0, 2), _report(2, 2)]))

    overall = next(line for line in table.splitlines() if line.startswith("OVERALL"))
    assert overall.split() == ["OVERALL", "10", "7", "6", "7.00", "8", "0", "0", "0.75", "2", "2"]
    assert "over 4 match orders" in table
    assert any(line.startswith("textured_3d 60-90") for line in table.splitlines())


def test_further_copies_are_counted_and_shown_only_where_a_set_has_them() -> None:
    plain = spread_summary(order_spread([None, 1], [_report(0, 3), _report(1, 2)]))
    spread = order_spread([None, 1, 2], [_report(0, 3, copies=5), _report(1, 2, copies=4), _report(2, 2, copies=6)])

    assert spread["overall"]["copies_found"] == [5, 4, 6] and spread["overall"]["copies_wrong"] == [0, 1, 2]
    assert "further copies" not in plain
    line = spread_summary(spread).splitlines()[-1]
    assert line == "further copies found: natural 5, mean 5.00; answered where no copy is: natural 0, mean 1.00, max 2"
