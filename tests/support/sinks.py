"""The product-database sink as a process, and what it stored: for the sink's tests and the broker-failure tests."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams.productdb.db import ProductDB, StoredSuggestion
from support.brokers import Broker
from support.processes import WorkerProcess, start_cli
from support.streams import create_topics


@dataclass(frozen=True)
class Topics:
    uploads: str
    suggestions: str
    dead_letters: str
    sink_dead_letters: str
    sink_group: str

    @classmethod
    def create(cls, broker: Broker, name: str) -> Topics:
        """Fresh topics of one partition each, created up front as in production (no auto-creation race)."""
        prefix = f"{name}-{uuid.uuid4().hex[:8]}"
        topics = cls(
            f"{prefix}.image-uploaded",
            f"{prefix}.tag-suggestions",
            f"{prefix}.image-uploaded.dlq",
            f"{prefix}.tag-suggestions.dlq",
            f"{prefix}-sink",
        )

        create_topics(broker, [topics.uploads, topics.suggestions, topics.dead_letters, topics.sink_dead_letters])
        return topics


class SinkFactory:
    def __init__(self, broker: Broker, log_dir: Path) -> None:
        self._broker = broker
        self._log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(self, topics: Topics, db_url: str) -> WorkerProcess:
        log = self._log_dir / f"sink-{len(self.started)}.log"
        environment = {
            **os.environ,
            "TAGSTREAM_BROKER": self._broker.url,
            "TAGSTREAM_SESSION_TIMEOUT_S": "6",
            "TAGSTREAM_TOPICS__SUGGESTIONS": topics.suggestions,
            "TAGSTREAM_SINK__DB": db_url,
            "TAGSTREAM_SINK__GROUP_ID": topics.sink_group,
            "TAGSTREAM_SINK__DEAD_LETTERS": topics.sink_dead_letters,
        }
        sink = start_cli("sink", environment, log)
        self.started.append(sink)
        return sink


def stored(db_url: str, upload_ids: list[str]) -> dict[str, list[StoredSuggestion]]:
    async def query() -> dict[str, list[StoredSuggestion]]:
        async with ProductDB.open(db_url) as db:
            return {u: await db.suggestions(u, all_models=True) for u in upload_ids}

    return asyncio.run(query())


def migrate(db_url: str) -> None:
    async def run() -> None:
        async with ProductDB.open(db_url) as db:
            await db.migrate()

    asyncio.run(run())
