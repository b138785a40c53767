"""Local-feature geometric verification: is the tagged region of the source photo in the target photo?

Appearance models (detector classes, embeddings) say "something similar"; only a geometric model
fitted to many local correspondences says "this very object, here". A plane model (homography, or
an affine map when correspondences are few) also gives the object's box in the target by
projecting the source box, following rotation, zoom and perspective.

Cost model: an upload has one target image and many tags, so target features are extracted once
(`GeometricVerifier.target_features`) and shared by every tag. Source features depend on
(source image, box) only, so callers cache them across uploads. The simulated viewpoints of a
source box (`GeometryConfig.source_tilts`) are its expensive side: about 12x the frontal view's
extraction time and 5x its matching time. They exist for oblique targets, so they are only
extracted and matched when the frontal view alone does not settle the match
(`GeometricVerifier.verify_views`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial, reduce
from typing import Literal, cast

import cv2
import numpy as np
import numpy.typing as npt
import torch

from inference.runtime import default_thread_count
from inference.types import BBox, RGBImage

FloatArray = npt.NDArray[np.float32]
DoubleArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]
GrayImage = npt.NDArray[np.uint8]

FeatureType = Literal["sift", "rootsift"]
ModelType = Literal["homography", "affine"]

# MAGSAC++ (OpenCV >= 4.5) marginalises over the noise scale, so it is less sensitive to the
# threshold than plain RANSAC and more stable at low inlier ratios; RANSAC keeps old builds working.
_HOMOGRAPHY_METHOD: int = getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)
_DESCRIPTOR_SIZE = 128
# Source keypoints handled at once by guided matching (bounds its distance matrices to ~30 MB).
_GUIDED_ROWS = 1024
# Most simulated views of one box extracted at once (`GeometricVerifier`): bounds their memory.
_MAX_VIEW_THREADS = 4
# Most copies of one feature the twin ratio test looks past (`_Nearest.twin_candidates`): with more
# copies in one photo the runner-up is the farthest of the nine neighbours, itself a twin, and
# only the copies clearly nearer than it pass, so the test degrades. Eight bounds the
# neighbours gathered per query keypoint to ~5 KB.
_MAX_TWINS = 8


@dataclass(frozen=True)
class GeometryConfig:
    """Every threshold of the verifier; each follows from a general argument, none from a test case."""

    # RootSIFT (Arandjelovic & Zisserman 2012) compares SIFT histograms with the Hellinger kernel,
    # which a few large bins dominate less: more correct matches under light and blur changes.
    feature: FeatureType = "rootsift"
    # Images are downscaled so that their long side is at most this: SIFT time grows with pixels,
    # while a product in a ~1 megapixel photo keeps enough detail to be matched.
    max_side: int = 1024
    # Keypoint budget of a whole target image: dozens of keypoints even on a product covering
    # 1/20 of the frame, while matching a tag stays in the tens of milliseconds on a CPU.
    max_target_keypoints: int = 4000
    # Keypoint budget of one source view (the box and each simulated viewpoint of it).
    max_source_keypoints: int = 1500
    # Budget of each simulated tilted view, strongest responses first: the views overlap, and
    # every source descriptor is compared with every target one, so this bounds matching time.
    # 250 is the smallest budget not worse on eval-dev or eval3d-dev (sweep in docs/performance.md).
    max_tilted_view_keypoints: int = 250
    # A match of the frontal view alone with at least this calibrated confidence is the answer;
    # only below it are the simulated views extracted and matched too. On eval-dev and eval3d-dev
    # this settled 72 of the 112 boxes found, changed no verdict and moved their mean IoU by
    # < 0.01 (docs/performance.md), while the simulated views cost ~12x the frontal view to
    # extract and ~5x to match.
    settle_confidence: float = 0.98
    # SIFT's own detection threshold (OpenCV default): lower finds more, but noisier, keypoints.
    contrast_threshold: float = 0.04
    # Context kept around the source box, as a fraction of its longer side: keypoints near the box
    # border need their neighbourhood for a faithful descriptor, and SIFT skips image borders.
    source_margin: float = 0.25
    # Simulated camera tilts of the source box (ASIFT, Morel & Yu 2009): SIFT tolerates ~40 degrees
    # of viewpoint change; views squeezed by t = sqrt(2), 2, 2 sqrt(2) (45, 60, 69 degrees) at
    # 72/t-degree steps let the same photo match far more oblique shots of the product.
    source_tilts: tuple[float, ...] = (math.sqrt(2.0), 2.0, 2.0 * math.sqrt(2.0))
    # Simulated views are rendered with this long side at most: they serve oblique targets where
    # the product is foreshortened, so fine detail is of little use, and this bounds their cost.
    tilt_max_side: int = 512
    # Lowe's ratio test: the nearest target descriptor must be clearly closer than the second.
    # 0.8 is Lowe's operating point (drops ~90% of false and ~5% of correct matches); 0.85 keeps
    # more of the correct matches of an object turned 45-90 degrees, whose descriptors change
    # most, and the robust fit plus the sanity rules still reject the extra false ones (no false
    # positive on 493 negatives of eval-dev and eval3d-dev).
    lowe_ratio: float = 0.85
    # Inlier threshold of the robust fit in pixels at working resolution (scaled to original pixels):
    # SIFT localises to ~1 px; the rest absorbs objects that are not perfectly planar.
    ransac_threshold: float = 4.0
    # Stop sampling once the best model is found with this probability; the iteration cap bounds
    # the time spent on hopeless match sets (unrelated photos), where the stopping rule never fires.
    ransac_confidence: float = 0.999
    ransac_max_iters: int = 5000
    # None: the robust fits see the matches in their natural order. OpenCV's RANSAC/MAGSAC draws
    # its samples from a fixed random state, so that order decides which models it tries; at the
    # margin (a turned 3D product with a few coherent matches) another order finds another box.
    # An integer shuffles the matches with that seed, which is how ``tagstream eval
    # --match-orders`` measures how much a result owes to the sampler's luck.
    match_order_seed: int | None = None
    # Repeated products (two cans of one brand on a shelf): every feature of the product has a
    # near-identical twin on the other copy, so Lowe's ratio test, which needs the nearest target
    # descriptor clearly closer than the runner-up, drops all of them (eval-dev with each target
    # photo shown twice side by side: 0 of 66 found). A runner-up closer to the nearest
    # descriptor than ``twin_ratio`` times the query's distance to it is a twin (the same feature
    # again in the same photo, taken under the same light and view), not a competitor: the test
    # then looks past the twins, and each twin that passes is a candidate match, so every copy
    # keeps its matches and the robust fit picks one. For the first copy it is a second pass only
    # (`GeometricVerifier.verify_views`): with twins as candidates, repetition *within* one
    # object (the temple's columns) makes more chance matches, so it runs where the plain
    # matches of all views fit no model (so never without ``source_tilts``) and only when it adds
    # at least ``min_inliers`` correspondences; once a copy is found, the search for further
    # copies (``max_copies``) reads it too. 0.5 rather than 1.0: at 1.0 a query far from
    # everything (a negative) sees many targets that are merely alike as twins (measured in
    # docs/accuracy.md). 0 turns off the second pass and the search for further copies.
    twin_ratio: float = 0.5
    # Further copies of a found product in the same photo (a shelf of one brand) are looked for
    # among the twin test's matches outside the boxes found so far, each fitted and checked like
    # the first (`GeometricVerifier.verify_views`), up to this many; 0 (or ``twin_ratio`` 0) looks
    # for none. A shelf photo rarely shows more than a handful of one product large enough to
    # match, and each search costs a robust fit.
    max_copies: int = 8
    # A further copy whose box covers more than this share of an earlier box (of the smaller of
    # the two) is the same copy seen again through leftover matches, not another one: copies of
    # a product lie side by side or in front of each other, hiding at most a part.
    max_copy_overlap: float = 0.25
    # Underexposed photos are brightened before SIFT (`GeometricVerifier._exposure_gain`): its
    # contrast threshold is absolute, so a photo taken at half the light loses its weaker corners.
    # A photo counts as underexposed when its 99th-percentile grey is below this share of white;
    # every real photo of eval-dev and eval3d-dev is above it (0.57-1.0), and brightening those
    # too (a dark-background statue at 0.6) was worse (docs/accuracy.md, "Robustness").
    underexposed_below: float = 0.5
    # The most a photo is brightened: a nearly black one has too little signal to be worth
    # amplifying its noise.
    max_exposure_gain: float = 4.0
    # A homography has 8 degrees of freedom: with fewer matches than this its 4-point samples fit
    # noise too easily, so an affine map (6 DOF, a good local approximation) is fitted instead.
    min_homography_matches: int = 12
    # Accept a model only with this many distinct inliers. Measured on pairs of unrelated photos, the
    # best model that passes the sanity rules below collects at most ~4, so 8 leaves a factor of two.
    min_inliers: int = 8
    # Inliers are counted as distinct positions on a grid of this many working pixels: SIFT emits
    # one keypoint per dominant orientation and simulated views repeat points, and such duplicates
    # must not pass as independent evidence.
    distinct_cell: float = 2.0
    # Allowed change of the box's share of its image area: beyond 30x (5.5x linear) the model
    # nearly always comes from a degenerate sample (a collapsed or exploding quad).
    max_area_change: float = 30.0
    # Largest ratio between the projective depths of the box corners: beyond 4 the object would be
    # seen so obliquely that local features no longer match anyway.
    max_depth_ratio: float = 4.0
    # The projected box must lie mostly inside the target: matches inside the frame cannot
    # support an object that is mostly outside it.
    min_inside_fraction: float = 0.5
    # The inliers' convex hull must cover this share of the box: a model supported by one small
    # patch (a logo corner, one text line) extrapolates the rest of the box unreliably.
    min_inlier_spread: float = 0.04
    # Deformation tolerated by the local model (`GeometricVerifier.local_model`), as a fraction of
    # the product's projected diagonal: a bag or a shirt bends by about this much, while chance
    # matches of a look-alike (shared glyphs, barcodes) land anywhere in the region and rarely
    # agree with one similarity transform even this loosely.
    local_tolerance: float = 0.05
    # Pairs of matches closer than this fraction of the source box's diagonal are not used as
    # hypotheses: their scale and rotation are dominated by keypoint localisation noise.
    local_min_pair_spread: float = 0.1
    # Hypotheses tried at most (pairs of matches, spread evenly over all pairs): with a fifth of
    # the matches coherent, one pair in 25 is a coherent hypothesis, so 500 hold about 20.
    local_max_pairs: int = 500
    # Hypotheses checked against the sanity rules, best supported first, before giving up.
    local_max_candidates: int = 64
    # The answered box covers what the evidence vouches for (`_supported_region`): the ellipse
    # inscribed in the source box (a box's object touches its four sides, not its corners), the
    # inliers, and each box corner with an inlier within this fraction of the box diagonal.
    corner_reach: float = 0.2
    # Logistic calibration of `GeometricMatch.confidence` (the probability that the box is right,
    # IoU >= 0.5): bias and weights of log(inliers / min_inliers), log(coverage of the source box
    # by the inliers' hull) and the inlier ratio. Fitted on eval-dev and eval3d-dev by
    # ``python -m workbench.calibration`` (docs/accuracy.md); all weights are kept >= 0, so more
    # evidence never lowers the confidence.
    confidence_bias: float = 5.06
    confidence_weights: tuple[float, float, float] = (0.14, 1.68, 0.31)


@dataclass(frozen=True, eq=False)
class TargetFeatures:
    """Keypoints (Nx2 float32, original pixels) and unit descriptors of one whole target image."""

    keypoints: FloatArray
    descriptors: FloatArray
    width: int
    height: int
    scale: float  # working pixels per original pixel, <= 1


@dataclass(frozen=True, eq=False)
class SourceFeatures:
    """Keypoints (original pixels) inside ``box`` of a source image, from every simulated view."""

    keypoints: FloatArray
    descriptors: FloatArray
    box: BBox
    image_width: int
    image_height: int
    scale: float  # working pixels per original pixel of the frontal view, <= 1

    def joined(self, other: SourceFeatures) -> SourceFeatures:
        """These features and ``other``'s (more views of the same box) as one set."""
        return SourceFeatures(
            np.vstack([self.keypoints, other.keypoints]),
            np.vstack([self.descriptors, other.descriptors]),
            self.box,
            self.image_width,
            self.image_height,
            self.scale,
        )


