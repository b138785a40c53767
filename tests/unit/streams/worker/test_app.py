"""The Faust app takes its topic settings from the settings object."""

from __future__ import annotations

from pathlib import Path

from streams.settings import Settings, TopicSettings
from streams.worker.app import create_app


def test_topics_the_worker_creates_get_the_configured_partitions_and_replication(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path, topics=TopicSettings(partitions=6, replication=3))

    app = create_app(settings)

    assert app.conf.topic_partitions == 6
    assert app.conf.topic_replication_factor == 3
