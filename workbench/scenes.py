"""Deterministic synthetic scenes for the demo and for integration tests.

Real product photos cannot ship with the repository, yet the pipeline (detector, CLIP crops,
SIFT + RANSAC verification) needs inputs whose right answer is known exactly. So we paint
packaging-like products, paste them unwarped into "catalogue" photos (their tags are exact)
and under a random homography into "upload" photos (their ground truth is the warped outline),
leaving one catalogued product out of the first upload so that "not found" is exercised too.

Every random choice comes from one seeded ``numpy.random.Generator`` and the only font is
PIL's built-in one, so the same seed gives the same pixels with no download and no global state.
"""

from __future__ import annotations

import colorsys
import math
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from inference.types import BBox, RGBImage, SourceImage, SourceTag

Color = tuple[int, int, int]
Size = tuple[int, int]
Homography = npt.NDArray[np.float64]
Points = npt.NDArray[np.float32]

_PRODUCTS_PER_SOURCE = 2
_MAX_ROTATION_DEG = 15.0
_SCALE_RANGE = (0.7, 1.3)
_CORNER_JITTER = 0.08
# Worst-case extent of a warped product, as a multiple of its long side: the largest scale,
# the largest rotation and every corner pushed outward. Products this much smaller than their
# grid cell always fit it, so no product ever occludes another and falsifies its ground truth.
_WORST_CASE_SPAN = _SCALE_RANGE[1] * (
    math.cos(math.radians(_MAX_ROTATION_DEG)) + math.sin(math.radians(_MAX_ROTATION_DEG)) + 2 * _CORNER_JITTER
)
_LATER_UPLOAD_DROP_RATE = 0.25
_GLYPHS = string.ascii_uppercase + string.digits


@dataclass(frozen=True, eq=False)
class Placement:
    """Where a product went in an upload, kept so tests can compare verdicts with the truth."""

    product_id: str
    homography: Homography  # product-face pixels -> upload pixels (= source-crop pixels)
    bbox: BBox