@dataclass(frozen=True, eq=False)
class Correspondences:
    """Matched keypoint pairs, original pixel coordinates: ``source[i]`` matches ``target[i]``."""

    source: DoubleArray
    target: DoubleArray

    def __len__(self) -> int:
        return len(self.target)

    def count_inside(self, box: BBox) -> int:
        """Matches landing in ``box`` of the target: local evidence for a candidate found otherwise."""
        return int(_points_in_box(self.target, box).sum())


@dataclass(frozen=True, eq=False)
class _Candidates:
    """Source keypoints that passed the ratio test, their nearest target keypoint and its distance.

    The one-match-per-target-keypoint rule is applied last (`correspondences`), so candidates of
    several views of one box can be pooled first and give the matches of all views at once.
    """

    source: DoubleArray
    columns: IndexArray
    distances: FloatArray

    def plus(self, other: _Candidates) -> _Candidates:
        return _Candidates(
            np.vstack([self.source, other.source]),
            np.concatenate([self.columns, other.columns]),
            np.concatenate([self.distances, other.distances]),
        )

    def correspondences(self, target: TargetFeatures) -> Correspondences:
        kept = _nearest_per_column(self.columns, self.distances)
        return Correspondences(self.source[kept], target.keypoints[self.columns[kept]].astype(np.float64))


