"""What kind of node a value is: a small code per type, decided once and cached.

Treeclasses, dicts, lists, tuples and namedtuples are recognised by type; Equinox
modules, flax.struct and other dataclass pytrees (fields kept in `__dict__`) are
`DATACLASS`; any other registered node is `GENERIC`, taken apart one level; anything
else is a `LEAF`. `_node_table.kind_of` turns a code into the node kind that reads and
rebuilds such nodes.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import sys
from typing import Any

from jax.tree_util import GetAttrKey

from .._cache import TypeTable
from .._class._meta import meta_of
from .._tree_util import one_level

__all__ = [
    "CODES",
    "DATACLASS",
    "DATACLASS_FIELDS",
    "DICT",
    "GENERIC",
    "LEAF",
    "LIST",
    "NAMEDTUPLE",
    "NONE",
    "STACK",
    "TREECLASS",
    "TUPLE",
    "NodeCode",
    "nnx_static",
    "node_code",
]


class NodeCode(enum.IntEnum):
    """How a lens or `value_and_tree` takes a node of some type apart and rebuilds it."""

    LEAF = 0
    NONE = 1  # `None`: a node without children
    TREECLASS = 2
    DICT = 3  # dict, OrderedDict, defaultdict
    LIST = 4
    TUPLE = 5
    NAMEDTUPLE = 6
    DATACLASS = 7  # dataclass pytrees keeping fields in __dict__ (Equinox, flax.struct)
    GENERIC = 8  # any other pytree node: flattened one level and unflattened
    STACK = 9  # a field declared a stack of layers (no node type: a field's reading)


# Module-level names: the hot paths compare against globals, not enum attribute lookups.
LEAF, NONE, TREECLASS, DICT, LIST, TUPLE, NAMEDTUPLE, DATACLASS, GENERIC, STACK = NodeCode

# Exact types only: a dict or list subclass is a leaf to JAX unless registered.
CODES = TypeTable(
    8192,
    {
        dict: DICT,
        collections.OrderedDict: DICT,
        collections.defaultdict: DICT,
        list: LIST,
        tuple: TUPLE,
        type(None): NONE,
    },
)
DATACLASS_FIELDS = TypeTable(8192)  # per DATACLASS type: its field names, static ones too


def _classify(x: Any) -> NodeCode:
    cls = type(x)
    if meta_of(cls) is not None:
        code = TREECLASS
    elif isinstance(x, tuple) and hasattr(cls, "_fields"):
        code = NAMEDTUPLE
    else:
        level = one_level(x)
        keys = () if level is None else level[0]
        if level is None:
            code = LEAF
        elif (
            dataclasses.is_dataclass(cls)
            and hasattr(x, "__dict__")
            and all(type(k) is GetAttrKey for k in keys)
            and {k.name for k in keys} <= (names := {f.name for f in dataclasses.fields(cls)})
        ):
            # Equinox modules, flax.struct and other dataclass pytrees: children are
            # fields kept in __dict__, so a copy is `object.__new__` + a dict update.
            code = DATACLASS
            DATACLASS_FIELDS[cls] = tuple(
                f.name for f in dataclasses.fields(cls) if f.name in names
            )
        else:
            code = GENERIC
    return CODES.remember(cls, code)  # registration is per type, so the answer is too


def node_code(x: Any) -> NodeCode:
    """How a lens or `value_and_tree` takes `x` apart (a `NodeCode`, cached per type)."""
    code = CODES.get(type(x))
    return _classify(x) if code is None else code


def nnx_static(node: Any, name: str) -> bool:
    """Is `name` a plain (non-pytree) attribute of a Flax NNX module (its configuration,
    such as `Dropout.deterministic`), which lives outside the module's children?"""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None or not isinstance(node, nnx.Module) or name.startswith("_"):
        return False
    d = getattr(node, "__dict__", {})
    if name not in d:
        return False
    return isinstance(d[name], (bool, int, float, complex, str, type(None), tuple, frozenset))
