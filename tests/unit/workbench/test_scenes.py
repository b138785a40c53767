"""The synthetic demo data must be reproducible, and its ground truth must be true.

Integration tests score the matcher against ``ground_truth``, so a wrong box here would show
up as a matcher bug; the SIFT checks confirm the truth with an independent, classical method.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from inference.types import BBox, RGBImage
from workbench.scenes import (
    DemoSet,
    make_demo_set,
    render_background,
    render_product,
)

SEEDS = (0, 1, 2, 3)
Features = tuple[tuple[cv2.KeyPoint, ...], npt.NDArray[np.float32]]


@cache
def demo(seed: int) -> DemoSet:
    return make_demo_set(seed)


def test_same_seed_gives_identical_pixels_and_truth() -> None:
    first, second = make_demo_set(7), make_demo_set(7)
    for name in ("sources", "uploads"):
        a, b = getattr(first, name), getattr(second, name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert first.source_tags == second.source_tags
    assert first.ground_truth == second.ground_truth


def test_different_seeds_give_different_scenes() -> None:
    first, second = make_demo_set(7), make_demo_set(8)
    assert any(not np.array_equal(first.uploads[name], second.uploads[name]) for name in first.uploads)
    assert first.ground_truth != second.ground_truth


def test_layout_names_and_image_shapes() -> None:
    demo_set = make_demo_set(5, n_products=5, n_uploads=4, size=(800, 600))
    assert list(demo_set.sources) == ["catalogue-01", "catalogue-02", "catalogue-03"]
    assert list(demo_set.uploads) == ["upload-01", "upload-02", "upload-03", "upload-04"]
    assert demo_set.product_ids == ("sku-001", "sku-002", "sku-003", "sku-004", "sku-005")
    for image in [*demo_set.sources.values(), *demo_set.uploads.values()]:
        assert image.shape == (600, 800, 3)
        assert image.dtype == np.uint8


@pytest.mark.parametrize(("seed", "n_products", "size"), [(s, 3, (640, 480)) for s in SEEDS] + [(9, 7, (500, 700))])
def test_boxes_are_inside_images_with_positive_size(seed: int, n_products: int, size: tuple[int, int]) -> None:
    demo_set = make_demo_set(seed, n_products=n_products, size=size)
    tag_boxes = [tag.bbox for tags in demo_set.source_tags.values() for tag in tags]
    truth_boxes = [box for truth in demo_set.ground_truth.values() for box in truth.values() if box]
    for box in tag_boxes + truth_boxes:
        assert box.width > 0 and box.height > 0
        assert box.x >= 0 and box.x2 <= size[0]
        assert box.y >= 0 and box.y2 <= size[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_products_in_one_image_never_overlap(seed: int) -> None:
    """An overlap would hide part of a product, and its truth box would then overstate it."""
    demo_set = demo(seed)
    tag_groups = [[tag.bbox for tag in tags] for tags in demo_set.source_tags.values()]
    truth_groups = [[box for box in truth.values() if box] for truth in demo_set.ground_truth.values()]
    for boxes in tag_groups + truth_groups:
        for i, box in enumerate(boxes):
            assert all(box.iou(other) == 0.0 for other in boxes[i + 1 :])


@pytest.mark.parametrize("seed", SEEDS)
def test_first_upload_misses_exactly_one_product(seed: int) -> None:
    demo_set = demo(seed)
    truth = demo_set.ground_truth["upload-01"]
    absent = [pid for pid, box in truth.items() if box is None]
    assert len(absent) == 1
    pasted = {placement.product_id for placement in demo_set.placements["upload-01"]}
    assert pasted == set(demo_set.product_ids) - set(absent)


@pytest.mark.parametrize("seed", SEEDS)
def test_truth_lists_every_product_for_every_upload(seed: int) -> None:
    demo_set = demo(seed)
    for upload, truth in demo_set.ground_truth.items():
        assert tuple(truth) == demo_set.product_ids
        pasted = {placement.product_id for placement in demo_set.placements[upload]}
        assert pasted == {pid for pid, box in truth.items() if box is not None}
        assert pasted, "every upload shows at least one product"


@pytest.mark.parametrize("seed", SEEDS)
def test_sift_homography_recovers_every_present_product(seed: int) -> None:
    """Proves the products carry enough texture to match, and that the truth boxes are right."""
    demo_set = demo(seed)
    crops = _source_crops(demo_set)
    for upload, truth in demo_set.ground_truth.items():
        scene = _sift(demo_set.uploads[upload])
        for product_id, expected in truth.items():
            if expected is None:
                continue
            found = _locate(crops[product_id], scene)
            assert found is not None, f"{upload}/{product_id}: no homography"
            assert found.iou(expected) > 0.7, f"{upload}/{product_id}: {found} vs {expected}"


@pytest.mark.parametrize("seed", SEEDS)
def test_sift_finds_no_absent_product(seed: int) -> None:
    """The absent product is really absent: the scene holds nothing that matches its face."""
    demo_set = demo(seed)
    crops = _source_crops(demo_set)
    truth = demo_set.ground_truth["upload-01"]
    (absent,) = [pid for pid, box in truth.items() if box is None]
    assert _inlier_count(crops[absent], _sift(demo_set.uploads["upload-01"])) < 12


def test_source_images_carry_the_tags() -> None:
    demo_set = demo(0)
    sources = demo_set.source_images()
    assert [s.key for s in sources] == [f"{name}.png" for name in demo_set.sources]
    for source in sources:
        name = source.key.removesuffix(".png")
        assert source.image is demo_set.sources[name]
        assert source.tags == demo_set.source_tags[name]


def test_write_png_round_trips_every_image(tmp_path: Path) -> None:
    demo_set = demo(0)
    demo_set.write_png(tmp_path / "demo")
    images = {**demo_set.sources, **demo_set.uploads}
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(f"{name}.png" for name in images)
    for name, image in images.items():
        with Image.open(tmp_path / "demo" / f"{name}.png") as png:
            assert png.format == "PNG"
            assert png.size == (image.shape[1], image.shape[0])
            np.testing.assert_array_equal(np.asarray(png.convert("RGB")), image)


def test_products_and_backgrounds_have_the_asked_size_and_differ() -> None:
    rng = np.random.default_rng(3)
    first, second = render_product(rng, (120, 90)), render_product(rng, (120, 90))
    assert first.shape == second.shape == (90, 120, 3)
    assert not np.array_equal(first, second)
    assert render_background(rng, 200, 100).shape == (100, 200, 3)


@pytest.mark.parametrize(("n_products", "n_uploads"), [(0, 3), (3, 0)])
def test_rejects_empty_sets(n_products: int, n_uploads: int) -> None:
    with pytest.raises(ValueError):
        make_demo_set(0, n_products=n_products, n_uploads=n_uploads)


def _source_crops(demo_set: DemoSet) -> dict[str, RGBImage]:
    crops = {}
    for name, tags in demo_set.source_tags.items():
        for tag in tags:
            x, y, x2, y2 = (int(v) for v in tag.bbox.as_xyxy())
            crops[tag.product_id] = demo_set.sources[name][y:y2, x:x2]
    return crops


def _sift(image: RGBImage) -> Features:
    keypoints, descriptors = cv2.SIFT.create().detectAndCompute(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None)
    return tuple(keypoints), np.asarray(descriptors, dtype=np.float32)


def _homography(crop: RGBImage, scene: Features) -> tuple[npt.NDArray[np.float64], int] | None:
    """Lowe-ratio matches, then RANSAC: the classical check the pipeline's verifier also uses."""
    crop_points, crop_descriptors = _sift(crop)
    scene_points, scene_descriptors = scene
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(crop_descriptors, scene_descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
    if len(good) < 4:
        return None
    src = np.array([crop_points[m.queryIdx].pt for m in good], np.float32).reshape(-1, 1, 2)
    dst = np.array([scene_points[m.trainIdx].pt for m in good], np.float32).reshape(-1, 1, 2)
    homography, inliers = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
    if homography is None:
        return None
    return np.asarray(homography, dtype=np.float64), int(inliers.sum())


def _locate(crop: RGBImage, scene: Features) -> BBox | None:
    found = _homography(crop, scene)
    if found is None:
        return None
    h, w = crop.shape[:2]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32).reshape(-1, 1, 2)
    quad = cv2.perspectiveTransform(corners, found[0]).reshape(-1, 2)
    low, high = quad.min(axis=0), quad.max(axis=0)
    return BBox.from_xyxy(float(low[0]), float(low[1]), float(high[0]), float(high[1]))


def _inlier_count(crop: RGBImage, scene: Features) -> int:
    found = _homography(crop, scene)
    return 0 if found is None else found[1]
