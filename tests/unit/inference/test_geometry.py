"""Geometric verifier: synthetic warps, real photograph pairs (the shipped eval sample) and negative pairs."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.photos import EVAL_SAMPLE

from inference.config import SearchConfig
from inference.geometry import (
    Correspondences,
    GeometricMatch,
    GeometricVerifier,
    GeometryConfig,
    SourceFeatures,
    TargetFeatures,
    Verification,
    _cosines,
    _is_convex_same_orientation,
    _Nearest,
    _project,
    _ratio_test_of,
    match_confidence,
)
from inference.types import BBox, RGBImage
from workbench.evaluation import EvalCase, load_cases, load_image
from workbench.scenes import DemoSet

VERIFIER = GeometricVerifier()


# ------------------------------------------------------------------------------------ synthetic


def _textured_image(width: int, height: int, seed: int) -> RGBImage:
    """Multi-scale noise plus random shapes: blobs and corners at many scales, as SIFT needs."""
    rng = np.random.default_rng(seed)
    grey = np.zeros((height, width), np.float32)
    for sigma in (1.5, 4.0, 10.0):
        grey += cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), sigma) * sigma
    grey = (grey - grey.min()) * (255.0 / (grey.max() - grey.min()))
    for _ in range(60):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(5, 40))
        colour = float(rng.integers(0, 256))
        if rng.random() < 0.5:
            cv2.rectangle(grey, (x, y), (x + size, y + size // 2), colour, -1)
        else:
            cv2.circle(grey, (x, y), size // 2, colour, -1)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def _corners(box: BBox) -> np.ndarray:
    return np.array([[box.x, box.y], [box.x2, box.y], [box.x2, box.y2], [box.x, box.y2]], np.float64)


def _project_box(homography: np.ndarray, box: BBox) -> np.ndarray:
    points = cv2.perspectiveTransform(_corners(box).reshape(-1, 1, 2), homography)
    return points.reshape(-1, 2)


def test_recovers_a_known_homography_on_a_downscaled_target() -> None:
    """Rotation, zoom and perspective; the target exceeds max_side so coordinates must be scaled back."""
    source = _textured_image(640, 480, seed=1)
    homography = np.array([[1.3, -0.35, 120.0], [0.3, 1.2, 40.0], [2e-4, 1e-4, 1.0]])
    target = np.asarray(cv2.warpPerspective(source, homography, (1100, 900)), dtype=np.uint8)
    box = BBox(220, 160, 200, 150)
    verifier = GeometricVerifier(GeometryConfig(max_side=640))

    features = verifier.target_features(target)
    assert features.scale < 1.0
    match = verifier.verify(verifier.source_features(source, box), features, box)

    assert match is not None
    expected = _project_box(homography, box)
    expected_box = BBox.from_xyxy(*expected.min(axis=0), *expected.max(axis=0))
    assert match.bbox.iou(expected_box) > 0.9
    assert np.abs(match.quad - expected).max() < 6.0
    assert 0.5 < match.confidence <= 1.0
    assert match.inliers >= verifier.config.min_inliers


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_in_another_order_keep_their_pairs(seed: int) -> None:
    """A shuffled match order (``match_order_seed``) moves source and target points together."""
    source = _textured_image(640, 480, seed=4)
    homography = np.array([[1.1, -0.2, 60.0], [0.15, 1.05, 30.0], [1e-4, 5e-5, 1.0]])
    target = np.asarray(cv2.warpPerspective(source, homography, (900, 700)), dtype=np.uint8)
    box = BBox(200, 150, 220, 160)
    verifier = GeometricVerifier(GeometryConfig(match_order_seed=seed))

    match = verifier.verify(verifier.source_features(source, box), verifier.target_features(target), box)

    assert match is not None
    assert np.abs(match.quad - _project_box(homography, box)).max() < 6.0


def _object_on_plain_ground(angle: float, centre: tuple[float, float]) -> tuple[RGBImage, BBox]:
    """A textured 150 px square turned by ``angle`` degrees on a flat background, and its axis-aligned box."""
    product = _textured_image(150, 150, seed=7)
    scene = np.full((480, 640, 3), 90, np.uint8)
    rotation = cv2.getRotationMatrix2D((75.0, 75.0), angle, 1.0)
    rotation[:, 2] += np.array(centre) - 75.0
    warped = cv2.warpAffine(product, rotation, (640, 480), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full((150, 150), 255, np.uint8), rotation, (640, 480), flags=cv2.INTER_NEAREST) > 0
    scene[mask] = warped[mask]
    ys, xs = np.nonzero(mask)
    return scene, BBox.from_xyxy(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def test_a_turned_product_gets_the_box_the_evidence_supports_not_the_turned_source_box() -> None:
    """The source box of a product photographed at 30 degrees holds background in its corners.

    Projecting the whole box would answer 3.5 times the product's area (IoU 0.29); the answered
    box covers what the box and the evidence vouch for: half that, and right (IoU > 0.5). It is
    not tight: the ellipse inscribed in the source box, the shape prior, reaches past a turned
    square's sides.
    """
    source, source_box = _object_on_plain_ground(30.0, (220.0, 230.0))
    target, truth = _object_on_plain_ground(0.0, (420.0, 250.0))

    match = VERIFIER.verify(VERIFIER.source_features(source, source_box), VERIFIER.target_features(target), source_box)

    assert match is not None
    projected = BBox.from_xyxy(*match.quad.min(axis=0), *match.quad.max(axis=0))
    assert projected.area > 3 * truth.area  # what projecting the whole box would have answered
    assert match.bbox.area < 0.6 * projected.area
    assert match.bbox.iou(truth) > 0.5 > projected.iou(truth)
    assert match.confidence > 0.9


class _CountingViews:
    """``tilted`` for `GeometricVerifier.verify_views` that counts how often it is asked."""

    def __init__(self, image: RGBImage, box: BBox) -> None:
        self.image, self.box, self.calls = image, box, 0

    def __call__(self) -> SourceFeatures:
        self.calls += 1
        return VERIFIER.tilted_features(self.image, self.box)


def test_a_confident_frontal_match_settles_without_the_simulated_views() -> None:
    source, box = _textured_image(640, 480, seed=1), BBox(220, 160, 200, 150)
    similarity = np.array([[0.9, -0.2, 90.0], [0.2, 0.9, 30.0], [0.0, 0.0, 1.0]])
    target = VERIFIER.target_features(np.asarray(cv2.warpPerspective(source, similarity, (700, 520)), np.uint8))
    frontal = VERIFIER.frontal_features(source, box)
    views = _CountingViews(source, box)

    settled = VERIFIER.verify_views(frontal, views, target, box)

    assert settled.match is not None and settled.match.confidence >= VERIFIER.config.settle_confidence
    assert views.calls == 0 and settled.source is frontal
    expected = _project_box(similarity, box)
    assert settled.match.bbox.iou(BBox.from_xyxy(*expected.min(axis=0), *expected.max(axis=0))) > 0.9
    # A caller whose threshold no frontal match can reach gets every view matched.
    everything = VERIFIER.verify_views(frontal, views, target, box, settle_confidence=1.0)
    assert views.calls == 1 and len(everything.source.keypoints) > len(frontal.keypoints)
    assert everything.match is not None


def test_an_oblique_view_falls_back_to_the_simulated_views() -> None:
    """Seen at about 70 degrees the frontal view alone does not settle it; the tilted views find it."""
    source, box = _textured_image(640, 480, seed=5), BBox(170, 120, 300, 240)
    oblique = np.array([[0.34, 0.0, 200.0], [0.0, 1.0, 60.0], [0.0, 0.0, 1.0]])  # squeezed 2.9x
    target = VERIFIER.target_features(np.asarray(cv2.warpPerspective(source, oblique, (640, 480)), np.uint8))
    frontal = VERIFIER.frontal_features(source, box)
    views = _CountingViews(source, box)

    checked = VERIFIER.verify_views(frontal, views, target, box)
    frontal_only = VERIFIER.verify(frontal, target, box)

    assert frontal_only is None or frontal_only.confidence < VERIFIER.config.settle_confidence
    assert views.calls == 1
    # The frontal view's matches are reused, and together they are exactly all views' matches.
    at_once = VERIFIER.correspondences(VERIFIER.source_features(source, box), target, box)
    np.testing.assert_array_equal(checked.matches.source, at_once.source)
    np.testing.assert_array_equal(checked.matches.target, at_once.target)
    assert checked.match is not None
    expected = _project_box(oblique, box)
    assert checked.match.bbox.iou(BBox.from_xyxy(*expected.min(axis=0), *expected.max(axis=0))) > 0.8


def test_all_views_are_the_frontal_and_the_tilted_ones() -> None:
    image, box = _textured_image(640, 480, seed=6), BBox(150, 100, 300, 220)
    frontal, tilted = VERIFIER.frontal_features(image, box), VERIFIER.tilted_features(image, box)
    both = VERIFIER.source_features(image, box)
    assert len(frontal.keypoints) > 0 and len(tilted.keypoints) > 0
    np.testing.assert_array_equal(both.keypoints, np.vstack([frontal.keypoints, tilted.keypoints]))
    np.testing.assert_array_equal(both.descriptors, np.vstack([frontal.descriptors, tilted.descriptors]))


def _features_with_decoys() -> tuple[SourceFeatures, TargetFeatures, BBox, np.ndarray]:
    """A product's keypoints seen shifted by (220, 180), and a decoy for those of its right half.

    Each keypoint of the right half has a twin far from the product (a second print of that
    half elsewhere in the photo), as close to its descriptor as the true one, so the global
    ratio test cannot choose; the left half's keypoints are unique. Returns source and target
    features, the source box and the true 3x3 map.
    """
    rng = np.random.default_rng(12)
    box = BBox(100, 100, 360, 150)
    points = np.column_stack([rng.uniform(box.x, box.x2, 300), rng.uniform(box.y, box.y2, 300)]).astype(np.float32)
    descriptors = _unit(np.abs(rng.normal(size=(300, 128))))
    shift, decoy_shift = np.array([220.0, 180.0]), np.array([220.0, -80.0])
    model = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]], [0.0, 0.0, 1.0]])
    right = points[:, 0] > box.x + box.width / 2
    target_points = np.vstack([points + shift, points[right] + decoy_shift])
    observed = np.vstack([descriptors, descriptors[right]])
    target_descriptors = _unit(observed + np.abs(rng.normal(scale=0.05, size=observed.shape)))
    source = SourceFeatures(points, descriptors, box, image_width=560, image_height=400, scale=1.0)
    target = TargetFeatures(target_points.astype(np.float32), target_descriptors, width=800, height=600, scale=1.0)
    return source, target, box, model


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_the_twin_ratio_test_looks_past_copies_of_the_nearest_descriptor() -> None:
    """Query 0's feature is in the photo twice (two near-identical descriptors), query 1's has a look-alike.

    The plain ratio test drops both. The twin test keeps both copies of query 0's feature, each
    a candidate, and still drops query 1: its runner-up is no closer to the nearest descriptor
    than the query is, so it is a competitor, not a twin.
    """
    rng = np.random.default_rng(3)
    feature, lookalike_of, other = np.abs(rng.normal(size=(3, 128)))
    query = _unit(np.stack([feature, lookalike_of]) + np.abs(rng.normal(scale=0.3, size=(2, 128))))
    copies = feature + np.abs(rng.normal(scale=0.02, size=(2, 128)))
    lookalikes = lookalike_of + np.abs(rng.normal(scale=0.3, size=(2, 128)))
    background = np.abs(rng.normal(size=(20, 128)))
    train = _unit(np.vstack([copies, lookalikes, other[None], background]))

    nearest = _Nearest.of(np.zeros((2, 2)), query, train, 9)
    plain, twins = nearest.candidates(0.85), nearest.twin_candidates(train, 0.85, 0.5)

    assert len(plain.columns) == 0
    assert sorted(twins.columns.tolist()) == [0, 1] and len(twins.source) == 2  # query 0 twice, query 1 never
    np.testing.assert_allclose(twins.distances, 2.0 - 2.0 * (train[twins.columns] @ query[0]), atol=1e-5)


def test_without_twins_the_twin_ratio_test_is_the_plain_one() -> None:
    source, target, box, _ = _features_with_decoys()
    left = source.keypoints[:, 0] <= box.x + box.width / 2  # the half without a second print
    nearest = _Nearest.of(source.keypoints[left].astype(np.float64), source.descriptors[left], target.descriptors, 9)
    plain, twins = nearest.candidates(0.85), nearest.twin_candidates(target.descriptors, 0.85, 0.5)
    assert len(plain.columns) > 100
    np.testing.assert_array_equal(plain.columns, twins.columns)
    np.testing.assert_array_equal(plain.source, twins.source)


def test_the_plain_ratio_test_is_lowes() -> None:
    """The first pass is Lowe's ratio test, exactly as `_ratio_test_of` applies it to a cosine matrix."""
    source, target, _, _ = _features_with_decoys()
    nearest = _Nearest.of(source.keypoints.astype(np.float64), source.descriptors, target.descriptors, 2)
    rows, columns, _ = _ratio_test_of(_cosines(source.descriptors, target.descriptors), 0.85)
    candidates = nearest.candidates(0.85)
    np.testing.assert_array_equal(candidates.columns, columns)
    np.testing.assert_array_equal(candidates.source, source.keypoints[rows].astype(np.float64))


