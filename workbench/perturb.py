"""``tagstream perturb``: an evaluation set's target photos changed the way real photos differ.

The dev sets hold real pairs, but few of them under bad light, at phone resolution, half hidden
or with the product twice in the frame. Each variant here changes every target photo of a
``cases.json`` one way and moves the true boxes with it, so ``tagstream eval`` on the result
measures that one difficulty on the same real pairs (docs/accuracy.md, "Robustness"):

* ``lighting``: other light, warmer white balance (red x1.25, blue x0.75) and gamma 1.6;
* ``dim``: a dark, noisy shot, brightness x0.45 plus Gaussian noise (sigma 6 grey levels);
* ``large``: a 5x larger photo (640x480 becomes 3200x2400, 800x640 12.8 MP), bicubic;
* ``occlusion``: the right 40 % of every true box covered by flat grey;
* ``repeated``: the photo twice side by side, each box's copy listed in ``other_target_boxes``
  (an answer on either copy is right);
* ``shelf``: the photo, and beside it a copy at 70 % of its size (vertically centred on grey):
  a second copy of each product farther away, whose features are similar but not identical.

Source photos are not touched (they are the catalogue's), so negatives stay negatives. The noise
is seeded: the same input gives the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from streams.cli.options import Commands

Pixels = npt.NDArray[np.float32]
Box = list[float]

LARGE_FACTOR = 5
OCCLUDED_SHARE = 0.4
SHELF_COPY_SCALE = 0.7


def register(commands: Commands) -> None:
    perturb = commands.add_parser(
        "perturb", help="write an evaluation set whose target photos are changed one way (light, size, occlusion, ...)"
    )
    perturb.add_argument("--cases", type=Path, required=True, help="path to the cases.json to start from")
    perturb.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder for the new cases.json and photos"
    )
    perturb.add_argument("--kind", choices=sorted(VARIANTS), required=True, help="which change")
    perturb.set_defaults(handler=_perturb)


def _perturb(args: argparse.Namespace) -> int:
    if not args.cases.is_file():
        print(f"no evaluation cases at {args.cases}", file=sys.stderr)
        return 2
    written = write_variant(args.cases, args.out, args.kind)
    print(f"{args.kind}: {written} target photos and {args.out / 'cases.json'} written")
    return 0


def write_variant(cases_json: Path, out: Path, kind: str, seed: int = 0) -> int:
    """Writes ``out/cases.json`` and the changed target photos; returns how many photos were written.

    A target photo that several cases share (eval3d-dev: one YCB frame, five source scenes) is
    changed once, with the true boxes of all of them: occlusion covers every product in it.
    Source image paths become absolute, so the new set reads the originals where they are, and
    each case names its target photo's original folder (``target_scene``), the scene
    `eval --catalogue` must not take a product's other views from.
    """
    root = cases_json.resolve().parent
    data = json.loads(cases_json.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    change = VARIANTS[kind]
    by_photo: dict[str, list[dict[str, Any]]] = {}
    for case in data["cases"]:
        by_photo.setdefault(str(case["target_image"]), []).append(case)
    for photo, cases in by_photo.items():
        with Image.open(root / photo) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        truths = [box for case in cases for box in case["boxes"] if box.get("target_box")]
        pixels = change(pixels, truths, rng)
        name = photo.replace("/", "_").rsplit(".", 1)[0] + ".png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out / name)
        for case in cases:
            case["source_image"] = str((root / case["source_image"]).resolve())
            # The photo leaves its scene's folder: `eval --catalogue` must still know its scene.
            case["target_scene"] = str((root / str(case.get("target_scene") or Path(photo).parent)).resolve())
            case["target_image"] = name
            case["target_size"] = [pixels.shape[1], pixels.shape[0]]
            # The published homography maps into the original photo, no longer into this one.
            case["H_source_to_target"] = None
            case["homography_file"] = None
    data["description"] = f"{data.get('description', '')} [target photos changed: {kind}]".strip()
    (out / "cases.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    return len(by_photo)


def _lighting(pixels: Pixels, _: list[dict[str, Any]], __: np.random.Generator) -> Pixels:
    warmer = np.array([1.25, 1.0, 0.75], dtype=np.float32)
    return np.asarray(255.0 * (pixels / 255.0) ** 1.6 * warmer, dtype=np.float32)


def _dim(pixels: Pixels, _: list[dict[str, Any]], rng: np.random.Generator) -> Pixels:
    return np.asarray(pixels * 0.45 + rng.normal(0.0, 6.0, pixels.shape), dtype=np.float32)


def _large(pixels: Pixels, truths: list[dict[str, Any]], _: np.random.Generator) -> Pixels:
    height, width = pixels.shape[:2]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    larger = image.resize((width * LARGE_FACTOR, height * LARGE_FACTOR), Image.Resampling.BICUBIC)
    for box in truths:
        box["target_box"] = [v * LARGE_FACTOR for v in box["target_box"]]
        if box.get("target_box_unclipped"):
            box["target_box_unclipped"] = [v * LARGE_FACTOR for v in box["target_box_unclipped"]]
        box.pop("target_quad", None)
        # The recorded baseline compared the source box with the true box in the smaller photo.
        box.pop("trivial_baseline_iou", None)
    return np.asarray(larger, dtype=np.float32)


def _occlusion(pixels: Pixels, truths: list[dict[str, Any]], _: np.random.Generator) -> Pixels:
    covered = pixels.copy()
    for box in truths:
        x, y, w, h = box["target_box"]
        covered[int(y) : int(y + h), int(x + (1.0 - OCCLUDED_SHARE) * w) : int(x + w)] = 128.0
    return covered


def _repeated(pixels: Pixels, truths: list[dict[str, Any]], _: np.random.Generator) -> Pixels:
    width = pixels.shape[1]
    for box in truths:
        x, y, w, h = box["target_box"]
        box["other_target_boxes"] = [[x + width, y, w, h]]
    return np.concatenate([pixels, pixels], axis=1)


def _shelf(pixels: Pixels, truths: list[dict[str, Any]], _: np.random.Generator) -> Pixels:
    height, width = pixels.shape[:2]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    farther = image.resize(
        (round(width * SHELF_COPY_SCALE), round(height * SHELF_COPY_SCALE)), Image.Resampling.LANCZOS
    )
    canvas = np.full((height, width + farther.width, 3), 128.0, dtype=np.float32)
    canvas[:, :width] = pixels
    top = (height - farther.height) // 2
    canvas[top : top + farther.height, width:] = np.asarray(farther, dtype=np.float32)
    sx, sy = farther.width / width, farther.height / height
    for box in truths:
        x, y, w, h = box["target_box"]
        box["other_target_boxes"] = [[width + x * sx, top + y * sy, w * sx, h * sy]]
    return canvas


VARIANTS: dict[str, Callable[[Pixels, list[dict[str, Any]], np.random.Generator], Pixels]] = {
    "lighting": _lighting,
    "dim": _dim,
    "large": _large,
    "occlusion": _occlusion,
    "repeated": _repeated,
    "shelf": _shelf,
}
