"""Request and response bodies of the reference HTTP API, as pydantic models.

Field names and shapes are the reference service's (``seed/reference-service-guide.md``), so
its clients keep working against a worker. These models check types and ranges; what makes a
tag answerable (a finite box of positive size inside its image, a product id) is checked by
the same rules as on the stream (``inference.tags``), in the handler.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

from inference.types import BBox, Detection, TagMatch

_URL = Field(min_length=1, max_length=4096, description="http(s) URL of the image; fetched under the SSRF policy.")


class _Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)


class BBoxIn(_Body):
    """Pixels; (x, y) is the top-left corner. What makes a box usable is checked by the stream's rules."""

    x: float
    y: float
    width: float
    height: float


class SourceTagIn(_Body):
    product_id: str
    bbox: BBoxIn


class SourceImageIn(_Body):
    """A further earlier photo with its tags (``more_sources``): the event's ``SourceImage`` shape."""

    image_url: str = _URL
    tags: list[SourceTagIn] = Field(min_length=1)


class SuggestTagsRequest(_Body):
    source_image_url: str = _URL
    # At most the worker's TAGSTREAM_MAX_TAGS, checked by the handler (the limit is a setting).
    source_tags: list[SourceTagIn] = Field(min_length=1)
    target_image_url: str = _URL
    similarity_threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="CLIP cosine for a CLIP-only match; default: the worker's setting (0.75)."
    )
    # Not in the reference service, so its clients, which parse exactly its shapes, get exactly them.
    include_copies: bool = Field(
        False, description="Also answer every further copy of a found product (e.g. the other cans on a shelf)."
    )
    # Not in the reference service either. Bounded by TAGSTREAM_MAX_SOURCES (with source_image_url)
    # and TAGSTREAM_MAX_TAGS (all tags together), checked by the handler.
    more_sources: list[SourceImageIn] = Field(
        default_factory=list,
        description="Further earlier photos with their tags; a product tagged in several photos is answered from "
        "the view that finds it. Suggestions follow source_tags, then these tags in order.",
    )


class DetectRequest(_Body):
    image_url: str = _URL
    confidence_threshold: float = Field(0.25, ge=0.0, le=1.0)
    target_classes: list[str] | None = Field(
        None, description="Only these class names (see /api/classes); all if absent."
    )


class BBoxOut(BaseModel):
    x: float
    y: float
    width: float
    height: float

    @classmethod
    def of(cls, box: BBox) -> BBoxOut:
        return cls(x=box.x, y=box.y, width=box.width, height=box.height)


class CopyOut(BaseModel):
    """A further place the same product appears in the target, found and checked like ``suggested_bbox``."""

    suggested_bbox: BBoxOut
    confidence: float


class Suggestion(BaseModel):
    """One tag's answer, in the reference service's shape."""

    product_id: str
    found: bool
    confidence: float
    suggested_bbox: BBoxOut | None
    detected_class: str | None

    @classmethod
    def of(cls, match: TagMatch) -> Suggestion:
        return cls(
            product_id=match.product_id,
            found=match.found,
            confidence=match.confidence,
            suggested_bbox=BBoxOut.of(match.bbox) if match.bbox is not None else None,
            detected_class=match.detected_class,
        )


class SuggestionWithCopies(Suggestion):
    """``Suggestion`` plus the further copies of the product (``include_copies``); empty unless found."""

    copies: list[CopyOut]

    @classmethod
    def of(cls, match: TagMatch) -> SuggestionWithCopies:
        copies = [CopyOut(suggested_bbox=BBoxOut.of(c.bbox), confidence=c.confidence) for c in match.copies]
        return cls(**Suggestion.of(match).model_dump(), copies=copies)


class SuggestTagsResponse(BaseModel):
    # SerializeAsAny: a ``SuggestionWithCopies`` keeps its copies in the JSON.
    suggestions: list[SerializeAsAny[Suggestion]]
    detections_count: int


class DetectedObject(BaseModel):
    bbox: BBoxOut
    class_id: int
    class_name: str
    confidence: float

    @classmethod
    def of(cls, detection: Detection) -> DetectedObject:
        return cls(
            bbox=BBoxOut.of(detection.bbox),
            class_id=detection.class_id,
            class_name=detection.class_name,
            confidence=detection.confidence,
        )


class DetectResponse(BaseModel):
    objects: list[DetectedObject]
    total_count: int


class ClassesResponse(BaseModel):
    classes: list[str]
    total_count: int


class HealthResponse(BaseModel):
    """Liveness in the reference service's words; readiness is ``/ready``'s question."""

    status: str = "healthy"
