"""Download user-supplied image URLs safely and decode them for the inference stages.

Every event carries image URLs its uploader chose, so this module treats each URL as
hostile: only http(s), only public addresses (``streams.fetch.netguard``), redirects followed by
hand so each hop is checked again, bounded time, bytes and pixels, and TLS always verified.
Retries are the caller's: errors say whether they are transient (``streams.fetch.errors``).

Typical use::

    async with ImageFetcher(FetchPolicy()) as fetcher:
        images = await fetcher.fetch_many(event.image_urls)
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING

import httpx

from streams.fetch.cache import ImageCache
from streams.fetch.decode import DecodedImage, decode_image
from streams.fetch.errors import (
    BadScheme,
    BadUrl,
    BlockedAddress,
    ConnectionFailed,
    DnsError,
    FetchError,
    FetchTimeout,
    HttpStatusError,
    NotAnImage,
    TlsError,
    TooLarge,
    TooManyPixels,
    TooManyRedirects,
    UnexpectedFetchError,
)
from streams.fetch.netguard import (
    AddressCheck,
    AddressRefused,
    GuardedBackend,
    ResolutionFailed,
    Resolver,
    policy_check,
    system_resolver,
)
from streams.fetch.transport import BackendTransport

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs 3.11; 3.10 is supported

__all__ = [
    "BadScheme",
    "BadUrl",
    "BlockedAddress",
    "ConnectionFailed",
    "DecodedImage",
    "DnsError",
    "FetchError",
    "FetchPolicy",
    "FetchTimeout",
    "HttpStatusError",
    "ImageFetcher",
    "NotAnImage",
    "TlsError",
    "TooLarge",
    "TooManyPixels",
    "TooManyRedirects",
    "UnexpectedFetchError",
]

_MiB = 1024 * 1024
_SUPPORTED_SCHEMES = frozenset({"http", "https"})
# A DNS label as httpx hands it over: lower-cased, IDNA-encoded.
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for fetching untrusted URLs; the defaults suit public image hosts.

    ``allow_private_networks`` opens loopback and private ranges for tests and on-prem
    image stores; cloud metadata, multicast and reserved addresses stay refused regardless.
    ``read_timeout`` bounds each wait for data and ``total_timeout`` the whole download
    including redirects, since a server sending one byte a second never trips the first.
    ``max_concurrency`` bounds downloads in flight; ``max_decodes`` bounds decodes at once,
    each of which briefly holds a whole image at full size (up to ``max_pixels`` x 3 bytes)
    before it is reduced to ``max_side``.
    """

    allow_private_networks: bool = False
    allowed_schemes: frozenset[str] = _SUPPORTED_SCHEMES
    max_redirects: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_bytes: int = 20 * _MiB
    max_pixels: int = 40_000_000
    max_side: int = 2048
    max_concurrency: int = 16
    max_decodes: int = 2
    cache_max_items: int = 128
    cache_max_bytes: int = 512 * _MiB

    def __post_init__(self) -> None:
        unsupported = self.allowed_schemes - _SUPPORTED_SCHEMES
        if unsupported:
            raise ValueError(f"only http and https can be fetched, not {sorted(unsupported)}")
        positive = ("connect_timeout", "read_timeout", "total_timeout", "max_bytes", "max_pixels", "max_side")
        for name in (*positive, "max_concurrency", "max_decodes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_redirects", "cache_max_items", "cache_max_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


class ImageFetcher:
    """Fetches images over one pooled HTTP client; use as ``async with``.

    ``resolver`` and ``address_check`` replace DNS and the address rules (tests map names
    to loopback with them); ``ssl_context`` replaces the certifi trust store and must verify
    certificates and host names.
    """

    def __init__(
        self,
        policy: FetchPolicy = FetchPolicy(),
        *,
        resolver: Resolver = system_resolver,
        address_check: AddressCheck | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if address_check is None:
            address_check = policy_check(allow_private_networks=policy.allow_private_networks)
        if ssl_context is None:
            ssl_context = httpx.create_ssl_context()
        if ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname:
            raise ValueError("ssl_context must verify certificates and host names")
        self._policy = policy
        self._client = httpx.AsyncClient(
            transport=BackendTransport(
                GuardedBackend(resolver, address_check),
                ssl_context=ssl_context,
                max_connections=policy.max_concurrency,
            ),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(
                connect=policy.connect_timeout,
                read=policy.read_timeout,
                write=policy.read_timeout,
                pool=policy.connect_timeout,
            ),
            headers={
                "User-Agent": "tagstream-image-fetcher",
                "Accept": "image/*",
                # Images are compressed already; an encoded body would only be a way to
                # make a few bytes on the wire expand past max_bytes in memory.
                "Accept-Encoding": "identity",
            },
            # One user's URL must not leave state that rides along with another's request.
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        )
        self._semaphore = asyncio.Semaphore(policy.max_concurrency)
        self._decodes = asyncio.Semaphore(policy.max_decodes)
        self._cache = ImageCache(max_items=policy.cache_max_items, max_bytes=policy.cache_max_bytes)
        self._inflight: dict[str, asyncio.Task[DecodedImage]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    async def fetch(self, url: str) -> DecodedImage:
        """The image at ``url``, upright, at most ``max_side``, read-only; raises :class:`FetchError`.

        Concurrent calls for one URL share one download, and finished images are cached,
        because the same source image arrives in many events at once.
        """
        cached = self._cache.get(url)
        if cached is not None:
            return cached
        task = self._inflight.get(url)
        if task is None:
            task = asyncio.create_task(self._fetch_uncached(url))
            self._inflight[url] = task
            task.add_done_callback(functools.partial(self._forget, url))
        # Shielded: one caller being cancelled must not cancel the download others await.
        return await asyncio.shield(task)

    async def fetch_many(self, urls: Iterable[str]) -> dict[str, DecodedImage | FetchError]:
        """Fetch each distinct URL once, concurrently; failures are returned, never raised."""
        unique = list(dict.fromkeys(urls))
        outcomes = await asyncio.gather(*(self._settle(url) for url in unique))
        return dict(zip(unique, outcomes, strict=True))

    async def _settle(self, url: str) -> DecodedImage | FetchError:
        try:
            return await self.fetch(url)
        except FetchError as exc:
            return exc
        except Exception as exc:  # one URL's surprise must not cost the other URLs their images
            return UnexpectedFetchError(url, f"{type(exc).__name__}: {exc}")

    def _forget(self, url: str, task: asyncio.Task[DecodedImage]) -> None:
        del self._inflight[url]
        if not task.cancelled():
            task.exception()  # retrieved: a failure whose waiters all left is not a bug

    async def _fetch_uncached(self, url: str) -> DecodedImage:
        policy = self._policy
        async with self._semaphore:
            try:
                data = await asyncio.wait_for(self._download(url), policy.total_timeout)
            except asyncio.TimeoutError as exc:
                raise FetchTimeout(url, f"download not done within {policy.total_timeout}s") from exc
        # In a thread: a 40 MP decode would otherwise stall the event loop (and with it the
        # Kafka consumer's heartbeats) for a noticeable fraction of a second. Few at once:
        # each briefly holds its image at full size, which is what bounds decoding memory.
        async with self._decodes:
            image = await asyncio.to_thread(
                decode_image, data, max_pixels=policy.max_pixels, max_side=policy.max_side, url=url
            )
        self._cache.put(url, image)
        return image

    async def _download(self, url: str) -> bytes:
        hop = url
        try:
            for _ in range(self._policy.max_redirects + 1):
                async with self._client.stream("GET", self._checked_url(url, hop)) as response:
                    if not response.is_redirect:
                        return await self._read_body(url, hop, response)
                    hop = _redirect_target(url, response)
        except AddressRefused as exc:
            raise BlockedAddress(url, f"{exc}{_at(url, hop)}") from exc
        except ResolutionFailed as exc:
            raise DnsError(url, f"{exc}{_at(url, hop)}", transient=exc.transient) from exc
        except httpx.TimeoutException as exc:
            raise FetchTimeout(url, f"{type(exc).__name__}{_at(url, hop)}: {exc}") from exc
        except httpx.TransportError as exc:
            raise _transport_failure(url, hop, exc) from exc
        raise TooManyRedirects(url, f"more than {self._policy.max_redirects} redirects, the last to {hop}")

    def _checked_url(self, url: str, hop: str) -> httpx.URL:
        """``hop`` parsed, if it is an absolute http(s) URL to a well-formed host.

        Addresses are checked later, by the network backend, at connect time.
        """
        where = _at(url, hop)
        try:
            parsed = httpx.URL(hop)
        except httpx.InvalidURL as exc:
            raise BadUrl(url, f"not a valid URL{where}: {exc}") from exc
        if not parsed.scheme:
            raise BadUrl(url, f"not an absolute URL{where}")
        if parsed.scheme not in self._policy.allowed_schemes:
            allowed = ", ".join(sorted(self._policy.allowed_schemes))
            raise BadScheme(url, f"scheme {parsed.scheme!r}{where} is not one of {allowed}")
        if not _valid_host(parsed.host):
            raise BadUrl(url, f"no valid host{where}")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise BadUrl(url, f"port {parsed.port}{where} is out of range")
        if parsed.userinfo:
            raise BadUrl(url, f"credentials in the URL{where} are not supported")
        return parsed

    async def _read_body(self, url: str, hop: str, response: httpx.Response) -> bytes:
        where = _at(url, hop)
        if not response.is_success:
            raise HttpStatusError(
                url,
                f"HTTP {response.status_code} {response.reason_phrase}{where}",
                status_code=response.status_code,
            )
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise NotAnImage(url, f"body is Content-Encoding {encoding!r}{where}, not raw bytes")
        limit = self._policy.max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(url, f"Content-Length {declared}{where} is over {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        # Raw, not decoded: the length header may be absent or wrong, so count what arrives.
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise TooLarge(url, f"body{where} is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _at(url: str, hop: str) -> str:
    """Names the redirect target in messages when it is not the URL the caller gave."""
    return "" if hop == url else f" at redirect target {hop}"


def _valid_host(host: str) -> bool:
    """An IP literal or a DNS name; anything else (httpx lets a percent-encoded space or an
    empty label through) would only reach the resolver as garbage."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        name = host.removesuffix(".")
        return len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))
    return True


def _redirect_target(url: str, response: httpx.Response) -> str:
    location = response.headers["Location"]
    try:
        return str(response.url.join(location))
    except httpx.InvalidURL as exc:
        raise BadUrl(url, f"redirect from {response.url} to invalid {location!r}: {exc}") from exc


def _causes(exc: BaseException) -> Iterator[BaseException]:
    current: BaseException | None = exc
    while current is not None:
        yield current
        current = current.__cause__ or current.__context__


def _transport_failure(url: str, hop: str, exc: httpx.TransportError) -> FetchError:
    """A bad certificate will not heal on retry; a refused or dropped connection may."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TlsError(url, f"certificate check failed{_at(url, hop)}: {cause.verify_message}")
    return ConnectionFailed(url, f"{type(exc).__name__}{_at(url, hop)}: {exc}")
