"""Schema versions: stable ids, and reading across versions in both directions."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from importlib.resources import files
from typing import Any

import pytest

from schemas import (
    DEAD_LETTER,
    IMAGE_UPLOADED,
    TAG_SUGGESTIONS,
    AvroCodec,
    DecodeError,
    DecodeReason,
    Registry,
    SchemaError,
    builtin_registry,
    encode,
)

V2_ID = 100


def image_uploaded_v1_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(files("schemas").joinpath("image_uploaded.v1.avsc").read_text("utf-8"))
    return schema


def image_uploaded_v2_schema() -> dict[str, Any]:
    """v1 plus a field with a default: the compatible kind of change."""
    schema = image_uploaded_v1_schema()
    schema["fields"].append({"name": "channel", "type": "string", "default": "web"})
    return schema


def upload() -> dict[str, Any]:
    return {
        "event_id": "0b9f6a52-3c1e-4a57-9d0e-5f1c2b7e8a90",
        "occurred_at": datetime(2024, 5, 17, 9, 30, 12, 345000, tzinfo=timezone.utc),
        "upload_id": "upl-8812",
        "target_image_url": "https://cdn.example.com/u/8812/target.jpg",
        "sources": [
            {
                "image_url": "https://cdn.example.com/u/7001/look.jpg",
                "tags": [
                    {
                        "product_id": "sku-jacket-42",
                        "bbox": {"x": 10.5, "y": 20.0, "width": 140.25, "height": 300.0},
                    }
                ],
            }
        ],
        "similarity_threshold": None,
        "attributes": {"shop": "Zürich"},
    }


@pytest.fixture
def registry() -> Registry:
    """The shipped schemas plus ImageUploaded v2, which becomes the latest version."""
    registry = builtin_registry()
    registry.register(V2_ID, image_uploaded_v2_schema())
    return registry


def test_shipped_schemas_have_their_fixed_ids() -> None:
    registry = builtin_registry()

    shipped = [registry.latest(name) for name in (IMAGE_UPLOADED, TAG_SUGGESTIONS, DEAD_LETTER)]

    assert [(entry.schema_id, entry.version) for entry in shipped] == [(1, 1), (5, 2), (4, 2)]
    v1 = registry.get(3)
    assert v1 is not None and (v1.name, v1.version) == (DEAD_LETTER, 1)
    v1 = registry.get(2)
    assert v1 is not None and (v1.name, v1.version) == (TAG_SUGGESTIONS, 1)


def test_shipped_tag_suggestions_v1_is_read_by_v2_without_copies() -> None:
    """Suggestions already on the topic (a replay's history, a lagging sink) stay readable after the upgrade."""
    registry = builtin_registry()
    suggestion = {
        "product_id": "sku-jacket-42",
        "found": True,
        "confidence": 0.91,
        "bbox": {"x": 12.0, "y": 18.5, "width": 150.0, "height": 310.75},
        "detected_class": None,
        "method": "geometric",
        "error": None,
    }
    event = {
        "event_id": "5d1e0c1c-9c7a-5b8e-a1f4-2f0a7d3c6b11",
        "upload_event_id": "0b9f6a52-3c1e-4a57-9d0e-5f1c2b7e8a90",
        "upload_id": "upl-8812",
        "processed_at": datetime(2024, 5, 17, 9, 30, 13, tzinfo=timezone.utc),
        "latency_ms": 688.4,
        "suggestions": [suggestion],
        "detections_count": 3,
        "model": {"detector": "yolo11n", "embedder": "clip-vit-b32", "version": "2024.05.1"},
        "attributes": {},
    }

    data = AvroCodec(registry, pinned={TAG_SUGGESTIONS: 2}).encode(TAG_SUGGESTIONS, event)

    assert data[1:5] == (2).to_bytes(4, "big")
    assert AvroCodec(registry).decode(data, expected=TAG_SUGGESTIONS) == event | {
        "suggestions": [suggestion | {"copies": []}]
    }


def test_shipped_dead_letter_v1_is_read_by_v2_with_the_new_fields_defaults() -> None:
    """Letters already on a dead-letter topic stay readable (and re-publishable) after the upgrade."""
    registry = builtin_registry()
    letter = {
        "event_id": "a3c9e2d4-1b7f-4e6a-8c5d-9f0e1a2b3c4d",
        "original_topic": "image-uploaded",
        "original_partition": 0,
        "original_offset": 17,
        "key": b"upl-8812",
        "value": b"\x00original",
        "error_kind": "fetch_error",
        "error_message": "connection: refused",
        "attempts": 3,
        "failed_at": datetime(2024, 5, 17, 9, 31, tzinfo=timezone.utc),
        "upload_id": "upl-8812",
        "upload_event_id": "0b9f6a52-3c1e-4a57-9d0e-5f1c2b7e8a90",
    }

    data = AvroCodec(registry, pinned={DEAD_LETTER: 3}).encode(DEAD_LETTER, letter)

    assert data[1:5] == (3).to_bytes(4, "big")
    assert AvroCodec(registry).decode(data, expected=DEAD_LETTER) == letter | {
        "value_truncated": False,
        "value_size": None,
    }


def test_registering_a_new_version_makes_it_the_latest(registry: Registry) -> None:
    latest = registry.latest(IMAGE_UPLOADED)

    assert (latest.schema_id, latest.name, latest.version) == (V2_ID, IMAGE_UPLOADED, 2)
    v1 = registry.get(1)
    assert v1 is not None
    assert (v1.name, v1.version) == (IMAGE_UPLOADED, 1)


def test_v1_event_read_by_v2_reader_gets_the_new_fields_default(registry: Registry) -> None:
    v1_producer = AvroCodec(registry, pinned={IMAGE_UPLOADED: 1})
    v2_consumer = AvroCodec(registry)

    data = v1_producer.encode(IMAGE_UPLOADED, upload())

    assert data[1:5] == (1).to_bytes(4, "big")
    assert v2_consumer.decode(data, expected=IMAGE_UPLOADED) == upload() | {"channel": "web"}


def test_v2_event_read_by_v1_reader_drops_the_new_field(registry: Registry) -> None:
    v2_producer = AvroCodec(registry)
    v1_consumer = AvroCodec(registry, pinned={IMAGE_UPLOADED: 1})

    data = v2_producer.encode(IMAGE_UPLOADED, upload() | {"channel": "mobile-app"})

    assert data[1:5] == V2_ID.to_bytes(4, "big")
    assert v1_consumer.decode(data, expected=IMAGE_UPLOADED) == upload()


def test_v2_event_is_unreadable_where_v2_is_not_registered(registry: Registry) -> None:
    """Why a new version must be registered on every consumer before any producer uses it."""
    data = AvroCodec(registry).encode(IMAGE_UPLOADED, upload())

    with pytest.raises(DecodeError) as caught:
        AvroCodec(builtin_registry()).decode(data)

    assert caught.value.reason is DecodeReason.UNKNOWN_SCHEMA_ID
    assert str(caught.value) == f"unknown schema id {V2_ID}"


def test_new_field_without_default_cannot_read_old_events() -> None:
    registry = builtin_registry()
    breaking = image_uploaded_v1_schema()
    breaking["fields"].append({"name": "channel", "type": "string"})
    registry.register(V2_ID, breaking)
    data = AvroCodec(registry, pinned={IMAGE_UPLOADED: 1}).encode(IMAGE_UPLOADED, upload())

    with pytest.raises(DecodeError) as caught:
        AvroCodec(registry).decode(data)

    assert caught.value.reason is DecodeReason.INCOMPATIBLE_SCHEMA
    assert str(caught.value) == (
        "tagstream.ImageUploaded v1 (schema id 1) cannot be read as v2: "
        "No default value for field channel in tagstream.ImageUploaded"
    )


def test_builtin_registries_are_independent(registry: Registry) -> None:
    assert builtin_registry().get(V2_ID) is None
    assert encode(IMAGE_UPLOADED, upload())[1:5] == (1).to_bytes(4, "big")


@pytest.mark.parametrize(
    ("schema_id", "schema", "message"),
    [
        (1, image_uploaded_v2_schema(), "schema id 1 is already tagstream.ImageUploaded v1"),
        (0, image_uploaded_v2_schema(), "schema id 0 is outside 1..2147483647"),
        (2**31, image_uploaded_v2_schema(), "outside 1..2147483647"),
        (V2_ID, {"type": "array", "items": "string"}, "only record schemas can be registered"),
        (
            V2_ID,
            {"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]},
            "invalid Avro schema",
        ),
    ],
    ids=["id-taken", "id-zero", "id-too-big", "not-a-record", "invalid"],
)
def test_register_refuses(schema_id: int, schema: dict[str, Any], message: str) -> None:
    registry = builtin_registry()

    with pytest.raises(SchemaError, match=re.escape(message)):
        registry.register(schema_id, schema)

    assert registry.get(V2_ID) is None


def test_pinning_to_another_records_id_is_refused() -> None:
    with pytest.raises(SchemaError, match=re.escape("cannot pin tagstream.ImageUploaded to schema id 2")):
        AvroCodec(builtin_registry(), pinned={IMAGE_UPLOADED: 2})
