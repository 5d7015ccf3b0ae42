"""Partitioning a tree by filters and putting it back: tree_mask, tree_filter,
tree_partition, tree_merge.

Holes are `None`, as in `equinox.partition`/`equinox.combine`, so outputs feed either library.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, TypeVar

import jax

from ._cache import BoundedCache
from ._class._meta import is_treeclass
from ._errors import reraise_if_too_deep
from ._filters import combined, is_cacheable, select_leaves
from ._leaf_facts import constant_tree
from ._tree_util import StructureMismatch, merge_nodes

T = TypeVar("T")
__all__ = ["tree_filter", "tree_mask", "tree_merge", "tree_partition"]

# `jax.tree_util.tree_flatten` minus its Python frame (the registry's flatten is C++).
_flatten = jax.tree_util.default_registry.flatten


# Per (treedef, filters): everything a call needs besides one flatten and the unflattens.
# Only filters that depend on structure alone are cached (`is_cacheable`); others (e.g.
# eqx.is_array) are evaluated on every call. Each side of a partition is rebuilt from a
# C-level itemgetter over the leaves and the treedef of that side (holes are None nodes),
# so a call runs no Python loop over the leaves.
#
# Every cache here holds treedefs (the sides, the masks, the merged structure), so all are
# strict: a tree whose static values or dict keys are `==` but not of the same types
# misses instead of getting the first tree's (see `BoundedCache`).
_SELECTIONS = BoundedCache(maxsize=4096, strict=is_treeclass)
# Per (treedef, filters) for structure-only filters: a maker of the mask (`constant_tree`).
_MASKS = BoundedCache(maxsize=4096, strict=is_treeclass)


def _getter(indices: list[int]) -> Callable[[list[Any]], tuple[Any, ...]]:
    """A C-level `leaves -> (leaves[i] for i in indices)` (an itemgetter)."""
    if len(indices) >= 2:
        return operator.itemgetter(*indices)
    if len(indices) == 1:
        i = indices[0]
        return lambda leaves: (leaves[i],)
    return lambda leaves: ()


def _cacheable_filters(filters: tuple[Any, ...]) -> bool:
    try:
        return is_cacheable(combined(filters))
    except TypeError:
        return False


def _side(treedef: Any, leaves: list[Any], picked: list[int]) -> tuple[Any, Any] | None:
    """(getter, treedef with None holes) of the tree keeping only the `picked` leaves."""
    wanted = set(picked)
    holed = treedef.unflatten([x if i in wanted else None for i, x in enumerate(leaves)])
    holed_def = jax.tree_util.tree_structure(holed)
    if holed_def.num_leaves != len(picked):  # a node type that drops None children
        return None
    return _getter(picked), holed_def


def _split_plan(tree: Any, filters: tuple[Any, ...]) -> tuple[Any, Any, Any, Any, Any]:
    """(leaves, treedef, bools, selected side, unselected side) for `filters` on `tree`."""
    leaves, treedef = _flatten(tree)
    plan = _SELECTIONS.get((treedef, filters))  # None for unhashable filters (masks)
    if plan is not None:
        return (leaves, treedef, *plan)
    _, sel = select_leaves(tree, filters, (leaves, treedef))
    if _cacheable_filters(filters):
        yes = [i for i, s in enumerate(sel) if s]
        no = [i for i, s in enumerate(sel) if not s]
        plan = (sel, _side(treedef, leaves, yes), _side(treedef, leaves, no))
        _SELECTIONS.put((treedef, filters), plan)
        return (leaves, treedef, *plan)
    return leaves, treedef, sel, None, None


def _pick(leaves: list[Any], treedef: Any, sel: Any, side: Any, keep: bool) -> Any:
    if side is not None:
        take, holed_def = side
        return holed_def.unflatten(take(leaves))
    if keep:
        return treedef.unflatten([x if s else None for x, s in zip(leaves, sel)])
    return treedef.unflatten([None if s else x for x, s in zip(leaves, sel)])


def tree_mask(tree: T, /, *filters: Any) -> T:
    """A tree of bools shaped like `tree`: True where every filter selects the leaf.

    The result plugs into `optax.masked` (pass a function:
    `optax.masked(tx, lambda p: ptc.tree_mask(p, ptc.Parameter))`).

    Args:
        tree: any pytree.
        *filters: filters in any form `ptc.Filter` lists, combined with AND.

    Returns:
        A tree with `tree`'s structure and a Python `bool` for every leaf.

    Raises:
        TypeError: a filter is none of the forms `ptc.Filter` lists, or a predicate
            returns something other than a Python `bool`.
        ValueError: a mask filter does not have the tree's structure.

    Examples:
        >>> import pytreeclass as ptc
        >>> ptc.tree_mask({"a": 1, "b": 2.0}, float)
        {'a': False, 'b': True}
    """
    try:
        leaves, treedef = _flatten(tree)
        make = _MASKS.get((treedef, filters))
        if make is not None:
            return make()
        _, sel = select_leaves(tree, filters, (leaves, treedef))
        if not _cacheable_filters(filters):
            return treedef.unflatten(sel)
        make = constant_tree(treedef, list(sel))
        _MASKS.put((treedef, filters), make)
        return make()
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_mask", e)
        raise


def tree_filter(tree: T, /, *filters: Any, inverse: bool = False) -> T:
    """`tree` with unselected leaves replaced by `None` (selected ones, with `inverse=True`).

    Args:
        tree: any pytree.
        *filters: filters in any form `ptc.Filter` lists, combined with AND.
        inverse: keep the unselected leaves instead.

    Returns:
        A tree with `tree`'s structure and `None` holes; kept leaves are the same objects.

    Raises:
        TypeError: a filter is none of the forms `ptc.Filter` lists, or a predicate
            returns something other than a Python `bool`.
        ValueError: a mask filter does not have the tree's structure.

    Examples:
        >>> import pytreeclass as ptc
        >>> ptc.tree_filter({"a": 1, "b": 2.0}, float)
        {'a': None, 'b': 2.0}
    """
    try:
        leaves, treedef, sel, yes, no = _split_plan(tree, filters)
        if inverse:
            return _pick(leaves, treedef, sel, no, keep=False)
        return _pick(leaves, treedef, sel, yes, keep=True)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_filter", e)
        raise


def tree_partition(tree: T, /, *filters: Any) -> tuple[T, T]:
    """Split `tree` into (selected, rest), each with `None` holes; `tree_merge` undoes it.

    The halves are what `equinox.partition` returns, so they feed `jax.grad`,
    `equinox.combine` and optax as they are. No array is copied.

    Args:
        tree: any pytree.
        *filters: filters in any form `ptc.Filter` lists, combined with AND.

    Returns:
        Two trees with `tree`'s structure, `(selected, rest)`, each holding the
        leaves the other lacks.

    Raises:
        TypeError: a filter is none of the forms `ptc.Filter` lists, or a predicate
            returns something other than a Python `bool`.
        ValueError: a mask filter does not have the tree's structure.

    Examples:
        >>> import pytreeclass as ptc
        >>> ptc.tree_partition({"a": 1, "b": 2.0}, float)
        ({'a': None, 'b': 2.0}, {'a': 1, 'b': None})
    """
    try:
        leaves, treedef, sel, yes, no = _split_plan(tree, filters)
        return (
            _pick(leaves, treedef, sel, yes, keep=True),
            _pick(leaves, treedef, sel, no, keep=False),
        )
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_partition", e)
        raise


# -- merging ----------------------------------------------------------------------------------


class _Marker:
    __slots__ = ("leaf", "tree")

    def __init__(self, tree: int, leaf: int) -> None:
        self.tree, self.leaf = tree, leaf


_PLANS = BoundedCache(maxsize=4096, strict=is_treeclass)


def _plan(trees: tuple[Any, ...], treedefs: tuple[Any, ...]) -> tuple[Any, Any]:
    """Output treedef, and a getter that picks every output leaf from the trees' leaves
    joined in order (one C-level call instead of a Python loop)."""
    markers = [
        td.unflatten([_Marker(i, j) for j in range(td.num_leaves)]) for i, td in enumerate(treedefs)
    ]
    merged = merge_nodes(list(enumerate(markers)), ())
    out, out_def = jax.tree_util.tree_flatten(merged)
    offsets = [0]
    for td in treedefs:
        offsets.append(offsets[-1] + td.num_leaves)
    return out_def, _getter([offsets[m.tree] + m.leaf for m in out])


def tree_merge(tree: T, /, *updates: Any) -> T:
    """Put partitioned trees back together; later non-`None` values win.

    A `None` in any tree is a hole: it may stand for a leaf or a whole subtree.

    Args:
        tree: the first tree.
        *updates: trees with `tree`'s structure (holes aside), applied left to right.

    Returns:
        A tree with `tree`'s structure; every leaf is the last non-`None` value at its
        position (the same object, never a copy).

    Raises:
        ValueError: the structures differ somewhere other than at holes; the message
            names the first differing key path.

    Examples:
        >>> import pytreeclass as ptc
        >>> params, rest = ptc.tree_partition({"a": 1, "b": 2.0}, float)
        >>> ptc.tree_merge(params, rest)
        {'a': 1, 'b': 2.0}
    """
    try:
        trees = (tree, *updates)
        if len(updates) == 1:  # the common case, without a loop
            leaves, td0 = _flatten(tree)
            more, td1 = _flatten(updates[0])
            leaves = leaves + more
            treedefs: tuple[Any, ...] = (td0, td1)
        else:
            flats = [_flatten(t) for t in trees]
            leaves = [x for flat, _ in flats for x in flat]
            treedefs = tuple(td for _, td in flats)
        plan = _PLANS.get(treedefs)
        if plan is None:
            try:
                plan = _plan(trees, treedefs)
            except RecursionError:
                raise
            except Exception:
                # A mismatch (found again on the real trees, so the message shows real
                # leaves), or a node type that cannot be rebuilt around markers: merge
                # directly, uncached.
                try:
                    return merge_nodes(list(enumerate(trees)), ())
                except StructureMismatch as e:
                    raise ValueError(str(e)) from None
            _PLANS.put(treedefs, plan)
        out_def, take = plan
        return out_def.unflatten(take(leaves))
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_merge", e)
        raise
