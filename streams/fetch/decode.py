"""Turn untrusted bytes into an upright RGB array, refusing anything that is not a plain image.

The format is sniffed from the bytes, never from Content-Type (which the uploader's server
controls), and Pillow is allowed only the sniffed decoder: otherwise ``Image.open`` would
try every plugin it has, including EPS, which runs Ghostscript. TIFF is deliberately left
out: web image hosts do not serve it, and its decoder has the longest CVE history.

The pixel budget is checked from the header, before any pixel is decoded, because a PNG of
a few kilobytes can declare 20000x20000 pixels (1.2 GB of RGB). Pillow has its own limit
(``Image.MAX_IMAGE_PIXELS``): above it Pillow emits ``DecompressionBombWarning`` while
opening, and above twice it raises ``DecompressionBombError``, which is reported here as
too many pixels against *our* limit. The process-wide limit and warning filters are left
alone: both are global state that other code in the process relies on, and ``max_pixels``
rejects those images before decoding anyway.

Images larger than the matcher's working resolution are downscaled as they are decoded
(``max_side``): local features run at 1024 px, the detector at 640 px and CLIP on 224 px
crops, so a 12 MP phone photo kept whole would cost 36 MB per copy for nothing. JPEGs are
decoded directly at a reduced size (the DCT scaling of ``draft``), which also saves most of
the decoding time. The result remembers its scale, so boxes map back to original pixels.
"""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from inference.types import RGBImage
from streams.fetch.errors import NotAnImage, TooManyPixels

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)

# What Pillow raises, depending on the plugin, for bytes that are not the image they claim.
_UNDECODABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error)
# EXIF orientations that turn the stored picture by 90 degrees (width and height swap).
_TRANSPOSED = frozenset({5, 6, 7, 8})
_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An upright RGB image at working resolution, and where it came from.

    ``pixels`` is read-only (the fetcher caches and shares it between events). ``scale`` is
    working pixels per original pixel (1.0 when the image was small enough to keep whole):
    boxes given in the original photo's pixels are multiplied by it, answers divided.
    """

    pixels: RGBImage
    original_width: int
    original_height: int
    scale: float

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name the bytes start like, or None when they are no supported image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def working_scale(width: int, height: int, max_side: int) -> float:
    """The factor that brings the longer side down to ``max_side`` (1.0 if it already fits)."""
    return min(1.0, max_side / max(width, height, 1))


def decode_image(data: bytes, *, max_pixels: int, max_side: int, url: str) -> DecodedImage:
    """Decode ``data`` (fetched from ``url``, which only labels errors), upright and at most ``max_side``.

    EXIF orientation is applied because phones store photos sideways and set a tag instead;
    detectors and crops must see the picture the way a person does, and the boxes users draw
    are in that upright picture's pixels.
    """
    image_format = sniff_format(data)
    if image_format is None:
        raise NotAnImage(url, f"content starting {data[:12]!r} is not a JPEG/PNG/GIF/WEBP/BMP")
    try:
        with Image.open(io.BytesIO(data), formats=(image_format,)) as image:
            stored_width, stored_height = image.size
            if stored_width * stored_height > max_pixels:
                raise TooManyPixels(
                    url,
                    f"{image_format} declares {stored_width}x{stored_height} = {stored_width * stored_height} pixels,"
                    f" over the limit of {max_pixels}",
                )
            transposed = image.getexif().get(0x0112) in _TRANSPOSED
            width, height = (stored_height, stored_width) if transposed else (stored_width, stored_height)
            scale = working_scale(width, height, max_side)
            if scale < 1.0 and image_format == "JPEG":
                # Decode at a power-of-two reduction (1/2 .. 1/8, done in the DCT): the smallest
                # one whose long side keeps at least 3/4 of max_side, so a 4032 px photo comes
                # out at 2016 px when max_side is 2048 instead of being decoded whole.
                wanted = (math.ceil(stored_width * scale * 0.75), math.ceil(stored_height * scale * 0.75))
                image.draft("RGB", wanted)
            ImageOps.exif_transpose(image, in_place=True)
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            if max(rgb.size) > max_side:
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            array = np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        declared = _BOMB_SIZE.search(str(exc))
        pixels = f"{declared.group(1)} pixels" if declared else "more pixels than Pillow opens"
        raise TooManyPixels(url, f"{image_format} declares {pixels}, over the limit of {max_pixels}") from exc
    except _UNDECODABLE as exc:
        raise NotAnImage(url, f"undecodable {image_format}: {exc}") from exc
    array.setflags(write=False)
    return DecodedImage(array, width, height, array.shape[1] / width)
