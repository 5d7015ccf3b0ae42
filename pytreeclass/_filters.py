"""Filters: small hashable predicates over leaves, built once from what users pass.

A filter answers, for each leaf of a tree, "is it selected?". Filters that depend only on
the tree's structure (kinds, names, masks of kinds) are computed once per treedef and
cached, so `tree_partition(model, Parameter)` on every training step costs a flatten, a
list pass and two unflattens.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any as _Any
from typing import ClassVar

import jax
import numpy as np
from jax.core import Tracer

from ._cache import BoundedCache, TypeTable
from ._class._kinds import Kind
from ._class._meta import meta_of
from ._io._io_leaves import flat_name
from ._leaf_facts import Leaves
from ._tree_util import first_difference, key_name

__all__ = [
    "All",
    "Any",
    "Filter",
    "Not",
    "OfKind",
    "OfType",
    "PathContains",
    "PathMatch",
    "Position",
    "Predicate",
    "always_node",
    "as_filter",
    "combined",
    "inside_flags",
    "is_cacheable",
    "node_types",
    "select_leaves",
    "type_members",
]


# -- node types ---------------------------------------------------------------------------------
#
# A type in a filter tests leaves with `isinstance`, as always. It also tests pytree *nodes*
# unless it is a type of common leaves too: a type that `int`, `float`, `complex`, `bool`,
# `str`, `bytes`, NumPy arrays and scalars, or `jax.Array` are subclasses of (`object`,
# `numbers.Number`, `Hashable`, `Sequence`, ...) would match nodes and leaves alike, and
# stays a leaf test. Every other class is a *node type*: a node is matched when its class
# is a subclass of it (treeclasses, Equinox modules, flax.struct dataclasses, `dict`,
# `list`, `tuple`, namedtuples, `None`, any registered node, and base classes of those).
# Node types are in the treedef (`node_data()[0]`), so which leaves lie under a matched
# node is a fact of the structure, computed once per (treedef, types) and cached.

# Leaf types that no node-selecting type may be a base of (see the module docs).
_LEAF_TYPES = (bool, int, float, complex, str, bytes, np.ndarray, np.generic, jax.Array)


def type_members(t: _Any) -> tuple[type, ...]:
    """The classes of a type, a tuple of types or a union (`A | B`, `Union[A, B]`)."""
    if isinstance(t, tuple):
        return tuple(m for x in t for m in type_members(x))
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
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


_NODE_TYPES: dict[_Any, tuple[type, ...]] = {}


def node_types(t: _Any) -> tuple[type, ...]:
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
    if t.__module__ == "pytreeclass._class._treeclass" and t.__name__ == "TreeClass":
        return True
    eqx = sys.modules.get("equinox")
    module = getattr(eqx, "Module", None)
    return module is not None and issubclass(t, module)


def _is_instance_type(cls: _Any, types: tuple[type, ...]) -> bool:
    try:
        return issubclass(cls, types)
    except TypeError:
        return False


_INSIDE = BoundedCache(maxsize=4096)


def inside_flags(treedef: _Any, types: tuple[type, ...]) -> tuple[bool, ...]:
    """Per leaf of `treedef`: does it lie under a node whose class is one of `types`?"""
    key = (treedef, types)
    out = _INSIDE.get(key)
    if out is None:
        flags: list[bool] = []

        def walk(td: _Any, inside: bool) -> None:
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


# -- filters ------------------------------------------------------------------------------------


class Position:
    """A node as a filter sees it in a lens: its class, key path, kind and enclosing nodes.

    `kind` is the kind the node gets from a field (or marker) above it, or None;
    `outer` are the classes of the nodes above it (inside the lens's focus)."""

    __slots__ = ("cls", "kind", "outer", "path")

    def __init__(self, cls: type, path: tuple[_Any, ...], kind: _Any, outer: tuple[type, ...]):
        self.cls, self.path, self.kind, self.outer = cls, path, kind, outer


class Filter:
    """Base of filter objects; functions that take filters turn their arguments into these.

    A filter may be given as any of:

    1. a `Kind` subclass: leaves of that kind or a subkind (`OfKind`);
    2. any other type: leaves that are instances of it (`OfType`); a pytree node type
       (a treeclass, `dict`, an Equinox module, ...) selects whole subtrees;
    3. a callable `leaf -> bool` (`Predicate`), e.g. `equinox.is_array`;
    4. a string: leaves whose key path has a field, attribute or key of that name
       (`PathContains`); a string with a dot, the leaves under that dotted name as
       `tree_to_dict` prints it (`"blocks.0.attn"`, a `PathMatch`);
    5. a pytree of bools with the tree's structure (a mask), a `bool` standing for a
       whole subtree;
    6. `Any(*filters)`, `All(*filters)`, `Not(filter)`.

    Several filters passed to one call are combined with `All`. Filter objects are small,
    hashable and have readable `repr`s. `structural` filters depend on the treedef alone,
    so what they select is cached per treedef. Filters that name node types
    (`node_types`, e.g. `OfType(Linear)`) also judge whole nodes in a lens: `node_test`
    answers True or False for a node, or None where the filter only looks at leaves
    (a callable, a mask, a leaf type, a kind that no field above the node sets).
    """

    structural: bool = False
    node_types: tuple[type, ...] = ()

    def mask(self, ctx: Leaves) -> tuple[bool, ...]:
        raise NotImplementedError(
            f"{type(self).__name__} subclasses ptc.Filter but does not define "
            "mask(ctx). To filter with a function of the leaf, use ptc.Predicate(fn)."
        )

    def node_test(self, pos: Position) -> bool | None:
        return None


@dataclasses.dataclass(frozen=True, repr=False)
class OfKind(Filter):
    """Leaves whose kind is `kind` or a subkind of it (a bare `Kind` subclass means this).

    Args:
        kind: a `Kind` subclass.

    Raises:
        TypeError: `kind` is not a `Kind` subclass.

    Examples:
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Layer:
        ...     w: float = ptc.field(kind=ptc.Parameter, default=1.0)
        ...     mean: float = ptc.field(kind=ptc.BatchStat, default=0.0)
        >>> ptc.tree_mask(Layer(), ptc.OfKind(ptc.State))
        Layer(w=False, mean=True)
    """

    kind: type[Kind]
    structural = True

    def mask(self, ctx: Leaves) -> tuple[bool, ...]:
        kind = self.kind
        return tuple(k is not None and issubclass(k, kind) for k in ctx.kinds)

    def node_test(self, pos: Position) -> bool | None:
        return None if pos.kind is None else issubclass(pos.kind, self.kind)

    def __repr__(self) -> str:
        return self.kind.__name__


@dataclasses.dataclass(frozen=True, repr=False)
class OfType(Filter):
    """Leaves that are instances of `type`; for a node type, whole subtrees rooted at one.

    A bare type that is not a kind means this filter, and so does a union of such types
    (`int | float`, `typing.Union[int, float]`). A node type (a treeclass, an
    Equinox module, a flax.struct dataclass, `dict`, `list`, `tuple`, any registered
    node, or a base class of those) selects every leaf under a node that is an instance
    of it, and in a lens the nodes themselves, outermost first. A type of common leaves
    as well (`object`, `numbers.Number`, `Sequence`, ...) and a leaf type (`jax.Array`,
    `float`) test leaves only.

    Args:
        type: the class to match (or a tuple or union of classes).

    Examples:
        >>> import pytreeclass as ptc
        >>> ptc.tree_mask({"a": 1, "b": 2.0}, ptc.OfType(float))
        {'a': False, 'b': True}
        >>> tree = {"a": [1.0, 2.0], "b": 3.0}
        >>> ptc.tree_mask(tree, ptc.OfType(list))
        {'a': [True, True], 'b': False}
        >>> ptc.at(tree)[ptc.OfType(list)].apply(sum)
        {'a': 3.0, 'b': 3.0}
    """

    type: type | tuple[type, ...]

    @property
    def node_types(self) -> tuple[type, ...]:  # type: ignore[override]
        return node_types(self.type)

    @property
    def structural(self) -> bool:  # type: ignore[override]
        # Which nodes match is in the treedef; a leaf can only match if some member of
        # `type` may have instances that are leaves.
        nodes = self.node_types
        members = type_members(self.type)
        return bool(nodes) and len(nodes) == len(members) and all(map(always_node, nodes))

    def mask(self, ctx: Leaves) -> tuple[bool, ...]:
        nodes = self.node_types
        if not nodes:
            t = self.type
            return tuple(isinstance(leaf, t) for leaf in ctx.leaves)
        inside = inside_flags(ctx.treedef, nodes)
        if self.structural:
            return inside
        t = type_members(self.type)
        return tuple(a or isinstance(leaf, t) for a, leaf in zip(inside, ctx.leaves))

    def node_test(self, pos: Position) -> bool | None:
        nodes = self.node_types
        if not nodes:
            return None  # a leaf type says nothing about nodes
        try:
            return issubclass(pos.cls, nodes) or any(issubclass(c, nodes) for c in pos.outer)
        except TypeError:
            return False

    def __repr__(self) -> str:
        names = [f"{t.__module__}.{t.__qualname__}" for t in type_members(self.type)]
        return f"OfType({' | '.join(names)})"


@dataclasses.dataclass(frozen=True, repr=False)
class Predicate(Filter):
    """Leaves for which `fn(leaf)` is true (e.g. `equinox.is_array`).

    A bare callable filter means this. `fn` must return a Python `bool`: which leaves are
    selected decides the output's structure, so it cannot depend on traced values.

    Args:
        fn: a function from a leaf to a Python `bool`.

    Examples:
        >>> import pytreeclass as ptc
        >>> ptc.tree_mask([1, -2, 3], ptc.Predicate(lambda x: x > 0))
        [True, False, True]
    """

    fn: Callable[[_Any], _Any]

    def mask(self, ctx: Leaves) -> tuple[bool, ...]:
        fn, out = self.fn, []
        for i, leaf in enumerate(ctx.leaves):
            r = fn(leaf)
            if r is True or r is False:
                out.append(r)
                continue
            try:
                out.append(bool(r))
            except Exception as e:
                path = jax.tree_util.keystr(ctx.paths[i])
                raise TypeError(
                    f"filter {self!r} returned {type(r).__name__} for the leaf at {path or '<root>'}; "
                    "a filter function must return a Python bool (it decides the tree's "
                    "structure, which cannot depend on traced values)."
                ) from e
        return tuple(out)

    def __repr__(self) -> str:
        return f"Predicate({getattr(self.fn, '__qualname__', self.fn)!r})"


@dataclasses.dataclass(frozen=True)
class PathContains(Filter):
    """Leaves whose key path has a field, attribute or dict key named exactly `name`.

    A bare string filter means this (except in a lens, where `["w"]` is a key step).

    Args:
        name: the field, attribute or key name.

    Examples:
        >>> import pytreeclass as ptc
        >>> tree = {"w": 1.0, "block": {"w": 2.0, "b": 3.0}}
        >>> ptc.tree_mask(tree, ptc.PathContains("w"))
        {'block': {'b': False, 'w': True}, 'w': True}
    """

    name: str
    structural = True

    def mask(self, ctx: Leaves) -> tuple[bool, ...]:
        name = self.name
        return tuple(any(key_name(k) == name for k in path) for path in ctx.paths)

    def node_test(self, pos: Position) -> bool | None:
        return any(key_name(k) == self.name for k in pos.path)


@dataclasses.dataclass(frozen=True)
class PathMatch(Filter):
    r"""Leaves whose dotted name, as `tree_to_dict` prints it (`blocks.0.attn.w`), matches
    the regular expression `pattern` whole (`re.fullmatch`).

    A bare string filter with a dot means the leaves under that dotted name:
    `"blocks.0.attn"` selects `blocks.0.attn` itself and every `blocks.0.attn.<...>`.

    Args:
        pattern: a regular expression, matched against the whole dotted name.

    Raises:
        re.error: `pattern` is not a valid regular expression.

    Examples:
        >>> import pytreeclass as ptc
        >>> tree = {"blocks": [{"w": 1.0, "b": 2.0}, {"w": 3.0, "b": 4.0}]}
        >>> ptc.tree_mask(tree, ptc.PathMatch(r"blocks\.\d+\.w"))
        {'blocks': [{'b': False, 'w': True}, {'b': False, 'w': True}]}
        >>> ptc.tree_mask(tree, "blocks.1")
        {'blocks': [{'b': False, 'w': False}, {'b': True, 'w': True}]}
    """

    pattern: str
    structural = True

    def __post_init__(self) -> None:
        re.compile(self.pattern)  # a bad pattern fails here, not on first use

    def mask(self, ctx: Leaves) -> tuple[bool, ...]:
        match = re.compile(self.pattern).fullmatch
        return tuple(match(flat_name(path)) is not None for path in ctx.paths)

    @staticmethod
    def prefix(name: str) -> PathMatch:
        """The filter a bare string with a dot stands for.

        Args:
            name: a dotted name, such as `"blocks.0.attn"`.

        Returns:
            A `PathMatch` selecting the leaf named `name` and every leaf under it.
        """
        return PathMatch(re.escape(name) + r"(\..+)?")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Mask(Filter):
    """A pytree of bools shaped like the tree (or a prefix of it: a bool covers a subtree)."""

    tree: _Any

    def mask(self, ctx: Leaves) -> tuple[bool, ...]:
        if self.tree is None and ctx.leaves:  # it would select nothing, silently
            raise TypeError(
                f"None is not a filter (it is only the mask of a tree without leaves). "
                f"A filter is {_FILTER_FORMS}."
            )
        bools, mask_def = jax.tree_util.tree_flatten(self.tree, is_leaf=lambda x: x is None)
        if mask_def == ctx.treedef:
            subtrees: list[_Any] = [None] * len(bools)
            counts = [1] * len(bools)
        else:
            try:
                subtrees = mask_def.flatten_up_to(ctx.tree)
            except (ValueError, TypeError) as e:
                where = first_difference(self.tree, ctx.tree)
                raise ValueError(
                    f"mask filter does not match the tree: {where}. A mask must have the "
                    "tree's structure (a bool may stand for a whole subtree)."
                ) from e
            counts = [jax.tree_util.tree_structure(s).num_leaves for s in subtrees]
        out: list[bool] = []
        for b, n in zip(bools, counts):
            # `as_filter` makes a Mask only of a pytree of bools (`_bool_tree_status`).
            if b is None:
                b = False
            elif isinstance(b, Tracer):
                raise TypeError(
                    "mask filter holds a traced bool: the mask was passed through a JAX "
                    "transformation (e.g. as a jax.jit argument), but which leaves are "
                    "selected decides the output's structure, so it must be known at trace "
                    "time. Close over the mask (or mark it static) instead of passing it in."
                )
            out.extend([bool(b)] * n)
        return tuple(out)

    def __repr__(self) -> str:
        return "Mask(...)"


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class _Combination(Filter):
    """Several filters, their masks reduced leaf by leaf with `_reduce` (any or all)."""

    filters: tuple[Filter, ...]
    _reduce: ClassVar[Callable[[Iterable[bool]], bool]]

    def __init__(self, *filters: _Any) -> None:
        object.__setattr__(self, "filters", tuple(as_filter(f) for f in filters))

    @property
    def structural(self) -> bool:  # type: ignore[override]
        return all(f.structural for f in self.filters)

    @property
    def node_types(self) -> tuple[type, ...]:  # type: ignore[override]
        return tuple(dict.fromkeys(t for f in self.filters for t in f.node_types))

    def mask(self, ctx: Leaves) -> tuple[bool, ...]:
        masks = [f.mask(ctx) for f in self.filters]
        if not masks:  # any() of nothing is False, all() of nothing is True
            return (type(self)._reduce(()),) * len(ctx.leaves)
        return tuple(map(type(self)._reduce, zip(*masks)))

    def node_test(self, pos: Position) -> bool | None:
        # Filters that only look at leaves (None) are left out; the leaves below a node
        # are checked one by one before the node is selected as a whole.
        known = [v for v in (f.node_test(pos) for f in self.filters) if v is not None]
        return type(self)._reduce(known) if known else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.filters))})"


