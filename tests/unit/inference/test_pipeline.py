"""The pipeline end to end on generated scenes, with random-init models loaded from disk."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from support.pipelines.offline import offline_pipeline

from inference.detector import YoloDetector
from inference.embedder import ClipEmbedder, Embedder
from inference.geometry import GeometricVerifier, SourceFeatures
from inference.pipeline import Pipeline
from inference.types import BBox, MatchRequest, Method, RGBImage, SourceImage, SourceTag
from workbench.scenes import DemoSet


@pytest.fixture(scope="module")
def pipeline(cache_dir: Path) -> Pipeline:
    return offline_pipeline(cache_dir)


def test_offline_models_load_through_the_real_loaders(cache_dir: Path) -> None:
    models = cache_dir / "models"
    detector = YoloDetector(str(models / "yolo26n-random.pt"))
    assert len(detector.class_names) == 80
    assert len(detector.detect([np.zeros((64, 64, 3), np.uint8)] * 2, 0.5)) == 2
    embedder = ClipEmbedder(str(models / "clip-tiny-random"))
    vectors = embedder.embed(torch.rand(3, 3, 224, 224))
    assert vectors.shape == (3, 64)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)


def test_finds_present_products_precisely_and_rejects_absent_ones(pipeline: Pipeline, demo_set: DemoSet) -> None:
    requests = [MatchRequest(name, image, demo_set.source_images()) for name, image in demo_set.uploads.items()]
    results = pipeline.run(requests)
    assert [r.request_id for r in results] == list(demo_set.uploads)
    for result in results:
        truth = demo_set.ground_truth[result.request_id]
        assert [m.product_id for m in result.matches] == list(demo_set.product_ids)
        for match in result.matches:
            expected = truth[match.product_id]
            if expected is None:
                assert not match.found, match
            else:
                assert match.found and match.method == "geometric", match
                assert match.bbox is not None and match.bbox.iou(expected) > 0.8
        assert {"detect", "verify", "decide"} <= set(result.stage_ms)


def test_copies_in_a_reduced_photo_are_answered_in_its_original_pixels(pipeline: Pipeline, demo_set: DemoSet) -> None:
    """An upload shown twice side by side, reduced to half as the fetcher does with large photos."""
    name, image = next(iter(demo_set.uploads.items()))
    twice = np.concatenate([image, image], axis=1)
    reduced = np.ascontiguousarray(twice[::2, ::2])
    (result,) = pipeline.run([MatchRequest(name, reduced, demo_set.source_images(), target_scale=0.5)])
    found = 0
    for match in result.matches:
        expected = demo_set.ground_truth[name][match.product_id]
        if not match.found:
            assert match.copies == (), match
            continue
        assert expected is not None and match.bbox is not None, match
        truths = [expected, replace(expected, x=expected.x + image.shape[1])]
        answered = [match.bbox, *(copy.bbox for copy in match.copies)]
        assert len(answered) == 2, match
        assert sorted(max(range(2), key=lambda i, box=box: box.iou(truths[i])) for box in answered) == [0, 1]
        assert all(max(box.iou(t) for t in truths) > 0.7 for box in answered), match
        found += 1
    assert found >= 1


def test_every_view_of_a_product_is_answered_by_the_view_that_finds_it(pipeline: Pipeline, demo_set: DemoSet) -> None:
    """A catalogue that tagged a product in two photos: one view cannot find it (here: noise), the other can."""
    name, upload = next(iter(demo_set.uploads.items()))
    truth = demo_set.ground_truth[name]
    present = next(pid for pid in demo_set.product_ids if truth[pid] is not None)
    absent = next(pid for pid in demo_set.product_ids if truth[pid] is None)
    noise = np.random.default_rng(7).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    blind = SourceImage(
        "noise.png", noise, (SourceTag(present, BBox(40, 40, 200, 150)), SourceTag(absent, BBox(20, 20, 90, 90)))
    )
    catalogue = _only_tags(demo_set, {present, absent})

    (alone,) = pipeline.run([MatchRequest(name, upload, (blind,))])
    (pooled,) = pipeline.run([MatchRequest(name, upload, (blind, *catalogue))])

    assert not alone.matches[0].found
    answers = {pid: [m for m in pooled.matches if m.product_id == pid] for pid in (present, absent)}
    assert len(answers[present]) == 2 and len(answers[absent]) == 2
    first, second = answers[present]
    assert first == second and first.found and first.method == Method.GEOMETRIC
    assert first.bbox is not None and first.bbox.iou(truth[present]) > 0.8  # type: ignore[arg-type]
    assert not any(m.found for m in answers[absent])


def test_a_box_outside_its_source_image_is_a_per_tag_error(pipeline: Pipeline, demo_set: DemoSet) -> None:
    source = demo_set.source_images()[0]
    width = source.image.shape[1]
    extra = (SourceTag("off-image", BBox(5000, 5000, 10, 10)), SourceTag("sliver", BBox(width - 1, 10, 40, 40)))
    bad = SourceImage(source.key, source.image, (*source.tags, *extra))
    (result,) = pipeline.run([MatchRequest("r", next(iter(demo_set.uploads.values())), (bad,))])
    errors = {m.product_id: m.error for m in result.matches}
    assert str(errors["off-image"]).startswith("bbox_outside_image:")
    assert str(errors["sliver"]).startswith("bbox_too_small:")
    assert [m.method for m in result.matches[-2:]] == [Method.INVALID, Method.INVALID]
    assert all(errors[t.product_id] is None for t in source.tags)


def test_source_work_is_cached_across_batches(pipeline: Pipeline, demo_set: DemoSet) -> None:
    request = MatchRequest("again", next(iter(demo_set.uploads.values())), demo_set.source_images())
    pipeline.run([request])
    misses = pipeline.source_cache_misses
    pipeline.run([request])
    assert pipeline.source_cache_misses == misses


def test_another_match_order_shares_models_and_caches_but_not_the_seed(pipeline: Pipeline, demo_set: DemoSet) -> None:
    request = MatchRequest("order", next(iter(demo_set.uploads.values())), demo_set.source_images())
    shuffled = pipeline.with_match_order(3)
    natural = pipeline.run([request])[0]
    misses = pipeline.source_cache_misses
    assert misses > 0 and shuffled.source_cache_misses == misses  # what one extracts, the other has

    again = shuffled.run([request])[0]

    assert shuffled.verifier.config.match_order_seed == shuffled.config.geometry.match_order_seed == 3
    assert pipeline.verifier.config.match_order_seed is None and pipeline.config.geometry.match_order_seed is None
    assert shuffled.detector is pipeline.detector and shuffled.embedder is pipeline.embedder
    assert shuffled.source_cache_misses == misses  # every source box came from the shared cache
    assert [m.found for m in again.matches] == [m.found for m in natural.matches]


class _CountingVerifier(GeometricVerifier):
    """The real verifier, counting the source boxes whose simulated views it extracts."""

    tilted_extractions = 0

    def tilted_features(self, image: RGBImage, box: BBox) -> SourceFeatures:
        self.tilted_extractions += 1
        return super().tilted_features(image, box)


def test_simulated_views_are_extracted_only_for_tags_the_frontal_view_does_not_settle(
    pipeline: Pipeline, demo_set: DemoSet
) -> None:
    verifier = _CountingVerifier(pipeline.verifier.config)
    fresh = Pipeline(pipeline.detector, pipeline.embedder, verifier, pipeline.config)
    present = [
        MatchRequest(name, image, _only_tags(demo_set, {p for p, box in demo_set.ground_truth[name].items() if box}))
        for name, image in demo_set.uploads.items()
    ]
    settle = verifier.config.settle_confidence

    results = fresh.run(present)

    assert all(m.found for r in results for m in r.matches)
    unsettled = {m.product_id for r in results for m in r.matches if m.confidence < settle}
    assert verifier.tilted_extractions == len(unsettled) < len(demo_set.product_ids)
    everything = [MatchRequest(n, image, demo_set.source_images()) for n, image in demo_set.uploads.items()]
    fresh.run(everything)
    assert verifier.tilted_extractions == len(demo_set.product_ids)  # an absent product never settles
    fresh.run(everything)
    assert verifier.tilted_extractions == len(demo_set.product_ids)  # and its views are cached


def _only_tags(demo_set: DemoSet, product_ids: set[str]) -> tuple[SourceImage, ...]:
    return tuple(
        SourceImage(s.key, s.image, tuple(t for t in s.tags if t.product_id in product_ids))
        for s in demo_set.source_images()
    )


class _CountingEmbedder:
    """The real embedder, counting the forward passes it is asked for."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self.name, self.input_size, self.device = inner.name, inner.input_size, inner.device
        self.passes = 0

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return self._inner.embed(crops)


