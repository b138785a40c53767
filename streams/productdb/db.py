"""The product DB: where TagSuggestions events end up, idempotently, with their model lineage.

One class on top of the dialect layer (``streams.productdb.backends``), so PostgreSQL and SQLite run the
same SQL. A batch of events is one transaction: the sink commits its Kafka offsets only after
``write`` returns, so an event is either in the database or will be delivered again, and
``INSERT … ON CONFLICT DO NOTHING`` on the event's natural key makes the redelivery harmless.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from streams.productdb.backends import Backend, open_backend
from streams.productdb.migrations import MIGRATIONS, SCHEMA_VERSION_TABLE, Migration

log = logging.getLogger(__name__)

_INSERT_RUN = """
INSERT INTO suggestion_runs (event_id, upload_event_id, upload_id, model_version, detector, embedder,
                             processed_at, written_at, latency_ms, detections_count, attributes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING"""

_INSERT_TAG = """
INSERT INTO tag_suggestions (event_id, tag_index, product_id, found, confidence, bbox_x, bbox_y, bbox_width,
                             bbox_height, detected_class, method, error, copies)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""

_LINEAGE_COLUMNS = """
l.upload_id, l.product_id, l.found, l.confidence, l.bbox_x, l.bbox_y, l.bbox_width, l.bbox_height, l.detected_class,
l.method, l.error, l.model_version, l.detector, l.embedder, l.upload_event_id, l.event_id, l.processed_at,
l.written_at, s.copies"""

_FROM_LINEAGE = """
FROM suggestion_lineage l JOIN tag_suggestions s ON s.event_id = l.event_id AND s.tag_index = l.tag_index"""

# "Latest" is the most recently processed run of the upload: after a replay with a new model,
# that model's verdicts; its older runs stay in the table for --all-models and audits.
_SELECT_LATEST = f"""
SELECT {_LINEAGE_COLUMNS} {_FROM_LINEAGE}
WHERE l.upload_id = %s AND l.event_id = (
    SELECT event_id FROM suggestion_runs WHERE upload_id = %s ORDER BY processed_at DESC, written_at DESC LIMIT 1)
ORDER BY l.tag_index"""

_SELECT_ALL = f"""
SELECT {_LINEAGE_COLUMNS} {_FROM_LINEAGE}
WHERE l.upload_id = %s
ORDER BY l.processed_at DESC, l.event_id, l.tag_index"""


@dataclass(frozen=True)
class WriteResult:
    written: int
    """Events stored by this call."""
    duplicates: int
    """Events already stored (a redelivery, or a replay with the same model): nothing was written."""


@dataclass(frozen=True)
class StoredSuggestion:
    """One product's verdict for an upload, with the lineage of the run that produced it."""

    upload_id: str
    product_id: str
    found: bool
    confidence: float
    bbox: dict[str, float] | None
    detected_class: str | None
    method: str
    error: str | None
    model_version: str
    detector: str
    embedder: str
    upload_event_id: str
    event_id: str
    processed_at: datetime
    written_at: datetime
    # Further copies of the product in the uploaded photo: [{"bbox": {...}, "confidence": ...}, ...].
    copies: list[dict[str, Any]]

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["processed_at"] = self.processed_at.isoformat()
        record["written_at"] = self.written_at.isoformat()
        return record


class ProductDB:
    """Use ``async with ProductDB.open(url) as db``; call ``migrate`` once before writing."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    @classmethod
    def open(cls, url: str) -> ProductDB:
        return cls(open_backend(url))

    @property
    def data_errors(self) -> tuple[type[Exception], ...]:
        """Database errors that mean these rows can never be written; every other error may pass."""
        return self._backend.data_errors

    async def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> int:
        """Apply the pending migrations in one locked transaction; returns the schema version reached.

        Several sinks starting at once are safe: the transaction is exclusive (an advisory lock on
        PostgreSQL, an immediate write lock on SQLite), so the second one finds the work done.
        """
        types = self._backend.types
        async with self._backend.transaction("migrate") as tx:
            await tx.execute(SCHEMA_VERSION_TABLE.format(**types))
            [(current,)] = await tx.fetchall("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            known = max((m.version for m in migrations), default=0)
            if current > known:
                log.warning("database schema is v%d, newer than this code's v%d; continuing", current, known)
            for migration in sorted(migrations, key=lambda m: m.version):
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    await tx.execute(statement.format(**types))
                await tx.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (%s, %s, %s)",
                    (migration.version, migration.description, datetime.now(timezone.utc)),
                )
                log.info("product DB migrated to v%d: %s", migration.version, migration.description)
                current = migration.version
        return int(current)

    async def write(self, events: Sequence[Mapping[str, Any]]) -> WriteResult:
        """Store decoded TagSuggestions records in one transaction; already-stored events are skipped.

        Raises KeyError/TypeError/ValueError for a record that does not have the TagSuggestions
        shape, and the backend's errors for the database refusing it or being unreachable.
        """
        written_at = datetime.now(timezone.utc)
        written = duplicates = 0
        async with self._backend.transaction("write") as tx:
            tag_rows: list[tuple[Any, ...]] = []
            for event in events:
                if await tx.execute(_INSERT_RUN, _run_row(event, written_at)):
                    written += 1
                    tag_rows += _tag_rows(event)
                else:
                    duplicates += 1
            if tag_rows:
                await tx.executemany(_INSERT_TAG, tag_rows)
        return WriteResult(written, duplicates)

    async def suggestions(self, upload_id: str, all_models: bool = False) -> list[StoredSuggestion]:
        """The upload's latest run's suggestions, or every run's (newest first) with ``all_models``."""
        sql, params = (_SELECT_ALL, (upload_id,)) if all_models else (_SELECT_LATEST, (upload_id, upload_id))
        async with self._backend.transaction("read") as tx:
            rows = await tx.fetchall(sql, params)
        return [_stored(row) for row in rows]

    async def close(self) -> None:
        await self._backend.close()

    async def __aenter__(self) -> ProductDB:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _run_row(event: Mapping[str, Any], written_at: datetime) -> tuple[Any, ...]:
    model = event["model"]
    return (
        event["event_id"],
        event["upload_event_id"],
        event["upload_id"],
        model["version"],
        model["detector"],
        model["embedder"],
        event["processed_at"],
        written_at,
        float(event["latency_ms"]),
        int(event["detections_count"]),
        json.dumps(event.get("attributes") or {}, sort_keys=True),
    )


def _tag_rows(event: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    rows = []
    for index, suggestion in enumerate(event["suggestions"]):
        box = suggestion.get("bbox") or {}
        rows.append(
            (
                event["event_id"],
                index,
                suggestion["product_id"],
                bool(suggestion["found"]),
                float(suggestion["confidence"]),
                box.get("x"),
                box.get("y"),
                box.get("width"),
                box.get("height"),
                suggestion.get("detected_class"),
                suggestion["method"],
                suggestion.get("error"),
                json.dumps(suggestion.get("copies") or []),
            )
        )
    return rows


def _stored(row: tuple[Any, ...]) -> StoredSuggestion:
    (upload_id, product_id, found, confidence, x, y, width, height, detected_class, method, error) = row[:11]
    (model_version, detector, embedder, upload_event_id, event_id, processed_at, written_at, copies) = row[11:]
    bbox = None if x is None else {"x": x, "y": y, "width": width, "height": height}
    return StoredSuggestion(
        upload_id=upload_id,
        product_id=product_id,
        found=bool(found),
        confidence=confidence,
        bbox=bbox,
        detected_class=detected_class,
        method=method,
        error=error,
        model_version=model_version,
        detector=detector,
        embedder=embedder,
        upload_event_id=upload_event_id,
        event_id=event_id,
        processed_at=_utc(processed_at),
        written_at=_utc(written_at),
        # PostgreSQL's JSONB arrives decoded, SQLite's TEXT as written.
        copies=json.loads(copies) if isinstance(copies, str) else list(copies),
    )


def _utc(value: datetime | str) -> datetime:
    """PostgreSQL gives datetimes in the session's zone, SQLite the UTC text we stored."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(timezone.utc)
