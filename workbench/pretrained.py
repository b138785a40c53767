"""Whether the configured pretrained models can be loaded here without a download."""

from __future__ import annotations

from pathlib import Path

from streams.settings import Settings


def pretrained_available(settings: Settings) -> bool:
    """True when both configured models are on disk (a path, or the Hugging Face cache)."""
    return _embedder_on_disk(settings.models.embedder) and Path(settings.models.detector).exists()


def _embedder_on_disk(embedder: str) -> bool:
    """A local ``save_pretrained`` directory, or a hub id already in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if Path(embedder).exists():
        return Path(embedder, "config.json").exists()
    try:
        return isinstance(try_to_load_from_cache(embedder, "config.json"), str)
    except HFValidationError:  # neither a directory here nor a valid hub id (a mistyped path, say)
        return False


def with_available_models(settings: Settings) -> tuple[Settings, bool]:
    """The settings to run with, switched to offline models when pretrained ones are missing."""
    if settings.models.offline or pretrained_available(settings):
        return settings, settings.models.offline
    offline = settings.model_copy(deep=True)
    offline.models.offline = True
    return offline, True