def _verified_as_the_pipeline_does(
    verifier: GeometricVerifier, source_image: RGBImage, box: BBox, target: TargetFeatures
) -> Verification:
    """``verify_views`` with the simulated views extracted only when asked for, as the pipeline calls it."""
    frontal = verifier.frontal_features(source_image, box)
    return verifier.verify_views(frontal, lambda: verifier.tilted_features(source_image, box), target, box)


def _shown_twice(image: RGBImage) -> RGBImage:
    return np.ascontiguousarray(np.concatenate([image, image], axis=1))


@pytest.mark.parametrize(
    ("twin_ratio", "max_copies"), [(0.0, 8), (GeometryConfig().twin_ratio, 0), (GeometryConfig().twin_ratio, 8)]
)
def test_a_product_shown_twice_is_found_on_both_copies(twin_ratio: float, max_copies: int) -> None:
    """leuven 1to4 with the target photo twice side by side: two copies of every box.

    Every feature has a near-identical twin on the other copy, so the plain ratio test keeps
    almost no match and nothing is found (twin_ratio 0); the second pass finds each box on one
    of its copies with the box it finds in the photo shown once, and the search for further
    copies (``max_copies``) finds the other one, once.
    """
    case = _cases()["oxford/leuven/1to4"]
    verifier = GeometricVerifier(GeometryConfig(twin_ratio=twin_ratio, max_copies=max_copies))
    source_image, target_image = _image(case.source_path), _image(case.target_path)
    target = verifier.target_features(_shown_twice(target_image))
    for box in case.boxes:
        assert box.target_box is not None
        checked = _verified_as_the_pipeline_does(verifier, source_image, box.source_box, target)
        if twin_ratio == 0:
            assert checked.match is None and checked.copies == (), box.box_id
            continue
        assert checked.match is not None, box.box_id
        truths = (box.target_box, replace(box.target_box, x=box.target_box.x + target_image.shape[1]))
        found = [checked.match, *checked.copies]
        assert len(found) == (2 if max_copies else 1), box.box_id
        best = [max(range(2), key=lambda i, m=m: m.bbox.iou(truths[i])) for m in found]  # type: ignore[misc]
        assert len(set(best)) == len(found), f"{box.box_id}: two answers on one copy"
        assert all(m.bbox.iou(truths[i]) >= 0.85 for m, i in zip(found, best, strict=True)), box.box_id