@dataclass(frozen=True, eq=False)
class DemoSet:
    """Catalogue photos with their tags, uploads, and what was really pasted into each upload."""

    sources: dict[str, RGBImage]
    source_tags: dict[str, tuple[SourceTag, ...]]
    uploads: dict[str, RGBImage]
    placements: dict[str, tuple[Placement, ...]]

    @property
    def product_ids(self) -> tuple[str, ...]:
        return tuple(tag.product_id for tags in self.source_tags.values() for tag in tags)

    @property
    def ground_truth(self) -> dict[str, dict[str, BBox | None]]:
        """Per upload, every catalogued product's box, or None: absence is an answer too."""
        truth: dict[str, dict[str, BBox | None]] = {}
        for upload, placed in self.placements.items():
            boxes = {p.product_id: p.bbox for p in placed}
            truth[upload] = {pid: boxes.get(pid) for pid in self.product_ids}
        return truth

    def source_images(self) -> tuple[SourceImage, ...]:
        """The catalogue as the matcher takes it; keys are the PNG names ``write_png`` uses."""
        return tuple(
            SourceImage(key=f"{name}.png", image=image, tags=self.source_tags[name])
            for name, image in self.sources.items()
        )

    def write_png(self, directory: Path) -> None:
        """Save every image as ``<name>.png`` so the demo can serve them by a stable URL."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, image in {**self.sources, **self.uploads}.items():
            Image.fromarray(image).save(directory / f"{name}.png")


def make_demo_set(seed: int, n_products: int = 3, n_uploads: int = 3, size: Size = (640, 480)) -> DemoSet:
    """Build catalogue photos and uploads of ``size`` (width, height) from ``seed`` alone."""
    if n_products < 1 or n_uploads < 1:
        raise ValueError("a demo set needs at least one product and one upload")
    rng = np.random.default_rng(seed)
    width, height = size
    cols, rows = _grid_shape(n_products, width, height)
    cell_w, cell_h = width / cols, height / rows
    long_side = int(min(cell_w, cell_h) / _WORST_CASE_SPAN)
    product_ids = [f"sku-{i + 1:03d}" for i in range(n_products)]
    products = [render_product(rng, _product_size(rng, long_side)) for _ in product_ids]

    sources: dict[str, RGBImage] = {}
    source_tags: dict[str, tuple[SourceTag, ...]] = {}
    for index, start in enumerate(range(0, n_products, _PRODUCTS_PER_SOURCE)):
        stop = start + _PRODUCTS_PER_SOURCE
        name = f"catalogue-{index + 1:02d}"
        sources[name], source_tags[name] = _compose_source(rng, size, product_ids[start:stop], products[start:stop])

    cells = [BBox(c * cell_w, r * cell_h, cell_w, cell_h) for r in range(rows) for c in range(cols)]
    uploads: dict[str, RGBImage] = {}
    placements: dict[str, tuple[Placement, ...]] = {}
    for index in range(n_uploads):
        present = _choose_present(rng, n_products, first=index == 0)
        chosen_cells = rng.permutation(len(cells))[: len(present)]
        name = f"upload-{index + 1:02d}"
        uploads[name], placements[name] = _compose_upload(
            rng,
            size,
            [(product_ids[i], products[i], cells[c]) for i, c in zip(present, chosen_cells, strict=True)],
        )
    return DemoSet(sources, source_tags, uploads, placements)


def render_product(rng: np.random.Generator, size: Size) -> RGBImage:
    """Paint one rigid, packaging-like product face of ``size`` (width, height).

    SIFT needs many distinct, non-repeating corners and blobs that survive a 0.7x downscale,
    so the face stacks stripes, bold shapes, confetti dots, a brand band, a logo, small print
    and a barcode; every colour and position comes from ``rng``, so no two products share a
    layout.
    """
    width, height = size
    base = _random_color(rng, saturation=(0.45, 0.9), value=(0.55, 0.95))
    image = Image.new("RGB", size, base)
    draw = ImageDraw.Draw(image)
    _draw_stripes(draw, rng, size)
    _draw_shapes(draw, rng, size)
    _draw_confetti(draw, rng, size)
    _draw_brand_band(draw, rng, size)
    _draw_logo(draw, rng, size)
    _draw_small_print(draw, rng, size)
    _draw_barcode(draw, rng, size)
    draw.rectangle((0, 0, width - 1, height - 1), outline=_contrast(base), width=2)
    return np.asarray(image, dtype=np.uint8)


def render_background(rng: np.random.Generator, width: int, height: int) -> RGBImage:
    """Paint a cluttered backdrop that contains no product.

    The matcher must ignore a scene's own edges and blobs, so the clutter has plenty of them;
    it is blurred like an out-of-focus backdrop so the products stay the sharpest thing.
    """
    image = Image.fromarray(_gradient(rng, width, height))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(20, 36))):
        _draw_clutter_shape(draw, rng, width, height)
    blurred = cv2.GaussianBlur(np.asarray(image), (0, 0), sigmaX=1.5)
    return np.asarray(blurred, dtype=np.uint8)


def _grid_shape(n_cells: int, width: int, height: int) -> tuple[int, int]:
    """Columns and rows whose cells are the squarest, which lets products be the largest."""
    return max(
        ((cols, math.ceil(n_cells / cols)) for cols in range(1, n_cells + 1)),
        key=lambda shape: min(width / shape[0], height / shape[1]),
    )


def _product_size(rng: np.random.Generator, long_side: int) -> Size:
    short_side = int(long_side * rng.uniform(0.65, 1.0))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _compose_source(
    rng: np.random.Generator, size: Size, product_ids: list[str], products: list[RGBImage]
) -> tuple[RGBImage, tuple[SourceTag, ...]]:
    """Paste products upright at integer positions so the tag boxes are exact, one per column."""
    width, height = size
    scene = render_background(rng, width, height)
    column_w = width // len(products)
    tags = []
    for index, (product_id, product) in enumerate(zip(product_ids, products, strict=True)):
        ph, pw = product.shape[:2]
        x = index * column_w + int(rng.integers(0, column_w - pw + 1))
        y = int(rng.integers(0, height - ph + 1))
        scene[y : y + ph, x : x + pw] = product
        tags.append(SourceTag(product_id, BBox(float(x), float(y), float(pw), float(ph))))
    return _photograph(rng, scene, gain=1.0, offset=0.0, noise_sigma=2.0), tuple(tags)


def _choose_present(rng: np.random.Generator, n_products: int, first: bool) -> list[int]:
    """Indices of the products an upload shows.

    The first upload always misses exactly one product, so every demo set has a "not found"
    case; later ones drop products at random but never all of them.
    """
    if first:
        missing = int(rng.integers(n_products))
        return [i for i in range(n_products) if i != missing]
    keep = rng.random(n_products) >= _LATER_UPLOAD_DROP_RATE
    if not keep.any():
        keep[rng.integers(n_products)] = True
    return [int(i) for i in np.flatnonzero(keep)]


def _compose_upload(
    rng: np.random.Generator, size: Size, items: list[tuple[str, RGBImage, BBox]]
) -> tuple[RGBImage, tuple[Placement, ...]]:
    """Paste each (id, product, cell) warped inside its cell, then re-expose and add noise."""
    width, height = size
    scene = render_background(rng, width, height)
    placements = []
    for product_id, product, cell in items:
        ph, pw = product.shape[:2]
        homography = _random_homography(rng, (pw, ph), cell)
        bbox = _bounding_box(_project(homography, _corners(pw, ph))).clip(width, height)
        _paste_warped(scene, product, homography, bbox)
        placements.append(Placement(product_id, homography, bbox))
    photo = _photograph(
        rng,
        scene,
        gain=float(rng.uniform(0.85, 1.15)),
        offset=float(rng.uniform(-12.0, 12.0)),
        noise_sigma=4.0,
    )
    return photo, tuple(placements)


def _random_homography(rng: np.random.Generator, size: Size, cell: BBox) -> Homography:
    """A mild hand-held-camera view: rotate, scale, jitter the corners, then land in ``cell``."""
    width, height = size
    corners = _corners(width, height)
    scale = rng.uniform(*_SCALE_RANGE)
    angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    jitter = rng.uniform(-_CORNER_JITTER, _CORNER_JITTER, (4, 2)) * scale * np.array([width, height])
    quad = (corners - [width / 2, height / 2]) @ rotation.T + jitter
    low, high = quad.min(axis=0), quad.max(axis=0)
    shift = [
        rng.uniform(cell.x - low[0], cell.x2 - high[0]),
        rng.uniform(cell.y - low[1], cell.y2 - high[1]),
    ]
    target = (quad + shift).astype(np.float32)
    return np.asarray(cv2.getPerspectiveTransform(corners, target), dtype=np.float64)


def _corners(width: int, height: int) -> Points:
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)


def _project(homography: Homography, points: Points) -> Points:
    projected = cv2.perspectiveTransform(points.reshape(-1, 1, 2), homography)
    return np.asarray(projected, dtype=np.float32).reshape(-1, 2)


def _bounding_box(points: Points) -> BBox:
    low, high = points.min(axis=0), points.max(axis=0)
    return BBox.from_xyxy(float(low[0]), float(low[1]), float(high[0]), float(high[1]))


def _paste_warped(scene: RGBImage, product: RGBImage, homography: Homography, bbox: BBox) -> None:
    """Blend ``product`` into ``scene`` in place through its warped coverage mask.

    The mask anti-aliases the product's edges instead of leaving them jagged, and warping only
    the pixels inside ``bbox`` keeps this cheap next to warping the whole frame.
    """
    x0, y0 = math.floor(bbox.x), math.floor(bbox.y)
    x1, y1 = math.ceil(bbox.x2), math.ceil(bbox.y2)
    to_window = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ homography
    window = (x1 - x0, y1 - y0)
    warped = cv2.warpPerspective(product, to_window, window, flags=cv2.INTER_LINEAR)
    coverage = np.ones(product.shape[:2], dtype=np.float32)
    alpha = cv2.warpPerspective(coverage, to_window, window, flags=cv2.INTER_LINEAR)
    alpha = alpha[..., np.newaxis]
    blended = scene[y0:y1, x0:x1] * (1.0 - alpha) + warped * alpha
    scene[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _photograph(rng: np.random.Generator, scene: RGBImage, gain: float, offset: float, noise_sigma: float) -> RGBImage:
    """Change the exposure and add sensor noise, so no matcher can rely on exact pixel values.

    The noise is uniform rather than Gaussian: it defeats exact matching just as well and is
    several times cheaper to draw, which keeps a whole demo set well under a second.
    """
    half_range = noise_sigma * math.sqrt(3.0)  # a uniform [-a, a] has deviation a / sqrt(3)
    unit_noise = rng.random(scene.shape, dtype=np.float32)
    exposed = cv2.addWeighted(scene, gain, unit_noise, 2.0 * half_range, offset - half_range, dtype=cv2.CV_8U)
    return np.asarray(exposed, dtype=np.uint8)


def _gradient(rng: np.random.Generator, width: int, height: int) -> RGBImage:
    """A soft two-colour wash in a random direction, like uneven light on a wall.

    A linear ramp survives a bilinear upscale unchanged, so it is computed on a coarse grid.
    """
    start = np.array(_random_color(rng, (0.05, 0.35), (0.35, 0.85)), dtype=np.float32)
    end = np.array(_random_color(rng, (0.05, 0.35), (0.35, 0.85)), dtype=np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    xs = np.linspace(0.0, 1.0, 16, dtype=np.float32) * math.cos(angle)
    ys = np.linspace(0.0, 1.0, 16, dtype=np.float32) * math.sin(angle)
    ramp = xs[np.newaxis, :] + ys[:, np.newaxis]
    ramp = (ramp - ramp.min()) / float(ramp.max() - ramp.min())
    coarse = np.rint(start + (end - start) * ramp[..., np.newaxis]).astype(np.uint8)
    wash = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.asarray(wash, dtype=np.uint8)


def _draw_clutter_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int) -> None:
    """A muted rectangle, ellipse or thick line: shelf edges, cups, cables."""
    color = _random_color(rng, saturation=(0.05, 0.4), value=(0.25, 0.85))
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    w, h = rng.uniform(0.03, 0.25) * width, rng.uniform(0.03, 0.25) * height
    box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
    kind = int(rng.integers(3))
    if kind == 0:
        draw.rectangle(box, fill=color)
    elif kind == 1:
        draw.ellipse(box, fill=color)
    else:
        draw.line(box, fill=color, width=int(rng.integers(2, 9)))


def _draw_stripes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size) -> None:
    """Slanted bands of uneven width: long edges at an angle unique to this product."""
    width, height = size
    slant = height * math.tan(math.radians(rng.uniform(-40.0, 40.0)))
    color = _random_color(rng)
    for _ in range(int(rng.integers(3, 7))):
        x = rng.uniform(-0.3 * width, 1.3 * width)
        line_width = int(rng.integers(3, max(4, width // 7)))
        draw.line(((x, height), (x + slant, 0)), fill=color, width=line_width)


def _draw_shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size) -> None:
    """Filled ellipses, boxes and triangles give SIFT blobs and corners at several scales."""
    width, height = size
    side = min(width, height)
    for _ in range(int(rng.integers(5, 9))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.06, 0.2) * side
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        color = _random_color(rng)
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, fill=color, outline=_contrast(color))
        elif kind == 1:
            draw.rectangle(box, fill=color, outline=_contrast(color))
        else:
            points = rng.uniform(-radius, radius, (3, 2)) + np.array([cx, cy])
            draw.polygon([(float(px), float(py)) for px, py in points], fill=color)


def _draw_confetti(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size) -> None:
    """A scatter of small outlined dots and squares, like a printed pattern.

    Each is a blob at the scale SIFT detects best on a product this small, and the random
    scatter never repeats, so every blob's neighbourhood is unique.
    """
    width, height = size
    side = min(width, height)
    for _ in range(int(rng.integers(15, 30))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.025, 0.06) * side
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        color = _random_color(rng)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=color, outline=_contrast(color))
        else:
            draw.rectangle(box, fill=color, outline=_contrast(color))


def _draw_brand_band(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size) -> None:
    """A band with a large brand name: the most recognisable part of real packaging."""
    width, height = size
    band_h = rng.uniform(0.18, 0.26) * height
    top = 0.0 if rng.random() < 0.5 else height - band_h
    color = _random_color(rng)
    draw.rectangle((0, top, width, top + band_h), fill=color)
    font = _font(max(8, int(band_h * 0.6)))
    brand = _random_text(rng, int(rng.integers(3, 7)))
    draw.text(
        (rng.uniform(0.04, 0.2) * width, top + band_h * 0.15),
        brand,
        fill=_contrast(color),
        font=font,
    )


def _draw_logo(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size) -> None:
    """A ringed roundel holding one letter, like a manufacturer's mark."""
    width, height = size
    radius = rng.uniform(0.1, 0.16) * min(width, height)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    color = _random_color(rng)
    ink = _contrast(color)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=color, outline=ink, width=2)
    font = _font(max(8, int(radius * 1.2)))
    draw.text((cx, cy), _random_text(rng, 1), fill=ink, font=font, anchor="mm")


