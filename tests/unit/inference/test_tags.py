"""The one rule set for tags: what the stream, the HTTP API and the pipeline all refuse, and how they say it."""

from __future__ import annotations

import math

import pytest

from inference.tags import tag_error
from inference.types import BBox


@pytest.mark.parametrize(
    ("product_id", "box", "code"),
    [
        ("  ", BBox(1, 1, 10, 10), "empty_product_id"),
        ("p", BBox(math.nan, 1, 10, 10), "bbox_not_finite"),
        ("p", BBox(1, 1, math.inf, 10), "bbox_not_finite"),
        ("p", BBox(1, 1, 0, 10), "bbox_not_positive"),
        ("p", BBox(1, 1, 10, -3), "bbox_not_positive"),
    ],
)
def test_what_is_wrong_without_looking_at_the_image(product_id: str, box: BBox, code: str) -> None:
    assert str(tag_error(product_id, box)).startswith(f"{code}: ")


def test_with_the_image_size_a_box_must_leave_a_region_inside_it() -> None:
    size = (640, 480)
    assert tag_error("p", BBox(10, 10, 30, 30), size) is None
    assert tag_error("p", BBox(-20, -20, 30, 30), size) is None  # partly outside is fine
    assert str(tag_error("p", BBox(700, 10, 30, 30), size)).startswith("bbox_outside_image: ")
    assert str(tag_error("p", BBox(639, 10, 30, 30), size)).startswith("bbox_too_small: ")  # 1 px inside
    # At working resolution (a 4032 px photo seen at 0.5), 3 photo pixels are 1.5 working pixels.
    assert str(tag_error("p", BBox(4029, 10, 30, 30), (4032, 3024), scale=0.5)).startswith("bbox_too_small: ")
    assert tag_error("p", BBox(4020, 10, 30, 30), (4032, 3024), scale=0.5) is None
