"""The image fetcher against real HTTP(S) servers on 127.0.0.1.

Tests never reach beyond loopback: names are mapped to 127.0.0.1 by an injected resolver,
and the tests that expect *no* connection at all also replace the socket layer with one
that records and refuses, so a regression would fail the test instead of reaching out.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import ssl
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpcore
import numpy as np
import pytest
from PIL import Image

from inference.types import RGBImage
from streams.fetch import fetcher as fetch_module
from streams.fetch.cache import ImageCache
from streams.fetch.decode import DecodedImage, decode_image, sniff_format
from streams.fetch.fetcher import FetchError, FetchPolicy, ImageFetcher
from streams.fetch.netguard import (
    AddressCheck,
    IPAddress,
    ResolutionFailed,
    Resolver,
    refusal_reason,
    system_resolver,
)

Responder = Callable[["LoopbackServer", BaseHTTPRequestHandler], None]


class _Server(ThreadingHTTPServer):
    accepted = 0  # TCP connections, counted apart from requests: "never connected" is stricter

    def verify_request(self, request: object, client_address: object) -> bool:
        self.accepted += 1  # only the serving thread accepts, so no lock is needed
        return True

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up early (the point of several tests) are not errors here."""


class LoopbackServer:
    """An HTTP(S) server on 127.0.0.1 serving ``routes`` and counting requests per path."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Responder] = {}
        self.hits: Counter[str] = Counter()
        self.host_headers: list[str] = []
        self.active = 0
        self.peak_active = 0
        self.release = threading.Event()  # set at teardown so slow responders return
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: pytest shows failures; access logs would only be noise."""

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.hits[handler.path] += 1
            self.host_headers.append(handler.headers.get("Host", ""))
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
        try:
            self.routes.get(handler.path, respond(b"not found", status=404))(self, handler)
        finally:
            with self._lock:
                self.active -= 1

    def url(self, path: str, *, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    @property
    def connections(self) -> int:
        return self._httpd.accepted

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def respond(
    body: bytes,
    *,
    status: int = 200,
    headers: Iterable[tuple[str, str]] = (),
    content_length: bool = True,
) -> Responder:
    """Without ``content_length`` the body ends when the connection closes (HTTP/1.0)."""

    def responder(server: LoopbackServer, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        if content_length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return responder


def redirect(location: str, status: int = 302) -> Responder:
    return respond(b"", status=status, headers=[("Location", location)])


def stall(seconds: float) -> Responder:
    """Says nothing for ``seconds`` (or until teardown): a server that accepted and hung."""

    def responder(server: LoopbackServer, handler: BaseHTTPRequestHandler) -> None:
        server.release.wait(seconds)

    return responder


def trickle(interval: float) -> Responder:
    """Headers at once, then one byte per ``interval``: never idle long enough to time out."""

    def responder(server: LoopbackServer, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        while not server.release.wait(interval):
            handler.wfile.write(b"\0")

    return responder


def delayed(seconds: float, then: Responder) -> Responder:
    def responder(server: LoopbackServer, handler: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        then(server, handler)

    return responder


@pytest.fixture
def serve() -> Iterator[Callable[..., LoopbackServer]]:
    servers: list[LoopbackServer] = []

    def start(tls: ssl.SSLContext | None = None) -> LoopbackServer:
        servers.append(LoopbackServer(tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def server(serve: Callable[..., LoopbackServer]) -> LoopbackServer:
    return serve()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replaces the socket layer: every TCP connect attempt is recorded and refused."""
    attempts: list[str] = []

    async def refuse(
        self: httpcore.AnyIOBackend, host: str, port: int, *args: object, **kwargs: object
    ) -> httpcore.AsyncNetworkStream:
        attempts.append(f"{host}:{port}")
        raise httpcore.ConnectError("test forbids connecting")

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", refuse)
    return attempts


# --- images -----------------------------------------------------------------------------


def gradient(width: int = 32, height: int = 24) -> RGBImage:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 7 % 256, y * 11 % 256, (x + y) * 3 % 256], axis=-1).astype(np.uint8)


def encode(array: RGBImage, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, image_format, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but whose pixel data is garbage.

    Rejected with too_many_pixels, it proves the limit was checked before decoding: a
    decode attempt would have failed on the garbage with not_an_image.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"garbage") + chunk(b"IEND", b"")


PNG = encode(gradient(), "PNG")

# --- helpers ----------------------------------------------------------------------------

LOOPBACK = FetchPolicy(allow_private_networks=True, connect_timeout=2.0, read_timeout=2.0, total_timeout=5.0)
PUBLIC = FetchPolicy(connect_timeout=2.0, read_timeout=2.0, total_timeout=5.0)


def fetch(
    url: str,
    policy: FetchPolicy = LOOPBACK,
    *,
    resolver: Resolver = system_resolver,
    address_check: AddressCheck | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> RGBImage:
    async def run() -> RGBImage:
        fetcher = ImageFetcher(policy, resolver=resolver, address_check=address_check, ssl_context=ssl_context)
        async with fetcher:
            return (await fetcher.fetch(url)).pixels

    return asyncio.run(run())


def fetch_error(
    url: str,
    policy: FetchPolicy = LOOPBACK,
    *,
    resolver: Resolver = system_resolver,
    address_check: AddressCheck | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetch(url, policy, resolver=resolver, address_check=address_check, ssl_context=ssl_context)
    assert url in str(info.value)
    return info.value


def dns(names: dict[str, str]) -> Resolver:
    """DNS for tests: each name maps to one (loopback) address; others do not exist."""

    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        if host not in names:
            raise ResolutionFailed(host, "Name or service not known", transient=False)
        return [ipaddress.ip_address(names[host])]

    return resolve


def trusting(*names: str) -> AddressCheck:
    """The default rules, except that ``names`` may use 127.0.0.1 as if it were public."""

    def check(host: str, address: IPAddress) -> str | None:
        if host in names and address == ipaddress.ip_address("127.0.0.1"):
            return None
        return refusal_reason(address, allow_private_networks=False)

    return check


# --- happy paths ------------------------------------------------------------------------


def test_fetches_a_png_pixel_exact(server: LoopbackServer) -> None:
    server.routes["/a.png"] = respond(PNG, headers=[("Content-Type", "image/png")])
    image = fetch(server.url("/a.png"))
    assert image.dtype == np.uint8
    assert image.shape == (24, 32, 3)
    np.testing.assert_array_equal(image, gradient())
    assert not image.flags.writeable
    assert server.host_headers == [f"127.0.0.1:{server.port}"]
    assert server.connections == 1


def test_fetches_a_jpeg_regardless_of_content_type(server: LoopbackServer) -> None:
    server.routes["/photo"] = respond(encode(gradient(), "JPEG", quality=95), headers=[("Content-Type", "text/plain")])
    image = fetch(server.url("/photo"))
    assert image.shape == (24, 32, 3)
    assert np.abs(image.astype(int) - gradient().astype(int)).mean() < 8


def test_resolves_names_with_the_system_resolver(server: LoopbackServer) -> None:
    """The real OS resolver end to end; where /etc/hosts lists ::1 first (nothing listens
    there), this also exercises falling back to the next checked address."""
    server.routes["/a.png"] = respond(PNG)
    assert fetch(server.url("/a.png", host="localhost")).shape == (24, 32, 3)
    assert server.host_headers == [f"localhost:{server.port}"]


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "BMP"])
def test_decodes_other_web_formats(image_format: str) -> None:
    data = encode(gradient(), image_format)
    assert sniff_format(data) == image_format
    assert decode_image(data, max_pixels=10_000, max_side=4096, url="mem://x").pixels.shape == (24, 32, 3)


def test_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    data = encode(gradient(32, 24), "JPEG", exif=exif.tobytes())
    assert decode_image(data, max_pixels=10_000, max_side=4096, url="mem://x").pixels.shape == (32, 24, 3)


def _photo(width: int, height: int) -> RGBImage:
    """Smooth content, so a reduced decode can be compared with a reduced original."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.dstack([xs * 255 // width, ys * 255 // height, (xs + ys) * 127 // (width + height)]).astype(np.uint8)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_large_images_are_reduced_to_the_working_size_as_they_are_decoded(image_format: str) -> None:
    photo = _photo(1600, 1200)
    decoded = decode_image(encode(photo, image_format), max_pixels=10_000_000, max_side=850, url="mem://x")

    height, width = decoded.pixels.shape[:2]
    # A JPEG is decoded at the DCT's 1/2 reduction (800 px keeps over 3/4 of 850, no resize needed);
    # a PNG is decoded whole and resized to exactly 850.
    assert width == (800 if image_format == "JPEG" else 850) and height == round(width * 3 / 4)
    assert (decoded.original_width, decoded.original_height) == (1600, 1200)
    assert decoded.scale == pytest.approx(width / 1600)
    reduced = np.asarray(Image.fromarray(photo).resize((width, height), Image.Resampling.BOX))
    assert np.abs(decoded.pixels.astype(int) - reduced.astype(int)).mean() < 4
    assert not decoded.pixels.flags.writeable


def test_a_sideways_photo_is_reduced_upright_with_its_upright_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 1600x1200 sideways: upright it is 1200x1600
    data = encode(_photo(1600, 1200), "JPEG", exif=exif.tobytes())

    decoded = decode_image(data, max_pixels=10_000_000, max_side=1000, url="mem://x")

    assert (decoded.original_width, decoded.original_height) == (1200, 1600)
    assert decoded.pixels.shape == (800, 600, 3)
    assert decoded.scale == 0.5


def test_greyscale_and_alpha_become_rgb() -> None:
    grey = encode(gradient()[..., 0], "PNG")
    rgba = encode(np.dstack([gradient(), np.full((24, 32), 128, np.uint8)]), "PNG")
    for data in (grey, rgba):
        assert decode_image(data, max_pixels=10_000, max_side=4096, url="mem://x").pixels.shape == (24, 32, 3)


# --- SSRF -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "0x7f000001", "localhost"])
def test_default_policy_refuses_loopback_in_any_spelling_without_connecting(
    server: LoopbackServer, connects: list[str], host: str
) -> None:
    server.routes["/a.png"] = respond(PNG)
    error = fetch_error(server.url("/a.png", host=host), PUBLIC)
    assert error.kind == "blocked_address"
    assert not error.transient
    assert connects == []
    assert server.connections == 0


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/a.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::1]/a.png", "loopback"),
        ("http://[::ffff:127.0.0.1]/a.png", "loopback"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://0.0.0.0/", "this network"),
        ("https://100.64.0.1/a.png", "shared address"),
    ],
)
def test_default_policy_refuses_internal_addresses_without_connecting(
    connects: list[str], url: str, reason: str
) -> None:
    error = fetch_error(url, PUBLIC)
    assert error.kind == "blocked_address"
    assert reason in str(error)
    assert connects == []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/", "http://[fd00:ec2::254]/"])
def test_cloud_metadata_stays_refused_with_private_networks_allowed(connects: list[str], url: str) -> None:
    assert fetch_error(url, LOOPBACK).kind == "blocked_address"
    assert connects == []


def test_a_name_with_any_refused_address_is_refused_without_connecting(
    connects: list[str],
) -> None:
    async def two_answers(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.1")]

    error = fetch_error(
        "http://mixed.example/a.png", PUBLIC, resolver=two_answers, address_check=trusting("mixed.example")
    )
    assert error.kind == "blocked_address"
    assert "mixed.example (10.0.0.1)" in str(error)
    assert connects == []


def test_connects_to_the_resolved_address_with_the_original_host_header(
    server: LoopbackServer,
) -> None:
    server.routes["/a.png"] = respond(PNG)
    url = server.url("/a.png", host="public.example")
    fetch(url, PUBLIC, resolver=dns({"public.example": "127.0.0.1"}), address_check=trusting("public.example"))
    assert server.host_headers == [f"public.example:{server.port}"]


# --- redirects --------------------------------------------------------------------------


def test_follows_redirects_including_relative_ones(server: LoopbackServer) -> None:
    server.routes["/one"] = redirect(server.url("/two"), status=301)
    server.routes["/two"] = redirect("/three", status=307)
    server.routes["/three"] = redirect("img.png", status=308)
    server.routes["/img.png"] = respond(PNG)
    np.testing.assert_array_equal(fetch(server.url("/one")), gradient())
    assert server.hits == {"/one": 1, "/two": 1, "/three": 1, "/img.png": 1}


def test_each_redirect_hop_is_checked_before_connecting(
    serve: Callable[..., LoopbackServer],
) -> None:
    public, internal = serve(), serve()
    internal.routes["/secret"] = respond(PNG)
    public.routes["/by-ip"] = redirect(internal.url("/secret"))
    public.routes["/by-name"] = redirect(internal.url("/secret", host="internal.example"))
    names = dns({"public.example": "127.0.0.1", "internal.example": "127.0.0.1"})
    for path in ("/by-ip", "/by-name"):
        error = fetch_error(
            public.url(path, host="public.example"), PUBLIC, resolver=names, address_check=trusting("public.example")
        )
        assert error.kind == "blocked_address"
        assert "at redirect target http://" in str(error)
    assert public.hits == {"/by-ip": 1, "/by-name": 1}
    assert internal.connections == 0


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://x/a"])
def test_redirect_to_another_scheme_is_refused(server: LoopbackServer, target: str) -> None:
    server.routes["/go"] = redirect(target)
    error = fetch_error(server.url("/go"))
    assert error.kind == "bad_scheme"
    assert f"scheme '{target.split(':')[0]}' at redirect target" in str(error)


def test_too_many_redirects(server: LoopbackServer) -> None:
    server.routes["/loop"] = redirect("/loop")
    error = fetch_error(server.url("/loop"), FetchPolicy(allow_private_networks=True, max_redirects=3))
    assert error.kind == "too_many_redirects"
    assert not error.transient
    assert server.hits["/loop"] == 4  # the request, then three redirects followed


def test_exactly_max_redirects_is_fine(server: LoopbackServer) -> None:
    server.routes["/r1"] = redirect("/r2")
    server.routes["/r2"] = redirect("/a.png")
    server.routes["/a.png"] = respond(PNG)
    assert fetch(server.url("/r1"), FetchPolicy(allow_private_networks=True, max_redirects=2)).shape == (24, 32, 3)
    assert fetch_error(server.url("/r1"), FetchPolicy(allow_private_networks=True, max_redirects=1)).kind == (
        "too_many_redirects"
    )


# --- size and pixel limits --------------------------------------------------------------


def test_declared_oversize_body_is_refused(server: LoopbackServer) -> None:
    server.routes["/big"] = respond(b"\0" * 5000)
    error = fetch_error(server.url("/big"), FetchPolicy(allow_private_networks=True, max_bytes=1000))
    assert error.kind == "too_large"
    assert "Content-Length 5000" in str(error)


def test_undeclared_oversize_body_is_cut_off_while_streaming(server: LoopbackServer) -> None:
    server.routes["/big"] = respond(b"\0" * 5000, content_length=False)
    error = fetch_error(server.url("/big"), FetchPolicy(allow_private_networks=True, max_bytes=1000))
    assert error.kind == "too_large"
    assert "body is over 1000 bytes" in str(error)


def test_body_of_exactly_max_bytes_is_accepted(server: LoopbackServer) -> None:
    server.routes["/a.png"] = respond(PNG, content_length=False)
    assert fetch(server.url("/a.png"), FetchPolicy(allow_private_networks=True, max_bytes=len(PNG))).size


@pytest.mark.parametrize(("width", "height"), [(20_000, 20_000), (10_000, 5_000)])
def test_pixel_bombs_are_refused_before_decoding(server: LoopbackServer, width: int, height: int) -> None:
    """20000^2 trips Pillow's own bomb check while opening; 10000x5000 only ours. Both quote our limit."""
    server.routes["/bomb.png"] = respond(png_header_only(width, height))
    error = fetch_error(server.url("/bomb.png"), FetchPolicy(allow_private_networks=True, max_pixels=30_000_000))
    assert error.kind == "too_many_pixels"
    assert f"declares {width * height} pixels" in str(error) or f"{width}x{height} = {width * height}" in str(error)
    assert "over the limit of 30000000" in str(error)
    assert not error.transient


def test_max_pixels_is_inclusive(server: LoopbackServer) -> None:
    server.routes["/a.png"] = respond(PNG)
    assert fetch(server.url("/a.png"), FetchPolicy(allow_private_networks=True, max_pixels=32 * 24)).size
    error = fetch_error(server.url("/a.png"), FetchPolicy(allow_private_networks=True, max_pixels=32 * 24 - 1))
    assert error.kind == "too_many_pixels"
    assert "32x24" in str(error)


# --- content ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"<html>definitely a picture</html>",
        PNG[: len(PNG) // 2],
        b"%!PS-Adobe-3.0 EPSF-3.0\n",
        b"II*\x00" + b"\0" * 64,
        b"",
    ],
    ids=["html", "truncated-png", "eps", "tiff", "empty"],
)
def test_non_images_are_refused_whatever_the_content_type(server: LoopbackServer, body: bytes) -> None:
    server.routes["/x.png"] = respond(body, headers=[("Content-Type", "image/png")])
    error = fetch_error(server.url("/x.png"))
    assert error.kind == "not_an_image"
    assert not error.transient


def test_content_encoded_bodies_are_refused(server: LoopbackServer) -> None:
    server.routes["/a.png"] = respond(zlib.compress(PNG), headers=[("Content-Encoding", "deflate")])
    error = fetch_error(server.url("/a.png"))
    assert error.kind == "not_an_image"
    assert "deflate" in str(error)


# --- HTTP errors and timeouts -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"), [(404, False), (403, False), (410, False), (500, True), (503, True), (429, True)]
)
def test_http_status_errors_say_whether_to_retry(server: LoopbackServer, status: int, transient: bool) -> None:
    server.routes["/x"] = respond(b"nope", status=status)
    error = fetch_error(server.url("/x"))
    assert error.kind == "http_status"
    assert error.transient is transient
    assert f"HTTP {status}" in str(error)
    assert getattr(error, "status_code", None) == status


def test_a_silent_server_times_out_transiently(server: LoopbackServer) -> None:
    server.routes["/slow"] = stall(10)
    policy = FetchPolicy(allow_private_networks=True, read_timeout=0.2)
    started = time.monotonic()
    error = fetch_error(server.url("/slow"), policy)
    assert error.kind == "timeout"
    assert error.transient
    assert time.monotonic() - started < 2


def test_a_trickling_server_hits_the_total_deadline(server: LoopbackServer) -> None:
    server.routes["/drip"] = trickle(0.05)
    policy = FetchPolicy(allow_private_networks=True, read_timeout=1.0, total_timeout=0.3)
    error = fetch_error(server.url("/drip"), policy)
    assert error.kind == "timeout"
    assert "0.3s" in str(error)


def test_a_closed_port_is_a_transient_connection_error(server: LoopbackServer) -> None:
    url = server.url("/a.png")
    server.close()
    error = fetch_error(url)
    assert error.kind == "connection"
    assert error.transient


def test_unknown_names_are_permanent_dns_errors() -> None:
    error = fetch_error("http://nowhere.example/a.png", resolver=dns({}))
    assert error.kind == "dns"
    assert not error.transient


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/", "data:image/png;base64,AA=="]
)
def test_only_http_and_https_are_fetched(connects: list[str], url: str) -> None:
    assert fetch_error(url).kind == "bad_scheme"
    assert connects == []


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "//example.com/a.png",
        "http://",
        "http:/a.png",
        "http://[::1",
        "http://exa mple.com/a.png",
        "http://bad..name/a.png",
        "http://example.com:99999/a.png",
        "http://user:secret@example.com/a.png",
    ],
)
def test_malformed_urls_are_refused(connects: list[str], url: str) -> None:
    error = fetch_error(url)
    assert error.kind == "bad_url"
    assert not error.transient
    assert connects == []


