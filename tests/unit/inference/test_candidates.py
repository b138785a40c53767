from inference.candidates import padded, refinements, sliding_windows, window_sizes
from inference.types import BBox


def test_windows_cover_both_borders_and_respect_the_cap() -> None:
    windows = sliding_windows((100.0, 80.0), overlap=0.5, max_count=20, width=640, height=480)
    assert 0 < len(windows) <= 20
    assert min(w.x for w in windows) == 0.0 and max(w.x2 for w in windows) == 640.0
    assert min(w.y for w in windows) == 0.0 and max(w.y2 for w in windows) == 480.0


def test_a_tiny_budget_still_terminates_with_the_corner_windows() -> None:
    windows = sliding_windows((100.0, 80.0), overlap=0.5, max_count=1, width=640, height=480)
    assert len(windows) == 4
    assert {(w.x, w.y) for w in windows} == {(0.0, 0.0), (540.0, 0.0), (0.0, 400.0), (540.0, 400.0)}


def test_window_larger_than_image_is_one_window() -> None:
    assert sliding_windows((800.0, 600.0), 0.5, 10, 640, 480) == [BBox(0.0, 0.0, 800.0, 600.0)]


def test_near_equal_tags_share_window_sizes() -> None:
    sizes = window_sizes([BBox(0, 0, 100, 80), BBox(5, 5, 103, 79)], scales=(1.0,), width=640, height=480)
    assert sizes == [(96.0, 80.0)]


def test_padding_is_clipped_to_the_image() -> None:
    box = padded(BBox(0, 0, 100, 100), 0.1, 105, 105)
    assert box == BBox(0.0, 0.0, 105.0, 105.0)


def test_refinements_stay_around_the_box_and_inside_the_image() -> None:
    box = BBox(100, 100, 50, 40)
    boxes = refinements(box, scales=(0.85, 1.0, 1.15), shift=0.15, width=640, height=480)
    assert len(boxes) == 2 + 4
    assert all(b.iou(box) > 0.4 for b in boxes)
    assert all(b.x >= 0 and b.x2 <= 640 for b in boxes)