class Any(_Combination):
    """Leaves selected by at least one of `filters`.

    Args:
        *filters: filters in any form `Filter` lists.

    Examples:
        >>> import pytreeclass as ptc
        >>> ptc.tree_mask({"a": 1, "b": 2.0, "c": "x"}, ptc.Any(int, float))
        {'a': True, 'b': True, 'c': False}
    """

    _reduce = any


class All(_Combination):
    """Leaves selected by every one of `filters` (several filters in one call mean this).

    Args:
        *filters: filters in any form `Filter` lists.

    Examples:
        >>> import pytreeclass as ptc
        >>> tree = {"w": 1.0, "b": 2.0, "n": 3}
        >>> ptc.tree_mask(tree, ptc.All(float, ptc.Not("b")))
        {'b': False, 'n': False, 'w': True}
    """

    _reduce = all


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class Not(Filter):
    """Leaves not selected by `filter`.

    Args:
        filter: a filter in any form `Filter` lists.

    Examples:
        >>> import pytreeclass as ptc
        >>> ptc.tree_mask({"a": 1, "b": 2.0}, ptc.Not(float))
        {'a': True, 'b': False}
    """

    filter: Filter

    def __init__(self, filter: _Any) -> None:  # `filter` shadows the builtin: the natural name
        object.__setattr__(self, "filter", as_filter(filter))

    @property
    def structural(self) -> bool:  # type: ignore[override]
        return self.filter.structural

    @property
    def node_types(self) -> tuple[type, ...]:  # type: ignore[override]
        return self.filter.node_types

    def mask(self, ctx: Leaves) -> tuple[bool, ...]:
        return tuple(not b for b in self.filter.mask(ctx))

    def node_test(self, pos: Position) -> bool | None:
        v = self.filter.node_test(pos)
        return None if v is None else not v

    def __repr__(self) -> str:
        return f"Not({self.filter!r})"


