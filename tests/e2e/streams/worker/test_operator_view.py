"""What an operator sees on real worker processes: /ready and the lag gauge tell the truth.

Each test has a broker of its own where it freezes or kills it, and runs the model-free
pipeline plugins, so the time goes to the fault and not to CLIP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.brokers import Broker, new_broker
from support.processes import WorkerFactory
from support.reliability_report import report
from support.streams import collect, create_topics, wait_for
from support.web_worker import WebWorker, start_web_worker

from streams.kafka import produce_uploads
from streams.worker.service import EXIT_MODELS_UNAVAILABLE
from workbench.image_server import ImageServer

FAST_PROBE = {"TAGSTREAM_PROBE_INTERVAL_S": "0.5"}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    with new_broker(tmp_path, "own") as broker:
        yield broker


def _records(server: ImageServer, prefix: str, n: int) -> list[dict[str, Any]]:
    """Uploads of a served photo with no sources: the model-free pipelines answer them at once."""
    target = server.url("upload-01.png")
    return [{"upload_id": f"{prefix}-{i}", "target_image_url": target, "sources": []} for i in range(n)]


def _lag(worker: WebWorker, topic: str) -> float:
    return sum(
        value
        for (name, labels), value in worker.scrape().items()
        if name == "tagstream_consumer_lag" and ("topic", topic) in labels
    )


def _wait_ready(worker: WebWorker, ready: bool, timeout_s: float) -> tuple[float, dict[str, Any]]:
    """Seconds until /ready says ``ready``, and what it said then."""
    started = time.monotonic()
    response = worker.wait_for("/ready", 200 if ready else 503, timeout_s=timeout_s)
    return time.monotonic() - started, response.json()


def test_ready_follows_the_broker_frozen_and_killed(
    own_broker: Broker, workers: WorkerFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    worker = start_web_worker(
        workers,
        "readyprobe",
        TAGSTREAM_BROKER=own_broker.url,
        TAGSTREAM_PIPELINE_FACTORY="support.pipelines.trivial:build",
        **FAST_PROBE,
    )
    worker.wait_for("/ready", 200, timeout_s=120)

    own_broker.pause()
    frozen_s, frozen = _wait_ready(worker, False, timeout_s=15)
    own_broker.resume()
    thawed_s, _ = _wait_ready(worker, True, timeout_s=60)
    own_broker.stop()
    killed_s, killed = _wait_ready(worker, False, timeout_s=15)

    for verdict in (frozen, killed):
        assert verdict["broker_reachable"] is False
        assert any(p.startswith("broker unreachable") for p in verdict["problems"]), verdict
    assert worker.get("/health").status_code == 200  # alive, just not ready
    report(
        tmp_path_factory,
        "/ready while the broker is frozen, thawed, then killed",
        0,
        0,
        0,
        seconds_to_not_ready_frozen=round(frozen_s, 1),
        seconds_to_ready_after_thaw=round(thawed_s, 1),
        seconds_to_not_ready_killed=round(killed_s, 1),
    )


def test_lag_counts_a_backlog_and_a_stalled_worker_is_not_ready(
    own_broker: Broker,
    workers: WorkerFactory,
    image_server: ImageServer,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """44 events wait behind a batch that does not finish: lag says 44, /ready says stalled, then both recover."""
    uploads, suggestions = "backlog.image-uploaded", "backlog.tag-suggestions"
    create_topics(own_broker, [uploads], partitions=2)
    gate = tmp_path / "open"
    worker = start_web_worker(
        workers,
        "backlog",
        TAGSTREAM_BROKER=own_broker.url,
        TAGSTREAM_PIPELINE_FACTORY="support.pipelines.blocking:build",
        BLOCKING_PIPELINE_OPEN=str(gate),
        TAGSTREAM_STALL_TIMEOUT_S="4",
        **FAST_PROBE,
    )
    worker.wait_for("/ready", 200, timeout_s=120)

    sent = asyncio.run(produce_uploads(own_broker.url, uploads, _records(image_server, "backlog", 44)))
    wait_for(lambda: _lag(worker, uploads) == 44, timeout_s=30)
    stalled_s, stalled = _wait_ready(worker, False, timeout_s=30)
    per_partition = {k: v for k, v in stalled["lag"].items() if k.startswith(uploads)}
    gate.touch()
    answered = collect(own_broker, suggestions, len(sent), timeout_s=60)
    wait_for(lambda: _lag(worker, uploads) == 0, timeout_s=30)
    _wait_ready(worker, True, timeout_s=30)

    assert any(p.startswith("stalled: ") for p in stalled["problems"]), stalled
    assert stalled["consuming"] is False and stalled["broker_reachable"] is True
    assert sum(per_partition.values()) == 44 and len(per_partition) == 2, per_partition
    assert len({a["upload_event_id"] for a in answered}) == 44
    report(
        tmp_path_factory,
        "44 events behind a stuck batch: lag and /ready",
        len(sent),
        len(answered),
        0,
        lag_while_stuck=sum(per_partition.values()),
        seconds_to_not_ready=round(stalled_s, 1),
    )


def test_a_worker_that_cannot_load_its_models_leaves_and_its_partitions_move(
    own_broker: Broker,
    workers: WorkerFactory,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    uploads, suggestions = "brokenmodel.image-uploaded", "brokenmodel.tag-suggestions"
    create_topics(own_broker, [uploads], partitions=4)
    common = {"TAGSTREAM_BROKER": own_broker.url, "TAGSTREAM_TOPICS__PARTITIONS": "4", **FAST_PROBE}
    broken = start_web_worker(
        workers,
        "brokenmodel",
        TAGSTREAM_MODELS__OFFLINE="false",
        TAGSTREAM_MODELS__DETECTOR="/nonexistent/detector.pt",
        TAGSTREAM_MODEL_LOAD_ATTEMPTS="2",
        **common,
    )
    not_ready = broken.wait_for("/ready", 503, timeout_s=120).json()
    healthy = start_web_worker(
        workers, "brokenmodel", TAGSTREAM_PIPELINE_FACTORY="support.pipelines.trivial:build", **common
    )
    started = time.monotonic()

    assert broken.process.process.wait(timeout=120) == EXIT_MODELS_UNAVAILABLE
    exited_s = time.monotonic() - started
    sent = asyncio.run(produce_uploads(own_broker.url, uploads, _records(image_server, "brokenmodel", 12)))
    answered = collect(own_broker, suggestions, len(sent), timeout_s=120)

    assert {a["upload_event_id"] for a in answered} == {e["event_id"] for e in sent}
    assert "models" in " ".join(not_ready["problems"])
    assert "the models failed to load 2 times" in broken.process.output()
    healthy_ready = healthy.wait_for("/ready", 200, timeout_s=60).json()
    assert len([p for p in healthy_ready["partitions"] if p.startswith(uploads)]) == 4
    report(
        tmp_path_factory,
        "a worker whose models cannot load (2 attempts) beside a healthy one",
        len(sent),
        len(answered),
        0,
        exit_status=EXIT_MODELS_UNAVAILABLE,
        seconds_to_exit=round(exited_s, 1),
    )
