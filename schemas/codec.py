"""Avro messages in Confluent's wire format: ``0x00``, a 4-byte big-endian schema id, the body.

The body is a schemaless Avro record written with the schema the id names. On decode it is
resolved into the *reader* schema (the version this code speaks), which is what lets producers
and consumers move to a new schema version independently, as long as the change is compatible
(e.g. a new field with a default).

Values are plain dicts. Timestamps (``timestamp-millis``) encode from timezone-aware
``datetime`` or from epoch milliseconds, and decode to UTC-aware ``datetime`` truncated to the
millisecond. Naive datetimes are refused: fastavro would take them as the host's local time,
silently shifting them by the host's UTC offset.
"""

from __future__ import annotations

import functools
import io
import reprlib
import struct
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import fastavro
from fastavro import _validation_py
from fastavro.read import SchemaResolutionError
from fastavro.types import Schema
from fastavro.validation import ValidationError

from schemas.errors import DecodeError, DecodeReason, EncodeError, SchemaError
from schemas.registry import Registry, SchemaVersion, builtin_registry

MAGIC_BYTE: Final = 0
_HEADER: Final = struct.Struct(">BI")


class AvroCodec:
    """Encodes and decodes the records of one registry.

    ``pinned`` maps record names to the schema id this codec writes and reads into, instead of
    the latest registered version. It allows a new version to be registered everywhere first
    (so its messages can be read) and switched to later.
    """

    def __init__(self, registry: Registry, *, pinned: Mapping[str, int] | None = None) -> None:
        self._registry = registry
        self._pinned = dict(pinned or {})
        for name, schema_id in self._pinned.items():
            entry = registry.get(schema_id)
            if entry is None or entry.name != name:
                raise SchemaError(f"cannot pin {name} to schema id {schema_id}: not one of its versions")

    def current(self, name: str) -> SchemaVersion:
        """The version of ``name`` this codec writes, and reads every version of ``name`` into."""
        schema_id = self._pinned.get(name)
        if schema_id is None:
            return self._registry.latest(name)
        entry = self._registry.get(schema_id)
        assert entry is not None  # checked in __init__, and registries never forget an id
        return entry

    def encode(self, record_name: str, value: Mapping[str, Any]) -> bytes:
        """Raises EncodeError naming the field when ``value`` does not fit the current schema."""
        writer = self.current(record_name)
        _check_no_naive_datetime(value, record_name)
        try:
            # fastavro's compiled validator only blames the top-level record; the pure-Python
            # one names the innermost field at fault, which is what the error message needs.
            _validation_py.validate(value, writer.schema, strict=True, disable_tuple_notation=True)
        except ValidationError as exc:
            raise EncodeError(_describe_validation_error(exc)) from exc
        body = io.BytesIO()
        body.write(_HEADER.pack(MAGIC_BYTE, writer.schema_id))
        try:
            # strict_allow_default: refuse fields the schema does not have, which fastavro
            # would otherwise drop silently (a typo in an optional field name would go unseen).
            fastavro.schemaless_writer(
                body, writer.schema, value, strict_allow_default=True, disable_tuple_notation=True
            )
        except ValueError as exc:
            raise EncodeError(f"{record_name}: {exc}") from exc
        return body.getvalue()

    def decode(self, data: bytes, expected: str | None = None) -> dict[str, Any]:
        """Raises DecodeError when ``data`` is not a whole message of ``expected`` (if given).

        An ``expected`` name that is not registered at all raises a plain SchemaError: that is
        a bug in the caller, not a bad message.
        """
        reader = None if expected is None else self.current(expected)
        if len(data) < _HEADER.size:
            raise DecodeError(
                DecodeReason.TOO_SHORT,
                f"payload is {len(data)} bytes; a message needs at least {_HEADER.size} (magic byte and schema id)",
            )
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise DecodeError(DecodeReason.BAD_MAGIC, f"magic byte is 0x{magic:02x}, expected 0x{MAGIC_BYTE:02x}")
        writer = self._registry.get(schema_id)
        if writer is None:
            raise DecodeError(DecodeReason.UNKNOWN_SCHEMA_ID, f"unknown schema id {schema_id}", schema_id)
        if reader is not None and writer.name != reader.name:
            raise DecodeError(
                DecodeReason.UNEXPECTED_RECORD,
                f"schema id {schema_id} is {writer.name} v{writer.version}, expected {reader.name}",
                schema_id,
            )
        return _read_body(data, writer, reader or self.current(writer.name))


def _read_body(data: bytes, writer: SchemaVersion, reader: SchemaVersion) -> dict[str, Any]:
    where = f"{writer.name} v{writer.version} (schema id {writer.schema_id})"
    body = io.BytesIO(data)
    body.seek(_HEADER.size)
    try:
        value = fastavro.schemaless_reader(body, writer.schema, reader.schema)
    except SchemaResolutionError as exc:
        raise DecodeError(
            DecodeReason.INCOMPATIBLE_SCHEMA,
            f"{where} cannot be read as v{reader.version}: {exc}",
            writer.schema_id,
        ) from exc
    except Exception as exc:
        # Malformed bytes surface from fastavro as whatever failed first (fuzzing gives
        # EOFError, UnicodeDecodeError, IndexError, OverflowError); all mean the same here.
        raise DecodeError(
            DecodeReason.CORRUPT_BODY,
            f"corrupt or truncated {where} body: {type(exc).__name__}: {exc}",
            writer.schema_id,
        ) from exc
    trailing = len(data) - body.tell()
    if trailing:
        raise DecodeError(
            DecodeReason.TRAILING_BYTES,
            f"{trailing} unread bytes after the {where} body",
            writer.schema_id,
        )
    assert isinstance(value, dict)  # the registry holds record schemas only
    return value


def _describe_validation_error(exc: ValidationError) -> str:
    """One line per bad field, without fastavro's dump of the whole parsed schema."""
    lines = []
    for error in exc.errors:
        if error.datum is _validation_py.NoValue:
            lines.append(f"{error.field}: missing (expected {_type_name(error.schema)})")
        else:
            lines.append(
                f"{error.field}: got {type(error.datum).__name__} {reprlib.repr(error.datum)} "
                f"(expected {_type_name(error.schema)})"
            )
    return "; ".join(lines)


def _type_name(schema: Schema) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return " | ".join(_type_name(branch) for branch in schema)
    if "logicalType" in schema:
        return f"{schema['type']} ({schema['logicalType']})"
    if schema["type"] == "array":
        return f"array<{_type_name(schema['items'])}>"
    if schema["type"] == "map":
        return f"map<{_type_name(schema['values'])}>"
    return str(schema.get("name", schema["type"]))


def _check_no_naive_datetime(value: object, path: str) -> None:
    if isinstance(value, datetime) and value.tzinfo is None:
        raise EncodeError(f"{path}: naive datetime {value.isoformat()}; attach a time zone")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_no_naive_datetime(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_no_naive_datetime(item, f"{path}[{index}]")


@functools.cache
def _default_codec() -> AvroCodec:
    return AvroCodec(builtin_registry())


def encode(record_name: str, value: Mapping[str, Any]) -> bytes:
    """Encode with the package's own schemas, at their latest versions."""
    return _default_codec().encode(record_name, value)


def decode(data: bytes, expected: str | None = None) -> dict[str, Any]:
    """Decode with the package's own schemas, at their latest versions."""
    return _default_codec().decode(data, expected)
