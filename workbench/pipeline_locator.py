"""Plugs the full pipeline into the evaluator, so ``tagstream eval`` scores what the stream runs."""

from __future__ import annotations

from itertools import accumulate

from inference.pipeline import Pipeline
from inference.types import BBox, MatchRequest, RGBImage, SourceImage, SourceTag
from workbench.evaluation import EvalAnswer, EvalQuery, Locator


def pipeline_locator(pipeline: Pipeline) -> Locator:
    """Each evaluator batch shares one target image: it becomes one request with one tag per query.

    A query's further views of its product (a catalogue, ``EvalQuery.views``) are sent as more tags
    of the same product, in the photos they come from, so the pipeline pools them as it pools a
    real upload's; the query is answered by its own tag's verdict.
    """

    def locate(queries: list[EvalQuery]) -> list[EvalAnswer]:
        images: dict[str, RGBImage] = {}
        tags: dict[str, list[SourceTag]] = {}
        own: list[tuple[str, int]] = []
        for query in queries:
            index = _add(images, tags, query.source_key, query.source_image, query.item_id, query.source_box)
            own.append((query.source_key, index))
            for view in query.views:
                _add(images, tags, view.key, view.image, query.item_id, view.box)
        sources = tuple(SourceImage(key, images[key], tuple(key_tags)) for key, key_tags in tags.items())
        request = MatchRequest(queries[0].target_key, queries[0].target_image, sources)
        (result,) = pipeline.run([request])
        # The result lists the tags source by source: where each photo's tags start in it.
        ends = accumulate(len(photo_tags) for photo_tags in tags.values())
        starts = {key: end - len(photo_tags) for (key, photo_tags), end in zip(tags.items(), ends, strict=True)}
        answers = [result.matches[starts[key] + index] for key, index in own]
        return [
            EvalAnswer(
                found=match.found,
                bbox=match.bbox,
                confidence=match.confidence,
                method=match.method.value,
                copies=tuple(copy.bbox for copy in match.copies),
            )
            for match in answers
        ]

    return locate


def _add(
    images: dict[str, RGBImage], tags: dict[str, list[SourceTag]], key: str, image: RGBImage, product: str, box: BBox
) -> int:
    """Adds a tag of ``product`` in the photo ``key``; returns its index among that photo's tags."""
    images.setdefault(key, image)
    photo_tags = tags.setdefault(key, [])
    photo_tags.append(SourceTag(product, box))
    return len(photo_tags) - 1
