"""The product DB's schema as ordered migrations, applied at sink start and recorded in ``schema_version``.

Rules for new steps: append, never edit a released step (databases out there already ran it),
and keep each step additive (new tables, columns with defaults, indexes, views) so sinks of the
previous release keep working against a migrated database during a rolling deploy.
``{timestamp}`` and ``{json}`` are replaced by the dialect's column types.

Idempotency lives in the keys: ``suggestion_runs.event_id`` is the TagSuggestions event id,
uuid5(upload event id, model version), and ``(upload_event_id, model_version)`` is unique as
well, so a redelivered or replayed event with the same model can never add a row, while a new
model version adds its run beside the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at {timestamp} NOT NULL
)"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "suggestion runs (one per TagSuggestions event, with model lineage) and their tag suggestions",
        (
            """
            CREATE TABLE suggestion_runs (
                event_id TEXT PRIMARY KEY,
                upload_event_id TEXT NOT NULL,
                upload_id TEXT NOT NULL,
                model_version TEXT NOT NULL,
                detector TEXT NOT NULL,
                embedder TEXT NOT NULL,
                processed_at {timestamp} NOT NULL,
                written_at {timestamp} NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                detections_count INTEGER NOT NULL,
                attributes {json} NOT NULL,
                CONSTRAINT suggestion_runs_one_per_model UNIQUE (upload_event_id, model_version)
            )""",
            "CREATE INDEX suggestion_runs_by_upload ON suggestion_runs (upload_id, processed_at)",
            """
            CREATE TABLE tag_suggestions (
                event_id TEXT NOT NULL REFERENCES suggestion_runs (event_id) ON DELETE CASCADE,
                tag_index INTEGER NOT NULL,
                product_id TEXT NOT NULL,
                found BOOLEAN NOT NULL,
                confidence DOUBLE PRECISION NOT NULL,
                bbox_x DOUBLE PRECISION,
                bbox_y DOUBLE PRECISION,
                bbox_width DOUBLE PRECISION,
                bbox_height DOUBLE PRECISION,
                detected_class TEXT,
                method TEXT NOT NULL,
                error TEXT,
                PRIMARY KEY (event_id, tag_index)
            )""",
        ),
    ),
    Migration(
        2,
        "suggestion_lineage view (each suggestion with its run's lineage) and an index by product",
        (
            "CREATE INDEX tag_suggestions_by_product ON tag_suggestions (product_id)",
            """
            CREATE VIEW suggestion_lineage AS
            SELECT r.upload_id, s.tag_index, s.product_id, s.found, s.confidence,
                   s.bbox_x, s.bbox_y, s.bbox_width, s.bbox_height, s.detected_class, s.method, s.error,
                   r.model_version, r.detector, r.embedder, r.upload_event_id, r.event_id,
                   r.processed_at, r.written_at
            FROM tag_suggestions s JOIN suggestion_runs r ON r.event_id = s.event_id""",
        ),
    ),
    # The view is left as it is: replacing it would fail on PostgreSQL wherever a user built a
    # view on it. Readers join the column by (event_id, tag_index).
    Migration(
        3,
        "further copies of a found product in tag_suggestions (a JSON list of {bbox, confidence})",
        ("ALTER TABLE tag_suggestions ADD COLUMN copies {json} NOT NULL DEFAULT '[]'",),
    ),
)
