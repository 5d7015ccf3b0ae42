"""Per-leaf facts of a tree, cached per treedef: kinds, sharding axes, key paths.

`leaf_kinds` and `leaf_axes` walk a tree the same way: through treeclass fields by name,
through any other pytree node down to its leaves or to the next node that carries fields
of its own (`pass_down`). They differ only in what a treeclass field passes down: the
kind of a leaf is the `kind` of the OUTERMOST enclosing field that sets one (so one
declaration can re-kind a whole submodule), its axes those of the INNERMOST (the field
closest to an array knows its dimensions best). So each keeps its own treeclass step and
shares the rest.

`Leaves` bundles one flatten of a tree with these facts, computed when first asked for;
`constant_tree` makes the per-structure trees built from them (masks, labels) cheap to
hand out again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax

from ._cache import BoundedCache
from ._class._instance import frozen_setattr
from ._class._kinds import Kind, foreign_kind
from ._class._meta import FLAT, is_treeclass, meta_of
from ._errors import reraise_if_too_deep

T = TypeVar("T")
__all__ = [
    "Leaves",
    "constant_tree",
    "leaf_axes",
    "leaf_kinds",
    "leaf_paths",
    "pass_down",
    "resolve",
    "tree_kinds",
]

Walk = Callable[[Any, Any, list[Any]], None]


def pass_down(
    node: Any, value: Any, out: list[Any], walk: Walk, stop: Callable[[Any], bool]
) -> None:
    """Walk a node that has no fields: a leaf gets `value`, subtrees where `stop` holds get `walk`.

    The nodes in between (lists, dicts, foreign pytrees) pass `value` down unchanged.
    """
    parts = jax.tree_util.tree_leaves(node, is_leaf=lambda x: x is not node and stop(x))
    if len(parts) == 1 and parts[0] is node:
        out.append(value)
        return
    for part in parts:
        walk(part, value, out)


def resolve(
    cache: BoundedCache,
    tree: Any,
    treedef: Any,
    walk: Walk,
    what: str,
    start: Any = None,
    finish: Callable[[Any], Any] | None = None,
) -> tuple[Any, ...]:
    """One value per leaf of `tree` from `walk` (from `start` at the root, each value passed
    through `finish`), stored in `cache` under `treedef`.

    Callers look the cache up themselves first: a hit is then one `get`, with no call here
    (`leaf_kinds` runs on every filtered step).
    """
    out: list[Any] = []
    walk(tree, start, out)
    found = tuple(out) if finish is None else tuple(map(finish, out))
    # The walk reads treeclass fields directly and flattens everything else again, so a
    # custom node whose flatten changes between calls would misalign values and leaves.
    if len(found) != treedef.num_leaves:
        raise ValueError(
            f"could not resolve {what}: found {len(found)} leaves, the treedef has "
            f"{treedef.num_leaves}. Is a pytree node's flatten inconsistent?"
        )
    cache.put(treedef, found)
    return found


# -- kinds ----------------------------------------------------------------------------------------


def _kind_fields(node: Any) -> tuple[tuple[Any, type[Kind] | None], ...] | None:
    """For a treeclass node: (child value, field kind) per child field; else None."""
    meta = meta_of(type(node))
    if meta is None:
        return None
    d = node.__dict__
    return tuple((d[name], kind) for name, kind in zip(meta.child_names, meta.child_kinds))


def _is_marked(x: Any) -> bool:
    return meta_of(type(x)) is not None or foreign_kind(x) is not None


def _walk_kinds(node: Any, kind: type[Kind] | None, out: list[Any]) -> None:
    if kind is not None:
        out.extend([kind] * len(jax.tree_util.tree_leaves(node)))
        return
    pairs = _kind_fields(node)
    if pairs is not None:
        for child, child_kind in pairs:
            _walk_kinds(child, child_kind, out)
        return
    marker = foreign_kind(node)
    if marker is not None:
        out.extend([marker] * len(jax.tree_util.tree_leaves(node)))
        return
    # Any other pytree: descend until we meet a treeclass or a foreign marker.
    pass_down(node, None, out, _walk_kinds, _is_marked)


_KINDS_CACHE: BoundedCache = BoundedCache(maxsize=4096)


def leaf_kinds(tree: Any, treedef: Any = None) -> tuple[type[Kind] | None, ...]:
    """The kind of each leaf of `tree`, in `tree_leaves` order; cached per treedef."""
    if treedef is None:
        treedef = jax.tree_util.tree_structure(tree)
    kinds = _KINDS_CACHE.get(treedef)
    if kinds is None:
        kinds = resolve(_KINDS_CACHE, tree, treedef, _walk_kinds, "kinds")
    return kinds


def tree_kinds(tree: T) -> T:
    """Replace every leaf by its kind class (or `None` for leaves under no kinded field).

    A leaf's kind is the `kind` of the outermost enclosing field that sets one; Flax NNX
    variables count as their kinds (`nnx.Param` as `Parameter`, ...).

    Args:
        tree: any pytree.

    Returns:
        A tree with `tree`'s structure whose leaves are `Kind` subclasses or `None`.

    Raises:
        TreeTooDeepError: the tree is nested deeper than pytreeclass walks, or
            holds a reference cycle.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Linear:
        ...     w: jnp.ndarray = ptc.field(kind=ptc.Parameter)
        ...     n: jnp.ndarray
        >>> ptc.tree_kinds(Linear(jnp.ones(2), jnp.zeros(())))
        Linear(w=Parameter, n=None)
    """
    try:
        treedef = jax.tree_util.tree_structure(tree)
        return treedef.unflatten(leaf_kinds(tree, treedef))
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_kinds", e)
        raise


# -- sharding axes --------------------------------------------------------------------------------


# A field declared `field(stack="layers")` holds layers stacked along a leading axis: every
# leaf below it gets "layers" PREPENDED to the axes it has (stacks inside stacks prepend
# theirs in order, outermost first). A stacked leaf whose fields set no axes gets
# `("layers", ...)`: the stacked axis, then `None` for each remaining dimension.

_Axes = tuple[str | None, ...]


def _walk_axes(node: Any, axes: tuple[_Axes, _Axes | None], out: list[Any]) -> None:
    # `axes` is (stack axes of the enclosing stacked fields, the nearest field's own axes).
    meta = meta_of(type(node))
    if meta is not None:
        d = node.__dict__
        by_name = meta.fields_by_name
        stacks, inherited = axes
        for name in meta.child_names:
            f = by_name[name]
            own = inherited if f.axes is None else f.axes
            _walk_axes(d[name], (stacks if f.stack is None else (*stacks, f.stack), own), out)
        return
    # Any other pytree: its leaves inherit `axes`, except under treeclasses found below.
    pass_down(node, axes, out, _walk_axes, _is_treeclass)


def _is_treeclass(x: Any) -> bool:
    return meta_of(type(x)) is not None


_AXES_CACHE = BoundedCache(maxsize=4096)


def _final_axes(axes: tuple[_Axes, _Axes | None]) -> tuple[Any, ...] | None:
    stacks, own = axes
    if not stacks:
        return own
    return (*stacks, *((...,) if own is None else own))


def leaf_axes(tree: Any, treedef: Any = None) -> tuple[tuple[Any, ...] | None, ...]:
    """The logical axes of each leaf of `tree` (None where no field sets them); per treedef.

    Under stacked fields a leaf's axes start with the stack names; a final `...` stands
    for `None` over every remaining dimension (a stacked leaf whose field sets no axes)."""
    if treedef is None:
        treedef = jax.tree_util.tree_structure(tree)
    axes = _AXES_CACHE.get(treedef)
    if axes is None:
        axes = resolve(_AXES_CACHE, tree, treedef, _walk_axes, "axes", ((), None), _final_axes)
    return axes


# -- key paths ------------------------------------------------------------------------------------

# Strict: key paths hold dict keys, which must be this tree's (`1` is not `True`).
_PATHS_CACHE = BoundedCache(maxsize=4096, strict=is_treeclass)


def leaf_paths(tree: Any, treedef: Any = None) -> tuple[tuple[Any, ...], ...]:
    """The key path of every leaf of `tree`, in leaf order; cached per treedef."""
    if treedef is None:
        treedef = jax.tree_util.tree_structure(tree)
    paths = _PATHS_CACHE.get(treedef)
    if paths is None:
        paths = tuple(p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0])
        _PATHS_CACHE.put(treedef, paths)
    return paths


class Leaves:
    """One flattened tree, with its kinds and key paths computed only when asked for."""

    __slots__ = ("_kinds", "_paths", "leaves", "tree", "treedef")

    def __init__(self, tree: Any, flat: tuple[list[Any], Any] | None = None) -> None:
        self.tree = tree
        self.leaves, self.treedef = jax.tree_util.tree_flatten(tree) if flat is None else flat
        self._kinds: tuple[Any, ...] | None = None
        self._paths: tuple[tuple[Any, ...], ...] | None = None

    @property
    def kinds(self) -> tuple[Any, ...]:
        if self._kinds is None:
            self._kinds = leaf_kinds(self.tree, self.treedef)
        return self._kinds

    @kinds.setter
    def kinds(self, kinds: tuple[Any, ...]) -> None:
        """Set when the kinds are known already (a lens focus under a kinded field)."""
        self._kinds = kinds

    @property
    def paths(self) -> tuple[tuple[Any, ...], ...]:
        if self._paths is None:
            self._paths = leaf_paths(self.tree, self.treedef)
        return self._paths


# -- constant trees -------------------------------------------------------------------------------

# Leaf types whose values cannot change: safe to share between calls.
_IMMUTABLE_LEAVES = frozenset({bool, int, float, complex, str, bytes, type(None), type})


def constant_tree(treedef: Any, leaves: list[Any]) -> Callable[[], Any]:
    """A maker of fresh copies of `treedef.unflatten(leaves)`, for immutable `leaves`.

    Masks, labels and kinds are the same tree on every call for one structure. Each call
    of the maker gives new lists, dicts and other containers a caller may mutate, but
    shares every subtree that nothing can mutate (treeclass instances, tuples and
    namedtuples of immutable parts): those come out of one C-level unflatten of a coarser
    treedef whose leaves are the shared subtrees. A tree made only of such parts is
    returned as is.
    """
    template = treedef.unflatten(leaves)
    memo: dict[int, bool] = {}

    def frozen(x: Any) -> bool:
        known = memo.get(id(x))
        if known is not None:
            return known
        t = type(x)
        if t.__setattr__ is frozen_setattr:  # a treeclass: its aux data is hashable, so frozen
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
