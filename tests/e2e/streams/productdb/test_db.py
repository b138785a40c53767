"""The product DB on a real PostgreSQL (a fresh schema per test) and on SQLite: idempotency, lineage, migrations."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from streams.cli.main import main
from streams.events import suggestion_event_id
from streams.productdb.db import _INSERT_RUN, ProductDB, StoredSuggestion, _run_row, _tag_rows
from streams.productdb.migrations import MIGRATIONS


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path}/products.db"


def suggestion_event(upload_event_id: str, version: str, processed_at: datetime, found: bool = True) -> dict[str, Any]:
    """A decoded TagSuggestions record, as the sink gets it from the codec."""
    return {
        "event_id": suggestion_event_id(upload_event_id, version),
        "upload_event_id": upload_event_id,
        "upload_id": "upload-1",
        "processed_at": processed_at,
        "latency_ms": 120.0,
        "suggestions": [
            {
                "product_id": "sku-1",
                "found": found,
                "confidence": 0.9 if found else 0.2,
                "bbox": {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0} if found else None,
                "detected_class": "bottle" if found else None,
                "method": "geometric" if found else "none",
                "error": None,
            },
            {
                "product_id": "sku-2",
                "found": False,
                "confidence": 0.0,
                "bbox": None,
                "detected_class": None,
                "method": "invalid",
                "error": "bbox has non-positive size",
            },
        ],
        "detections_count": 4,
        "model": {"detector": f"yolo-{version}", "embedder": "clip", "version": version},
        "attributes": {"tenant": "acme"},
    }


T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _write_and_read(url: str, *batches: list[dict[str, Any]]) -> tuple[list[Any], list[StoredSuggestion]]:
    async with ProductDB.open(url) as db:
        await db.migrate()
        results = [await db.write(batch) for batch in batches]
        return results, await db.suggestions("upload-1", all_models=True)


def test_duplicate_delivery_writes_each_event_once(db_url: str) -> None:
    event = suggestion_event("upload-event-1", "v1", T0)

    results, stored = run(_write_and_read(db_url, [event, dict(event)], [event], [dict(event)]))

    assert [(r.written, r.duplicates) for r in results] == [(1, 1), (0, 1), (0, 1)]
    assert [(s.event_id, s.product_id) for s in stored] == [(event["event_id"], "sku-1"), (event["event_id"], "sku-2")]
    assert stored[0].bbox == {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0}
    assert stored[1].bbox is None and stored[1].error == "bbox has non-positive size"


def test_new_model_version_adds_rows_beside_the_old_ones(db_url: str) -> None:
    old = suggestion_event("upload-event-1", "v1", T0)
    new = suggestion_event("upload-event-1", "v2", T0 + timedelta(days=1), found=False)

    async def scenario() -> tuple[list[StoredSuggestion], list[StoredSuggestion], list[StoredSuggestion]]:
        async with ProductDB.open(db_url) as db:
            await db.migrate()
            await db.write([old])
            before = await db.suggestions("upload-1", all_models=True)
            await db.write([new, old])  # the replay, and a late redelivery of the old event
            return before, await db.suggestions("upload-1"), await db.suggestions("upload-1", all_models=True)

    before, latest, everything = run(scenario())

    assert {s.model_version for s in latest} == {"v2"}
    assert [s.found for s in latest] == [False, False]
    assert latest[0].event_id == suggestion_event_id("upload-event-1", "v2") != old["event_id"]
    assert latest[0].detector == "yolo-v2" and latest[0].upload_event_id == "upload-event-1"
    assert latest[0].processed_at == T0 + timedelta(days=1)
    assert everything[:2] == latest
    assert everything[2:] == before, "the old model's rows were changed"
    assert len(everything) == 4


async def _write_as_the_first_release(db: ProductDB, event: dict[str, Any]) -> None:
    """What a sink of the first release wrote: the columns of migration 1 only."""
    written_at = datetime.now(timezone.utc)
    async with db._backend.transaction("write") as tx:
        await tx.execute(_INSERT_RUN, _run_row(event, written_at))
        await tx.executemany(
            """INSERT INTO tag_suggestions (event_id, tag_index, product_id, found, confidence, bbox_x, bbox_y,
                                            bbox_width, bbox_height, detected_class, method, error)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            [row[:12] for row in _tag_rows(event)],
        )


