"""ImageUploaded events in (checked against the limits), TagSuggestions records out.

Dead letters, the other way an event leaves, are built in ``streams.deadletters``.

Validation splits problems by what they spoil. A problem that makes the whole event unusable
(no ids, no target URL, too many sources or tags, a malformed URL) dead-letters the event. A
problem confined to one tag (``inference.tags``: a box with NaN, infinite or non-positive size,
an empty product id; once the image is fetched, a box outside it) becomes that tag's ``error``
in the suggestion event, so the other tags of the upload are still answered.

Both kinds of reason start with a stable code (``too_many_tags: ...``, ``bbox_not_finite: ...``)
so that dashboards and consumers can group them without parsing prose.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from inference.tags import tag_error
from inference.types import BBox, MatchResult, Method, SourceTag
from schemas import TAG_SUGGESTIONS, AvroCodec, builtin_registry

# Stable namespace for suggestion ids: uuid5(namespace, upload event id + model version).
SUGGESTION_NAMESPACE = uuid.UUID("6f1d3c1e-8a8f-4d5e-9a43-0d8b3f2d7c11")
# The first TagSuggestions version with ``copies`` in each suggestion.
_COPIES_SINCE_VERSION = 2


class InvalidEvent(ValueError):
    """The event as a whole cannot be processed; ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class UploadSource:
    image_url: str
    tags: tuple[SourceTag, ...]
    """Every tag, in event order; one that cannot be answered carries its ``error``."""


@dataclass(frozen=True)
class UploadEvent:
    event_id: str
    upload_id: str
    occurred_at: datetime
    target_image_url: str
    sources: tuple[UploadSource, ...]
    similarity_threshold: float | None
    attributes: dict[str, str]

    @property
    def image_urls(self) -> set[str]:
        return {self.target_image_url} | {s.image_url for s in self.sources}


@dataclass(frozen=True)
class EventLimits:
    """What one upload event may carry; checked at the door, before any work.

    Besides bounding the work an event can ask for, the limits bound what the event makes the
    worker *publish*: ids, URLs and attributes are echoed into its suggestion (or dead letter),
    and an output over the producer's request limit could never be delivered. With the
    defaults a suggestion stays under ~100 KB and a dead letter under ``max_event_bytes`` plus
    a little, far below Kafka's 1 MB default.
    """

    max_sources: int = 16
    max_tags: int = 64
    max_event_bytes: int = 256 * 1024
    max_id_chars: int = 256
    max_url_chars: int = 8192
    max_attribute_bytes: int = 16 * 1024


def parse_upload(record: dict[str, Any], limits: EventLimits) -> UploadEvent:
    """Check a decoded ImageUploaded record beyond what Avro types already guarantee."""
    for field_name in ("event_id", "upload_id", "target_image_url"):
        if not str(record.get(field_name, "")).strip():
            raise InvalidEvent("empty_field", f"{field_name} is empty")
    _check_id(record["event_id"], "event_id", limits)
    _check_id(record["upload_id"], "upload_id", limits)
    _check_url(record["target_image_url"], "target_image_url", limits)
    sources = record.get("sources", [])
    if len(sources) > limits.max_sources:
        raise InvalidEvent("too_many_sources", f"{len(sources)} sources, limit {limits.max_sources}")
    tag_count = sum(len(s["tags"]) for s in sources)
    if tag_count > limits.max_tags:
        raise InvalidEvent("too_many_tags", f"{tag_count} tags, limit {limits.max_tags}")
    threshold = record.get("similarity_threshold")
    if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise InvalidEvent("bad_threshold", f"similarity_threshold {threshold} is not a cosine in [-1, 1]")
    attributes = dict(record.get("attributes") or {})
    attribute_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())
    if attribute_bytes > limits.max_attribute_bytes:
        raise InvalidEvent(
            "attributes_too_large", f"attributes hold {attribute_bytes} bytes, limit {limits.max_attribute_bytes}"
        )
    parsed_sources = []
    for index, source in enumerate(sources):
        _check_url(source["image_url"], f"sources[{index}].image_url", limits)
        for position, tag in enumerate(source["tags"]):
            _check_id(tag["product_id"], f"sources[{index}].tags[{position}].product_id", limits)
        parsed_sources.append(UploadSource(source["image_url"], tuple(_parse_tag(t) for t in source["tags"])))
    return UploadEvent(
        event_id=record["event_id"],
        upload_id=record["upload_id"],
        occurred_at=record["occurred_at"],
        target_image_url=record["target_image_url"],
        sources=tuple(parsed_sources),
        similarity_threshold=threshold,
        attributes=attributes,
    )