@dataclass(frozen=True, eq=False)
class _Nearest:
    """Each query keypoint's ``count`` nearest train descriptors, nearest first, found by one product.

    Descriptors are unit vectors, so one BLAS product yields every squared distance as 2 - 2 cos:
    several times faster than OpenCV's brute-force matcher, and exact, unlike FLANN. The product
    runs in torch, on the thread pool the models use: numpy's BLAS keeps its own threads spinning
    after a product, and on a 2-core host they slowed the detector pass that follows from ~70 to
    ~140 ms. Both ratio tests read the neighbours kept here, so the twin test
    (`twin_candidates`) costs no second product.
    """

    points: DoubleArray  # the query keypoints
    distances: torch.Tensor  # Q x count squared distances, ascending
    columns: torch.Tensor  # Q x count train indices

    @staticmethod
    def of(points: DoubleArray, query: FloatArray, train: FloatArray, count: int) -> _Nearest:
        if len(query) == 0 or len(train) < 2:
            empty = torch.zeros((len(query), 0))
            return _Nearest(points, empty, empty.long())
        nearest, columns = torch.topk(_similarities(query, train), min(count, len(train)), dim=1)
        # Clamped: rounding can take an identical descriptor's distance a hair below zero.
        return _Nearest(points, (2.0 - 2.0 * nearest).clamp_min(0.0), columns)

    def candidates(self, ratio: float) -> _Candidates:
        """Lowe's ratio test: the keypoints whose nearest descriptor is clearly closer than the runner-up."""
        if self.distances.shape[1] < 2:
            return self._none()
        passed = torch.nonzero(self.distances[:, 0] < (ratio * ratio) * self.distances[:, 1]).ravel()
        return self._pick(passed, torch.zeros_like(passed))

    def twin_candidates(self, train: FloatArray, ratio: float, twin_ratio: float) -> _Candidates:
        """The ratio test that looks past the nearest descriptor's twins (``GeometryConfig.twin_ratio``).

        Among the neighbours, a twin is one closer to the nearest than ``twin_ratio`` times the
        query's distance to the nearest (the nearest is its own twin). The runner-up is the
        nearest non-twin (the farthest neighbour when all are twins), and every twin that passes
        the ratio test against it is a candidate, so a keypoint may appear once per copy.
        """
        if self.distances.shape[1] < 2:
            return self._none()
        neighbours = torch.from_numpy(train)[self.columns]
        from_nearest = 2.0 - 2.0 * torch.einsum("qd,qkd->qk", neighbours[:, 0], neighbours)
        twin = from_nearest <= (twin_ratio * twin_ratio) * self.distances[:, :1]
        twin[:, 0] = True
        runner_up = torch.where(twin, torch.full_like(self.distances, math.inf), self.distances).min(dim=1).values
        runner_up = torch.where(torch.isinf(runner_up), self.distances[:, -1], runner_up)
        rows, slots = torch.nonzero(twin & (self.distances < (ratio * ratio) * runner_up[:, None]), as_tuple=True)
        return self._pick(rows, slots)

    def _pick(self, rows: torch.Tensor, slots: torch.Tensor) -> _Candidates:
        picked = rows.numpy().astype(np.intp)
        return _Candidates(
            self.points[picked],
            self.columns[rows, slots].numpy().astype(np.intp),
            self.distances[rows, slots].numpy().astype(np.float32),
        )

    def _none(self) -> _Candidates:
        return _Candidates(np.zeros((0, 2)), np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32))


@dataclass(frozen=True, eq=False)
class GeometricMatch:
    """Where the source box lies in the target, and how strongly the correspondences support it."""

    bbox: BBox  # axis-aligned hull of ``quad``, clipped to the target image
    quad: DoubleArray  # 4x2 projected box corners: top-left, top-right, bottom-right, bottom-left
    homography: DoubleArray  # 3x3 source -> target pixels; an affine model has last row (0, 0, 1)
    model: ModelType
    matches: int
    inliers: int  # distinct inlier positions
    inlier_ratio: float
    coverage: float  # area of the inliers' hull in the source over the source box's area
    confidence: float  # calibrated probability that ``bbox`` is right (IoU >= 0.5)


@dataclass(frozen=True, eq=False)
class Verification:
    """One source box checked against one target: the features used, their matches, the model if any."""

    source: SourceFeatures
    matches: Correspondences
    match: GeometricMatch | None
    # Further copies of the product in the target, each fitted and checked like ``match``
    # (never without it), in the order found.
    copies: tuple[GeometricMatch, ...] = ()


@dataclass(frozen=True, eq=False)
class LocalMatch:
    """Where a possibly deformed product lies: the similarity transform most matches agree with."""

    bbox: BBox  # hull of the source box under the similarity, clipped to the target image
    inliers: int  # distinct matches within the deformation tolerance of the model