def test_a_product_shown_once_has_no_further_copies() -> None:
    """The leftover matches of a found product (its outliers) fit no second copy: on every pair of eval-sample."""
    verifier = GeometricVerifier()
    for name, case in _cases().items():
        source_image = _image(case.source_path)
        target = verifier.target_features(_image(case.target_path))
        for box in case.boxes:
            checked = _verified_as_the_pipeline_does(verifier, source_image, box.source_box, target)
            assert checked.copies == (), f"{name}/{box.box_id}"


def test_guided_matching_recovers_matches_the_global_ratio_test_drops() -> None:
    source, target, box, model = _features_with_decoys()
    right_half = BBox(box.x + box.width / 2, box.y, box.width / 2, box.height)

    matches = VERIFIER.correspondences(source, target, box)
    guided = VERIFIER.guided_correspondences(model, source, target, box)

    assert _count_in(matches.source, right_half) < 0.2 * _count_in(guided.source, right_half)
    assert len(guided) > 1.5 * len(matches)
    errors = np.linalg.norm(_project(model, guided.source)[0] - guided.target, axis=1)
    assert (errors < 1e-3).mean() > 0.95  # the true keypoints, not the decoys or neighbours


def test_a_model_short_of_settling_grows_by_guided_matching() -> None:
    source, target, box, _ = _features_with_decoys()
    matches = VERIFIER.correspondences(source, target, box)

    never_grown = GeometricVerifier(GeometryConfig(settle_confidence=0.0)).fit(matches, source, target, box)
    grown = GeometricVerifier(GeometryConfig(settle_confidence=1.0)).fit(matches, source, target, box)

    assert never_grown is not None and grown is not None
    assert grown.inliers > 1.5 * never_grown.inliers and grown.coverage > never_grown.coverage
    assert grown.confidence >= never_grown.confidence


