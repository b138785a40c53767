"""The YOLO network under ONNX Runtime: exported once per checkpoint, run by a faster CPU engine.

Why: on the 2-core development CPU the exported YOLO26n runs in ≈ 28 ms per eval-dev photo
against ≈ 35 ms for the fused torch network and ≈ 40 ms through Ultralytics' predictor
(docs/performance.md). The network and the pre- and post-processing are Ultralytics' own (its
exporter, `LetterBox`, `non_max_suppression`, `scale_boxes`, with the predictor's arguments), so
the detections are the torch predictor's to within float rounding
(`tests/unit/inference/test_yolo_onnx.py` compares them on real photos).

One difference, on purpose: each image is letterboxed as if it came alone (the smallest
stride-multiple rectangle) and images of equal letterboxed shape share a forward pass; the
predictor pads a batch of mixed sizes to a square instead. Here an image's detections do not
depend on the micro-batch it arrived in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from inference.types import RGBImage

if TYPE_CHECKING:
    from ultralytics import YOLO

# The predictor's defaults for detection, which YoloDetector never changes.
_NMS_IOU = 0.7
_MAX_DETECTIONS = 300


def export_dir() -> Path:
    """Where exported networks are kept: beside Ultralytics' settings (`inference.detector`)."""
    return Path.home() / ".cache" / "tagstream" / "onnx"


def exported_network(model: YOLO, directory: Path) -> Path:
    """The ONNX file of ``model``'s checkpoint (dynamic input size), exported on first use.

    Exported with Ultralytics' defaults, which are also its predictor's: the one-to-many head
    with NMS after it (``nms=None``), even for a YOLO26 checkpoint that has an NMS-free head.

    Keyed by the checkpoint's bytes and the exporting libraries' versions, so a new checkpoint or
    upgrade exports again. Written under a temporary name and renamed: workers starting together
    never read a half-written file.
    """
    import ultralytics

    checkpoint = Path(str(model.ckpt_path or ""))
    if not checkpoint.is_file():
        raise ValueError(f"ONNX Runtime needs a YOLO checkpoint file to export, not {model.ckpt_path!r}")
    digest = hashlib.sha256(checkpoint.read_bytes())
    digest.update(f"{ultralytics.__version__}/{torch.__version__}".encode())
    target = directory / f"{checkpoint.stem}-{digest.hexdigest()[:16]}.onnx"
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=directory, prefix=".export-"))
    try:
        copy = workdir / checkpoint.name
        shutil.copyfile(checkpoint, copy)
        from ultralytics import YOLO

        exported = YOLO(str(copy)).export(format="onnx", dynamic=True, simplify=False, device="cpu", batch=1)
        os.replace(exported, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


class OnnxYolo:
    """Rows of (x1, y1, x2, y2, confidence, class) per image, in image pixels, from the exported network."""

    def __init__(self, model: YOLO, threads: int, image_size: int, directory: Path | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # By default idle ONNX Runtime threads spin after each run, taking the cores the
        # verifier's SIFT needs right after detection.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = exported_network(model, directory or export_dir())
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        metadata = self._session.get_modelmeta().custom_metadata_map
        self._end2end = metadata.get("end2end") == "True"
        self._stride = int(metadata.get("stride", 32))
        self._image_size = image_size

    def predict(self, images: Sequence[RGBImage], confidence: float) -> list[np.ndarray[Any, Any]]:
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import scale_boxes

        letterbox = LetterBox(self._image_size, auto=True, stride=self._stride)
        boxed = [cast("np.ndarray[Any, Any]", letterbox(image=image)) for image in images]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(boxed):
            by_shape.setdefault(image.shape, []).append(index)
        rows: list[np.ndarray[Any, Any]] = [np.zeros((0, 6), np.float32)] * len(images)
        for indices in by_shape.values():
            # As the predictor: uint8 HWC -> float CHW in [0, 1] (the letterbox works on either channel order).
            batch = torch.from_numpy(np.stack([boxed[i] for i in indices])).permute(0, 3, 1, 2).float().div_(255)
            output = self._session.run(None, {self._input: batch.contiguous().numpy()})[0]
            predictions = non_max_suppression(
                torch.from_numpy(output),
                confidence,
                _NMS_IOU,
                max_det=_MAX_DETECTIONS,
                end2end=self._end2end,
            )
            for index, prediction in zip(indices, predictions, strict=True):
                prediction[:, :4] = scale_boxes(
                    (batch.shape[2], batch.shape[3]), prediction[:, :4], images[index].shape
                )
                rows[index] = prediction[:, :6].numpy()
        return rows