class GeometricVerifier:
    """Matches local features of a source box against a target image and fits a plane model."""

    def __init__(self, config: GeometryConfig | None = None, threads: int | None = None) -> None:
        self.config = config or GeometryConfig()
        self.threads = threads or default_thread_count()
        # Threads that extract a source box's simulated views side by side (OpenCV releases the
        # GIL). The views are small (at most ``tilt_max_side``), where OpenCV's own threads
        # inside one SIFT pass help little: side by side, a box's 18 views take 91 instead of
        # 129 ms on two cores (eval-dev boxes), with identical features. At most
        # _MAX_VIEW_THREADS: each view in flight holds its own scale-space pyramid, so on a
        # many-core host an uncapped pool would add its pyramids to the worker's peak memory.
        self._views = min(self.threads, _MAX_VIEW_THREADS)
        self._pool = ThreadPoolExecutor(self._views, thread_name_prefix="sift-views")

    def target_features(self, image: RGBImage) -> TargetFeatures:
        height, width = image.shape[:2]
        scale = _working_scale(width, height, self.config.max_side)
        view = _resize(_to_gray(image, self._exposure_gain(image)), scale, cv2.INTER_AREA)
        points, descriptors = self._sift(view, None, self.config.max_target_keypoints)
        return TargetFeatures(_apply(_unscale_map(scale), points), self._normalise(descriptors), width, height, scale)

    def features(
        self, targets: Sequence[RGBImage], boxes: Sequence[tuple[RGBImage, BBox]]
    ) -> tuple[list[TargetFeatures], list[SourceFeatures]]:
        """``target_features`` of each target and ``frontal_features`` of each (source image, box), in order.

        The features are those of the one-by-one calls. SIFT on one photo keeps two cores ~75 %
        busy and on a small crop far less, so extractions run side by side on the views pool
        (OpenCV releases the GIL) where memory allows: those whose working image has at most
        1.5 ``max_side``² / (pool size) pixels, so the scale spaces held at once stay within one
        and a half full-size images' (measured peak: one 1024² photo +236 MiB, two 1024x768 side
        by side +348 MiB). Larger ones run first, one at a time. A 4:3 photo at working size
        (1024x768) goes side by side on two threads, a square 1024² one does not. Measured in
        docs/performance.md: a micro-batch's photos ≈ 25-30 % less SIFT time, and the boxes a
        catalogue shows for the first time come almost free beside their upload's photo.
        """
        extractions: list[Callable[[], TargetFeatures | SourceFeatures]] = [
            partial(self.target_features, target) for target in targets
        ]
        extractions += [partial(self.frontal_features, image, box) for image, box in boxes]
        pixels = [self._target_pixels(target) for target in targets]
        pixels += [self._crop_pixels(image, box) for image, box in boxes]
        small = 1.5 * self.config.max_side**2 / self._views
        done: dict[int, TargetFeatures | SourceFeatures] = {
            i: extract() for i, extract in enumerate(extractions) if self._views == 1 or pixels[i] > small
        }
        pending = {i: self._pool.submit(extract) for i, extract in enumerate(extractions) if i not in done}
        done.update((i, future.result()) for i, future in pending.items())
        results = [done[i] for i in range(len(extractions))]
        return cast(list[TargetFeatures], results[: len(targets)]), cast(list[SourceFeatures], results[len(targets) :])

    def _target_pixels(self, image: RGBImage) -> float:
        """Pixels of the working image ``target_features`` extracts from ``image``."""
        height, width = image.shape[:2]
        return width * height * _working_scale(width, height, self.config.max_side) ** 2

    def _crop_pixels(self, image: RGBImage, box: BBox) -> float:
        """Pixels of the working crop ``frontal_features`` extracts for ``box``."""
        height, width = image.shape[:2]
        x1, y1, x2, y2 = _crop_bounds(box, self.config.source_margin, width, height)
        scale = _working_scale(x2 - x1, y2 - y1, self.config.max_side)
        return (x2 - x1) * (y2 - y1) * scale * scale

    def source_features(self, image: RGBImage, box: BBox) -> SourceFeatures:
        """Features of the box seen frontally and under every simulated tilt, in source pixels."""
        return self.frontal_features(image, box).joined(self.tilted_features(image, box))

    def frontal_features(self, image: RGBImage, box: BBox) -> SourceFeatures:
        """Features of the box as photographed (no simulated tilt), in source pixels."""
        cfg = self.config
        crop, mask, (x1, y1) = self._source_crop(image, box)
        scale = _working_scale(crop.shape[1], crop.shape[0], cfg.max_side)
        view, view_mask, to_crop = _scaled_view(crop, mask, scale)
        points, descriptors = self._sift(view, view_mask, cfg.max_source_keypoints)
        return self._source(image, box, [(_apply(to_crop, points), descriptors)], (x1, y1), scale)

    def tilted_features(self, image: RGBImage, box: BBox) -> SourceFeatures:
        """Features of the box under every simulated camera tilt (ASIFT), in source pixels."""
        cfg = self.config
        crop, mask, (x1, y1) = self._source_crop(image, box)
        small_scale = _working_scale(crop.shape[1], crop.shape[0], min(cfg.max_side, cfg.tilt_max_side))
        small, small_mask, small_to_crop = _scaled_view(crop, mask, small_scale)

        def tilted(view_tilt: tuple[float, float]) -> tuple[FloatArray, FloatArray]:
            view, view_mask, to_small = _simulate_tilt(small, small_mask, *view_tilt)
            points, descriptors = self._sift(view, view_mask, cfg.max_tilted_view_keypoints)
            return _apply(_compose(small_to_crop, to_small), points), descriptors

        view_tilts = [(tilt, angle) for tilt in cfg.source_tilts for angle in _tilt_angles(tilt)]
        views = list(self._pool.map(tilted, view_tilts)) if self._views > 1 else list(map(tilted, view_tilts))
        scale = _working_scale(crop.shape[1], crop.shape[0], cfg.max_side)
        return self._source(image, box, views, (x1, y1), scale)

    def _source_crop(self, image: RGBImage, box: BBox) -> tuple[GrayImage, GrayImage, tuple[int, int]]:
        """The grey crop around ``box`` with its margin, the box's mask in it, and the crop's origin."""
        height, width = image.shape[:2]
        x1, y1, x2, y2 = _crop_bounds(box, self.config.source_margin, width, height)
        mask = _box_mask(BBox(box.x - x1, box.y - y1, box.width, box.height), x2 - x1, y2 - y1)
        return _to_gray(image[y1:y2, x1:x2], self._exposure_gain(image)), mask, (x1, y1)

    def _exposure_gain(self, image: RGBImage) -> float:
        """The gain that brings an underexposed photo's bright end (99th-percentile grey) to white; 1 for the rest.

        SIFT's contrast threshold is absolute: a photo taken at half the light has half the
        difference-of-Gaussian contrast, and its weaker corners fall below the threshold while
        the descriptors (unit vectors) would not have minded. The gain is a property of the
        photo, so a source box's crop gets its photo's gain. Every fourth pixel in each
        direction is plenty for a percentile.
        """
        cfg = self.config
        bright = float(np.percentile(_to_gray(image[::4, ::4], 1.0), 99))
        if bright >= cfg.underexposed_below * 255.0:
            return 1.0
        return min(cfg.max_exposure_gain, 255.0 / max(bright, 1.0))

    def _source(
        self,
        image: RGBImage,
        box: BBox,
        views: list[tuple[FloatArray, FloatArray]],
        origin: tuple[int, int],
        scale: float,
    ) -> SourceFeatures:
        """The views' keypoints in source pixels, those inside ``box`` only, with unit descriptors."""
        height, width = image.shape[:2]
        if views:
            points = np.vstack([p for p, _ in views]) + np.array(origin, dtype=np.float32)
            descriptors = self._normalise(np.vstack([d for _, d in views]))
        else:
            points, descriptors = np.zeros((0, 2), np.float32), np.zeros((0, _DESCRIPTOR_SIZE), np.float32)
        # Warped views can place a keypoint a fraction of a pixel outside the box edge.
        inside = _points_in_box(points, box)
        return SourceFeatures(points[inside], descriptors[inside], box, width, height, scale)

    def verify_views(
        self,
        frontal: SourceFeatures,
        tilted: Callable[[], SourceFeatures],
        target: TargetFeatures,
        source_box: BBox,
        settle_confidence: float | None = None,
    ) -> Verification:
        """``verify``, frontal view first: the simulated views only when the frontal one does not settle it.

        ``tilted`` gives the simulated views' features and is called only when needed, so
        callers can extract and cache them lazily. A frontal match settles it with a confidence
        of ``settle_confidence`` (default: the configured one); pass a higher value when a
        caller's threshold is above it, so that a match the simulated views would make confident
        enough is never cut short. The frontal view's ratio-test matches are kept for the second
        step, which gives exactly the matches of all views matched at once.
        """
        settle = self.config.settle_confidence if settle_confidence is None else settle_confidence
        frontal_nearest = self._nearest(frontal, target, source_box, twins=True)
        frontal_candidates = frontal_nearest.candidates(self.config.lowe_ratio)
        matches = frontal_candidates.correspondences(target)
        match = self.fit(matches, frontal, target, source_box)
        if not self.config.source_tilts or (match is not None and match.confidence >= settle):
            return self._with_copies(Verification(frontal, matches, match), (frontal_nearest,), target, source_box)
        views = tilted()
        source = frontal.joined(views)
        nearest = (frontal_nearest, self._nearest(views, target, source_box, twins=True))
        matches = frontal_candidates.plus(nearest[1].candidates(self.config.lowe_ratio)).correspondences(target)
        match = self.fit(matches, source, target, source_box)
        if match is not None or self.config.twin_ratio <= 0:
            return self._with_copies(Verification(source, matches, match), nearest, target, source_box)
        found = self._verify_with_twins(source, nearest, matches, target, source_box)
        # A match of the twin pass was decided on the twin test's matches: the copies' search reads them.
        return self._with_copies(found, nearest, target, source_box, found.matches)

    def _verify_with_twins(
        self,
        source: SourceFeatures,
        nearest: tuple[_Nearest, _Nearest],
        matches: Correspondences,
        target: TargetFeatures,
        source_box: BBox,
    ) -> Verification:
        """The second pass of `verify_views` for a product shown more than once (``GeometryConfig.twin_ratio``).

        It reads the neighbours the first pass found, so it costs no second descriptor product.
        Only where the twins add at least ``min_inliers`` correspondences to ``matches`` is a model
        fitted: fewer cannot be a copy of the product the plain test missed, and a fit costs a full
        RANSAC run on every negative.
        """
        cfg = self.config
        twins = self._twin_correspondences(nearest, target)
        if len(twins) - len(matches) < cfg.min_inliers:
            return Verification(source, matches, None)
        match = self.fit(twins, source, target, source_box)
        return Verification(source, twins, match) if match is not None else Verification(source, matches, None)

    def _with_copies(
        self,
        found: Verification,
        nearest: Sequence[_Nearest],
        target: TargetFeatures,
        source_box: BBox,
        twins: Correspondences | None = None,
    ) -> Verification:
        """``found`` with the further copies of the product in the target (``GeometryConfig.max_copies``).

        The twin test's matches keep every copy's (one keypoint may match once per copy); the
        matches inside the boxes found so far are set aside, and what remains is fitted with the
        same robust fit, guided growth and sanity rules as the first copy. The search stops at
        the first fit that fails or that lands on a box already found. ``found.matches`` stays
        what the first copy was decided on. ``twins``: the twin test's matches of ``nearest``,
        where the caller has them already.
        """
        cfg = self.config
        if found.match is None or cfg.max_copies <= 0 or cfg.twin_ratio <= 0:
            return found
        everything = twins if twins is not None else self._twin_correspondences(nearest, target)
        boxes = [found.match.bbox]
        copies: list[GeometricMatch] = []
        while len(copies) < cfg.max_copies:
            elsewhere = ~np.any([_points_in_box(everything.target, box) for box in boxes], axis=0)
            if np.count_nonzero(elsewhere) < cfg.min_inliers:
                break
            rest = Correspondences(everything.source[elsewhere], everything.target[elsewhere])
            copy = self.fit(rest, found.source, target, source_box)
            if copy is None or any(copy.bbox.overlap(box) > cfg.max_copy_overlap for box in boxes):
                break
            copies.append(copy)
            boxes.append(copy.bbox)
        return replace(found, copies=tuple(copies))

    def _twin_correspondences(self, nearest: Sequence[_Nearest], target: TargetFeatures) -> Correspondences:
        """The twin test's matches of every view in ``nearest``, pooled (``GeometryConfig.twin_ratio``)."""
        cfg = self.config
        pooled = [n.twin_candidates(target.descriptors, cfg.lowe_ratio, cfg.twin_ratio) for n in nearest]
        return reduce(_Candidates.plus, pooled).correspondences(target)

    def verify(self, source: SourceFeatures, target: TargetFeatures, source_box: BBox) -> GeometricMatch | None:
        """The target location of ``source_box``, or None when the geometry does not support one.

        ``source_box`` is normally the box ``source`` was extracted for; source keypoints outside it
        are ignored, so features of a larger region can serve a sub-box.
        """
        return self.fit(self.correspondences(source, target, source_box), source, target, source_box)

    def correspondences(self, source: SourceFeatures, target: TargetFeatures, source_box: BBox) -> Correspondences:
        """Descriptor matches that pass the ratio test, before any geometric model.

        Kept apart from ``fit`` because the matches are evidence on their own: a deformed product
        (a bag, a shirt) fails every rigid model yet still has many matches inside its box.
        """
        nearest = self._nearest(source, target, source_box, twins=False)
        return nearest.candidates(self.config.lowe_ratio).correspondences(target)

    def _nearest(self, source: SourceFeatures, target: TargetFeatures, source_box: BBox, twins: bool) -> _Nearest:
        """The nearest target descriptors of every source keypoint in ``source_box``: what the ratio tests read.

        Two suffice for the plain test; the twin test (``twins``) needs ``_MAX_TWINS`` + 1.
        """
        inside = _points_in_box(source.keypoints, source_box)
        count = _MAX_TWINS + 1 if twins and self.config.twin_ratio > 0 else 2
        return _Nearest.of(
            source.keypoints[inside].astype(np.float64), source.descriptors[inside], target.descriptors, count
        )

    def fit(
        self, matches: Correspondences, source: SourceFeatures, target: TargetFeatures, source_box: BBox
    ) -> GeometricMatch | None:
        """The best geometric model of ``matches`` that passes every sanity rule, if any.

        A model short of ``settle_confidence`` is grown by guided matching (`guided_correspondences`)
        and refitted: on a 3D product the first model usually rests on one face or one label, and
        the correct matches the global ratio test dropped lie where that model puts them.
        """
        found = self._fit_rigid(matches, source, target, source_box)
        if found is None or found.confidence >= self.config.settle_confidence:
            return found
        grown = self._fit_rigid(
            self.guided_correspondences(found.homography, source, target, source_box), source, target, source_box
        )
        return grown if grown is not None else found

    def guided_correspondences(
        self, model: DoubleArray, source: SourceFeatures, target: TargetFeatures, source_box: BBox
    ) -> Correspondences:
        """Ratio-test matches searched only near where ``model`` (3x3, source -> target) puts each source keypoint.

        The global ratio test drops a correct match whenever some descriptor anywhere in the
        photo is nearly as close (repeated print, a similar product, another face of the box);
        within a window around the predicted position that competition is gone (Hartley &
        Zisserman's guided matching). The window's radius is the deformation tolerance of
        the local model, ``local_tolerance`` of the product's projected diagonal, so the parts of
        a 3D product off the model's plane are still reached.
        """
        cfg = self.config
        empty = Correspondences(np.zeros((0, 2)), np.zeros((0, 2)))
        inside = _points_in_box(source.keypoints, source_box)
        points = source.keypoints[inside].astype(np.float64)
        predicted, corners = _project(model, points), _project(model, _box_corners(source_box))
        if predicted is None or corners is None or len(points) == 0:
            return empty
        low, high = corners[0].min(axis=0), corners[0].max(axis=0)
        radius = max(cfg.local_tolerance * float(np.hypot(*(high - low))), cfg.ransac_threshold / target.scale)
        candidates = np.flatnonzero(
            np.all((target.keypoints >= low - radius) & (target.keypoints <= high + radius), axis=1)
        )
        if len(candidates) == 0:
            return empty
        nearby = target.keypoints[candidates].astype(np.float32)
        descriptors, train = source.descriptors[inside], target.descriptors[candidates]
        found: list[tuple[IndexArray, IndexArray, FloatArray]] = []
        # Rows in chunks: all views of a large box against every keypoint under its projection
        # would otherwise be a few hundred megabytes of distances at once.
        for start in range(0, len(points), _GUIDED_ROWS):
            chunk = slice(start, start + _GUIDED_ROWS)
            offsets = predicted[0][chunk, None, :].astype(np.float32) - nearby[None, :, :]
            similarity = _cosines(descriptors[chunk], train)
            similarity[np.einsum("ijk,ijk->ij", offsets, offsets) > radius * radius] = -np.inf
            rows, columns, distances = _ratio_test_of(similarity, cfg.lowe_ratio)
            found.append((rows + start, columns, distances))
        rows = np.concatenate([f[0] for f in found])
        columns = np.concatenate([f[1] for f in found])
        kept = _nearest_per_column(columns, np.concatenate([f[2] for f in found]))
        return Correspondences(points[rows[kept]], nearby[columns[kept]].astype(np.float64))

    def _fit_rigid(
        self, matches: Correspondences, source: SourceFeatures, target: TargetFeatures, source_box: BBox
    ) -> GeometricMatch | None:
        """A homography, else an affine map, fitted to ``matches`` and passing every sanity rule."""
        cfg = self.config
        if len(matches.source) < cfg.min_inliers:
            return None
        src, dst = matches.source, matches.target
        if cfg.match_order_seed is not None:
            order = np.random.default_rng(cfg.match_order_seed).permutation(len(src))
            src, dst = src[order], dst[order]
        threshold = cfg.ransac_threshold / target.scale
        if len(src) >= cfg.min_homography_matches:
            found = self._accept(
                self._fit_homography(src, dst, threshold), "homography", src, dst, source, target, source_box
            )
            if found is not None:
                return found
        # Few matches, or a homography that failed the sanity rules (e.g. inliers close to a line,
        # where its perspective terms are unconstrained): the affine model is better conditioned.
        return self._accept(self._fit_affine(src, dst, threshold), "affine", src, dst, source, target, source_box)

    def local_model(
        self, matches: Correspondences, source: SourceFeatures, target: TargetFeatures, source_box: BBox
    ) -> LocalMatch | None:
        """The best similarity transform of ``matches`` under a tolerance that admits deformation.

        For a product no rigid model explains (a bag, a shirt, a bent label), this says whether
        its matches still agree *locally* — one scale, rotation and place, give or take
        ``local_tolerance`` of its size — and where that place is. Every pair of matches is a
        hypothesis (two points fix a similarity), scored by the matches it explains with a
        tolerance relative to its own scale, so the test means the same for near and far
        products. Its inliers must spread over the box like `fit`'s; None when none of the
        ``local_max_candidates`` best-supported hypotheses passes those rules.
        """
        cfg = self.config
        if len(matches) < 2:
            return None
        src = matches.source[:, 0] + 1j * matches.source[:, 1]
        dst = matches.target[:, 0] + 1j * matches.target[:, 1]
        first, second = _pairs(len(matches), cfg.local_max_pairs)
        diagonal = math.hypot(source_box.width, source_box.height)
        spread = np.abs(src[second] - src[first])
        usable = spread >= cfg.local_min_pair_spread * diagonal
        first, second = first[usable], second[usable]
        # z_target = a * z_source + b: |a| is the scale, arg(a) the rotation, never a mirror image.
        a = (dst[second] - dst[first]) / (src[second] - src[first])
        b = dst[first] - a * src[first]
        area_change = np.abs(a) ** 2 * (source.image_width * source.image_height) / (target.width * target.height)
        plausible = (area_change >= 1.0 / cfg.max_area_change) & (area_change <= cfg.max_area_change)
        a, b = a[plausible], b[plausible]
        if len(a) == 0:
            return None
        residuals = np.abs(a[:, None] * src[None, :] + b[:, None] - dst[None, :])
        # Never tighter than the rigid fit's threshold: a small product in a downscaled photo
        # would otherwise be asked for sub-pixel agreement.
        tolerance = np.maximum(cfg.local_tolerance * diagonal * np.abs(a), cfg.ransac_threshold / target.scale)
        explained = residuals <= tolerance[:, None]
        support = explained.sum(axis=1)
        corners = _box_corners(source_box)
        corner_points = corners[:, 0] + 1j * corners[:, 1]
        # Best supported first; the first that passes the sanity rules of `fit` is the answer.
        for best in np.argsort(-support, kind="stable")[: cfg.local_max_candidates]:
            inlier_mask = explained[best]
            if _hull_area(matches.source[inlier_mask]) < cfg.min_inlier_spread * source_box.area:
                continue  # one small patch (a shared logo) cannot vouch for the whole product
            projected = a[best] * corner_points + b[best]
            quad = np.stack([projected.real, projected.imag], axis=1)
            if not _plausible_quad(quad, np.ones(4), source, target, source_box, cfg):
                continue
            low, high = quad.min(axis=0), quad.max(axis=0)
            inliers = min(
                _distinct(matches.source[inlier_mask], cfg.distinct_cell / source.scale),
                _distinct(matches.target[inlier_mask], cfg.distinct_cell / target.scale),
            )
            bbox = BBox.from_xyxy(float(low[0]), float(low[1]), float(high[0]), float(high[1]))
            return LocalMatch(bbox.clip(target.width, target.height), inliers)
        return None

    def _sift(self, gray: GrayImage, mask: GrayImage | None, max_keypoints: int) -> tuple[FloatArray, FloatArray]:
        detector = cv2.SIFT.create(nfeatures=max_keypoints, contrastThreshold=self.config.contrast_threshold)
        keypoints, descriptors = detector.detectAndCompute(gray, mask)
        if descriptors is None or len(keypoints) == 0:
            return np.zeros((0, 2), np.float32), np.zeros((0, _DESCRIPTOR_SIZE), np.float32)
        points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
        return points, np.asarray(descriptors, dtype=np.float32)

    def _normalise(self, descriptors: FloatArray) -> FloatArray:
        """Unit vectors, so that matching is one matrix product (see `_Nearest`)."""
        if self.config.feature == "rootsift":
            l1 = np.maximum(np.abs(descriptors).sum(axis=1, keepdims=True), 1e-7)
            return np.sqrt(descriptors / l1).astype(np.float32)
        norm = np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-7)
        return (descriptors / norm).astype(np.float32)

    def _fit_homography(
        self, src: DoubleArray, dst: DoubleArray, threshold: float
    ) -> tuple[DoubleArray, BoolArray] | None:
        cfg = self.config
        matrix, mask = cv2.findHomography(
            src, dst, _HOMOGRAPHY_METHOD, threshold, maxIters=cfg.ransac_max_iters, confidence=cfg.ransac_confidence
        )
        if matrix is None or mask is None:
            return None
        return np.asarray(matrix, dtype=np.float64), np.asarray(mask).ravel().astype(bool)

    def _fit_affine(self, src: DoubleArray, dst: DoubleArray, threshold: float) -> tuple[DoubleArray, BoolArray] | None:
        cfg = self.config
        affine, mask = cv2.estimateAffine2D(
            src,
            dst,
            method=cv2.RANSAC,
            ransacReprojThreshold=threshold,
            maxIters=cfg.ransac_max_iters,
            confidence=cfg.ransac_confidence,
        )
        if affine is None or mask is None:
            return None
        matrix = np.vstack([np.asarray(affine, dtype=np.float64), [0.0, 0.0, 1.0]])
        return matrix, np.asarray(mask).ravel().astype(bool)

    def _accept(
        self,
        fitted: tuple[DoubleArray, BoolArray] | None,
        model: ModelType,
        src: DoubleArray,
        dst: DoubleArray,
        source: SourceFeatures,
        target: TargetFeatures,
        source_box: BBox,
    ) -> GeometricMatch | None:
        """The match if the fitted model passes every sanity rule, else None."""
        cfg = self.config
        if fitted is None:
            return None
        matrix, inlier_mask = fitted
        inliers = min(
            _distinct(src[inlier_mask], cfg.distinct_cell / source.scale),
            _distinct(dst[inlier_mask], cfg.distinct_cell / target.scale),
        )
        if inliers < cfg.min_inliers or _hull_area(src[inlier_mask]) < cfg.min_inlier_spread * source_box.area:
            return None
        projected = _project(matrix, _box_corners(source_box))
        if projected is None or not _plausible_quad(*projected, source, target, source_box, cfg):
            return None
        quad = projected[0]
        # The box answers for the part of the source box the evidence vouches for: projecting the
        # whole box would extrapolate a plane model into the corners of a turned 3D object.
        mapped = _project(matrix, _supported_region(src[inlier_mask], source_box, cfg.corner_reach))
        low, high = (mapped or projected)[0].min(axis=0), (mapped or projected)[0].max(axis=0)
        ratio = inliers / len(src)
        coverage = _hull_area(src[inlier_mask]) / source_box.area
        return GeometricMatch(
            bbox=BBox.from_xyxy(float(low[0]), float(low[1]), float(high[0]), float(high[1])).clip(
                target.width, target.height
            ),
            quad=quad,
            homography=matrix / matrix[2, 2] if abs(matrix[2, 2]) > 1e-12 else matrix,
            model=model,
            matches=len(src),
            inliers=inliers,
            inlier_ratio=ratio,
            coverage=coverage,
            confidence=match_confidence(inliers, ratio, coverage, cfg),
        )