def test_an_https_only_policy_refuses_http(connects: list[str]) -> None:
    policy = FetchPolicy(allowed_schemes=frozenset({"https"}))
    assert fetch_error("http://example.com/a.png", policy).kind == "bad_scheme"
    assert connects == []


def test_policy_refuses_schemes_it_cannot_fetch() -> None:
    with pytest.raises(ValueError, match="only http and https"):
        FetchPolicy(allowed_schemes=frozenset({"http", "ftp"}))


# --- sharing: dedup, cache, concurrency -------------------------------------------------


def test_fetch_many_downloads_each_distinct_url_once(server: LoopbackServer) -> None:
    server.routes["/a.png"] = respond(PNG)
    good, missing = server.url("/a.png"), server.url("/missing.png")

    async def run() -> dict[str, DecodedImage | FetchError]:
        async with ImageFetcher(LOOPBACK) as fetcher:
            return await fetcher.fetch_many([good, good, missing, good])

    results = asyncio.run(run())
    assert list(results) == [good, missing]
    assert isinstance(results[good], DecodedImage)
    assert isinstance(results[missing], FetchError)
    assert server.hits == {"/a.png": 1, "/missing.png": 1}


def test_concurrent_fetches_of_one_url_share_a_download(server: LoopbackServer) -> None:
    server.routes["/a.png"] = delayed(0.2, respond(PNG))

    async def run() -> list[DecodedImage]:
        async with ImageFetcher(LOOPBACK) as fetcher:
            return await asyncio.gather(*(fetcher.fetch(server.url("/a.png")) for _ in range(5)))

    images = asyncio.run(run())
    assert all(image is images[0] for image in images)
    assert server.hits["/a.png"] == 1


