"""Process-wide torch settings that third-party loaders silently change."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, so one config serves GPU and CPU hosts."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The reduced-precision dtype to autocast to, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use bf16 on CPU")
        return torch.float16
    raise ValueError(f"unknown precision {precision!r}: expected fp32, bf16 or fp16")


def default_thread_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def keep_thread_count(threads: int | None) -> Iterator[None]:
    """Restore torch's intra-op thread count after code that lowers it.

    Ultralytics sets ``cpu_count - 1`` threads when it builds a predictor: on a 2-core host
    that halves every model's speed, CLIP's included.
    """
    wanted = threads or torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
