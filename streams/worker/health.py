"""What the worker tells an operator: whether it can do its job right now, and how far behind it is.

``/ready`` must turn false whenever the worker cannot answer uploads, not only while it starts:
when the broker is unreachable (killed, frozen, partitioned), when events wait but nothing
moves (a stalled agent), and when the models failed to load. A load balancer or an
orchestrator acts on it, so every "false" comes with its reason.

The checks run on a timer (``probe_interval_s``), off the request path: ``/ready`` and
``/metrics`` read the last verdict, so a scrape never waits on an unreachable broker.

Consumer lag is what Kafka tools call lag: the log end offset minus the group's committed
offset, per assigned partition. The consumer's fetch position would not do: Faust fetches
ahead into its buffers, so with events waiting (even with the agent stuck) it reads 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from streams.kafka import bootstrap_servers
from streams.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Kept by the suggest agent: events in hand, and when the stream last moved."""

    in_flight: int = 0
    last_moved: float = field(default_factory=time.monotonic)

    def taken(self, events: int) -> None:
        self.in_flight += events
        self.last_moved = time.monotonic()

    def answered(self) -> None:
        self.in_flight -= 1
        self.last_moved = time.monotonic()

    def dropped(self, events: int) -> None:
        """Events let go unanswered (a batch cancelled at a shutdown, or one that failed): they come again."""
        self.in_flight -= events


class BrokerProbe:
    """A consumer of its own, in no group's membership, that asks the broker what the worker cannot.

    It reads cluster metadata (is the broker there?), log end offsets and the worker group's
    committed offsets. Built lazily and rebuilt after a failure, so a broker that was down
    when the worker started is found once it is back.
    """

    def __init__(self, broker: str, group_id: str, timeout_s: float) -> None:
        self._servers = bootstrap_servers(broker)
        self._group_id = group_id
        self._timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None

    async def reachable(self) -> None:
        """Returns once the broker answered a metadata request; raises (or times out) otherwise."""
        consumer = await self._connected()
        try:
            await asyncio.wait_for(consumer.topics(), self._timeout_s)
        except BaseException:
            await self.close()
            raise

    async def lag(self, highwaters: Mapping[TP, int | None]) -> dict[TP, int]:
        """End offset minus committed offset for each partition (from the beginning if nothing is committed)."""
        consumer = await self._connected()
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in highwaters]
        ends = await asyncio.wait_for(consumer.end_offsets(partitions), self._timeout_s)
        starts: dict[TopicPartition, int] = {}
        lag: dict[TP, int] = {}
        for tp, partition in zip(highwaters, partitions, strict=True):
            committed = await asyncio.wait_for(consumer.committed(partition), self._timeout_s)
            if committed is None:
                starts = starts or await asyncio.wait_for(consumer.beginning_offsets(partitions), self._timeout_s)
                committed = starts[partition]
            # Some brokers (Tansu) under-report the end offset; the fetch high watermark does not.
            end = max(ends.get(partition, 0), highwaters[tp] or 0)
            lag[tp] = max(end - committed, 0)
        return lag

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _connected(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._servers,
                group_id=self._group_id,
                enable_auto_commit=False,
                request_timeout_ms=max(int(self._timeout_s * 1000), 1000),
            )
            try:
                await asyncio.wait_for(consumer.start(), self._timeout_s)
            except BaseException:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer


class Health:
    """The worker's readiness, refreshed by :meth:`refresh` on a timer; ``report`` is what ``/ready`` says."""

    def __init__(
        self,
        app: faust.App,
        probe: BrokerProbe,
        progress: Progress,
        metrics: Metrics,
        models: Callable[[], tuple[bool, str | None]],
        stall_timeout_s: float,
        probe_interval_s: float,
    ) -> None:
        self._app = app
        self._probe = probe
        self._progress = progress
        self._metrics = metrics
        self._models = models
        self._stall_timeout_s = stall_timeout_s
        self._probe_interval_s = probe_interval_s
        self._assigned = False
        self._broker_ok_at: float | None = None
        self._broker_error: str | None = "not checked yet"
        self._lag: dict[TP, int] = {}
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)

    def _on_revoked(self, *args: Any, **kwargs: Any) -> None:
        self._assigned = False

    def _on_assigned(self, *args: Any, **kwargs: Any) -> None:
        self._assigned = True

    async def refresh(self) -> None:
        """Probe the broker and the group's lag, and export the lag; never raises."""
        try:
            await self._probe.reachable()
        except Exception as exc:
            self._broker_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return
        self._broker_ok_at, self._broker_error = time.monotonic(), None
        try:
            consumer = self._app.consumer
            highwaters = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
            self._lag = await self._probe.lag(highwaters)
        except Exception as exc:  # the assignment changed under us, or the broker left mid-probe
            log.debug("consumer lag not refreshed: %r", exc)
            return
        self._metrics.set_consumer_lag(self._lag)

    async def close(self) -> None:
        await self._probe.close()

    def report(self) -> dict[str, Any]:
        now = time.monotonic()
        models_loaded, models_error = self._models()
        assigned = self._assigned and not self._app.should_stop
        # Missing two probes in a row is as bad as a failed one: the probe itself is stuck.
        fresh = self._broker_ok_at is not None and now - self._broker_ok_at <= 2.5 * self._probe_interval_s + 1.0
        broker_reachable = self._broker_error is None and fresh
        waiting = self._progress.in_flight + sum(self._lag.values())
        idle_s = now - self._progress.last_moved
        consuming = waiting == 0 or idle_s <= self._stall_timeout_s
        problems = []
        if not models_loaded:
            problems.append(f"models not loaded: {models_error}" if models_error else "models are loading")
        if not broker_reachable:
            problems.append(f"broker unreachable: {self._broker_error or 'no answer to the last probes'}")
        if not assigned:
            problems.append("no settled partition assignment (joining, rebalancing or stopping)")
        if not consuming:
            problems.append(f"stalled: {waiting} events waiting and nothing moved for {idle_s:.0f} s")
        partitions = sorted(f"{tp.topic}[{tp.partition}]" for tp in self._app.consumer.assignment()) if assigned else []
        return {
            "ready": not problems,
            "models_loaded": models_loaded,
            "consumer_assigned": assigned,
            "broker_reachable": broker_reachable,
            "consuming": consuming,
            "partitions": partitions,
            "lag": {f"{tp.topic}[{tp.partition}]": n for tp, n in sorted(self._lag.items())},
            "problems": problems,
        }
