"""Pictures of where the evaluation fails: people would rather look than read (``tagstream eval --viz``).

Each picture puts the source photo with its tagged box (yellow) beside the target photo with
the true box (green) and the answer (red), captioned with what went wrong. The worst come first:
boxes found in the wrong place, then products found where they are absent, then misses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from inference.types import BBox
from workbench.evaluation import EvalReport, ItemResult, load_image

SOURCE_COLOUR = (255, 210, 0)
TRUTH_COLOUR = (40, 200, 60)
ANSWER_COLOUR = (230, 40, 40)
HEIGHT = 360
CAPTION = 44


def worst(report: EvalReport, limit: int) -> list[tuple[str, ItemResult]]:
    """The ``limit`` worst results with what went wrong: wrong boxes by IoU, false positives, misses."""
    wrong = sorted(
        (r for r in report.results if r.item.kind == "positive" and r.found and not r.success), key=lambda r: r.iou
    )
    false_positives = [r for r in report.results if r.item.kind == "negative" and r.answer.found]
    missed = sorted(
        (r for r in report.results if r.item.kind == "positive" and not r.found),
        key=lambda r: r.item.view_change_deg or 0.0,
    )
    labelled = (
        [("wrong box", r) for r in wrong]
        + [("false positive", r) for r in false_positives]
        + [("missed", r) for r in missed]
    )
    return labelled[:limit]


def write_pictures(report: EvalReport, directory: Path, limit: int = 24) -> list[Path]:
    """One PNG per failure (at most ``limit``), numbered worst first; returns their paths.

    Pictures an earlier run left in ``directory`` (``NN-*.png``) are removed first, so the
    numbering always tells this run's order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("[0-9][0-9]-*.png"):
        old.unlink()
    written = []
    for rank, (what, result) in enumerate(worst(report, limit), start=1):
        path = directory / f"{rank:02d}-{what.replace(' ', '-')}-{_slug(result.item.item_id)}.png"
        _picture(what, result).save(path)
        written.append(path)
    return written


def _picture(what: str, result: ItemResult) -> Image.Image:
    item, answer = result.item, result.answer
    source = _panel(item.source_path, [(item.source_box, SOURCE_COLOUR)])
    truths = (item.target_box, *item.other_target_boxes) if item.target_box is not None else ()
    boxes = [(box, TRUTH_COLOUR) for box in truths]
    if answer.found and answer.bbox is not None:
        boxes += [(box, ANSWER_COLOUR) for box in (answer.bbox, *answer.copies)]
    target = _panel(item.target_path, boxes)
    canvas = Image.new("RGB", (source.width + target.width + 8, HEIGHT + CAPTION), (30, 30, 30))
    canvas.paste(source, (0, CAPTION))
    canvas.paste(target, (source.width + 8, CAPTION))
    view = f", view change {item.view_change_deg:.0f} deg" if item.view_change_deg is not None else ""
    how = f" ({answer.method})" if answer.method else ""
    detail = f"IoU {result.iou:.2f}, confidence {answer.confidence:.2f}{how}" if answer.found else "not found"
    text = f"{what}: {item.item_id}\n{item.category}{view}; {detail}"
    ImageDraw.Draw(canvas).multiline_text((6, 4), text, fill=(240, 240, 240), font=ImageFont.load_default(size=15))
    return canvas


def _panel(path: Path, boxes: Sequence[tuple[BBox | None, tuple[int, int, int]]]) -> Image.Image:
    image = Image.fromarray(load_image(path))
    scale = HEIGHT / image.height
    panel = image.resize((max(1, round(image.width * scale)), HEIGHT), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(panel)
    for box, colour in boxes:
        if box is not None:
            corners = [box.x * scale, box.y * scale, box.x2 * scale, box.y2 * scale]
            draw.rectangle(corners, outline=colour, width=3)
    return panel


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:80]
