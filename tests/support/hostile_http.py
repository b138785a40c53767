"""Loopback HTTP servers that misbehave on purpose, counting every TCP connection they accept.

``connections`` counts accepted sockets (stricter than requests: "never connected" means no
TCP handshake completed). Routes map a path to a responder; the default answers 404.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

Responder = Callable[["HostileServer", BaseHTTPRequestHandler], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    accepted = 0

    def verify_request(self, request: object, client_address: object) -> bool:
        self.accepted += 1
        return True

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up early (timeouts) are expected here."""


class _Server6(_Server):
    address_family = socket.AF_INET6


class HostileServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Responder] = {}
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                with owner._lock:
                    owner.hits[self.path] += 1
                owner.routes.get(self.path, status(404))(owner, self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server_class = _Server6 if ":" in host else _Server
        self._httpd = server_class((host, 0), Handler)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def connections(self) -> int:
        return self._httpd.accepted

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def status(code: int, body: bytes = b"", content_type: str = "text/plain") -> Responder:
    def responder(server: HostileServer, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return responder


def redirect(location: str) -> Responder:
    def responder(server: HostileServer, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return responder


def flaky(failures: int, then: Responder, code: int = 500) -> Responder:
    """Answers ``code`` to the first ``failures`` requests of its path, then behaves like ``then``."""
    fail = status(code, b"try again later")

    def responder(server: HostileServer, handler: BaseHTTPRequestHandler) -> None:
        if server.hits[handler.path] <= failures:
            fail(server, handler)
        else:
            then(server, handler)

    return responder


def stall(seconds: float) -> Responder:
    """Accepts, then says nothing for ``seconds`` (or until the server closes): a hung image host."""

    def responder(server: HostileServer, handler: BaseHTTPRequestHandler) -> None:
        server.release.wait(seconds)

    return responder


def delayed(seconds: float, then: Responder) -> Responder:
    def responder(server: HostileServer, handler: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        then(server, handler)

    return responder


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False
