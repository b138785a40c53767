"""Plugs the full pipeline into the evaluator, so ``tagstream eval`` scores what the stream runs."""

from __future__ import annotations

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
            own.append(
                (
                    query.source_key,
                    _add(images, tags, query.source_key, query.source_image, query.item_id, query.source_box),
                )
            )
            for key, image, box in query.views:
                _add(images, tags, key, image, query.item_id, box)
        sources = tuple(SourceImage(key, images[key], tuple(key_tags)) for key, key_tags in tags.items())
        request = MatchRequest(queries[0].target_key, queries[0].target_image, sources)
        (result,) = pipeline.run([request])
        offsets, start = {}, 0
        for source in sources:
            offsets[source.key] = start
            start += len(source.tags)
        answers = [result.matches[offsets[key] + index] for key, index in own]
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
