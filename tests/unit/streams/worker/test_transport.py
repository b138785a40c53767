"""The worker's Faust consumer counts no ack for an event its stream skipped instead of handing it over."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust.streams
import pytest
from faust.events import Event
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.settings import Settings
from streams.worker.app import create_app

UPLOADS = "uploads"


@pytest.mark.parametrize("iterator", ["compiled", "pure Python"])
def test_an_event_skipped_as_of_an_older_consumer_generation_is_not_counted_done(
    iterator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event fetched before a rebalance (older generation) is skipped, to be read again from the committed offset.

    So its offset must not count as done, whichever of Faust's stream iterators runs: the
    compiled one never acks it, the pure-Python one does and the consumer refuses the ack.
    """
    if iterator == "pure Python":
        monkeypatch.setattr(faust.streams, "_CStreamIterator", None)
    elif faust.streams._CStreamIterator is None:
        pytest.fail("faust-streaming's compiled stream iterator is missing: the install differs from the image's")

    async def stream_one() -> tuple[list[bytes], list[int]]:
        app = create_app(Settings(cache_dir=tmp_path))
        consumer = app.consumer
        # What subscribing an acking stream to the topic records (Conductor._update_indices).
        app.topics._acking_topics.add(UPLOADS)  # type: ignore[attr-defined]
        app.flow_control.resume()
        channel = app.channel(maxsize=10)
        stream = channel.stream()
        old = ConsumerMessage(UPLOADS, 0, 0, 0.0, 0, None, None, b"old", None, generation_id=-1)
        new = ConsumerMessage(UPLOADS, 0, 1, 0.0, 0, None, None, b"new", None, generation_id=app.consumer_generation_id)
        for message in (old, new):
            message.incref(1)
            await channel.put(Event(app, None, message.value, None, message))
        handed: list[bytes] = []
        async for value in stream:
            handed.append(value)
            break
        return handed, list(consumer._acked[TP(UPLOADS, 0)])  # type: ignore[attr-defined]

    handed, acked = asyncio.run(asyncio.wait_for(stream_one(), 10))

    assert handed == [b"new"]
    assert 0 not in acked, "the skipped event's offset counts as done"
