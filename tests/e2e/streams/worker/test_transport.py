"""The worker's Faust consumer fetches with the configured wait, not faust-streaming's fixed 1.5 s."""

from __future__ import annotations

import asyncio

from support.brokers import Broker

from streams.settings import Settings
from streams.worker.app import create_app
from streams.worker.transport import FetchWaitTransport


def test_the_worker_consumer_fetches_with_the_configured_wait(broker: Broker) -> None:
    async def fetcher_wait_ms() -> int:
        app = create_app(Settings(broker=broker.url, app_id="fetch-wait-test", fetch_wait_s=0.04))
        assert isinstance(app.transport, FetchWaitTransport)
        # The aiokafka consumer Faust's consumer thread builds for a worker, started for real:
        # its fetcher is what sends fetch requests with this wait.
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
        await consumer.start()
        try:
            return int(consumer._fetcher._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(fetcher_wait_ms()) == 40