def _count_in(points: np.ndarray, box: BBox) -> int:
    return int(
        ((points[:, 0] >= box.x) & (points[:, 0] <= box.x2) & (points[:, 1] >= box.y) & (points[:, 1] <= box.y2)).sum()
    )


def test_confidence_grows_with_the_evidence() -> None:
    config = GeometryConfig()
    low, high = match_confidence(10, 0.3, 0.05, config), match_confidence(10, 0.3, 0.6, config)
    assert 0.0 < low < 0.75 < high < 1.0  # a patch of 5% of the box is below the default threshold
    assert match_confidence(40, 0.3, 0.3, config) >= match_confidence(10, 0.3, 0.3, config)
    assert match_confidence(10, 0.9, 0.3, config) >= match_confidence(10, 0.2, 0.3, config)


def test_unrelated_texture_is_not_found() -> None:
    source, target = _textured_image(480, 360, seed=2), _textured_image(480, 360, seed=3)
    box = BBox(100, 100, 200, 150)
    assert VERIFIER.verify(VERIFIER.source_features(source, box), VERIFIER.target_features(target), box) is None


def test_features_are_in_original_coordinates() -> None:
    image = _textured_image(1500, 900, seed=4)
    verifier = GeometricVerifier(GeometryConfig(max_side=500))
    target = verifier.target_features(image)
    assert target.keypoints.dtype == np.float32 and target.keypoints.shape[1] == 2
    assert target.keypoints[:, 0].max() > 1000  # scaled back from the 500 px working image
    assert len(target.keypoints) == len(target.descriptors)
    box = BBox(700, 300, 260, 200)
    source = verifier.source_features(image, box)
    assert len(source.keypoints) > 0
    x, y = source.keypoints[:, 0], source.keypoints[:, 1]
    assert (x >= box.x).all() and (x <= box.x2).all() and (y >= box.y).all() and (y <= box.y2).all()


