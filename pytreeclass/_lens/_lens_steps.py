"""The vocabulary of lens paths: what kind of node a value is, and the steps of a path.

Every node type gets a small code (`NodeCode`), decided once per type and cached:
treeclasses, dicts, lists, tuples and namedtuples have fast paths; Equinox modules,
flax.struct and other dataclass pytrees are copied with `object.__new__` and a
`__dict__` update; any other pytree node is taken apart one level. A path is a tuple
of steps: `PathStep` (`.name`, `[key]`, `[i]`, `[a:b]`, a traced `[i]`), `ALL` (`[...]`)
and `FilterStep` (a filter in brackets). `_lens_walk` follows them.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import sys
from typing import TYPE_CHECKING, Any

from jax.tree_util import GetAttrKey

from .._cache import TypeTable
from .._class._meta import meta_of
from .._tree_util import one_level

if TYPE_CHECKING:
    from .._filters import Filter

__all__ = [
    "ALL",
    "CODES",
    "DATACLASS",
    "DATACLASS_FIELDS",
    "DICT",
    "GENERIC",
    "LEAF",
    "LIST",
    "NAMEDTUPLE",
    "NONE",
    "SCATTER",
    "SLICE",
    "STACK",
    "TREECLASS",
    "TUPLE",
    "FilterStep",
    "LensKeyError",
    "NodeCode",
    "PathStep",
    "SliceKey",
    "TracedIndex",
    "field_names",
    "nnx_static",
    "node_code",
]


# -- what kind of node is this? (decided once per type) -----------------------------------------


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
    STACK = 9  # (a lens hop, no node type) an index into a stacked field: rows picked
    SCATTER = 10  # (a lens hop) the picked rows written back into the stack


# Module-level names: the hot paths compare against globals, not enum attribute lookups.
LEAF, NONE, TREECLASS, DICT, LIST, TUPLE, NAMEDTUPLE, DATACLASS, GENERIC, STACK, SCATTER = NodeCode
SLICE = 11  # not a node type: the code of a list/tuple slice hop in a lens trail

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


def field_names(node: Any, code: int) -> tuple[str, ...]:
    cls = type(node)
    if code == TREECLASS:
        return tuple(meta_of(cls).fields_by_name)  # type: ignore[union-attr]
    if code == NAMEDTUPLE:
        return cls._fields
    return DATACLASS_FIELDS[cls]


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


# -- steps ------------------------------------------------------------------------------------


class _Step:
    __slots__ = ()
    multi = False


class SliceKey:
    """The key of a `[a:b]` step: a hashable stand-in for a `slice` (unhashable before 3.12)."""

    __slots__ = ("slice",)

    def __init__(self, s: slice) -> None:
        self.slice = s

    def __eq__(self, other: object) -> bool:
        return type(other) is SliceKey and _parts(other.slice) == _parts(self.slice)

    def __hash__(self) -> int:
        return hash(_parts(self.slice))

    def __repr__(self) -> str:
        s = self.slice
        text = ("" if s.start is None else str(s.start)) + ":"
        text += "" if s.stop is None else str(s.stop)
        return text if s.step is None else f"{text}:{s.step}"


class TracedIndex:
    """The key of a `[i]` step whose `i` is a traced integer (inside `jit`, `scan`,
    `fori_loop`): it can only pick a layer of a stacked field. Compared by identity: a
    tracer is neither hashable nor known."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<traced {self.value.dtype}>"


def _parts(s: slice) -> tuple[Any, Any, Any]:
    return (s.start, s.stop, s.step)


class PathStep(_Step):
    """`.name` (attr=True) or `["key"]` / `[i]` / `[a:b]` (attr=False)."""

    __slots__ = ("attr", "key")

    def __init__(self, key: Any, attr: bool) -> None:
        self.key, self.attr = key, attr

    def __repr__(self) -> str:
        return f".{self.key}" if self.attr else f"[{self.key!r}]"

    def __eq__(self, other: object) -> bool:
        return type(other) is PathStep and other.key == self.key and other.attr == self.attr

    def __hash__(self) -> int:
        return hash((self.key, self.attr))

    def error(self, message: str, mapping: bool = False) -> Exception:
        """The exception for this step not existing: a missing attribute, key or index.

        `mapping`: the node is keyed (a dict, or a foreign node with `DictKey` children),
        so any missing `[key]`, an int one included, is a missing key (API.md section 4)."""
        if self.attr:
            return AttributeError(message)
        if mapping or type(self.key) is str:
            return LensKeyError(message)
        return IndexError(message)


class _Everything(_Step):
    __slots__ = ()
    multi = True

    def __repr__(self) -> str:
        return "[...]"


class FilterStep(_Step):
    __slots__ = ("filter",)
    multi = True

    def __init__(self, f: Filter) -> None:
        self.filter = f

    def __repr__(self) -> str:
        return f"[{self.filter!r}]"

    def __eq__(self, other: object) -> bool:
        return type(other) is FilterStep and other.filter == self.filter

    def __hash__(self) -> int:
        return hash(self.filter)


ALL = _Everything()


class LensKeyError(KeyError):
    """A `KeyError` whose message reads as a sentence (`KeyError` quotes its argument)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
