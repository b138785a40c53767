"""Which network addresses the image fetcher may connect to, and connecting only to those.

Image URLs come from users, so every URL is an instruction an attacker can write: "connect
to 169.254.169.254" (the cloud credentials endpoint) or "connect to the Kafka broker on
10.0.0.5". The rules here refuse every address that is not on the public internet.

They are enforced in an httpcore network backend, the one place every TCP connection passes
through: the first request, every redirect hop, any reconnect inside the pool. The backend
resolves the name itself, checks *all* the addresses, and then connects to exactly those
addresses, never to the name again, so a second DNS answer cannot slip in between the check
and the connect (DNS rebinding). httpcore still sees the original host name, so the Host
header, TLS SNI and certificate verification all use it unchanged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""``(host, port) -> addresses``; injectable so tests can map names without real DNS."""

AddressCheck = Callable[[str, IPAddress], str | None]
"""``(host, address) -> why it is refused``, or None when it may be connected to."""


class AddressRefused(Exception):
    """A host resolved to an address the policy forbids; nothing was connected to."""

    def __init__(self, host: str, address: IPAddress, reason: str, *, resolved: bool) -> None:
        target = f"{host} ({address})" if resolved else host
        super().__init__(f"refusing to connect to {target}: {reason}")
        self.host = host
        self.address = address
        self.reason = reason


class ResolutionFailed(Exception):
    """The host name has no usable address; ``transient`` when DNS said "try again"."""

    def __init__(self, host: str, detail: str, *, transient: bool) -> None:
        super().__init__(f"cannot resolve {host}: {detail}")
        self.host = host
        self.transient = transient


@dataclass(frozen=True)
class _Rule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    reason: str
    private: bool
    """True: a private range that ``allow_private_networks`` opens (tests, on-prem image
    stores). False: refused always, since no image is ever served from there."""


def _rule(cidr: str, reason: str, *, private: bool) -> _Rule:
    return _Rule(ipaddress.ip_network(cidr), reason, private)


# Order matters: the first matching rule names the reason, so the metadata endpoints come
# before the link-local and unique-local ranges that contain them.
_RULES: tuple[_Rule, ...] = (
    _rule("169.254.169.254/32", "a cloud metadata endpoint", private=False),
    _rule("fd00:ec2::254/128", "a cloud metadata endpoint", private=False),
    # Linux connects 0.x.x.x to the local host, so this is loopback in disguise.
    _rule("0.0.0.0/8", "the unspecified 'this network' range", private=False),
    _rule("127.0.0.0/8", "loopback", private=True),
    _rule("10.0.0.0/8", "private (RFC 1918)", private=True),
    _rule("172.16.0.0/12", "private (RFC 1918)", private=True),
    _rule("192.168.0.0/16", "private (RFC 1918)", private=True),
    _rule("100.64.0.0/10", "shared address space (RFC 6598)", private=True),
    _rule("169.254.0.0/16", "link-local", private=True),
    _rule("224.0.0.0/4", "multicast", private=False),
    _rule("240.0.0.0/4", "reserved", private=False),
    _rule("::/128", "unspecified", private=False),
    _rule("::1/128", "loopback", private=True),
    # ::a.b.c.d, deprecated since 2006 and routed nowhere; refused whatever it embeds.
    _rule("::/96", "IPv4-compatible IPv6 (deprecated)", private=False),
    _rule("fc00::/7", "unique local (private)", private=True),
    _rule("fe80::/10", "link-local", private=True),
    _rule("fec0::/10", "site-local (deprecated private)", private=True),
    _rule("ff00::/8", "multicast", private=False),
    _rule("64:ff9b:1::/48", "local-use NAT64", private=True),
    # Teredo obfuscates the IPv4 address it embeds, so it cannot be checked.
    _rule("2001::/32", "Teredo", private=False),
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address a packet to ``address`` really reaches, for the forms that embed one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped IPv6"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF), "NAT64"
    if address.sixtofour is not None:
        return address.sixtofour, "6to4"
    return None


def refusal_reason(address: IPAddress, *, allow_private_networks: bool) -> str | None:
    """Why connecting to ``address`` is refused, or None when it is allowed.

    ``::ffff:127.0.0.1`` reaches 127.0.0.1, so IPv6 forms that embed an IPv4 address are
    judged by the address they embed.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner, form = embedded
            reason = refusal_reason(inner, allow_private_networks=allow_private_networks)
            return None if reason is None else f"{reason} ({inner} as {form})"
    for rule in _RULES:
        if address in rule.network:
            return None if rule.private and allow_private_networks else rule.reason
    # Whatever else IANA set aside (documentation, benchmarking, protocol assignments).
    if not address.is_global and not allow_private_networks:
        return "not globally routable"
    return None


def policy_check(*, allow_private_networks: bool) -> AddressCheck:
    """The standard rules as an :data:`AddressCheck`; they look at the address, not the name."""

    def check(host: str, address: IPAddress) -> str | None:
        return refusal_reason(address, allow_private_networks=allow_private_networks)

    return check


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Resolve with the OS resolver (so /etc/hosts and search domains apply), deduplicated."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResolutionFailed(host, exc.strerror or str(exc), transient=exc.errno == socket.EAI_AGAIN) from exc
    except UnicodeError as exc:  # Python's idna codec refuses empty and over-long labels
        raise ResolutionFailed(host, "not a valid host name", transient=False) from exc
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the check allows.

    Every address a name resolves to must pass: an attacker's DNS can return a public
    address next to 127.0.0.1, and which one a connect would pick is not ours to predict.
    Once all pass, they are tried in order, so a host whose IPv6 route is broken still
    loads over IPv4.
    """

    def __init__(
        self,
        resolver: Resolver,
        check: AddressCheck,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolver = resolver
        self._check = check
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        *fallbacks, last = await self._vetted_addresses(host, port, timeout)
        for address in fallbacks:
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except httpcore.ConnectError:
                continue
        return await self._inner.connect_tcp(str(last), port, timeout, local_address, socket_options)

    async def _vetted_addresses(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(host)]
            resolved = False
        except ValueError:
            addresses = list(await self._resolve(host, port, timeout))
            resolved = True
        if not addresses:
            raise ResolutionFailed(host, "no addresses", transient=False)
        for address in addresses:
            reason = self._check(host, address)
            if reason is not None:
                raise AddressRefused(host, address, reason, resolved=resolved)
        return addresses

    async def _resolve(self, host: str, port: int, timeout: float | None) -> Sequence[IPAddress]:
        """Resolution is part of connecting, so the connect timeout bounds it too."""
        try:
            return await asyncio.wait_for(self._resolver(host, port), timeout)
        except asyncio.TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took over {timeout}s") from exc