_FILTER_FORMS = (
    "a Kind subclass (ptc.Parameter), any other type (jax.Array), a callable leaf -> bool "
    "(eqx.is_array), a str (a field or key name), a pytree of bools (a mask), or "
    "ptc.Any/ptc.All/ptc.Not of those"
)

_TYPE_FILTERS = TypeTable(1024)


def _bool_tree_status(x: _Any) -> str | None:
    """ "mask" for a pytree of bools; the first offending leaf for other containers; else None."""
    if isinstance(x, (bool, np.bool_)):
        return "mask"
    pairs, treedef = jax.tree_util.tree_flatten_with_path(x)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # x is itself a leaf
        return None
    for path, b in pairs:
        if not _is_bool_leaf(b):
            return f"{jax.tree_util.keystr(path)} is {b!r} ({type(b).__name__}), not a bool"
    return "mask"


def _is_bool_leaf(b: _Any) -> bool:
    # Scalar bool arrays count too (a mask that went through jit comes back as arrays).
    return isinstance(b, (bool, np.bool_)) or (
        getattr(b, "dtype", None) == np.bool_ and getattr(b, "shape", None) == ()
    )


def _union_filter(f: _Any) -> Filter:
    """`int | float` or `typing.Union[int, float]`: what `isinstance` accepts, as a filter."""
    members = typing.get_args(f)
    if not all(isinstance(m, type) and typing.get_origin(m) is None for m in members):
        for m in members:
            as_filter(m)  # raises for the member that is not a filter (e.g. list[int])
    kinds = [m for m in members if isinstance(m, type) and issubclass(m, Kind)]
    if not kinds:
        return OfType(tuple(members))
    return Any(*members)


