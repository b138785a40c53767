from dataclasses import replace

import pytest

from inference.config import SearchConfig
from inference.fusion import ClipEvidence, GeometricEvidence, decide, detected_class, pool_views, standout
from inference.types import BBox, Copy, Detection, Method, TagMatch

SEARCH = SearchConfig()
BOX = BBox(10, 10, 50, 50)


def test_geometry_wins_and_corrects_the_clip_box() -> None:
    clip = ClipEvidence(BBox(0, 0, 80, 80), similarity=0.95, standout=9.0)
    match = decide("p", 0.75, clip, GeometricEvidence(BOX, 0.8), True, [], SEARCH)
    assert (match.found, match.bbox, match.method) == (True, BOX, "geometric")


def test_an_unsure_geometric_match_is_not_suggested_but_its_confidence_is_told() -> None:
    match = decide("p", 0.75, None, GeometricEvidence(BOX, 0.6), True, [], SEARCH)
    assert (match.found, match.bbox, match.method) == (False, None, "none")
    assert match.confidence == pytest.approx(0.6)
    assert decide("p", 0.5, None, GeometricEvidence(BOX, 0.6), True, [], SEARCH).found


def test_copies_of_a_found_product_are_answered_at_the_threshold_only() -> None:
    sure, unsure = Copy(BBox(100, 0, 10, 10), 0.91234), Copy(BBox(200, 0, 10, 10), 0.6)

    match = decide("p", 0.75, None, GeometricEvidence(BOX, 0.8, (sure, unsure)), True, [], SEARCH)
    missed = decide("p", 0.85, None, GeometricEvidence(BOX, 0.8, (sure,)), True, [], SEARCH)

    assert match.copies == (Copy(sure.bbox, 0.9123),)
    assert not missed.found and missed.copies == ()
    scaled = match.scaled(2.0)
    assert scaled.bbox == BOX.scaled(2.0) and scaled.copies == (Copy(BBox(200, 0, 20, 20), 0.9123),)


def _match(product: str, method: Method, confidence: float, box: BBox | None = None) -> TagMatch:
    found = method in (Method.GEOMETRIC, Method.CLIP)
    return TagMatch(product, found, confidence, box if found else None, None, method)


def test_every_view_of_a_product_gets_its_best_found_answer() -> None:
    far, near = BBox(0, 0, 10, 10), BBox(50, 50, 20, 20)
    views = [
        _match("can", Method.NONE, 0.4),
        _match("can", Method.CLIP, 0.97, far),
        _match("box", Method.GEOMETRIC, 0.8, far),
        _match("can", Method.GEOMETRIC, 0.85, near),
        _match("can", Method.GEOMETRIC, 0.8, BBox(52, 48, 20, 20)),
    ]

    pooled = pool_views(views, 8, 0.25)

    # Geometry outranks a CLIP cosine, whatever the numbers; among geometric answers, the surer
    # one. The two geometric answers land on the same can: no copy.
    assert [m.product_id for m in pooled] == ["can", "can", "box", "can", "can"]
    assert [pooled[i] for i in (0, 1, 3, 4)] == [views[3]] * 4
    assert pooled[2] == views[2]


def test_places_only_other_views_found_become_copies_by_the_verifiers_rules() -> None:
    first, second, third = BBox(0, 0, 20, 20), BBox(100, 0, 20, 20), BBox(200, 0, 20, 20)
    best = replace(_match("can", Method.GEOMETRIC, 0.9, first), copies=(Copy(second, 0.88),))
    back = replace(_match("can", Method.GEOMETRIC, 0.8, third), copies=(Copy(BBox(104, 0, 20, 20), 0.79),))
    clip = _match("can", Method.CLIP, 0.99, BBox(300, 0, 20, 20))

    pooled = pool_views([back, clip, best], 8, 0.25)
    capped = pool_views([back, clip, best], 1, 0.25)

    # The back view's can is new; its copy is the best view's second can again; CLIP boxes never join.
    assert pooled == [replace(best, copies=(Copy(second, 0.88), Copy(third, 0.8)))] * 3
    assert capped[0].copies == (Copy(second, 0.88),)


def test_a_product_no_view_found_keeps_each_views_verdict_and_bad_tags_keep_their_error() -> None:
    views = [
        _match("can", Method.NONE, 0.4),
        _match("can", Method.NONE, 0.6),
        TagMatch.invalid("box", "bbox_outside_image: x"),
        _match("box", Method.GEOMETRIC, 0.9, BOX),
    ]

    assert pool_views(views, 8, 0.25) == [views[0], views[1], views[2], views[3]]
    assert pool_views(views[:1], 8, 0.25) == views[:1]


def test_clip_alone_needs_threshold_and_standout() -> None:
    assert decide("p", 0.75, ClipEvidence(BOX, 0.8, 5.0), None, False, [], SEARCH).found
    assert not decide("p", 0.75, ClipEvidence(BOX, 0.8, 1.0), None, False, [], SEARCH).found
    assert not decide("p", 0.85, ClipEvidence(BOX, 0.8, 5.0), None, False, [], SEARCH).found


def test_textured_source_without_geometry_needs_local_support() -> None:
    match = decide("p", 0.75, ClipEvidence(BOX, 0.99, 9.0, local_support=2), None, True, [], SEARCH)
    assert not match.found and match.method == "none" and match.bbox is None
    assert match.confidence == pytest.approx(0.99)
    supported = ClipEvidence(BOX, 0.85, 5.0, local_support=SEARCH.min_local_support, local_share=0.8)
    assert decide("p", 0.75, supported, None, True, [], SEARCH).method == "clip"
    scattered = ClipEvidence(BOX, 0.85, 5.0, local_support=SEARCH.min_local_support, local_share=0.1)
    assert not decide("p", 0.75, scattered, None, True, [], SEARCH).found


def test_detected_class_comes_from_an_overlapping_detection() -> None:
    detections = [Detection(BBox(12, 12, 48, 48), "bottle", 0.9, 39), Detection(BBox(200, 200, 10, 10), "cup", 0.9, 41)]
    assert detected_class(BOX, detections) == "bottle"
    assert detected_class(BBox(400, 400, 5, 5), detections) is None


def test_standout_is_robust_to_a_flat_field() -> None:
    assert standout(0.9, [0.5, 0.52, 0.48, 0.5]) > 10
    assert standout(0.9, [0.89, 0.9, 0.88, 0.9]) < 3