# ------------------------------------------------------------------------------ image views


def _to_gray(image: RGBImage, gain: float) -> GrayImage:
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return np.asarray(gray if gain == 1.0 else cv2.convertScaleAbs(gray, alpha=gain), dtype=np.uint8)


def _working_scale(width: int, height: int, max_side: int) -> float:
    return min(1.0, max_side / max(width, height, 1))


def _resize(image: GrayImage, scale: float, interpolation: int) -> GrayImage:
    """``image`` resized by ``scale`` <= 1 (returned as is at 1)."""
    if scale >= 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=interpolation), dtype=np.uint8)


def _scaled_view(crop: GrayImage, mask: GrayImage, scale: float) -> tuple[GrayImage, GrayImage, DoubleArray]:
    """The crop and its mask resized by ``scale``, and the map back to crop pixels."""
    return _resize(crop, scale, cv2.INTER_AREA), _resize(mask, scale, cv2.INTER_NEAREST), _unscale_map(scale)


def _unscale_map(scale: float) -> DoubleArray:
    """2x3 map from pixels of an image resized by ``scale`` back to the input's pixels.

    Pixel centres follow OpenCV's resize: x_small = (x + 0.5) * scale - 0.5.
    """
    return np.array([[1.0 / scale, 0.0, 0.5 / scale - 0.5], [0.0, 1.0 / scale, 0.5 / scale - 0.5]])


