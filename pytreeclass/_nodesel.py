"""Node types in filters: `OfType(Linear)` selects whole subtrees rooted at a `Linear`.

A type in a filter tests leaves with `isinstance`, as always. It also tests pytree *nodes*
unless it is a type of common leaves too: a type that `int`, `float`, `complex`, `bool`,
`str`, `bytes`, NumPy arrays and scalars, or `jax.Array` are subclasses of (`object`,
`numbers.Number`, `Hashable`, `Sequence`, ...) would match nodes and leaves alike, and
stays a leaf test. Every other class is a *node type*: a node is matched when its class
is a subclass of it (treeclasses, Equinox modules, flax.struct dataclasses, `dict`,
`list`, `tuple`, namedtuples, `None`, any registered node, and base classes of those
such as `eqx.Module`, `ptc.TreeClass` or a user's own abstract base). A leaf-only type
matches no node, so leaf filters (`jax.Array`, `float`) behave exactly as before.

Node types are in the treedef (`node_data()[0]`), so which leaves lie under a matched
node is a fact of the structure: it is computed once per (treedef, types) and cached.
"""

from __future__ import annotations

import sys
import types as _types
import typing
from typing import Any

import jax
import numpy as np

from ._cache import BoundedCache
from ._meta import meta_of

__all__ = ["always_node", "inside_flags", "node_types", "type_members"]

# Leaf types that no node-selecting type may be a base of (see the module docs).
_LEAF_TYPES = (bool, int, float, complex, str, bytes, np.ndarray, np.generic, jax.Array)


def type_members(t: Any) -> tuple[type, ...]:
    """The classes of a type, a tuple of types or a union (`A | B`, `Union[A, B]`)."""
    if isinstance(t, tuple):
        return tuple(m for x in t for m in type_members(x))
    if isinstance(t, _types.UnionType) or typing.get_origin(t) is typing.Union:
        return tuple(m for x in typing.get_args(t) for m in type_members(x))
    if t is None:
        return (type(None),)
    return (t,)


def _may_match_leaves(t: type) -> bool:
    for leaf_type in _LEAF_TYPES:
        try:
            if issubclass(leaf_type, t):
                return True
        except TypeError:  # e.g. a Protocol with data members: decided per instance only
            return True
    return False


_NODE_TYPES: dict[Any, tuple[type, ...]] = {}


def node_types(t: Any) -> tuple[type, ...]:
    """The members of `t` that select nodes (empty for leaf types such as `jax.Array`)."""
    try:
        return _NODE_TYPES[t]
    except (KeyError, TypeError):
        pass
    out = tuple(m for m in type_members(t) if isinstance(m, type) and not _may_match_leaves(m))
    try:
        if len(_NODE_TYPES) < 1024:
            _NODE_TYPES[t] = out
    except TypeError:
        pass
    return out


def always_node(t: type) -> bool:
    """True when no instance of `t` can be a leaf: every subclass is a registered node.

    Treeclasses (and `ptc.TreeClass`), Equinox modules and `None` qualify; a `dict`, a
    flax.struct class or another registered class may have unregistered subclasses, whose
    instances JAX treats as leaves, so those are tested on leaves too.
    """
    if t is type(None) or meta_of(t) is not None:
        return True
    if t.__module__ == "pytreeclass._treeclass" and t.__name__ == "TreeClass":
        return True
    eqx = sys.modules.get("equinox")
    module = getattr(eqx, "Module", None)
    return module is not None and issubclass(t, module)


def _is_instance_type(cls: Any, types: tuple[type, ...]) -> bool:
    try:
        return issubclass(cls, types)
    except TypeError:
        return False


_INSIDE = BoundedCache(maxsize=4096)


def inside_flags(treedef: Any, types: tuple[type, ...]) -> tuple[bool, ...]:
    """Per leaf of `treedef`: does it lie under a node whose class is one of `types`?"""
    key = (treedef, types)
    out = _INSIDE.get(key)
    if out is None:
        flags: list[bool] = []

        def walk(td: Any, inside: bool) -> None:
            data = td.node_data()
            if data is None:  # a leaf
                flags.append(inside)
                return
            if inside or _is_instance_type(data[0], types):
                flags.extend([True] * td.num_leaves)
                return
            for child in td.children():
                walk(child, False)

        walk(treedef, False)
        out = tuple(flags)
        _INSIDE.put(key, out)
    return out
