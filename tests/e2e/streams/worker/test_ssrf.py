"""Hostile image URLs through a real worker with the DEFAULT fetch policy: refused, never connected.

Every event below names an internal address; each must become a dead letter saying
``blocked_address`` and the loopback servers standing behind those addresses must see no TCP
connection at all. 10.0.0.1 and 169.254.169.254 are not served by anything here: the guard refuses
them before a socket is opened (tests/unit/streams/fetch/test_netguard.py and test_fetcher.py prove that with
a socket layer that records and refuses), so these tests never send traffic off the machine.

The redirect case needs a *public* host that answers with a redirect. This machine has no DNS
and a worker process cannot be handed a fake resolver, so that case runs one level down: the
real :class:`SuggestionProcessor` with the real :class:`ImageFetcher` and network guard, where
only name resolution and "this loopback server counts as public" are injected (exactly as in
test_fetch.py). Everything after the redirect — the hop check, the refusal, the dead letter —
is the production code path the worker uses.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image
from support.brokers import Broker
from support.hostile_http import HostileServer, ipv6_loopback_available, redirect, status
from support.pipelines.trivial import TrivialPipeline
from support.processes import WorkerFactory
from support.reliability_report import report
from support.streams import collect

from schemas import DEAD_LETTER, IMAGE_UPLOADED, TAG_SUGGESTIONS, decode, encode
from streams.fetch.fetcher import FetchPolicy, ImageFetcher
from streams.fetch.netguard import IPAddress, ResolutionFailed, refusal_reason
from streams.kafka import complete_upload, produce_uploads
from streams.worker.processor import Inbound, SuggestionProcessor, Topics

DEFAULT_POLICY = {"TAGSTREAM_FETCH__ALLOW_PRIVATE_NETWORKS": "false"}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 128, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_internal_addresses_are_dead_lettered_without_connecting(
    broker: Broker, workers: WorkerFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    uploads, dead_letters = "ssrf.image-uploaded", "ssrf.image-uploaded.dlq"
    with HostileServer() as loopback:
        loopback.routes["/x.png"] = status(200, _png(), "image/png")
        targets = {
            "loopback-v4": loopback.url("/x.png"),
            "localhost-name": f"http://localhost:{loopback.port}/x.png",
            "ipv4-mapped-v6": f"http://[::ffff:127.0.0.1]:{loopback.port}/x.png",
            "unspecified": f"http://0.0.0.0:{loopback.port}/x.png",
            "private-10": "http://10.0.0.1/x.png",
            "cloud-metadata": "http://169.254.169.254/latest/meta-data",
        }
        servers = [loopback]
        v6 = HostileServer("::1") if ipv6_loopback_available() else None
        if v6 is not None:
            v6.__enter__()
            v6.routes["/x.png"] = status(200, _png(), "image/png")
            servers.append(v6)
            targets["loopback-v6"] = v6.url("/x.png")
        else:
            targets["loopback-v6"] = f"http://[::1]:{loopback.port}/x.png"
        try:
            records = [{"upload_id": name, "target_image_url": url, "sources": []} for name, url in targets.items()]
            sent = asyncio.run(produce_uploads(broker.url, uploads, records))
            workers.start("ssrf", "ssrf", **DEFAULT_POLICY)
            letters = collect(broker, dead_letters, len(sent), timeout_s=180)
        finally:
            if v6 is not None:
                v6.__exit__(None, None, None)

        by_upload = {str(letter["upload_id"]): letter for letter in letters}
        assert set(by_upload) == set(targets)
        for name, letter in by_upload.items():
            assert letter["error_kind"] == "fetch_error", (name, letter)
            message = str(letter["error_message"])
            assert message.startswith("blocked_address:"), (name, message)
            assert letter["attempts"] == 1, name  # permanent: never retried
        assert "cloud metadata" in str(by_upload["cloud-metadata"]["error_message"]).lower() or "link-local" in str(
            by_upload["cloud-metadata"]["error_message"]
        )
        for server in servers:
            assert server.connections == 0, f"{server.host} was connected to"
        report(
            tmp_path_factory,
            "SSRF: internal URLs through a worker (default policy)",
            len(sent),
            0,
            len(letters),
            reasons={n: str(x["error_message"]) for n, x in sorted(by_upload.items())},
            loopback_connections=sum(s.connections for s in servers),
            ipv6_server=v6 is not None,
        )


PUBLIC_NAME = "images.public.example"


async def _public_dns(host: str, port: int) -> Sequence[IPAddress]:
    """A stand-in for DNS: the public-looking name and localhost resolve to 127.0.0.1."""
    if host in (PUBLIC_NAME, "localhost"):
        return [ipaddress.ip_address("127.0.0.1")]
    raise ResolutionFailed(host, "Name or service not known", transient=False)


def _public_check(host: str, address: IPAddress) -> str | None:
    """The default rules, except that PUBLIC_NAME's loopback address counts as a public one."""
    if host == PUBLIC_NAME and address == ipaddress.ip_address("127.0.0.1"):
        return None
    return refusal_reason(address, allow_private_networks=False)