def test_each_tilted_view_keeps_at_most_its_keypoint_budget() -> None:
    image, box = _textured_image(640, 480, seed=6), BBox(150, 100, 300, 220)
    frontal_only = GeometricVerifier(GeometryConfig(source_tilts=())).source_features(image, box)
    config = GeometryConfig(max_tilted_view_keypoints=5)
    budgeted = GeometricVerifier(config).source_features(image, box)
    views = sum(len(np.arange(0.0, 180.0, 72.0 / tilt)) for tilt in config.source_tilts)
    assert views == 17
    assert len(frontal_only.keypoints) < len(budgeted.keypoints) <= len(frontal_only.keypoints) + 5 * views


def test_simulated_views_side_by_side_give_the_same_features_as_one_after_another() -> None:
    image, box = _textured_image(640, 480, seed=7), BBox(150, 100, 300, 220)
    sequential = GeometricVerifier(threads=1).tilted_features(image, box)
    pooled = GeometricVerifier(threads=3).tilted_features(image, box)
    assert len(sequential.keypoints) > 100
    np.testing.assert_array_equal(pooled.keypoints, sequential.keypoints)
    np.testing.assert_array_equal(pooled.descriptors, sequential.descriptors)


def test_targets_and_first_seen_boxes_side_by_side_give_the_one_by_one_features() -> None:
    image = _textured_image(1100, 1000, seed=10)
    targets = [_textured_image(640, 480, seed=8), image, _textured_image(1000, 750, seed=9)]
    small, large = BBox(150, 100, 200, 150), BBox(100, 100, 900, 800)
    verifier = GeometricVerifier(threads=2)
    # On a two-thread pool 0.75 max_side² or less goes side by side; the rest one at a time.
    limit = 0.75 * verifier.config.max_side**2
    assert [verifier._target_pixels(t) <= limit for t in targets] == [True, False, True]
    assert verifier._crop_pixels(image, small) <= limit < verifier._crop_pixels(image, large)
    features, frontal = verifier.features(targets, [(image, small), (image, large)])
    for got, target in zip(features, targets, strict=True):
        alone = verifier.target_features(target)
        assert len(alone.keypoints) > 100
        np.testing.assert_array_equal(got.keypoints, alone.keypoints)
        np.testing.assert_array_equal(got.descriptors, alone.descriptors)
    for got, box in zip(frontal, (small, large), strict=True):
        alone_box = verifier.frontal_features(image, box)
        assert len(alone_box.keypoints) > 50
        assert got.box == box
        np.testing.assert_array_equal(got.keypoints, alone_box.keypoints)
        np.testing.assert_array_equal(got.descriptors, alone_box.descriptors)


