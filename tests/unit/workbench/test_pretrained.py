"""Deciding between pretrained and offline models must accept local model directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import ModelSettings, Settings
from workbench.pretrained import pretrained_available, with_available_models


def _settings(detector: Path, embedder: str) -> Settings:
    return Settings(models=ModelSettings(detector=str(detector), embedder=embedder))


def test_a_local_embedder_directory_counts_as_available(tmp_path: Path) -> None:
    detector = tmp_path / "yolo.pt"
    detector.write_bytes(b"checkpoint")
    embedder = tmp_path / "clip"
    embedder.mkdir()
    (embedder / "config.json").write_text("{}")

    settings, offline = with_available_models(_settings(detector, str(embedder)))

    assert pretrained_available(settings) and not offline and not settings.models.offline


@pytest.mark.parametrize("embedder", ["/no/such/model/dir", "not a valid hub id!", "nobody/not-in-the-cache"])
def test_a_missing_embedder_falls_back_to_offline_models(tmp_path: Path, embedder: str) -> None:
    detector = tmp_path / "yolo.pt"
    detector.write_bytes(b"checkpoint")

    settings, offline = with_available_models(_settings(detector, embedder))

    assert offline and settings.models.offline
