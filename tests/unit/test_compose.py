"""docker-compose.yml and the Dockerfile agree with the code: real settings, topics, services, health checks.

Docker itself does not run here; ``docker compose config`` is checked only where the plugin exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.cli.config import settings_rows

REPO = Path(__file__).resolve().parents[2]
LONG_RUNNING = {"kafka", "postgres", "worker", "sink"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


def test_every_tagstream_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    known = {name for name, _, _ in settings_rows()}
    dockerfile_env = re.findall(r"\b(TAGSTREAM_[A-Z0-9_]+)=", (REPO / "Dockerfile").read_text())
    used = {key for service in compose["services"].values() for key in _environment(service)} | set(dockerfile_env)
    tagstream = {key for key in used if key.startswith("TAGSTREAM_")}

    assert tagstream - known == set()
    assert {"TAGSTREAM_BROKER", "TAGSTREAM_SINK__DB", "TAGSTREAM_TOPICS__PARTITIONS"} <= tagstream


def test_services_exist_with_health_checks_and_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert set(services) >= LONG_RUNNING | {"topics"}
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"], name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka = _environment(services["kafka"])
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert services["topics"]["restart"] == "no"
    assert services["worker"]["deploy"]["replicas"]
    for name in ("worker", "sink"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["sink"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["build"] == "." and (REPO / "Dockerfile").exists()


def test_topics_service_creates_every_topic_the_services_use(compose: dict[str, Any]) -> None:
    services = compose["services"]
    script = " ".join(services["topics"]["command"])
    names = {
        value
        for service in ("worker", "sink")
        for key, value in _environment(services[service]).items()
        if (key.startswith("TAGSTREAM_TOPICS__") and key != "TAGSTREAM_TOPICS__PARTITIONS")
        or key == "TAGSTREAM_SINK__DEAD_LETTERS"
    }

    assert names == {"image-uploaded", "tag-suggestions", "image-uploaded.dlq", "tag-suggestions.dlq"}
    for topic in names:
        assert re.search(rf"(^|\s){re.escape(topic)}(\s|;|$)", script), topic


def test_workers_and_sink_share_one_configuration(compose: dict[str, Any]) -> None:
    """Topic names, group and partitions must match between roles, or events go nowhere."""
    worker, sink = (_environment(compose["services"][s]) for s in ("worker", "sink"))
    shared = {k for k in worker.keys() & sink.keys() if k.startswith("TAGSTREAM_")}

    assert {"TAGSTREAM_BROKER", "TAGSTREAM_APP_ID", "TAGSTREAM_TOPICS__SUGGESTIONS"} <= shared
    assert all(worker[k] == sink[k] for k in shared)
    postgres = _environment(compose["services"]["postgres"])
    assert f"{postgres['POSTGRES_USER']}:" in sink["TAGSTREAM_SINK__DB"]
    assert sink["TAGSTREAM_SINK__DB"].endswith(f"@postgres:5432/{postgres['POSTGRES_DB']}")