def test_quad_rules_reject_bow_ties_mirrors_and_darts() -> None:
    rectangle = _corners(BBox(0, 0, 10, 10))
    assert _is_convex_same_orientation(rectangle + 3.0, rectangle)
    assert not _is_convex_same_orientation(rectangle[[0, 2, 1, 3]], rectangle)  # self-intersecting
    assert not _is_convex_same_orientation(rectangle[::-1].copy(), rectangle)  # mirrored
    dart = rectangle.copy()
    dart[2] = [2.0, 2.0]
    assert not _is_convex_same_orientation(dart, rectangle)  # concave


def test_projection_rejects_a_horizon_through_the_box() -> None:
    rectangle = _corners(BBox(0, 0, 100, 100))
    assert _project(np.eye(3), rectangle) is not None
    horizon = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.02, 0.0, 1.0]])  # w = 1 - 0.02 x, zero at x = 50
    assert _project(horizon, rectangle) is None


def test_empty_features_give_none() -> None:
    empty = np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    source = SourceFeatures(*empty, box=BBox(0, 0, 10, 10), image_width=20, image_height=20, scale=1.0)
    target = TargetFeatures(*empty, width=20, height=20, scale=1.0)
    assert VERIFIER.verify(source, target, BBox(0, 0, 10, 10)) is None
    flat = np.full((40, 40, 3), 128, np.uint8)
    assert len(VERIFIER.target_features(flat).keypoints) == 0


# ----------------------------------------------------------------------- local (deformable) model

MIN_LOCAL_SUPPORT = SearchConfig().min_local_support


def _frames(source_size: tuple[int, int], target_size: tuple[int, int]) -> tuple[SourceFeatures, TargetFeatures]:
    """Feature containers that carry only the image geometry `local_model` reads."""
    no_points, no_descriptors = np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    source = SourceFeatures(no_points, no_descriptors, BBox(0, 0, 1, 1), *source_size, scale=1.0)
    return source, TargetFeatures(no_points, no_descriptors, *target_size, scale=1.0)


