"""YOLO under ONNX Runtime against Ultralytics' torch predictor, on real photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.photos import EVAL_SAMPLE

from inference.detector import YoloDetector, load_yolo
from inference.types import Detection, RGBImage
from inference.yolo_onnx import exported_network
from workbench.evaluation import load_cases, load_image


@pytest.fixture(scope="module")
def lively_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init YOLO26n that detects things: some photos get none, some a few, some 300.

    The plain random-init checkpoint detects nothing (its features are near zero and its class
    biases about -10), which would compare two empty lists. Re-drawn convolutions and a louder
    class head make scores, classes, NMS and the mapping back to image pixels all matter.
    """
    model = load_yolo("yolo26n.yaml")
    generator = torch.Generator().manual_seed(0)
    for module in model.model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, generator=generator)
    head = model.model.model[-1]
    for branch in (head.cv3, getattr(head, "one2one_cv3", None) or []):
        for layers in branch:
            layers[-1].weight.data.mul_(50.0)
            layers[-1].bias.data.fill_(-8.0)
    path = tmp_path_factory.mktemp("lively") / "yolo26n-lively.pt"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def photos() -> list[RGBImage]:
    """Target photos of the shipped sample, of several sizes and aspect ratios."""
    paths = sorted({case.target_path for case in load_cases(EVAL_SAMPLE)})
    return [load_image(path) for path in paths]


def _paired(expected: list[Detection], got: list[Detection]) -> int:
    """How many expected detections have their own counterpart in ``got``: same class, box and score.

    Paired one to one regardless of order: two detections whose scores differ in the sixth decimal
    can come out in either order from the two runtimes (seen with torch 2.15), and the order of
    near-ties is not what this test is about.
    """
    left = list(got)
    paired = 0
    for detection in expected:
        box = np.array([detection.bbox.x, detection.bbox.y, detection.bbox.width, detection.bbox.height])
        for candidate in left:
            other = np.array([candidate.bbox.x, candidate.bbox.y, candidate.bbox.width, candidate.bbox.height])
            if (
                (candidate.class_id, candidate.class_name) == (detection.class_id, detection.class_name)
                and abs(candidate.confidence - detection.confidence) <= 1e-4
                and np.allclose(other, box, atol=1e-2, rtol=0)
            ):
                left.remove(candidate)
                paired += 1
                break
    return paired


def test_onnx_runtime_gives_the_torch_predictors_detections(
    lively_checkpoint: Path, photos: list[RGBImage], tmp_path: Path
) -> None:
    torch_detector = YoloDetector(str(lively_checkpoint), runtime="torch")
    onnx_detector = YoloDetector(str(lively_checkpoint), runtime="onnxruntime", export_dir=tmp_path)
    assert (torch_detector.runtime, onnx_detector.runtime) == ("torch", "onnxruntime")
    assert onnx_detector.class_names == torch_detector.class_names
    assert len({photo.shape for photo in photos}) >= 3
    found = 0
    for photo in photos:
        (expected,) = torch_detector.detect([photo], confidence=0.25)
        (got,) = onnx_detector.detect([photo], confidence=0.25)
        assert len(got) == len(expected)
        assert _paired(expected, got) == len(expected)
        found += len(got)
    assert 0 < found < 300 * len(photos)  # some, not all candidates: the threshold and NMS did work


def test_a_photos_detections_do_not_depend_on_its_micro_batch(
    lively_checkpoint: Path, photos: list[RGBImage], tmp_path: Path
) -> None:
    detector = YoloDetector(str(lively_checkpoint), runtime="onnxruntime", export_dir=tmp_path)
    batch = photos[:4] + photos[:1]  # mixed sizes, one of them twice
    together = detector.detect(batch, confidence=0.25)
    assert sum(len(d) for d in together) > 0
    for photo, detections in zip(batch, together, strict=True):
        assert detections == detector.detect([photo], confidence=0.25)[0]


def test_the_network_is_exported_once_per_checkpoint(lively_checkpoint: Path, cache_dir: Path, tmp_path: Path) -> None:
    first = exported_network(load_yolo(str(lively_checkpoint)), tmp_path)
    written = first.stat().st_mtime_ns
    assert exported_network(load_yolo(str(lively_checkpoint)), tmp_path) == first
    assert first.stat().st_mtime_ns == written
    other = exported_network(load_yolo(str(cache_dir / "models" / "yolo26n-random.pt")), tmp_path)
    assert other != first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])  # no export left behind


def test_auto_runs_onnx_runtime_on_the_cpu(cache_dir: Path, tmp_path: Path) -> None:
    detector = YoloDetector(str(cache_dir / "models" / "yolo26n-random.pt"), runtime="auto", export_dir=tmp_path)
    assert detector.runtime == "onnxruntime"
    assert len(list(tmp_path.glob("*.onnx"))) == 1


def test_auto_stays_on_torch_when_the_network_cannot_be_exported(tmp_path: Path) -> None:
    """A model built from its YAML has no checkpoint file to export: auto falls back, a named runtime fails."""
    fallback = YoloDetector("yolo26n.yaml", runtime="auto", export_dir=tmp_path)
    assert fallback.runtime == "torch"
    assert fallback.detect([np.zeros((64, 64, 3), np.uint8)], confidence=0.5) == [[]]
    with pytest.raises(ValueError, match="checkpoint file"):
        YoloDetector("yolo26n.yaml", runtime="onnxruntime", export_dir=tmp_path)
    assert not list(tmp_path.iterdir())
