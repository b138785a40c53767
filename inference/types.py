"""Value types shared by every stage of the inference library.

Images travel as RGB ``uint8`` numpy arrays of shape (H, W, 3): the fetcher decodes once,
and every stage (detector, crops, local features) reads the same array without re-decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
import numpy.typing as npt

RGBImage = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class BBox:
    """Axis-aligned box in pixels; (x, y) is the top-left corner, as in the reference API."""

    x: float
    y: float
    width: float
    height: float

    @property
    def x2(self) -> float:
        return self.x + self.width

    @property
    def y2(self) -> float:
        return self.y + self.height

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.width / 2.0, self.y + self.height / 2.0)

    def as_xyxy(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x2, self.y2)

    @classmethod
    def from_xyxy(cls, x1: float, y1: float, x2: float, y2: float) -> BBox:
        return cls(x1, y1, x2 - x1, y2 - y1)

    def scaled(self, factor: float) -> BBox:
        """The same box in an image resized by ``factor`` (both axes)."""
        return BBox(self.x * factor, self.y * factor, self.width * factor, self.height * factor)

    def clip(self, width: int, height: int) -> BBox:
        """The part of the box inside a ``width`` x ``height`` image."""
        x1 = min(max(self.x, 0.0), float(width))
        y1 = min(max(self.y, 0.0), float(height))
        x2 = min(max(self.x2, 0.0), float(width))
        y2 = min(max(self.y2, 0.0), float(height))
        return BBox.from_xyxy(x1, y1, x2, y2)

    def overlap(self, other: BBox) -> float:
        """The area the two boxes share, over the smaller one's: 1 when one holds the other."""
        shared = BBox.from_xyxy(
            max(self.x, other.x), max(self.y, other.y), min(self.x2, other.x2), min(self.y2, other.y2)
        )
        smaller = min(self.area, other.area)
        return shared.area / smaller if smaller > 0 else 0.0

    def iou(self, other: BBox) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x, other.x))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y, other.y))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Detection:
    """One detector output on a target image; ``class_id`` indexes the detector's class names."""

    bbox: BBox
    class_name: str
    confidence: float
    class_id: int


@dataclass(frozen=True)
class SourceTag:
    """A tagged product; ``error`` says why it cannot be answered (``inference.tags``), if it cannot."""

    product_id: str
    bbox: BBox
    error: str | None = None


@dataclass(frozen=True)
class SourceImage:
    """An earlier photo with its tagged products; ``key`` identifies the image for caching (its URL).

    ``image`` may be a reduced copy of the photo (``scale`` of its pixels per original pixel);
    tag boxes are always in the original photo's pixels.
    """

    key: str
    image: RGBImage
    tags: tuple[SourceTag, ...]
    scale: float = 1.0


@dataclass(frozen=True)
class MatchRequest:
    """Find every tag of every source image inside ``target``.

    ``target`` may be a reduced copy of the photo (``target_scale`` of its pixels per original
    pixel); answered boxes are in the original photo's pixels.
    """

    request_id: str
    target: RGBImage
    sources: tuple[SourceImage, ...]
    similarity_threshold: float | None = None
    target_scale: float = 1.0


class Method(str, Enum):
    """The signal that decided a tag (the ``method`` of a suggestion; a stable, documented vocabulary)."""

    GEOMETRIC = "geometric"
    CLIP = "clip"
    NONE = "none"
    """Not found."""
    INVALID = "invalid"
    """The tag's own input was bad; ``error`` says why."""


@dataclass(frozen=True)
class Copy:
    """A further place a found product appears in the target (a shelf of one brand), found and checked like the first."""

    bbox: BBox
    confidence: float


@dataclass(frozen=True)
class TagMatch:
    """The verdict for one source tag; ``method`` names the signal that decided it."""

    product_id: str
    found: bool
    confidence: float
    bbox: BBox | None
    detected_class: str | None
    method: Method
    error: str | None = None
    # Further copies of the product in the target, at the threshold too; only beside a found ``bbox``.
    copies: tuple[Copy, ...] = ()

    def scaled(self, factor: float) -> TagMatch:
        """The same verdict with every box in an image resized by ``factor``."""
        return replace(
            self,
            bbox=self.bbox.scaled(factor) if self.bbox is not None else None,
            copies=tuple(Copy(c.bbox.scaled(factor), c.confidence) for c in self.copies),
        )

    @classmethod
    def invalid(cls, product_id: str, error: str) -> TagMatch:
        return cls(product_id, False, 0.0, None, None, Method.INVALID, error)


@dataclass(frozen=True)
class MatchResult:
    request_id: str
    matches: tuple[TagMatch, ...]
    detections_count: int
    stage_ms: dict[str, float] = field(default_factory=dict)
