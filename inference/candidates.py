"""Candidate boxes in a target image: detector boxes and sliding windows sized from the tags.

Windows are generated per target image for the *set* of tag sizes (quantised), not per tag,
so one embedding pass serves every tag of the upload.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from inference.types import BBox, Detection

_SIZE_QUANTUM = 16.0


def padded(box: BBox, ratio: float, width: int, height: int) -> BBox:
    """Grow a box by ``ratio`` of its size on each side (context helps CLIP), clipped to the image."""
    dx, dy = box.width * ratio, box.height * ratio
    return BBox(box.x - dx, box.y - dy, box.width + 2 * dx, box.height + 2 * dy).clip(width, height)


def detection_boxes(detections: Sequence[Detection], padding: float, width: int, height: int) -> list[BBox]:
    return [padded(d.bbox, padding, width, height) for d in detections]


def window_sizes(
    tag_boxes: Iterable[BBox], scales: Sequence[float], width: int, height: int
) -> list[tuple[float, float]]:
    """Distinct window sizes for all tags at all scales, rounded so near-equal tags share windows."""
    sizes: set[tuple[float, float]] = set()
    for box in tag_boxes:
        for scale in scales:
            w = min(max(_quantise(box.width * scale), _SIZE_QUANTUM), float(width))
            h = min(max(_quantise(box.height * scale), _SIZE_QUANTUM), float(height))
            sizes.add((w, h))
    return sorted(sizes)


def _quantise(value: float) -> float:
    return round(value / _SIZE_QUANTUM) * _SIZE_QUANTUM


def sliding_windows(size: tuple[float, float], overlap: float, max_count: int, width: int, height: int) -> list[BBox]:
    """A grid of ``size`` windows covering the image; the stride widens to stay under ``max_count``.

    Both borders are always covered, so a window smaller than the image in both directions
    gives at least 2 x 2 windows even when ``max_count`` is smaller.
    """
    w, h = size
    stride_x = max(w * (1.0 - overlap), 1.0)
    stride_y = max(h * (1.0 - overlap), 1.0)
    while _grid_count(width, w, stride_x) * _grid_count(height, h, stride_y) > max_count and (
        stride_x < width or stride_y < height
    ):
        stride_x *= 1.25
        stride_y *= 1.25
    return [BBox(x, y, w, h) for y in _grid(height, h, stride_y) for x in _grid(width, w, stride_x)]


def _grid_count(extent: int, size: float, stride: float) -> int:
    return 1 if size >= extent else math.floor((extent - size) / stride) + 1 + 1


def _grid(extent: int, size: float, stride: float) -> list[float]:
    """Evenly spread starts from 0 to ``extent - size``, both ends included so borders are covered."""
    if size >= extent:
        return [0.0]
    count = _grid_count(extent, size, stride)
    step = (extent - size) / (count - 1)
    return [i * step for i in range(count)]


def refinements(box: BBox, scales: Sequence[float], shift: float, width: int, height: int) -> list[BBox]:
    """Boxes around ``box``: rescaled in place, and shifted by ``shift`` of its size in 4 directions.

    Four shifts, not eight: every box is a CLIP forward pass, and the straight shifts already
    bracket the optimum in x and in y.
    """
    cx, cy = box.center
    moves = [(0.0, 0.0, s) for s in scales if s != 1.0]
    moves += [(-shift, 0.0, 1.0), (shift, 0.0, 1.0), (0.0, -shift, 1.0), (0.0, shift, 1.0)]
    out: list[BBox] = []
    for dx, dy, scale in moves:
        w, h = box.width * scale, box.height * scale
        candidate = BBox(cx + dx * box.width - w / 2, cy + dy * box.height - h / 2, w, h).clip(width, height)
        if candidate.width >= 4 and candidate.height >= 4:
            out.append(candidate)
    return out