def _tilt_angles(tilt: float) -> list[float]:
    """ASIFT's longitude sampling: steps of 72/t degrees keep neighbouring views overlapping."""
    return [float(angle) for angle in np.arange(0.0, 180.0, 72.0 / tilt)]


def _simulate_tilt(
    gray: GrayImage, mask: GrayImage, tilt: float, angle: float
) -> tuple[GrayImage, GrayImage, DoubleArray]:
    """``gray`` as a camera tilted by ``tilt`` in direction ``angle`` sees it (rotate, then squeeze x).

    Returns the view, its mask and the 2x3 map from view pixels back to ``gray`` pixels. The x
    blur before squeezing is ASIFT's anti-aliasing filter, sigma = 0.8 sqrt(t^2 - 1).
    """
    height, width = gray.shape[:2]
    rotation, size = _rotation_onto_canvas(width, height, angle)
    rotated = cv2.warpAffine(gray, rotation, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    rotated_mask = cv2.warpAffine(mask, rotation, size, flags=cv2.INTER_NEAREST)
    blurred = cv2.GaussianBlur(rotated, (0, 1), sigmaX=0.8 * math.sqrt(tilt * tilt - 1.0))
    squeezed_size = (max(1, round(size[0] / tilt)), size[1])
    view = np.asarray(cv2.resize(blurred, squeezed_size, interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
    view_mask = np.asarray(cv2.resize(rotated_mask, squeezed_size, interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
    sx = squeezed_size[0] / size[0]
    squeeze = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, 1.0, 0.0]])
    forward = _compose(squeeze, rotation)
    return view, view_mask, np.asarray(cv2.invertAffineTransform(forward), dtype=np.float64)


def _rotation_onto_canvas(width: int, height: int, angle: float) -> tuple[DoubleArray, tuple[int, int]]:
    """2x3 rotation by ``angle`` degrees, shifted so the whole rotated image fits its canvas."""
    rad = math.radians(angle)
    linear = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]])
    mapped = corners @ linear.T
    low, high = mapped.min(axis=0), mapped.max(axis=0)
    size = (max(1, math.ceil(high[0] - low[0])), max(1, math.ceil(high[1] - low[1])))
    return np.hstack([linear, (-low - 0.5)[:, None]]), size


