"""The reference service's HTTP API, written from its own response models (not from our code).

A client written for that service parses exactly these shapes; ``extra="forbid"`` and strict
types make a renamed, missing or retyped field fail the contract tests, whichever side moved.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BoundingBox(_Strict):
    x: float
    y: float
    width: float
    height: float


class TagSuggestion(_Strict):
    product_id: str
    found: bool
    confidence: float
    suggested_bbox: BoundingBox | None
    detected_class: str | None


class SuggestTagsResponse(_Strict):
    suggestions: list[TagSuggestion]
    detections_count: int


class DetectedObject(_Strict):
    bbox: BoundingBox
    class_id: int
    class_name: str
    confidence: float


class DetectObjectsResponse(_Strict):
    objects: list[DetectedObject]
    total_count: int


class ClassesResponse(_Strict):
    """``GET /api/classes`` returns a plain dict in the reference service; these are its keys."""

    classes: list[str]
    total_count: int


class HealthResponse(_Strict):
    status: Literal["healthy"]