def test_a_cancelled_caller_does_not_cancel_the_shared_download(server: LoopbackServer) -> None:
    server.routes["/a.png"] = delayed(0.3, respond(PNG))
    url = server.url("/a.png")

    async def run() -> RGBImage:
        async with ImageFetcher(LOOPBACK) as fetcher:
            impatient = asyncio.ensure_future(fetcher.fetch(url))
            patient = asyncio.ensure_future(fetcher.fetch(url))
            await asyncio.sleep(0.1)
            impatient.cancel()
            return (await patient).pixels

    assert asyncio.run(run()).shape == (24, 32, 3)
    assert server.hits["/a.png"] == 1


def test_repeated_urls_are_served_from_the_cache(server: LoopbackServer) -> None:
    server.routes["/a.png"] = respond(PNG)

    async def fetch_twice(policy: FetchPolicy) -> None:
        async with ImageFetcher(policy) as fetcher:
            await fetcher.fetch(server.url("/a.png"))
            await fetcher.fetch(server.url("/a.png"))

    asyncio.run(fetch_twice(LOOPBACK))
    assert server.hits["/a.png"] == 1
    asyncio.run(fetch_twice(FetchPolicy(allow_private_networks=True, cache_max_items=0)))
    assert server.hits["/a.png"] == 3


