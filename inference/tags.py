"""What makes a tag answerable: one rule set, wherever tags come in.

The stream's event check, the HTTP API and the pipeline itself all ask :func:`tag_error`, so a
box refused in one place is refused in every place with the same words. A problem confined to
one tag never spoils its upload: the tag is answered ``invalid`` with this reason and the other
tags are matched as usual. Every reason starts with a stable code (``bbox_not_finite: ...``).
"""

from __future__ import annotations

import math

from inference.types import BBox

MIN_BOX_SIDE = 2.0
"""Smallest side, in working pixels, of what is left of a box inside its image: less is no region."""


def tag_error(product_id: str, box: BBox, image_size: tuple[int, int] | None = None, scale: float = 1.0) -> str | None:
    """Why the tag cannot be answered, or None.

    ``image_size`` is the source photo's (width, height) in its own pixels, when it is known
    (after the fetch); ``scale`` is the working resolution's pixels per photo pixel.
    """
    if not product_id.strip():
        return "empty_product_id: product_id is empty"
    values = [box.x, box.y, box.width, box.height]
    if not all(math.isfinite(v) for v in values):
        return f"bbox_not_finite: bbox has a non-finite value: {values}"
    if box.width <= 0 or box.height <= 0:
        return f"bbox_not_positive: bbox has non-positive size: width={box.width}, height={box.height}"
    if image_size is None:
        return None
    width, height = image_size
    inside = box.clip(width, height)
    if inside.area <= 0:
        return (
            f"bbox_outside_image: bbox (x={box.x:g}, y={box.y:g}, w={box.width:g}, h={box.height:g}) "
            f"does not overlap the {width}x{height} source image"
        )
    if min(inside.width, inside.height) * scale < MIN_BOX_SIDE:
        return (
            f"bbox_too_small: bbox (x={box.x:g}, y={box.y:g}, w={box.width:g}, h={box.height:g}) leaves less than "
            f"{MIN_BOX_SIDE:g} px inside the {width}x{height} source image at working resolution"
        )
    return None
