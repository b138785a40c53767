"""Paced producing and exact accounting per upload, for the tests of scale-out and broker failures."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError

from streams.kafka import UploadProducer
from support.brokers import Broker
from support.streams import collect
from workbench.image_server import ImageServer


def uploads(server: ImageServer, prefix: str, count: int) -> list[dict[str, Any]]:
    """Uploads of a served photo without sources: the model-free pipeline answers each at once."""
    target = server.url("upload-01.png")
    return [{"upload_id": f"{prefix}-{i}", "target_image_url": target, "sources": []} for i in range(count)]


@dataclass
class PacedProducer:
    """Sends ``records`` at ``rate`` per second from a thread, as a backend would, retrying through outages.

    ``sent`` holds the completed events once the broker acknowledged them. A send that fails (the
    broker is down) is retried with the same ``event_id``, so a retry never counts as a new upload.
    """

    broker: Broker
    topic: str
    records: list[dict[str, Any]]
    rate: float
    sent: list[dict[str, Any]] = field(default_factory=list)
    retries: int = 0
    _thread: threading.Thread | None = None

    def start(self) -> PacedProducer:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    async def _run(self) -> None:
        async with UploadProducer(self.broker.url, self.topic) as producer:
            start = time.monotonic()
            for index, record in enumerate(self.records):
                await asyncio.sleep(max(0.0, start + index / self.rate - time.monotonic()))
                event = {"event_id": str(uuid.uuid4()), **record}
                while True:
                    try:
                        self.sent.append(await producer.send(event))
                        break
                    except KafkaError:
                        self.retries += 1
                        await asyncio.sleep(0.5)

    def join(self, timeout_s: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"producer still sending after {timeout_s:g}s ({len(self.sent)} sent)"


def answered(broker: Broker, topic: str, wanted: set[str], timeout_s: float) -> Counter[str]:
    """How many suggestions each upload event got, read until every one of ``wanted`` has one (or time is up)."""
    deadline = time.monotonic() + timeout_s
    counts: Counter[str] = Counter()
    while time.monotonic() < deadline:
        counts = Counter(str(r["upload_event_id"]) for r in collect(broker, topic, 1_000_000, timeout_s=5))
        if wanted <= set(counts):
            break
    return counts