def test_lookalikes_and_confirmed_products_cost_no_clip_work(pipeline: Pipeline, demo_set: DemoSet) -> None:
    """Absent products collect chance matches on look-alikes; without a coherent local model CLIP never runs."""
    counting = _CountingEmbedder(pipeline.embedder)
    fast = Pipeline(pipeline.detector, counting, pipeline.verifier, pipeline.config)
    requests = [MatchRequest(name, image, demo_set.source_images()) for name, image in demo_set.uploads.items()]
    absent = [pid for truth in demo_set.ground_truth.values() for pid, box in truth.items() if box is None]

    results = fast.run(requests)

    assert absent, "the demo set must leave products out"
    for result in results:
        for match in result.matches:
            expected = demo_set.ground_truth[result.request_id][match.product_id]
            assert match.found == (expected is not None) and match.method in ("geometric", "none"), match
    assert counting.passes == 0


def test_the_views_of_a_product_geometry_found_cost_no_clip_work_unless_pooling_is_off(
    pipeline: Pipeline, demo_set: DemoSet
) -> None:
    """A flat grey view of a present product would send it to CLIP; found through its real view, it need not."""
    name, upload = next(iter(demo_set.uploads.items()))
    present = next(pid for pid in demo_set.product_ids if demo_set.ground_truth[name][pid] is not None)
    grey = SourceImage("grey.png", np.full((240, 320, 3), 128, np.uint8), (SourceTag(present, BBox(40, 40, 120, 100)),))
    request = MatchRequest(name, upload, (grey, *_only_tags(demo_set, {present})))
    passes = {}
    for pooled in (True, False):
        counting = _CountingEmbedder(pipeline.embedder)
        config = replace(pipeline.config, search=replace(pipeline.config.search, pool_views=pooled))
        (result,) = Pipeline(pipeline.detector, counting, pipeline.verifier, config).run([request])
        plain, real = result.matches
        assert real.found and real.method == Method.GEOMETRIC
        assert (plain == real) == pooled
        passes[pooled] = counting.passes
    assert passes[True] == 0 < passes[False]


