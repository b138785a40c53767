"""Plugs the full pipeline into the evaluator, so ``tagstream eval`` scores what the stream runs."""

from __future__ import annotations

from inference.pipeline import Pipeline
from inference.types import MatchRequest, SourceImage, SourceTag
from workbench.evaluation import EvalAnswer, EvalQuery, Locator


def pipeline_locator(pipeline: Pipeline) -> Locator:
    """Each evaluator batch shares one target image: it becomes one request with one tag per query."""

    def locate(queries: list[EvalQuery]) -> list[EvalAnswer]:
        by_source: dict[str, list[EvalQuery]] = {}
        for query in queries:
            by_source.setdefault(query.source_key, []).append(query)
        sources = tuple(
            SourceImage(key, group[0].source_image, tuple(SourceTag(q.item_id, q.source_box) for q in group))
            for key, group in by_source.items()
        )
        request = MatchRequest(queries[0].target_key, queries[0].target_image, sources)
        (result,) = pipeline.run([request])
        matches = {m.product_id: m for m in result.matches}
        return [
            EvalAnswer(
                found=match.found,
                bbox=match.bbox,
                confidence=match.confidence,
                method=match.method.value,
                copies=tuple(copy.bbox for copy in match.copies),
            )
            for match in (matches[q.item_id] for q in queries)
        ]

    return locate
