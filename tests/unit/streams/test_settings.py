"""The settings object: sections built from the library's own configs, read from the environment, no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from inference.config import ModelConfig, SearchConfig
from streams.cli.config import settings_rows
from streams.settings import Settings

README = Path(__file__).resolve().parents[3] / "README.md"


def test_sections_are_the_library_configs_fields_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TAGSTREAM_SEARCH__MAX_WINDOWS", "12")
    monkeypatch.setenv("TAGSTREAM_SEARCH__SIMILARITY_THRESHOLD", "0.6")
    monkeypatch.setenv("TAGSTREAM_MODELS__DETECTOR", "/models/yolo26m.pt")

    config = Settings().pipeline_config()

    assert (config.search.max_windows, config.search.similarity_threshold) == (12, 0.6)
    # What the settings do not expose keeps the library's default.
    assert config.search.window_scales == SearchConfig().window_scales
    assert config.models == ModelConfig(detector="/models/yolo26m.pt")


def test_every_exposed_library_field_has_the_librarys_default() -> None:
    settings = Settings()

    assert settings.pipeline_config().search == SearchConfig()
    assert settings.pipeline_config().models == ModelConfig()
    assert settings.models.offline is False


def test_offline_models_are_not_built_by_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGSTREAM_MODELS__OFFLINE", "true")
    monkeypatch.setenv("TAGSTREAM_CACHE_DIR", str(tmp_path))

    config = Settings().pipeline_config()

    assert config.models.detector == ModelConfig().detector
    assert list(tmp_path.iterdir()) == []


def test_the_readme_table_is_what_tagstream_settings_prints() -> None:
    """The README's settings table is generated (``tagstream settings --markdown``): it must not drift."""
    rows = [f"| `{name}` | `{default}` | {meaning} |" for name, default, meaning in settings_rows()]
    table = [line for line in README.read_text().splitlines() if line.startswith("| `TAGSTREAM_")]

    # The cache directory's default is the home of whoever generated the table.
    assert [r.split(" | ")[0] for r in table] == [r.split(" | ")[0] for r in rows]
    assert [r for r in table if "CACHE_DIR" not in r] == [r for r in rows if "CACHE_DIR" not in r]


def test_the_suggestions_schema_version_must_be_one_that_ships(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGSTREAM_TOPICS__SUGGESTIONS_SCHEMA_VERSION", "1")
    assert Settings().topics.suggestions_schema_version == 1
    monkeypatch.setenv("TAGSTREAM_TOPICS__SUGGESTIONS_SCHEMA_VERSION", "3")
    with pytest.raises(ValidationError, match="has no version 3"):
        Settings()
