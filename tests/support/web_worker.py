"""Worker processes with their web server on a port of their own, and HTTP helpers for tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from streams.broker import free_port
from support.brokers import Broker
from support.processes import WorkerFactory, WorkerProcess


@dataclass
class WebWorker:
    process: WorkerProcess
    base_url: str

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=60)

    def post(self, path: str, body: Any = None, *, content: bytes | None = None) -> httpx.Response:
        if content is not None:
            return httpx.post(self.base_url + path, content=content, timeout=60)
        return httpx.post(self.base_url + path, json=body, timeout=60)

    def wait_for(self, path: str, status: int, timeout_s: float) -> httpx.Response:
        """GET ``path`` until it answers ``status``; fails early, with the worker's log, if the worker died."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            if self.process.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.process.returncode}:\n{self.process.output()}")
            try:
                response = self.get(path)
            except httpx.TransportError as exc:
                last = exc
            else:
                if response.status_code == status:
                    return response
                last = f"{response.status_code} {response.text}"
            time.sleep(0.3)
        raise AssertionError(f"{path} did not answer {status} within {timeout_s}s (last: {last})")

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of ``/metrics``, keyed by (name, labels)."""
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """One sample's value; a labelled series that was never touched reads as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def start_web_worker(factory: WorkerFactory, name: str, **env: str) -> WebWorker:
    """A worker in group ``name`` on topics prefixed ``name``, serving HTTP on a free port."""
    port = free_port()
    process = factory.start(name, name, TAGSTREAM_WEB_PORT=str(port), **env)
    return WebWorker(process, f"http://127.0.0.1:{port}")


@contextmanager
def worker_factory(broker: Broker, cache_dir: Path, log_dir: Path) -> Iterator[WorkerFactory]:
    """A factory whose workers outlive one test (module-scoped fixtures), stopped on exit."""
    factory = WorkerFactory(broker, cache_dir, log_dir)
    try:
        yield factory
    finally:
        for worker in factory.started:
            worker.stop()