def as_filter(f: _Any) -> Filter:
    """Turn any accepted filter form into a `Filter` object (see the module docs)."""
    if isinstance(f, Filter):
        return f
    origin = typing.get_origin(f)
    if origin is not None:
        if origin is typing.Union or origin is types.UnionType:
            return _union_filter(f)
        # `list[int]` is callable (it builds a list) and, on some Pythons, an instance of
        # `type`: without this it would select every leaf `list(leaf)` makes non-empty.
        name = getattr(origin, "__qualname__", repr(origin))
        raise TypeError(
            f"{f!r} is a parametrized generic; a type filter is checked with isinstance, "
            f"which cannot check what is inside a value. Use the bare type ({name}), a "
            f"union of types (int | float), or a callable leaf -> bool. A filter is "
            f"{_FILTER_FORMS}."
        )
    if isinstance(f, type):
        out = _TYPE_FILTERS.get(f)
        if out is None:
            out = _TYPE_FILTERS.remember(f, OfKind(f) if issubclass(f, Kind) else OfType(f))
        return out
    if isinstance(f, str):
        return PathMatch.prefix(f) if "." in f else PathContains(f)
    if f is None:  # the mask of a leafless tree (tree_mask(None) is None); else an error
        return _NONE_MASK
    status = _bool_tree_status(f)
    if status == "mask":
        return Mask(f)
    if callable(f):
        return Predicate(f)
    if status is not None:
        raise TypeError(
            f"a {type(f).__name__} used as a filter must be a mask, a pytree of bools, but "
            f"its leaf at {status}. A filter is {_FILTER_FORMS}."
        )
    raise TypeError(
        f"{f!r} (of type {type(f).__name__}) is not a filter. A filter is {_FILTER_FORMS}."
    )


_NONE_MASK = Mask(None)
_MASK_CACHE = BoundedCache(maxsize=8192)


def combined(filters: tuple[_Any, ...]) -> Filter:
    """One `Filter` for the filters given in one call (a leaf must pass all of them)."""
    return as_filter(filters[0]) if len(filters) == 1 else All(*filters)


def is_cacheable(f: Filter) -> bool:
    if not f.structural:
        return False
    try:
        hash(f)
    except TypeError:
        return False
    return True


def select_leaves(
    tree: _Any, filters: tuple[_Any, ...], flat: tuple[list[_Any], _Any] | None = None
) -> tuple[Leaves, tuple[bool, ...]]:
    """Flatten `tree` (unless `flat` is its flatten already) and say which leaves all of
    `filters` select."""
    ctx = Leaves(tree, flat)
    if not filters:
        return ctx, (True,) * len(ctx.leaves)
    f = combined(filters)
    if is_cacheable(f):
        key = (ctx.treedef, f)
        sel = _MASK_CACHE.get(key)
        if sel is None:
            sel = f.mask(ctx)
            _MASK_CACHE.put(key, sel)
        return ctx, sel
    return ctx, f.mask(ctx)
