"""Cut and resize many boxes of one image in a single tensor operation.

The reference service cropped and resized one PIL image at a time; ``roi_align`` does the
whole set at once, on whatever device the image lives on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import roi_align

from inference.types import BBox, RGBImage


def image_to_tensor(image: RGBImage, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1]; converted once per image, shared by all its crops."""
    array = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(array).to(device).unsqueeze(0).float().div_(255.0)


def crop_and_resize(image: torch.Tensor, boxes: Sequence[BBox], size: int) -> torch.Tensor:
    """(N, 3, size, size) bilinear crops; boxes may extend past the border (zeros outside)."""
    if not boxes:
        return image.new_zeros((0, 3, size, size))
    rois = torch.tensor([b.as_xyxy() for b in boxes], dtype=image.dtype, device=image.device)
    # sampling_ratio=-1 averages ceil(box/size) samples per output pixel, so large boxes are
    # low-pass filtered like a proper resize instead of aliasing.
    return roi_align(image, [rois], output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