def _compose(outer: DoubleArray, inner: DoubleArray) -> DoubleArray:
    """The 2x3 affine map ``outer`` after ``inner``."""
    return outer[:, :2] @ inner + np.hstack([np.zeros((2, 2)), outer[:, 2:]])


def _apply(affine: DoubleArray, points: FloatArray) -> FloatArray:
    return (points.astype(np.float64) @ affine[:, :2].T + affine[:, 2]).astype(np.float32)


def _crop_bounds(box: BBox, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    pad = margin * max(box.width, box.height)
    x1 = min(max(0, math.floor(box.x - pad)), width - 1)
    y1 = min(max(0, math.floor(box.y - pad)), height - 1)
    x2 = max(min(width, math.ceil(box.x2 + pad)), x1 + 1)
    y2 = max(min(height, math.ceil(box.y2 + pad)), y1 + 1)
    return x1, y1, x2, y2


def _box_mask(box: BBox, width: int, height: int) -> GrayImage:
    mask = np.zeros((height, width), dtype=np.uint8)
    x1, y1 = max(0, math.floor(box.x)), max(0, math.floor(box.y))
    x2, y2 = min(width, math.ceil(box.x2)), min(height, math.ceil(box.y2))
    mask[y1:y2, x1:x2] = 255
    return mask


# -------------------------------------------------------------------------------------- matching


def _points_in_box(points: FloatArray | DoubleArray, box: BBox) -> BoolArray:
    x, y = points[:, 0], points[:, 1]
    return np.asarray((x >= box.x) & (x <= box.x2) & (y >= box.y) & (y <= box.y2), dtype=bool)


def _cosines(query: FloatArray, train: FloatArray) -> FloatArray:
    """Every query unit vector's cosine with every train one, in torch (see `_Nearest`)."""
    return np.asarray(_similarities(query, train).numpy())


def _similarities(query: FloatArray, train: FloatArray) -> torch.Tensor:
    return torch.from_numpy(query) @ torch.from_numpy(train).T


def _ratio_test_of(similarity: FloatArray, ratio: float) -> tuple[IndexArray, IndexArray, FloatArray]:
    """`_Nearest.candidates` on a cosine matrix, in which ``-inf`` marks a pair that is not a candidate.

    A row needs two candidates, since a lone one has nothing to be clearly better than
    (measured: accepting lone candidates in guided matching let chance models collect as much
    evidence as real ones).
    """
    rows = np.arange(len(similarity))
    best = np.argmax(similarity, axis=1)
    nearest = 2.0 - 2.0 * similarity[rows, best]
    similarity[rows, best] = -np.inf
    runner_up = 2.0 - 2.0 * similarity.max(axis=1)
    passed = rows[np.isfinite(runner_up) & (nearest < (ratio * ratio) * runner_up)]
    return passed, best[passed], nearest[passed].astype(np.float32)


def _nearest_per_column(columns: IndexArray, distances: FloatArray) -> IndexArray:
    """Indices (ascending) of the closest of the candidates sharing each column.

    When several source keypoints pick the same target keypoint only the closest is kept; a
    symmetric nearest-neighbour check would instead drop correct matches whose source point
    also occurs, nearly identical, in another simulated view.
    """
    by_distance = np.argsort(distances, kind="stable")
    _, first = np.unique(columns[by_distance], return_index=True)
    return np.sort(by_distance[first])


def _pairs(count: int, limit: int) -> tuple[IndexArray, IndexArray]:
    """Index pairs (i < j) of ``count`` items: all of them, or ``limit`` spread evenly over all.

    Pairs are numbered row by row of the upper triangle and only the chosen numbers are turned
    into (i, j), so thousands of matches never materialise millions of pairs.
    """
    total = count * (count - 1) // 2
    chosen = np.arange(total) if total <= limit else np.linspace(0, total - 1, limit).astype(np.int64)
    rows = np.arange(max(count - 1, 0), dtype=np.int64)
    row_starts = rows * (2 * count - rows - 1) // 2
    first = np.searchsorted(row_starts, chosen, side="right") - 1
    second = chosen - row_starts[first] + first + 1
    return first.astype(np.intp), second.astype(np.intp)


def _supported_region(points: DoubleArray, box: BBox, reach: float) -> DoubleArray:
    """The ellipse inscribed in ``box`` together with ``points``: what the box and the evidence vouch for."""
    angles = np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False)
    cx, cy = box.center
    ellipse = np.stack([cx + box.width / 2 * np.cos(angles), cy + box.height / 2 * np.sin(angles)], axis=1)
    corners = _box_corners(box)
    distance = np.linalg.norm(corners[:, None, :] - points[None, :, :], axis=2).min(axis=1)
    supported = corners[distance <= reach * math.hypot(box.width, box.height)]
    hull = cv2.convexHull(np.vstack([ellipse, points, supported]).astype(np.float32)).reshape(-1, 2)
    return np.asarray(hull, dtype=np.float64)


