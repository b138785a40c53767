"""A bounded LRU map: source images repeat across uploads, their per-tag work should not."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most ``capacity`` entries and, with ``weigh``, at most ``max_weight`` of their weight.

    The weight bound matters where entries differ wildly in size: the local features of a
    textured catalogue photo seen from 18 simulated viewpoints take megabytes, those of a plain
    one almost nothing, so a count alone would not bound memory.
    """

    def __init__(self, capacity: int, max_weight: int | None = None, weigh: Callable[[V], int] | None = None) -> None:
        self._capacity = capacity
        self._max_weight = max_weight
        self._weigh = weigh
        self._items: OrderedDict[K, V] = OrderedDict()
        self._weight = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def weight(self) -> int:
        return self._weight

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        weight = self._weigh(value) if self._weigh is not None else 0
        if self._capacity <= 0 or (self._max_weight is not None and weight > self._max_weight):
            return
        previous = self._items.pop(key, None)
        if previous is not None and self._weigh is not None:
            self._weight -= self._weigh(previous)
        self._items[key] = value
        self._weight += weight
        while len(self._items) > self._capacity or (self._max_weight is not None and self._weight > self._max_weight):
            _, evicted = self._items.popitem(last=False)
            if self._weigh is not None:
                self._weight -= self._weigh(evicted)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value