def _draw_small_print(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size) -> None:
    """Lines of small text: dense detail like ingredients or a slogan.

    The outline keeps every glyph high-contrast whatever it lands on; faint text would add
    nothing a matcher could use.
    """
    width, height = size
    font = _font(max(8, min(width, height) // 11))
    for _ in range(int(rng.integers(3, 6))):
        x, y = rng.uniform(0.03, 0.4) * width, rng.uniform(0.1, 0.85) * height
        text = _random_text(rng, int(rng.integers(4, 10)))
        ink = _random_color(rng)
        draw.text((x, y), text, fill=ink, font=font, stroke_width=1, stroke_fill=_contrast(ink))


def _draw_barcode(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: Size) -> None:
    """Random-width bars on a white patch: sharp, product-specific vertical edges.

    Whole-pixel coordinates keep every bar at least one pixel wide; with floats, rounding
    could leave a bar's right edge left of its left edge, which PIL rejects.
    """
    width, height = size
    patch_w, patch_h = int(0.35 * width), int(0.16 * height)
    x0 = int(rng.integers(2, width - patch_w - 1))
    y0 = int(rng.integers(2, height - patch_h - 1))
    draw.rectangle((x0, y0, x0 + patch_w, y0 + patch_h), fill=(250, 250, 250))
    x = x0 + 3
    while x < x0 + patch_w - 4:
        bar = int(rng.integers(1, 4))
        draw.rectangle((x, y0 + 2, x + bar - 1, y0 + patch_h - 3), fill=(15, 15, 15))
        x += bar + int(rng.integers(1, 4))


def _random_color(
    rng: np.random.Generator,
    saturation: tuple[float, float] = (0.4, 1.0),
    value: tuple[float, float] = (0.3, 1.0),
) -> Color:
    """Sample in HSV so saturation and brightness, not just hue, are under control."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return (round(rgb[0] * 255), round(rgb[1] * 255), round(rgb[2] * 255))


def _contrast(color: Color) -> Color:
    """Near-black or near-white, whichever stands out on ``color``, so text stays legible."""
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (20, 20, 20) if luma > 140 else (245, 245, 245)


def _random_text(rng: np.random.Generator, length: int) -> str:
    return "".join(_GLYPHS[i] for i in rng.integers(len(_GLYPHS), size=length))


@cache
def _font(pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled font, cached because parsing it costs more than drawing with it."""
    return ImageFont.load_default(size=pixels)
