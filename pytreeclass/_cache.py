"""Bounded caches: `BoundedCache` for per-treedef results, `TypeTable` for per-type facts."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["BoundedCache", "TypeTable"]


class BoundedCache:
    """A mapping with a size bound; the oldest entries go first when it is full.

    Entries are grouped by hash, at most `per_hash` of them per hash. The reason: JAX's
    `PyTreeDef.__hash__` ignores dict keys and pytree aux data (static fields), so trees
    that differ only there, e.g. `Linear(features=i)` for many `i`, all share one hash. A
    plain dict would compare a key against every such entry (thousands of `==` calls per
    lookup once full); here a lookup compares against at most `per_hash` entries, and
    colliding structures beyond that evict each other (a miss recomputes, never scans).

    Reads take no lock (a dict lookup and a tuple read are atomic in CPython); writes do,
    so eviction never races with another writer. Values must be immutable, since readers
    share them. An unhashable or incomparable key is simply not cached.
    """

    __slots__ = ("_count", "_data", "_lock", "maxsize", "per_hash")

    def __init__(self, maxsize: int, per_hash: int = 8) -> None:
        self.maxsize = maxsize
        self.per_hash = per_hash
        self._data: dict[int, tuple[tuple[Any, Any], ...]] = {}
        self._count = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        try:
            bucket = self._data.get(hash(key))
            if bucket is not None:
                for k, v in bucket:
                    if k is key or k == key:
                        return v
        except Exception:  # unhashable, or aux data whose == fails: treat as a miss
            return None
        return None

    def put(self, key: Any, value: Any) -> None:
        try:
            h = hash(key)
        except TypeError:
            return
        with self._lock:
            data = self._data
            bucket = data.get(h, ())
            try:
                kept = tuple(kv for kv in bucket if not (kv[0] is key or kv[0] == key))
            except Exception:
                return
            kept = kept[len(kept) - self.per_hash + 1 :] if len(kept) >= self.per_hash else kept
            data[h] = (*kept, (key, value))
            self._count += len(kept) + 1 - len(bucket)
            while self._count > self.maxsize and data:
                oldest = next(iter(data))
                self._count -= len(data.pop(oldest))

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._count = 0

    def __len__(self) -> int:
        return self._count


class TypeTable(dict):  # type: ignore[type-arg]
    """A dict from types to facts about them, bounded in size.

    Facts per type (how to take a node apart, which filter a type means) are read on hot
    paths, so reads are plain `dict` reads, at C speed, with no lock (a type's fact never
    changes, so a racing writer stores the same value). Past `maxsize` entries a new fact is
    computed every time instead of stored: a program that makes classes in a loop cannot
    grow the table without bound.
    """

    __slots__ = ("maxsize",)

    def __init__(self, maxsize: int, initial: dict[type, Any] | None = None) -> None:
        super().__init__(initial or {})
        self.maxsize = maxsize

    def remember(self, key: type, value: Any) -> Any:
        """Store `value` under `key` unless the table is full; return `value`."""
        if len(self) < self.maxsize:
            self[key] = value
        return value
