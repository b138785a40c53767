"""The evaluator's bridge to the pipeline: each query is answered by its own tag, views or not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

from inference.pipeline import Pipeline
from inference.types import BBox, MatchRequest, MatchResult, Method, TagMatch
from workbench.evaluation import EvalQuery, QueryView
from workbench.pipeline_locator import pipeline_locator

PHOTO = np.zeros((8, 8, 3), np.uint8)


class _NumberingPipeline:
    """Answers tag number i of the request (sources in order, then their tags) with confidence i / 100."""

    requests: list[MatchRequest]

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
        (request,) = requests
        self.requests = [request]
        tags = [tag for source in request.sources for tag in source.tags]
        matches = tuple(TagMatch(t.product_id, False, i / 100, None, None, Method.NONE) for i, t in enumerate(tags))
        return [MatchResult(request.request_id, matches, 0)]


def _query(item_id: str, source: str, *views: QueryView) -> EvalQuery:
    return EvalQuery(item_id, "case", "box", source, PHOTO, BBox(0, 0, 4, 4), "target", PHOTO, views)


def test_each_query_gets_its_own_tags_answer_when_photos_hold_several_tags_and_views() -> None:
    fake = _NumberingPipeline()
    queries = [
        _query("q1", "a", QueryView("b", PHOTO, BBox(1, 1, 4, 4))),
        _query("q2", "b"),
        _query("q3", "a"),
    ]

    answers = pipeline_locator(cast(Pipeline, fake))(queries)

    # Photo a holds q1's and q3's tags (numbers 0, 1); photo b holds q1's view and q2's tag (2, 3).
    (request,) = fake.requests
    assert [(s.key, [t.product_id for t in s.tags]) for s in request.sources] == [
        ("a", ["q1", "q3"]),
        ("b", ["q1", "q2"]),
    ]
    assert [a.confidence for a in answers] == [0.0, 0.03, 0.01]