def _with_plain_tag(source: SourceImage) -> tuple[SourceImage, BBox]:
    """``source`` with a flat grey patch painted in a free corner and tagged: a product without texture."""
    box = BBox(4, 4, 72, 72)
    assert all(tag.bbox.iou(box) == 0 for tag in source.tags)
    image = source.image.copy()
    image[4:76, 4:76] = 128
    return SourceImage(source.key + "#plain", image, (*source.tags, SourceTag("plain", box))), box


def test_without_a_rigid_model_clip_judges_textured_tags_where_their_local_model_puts_them(
    pipeline: Pipeline, demo_set: DemoSet
) -> None:
    """No rigid fit allowed, and a CLIP that accepts anything: textured products land where their matches agree.

    A textureless tag in the same uploads is searched (grid, then refinement) in the same passes.
    """
    counting = _CountingEmbedder(pipeline.embedder)
    config = replace(
        pipeline.config, search=replace(pipeline.config.search, similarity_threshold=-1.0, min_standout=-1e9)
    )
    no_rigid = GeometricVerifier(replace(pipeline.verifier.config, min_inliers=10**6))
    local_only = Pipeline(pipeline.detector, counting, no_rigid, config)
    first, *others = demo_set.source_images()
    with_plain, _ = _with_plain_tag(first)
    sources = (with_plain, *others)
    requests = [MatchRequest(name, image, sources) for name, image in demo_set.uploads.items()]

    results = local_only.run(requests)

    for result in results:
        for match in result.matches:
            if match.product_id == "plain":
                assert match.found and match.method == "clip" and match.bbox is not None, match
                continue
            expected = demo_set.ground_truth[result.request_id][match.product_id]
            if expected is None:
                assert not match.found, match  # the veto holds even when CLIP would accept anything
            else:
                assert match.found and match.method == "clip", match
                assert match.bbox is not None and match.bbox.iou(expected) > 0.75, (match, expected)
    # One pass per catalogue photo for its tags, then per upload one pass over the windows and the
    # local boxes and one over the plain tag's refinements: textured tags need no search of their own.
    assert counting.passes == len(sources) + 2 * len(requests)
