"""Random-initialised models with the real architectures, for machines that cannot download.

They are saved to disk and loaded back through the same loaders as pretrained weights
(``ultralytics.YOLO(path)``, ``from_pretrained(dir)``), so tests and offline demos exercise the
real loading code. Their predictions are meaningless; the geometric verifier does not depend on
them, which is why offline accuracy can still be measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference.detector import load_yolo


@dataclass(frozen=True)
class OfflineModels:
    detector: Path
    embedder: Path


def build_yolo(directory: Path, architecture: str = "yolo26n") -> Path:
    """Build ``architecture`` from its bundled YAML with random weights and save a checkpoint."""
    path = directory / f"{architecture}-random.pt"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        load_yolo(f"{architecture}.yaml").save(str(path))
    return path


def build_clip(directory: Path, tiny: bool = True, seed: int = 0) -> Path:
    """Build a CLIP vision tower (ViT-B/32 shape unless ``tiny``) and ``save_pretrained`` it."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    path = directory / ("clip-tiny-random" if tiny else "clip-vit-b32-random")
    if not (path / "config.json").exists():
        torch.manual_seed(seed)
        config = _tiny_clip_config() if tiny else CLIPVisionConfig()
        CLIPVisionModelWithProjection(config).save_pretrained(path)
    return path


def build_offline_models(directory: Path, tiny: bool = True, yolo: str = "yolo26n") -> OfflineModels:
    """Both models, cached in ``directory`` so repeated runs reuse them."""
    return OfflineModels(detector=build_yolo(directory, yolo), embedder=build_clip(directory, tiny))


def _tiny_clip_config() -> Any:
    """Same code path as ViT-B/32 (224 px input, 32 px patches) at a fraction of the compute."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
        projection_dim=64,
    )
