"""How the geometric and the CLIP signals become one verdict per tag.

The rule, in order:

1. **Geometry confirms** — local features of the source box map onto the target through a
   model that passes the verifier's sanity checks, and the verifier's calibrated confidence
   (the probability that its box is right) reaches the threshold. Then the product is there
   and the box the evidence supports is its place: ``method="geometric"``. This also
   *corrects* a CLIP box: the geometric box wins whenever both exist. A match below the
   threshold is not suggested (a tag in the wrong place is worse than none); its confidence is
   still reported.
2. **CLIP alone** — no geometric confirmation, but the best CLIP window reaches the similarity
   threshold *and* stands out from the other windows of the same image. For a textured source
   (enough keypoints for local features to speak) that is not enough: at least
   ``min_local_support`` descriptor matches must agree on one place, scale and rotation up to
   deformation (the verifier's local model, which also gives the box CLIP judges), and
   ``min_local_share`` of all its matches in the image must land inside the CLIP box. That is
   the geometric *veto*, phrased so that deformable textured products (clothes, bags), whose
   matches no rigid model explains, can still be found by CLIP, while the chance matches a
   look-alike product collects (shared glyphs, barcodes) cannot vouch for it. It is also what
   keeps a model with meaningless similarities (random weights) from inventing products.
3. Otherwise not found: ``confidence`` is the best of the geometric confidence and the CLIP
   similarity seen, ``bbox`` is null.

Several views of one product (a catalogue that tagged it in several earlier photos, the same
``product_id`` in several sources of one request) are one question: where is that product? Each
view is verified on its own, then `pool_views` gives every tag of the product the best found
answer among them. A product turned away from one view is often facing another (measured in
docs/accuracy.md, "several views of a product"), and a consumer never reads two verdicts for
one product that contradict each other (a tag whose own box is bad keeps its error). The price:
every view is one more chance for a sloppy tag (background or a neighbour inside its box) to
answer for the product; ``SearchConfig.pool_views`` turns pooling off.

The one threshold (the request's ``similarity_threshold``, else ``SearchConfig``'s) thus means
"how sure must a suggestion be": a calibrated probability for geometric matches, the CLIP cosine
for CLIP-only matches (the reference service's meaning).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from inference.config import SearchConfig
from inference.types import BBox, Copy, Detection, Method, TagMatch


@dataclass(frozen=True)
class ClipEvidence:
    bbox: BBox
    similarity: float
    standout: float
    # Descriptor matches vouching for the box: for a textured source, those its local model
    # explains; otherwise, those inside the box.
    local_support: int = 0
    local_share: float = 0.0


@dataclass(frozen=True)
class GeometricEvidence:
    bbox: BBox
    confidence: float
    # Further copies of the product the verifier found beside ``bbox`` (`Verification.copies`).
    copies: tuple[Copy, ...] = ()


def decide(
    product_id: str,
    threshold: float,
    clip: ClipEvidence | None,
    geometric: GeometricEvidence | None,
    source_textured: bool,
    detections: Sequence[Detection],
    search: SearchConfig,
) -> TagMatch:
    if geometric is not None and geometric.confidence >= threshold:
        return TagMatch(
            product_id=product_id,
            found=True,
            confidence=round(geometric.confidence, 4),
            bbox=geometric.bbox,
            detected_class=detected_class(geometric.bbox, detections),
            method=Method.GEOMETRIC,
            copies=tuple(Copy(c.bbox, round(c.confidence, 4)) for c in geometric.copies if c.confidence >= threshold),
        )
    if clip is not None and _clip_accepts(clip, threshold, source_textured, search):
        return TagMatch(
            product_id=product_id,
            found=True,
            confidence=round(clip.similarity, 4),
            bbox=clip.bbox,
            detected_class=detected_class(clip.bbox, detections),
            method=Method.CLIP,
        )
    seen = [clip.similarity if clip is not None else 0.0, geometric.confidence if geometric is not None else 0.0]
    return TagMatch(
        product_id=product_id,
        found=False,
        confidence=round(max(seen), 4),
        bbox=None,
        detected_class=None,
        method=Method.NONE,
    )


def pool_views(matches: Sequence[TagMatch], max_copies: int, max_copy_overlap: float) -> list[TagMatch]:
    """``matches`` in order, each tag of a product answered with the best found answer among its views.

    The best answer is the geometric one of highest confidence, else the CLIP one of highest
    similarity: geometry's box is the one the evidence supports (rule 1 above), and the two
    confidences are on different scales. A place another view found geometrically that the
    best answer does not cover (a second can turned the other way, which only a photo of that
    side finds) joins its copies, by the verifier's rules for copies: at most ``max_copies``,
    none sharing more than ``max_copy_overlap`` of a box found before (`GeometryConfig`). A
    product no view found keeps each tag's own verdict (its confidence is that view's), and a
    tag whose own input was bad keeps its error: its box, not the product, is what failed.
    """
    views: dict[str, list[TagMatch]] = {}
    for match in matches:
        if match.found:
            views.setdefault(match.product_id, []).append(match)
    pooled = {
        product: _with_other_places(sorted(found, key=_rank, reverse=True), max_copies, max_copy_overlap)
        for product, found in views.items()
    }
    return [pooled.get(match.product_id, match) if match.method is not Method.INVALID else match for match in matches]


def _with_other_places(ranked: Sequence[TagMatch], max_copies: int, max_copy_overlap: float) -> TagMatch:
    """The best of ``ranked`` (best first), with the places only the other views' geometric answers found as copies."""
    best = ranked[0]
    if best.bbox is None:
        return best
    copies, boxes = list(best.copies), [best.bbox, *(copy.bbox for copy in best.copies)]
    for other in ranked[1:]:
        if other.method is not Method.GEOMETRIC or other.bbox is None:
            continue
        for place in (Copy(other.bbox, other.confidence), *other.copies):
            if len(copies) < max_copies and all(place.bbox.overlap(box) <= max_copy_overlap for box in boxes):
                copies.append(place)
                boxes.append(place.bbox)
    return replace(best, copies=tuple(copies))


def _rank(match: TagMatch) -> tuple[bool, float]:
    return (match.method is Method.GEOMETRIC, match.confidence)


def _clip_accepts(clip: ClipEvidence, threshold: float, source_textured: bool, search: SearchConfig) -> bool:
    supported = not source_textured or (
        clip.local_support >= search.min_local_support and clip.local_share >= search.min_local_share
    )
    return supported and clip.similarity >= threshold and clip.standout >= search.min_standout


def detected_class(box: BBox, detections: Sequence[Detection], min_iou: float = 0.5) -> str | None:
    """The class of the detection that best overlaps the suggested box, if any overlaps enough."""
    best = max(detections, key=lambda d: d.bbox.iou(box), default=None)
    return best.class_name if best is not None and best.bbox.iou(box) >= min_iou else None


def standout(best: float, others: Sequence[float]) -> float:
    """How many robust standard deviations the best score sits above the other candidates.

    Median and MAD rather than mean and std: a few near-duplicates of the match (overlapping
    windows) must not mask it. The 0.01 floor keeps a flat score field from dividing by ~0.
    """
    if not others:
        return float("inf")
    ordered = sorted(others)
    median = ordered[len(ordered) // 2]
    mad = sorted(abs(v - median) for v in ordered)[len(ordered) // 2]
    return (best - median) / max(1.4826 * mad, 0.01)