def _distinct(points: DoubleArray, cell: float) -> int:
    return len(np.unique(np.floor(points / cell).astype(np.int64), axis=0))


def _hull_area(points: DoubleArray) -> float:
    if len(points) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(points.astype(np.float32))))


# ---------------------------------------------------------------------------------- sanity rules


def _box_corners(box: BBox) -> DoubleArray:
    return np.array([[box.x, box.y], [box.x2, box.y], [box.x2, box.y2], [box.x, box.y2]], dtype=np.float64)


def _project(matrix: DoubleArray, points: DoubleArray) -> tuple[DoubleArray, DoubleArray] | None:
    """Projected points and their projective depths, or None if the plane folds behind the camera.

    Depths are sign-normalised to be positive; a sign change between corners means the horizon line
    crosses the box, which no real view of a plane produces.
    """
    homogeneous = np.hstack([points, np.ones((len(points), 1))]) @ matrix.T
    if homogeneous[:, 2].mean() < 0:
        homogeneous = -homogeneous
    depths = homogeneous[:, 2]
    if np.any(depths <= 1e-12):
        return None
    return homogeneous[:, :2] / depths[:, None], depths


def _signed_area(quad: DoubleArray) -> float:
    x, y = quad[:, 0], quad[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _is_convex_same_orientation(quad: DoubleArray, reference: DoubleArray) -> bool:
    """True when every corner of ``quad`` turns the same way as those of ``reference`` (a rectangle).

    For four vertices this rules out bow-ties (self-intersection), concave darts and mirror images
    at once; a camera never mirrors a product.
    """
    edges = np.roll(quad, -1, axis=0) - quad
    following = np.roll(edges, -1, axis=0)
    turns = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]
    return bool(np.all(turns * math.copysign(1.0, _signed_area(reference)) > 0))


def _inside_fraction(quad: DoubleArray, width: int, height: int) -> float:
    """Share of the (convex) quad's area inside the image."""
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    polygon = quad.astype(np.float32)
    if _signed_area(quad) < 0:
        polygon = np.ascontiguousarray(polygon[::-1])
    area, _ = cv2.intersectConvexConvex(polygon, frame)
    total = abs(_signed_area(quad))
    return max(0.0, float(area)) / total if total > 0 else 0.0


def _plausible_quad(
    quad: DoubleArray,
    depths: DoubleArray,
    source: SourceFeatures,
    target: TargetFeatures,
    source_box: BBox,
    cfg: GeometryConfig,
) -> bool:
    """General sanity rules for a projected box; degenerate models fail at least one of them."""
    if not _is_convex_same_orientation(quad, _box_corners(source_box)):
        return False
    if float(depths.max() / depths.min()) > cfg.max_depth_ratio:
        return False
    source_share = source_box.area / (source.image_width * source.image_height)
    target_share = abs(_signed_area(quad)) / (target.width * target.height)
    if source_share <= 0 or not 1.0 / cfg.max_area_change <= target_share / source_share <= cfg.max_area_change:
        return False
    return _inside_fraction(quad, target.width, target.height) >= cfg.min_inside_fraction


def match_confidence(inliers: int, inlier_ratio: float, coverage: float, cfg: GeometryConfig) -> float:
    """The probability that an accepted match's box is right, by the calibrated logistic model.

    Coverage matters most: a model supported by a small patch of the source box (a logo on one
    face of a carton) places that patch well and extrapolates the rest of the box poorly.
    """
    features = confidence_features(inliers, inlier_ratio, coverage, cfg.min_inliers)
    z = cfg.confidence_bias + sum(w * x for w, x in zip(cfg.confidence_weights, features, strict=True))
    return 1.0 / (1.0 + math.exp(-z))


def confidence_features(inliers: int, inlier_ratio: float, coverage: float, min_inliers: int) -> tuple[float, ...]:
    """What the calibrated confidence weighs, in the order of ``GeometryConfig.confidence_weights``."""
    return (math.log(max(inliers, 1) / min_inliers), math.log(max(coverage, 0.01)), inlier_ratio)
