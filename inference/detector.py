"""Object detection behind a small interface, with an Ultralytics YOLO implementation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import cv2
import numpy as np
import torch

from inference.runtime import keep_thread_count, resolve_device
from inference.types import BBox, Detection, RGBImage

if TYPE_CHECKING:
    from ultralytics import YOLO
    from ultralytics.engine.results import Boxes


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
    """YOLO on a list of RGB arrays; Ultralytics batches them into one forward pass."""

    def __init__(
        self,
        source: str,
        device: str = "cpu",
        half: bool = False,
        torch_threads: int | None = None,
        image_size: int = 640,
    ) -> None:
        self.name = Path(source).name
        self._device = resolve_device(device)
        self._half = half and self._device.type == "cuda"
        self._threads = torch_threads or torch.get_num_threads()
        self._image_size = image_size
        with keep_thread_count(self._threads):
            self._model = load_yolo(source)
            # The first predict builds the predictor (fusing layers, lowering torch's thread
            # count); doing it here keeps that cost out of the first real batch.
            self.detect([np.zeros((64, 64, 3), dtype=np.uint8)], confidence=0.5)

    @property
    def class_names(self) -> list[str]:
        names = self._model.names
        return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)

    def detect(self, images: Sequence[RGBImage], confidence: float) -> list[list[Detection]]:
        if not images:
            return []
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
        names = self.class_names
        detections: list[list[Detection]] = []
        for result in results:
            boxes = cast("Boxes | None", getattr(result, "boxes", None))
            xyxy = _numpy(boxes.xyxy) if boxes is not None else np.zeros((0, 4))
            scores = _numpy(boxes.conf) if boxes is not None else np.zeros(0)
            classes = _numpy(boxes.cls).astype(int) if boxes is not None else np.zeros(0, int)
            detections.append(
                [
                    Detection(BBox.from_xyxy(*map(float, box)), names[cls], float(score), int(cls))
                    for box, score, cls in zip(xyxy, scores, classes, strict=True)
                ]
            )
        return detections


def _numpy(values: Any) -> np.ndarray[Any, Any]:
    """Ultralytics gives tensors (or arrays for some backends); we want arrays either way."""
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
