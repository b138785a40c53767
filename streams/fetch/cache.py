"""A small LRU of decoded images keyed by URL.

The same source image is referenced by many uploads (every photo tagged with a product
points at its catalogue picture), and re-downloading plus re-decoding a 12 MP JPEG costs
far more than keeping its array. Bounded by count and by bytes, because one 40 MP image
is 120 MB of RGB and a count alone would not bound memory.
"""

from __future__ import annotations

from collections import OrderedDict

from streams.fetch.decode import DecodedImage


class ImageCache:
    """Least-recently-used images; ``max_items=0`` or ``max_bytes=0`` disables caching."""

    def __init__(self, *, max_items: int, max_bytes: int) -> None:
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._images: OrderedDict[str, DecodedImage] = OrderedDict()
        self._bytes = 0

    def get(self, url: str) -> DecodedImage | None:
        image = self._images.get(url)
        if image is not None:
            self._images.move_to_end(url)
        return image

    def put(self, url: str, image: DecodedImage) -> None:
        """Keep ``image``, evicting the least recently used; one too big to fit is not kept."""
        if self._max_items == 0 or image.nbytes > self._max_bytes:
            return
        previous = self._images.pop(url, None)
        if previous is not None:
            self._bytes -= previous.nbytes
        self._images[url] = image
        self._bytes += image.nbytes
        while len(self._images) > self._max_items or self._bytes > self._max_bytes:
            _, evicted = self._images.popitem(last=False)
            self._bytes -= evicted.nbytes
