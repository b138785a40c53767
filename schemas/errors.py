"""Exceptions of the schemas package.

Two families on purpose: ``DecodeError`` means the *bytes* are bad (a consumer dead-letters
the message and moves on), while a plain ``SchemaError`` or ``EncodeError`` means *our code or
configuration* is wrong (an unknown record name, an invalid value), which retrying or
dead-lettering would not fix.
"""

from __future__ import annotations

from enum import Enum


class SchemaError(Exception):
    """A schema, record name or schema id that the registry cannot accept or find."""


class EncodeError(SchemaError):
    """A value that does not match its writer schema; the message names the offending field."""


class DecodeReason(str, Enum):
    """Why a payload could not be decoded; a ``str`` so it can go straight into logs and metrics."""

    TOO_SHORT = "too_short"
    BAD_MAGIC = "bad_magic"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
    UNEXPECTED_RECORD = "unexpected_record"
    INCOMPATIBLE_SCHEMA = "incompatible_schema"
    CORRUPT_BODY = "corrupt_body"
    TRAILING_BYTES = "trailing_bytes"


class DecodeError(SchemaError):
    """A payload that is not a well-formed message of a known, expected schema."""

    def __init__(self, reason: DecodeReason, message: str, schema_id: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.schema_id = schema_id
