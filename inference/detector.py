"""Object detection behind a small interface, with an Ultralytics YOLO implementation (torch or ONNX Runtime)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import cv2
import numpy as np
import torch

from inference.config import DetectorRuntime
from inference.runtime import keep_thread_count, resolve_device
from inference.types import BBox, Detection, RGBImage
from inference.yolo_onnx import OnnxYolo

if TYPE_CHECKING:
    from ultralytics import YOLO
    from ultralytics.engine.results import Boxes


log = logging.getLogger(__name__)


class Detector(Protocol):
    """Finds objects of known classes; one call handles a whole micro-batch of images."""

    name: str

    @property
    def class_names(self) -> list[str]: ...

    def detect(self, images: Sequence[RGBImage], confidence: float) -> list[list[Detection]]: ...


def quiet_ultralytics_environment() -> None:
    """Stop Ultralytics from reaching the network or writing into the user's home.

    It must run before ``ultralytics`` is first imported: the package reads these variables at
    import time. Values already set by the operator win.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_VERBOSE", "0")
    config_dir = Path.home() / ".cache" / "tagstream" / "ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))


def load_yolo(source: str) -> YOLO:
    quiet_ultralytics_environment()
    opencv_threads = cv2.getNumThreads()
    from ultralytics import YOLO

    # Importing Ultralytics switches OpenCV's threading off (for DataLoader worker processes,
    # which this service never forks); the geometric verifier's SIFT runs ~30% faster with it.
    cv2.setNumThreads(opencv_threads)
    return YOLO(source)


class YoloDetector:
    """YOLO on a list of RGB arrays, one forward pass per micro-batch.

    ``runtime``: ``torch`` runs Ultralytics' predictor; ``onnxruntime`` the same network exported
    to ONNX with Ultralytics' own pre- and post-processing around it (`inference.yolo_onnx`,
    ≈ 12 ms less per photo on a 2-core CPU); ``auto`` picks ONNX Runtime on the CPU and torch on
    a GPU.
    """

    def __init__(
        self,
        source: str,
        device: str = "cpu",
        half: bool = False,
        torch_threads: int | None = None,
        image_size: int = 640,
        runtime: DetectorRuntime = "torch",
        export_dir: Path | None = None,
    ) -> None:
        self.name = Path(source).name
        self._device = resolve_device(device)
        self._half = half and self._device.type == "cuda"
        self._threads = torch_threads or torch.get_num_threads()
        self._image_size = image_size
        if runtime == "onnxruntime" and self._device.type != "cpu":
            raise ValueError(f"the onnxruntime detector runtime runs on the CPU only, not on {self._device}")
        with keep_thread_count(self._threads):
            self._model = load_yolo(source)
            use_onnx = runtime == "onnxruntime" or (runtime == "auto" and self._device.type == "cpu")
            self._onnx = self._onnx_runtime(runtime, export_dir) if use_onnx else None
            self.runtime: DetectorRuntime = "onnxruntime" if self._onnx is not None else "torch"
            # The first predict builds the predictor (fusing layers, lowering torch's thread
            # count) or the ONNX session's kernels; doing it here keeps that cost out of the first batch.
            self.detect([np.zeros((64, 64, 3), dtype=np.uint8)], confidence=0.5)

    def _onnx_runtime(self, requested: DetectorRuntime, export_dir: Path | None) -> OnnxYolo | None:
        """The exported network's session; with ``auto``, None (torch) when exporting or loading it fails.

        The exported network is a speed-up, not a requirement: a checkpoint the exporter cannot
        handle must not keep a worker from starting unless ONNX Runtime was asked for by name.
        """
        try:
            return OnnxYolo(self._model, self._threads, self._image_size, export_dir)
        except Exception as error:
            if requested != "auto":
                raise
            log.warning("YOLO runs on torch: exporting %s to ONNX Runtime failed: %s", self.name, error)
            return None

    @property
    def class_names(self) -> list[str]:
        names = self._model.names
        return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)

    def detect(self, images: Sequence[RGBImage], confidence: float) -> list[list[Detection]]:
        if not images:
            return []
        if self._onnx is not None:
            with keep_thread_count(self._threads):
                rows = self._onnx.predict(images, confidence)
            return [self._detections(r[:, :4], r[:, 4], r[:, 5].astype(int)) for r in rows]
        # Ultralytics treats numpy input as BGR (OpenCV order).
        bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in images]
        with keep_thread_count(self._threads):
            results = self._model.predict(
                bgr,
                conf=confidence,
                device=str(self._device),
                half=self._half,
                imgsz=self._image_size,
                verbose=False,
            )
        detections: list[list[Detection]] = []
        for result in results:
            boxes = cast("Boxes | None", getattr(result, "boxes", None))
            xyxy = _numpy(boxes.xyxy) if boxes is not None else np.zeros((0, 4))
            scores = _numpy(boxes.conf) if boxes is not None else np.zeros(0)
            classes = _numpy(boxes.cls).astype(int) if boxes is not None else np.zeros(0, int)
            detections.append(self._detections(xyxy, scores, classes))
        return detections

    def _detections(
        self, xyxy: np.ndarray[Any, Any], scores: np.ndarray[Any, Any], classes: np.ndarray[Any, Any]
    ) -> list[Detection]:
        names = self.class_names
        return [
            Detection(BBox.from_xyxy(*map(float, box)), names[cls], float(score), int(cls))
            for box, score, cls in zip(xyxy, scores, classes, strict=True)
        ]


def _numpy(values: Any) -> np.ndarray[Any, Any]:
    """Ultralytics gives tensors (or arrays for some backends); we want arrays either way."""
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
