"""Avro schemas of the tagstream topics and the codec for their Kafka messages."""

from schemas.codec import AvroCodec, decode, encode
from schemas.errors import DecodeError, DecodeReason, EncodeError, SchemaError
from schemas.registry import (
    DEAD_LETTER,
    IMAGE_UPLOADED,
    TAG_SUGGESTIONS,
    Registry,
    SchemaVersion,
    builtin_registry,
)

__all__ = [
    "DEAD_LETTER",
    "IMAGE_UPLOADED",
    "TAG_SUGGESTIONS",
    "AvroCodec",
    "DecodeError",
    "DecodeReason",
    "EncodeError",
    "Registry",
    "SchemaError",
    "SchemaVersion",
    "builtin_registry",
    "decode",
    "encode",
]
