"""The address rules, and the backend that connects only to the addresses it checked.

No test here opens a socket: the backend's inner backend is a recorder, so the tests prove
where a connection *would* go without ever making one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Iterable, Sequence

import httpcore
import pytest

from streams.fetch.netguard import (
    AddressRefused,
    GuardedBackend,
    IPAddress,
    ResolutionFailed,
    policy_check,
    refusal_reason,
    system_resolver,
)

REFUSED_BY_DEFAULT = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("0.0.0.0", "this network"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "RFC 1918"),
    ("172.16.5.4", "RFC 1918"),
    ("192.168.1.1", "RFC 1918"),
    ("100.64.0.1", "shared address"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.1", "not globally routable"),
    ("198.18.0.1", "not globally routable"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "not globally routable"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("64:ff9b:1::a00:1", "NAT64"),
    ("::ffff:127.0.0.1", "loopback (127.0.0.1 as IPv4-mapped IPv6)"),
    ("::ffff:10.1.2.3", "RFC 1918) (10.1.2.3 as IPv4-mapped IPv6)"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("::8.8.8.8", "IPv4-compatible"),
    ("64:ff9b::7f00:1", "loopback (127.0.0.1 as NAT64)"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ("2002:7f00:1::", "loopback (127.0.0.1 as 6to4)"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED_BY_DEFAULT)
def test_default_rules_refuse_non_public_addresses(address: str, reason: str) -> None:
    verdict = refusal_reason(ipaddress.ip_address(address), allow_private_networks=False)
    assert verdict is not None
    assert reason in verdict


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address), allow_private_networks=False) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.1", "100.64.0.1", "fd12::1", "::ffff:127.0.0.1"])
def test_allowing_private_networks_opens_private_ranges(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address), allow_private_networks=True) is None


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "0.0.0.0", "224.0.0.1", "::"],
)
def test_some_addresses_stay_refused_even_with_private_networks(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address), allow_private_networks=True) is not None


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the socket layer: records connect targets, fails those told to."""

    def __init__(self, unreachable: Iterable[str] = ()) -> None:
        self.connects: list[tuple[str, int]] = []
        self._unreachable = set(unreachable)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host in self._unreachable:
            raise httpcore.ConnectError(f"{host} unreachable")
        return httpcore.AsyncNetworkStream()


class FakeDns:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.lookups.append(host)
        return [ipaddress.ip_address(a) for a in self.table[host]]


def connect(backend: GuardedBackend, host: str, port: int = 443) -> None:
    asyncio.run(backend.connect_tcp(host, port, timeout=1.0))


PUBLIC_ONLY = policy_check(allow_private_networks=False)


def test_connects_to_the_checked_address_not_the_name() -> None:
    dns = FakeDns({"images.example": ["93.184.215.14"]})
    inner = RecordingBackend()
    connect(GuardedBackend(dns, PUBLIC_ONLY, inner), "images.example")
    assert dns.lookups == ["images.example"]
    assert inner.connects == [("93.184.215.14", 443)]


def test_refuses_before_connecting_when_any_address_is_refused() -> None:
    dns = FakeDns({"rebind.example": ["93.184.215.14", "127.0.0.1"]})
    inner = RecordingBackend()
    with pytest.raises(AddressRefused) as info:
        connect(GuardedBackend(dns, PUBLIC_ONLY, inner), "rebind.example")
    assert info.value.address == ipaddress.ip_address("127.0.0.1")
    assert "rebind.example (127.0.0.1)" in str(info.value)
    assert inner.connects == []


def test_ip_literals_are_checked_without_resolving() -> None:
    dns = FakeDns({})
    inner = RecordingBackend()
    with pytest.raises(AddressRefused) as info:
        connect(GuardedBackend(dns, PUBLIC_ONLY, inner), "::ffff:127.0.0.1")
    assert str(info.value) == ("refusing to connect to ::ffff:127.0.0.1: loopback (127.0.0.1 as IPv4-mapped IPv6)")
    connect(GuardedBackend(dns, PUBLIC_ONLY, inner), "8.8.8.8")
    assert dns.lookups == []
    assert inner.connects == [("8.8.8.8", 443)]


def test_falls_back_to_the_next_checked_address_when_one_is_unreachable() -> None:
    dns = FakeDns({"dual.example": ["2606:4700:4700::1111", "1.1.1.1"]})
    inner = RecordingBackend(unreachable={"2606:4700:4700::1111"})
    connect(GuardedBackend(dns, PUBLIC_ONLY, inner), "dual.example")
    assert inner.connects == [("2606:4700:4700::1111", 443), ("1.1.1.1", 443)]


def test_the_last_connect_error_propagates() -> None:
    dns = FakeDns({"down.example": ["1.1.1.1", "1.0.0.1"]})
    inner = RecordingBackend(unreachable={"1.1.1.1", "1.0.0.1"})
    with pytest.raises(httpcore.ConnectError, match=re.escape("1.0.0.1 unreachable")):
        connect(GuardedBackend(dns, PUBLIC_ONLY, inner), "down.example")


def test_the_check_sees_the_host_name() -> None:
    def only_trusted_name(host: str, address: IPAddress) -> str | None:
        return None if host == "trusted.internal" else PUBLIC_ONLY(host, address)

    dns = FakeDns({"trusted.internal": ["10.0.0.7"], "other.internal": ["10.0.0.7"]})
    inner = RecordingBackend()
    backend = GuardedBackend(dns, only_trusted_name, inner)
    connect(backend, "trusted.internal")
    with pytest.raises(AddressRefused):
        connect(backend, "other.internal")
    assert inner.connects == [("10.0.0.7", 443)]


def test_an_empty_answer_is_a_resolution_failure() -> None:
    inner = RecordingBackend()
    with pytest.raises(ResolutionFailed, match="no addresses"):
        connect(GuardedBackend(FakeDns({"empty.example": []}), PUBLIC_ONLY, inner), "empty.example")
    assert inner.connects == []


def test_slow_resolution_is_a_connect_timeout() -> None:
    async def stuck(host: str, port: int) -> Sequence[IPAddress]:
        await asyncio.sleep(10)
        return []

    backend = GuardedBackend(stuck, PUBLIC_ONLY, RecordingBackend())
    with pytest.raises(httpcore.ConnectTimeout, match=re.escape("resolving slow.example")):
        asyncio.run(backend.connect_tcp("slow.example", 80, timeout=0.05))


def test_system_resolver_returns_each_address_once() -> None:
    addresses = asyncio.run(system_resolver("127.0.0.1", 80))
    assert addresses == [ipaddress.ip_address("127.0.0.1")]


def test_system_resolver_reports_unresolvable_names() -> None:
    # Python's idna codec rejects the empty label before any DNS query leaves the host.
    with pytest.raises(ResolutionFailed) as info:
        asyncio.run(system_resolver("bad..name", 80))
    assert not info.value.transient
