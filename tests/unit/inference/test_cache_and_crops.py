import numpy as np
import torch

from inference.cache import LruCache
from inference.crops import crop_and_resize, image_to_tensor
from inference.types import BBox


def test_lru_evicts_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert cache.get_or_compute("d", lambda: 4) == 4 and len(cache) == 2


def test_lru_keeps_its_weight_under_the_bound() -> None:
    cache: LruCache[str, bytes] = LruCache(100, max_weight=10, weigh=len)
    cache.put("a", b"1234")
    cache.put("b", b"12345")
    cache.put("c", b"123")  # 12 > 10: the oldest goes
    assert cache.get("a") is None and cache.weight == 8
    cache.put("huge", b"x" * 11)  # heavier than the bound on its own: never kept
    assert cache.get("huge") is None and cache.weight == 8
    cache.put("b", b"1")  # replacing an entry replaces its weight
    assert cache.weight == 4 and len(cache) == 2


def test_crops_match_a_plain_resize_of_the_region() -> None:
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[20:60, 40:120] = (255, 0, 0)
    tensor = image_to_tensor(image, torch.device("cpu"))
    crops = crop_and_resize(tensor, [BBox(40, 20, 80, 40), BBox(0, 0, 30, 15)], size=32)
    assert crops.shape == (2, 3, 32, 32)
    assert crops[0, 0, 4:-4, 4:-4].min() > 0.95 and crops[0, 1].max() < 0.05
    assert crops[1].max() < 0.05
