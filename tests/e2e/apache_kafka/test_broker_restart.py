"""The Apache Kafka broker SIGKILLed mid-stream and restarted on its data: the worker resumes, nothing is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.apache_kafka import ApacheKafkaBroker
from support.processes import WorkerFactory
from support.reliability_report import report
from support.streams import collect, committed_offset, create_topics, wait_for
from support.traffic import PacedProducer, answered, uploads

from workbench.image_server import ImageServer

TRIVIAL = {"TAGSTREAM_PIPELINE_FACTORY": "support.pipelines.trivial:build", "TAGSTREAM_MAX_BATCH": "4"}


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[ApacheKafkaBroker]:
    with ApacheKafkaBroker(tmp_path / "kafka-data", log_path=tmp_path / "kafka.log") as broker:
        yield broker


def test_broker_killed_and_restarted_on_its_data_loses_nothing(
    durable_broker: ApacheKafkaBroker,
    cache_dir: Path,
    image_server: ImageServer,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    topic, suggestions = "restart.image-uploaded", "restart.tag-suggestions"
    create_topics(durable_broker, [topic, suggestions], partitions=2)
    workers = WorkerFactory(durable_broker, cache_dir, tmp_path)
    worker = workers.start("restart", "restart", **TRIVIAL)
    try:
        producer = PacedProducer(durable_broker, topic, uploads(image_server, "restart", 200), rate=8.0).start()
        # Mid-stream: the worker has answered and committed some uploads, more are on their way.
        wait_for(lambda: (committed_offset(durable_broker, "restart", topic) or 0) >= 40, timeout_s=120)
        committed = committed_offset(durable_broker, "restart", topic) or 0
        before = collect(durable_broker, suggestions, 1_000_000, timeout_s=3)
        durable_broker.kill()
        down_at = time.monotonic()
        time.sleep(8)  # longer than the worker's session timeout: its group is gone when the broker returns
        durable_broker.start()
        producer.join(timeout_s=180)
        wanted = {e["event_id"] for e in producer.sent}

        counts = answered(durable_broker, suggestions, wanted, timeout_s=240)
        alive = worker.process.poll() is None
    finally:
        for started in workers.started:
            started.stop()

    # Nothing committed that was not answered: an offset is committed only after its answer was
    # published (the answers were read after the offsets, so they can only be more).
    assert committed <= len({str(r["upload_event_id"]) for r in before})
    assert not wanted - set(counts), f"{len(wanted - set(counts))} uploads never answered"
    assert set(counts) == wanted
    assert alive, worker.output()[-3000:]  # it rode out the outage; no restart was needed
    report(
        tmp_path_factory,
        "Apache Kafka broker SIGKILLed mid-stream, restarted on its data after 8 s",
        len(wanted),
        len(counts),
        0,
        duplicates=sum(n - 1 for n in counts.values()),
        producer_retries=producer.retries,
        committed_before_kill=committed,
        seconds_down_to_done=round(time.monotonic() - down_at, 1),
        engine="kafka",
    )