def test_public_host_redirecting_inward_is_dead_lettered(tmp_path_factory: pytest.TempPathFactory) -> None:
    with HostileServer() as public, HostileServer() as internal:
        internal.routes["/x.png"] = status(200, _png(), "image/png")
        public.routes["/ok.png"] = status(200, _png(), "image/png")
        public.routes["/to-loopback"] = redirect(internal.url("/x.png"))
        public.routes["/to-localhost"] = redirect(f"http://localhost:{internal.port}/x.png")
        public.routes["/to-private"] = redirect("http://10.0.0.1/x.png")
        public.routes["/to-metadata"] = redirect("http://169.254.169.254/latest/meta-data")
        public.routes["/to-v6-loopback"] = redirect(f"http://[::1]:{internal.port}/x.png")
        paths = ["/ok.png", "/to-loopback", "/to-localhost", "/to-private", "/to-metadata", "/to-v6-loopback"]

        def url(path: str) -> str:
            return f"http://{PUBLIC_NAME}:{public.port}{path}"

        async def run() -> list[tuple[str, str, dict[str, object]]]:
            fetcher = ImageFetcher(FetchPolicy(), resolver=_public_dns, address_check=_public_check)
            async with fetcher:
                processor = SuggestionProcessor(TrivialPipeline(), fetcher, Topics("s", "d"))
                now = datetime.now(timezone.utc)
                batch = [
                    Inbound(
                        "uploads",
                        0,
                        offset,
                        path.encode(),
                        encode(
                            IMAGE_UPLOADED,
                            complete_upload(
                                {
                                    "event_id": str(uuid.uuid4()),
                                    "upload_id": path,
                                    "target_image_url": url(path),
                                    "sources": [],
                                }
                            ),
                        ),
                        now,
                    )
                    for offset, path in enumerate(paths)
                ]
                outcomes = await processor.process(batch)
            decoded = []
            for path, outcome in zip(paths, outcomes, strict=True):
                schema = TAG_SUGGESTIONS if outcome.topic == "s" else DEAD_LETTER
                decoded.append((path, outcome.topic, decode(outcome.value, expected=schema)))
            return decoded

        results = asyncio.run(run())
        by_path = {path: (topic, record) for path, topic, record in results}
        assert by_path["/ok.png"][0] == "s"  # control: the public host itself is reachable
        for path in paths[1:]:
            topic, record = by_path[path]
            assert topic == "d", path
            message = str(record["error_message"])
            assert message.startswith("blocked_address:") and "at redirect target" in message, (path, message)
        assert internal.connections == 0
        assert all(public.hits[p] == 1 for p in paths)
        report(
            tmp_path_factory,
            "SSRF: public host redirecting to internal addresses (processor + real fetcher, injected DNS)",
            len(paths),
            1,
            len(paths) - 1,
            reasons={p: str(r["error_message"]) for p, (t, r) in by_path.items() if t == "d"},
            internal_connections=internal.connections,
        )