def test_local_model_tolerates_bending_but_not_scattered_matches() -> None:
    rng = np.random.default_rng(0)
    box = BBox(100, 80, 160, 120)
    source_points = np.column_stack([rng.uniform(box.x, box.x2, 60), rng.uniform(box.y, box.y2, 60)])
    angle, scale, shift = np.radians(25.0), 0.8, np.array([230.0, 150.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    placed = source_points @ rotation.T + shift
    diagonal = np.hypot(box.width, box.height) * scale
    # A smooth bend of up to 3% of the product's size: a rigid model fails, the local one must not.
    bent = placed + 0.03 * diagonal * np.sin(placed[:, ::-1] / 40.0)
    source, target = _frames((640, 480), (640, 480))

    found = VERIFIER.local_model(Correspondences(source_points, bent), source, target, box)

    assert found is not None and found.inliers >= 55
    corners = _corners(box) @ rotation.T + shift
    assert found.bbox.iou(BBox.from_xyxy(*corners.min(axis=0), *corners.max(axis=0))) > 0.85

    # The same source points matched to random places in that region: chance agreement only.
    low, high = corners.min(axis=0), corners.max(axis=0)
    scattered = rng.uniform(low, high, (60, 2))
    chance = VERIFIER.local_model(Correspondences(source_points, scattered), source, target, box)
    assert chance is None or chance.inliers < MIN_LOCAL_SUPPORT


def _bend(image: RGBImage, amplitude: float) -> tuple[RGBImage, np.ndarray]:
    """``image`` bent like cloth: each row and column displaced along a sine, by ``amplitude`` of its size.

    Returns the bent image on a padded canvas and its coverage mask.
    """
    height, width = image.shape[:2]
    pad = int(amplitude * max(width, height)) + 2
    ys, xs = np.mgrid[0 : height + 2 * pad, 0 : width + 2 * pad].astype(np.float32)
    u, v = (xs - pad) / width, (ys - pad) / height
    map_x = (xs - pad - amplitude * width * np.sin(np.pi * 1.5 * v + 0.7)).astype(np.float32)
    map_y = (ys - pad - amplitude * height * np.sin(np.pi * 1.5 * u + 2.1)).astype(np.float32)
    bent = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.remap(np.full((height, width), 255, np.uint8), map_x, map_y, cv2.INTER_NEAREST)
    return np.asarray(bent, np.uint8), np.asarray(mask, np.uint8)


# The bent outline bulges past the similarity's box, more so the stronger the bend (measured IoU
# 0.95 and 0.74); at 0.12 the rigid verifier's box is already off (IoU 0.51).
@pytest.mark.parametrize(("amplitude", "iou_floor"), [(0.06, 0.85), (0.12, 0.65)])
def test_local_model_places_a_bent_product(amplitude: float, iou_floor: float) -> None:
    catalogue = _textured_image(480, 360, seed=5)
    box = BBox(140, 100, 200, 150)
    product = catalogue[100:250, 140:340]
    bent, mask = _bend(product, amplitude)
    scene = _textured_image(640, 480, seed=6) // 3  # a dim, unrelated background
    y, x = 150, 220
    region = scene[y : y + bent.shape[0], x : x + bent.shape[1]]
    region[mask > 0] = bent[mask > 0]
    rows, cols = np.nonzero(mask)
    truth = BBox.from_xyxy(x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1)
    source, target = VERIFIER.source_features(catalogue, box), VERIFIER.target_features(scene)

    found = VERIFIER.local_model(VERIFIER.correspondences(source, target, box), source, target, box)

    assert found is not None and found.inliers >= 3 * MIN_LOCAL_SUPPORT
    assert found.bbox.iou(truth) > iou_floor


def test_local_model_finds_no_coherent_place_for_absent_lookalikes(demo_set: DemoSet) -> None:
    """The demo's products share glyphs, bars and dots: absent ones collect matches, but chance ones."""
    checked = 0
    for upload, image in demo_set.uploads.items():
        target = VERIFIER.target_features(image)
        for catalogue in demo_set.source_images():
            for tag in catalogue.tags:
                if demo_set.ground_truth[upload][tag.product_id] is not None:
                    continue
                source = VERIFIER.source_features(catalogue.image, tag.bbox)
                matches = VERIFIER.correspondences(source, target, tag.bbox)
                found = VERIFIER.local_model(matches, source, target, tag.bbox)
                checked += len(matches) >= MIN_LOCAL_SUPPORT
                assert found is None or found.inliers < MIN_LOCAL_SUPPORT, (upload, tag.product_id)
    assert checked >= 3  # absent products that do collect enough matches to be tempting


# ------------------------------------------------------------------------------- real photographs


@cache
def _cases() -> dict[str, EvalCase]:
    return {case.case_id: case for case in load_cases(EVAL_SAMPLE)}


@cache
def _image(path: Path) -> RGBImage:
    return load_image(path)


@cache
def _target(path: Path) -> TargetFeatures:
    return VERIFIER.target_features(_image(path))


@cache
def _source(path: Path, box: BBox) -> SourceFeatures:
    return VERIFIER.source_features(_image(path), box)


def _verify(source_path: Path, box: BBox, target_path: Path) -> GeometricMatch | None:
    return VERIFIER.verify(_source(source_path, box), _target(target_path), box)


# Floors leave room below the measured IoU; adam's ground truth is the hull of the projected poster
# quad, smaller than the hull of the projected source box, which caps its IoU near 0.8. The graf
# cells measure 0.80 and 0.77 at worst: the answered box covers what the inliers vouch for, and
# their hull leaves out the weakly textured corner of one cell.
POSITIVE_FLOORS = {
    "oxford/graf/1to2": 0.75,
    "oxford/graf/1to4": 0.7,
    "oxford/boat/1to4": 0.8,
    "oxford/leuven/1to4": 0.85,
    "cmp_homogr/adam": 0.7,
}


@pytest.mark.parametrize("case_id", sorted(POSITIVE_FLOORS))
def test_finds_every_box_of_real_pairs(case_id: str) -> None:
    case = _cases()[case_id]
    for box in case.boxes:
        match = _verify(case.source_path, box.source_box, case.target_path)
        assert match is not None, box.box_id
        assert box.target_box is not None
        assert match.bbox.iou(box.target_box) >= POSITIVE_FLOORS[case_id], box.box_id
        assert 0.0 < match.confidence <= 1.0


def test_finds_a_drawing_on_the_rotated_whiteboard() -> None:
    case = _cases()["cmp_homogr/WhiteBoard"]
    box = next(b for b in case.boxes if b.box_id == "hand3")
    match = _verify(case.source_path, box.source_box, case.target_path)
    assert match is not None and box.target_box is not None
    assert match.bbox.iou(box.target_box) >= 0.85


def _underexposed(image: RGBImage) -> RGBImage:
    """The photo as taken at 45 % of the light, with a phone sensor's noise (sigma 6 grey levels)."""
    noise = np.random.default_rng(7).normal(0.0, 6.0, image.shape)
    return np.clip(image * 0.45 + noise, 0, 255).astype(np.uint8)


def test_an_underexposed_photo_is_brightened_before_sift() -> None:
    case = _cases()["cmp_homogr/adam"]
    photo = _image(case.target_path)
    assert VERIFIER._exposure_gain(photo) == 1.0  # a real photo as it was taken
    dark = _underexposed(photo)
    assert 1.5 < VERIFIER._exposure_gain(dark) <= GeometryConfig().max_exposure_gain
    black = np.full_like(photo, 8)
    assert VERIFIER._exposure_gain(black) == GeometryConfig().max_exposure_gain


@pytest.mark.parametrize("underexposed_below", [0.0, GeometryConfig().underexposed_below])
def test_a_product_in_an_underexposed_photo_is_found(underexposed_below: float) -> None:
    """adam's poster parts in the target photo taken at 45 % of the light.

    SIFT's absolute contrast threshold leaves too few keypoints on the dark photo (nothing found
    with brightening off); brightened to its bright end, both parts are found again.
    """
    case = _cases()["cmp_homogr/adam"]
    verifier = GeometricVerifier(GeometryConfig(underexposed_below=underexposed_below))
    source_image = _image(case.source_path)
    target = verifier.target_features(_underexposed(_image(case.target_path)))
    for box in (b for b in case.boxes if b.box_id in ("part_tl", "part_br")):
        assert box.target_box is not None
        match = _verified_as_the_pipeline_does(verifier, source_image, box.source_box, target).match
        if underexposed_below == 0:
            assert match is None, box.box_id
        else:
            assert match is not None and match.bbox.iou(box.target_box) >= 0.7, box.box_id


NEGATIVE_PAIRS = [
    ("oxford/graf/1to2", "oxford/leuven/1to4"),
    ("oxford/leuven/1to4", "oxford/graf/1to2"),
    ("oxford/boat/1to4", "cmp_homogr/adam"),
    ("cmp_homogr/adam", "oxford/graf/1to4"),
    ("cmp_homogr/WhiteBoard", "oxford/boat/1to4"),
    ("opencv_box/box_in_scene", "cmp_homogr/WhiteBoard"),
]


@pytest.mark.parametrize(("source_case", "target_case"), NEGATIVE_PAIRS)
def test_no_match_in_a_photo_of_another_scene(source_case: str, target_case: str) -> None:
    source, target = _cases()[source_case], _cases()[target_case]
    for box in source.boxes:
        assert _verify(source.source_path, box.source_box, target.target_path) is None, box.box_id
