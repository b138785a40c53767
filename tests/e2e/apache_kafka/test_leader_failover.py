"""A 3-node Apache Kafka cluster loses the leader of the uploads partition mid-stream.

Replication factor 3, ``min.insync.replicas=2``, producers with ``acks=all``: a new leader is
elected among the in-sync replicas, the worker follows it, and every upload is answered on the
suggestions topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from support.apache_kafka import ApacheKafkaCluster
from support.processes import WorkerFactory
from support.reliability_report import report
from support.streams import collect, create_topics
from support.traffic import PacedProducer, answered, uploads

from workbench.image_server import ImageServer

TRIVIAL = {"TAGSTREAM_PIPELINE_FACTORY": "support.pipelines.trivial:build", "TAGSTREAM_MAX_BATCH": "4"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ApacheKafkaCluster]:
    with ApacheKafkaCluster(tmp_path / "cluster", size=3) as running:
        yield running


def _leader(cluster: ApacheKafkaCluster, topic: str, partition: int) -> int:
    async def ask() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap)
        await producer.start()
        try:
            await producer.partitions_for(topic)
            leader = producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        finally:
            await producer.stop()
        assert leader is not None and leader >= 0, f"no leader for {topic}[{partition}]"
        return int(leader)

    return asyncio.run(ask())


def test_the_uploads_leader_killed_mid_stream_a_new_one_is_elected_and_nothing_is_lost(
    cluster: ApacheKafkaCluster,
    cache_dir: Path,
    image_server: ImageServer,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    topic, suggestions = "failover.image-uploaded", "failover.tag-suggestions"
    create_topics(cluster, [topic, suggestions], partitions=1, replication=3)
    workers = WorkerFactory(cluster, cache_dir, tmp_path)
    worker = workers.start("failover", "failover", TAGSTREAM_TOPICS__REPLICATION="3", **TRIVIAL)
    try:
        producer = PacedProducer(cluster, topic, uploads(image_server, "failover", 200), rate=8.0).start()
        collect(cluster, suggestions, 40, timeout_s=180)
        old_leader = _leader(cluster, topic, 0)
        cluster.node(old_leader).kill()
        killed_at = time.monotonic()
        producer.join(timeout_s=240)
        wanted = {e["event_id"] for e in producer.sent}

        counts = answered(cluster, suggestions, wanted, timeout_s=240)
        new_leader = _leader(cluster, topic, 0)
        alive = worker.process.poll() is None
    finally:
        for started in workers.started:
            started.stop()

    assert new_leader != old_leader
    assert not wanted - set(counts), f"{len(wanted - set(counts))} uploads never answered"
    assert set(counts) == wanted
    assert alive, worker.output()[-3000:]
    report(
        tmp_path_factory,
        "Apache Kafka 3-node cluster (RF 3, min ISR 2, acks=all): uploads leader SIGKILLed mid-stream",
        len(wanted),
        len(counts),
        0,
        duplicates=sum(n - 1 for n in counts.values()),
        producer_retries=producer.retries,
        leaders=f"{old_leader} -> {new_leader}",
        seconds_after_kill=round(time.monotonic() - killed_at, 1),
        engine="kafka",
    )
