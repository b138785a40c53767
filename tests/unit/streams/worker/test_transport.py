"""The worker's Faust consumer counts an ack only for an event its stream handed over."""

from __future__ import annotations

import asyncio
from pathlib import Path

from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.settings import Settings
from streams.worker.app import create_app

UPLOADS = "uploads"


def _message(offset: int) -> ConsumerMessage:
    return ConsumerMessage(UPLOADS, 0, offset, 0.0, 0, None, None, b"{}", None)


def test_acks_of_events_the_stream_skipped_are_not_counted(tmp_path: Path) -> None:
    async def acks() -> tuple[bool, bool, list[int]]:
        consumer = create_app(Settings(cache_dir=tmp_path)).consumer
        # What subscribing an acking stream to the topic records (Conductor._update_indices).
        consumer.app.topics._acking_topics.add(UPLOADS)  # type: ignore[attr-defined]
        handed, skipped = _message(0), _message(1)
        handed.tracked = True  # what Stream.__aiter__ does to an event before handing it over
        return consumer.ack(handed), consumer.ack(skipped), list(consumer._acked[TP(UPLOADS, 0)])  # type: ignore[attr-defined]

    handed_counted, skipped_counted, acked = asyncio.run(acks())

    assert handed_counted is True
    assert skipped_counted is False
    assert acked == [0]
