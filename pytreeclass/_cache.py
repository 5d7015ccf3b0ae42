"""Bounded caches: `BoundedCache` for per-treedef results, `TypeTable` for per-type facts.

Every cache in the package, in one place (`tests/test_layers.py` checks that each cache
a module makes is listed here, and each one listed exists). Per-treedef caches marked
*strict* hold trees' own keys or aux data, so an `==`-equal tree of other key types
misses (see `BoundedCache`); each has a test that warms it with such a tree first.

| cache | keyed by | holds |
|---|---|---|
| `_leaf_facts._KINDS_CACHE` | treedef | the kind of each leaf |
| `_leaf_facts._AXES_CACHE` | treedef | the logical axes of each leaf |
| `_leaf_facts._PATHS_CACHE` (strict) | treedef | the key path of each leaf |
| `_filters._MASK_CACHE` | treedef, filter | which leaves a structural filter selects |
| `_filters._INSIDE` | treedef, node types | which leaves lie under a node of those types |
| `_filters._NODE_TYPES` | a filter's type | the members of it that select nodes |
| `_filters._TYPE_FILTERS` | type | the filter object a bare type stands for |
| `_partition._SELECTIONS` (strict) | treedef, filters | a partition's two sides, as plans |
| `_partition._MASKS` (strict) | treedef, filters | mask trees |
| `_partition._PLANS` (strict) | treedefs | merge plans |
| `_labels._LABELS` (strict) | treedef, mapping | a maker of the labels tree |
| `_node_codes.CODES` | type | how a node of that type is taken apart (its node code) |
| `_node_codes.DATACLASS_FIELDS` | type | a dataclass-like node's field names |
| `_node_table.KIND_OF` | type | its node kind (the class that reads and rebuilds it) |
| `_node_modules._FIELDS` | type | a treeclass's fields by name (a walk's hop) |
| `_node_modules._CHILDREN` | type | a dataclass-like node's child fields |
| `_select_plans._PLANS` (strict) | treedef, lens steps | a selection's update: leaf indices or a runner |
| `_io_leaves._FACTS` | dtype | how a dtype is written and read |
| `_io_leaves.itemsize_of` (lru) | dtype name | its item size |
| `_io._key_dtype` (lru) | key implementation | the dtype of its keys |

Lens paths (`_lens._Path`) are interned and keep their compiled updates (`_lens_compile`)
per root type, both bounded by counts in `_lens`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["BoundedCache", "TypeTable", "strict_key", "strict_treedef", "type_tag"]


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

    `strict` is for caches whose values embed the structure of the tree they were made
    from (a mask, the two sides of a partition, a merge plan, key paths): a predicate on
    node types, true for those whose aux data compares by type already (treeclasses). The
    stored key is then `strict_key(key, strict)`, so a tree whose dict keys or aux data are
    `==`-equal but of other types (`1` vs `1.0` vs `True`) misses instead of getting the
    first tree's. Lookups stay one `==`; only trees with dict keys or foreign aux data pay
    a Python-level comparison per key. Caches whose values are per-leaf facts (kinds,
    axes, selected-or-not) depend on the node types alone and need no strictness.
    """

    __slots__ = ("_count", "_data", "_lock", "maxsize", "per_hash", "strict")

    def __init__(
        self, maxsize: int, per_hash: int = 8, strict: Callable[[type], bool] | None = None
    ) -> None:
        self.maxsize = maxsize
        self.per_hash = per_hash
        self.strict = strict
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
            if self.strict is not None:
                key = strict_key(key, self.strict)
        except Exception:  # unhashable, or a structure strict_key cannot rebuild: no caching
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


# -- strict keys ------------------------------------------------------------------------------
# JAX compares treedefs with `==`: the static values and dict keys of two trees that are
# `1`, `1.0`, `True`, `np.int64(1)` or an IntEnum member count as the same structure. A
# cache whose values embed a treedef (a mask, a partition, a merge plan) would then hand a
# tree the static values and keys of the first such tree it saw. Treeclass aux data carries
# the types of its values itself (`type_tag`, in the generated flatten), so those compare
# by type in C; `strict_key` makes a cache key tell the rest apart too: dict keys and the
# aux data of other node types (Equinox modules, flax.struct, register_dataclass). Which
# node types carry typed aux data already is the caller's to say (`typed`): this module
# knows nothing of treeclasses.


def type_tag(value: Any) -> Any:
    """`type(value)`, or for a tuple the tags of its items too: what `==` does not compare."""
    t = type(value)
    if isinstance(value, tuple):
        return (t, *map(type_tag, value))
    return t


class _Typed:
    """A value in a stored cache key that equals only values of its own type (deeply)."""

    __slots__ = ("tag", "value")

    def __init__(self, value: Any) -> None:
        self.value, self.tag = value, type_tag(value)

    def __eq__(self, other: object) -> bool:
        if type(other) is self.tag:  # the common case: a plain value of the same type
            return bool(self.value == other)
        if type(other) is _Typed:
            return self.tag == other.tag and bool(self.value == other.value)
        return type_tag(other) == self.tag and bool(self.value == other)

    # JAX compares a treedef's dict keys with `!=`, once per key on every lookup: one
    # frame, no call to __eq__, for the common case.
    def __ne__(self, other: object) -> bool:
        if type(other) is self.tag:
            return bool(self.value != other)
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.value)

    def __lt__(self, other: object) -> bool:  # dict keys are kept sorted
        return bool(self.value < (other.value if type(other) is _Typed else other))

    def __repr__(self) -> str:
        return repr(self.value)


_PyTreeDef = type(jax.tree_util.tree_structure(0))


def strict_treedef(treedef: Any, typed: Callable[[type], bool]) -> Any:
    """A treedef equal to `treedef` and to trees whose dict keys and aux data have the
    same types; `treedef` itself when it has neither (or only aux data of node types for
    which `typed` holds). For cache keys only: it is never unflattened. Raises
    (RecursionError, or a node type JAX cannot rebuild) when it cannot be made; callers
    then do not cache."""
    node = treedef.node_data()
    if node is None:  # a leaf
        return treedef
    children = treedef.children()
    strict = [strict_treedef(c, typed) for c in children]
    typ, data = node
    if data is None or typed(typ):  # no aux, or aux data that compares by type already
        if all(a is b for a, b in zip(strict, children)):
            return treedef
    elif type(data) is list:  # a dict's sorted keys
        data = [_Typed(k) for k in data]
    else:
        data = _Typed(data)
    return _PyTreeDef.from_node_data_and_children(
        jax.tree_util.default_registry, (typ, data), strict
    )


def strict_key(key: Any, typed: Callable[[type], bool]) -> Any:
    """`key` with every treedef in it (at the top or inside tuples) made strict."""
    if type(key) is _PyTreeDef:
        return strict_treedef(key, typed)
    if type(key) is tuple:
        return tuple(strict_key(k, typed) for k in key)
    return key
