"""Real ``tagstream`` processes for end-to-end tests: started from the repo, their output in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from streams.broker import free_port
from support.brokers import Broker

REPO = Path(__file__).resolve().parents[2]


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

    def __init__(self, broker: Broker, cache_dir: Path, log_dir: Path) -> None:
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
            # Pipeline plugins of the tests (TAGSTREAM_PIPELINE_FACTORY=support.pipelines.trivial:build).
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
            **env,
        }
        worker = start_cli("worker", environment, log)
        self.started.append(worker)
        return worker
