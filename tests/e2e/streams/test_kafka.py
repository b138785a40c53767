"""Plain aiokafka helpers against a real embedded broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.broker import EmbeddedBroker
from streams.kafka import wait_for_broker


def test_wait_for_broker_retries_until_the_broker_comes_up(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "late-tansu.log")  # its port is chosen, nobody listens yet
    retries: list[float] = []

    async def scenario() -> None:
        waiting = asyncio.create_task(
            wait_for_broker(broker.url, lambda _error, delay_s: retries.append(delay_s), max_delay_s=1.0)
        )
        while len(retries) < 3:
            assert not waiting.done(), "returned while no broker was listening"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(waiting, timeout=30)

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()
    assert retries[:3] == [0.5, 1.0, 1.0]  # doubling, capped at max_delay_s
