"""Image embeddings behind a small interface, with a CLIP vision-tower implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from inference.runtime import autocast_dtype, keep_thread_count, resolve_device

# CLIP's published normalisation constants (the same for every OpenAI CLIP checkpoint).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Embedder(Protocol):
    """Maps a batch of resized crops to unit-length vectors, so cosine is a dot product."""

    name: str
    input_size: int
    device: torch.device

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """``crops``: float (N, 3, S, S) in [0, 1] on ``device``; returns (N, D) fp32, L2-normalised."""
        ...


class ClipEmbedder:
    """The CLIP vision tower plus its projection: the image half of CLIP's joint space."""

    def __init__(
        self,
        source: str,
        device: str = "cpu",
        precision: str = "fp32",
        torch_threads: int | None = None,
    ) -> None:
        from transformers import CLIPVisionModelWithProjection

        self.name = Path(source).name if Path(source).exists() else source
        self.device = resolve_device(device)
        self._autocast = autocast_dtype(precision, self.device)
        self._threads = torch_threads
        with keep_thread_count(torch_threads):
            model = CLIPVisionModelWithProjection.from_pretrained(source)
        self._model = model.to(self.device).eval()  # type: ignore[arg-type]  # transformers types .to() oddly
        self.input_size = int(self._model.config.image_size)
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    @property
    def dimension(self) -> int:
        return int(self._model.config.projection_dim)

    @torch.inference_mode()
    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.shape[0] == 0:
            return torch.zeros((0, self.dimension), device=self.device)
        pixels = (crops - self._mean) / self._std
        with keep_thread_count(self._threads):
            if self._autocast is not None:
                with torch.autocast(device_type=self.device.type, dtype=self._autocast):
                    out = self._model(pixel_values=pixels).image_embeds
            else:
                out = self._model(pixel_values=pixels).image_embeds
        return torch.nn.functional.normalize(out.float(), dim=-1)
