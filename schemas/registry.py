"""A local stand-in for a schema registry: stable integer ids for every schema version.

Every message carries the id of the schema it was written with, so ids are part of the data:
never renumber or reuse one. A new version of a record is a new ``.avsc`` file with a new id,
appended to ``_BUILTIN`` (the order there sets each record's version numbers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final, cast

import fastavro
from fastavro.types import DictSchema

from schemas.errors import SchemaError

IMAGE_UPLOADED: Final = "tagstream.ImageUploaded"
TAG_SUGGESTIONS: Final = "tagstream.TagSuggestions"
DEAD_LETTER: Final = "tagstream.DeadLetter"

# Confluent's wire format reads the id as a signed 32-bit int; staying inside it keeps the
# messages readable by Confluent tooling should a real registry replace this one.
_MAX_SCHEMA_ID: Final = 2**31 - 1

_BUILTIN: Final = (
    (1, "image_uploaded.v1.avsc"),
    (2, "tag_suggestions.v1.avsc"),
    (3, "dead_letter.v1.avsc"),
    (4, "dead_letter.v2.avsc"),
    (5, "tag_suggestions.v2.avsc"),
)


@dataclass(frozen=True)
class SchemaVersion:
    """One registered schema; ``version`` counts from 1 per record name, in registration order."""

    schema_id: int
    name: str
    version: int
    schema: DictSchema


class Registry:
    """Schema versions by id, and the latest version of each record name."""

    def __init__(self) -> None:
        self._by_id: dict[int, SchemaVersion] = {}
        self._latest: dict[str, SchemaVersion] = {}

    def register(self, schema_id: int, schema: Mapping[str, Any]) -> SchemaVersion:
        """Add a record schema as the newest version of its (namespace-qualified) name."""
        if not 1 <= schema_id <= _MAX_SCHEMA_ID:
            raise SchemaError(f"schema id {schema_id} is outside 1..{_MAX_SCHEMA_ID}")
        if schema_id in self._by_id:
            taken = self._by_id[schema_id]
            raise SchemaError(f"schema id {schema_id} is already {taken.name} v{taken.version}")
        if schema.get("type") != "record":
            raise SchemaError(f"schema id {schema_id}: only record schemas can be registered")
        try:
            # A record schema always parses to a dict.
            parsed = cast(DictSchema, fastavro.parse_schema(dict(schema)))
        except Exception as exc:  # fastavro reports bad schemas with several unrelated types
            raise SchemaError(f"schema id {schema_id}: invalid Avro schema: {exc}") from exc
        name: str = parsed["name"]
        previous = self._latest.get(name)
        entry = SchemaVersion(
            schema_id=schema_id,
            name=name,
            version=previous.version + 1 if previous else 1,
            schema=parsed,
        )
        self._by_id[schema_id] = entry
        self._latest[name] = entry
        return entry

    def get(self, schema_id: int) -> SchemaVersion | None:
        """None rather than an exception: an unknown id usually comes from bad input, not a bug."""
        return self._by_id.get(schema_id)

    def version(self, name: str, version: int) -> SchemaVersion:
        """Version ``version`` (from 1) of record ``name``."""
        for entry in self._by_id.values():
            if entry.name == name and entry.version == version:
                return entry
        raise SchemaError(f"{name} has no version {version} (latest: {self.latest(name).version})")

    def latest(self, name: str) -> SchemaVersion:
        try:
            return self._latest[name]
        except KeyError:
            raise SchemaError(f"no schema registered for record {name!r}") from None


def builtin_registry() -> Registry:
    """A fresh registry holding the schemas shipped in this package.

    Fresh on every call so that a caller (or a test) registering extra versions cannot change
    what every other codec in the process reads and writes.
    """
    registry = Registry()
    package = files("schemas")
    for schema_id, filename in _BUILTIN:
        registry.register(schema_id, json.loads(package.joinpath(filename).read_text("utf-8")))
    return registry
