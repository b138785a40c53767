"""The inference bench on real photographs: its inputs, both reference paths and what it reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.pipelines.offline import offline_pipeline

from inference.geometry import GeometricVerifier
from inference.pipeline import Pipeline
from workbench.benchmark import (
    BenchConfig,
    BenchUpload,
    StrategyRun,
    _same_uploads_ratio,
    _spread,
    _warm_up,
    full_decoder,
    photo_uploads,
    run_strategy,
    worker_decoder,
)
from workbench.evaluation import SAMPLE_CASES, load_cases
from workbench.reference import ReferenceMatcher


@pytest.fixture(scope="module")
def pipeline(cache_dir: Path) -> Pipeline:
    return offline_pipeline(cache_dir)


@pytest.fixture(scope="module")
def photos() -> list[BenchUpload]:
    return photo_uploads(SAMPLE_CASES)


def test_every_case_with_boxes_is_one_upload_carrying_its_source_photo_and_boxes(photos: list[BenchUpload]) -> None:
    cases = [case for case in load_cases(SAMPLE_CASES) if case.boxes]

    assert [upload.name for upload in photos] == [case.case_id for case in cases]
    for upload, case in zip(photos, cases, strict=True):
        ((key, data, tags),) = upload.sources
        assert key == str(case.source_path) and data == case.source_path.read_bytes()
        assert [tag.bbox for tag in tags] == [box.source_box for box in case.boxes]
        assert upload.target == case.target_path.read_bytes()


def test_the_worker_decoder_reduces_large_photos_and_remembers_the_scale(photos: list[BenchUpload]) -> None:
    data = photos[0].target
    full = full_decoder(data)
    reduced = worker_decoder(max(full.pixels.shape[:2]) // 2)(data)

    assert full.scale == 1.0
    assert max(reduced.pixels.shape[:2]) == max(full.pixels.shape[:2]) // 2
    assert reduced.scale == pytest.approx(0.5, abs=0.01)
    assert (reduced.original_width, reduced.original_height) == (full.original_width, full.original_height)


def test_the_reference_best_path_stops_after_the_coarse_grid(pipeline: Pipeline, photos: list[BenchUpload]) -> None:
    upload = photos[:1]
    best = ReferenceMatcher(pipeline.detector, pipeline.embedder, full_search=False)
    full = ReferenceMatcher(pipeline.detector, pipeline.embedder, full_search=True)

    best_run = run_strategy(best.run, upload, full_decoder, 1, lambda: best.crops)
    full_run = run_strategy(full.run, upload, full_decoder, 1, lambda: full.crops)

    tags = len(upload[0].sources[0][2])
    # Full search adds 90 fine and 25 ultra-fine crops per tag to the same coarse pass.
    assert full_run.crops == best_run.crops + tags * (90 + 25)
    assert best_run.crops is not None and best_run.crops > tags  # a query crop and its candidates per tag


def test_a_run_reports_throughput_latency_percentiles_and_stages(pipeline: Pipeline, photos: list[BenchUpload]) -> None:
    run = run_strategy(pipeline.run, photos[:3], worker_decoder(2048), 2)
    report = run.to_json()

    assert run.uploads == 3 and len(run.latencies) == 3
    assert run.latencies[0] == run.latencies[1]  # one batch: both uploads waited for all of it
    assert report["uploads_per_s"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"]
    assert {"fetch_decode", "detect", "verify"} <= set(report["stage_ms_per_upload"])


def test_the_warm_up_leaves_the_catalogue_for_the_first_pass_to_extract(
    pipeline: Pipeline, photos: list[BenchUpload]
) -> None:
    fresh = Pipeline(pipeline.detector, pipeline.embedder, GeometricVerifier(), pipeline.config)
    decode = worker_decoder(2048)
    _warm_up(fresh, photos, decode, BenchConfig())
    assert fresh.source_cache_misses == 0

    run_strategy(fresh.run, photos[:1], decode, 1)
    assert fresh.source_cache_misses >= sum(len(tags) for _, _, tags in photos[0].sources)


def test_reference_uploads_are_spread_over_the_set_and_nested() -> None:
    assert _spread(2, 23) == [0, 22]
    assert _spread(4, 23) == [0, 7, 15, 22]
    assert set(_spread(2, 23)) <= set(_spread(4, 23))
    assert _spread(5, 3) == [0, 1, 2]


def test_speedup_is_taken_on_the_uploads_both_strategies_ran() -> None:
    one_by_one = StrategyRun(3, 6.0, [1.0, 2.0, 3.0])
    reference = StrategyRun(2, 40.0, [10.0, 30.0])

    assert _same_uploads_ratio(one_by_one, reference, [0, 2]) == 10.0  # 40 s against 1 + 3 s
