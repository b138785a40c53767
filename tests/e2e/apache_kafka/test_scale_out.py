"""Scale-out on Apache Kafka: six partitions, three workers in one group, one SIGKILLed mid-stream."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.brokers import Broker
from support.processes import WorkerFactory
from support.reliability_report import report
from support.streams import collect, create_topics
from support.traffic import PacedProducer, answered, uploads

from workbench.image_server import ImageServer

TRIVIAL = {"TAGSTREAM_PIPELINE_FACTORY": "support.pipelines.trivial:build", "TAGSTREAM_MAX_BATCH": "4"}


def test_a_killed_worker_s_partitions_move_to_the_others_and_every_upload_is_answered(
    broker: Broker,
    workers: WorkerFactory,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    topic, suggestions = "scale.image-uploaded", "scale.tag-suggestions"
    create_topics(broker, [topic], partitions=6)
    group = [workers.start("scale", "scale", **TRIVIAL) for _ in range(3)]
    producer = PacedProducer(broker, topic, uploads(image_server, "scale", 400), rate=10.0).start()
    collect(broker, suggestions, 60, timeout_s=120)  # all three are consuming
    victim = group[1]
    victim.kill()  # no leave-group: the broker notices after the 6 s session timeout
    killed_at = time.monotonic()
    time.sleep(3)
    group.append(workers.start("scale", "scale", **TRIVIAL))
    producer.join(timeout_s=120)
    wanted = {e["event_id"] for e in producer.sent}

    counts = answered(broker, suggestions, wanted, timeout_s=240)

    missing = wanted - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    assert not missing, f"{len(missing)} uploads never answered"
    assert set(counts) == wanted  # nothing answered that was not sent
    survivors = [w for w in group if w is not victim]
    assert all(w.process.poll() is None for w in survivors), [w.output()[-2000:] for w in survivors]
    report(
        tmp_path_factory,
        "Apache Kafka: 6 partitions, 3 workers, one SIGKILLed mid-stream, one started",
        len(wanted),
        len(counts),
        0,
        duplicates=duplicates,
        seconds_after_kill=round(time.monotonic() - killed_at, 1),
        engine="kafka",
        logs=str(Path(victim.log).parent),
    )
