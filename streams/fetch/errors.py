"""Why an image could not be fetched, in a form a stream processor can act on.

The fetcher does not retry: the caller owns the retry policy (sleep and retry in place,
re-queue to a retry topic, or dead-letter), so each error carries what that decision needs:
``kind``, a stable string for metrics and dead-letter records, and ``transient``, whether
the same request may succeed later. The message names the URL for the human reading logs.
"""

from __future__ import annotations

from typing import ClassVar


class FetchError(Exception):
    """Base of every fetch failure; ``url`` is the URL the caller asked for."""

    kind: ClassVar[str] = "fetch_failed"
    transient: bool = False

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"{detail} (url: {url})")
        self.url = url
        self.detail = detail


class BadUrl(FetchError):
    kind = "bad_url"


class BadScheme(FetchError):
    kind = "bad_scheme"


class BlockedAddress(FetchError):
    """The host is (or resolves to) an address the policy forbids; nothing was sent."""

    kind = "blocked_address"


class DnsError(FetchError):
    """Transient only when the resolver said "try again" (SERVFAIL, timeouts), not NXDOMAIN."""

    kind = "dns"

    def __init__(self, url: str, detail: str, *, transient: bool) -> None:
        super().__init__(url, detail)
        self.transient = transient


class TooManyRedirects(FetchError):
    kind = "too_many_redirects"


class HttpStatusError(FetchError):
    """A non-2xx answer; 5xx, 408 and 429 say "later", any other 4xx says "never"."""

    kind = "http_status"

    def __init__(self, url: str, detail: str, *, status_code: int) -> None:
        super().__init__(url, detail)
        self.status_code = status_code
        self.transient = status_code >= 500 or status_code in (408, 429)


class TooLarge(FetchError):
    kind = "too_large"


class TooManyPixels(FetchError):
    kind = "too_many_pixels"


class NotAnImage(FetchError):
    kind = "not_an_image"


class FetchTimeout(FetchError):
    kind = "timeout"
    transient = True


class ConnectionFailed(FetchError):
    kind = "connection"
    transient = True


class TlsError(FetchError):
    """The certificate did not verify for the host name: retrying will not fix it."""

    kind = "tls"


class UnexpectedFetchError(FetchError):
    """Something no rule above foresaw (a bug, or a library raising what it does not document).

    The fetcher still answers with an error for that one URL instead of raising, so the other
    images of a batch are unaffected; not retried, since nothing says a retry would help.
    """

    kind = "unexpected"