def check_size(value: bytes, limits: EventLimits) -> None:
    """The whole encoded event, before anything else: a huge event is refused whatever it holds."""
    if len(value) > limits.max_event_bytes:
        raise InvalidEvent("event_too_large", f"event is {len(value)} bytes, limit {limits.max_event_bytes}")


def _check_id(value: str, field_name: str, limits: EventLimits) -> None:
    if len(value) > limits.max_id_chars:
        raise InvalidEvent("id_too_long", f"{field_name} has {len(value)} characters, limit {limits.max_id_chars}")


def _check_url(url: str, field_name: str, limits: EventLimits) -> None:
    if len(url) > limits.max_url_chars:
        raise InvalidEvent("url_too_long", f"{field_name} has {len(url)} characters, limit {limits.max_url_chars}")
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018  # parsed lazily: raises ValueError for a port out of range
    except ValueError as exc:  # an unclosed IPv6 bracket, a bracketed IPv4 host, a bad port ...
        raise InvalidEvent("bad_url", f"{field_name} {url!r} is not a valid URL: {exc}") from exc
    if not valid:
        raise InvalidEvent("bad_url", f"{field_name} {url!r} is not an absolute http(s) URL")


def _parse_tag(tag: dict[str, Any]) -> SourceTag:
    box = tag["bbox"]
    bbox = BBox(box["x"], box["y"], box["width"], box["height"])
    return SourceTag(tag["product_id"], bbox, tag_error(tag["product_id"], bbox))


def suggestion_event_id(upload_event_id: str, model_version: str) -> str:
    """Same upload and model → same id (replays are idempotent); a new model → new ids."""
    return str(uuid.uuid5(SUGGESTION_NAMESPACE, f"{upload_event_id}|{model_version}"))


def suggestions_codec(version: int | None = None) -> AvroCodec:
    """The codec that writes TagSuggestions at ``version`` (None: the latest).

    A rolling upgrade writes the previous version until every reader of the topic (the product
    DB sinks, downstream consumers) knows the new one: a reader cannot decode a schema id it has
    never seen. Raises ``SchemaError`` for a version that does not exist.
    """
    registry = builtin_registry()
    if version is None:
        return AvroCodec(registry)
    return AvroCodec(registry, pinned={TAG_SUGGESTIONS: registry.version(TAG_SUGGESTIONS, version).schema_id})


def suggestion_record(
    event: UploadEvent, result: MatchResult, model: dict[str, str], received_at: datetime, schema_version: int
) -> dict[str, Any]:
    """The TagSuggestions record at ``schema_version``: one suggestion per tag of the event, in order.

    ``result`` answers each tag; a version before ``copies`` existed gets the first copy only.
    """
    now = datetime.now(timezone.utc)
    suggestions: list[dict[str, Any]] = [
        {
            "product_id": match.product_id,
            "found": match.found,
            "confidence": float(match.confidence),
            "bbox": _bbox(match.bbox),
            "detected_class": match.detected_class,
            "method": Method(match.method).value,
            "error": match.error,
        }
        for match in result.matches
    ]
    if schema_version >= _COPIES_SINCE_VERSION:
        for suggestion, match in zip(suggestions, result.matches, strict=True):
            suggestion["copies"] = [{"bbox": _bbox(c.bbox), "confidence": float(c.confidence)} for c in match.copies]
    return {
        "event_id": suggestion_event_id(event.event_id, model["version"]),
        "upload_event_id": event.event_id,
        "upload_id": event.upload_id,
        "processed_at": now,
        "latency_ms": (now - received_at).total_seconds() * 1000.0,
        "suggestions": suggestions,
        "detections_count": result.detections_count,
        "model": model,
        "attributes": event.attributes,
    }


def _bbox(box: BBox | None) -> dict[str, float] | None:
    if box is None:
        return None
    return {"x": round(box.x, 2), "y": round(box.y, 2), "width": round(box.width, 2), "height": round(box.height, 2)}