def test_migrations_run_in_order_once_even_when_sinks_start_together(db_url: str) -> None:
    async def scenario() -> tuple[int, list[int], list[StoredSuggestion]]:
        async with ProductDB.open(db_url) as first:
            reached = await first.migrate(MIGRATIONS[:1])
            await _write_as_the_first_release(first, suggestion_event("upload-event-1", "v1", T0))
        databases = [ProductDB.open(db_url) for _ in range(3)]
        try:
            versions = list(await asyncio.gather(*(db.migrate() for db in databases)))
            return reached, versions, await databases[0].suggestions("upload-1")
        finally:
            for db in databases:
                await db.close()

    reached, versions, stored = run(scenario())

    assert reached == 1
    assert versions == [len(MIGRATIONS)] * 3
    assert [s.product_id for s in stored] == ["sku-1", "sku-2"], "rows written at v1 survive the upgrade"
    assert [s.copies for s in stored] == [[], []], "rows written before copies existed read as having none"


def test_a_sink_of_the_first_release_still_writes_to_a_migrated_database(db_url: str) -> None:
    """A rolling deploy: the old sink inserts without ``copies``; its rows read back with none."""

    async def scenario() -> list[StoredSuggestion]:
        async with ProductDB.open(db_url) as db:
            await db.migrate()
            await _write_as_the_first_release(db, suggestion_event("upload-event-1", "v1", T0))
            return await db.suggestions("upload-1")

    stored = run(scenario())

    assert [(s.product_id, s.copies) for s in stored] == [("sku-1", []), ("sku-2", [])]


def test_further_copies_of_a_product_are_stored_and_read_back(db_url: str) -> None:
    event = suggestion_event("upload-event-1", "v1", T0)
    copies = [
        {"bbox": {"x": 110.0, "y": 20.0, "width": 30.0, "height": 40.0}, "confidence": 0.97},
        {"bbox": {"x": 210.5, "y": 22.0, "width": 29.0, "height": 41.0}, "confidence": 0.81},
    ]
    event["suggestions"][0]["copies"] = copies
    event["suggestions"][1]["copies"] = []

    _, stored = run(_write_and_read(db_url, [event]))

    assert [s.copies for s in stored] == [copies, []]
    assert stored[0].as_record()["copies"] == copies


def test_postgres_refusal_is_a_data_error_not_a_retry(postgres_url: str) -> None:
    """What the sink dead-letters instead of retrying forever: rows PostgreSQL can never store."""
    poisoned = suggestion_event("upload-event-1", "v1", T0)
    poisoned["suggestions"][0]["product_id"] = "sku\x00nul"

    async def scenario() -> Exception:
        async with ProductDB.open(postgres_url) as db:
            await db.migrate()
            with pytest.raises(db.data_errors) as caught:
                await db.write([suggestion_event("upload-event-0", "v1", T0), poisoned])
            assert await db.suggestions("upload-1", all_models=True) == [], "the failed batch left rows behind"
            return caught.value

    assert "NUL" in str(run(scenario()))


def test_suggestions_command_prints_latest_or_all_models(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(
        _write_and_read(
            db_url,
            [suggestion_event("upload-event-1", "v1", T0)],
            [suggestion_event("upload-event-1", "v2", T0 + timedelta(hours=1))],
        )
    )

    def command(*argv: str) -> tuple[int, str]:
        status = main(["suggestions", *argv])
        return status, capsys.readouterr().out

    monkeypatch.setenv("TAGSTREAM_SINK__DB", db_url)
    status, latest = command("upload-1")
    _, everything = command("upload-1", "--all-models")
    _, table = command("upload-1", "--format", "table")
    missing, _ = command("no-such-upload")

    assert status == 0 and missing == 1
    assert [(r["model_version"], r["product_id"]) for r in map(json.loads, latest.splitlines())] == [
        ("v2", "sku-1"),
        ("v2", "sku-2"),
    ]
    assert [json.loads(line)["model_version"] for line in everything.splitlines()] == ["v2", "v2", "v1", "v1"]
    header, first, second = table.splitlines()
    assert header.split()[:4] == ["product_id", "found", "confidence", "method"]
    assert first.split()[:5] == ["sku-1", "True", "0.90", "geometric", "(10,20"]
    assert second.split()[:4] == ["sku-2", "False", "0.00", "invalid"]
