"""Paying a process's one-time costs before the first upload does.

The first call through each code path costs more than every later one: Python imports modules
lazily (``np.unique`` loads ``numpy.ma`` on first use: 66 ms where no bytecode is cached), and
oneDNN sets up each new input shape of a network once (≈ 50 ms for YOLO26n on a 0.5 MP photo).
Without a warm-up the first upload after a worker starts pays all of it (an eval-dev photo:
502 instead of 228 ms). The warm-up runs every network and the verifier on generated
pictures, never touching the pipeline's caches, so no catalogue entry or cache
counter comes from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from inference.detector import Detector
from inference.embedder import Embedder
from inference.geometry import GeometricVerifier
from inference.types import BBox, RGBImage

# Shapes (height, width) warmed by default: 4:3 landscape and portrait, the aspect most cameras
# shoot, at the detector's 640 px input (it letterboxes every photo to that long side); other
# aspects pay their detector set-up once, later.
DEFAULT_SHAPES: tuple[tuple[int, int], ...] = ((480, 640), (640, 480))


def warm_up(
    detector: Detector,
    embedder: Embedder,
    verifier: GeometricVerifier,
    shapes: Sequence[tuple[int, int]],
    batch_size: int,
    detection_confidence: float,
) -> None:
    """Each shape through the detector and the verifier alone, then ``batch_size`` of them together."""
    rng = np.random.default_rng(0)
    pictures = [textured_picture(rng, height, width) for height, width in shapes]
    for index, picture in enumerate(pictures):
        detector.detect([picture], detection_confidence)
        _verify_itself(verifier, picture, simulated_views=index == 0)
    if batch_size > 1 and pictures:
        detector.detect([pictures[i % len(pictures)] for i in range(batch_size)], detection_confidence)
    size = embedder.input_size
    embedder.embed(torch.rand(max(batch_size, 8), 3, size, size, device=embedder.device))


def textured_picture(rng: np.random.Generator, height: int, width: int) -> RGBImage:
    """Noise blurred at three scales: blobs and corners at many sizes, as SIFT needs to find keypoints."""
    grey = np.zeros((height, width), np.float32)
    for sigma in (1.5, 4.0, 10.0):
        noise = rng.normal(0.0, 1.0, (height, width)).astype(np.float32)
        grey += cv2.GaussianBlur(noise, (0, 0), sigma) * sigma
    grey = (grey - grey.min()) * (255.0 / max(float(grey.max() - grey.min()), 1e-6))
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


def _verify_itself(verifier: GeometricVerifier, picture: RGBImage, simulated_views: bool = True) -> None:
    """Features, matching, the rigid fit and the local model of a box against its own picture.

    A picture matched with itself settles at once, so guided matching and the affine fallback
    are not warmed: their first use may still pay a little. The simulated views are
    shape-independent and the costliest part (≈ 0.4 s), so only the first shape extracts them.
    """
    height, width = picture.shape[:2]
    box = BBox(width / 4, height / 4, width / 2, height / 2)
    target = verifier.target_features(picture)
    frontal = verifier.frontal_features(picture, box)
    settle = math.inf if simulated_views else None  # nothing settles at infinity: the simulated views are used
    checked = verifier.verify_views(frontal, lambda: verifier.tilted_features(picture, box), target, box, settle)
    verifier.local_model(checked.matches, checked.source, target, box)
