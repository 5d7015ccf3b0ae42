"""A small bounded, thread-safe cache for per-treedef results."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["BoundedCache", "constant_tree"]

# Leaf types whose values cannot change: safe to share between calls.
_IMMUTABLE_LEAVES = frozenset({bool, int, float, complex, str, bytes, type(None), type})


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


def constant_tree(treedef: Any, leaves: list[Any]) -> Callable[[], Any]:
    """A maker of fresh copies of `treedef.unflatten(leaves)`, for immutable `leaves`.

    Masks, labels and kinds are the same tree on every call for one structure. Each call
    of the maker gives new lists, dicts and other containers a caller may mutate, but
    shares every subtree that nothing can mutate (treeclass instances, tuples and
    namedtuples of immutable parts): those come out of one C-level unflatten of a coarser
    treedef whose leaves are the shared subtrees. A tree made only of such parts is
    returned as is.
    """
    from ._instance import FLAT, _setattr  # late: keeps this module free of package imports

    template = treedef.unflatten(leaves)
    memo: dict[int, bool] = {}

    def frozen(x: Any) -> bool:
        known = memo.get(id(x))
        if known is not None:
            return known
        t = type(x)
        if t.__setattr__ is _setattr:  # a treeclass: its aux data is hashable, so frozen
            out = all(frozen(c) for c in x.__dict__[FLAT][0])
        elif isinstance(x, tuple) and (t is tuple or hasattr(t, "_fields")):
            out = all(frozen(c) for c in x)
        else:
            out = t in _IMMUTABLE_LEAVES
        memo[id(x)] = out
        return out

    if frozen(template):
        return lambda: template
    parts, coarse = jax.tree_util.tree_flatten(template, is_leaf=frozen)
    parts = tuple(parts)
    return lambda: coarse.unflatten(parts)
