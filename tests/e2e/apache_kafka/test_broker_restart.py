"""The Apache Kafka broker SIGKILLed mid-stream and restarted on its data: worker and sink resume, nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.apache_kafka import ApacheKafkaBroker
from support.processes import WorkerFactory
from support.reliability_report import report
from support.sinks import SinkFactory, Topics, migrate
from support.streams import collect, committed_offset, create_topics, wait_for
from support.traffic import PacedProducer, answered, uploads

from streams.kafka import produce_uploads
from workbench.image_server import ImageServer

TRIVIAL = {"TAGSTREAM_PIPELINE_FACTORY": "support.pipelines.trivial:build", "TAGSTREAM_MAX_BATCH": "4"}


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[ApacheKafkaBroker]:
    with ApacheKafkaBroker(tmp_path / "kafka-data", log_path=tmp_path / "kafka.log") as broker:
        yield broker


def _stored_runs(db_url: str) -> Counter[str]:
    """Suggestion runs in the product database, counted per upload event."""
    with psycopg.connect(db_url) as connection:
        return Counter(str(row[0]) for row in connection.execute("SELECT upload_event_id FROM suggestion_runs"))


def test_broker_killed_and_restarted_on_its_data_loses_nothing(
    durable_broker: ApacheKafkaBroker,
    cache_dir: Path,
    postgres_url: str,
    image_server: ImageServer,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    topics = Topics(
        "restart.image-uploaded",
        "restart.tag-suggestions",
        "restart.image-uploaded.dlq",
        "restart.tag-suggestions.dlq",
        "restart-sink",
    )
    topic, suggestions = topics.uploads, topics.suggestions
    create_topics(durable_broker, [topic, suggestions], partitions=2)
    migrate(postgres_url)
    workers = WorkerFactory(durable_broker, cache_dir, tmp_path)
    sinks = SinkFactory(durable_broker, tmp_path)
    worker = workers.start("restart", "restart", **TRIVIAL)
    sink = sinks.start(topics, postgres_url)
    try:
        # The worker is up and committing before the paced stream starts, so the kill is mid-stream.
        warm_up = asyncio.run(produce_uploads(durable_broker.url, topic, uploads(image_server, "warm", 10)))
        wait_for(lambda: (committed_offset(durable_broker, "restart", topic) or 0) >= 10, timeout_s=180)
        producer = PacedProducer(durable_broker, topic, uploads(image_server, "restart", 200), rate=8.0).start()
        # Mid-stream: the worker has answered and committed some uploads, most are still to come.
        wait_for(lambda: (committed_offset(durable_broker, "restart", topic) or 0) >= 50, timeout_s=120)
        committed = committed_offset(durable_broker, "restart", topic) or 0
        before = collect(durable_broker, suggestions, 1_000_000, timeout_s=3)
        sent_before_kill = len(warm_up) + len(producer.sent)
        durable_broker.kill()
        down_at = time.monotonic()
        time.sleep(8)  # longer than the worker's session timeout: its group is gone when the broker returns
        durable_broker.start()
        producer.join(timeout_s=180)
        wanted = {e["event_id"] for e in [*warm_up, *producer.sent]}

        counts = answered(durable_broker, suggestions, wanted, timeout_s=240)
        wait_for(lambda: wanted <= set(_stored_runs(postgres_url)), timeout_s=120)
        runs = _stored_runs(postgres_url)
        alive = worker.process.poll() is None and sink.process.poll() is None
    finally:
        for started in [*workers.started, *sinks.started]:
            started.stop()

    # Nothing committed that was not answered: an offset is committed only after its answer was
    # published (the answers were read after the offsets, so they can only be more).
    assert committed <= len({str(r["upload_event_id"]) for r in before})
    assert not wanted - set(counts), f"{len(wanted - set(counts))} uploads never answered"
    assert set(counts) == wanted
    assert alive, worker.output()[-3000:] + sink.output()[-3000:]  # both rode out the outage, no restart
    # The sink resumed too: every upload's suggestion run is in the product database, once.
    assert set(runs) == wanted and set(runs.values()) == {1}
    report(
        tmp_path_factory,
        "Apache Kafka broker SIGKILLed mid-stream, restarted on its data after 8 s (worker and sink)",
        len(wanted),
        len(counts),
        0,
        duplicates=sum(n - 1 for n in counts.values()),
        producer_retries=producer.retries,
        committed_before_kill=committed,
        sent_before_kill=sent_before_kill,
        seconds_down_to_done=round(time.monotonic() - down_at, 1),
        engine="kafka",
    )