def test_downloads_in_flight_are_bounded(server: LoopbackServer) -> None:
    for index in range(6):
        server.routes[f"/{index}.png"] = delayed(0.1, respond(PNG))

    async def run() -> None:
        async with ImageFetcher(FetchPolicy(allow_private_networks=True, max_concurrency=2)) as fetcher:
            await fetcher.fetch_many(server.url(f"/{index}.png") for index in range(6))

    asyncio.run(run())
    assert server.total_hits == 6
    assert server.peak_active == 2


def _decoded(pixels: RGBImage) -> DecodedImage:
    return DecodedImage(pixels, pixels.shape[1], pixels.shape[0], 1.0)


def test_an_unforeseen_failure_is_that_urls_error_not_the_calls(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes["/a.png"] = respond(PNG)
    server.routes["/b.png"] = respond(PNG)
    real = fetch_module.decode_image

    def flaky_decode(data: bytes, *, max_pixels: int, max_side: int, url: str) -> DecodedImage:
        if url.endswith("/b.png"):
            raise RuntimeError("a decoder bug")
        return real(data, max_pixels=max_pixels, max_side=max_side, url=url)

    monkeypatch.setattr(fetch_module, "decode_image", flaky_decode)

    async def run() -> dict[str, DecodedImage | FetchError]:
        async with ImageFetcher(LOOPBACK) as fetcher:
            return await fetcher.fetch_many([server.url("/a.png"), server.url("/b.png")])

    results = asyncio.run(run())
    assert isinstance(results[server.url("/a.png")], DecodedImage)
    failed = results[server.url("/b.png")]
    assert isinstance(failed, FetchError) and failed.kind == "unexpected" and "a decoder bug" in str(failed)


def test_decodes_at_once_are_bounded(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each decode briefly holds an image at full size: how many run at once bounds that memory."""
    for index in range(6):
        server.routes[f"/{index}.png"] = respond(PNG)
    real = fetch_module.decode_image
    active, peak = [0], [0]
    lock = threading.Lock()

    def slow_decode(data: bytes, *, max_pixels: int, max_side: int, url: str) -> DecodedImage:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1
        return real(data, max_pixels=max_pixels, max_side=max_side, url=url)

    monkeypatch.setattr(fetch_module, "decode_image", slow_decode)

    async def run() -> None:
        async with ImageFetcher(FetchPolicy(allow_private_networks=True, max_decodes=2)) as fetcher:
            await fetcher.fetch_many(server.url(f"/{index}.png") for index in range(6))

    asyncio.run(run())
    assert peak[0] == 2


def test_cache_evicts_least_recently_used_by_count_and_bytes() -> None:
    small = _decoded(np.zeros((10, 10, 3), np.uint8))  # 300 bytes
    by_count = ImageCache(max_items=2, max_bytes=10_000)
    by_count.put("a", small)
    by_count.put("b", small)
    assert by_count.get("a") is small  # now "b" is least recently used
    by_count.put("c", small)
    assert by_count.get("b") is None
    assert by_count.get("a") is small
    by_bytes = ImageCache(max_items=100, max_bytes=700)
    for key in "abc":
        by_bytes.put(key, small)
    assert [by_bytes.get(key) is not None for key in "abc"] == [False, True, True]
    by_bytes.put("huge", _decoded(np.zeros((20, 20, 3), np.uint8)))  # 1200 bytes: never fits
    assert by_bytes.get("huge") is None
    assert by_bytes.get("c") is small


# --- TLS --------------------------------------------------------------------------------


def self_signed_certificate(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Certificate and key for ``hostname``, made with ``cryptography`` (a dev dependency)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert, key = directory / f"{hostname}.crt", directory / f"{hostname}.key"
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private_key.public_key()), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


class TlsServer:
    """An HTTPS loopback server presenting a certificate for ``cert_host``; records SNI."""

    def __init__(self, serve: Callable[..., LoopbackServer], directory: Path, cert_host: str) -> None:
        cert, key = self_signed_certificate(directory, cert_host)
        self.trust = ssl.create_default_context(cafile=str(cert))
        self.server_names: list[str | None] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda _socket, name, _context: self.server_names.append(name)
        self.http = serve(context)
        self.http.routes["/a.png"] = respond(PNG)


def test_tls_verifies_the_url_host_while_connecting_to_the_checked_address(
    serve: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    tls = TlsServer(serve, tmp_path, "images.test")
    url = tls.http.url("/a.png", host="images.test", scheme="https")
    image = fetch(url, resolver=dns({"images.test": "127.0.0.1"}), ssl_context=tls.trust)
    np.testing.assert_array_equal(image, gradient())
    assert tls.server_names == ["images.test"]
    assert tls.http.host_headers == [f"images.test:{tls.http.port}"]


def test_tls_refuses_a_certificate_for_another_name(serve: Callable[..., LoopbackServer], tmp_path: Path) -> None:
    tls = TlsServer(serve, tmp_path, "other.test")
    url = tls.http.url("/a.png", host="images.test", scheme="https")
    error = fetch_error(url, resolver=dns({"images.test": "127.0.0.1"}), ssl_context=tls.trust)
    assert error.kind == "tls"
    assert not error.transient
    assert "images.test" in str(error)
    assert tls.http.total_hits == 0


def test_tls_verification_is_on_by_default(serve: Callable[..., LoopbackServer], tmp_path: Path) -> None:
    tls = TlsServer(serve, tmp_path, "images.test")
    url = tls.http.url("/a.png", host="images.test", scheme="https")
    error = fetch_error(url, resolver=dns({"images.test": "127.0.0.1"}))
    assert error.kind == "tls"
    assert tls.http.total_hits == 0


def test_an_unverifying_ssl_context_is_rejected() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="must verify"):
        ImageFetcher(ssl_context=context)
