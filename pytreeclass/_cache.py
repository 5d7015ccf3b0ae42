"""A small bounded, thread-safe cache for per-treedef results."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["BoundedCache"]


class BoundedCache:
    """A dict with a size bound; the oldest entry goes first when it is full.

    Reads take no lock (a dict lookup is atomic in CPython); writes do, so eviction never
    races with another writer. Values must be immutable, since readers share them.
    """

    __slots__ = ("_data", "_lock", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        try:
            return self._data.get(key)
        except TypeError:  # an unhashable key (e.g. aux data holding a list): no caching
            return None

    def put(self, key: Any, value: Any) -> None:
        try:
            hash(key)
        except TypeError:
            return
        with self._lock:
            data = self._data
            data[key] = value
            while len(data) > self.maxsize:
                del data[next(iter(data))]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
