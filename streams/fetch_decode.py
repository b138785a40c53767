"""Turn untrusted bytes into an upright RGB array, refusing anything that is not a plain image.

The format is sniffed from the bytes, never from Content-Type (which the uploader's server
controls), and Pillow is allowed only the sniffed decoder: otherwise ``Image.open`` would
try every plugin it has, including EPS, which runs Ghostscript. TIFF is deliberately left
out: web image hosts do not serve it, and its decoder has the longest CVE history.

The pixel budget is checked from the header, before any pixel is decoded, because a PNG of
a few kilobytes can declare 20000x20000 pixels (1.2 GB of RGB). Pillow has its own limit
(``Image.MAX_IMAGE_PIXELS``): above it Pillow emits ``DecompressionBombWarning`` while
opening, and above twice it raises ``DecompressionBombError``, which is reported here as
too many pixels. The process-wide limit and warning filters are left alone: both are global
state that other code in the process relies on, and ``max_pixels`` rejects those images
before decoding anyway.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps

from inference.types import RGBImage
from streams.fetch_errors import NotAnImage, TooManyPixels

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)

# What Pillow raises, depending on the plugin, for bytes that are not the image they claim.
_UNDECODABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name the bytes start like, or None when they are no supported image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def decode_image(data: bytes, *, max_pixels: int, url: str) -> RGBImage:
    """Decode ``data`` (fetched from ``url``, which only labels errors) to a read-only array.

    EXIF orientation is applied because phones store photos sideways and set a tag instead;
    detectors and crops must see the picture the way a person does. The array is read-only
    because the fetcher caches and shares it between events.
    """
    image_format = sniff_format(data)
    if image_format is None:
        raise NotAnImage(url, f"content starting {data[:12]!r} is not a JPEG/PNG/GIF/WEBP/BMP")
    try:
        with Image.open(io.BytesIO(data), formats=(image_format,)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise TooManyPixels(
                    url,
                    f"{image_format} declares {width}x{height} = {width * height} pixels,"
                    f" over the limit of {max_pixels}",
                )
            ImageOps.exif_transpose(image, in_place=True)
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            array = np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(url, str(exc)) from exc
    except _UNDECODABLE as exc:
        raise NotAnImage(url, f"undecodable {image_format}: {exc}") from exc
    array.setflags(write=False)
    return array
