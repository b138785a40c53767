"""The real pipeline over the offline (random-init) models the test session builds in its cache dir."""

from __future__ import annotations

from pathlib import Path

from inference.config import ModelConfig, PipelineConfig
from inference.pipeline import Pipeline


def offline_pipeline(cache_dir: Path) -> Pipeline:
    """YOLO26n and the tiny CLIP, random-init, loaded through the real loaders; fresh caches."""
    models = cache_dir / "models"
    config = PipelineConfig(
        models=ModelConfig(
            detector=str(models / "yolo26n-random.pt"),
            embedder=str(models / "clip-tiny-random"),
            export_dir=str(cache_dir / "onnx"),
        )
    )
    return Pipeline.load(config)
