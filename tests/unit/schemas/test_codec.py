"""Round trips, wire framing and error reporting of the codec with the shipped schemas."""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from schemas import (
    DEAD_LETTER,
    IMAGE_UPLOADED,
    TAG_SUGGESTIONS,
    DecodeError,
    DecodeReason,
    EncodeError,
    SchemaError,
    decode,
    encode,
)

UTC = timezone.utc
NOPE = "no schema registered for record 'tagstream.Nope'"


def image_uploaded() -> dict[str, Any]:
    return {
        "event_id": "0b9f6a52-3c1e-4a57-9d0e-5f1c2b7e8a90",
        "occurred_at": datetime(2024, 5, 17, 9, 30, 12, 345000, tzinfo=UTC),
        "upload_id": "upl-8812",
        "target_image_url": "https://cdn.example.com/u/8812/target.jpg",
        "sources": [
            {
                "image_url": "https://cdn.example.com/u/7001/look.jpg",
                "tags": [
                    {
                        "product_id": "sku-jacket-42",
                        "bbox": {"x": 10.5, "y": 20.0, "width": 140.25, "height": 300.0},
                    },
                    {
                        "product_id": "sku-größe-🧥",
                        "bbox": {"x": 0.0, "y": 0.0, "width": 1.0, "height": 1.0},
                    },
                ],
            },
            {"image_url": "https://cdn.example.com/u/7002/empty.jpg", "tags": []},
        ],
        "similarity_threshold": 0.75,
        "attributes": {"shop": "Zürich Süd", "campaign": "spring-24"},
    }


def tag_suggestions() -> dict[str, Any]:
    return {
        "event_id": "5d1e0c1c-9c7a-5b8e-a1f4-2f0a7d3c6b11",
        "upload_event_id": "0b9f6a52-3c1e-4a57-9d0e-5f1c2b7e8a90",
        "upload_id": "upl-8812",
        "processed_at": datetime(2024, 5, 17, 9, 30, 13, 1000, tzinfo=UTC),
        "latency_ms": 688.4,
        "suggestions": [
            {
                "product_id": "sku-jacket-42",
                "found": True,
                "confidence": 0.9132,
                "bbox": {"x": 12.0, "y": 18.5, "width": 150.0, "height": 310.75},
                "detected_class": "jacket",
                "method": "clip+geometry",
                "error": None,
                "copies": [{"bbox": {"x": 212.0, "y": 18.5, "width": 149.5, "height": 311.0}, "confidence": 0.8801}],
            },
            {
                "product_id": "sku-größe-🧥",
                "found": False,
                "confidence": 0.0,
                "bbox": None,
                "detected_class": None,
                "method": "none",
                "error": "invalid source box: width 0",
                "copies": [],
            },
        ],
        "detections_count": 3,
        "model": {"detector": "yolo11n", "embedder": "clip-vit-b32", "version": "2024.05.1"},
        "attributes": {"shop": "Zürich Süd"},
    }


def dead_letter() -> dict[str, Any]:
    return {
        "event_id": "a3c9e2d4-1b7f-4e6a-8c5d-9f0e1a2b3c4d",
        "original_topic": "image-uploaded",
        "original_partition": 7,
        "original_offset": 2**40 + 17,
        "key": b"upl-8812",
        "value": b"\x01\xff\x00garbage\x80",
        "error_kind": "decode_error",
        "error_message": "magic byte is 0x01, expected 0x00",
        "attempts": 1,
        "failed_at": datetime(2024, 5, 17, 9, 31, tzinfo=UTC),
        "upload_id": None,
        "upload_event_id": None,
        "value_truncated": False,
        "value_size": 11,
    }


