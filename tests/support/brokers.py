"""The broker the tests run on: the embedded Tansu (default) or Apache Kafka (``TAGSTREAM_TEST_BROKER=kafka``).

Both offer the same surface (``url``, ``bootstrap``, ``start``, ``stop``, ``pause``, ``resume``),
so every end-to-end, fault and reliability test runs on either. Tests that need what only a
durable broker offers (a restart on its data, a cluster) use :class:`ApacheKafkaBroker` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from streams.broker import BrokerProcess, EmbeddedBroker
from support.apache_kafka import ApacheKafkaBroker

ENGINES = ("tansu", "kafka")
Broker = BrokerProcess


def engine() -> str:
    """The engine this run uses, from ``TAGSTREAM_TEST_BROKER`` (default ``tansu``)."""
    chosen = os.environ.get("TAGSTREAM_TEST_BROKER", "tansu")
    if chosen not in ENGINES:
        raise ValueError(f"TAGSTREAM_TEST_BROKER={chosen!r}: expected one of {', '.join(ENGINES)}")
    return chosen


def new_broker(directory: Path, name: str = "broker") -> Broker:
    """A broker of this run's engine, not started; its data and log go under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if engine() == "kafka":
        return ApacheKafkaBroker(directory / f"{name}-data", log_path=directory / f"{name}-kafka.log")
    return EmbeddedBroker(log_path=directory / f"{name}-tansu.log")