@pytest.mark.parametrize(
    ("record_name", "value", "schema_id"),
    [
        (IMAGE_UPLOADED, image_uploaded(), 1),
        (TAG_SUGGESTIONS, tag_suggestions(), 5),
        (DEAD_LETTER, dead_letter(), 4),
    ],
    ids=["ImageUploaded", "TagSuggestions", "DeadLetter"],
)
def test_round_trip_is_lossless_and_framed(record_name: str, value: dict[str, Any], schema_id: int) -> None:
    data = encode(record_name, value)

    assert data[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    assert decode(data, expected=record_name) == value
    assert decode(data) == value


def test_optional_fields_take_their_defaults() -> None:
    value = image_uploaded()
    del value["similarity_threshold"], value["attributes"]

    decoded = decode(encode(IMAGE_UPLOADED, value))

    assert decoded["similarity_threshold"] is None
    assert decoded["attributes"] == {}


def test_dead_letter_keeps_a_null_key_and_undecodable_bytes() -> None:
    value = dead_letter() | {"key": None, "value": bytes(range(256)), "upload_id": "upl-8812"}

    decoded = decode(encode(DEAD_LETTER, value), expected=DEAD_LETTER)

    assert decoded["key"] is None
    assert decoded["value"] == bytes(range(256))
    assert decoded["upload_id"] == "upl-8812"


def test_timestamps_decode_as_utc_datetimes_truncated_to_the_millisecond() -> None:
    local = timezone(timedelta(hours=2))
    value = image_uploaded() | {"occurred_at": datetime(2024, 5, 17, 11, 0, 0, 123456, local)}

    occurred_at = decode(encode(IMAGE_UPLOADED, value))["occurred_at"]

    assert occurred_at == datetime(2024, 5, 17, 9, 0, 0, 123000, tzinfo=UTC)
    assert occurred_at.tzinfo == UTC


def test_timestamps_also_encode_from_epoch_millis() -> None:
    value = image_uploaded() | {"occurred_at": 1_715_938_212_345}

    occurred_at = decode(encode(IMAGE_UPLOADED, value))["occurred_at"]

    assert occurred_at == datetime(2024, 5, 17, 9, 30, 12, 345000, tzinfo=UTC)


VALID = encode(IMAGE_UPLOADED, image_uploaded())


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        (b"", DecodeReason.TOO_SHORT, "payload is 0 bytes; a message needs at least 5"),
        (b"\x00\x00\x00", DecodeReason.TOO_SHORT, "payload is 3 bytes"),
        (b"\x7b" + VALID[1:], DecodeReason.BAD_MAGIC, "magic byte is 0x7b, expected 0x00"),
        (
            b"\x00" + (999).to_bytes(4, "big") + VALID[5:],
            DecodeReason.UNKNOWN_SCHEMA_ID,
            "unknown schema id 999",
        ),
        (
            VALID[:-3],
            DecodeReason.CORRUPT_BODY,
            "corrupt or truncated tagstream.ImageUploaded v1 (schema id 1) body: EOFError",
        ),
        (
            # event_id: a 1-byte string (zigzag 2) holding 0xff, which is not UTF-8.
            VALID[:5] + b"\x02\xff",
            DecodeReason.CORRUPT_BODY,
            "body: UnicodeDecodeError",
        ),
        (
            VALID + b"\x00\x00",
            DecodeReason.TRAILING_BYTES,
            "2 unread bytes after the tagstream.ImageUploaded v1 (schema id 1) body",
        ),
    ],
    ids=["empty", "short", "magic", "unknown-id", "truncated", "bad-utf8", "trailing"],
)
def test_bad_payload_raises_decode_error(data: bytes, reason: DecodeReason, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(data)

    assert caught.value.reason is reason
    assert message in str(caught.value)


def test_message_of_another_record_than_expected_is_refused() -> None:
    data = encode(TAG_SUGGESTIONS, tag_suggestions())

    with pytest.raises(DecodeError) as caught:
        decode(data, expected=IMAGE_UPLOADED)

    assert caught.value.reason is DecodeReason.UNEXPECTED_RECORD
    assert caught.value.schema_id == 5
    assert str(caught.value) == ("schema id 5 is tagstream.TagSuggestions v2, expected tagstream.ImageUploaded")


def test_expecting_an_unregistered_record_is_a_caller_bug_not_a_bad_message() -> None:
    with pytest.raises(SchemaError, match=re.escape(NOPE)) as c:
        decode(VALID, expected="tagstream.Nope")

    assert not isinstance(c.value, DecodeError)


def test_random_bytes_only_ever_raise_decode_error() -> None:
    rng = random.Random(20240517)
    outcomes = set()
    for _ in range(3000):
        body = rng.randbytes(rng.randrange(0, 80))
        for data in (body, VALID[:5] + body):
            try:
                decode(data)
            except DecodeError as exc:
                outcomes.add(exc.reason)

    # Bare random bytes almost never start with a 0x00 magic byte; behind a valid header they
    # exercise the Avro reader itself.
    assert {DecodeReason.BAD_MAGIC, DecodeReason.CORRUPT_BODY} <= outcomes


@pytest.mark.parametrize(
    ("record_name", "value", "message"),
    [
        (
            IMAGE_UPLOADED,
            {k: v for k, v in image_uploaded().items() if k != "upload_id"},
            "tagstream.ImageUploaded.upload_id: missing (expected string)",
        ),
        (
            IMAGE_UPLOADED,
            image_uploaded()
            | {
                "sources": [
                    {
                        "image_url": "https://x/1.jpg",
                        "tags": [
                            {
                                "product_id": "p",
                                "bbox": {"x": "12", "y": 0.0, "width": 1.0, "height": 1.0},
                            }
                        ],
                    }
                ]
            },
            "tagstream.BBox.x: got str '12' (expected double)",
        ),
        (
            TAG_SUGGESTIONS,
            tag_suggestions()
            | {
                "suggestions": [
                    {
                        "product_id": "p",
                        "found": False,
                        "confidence": 0.0,
                        "bbox": None,
                        "method": "none",
                    }
                ]
            },
            "tagstream.Suggestion.detected_class: missing (expected null | string)",
        ),
        (
            TAG_SUGGESTIONS,
            tag_suggestions() | {"detections_count": 2**31},
            "tagstream.TagSuggestions.detections_count: got int 2147483648 (expected int)",
        ),
        (
            IMAGE_UPLOADED,
            image_uploaded() | {"similarity_treshold": 0.5},
            "record contains more fields than the schema specifies: similarity_treshold",
        ),
        (
            DEAD_LETTER,
            dead_letter() | {"failed_at": datetime(2024, 5, 17, 9, 31)},
            "tagstream.DeadLetter.failed_at: naive datetime 2024-05-17T09:31:00",
        ),
    ],
    ids=["missing", "nested-type", "missing-nullable", "int-range", "unknown-field", "naive"],
)
def test_invalid_value_raises_encode_error_naming_the_field(
    record_name: str, value: dict[str, Any], message: str
) -> None:
    with pytest.raises(EncodeError) as caught:
        encode(record_name, value)

    assert message in str(caught.value)


def test_encoding_an_unregistered_record_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=re.escape(NOPE)) as c:
        encode("tagstream.Nope", {})

    assert not isinstance(c.value, EncodeError)
