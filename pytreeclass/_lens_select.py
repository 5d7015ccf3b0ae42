"""Multi-leaf lens updates: which leaves of the focus a path of `[...]` and filters selects.

The first `[...]` or filter in a lens path ends the walk; the subtree reached is the
*focus*. Its leaves come from one flatten, the selection is a tuple of bools over them
(cached per treedef when every step depends on structure alone), and the update is one
unflatten of the focus plus a rebuild of the nodes above it.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.tree_util import DictKey

from ._cache import BoundedCache
from ._errors import reraise_if_too_deep
from ._kinds import foreign_kind
from ._leaf_facts import Leaves
from ._lens_steps import (
    ALL,
    LEAF,
    STACK,
    TREECLASS,
    FilterStep,
    SliceKey,
    node_code,
)
from ._lens_walk import (
    listing,
    match,
    rebuild,
    walk_focus,
    where,
)
from ._meta import meta_of
from ._tree_util import ARRAY_TYPES, first_difference, leaf_repr, one_level

__all__ = ["aligned", "is_single_leaf", "outer_kind", "put_focus", "select_focus"]

_SELECTIONS = BoundedCache(maxsize=4096)


def outer_kind(trail: list[tuple[Any, int, Any]]) -> Any:
    """The kind every leaf of the focus has because of a field (or marker) above it."""
    for parent, code, token in trail:
        if code >= STACK:  # stack rows and views add no kind
            continue
        if code == TREECLASS:
            kind = meta_of(type(parent)).fields_by_name[token].kind  # type: ignore[union-attr]
        else:
            kind = foreign_kind(parent)
        if kind is not None:
            return kind
    return None


def _focus_mask(
    focus: Any, steps: tuple[Any, ...], outer: Any, state: tuple[Any, Any, int], at: int
) -> tuple[Leaves, tuple[bool, ...]]:
    """Flatten the focus and say which of its leaves `steps` (all after the walk) select."""
    ctx = Leaves(focus)
    if outer is not None:
        ctx.kinds = (outer,) * len(ctx.leaves)
    cacheable = all(type(s) is not FilterStep or s.filter.structural for s in steps)
    key = (ctx.treedef, outer, steps) if cacheable else None
    if key is not None:
        sel = _SELECTIONS.get(key)
        if sel is not None:
            return ctx, sel
    sel = [True] * len(ctx.leaves)
    cursors = [(focus, ctx.treedef, 0)]  # selected nodes: (node, treedef, first leaf)
    for j, step in enumerate(steps):
        if type(step) is FilterStep:
            sel = [a and b for a, b in zip(sel, step.filter.mask(ctx))]
            continue
        found, seen, sliced, keyed = [], [], False, False
        for node, treedef, lo in cursors:
            level = one_level(node)
            if level is None or not level[1]:  # a leaf or an empty node: nothing to select
                continue
            keys, children, _ = level
            subdefs = treedef.children()
            starts = []
            for sub in subdefs:
                starts.append(lo)
                lo += sub.num_leaves
            if step is ALL:
                found.extend(zip(children, subdefs, starts))
                continue
            if type(step.key) is SliceKey:  # after a multi step: narrows to those items
                if isinstance(node, (list, tuple)):
                    sliced = True
                    picked = range(len(children))[step.key.slice]
                    found.extend((children[c], subdefs[c], starts[c]) for c in picked)
                continue
            seen.extend(keys)
            keyed = keyed or any(type(k) is DictKey for k in keys)
            c = match(step, node, keys)
            if c is not None:
                found.append((children[c], subdefs[c], starts[c]))
        if not found and cursors and step is not ALL and not sliced:
            names = dict.fromkeys(jax.tree_util.keystr((k,)) for k in seen)
            metas = [meta_of(type(n)) for n, _, _ in cursors]
            hint = ""
            owners = [
                type(n).__name__
                for (n, _, _), m in zip(cursors, metas)
                if m is not None and step.key in m.static_names
            ]
            if owners:
                one = where(state, at + j + 1).replace("[...]", "[0]")
                hint = (
                    f"; {step!r} is a static field, which a selection of leaves does not "
                    f"reach: select the nodes by type, e.g. "
                    f".at[ptc.OfType({owners[0]})]{step!r}, or update one path at a "
                    f"time, e.g. {one}"
                )
            raise step.error(
                f"{where(state, at + j + 1)}: no child {step!r} under any selected node; "
                f"children there: {listing(names)}{hint}",
                mapping=keyed,
            )
        cursors = found
    inside = [False] * len(sel)
    for _, treedef, lo in cursors:
        inside[lo : lo + treedef.num_leaves] = [True] * treedef.num_leaves
    out = tuple(a and b for a, b in zip(sel, inside))
    if key is not None:
        _SELECTIONS.put(key, out)
    return ctx, out


def _is_none(x: Any) -> bool:
    return x is None


_LEAF_TYPES = (*ARRAY_TYPES, int, float, complex, bool, str)


def is_single_leaf(v: Any) -> bool:
    if isinstance(v, _LEAF_TYPES):
        return True
    return node_code(v) == LEAF


def aligned(value: Any, ctx: Leaves, state: tuple[Any, Any, int]) -> list[Any]:
    """`value`'s leaves lined up with the focus's leaves (None where it has a hole)."""
    vleaves, vdef = jax.tree_util.tree_flatten(value, is_leaf=_is_none)
    fix = (
        "Pass a single leaf (given to every selected leaf) or a tree shaped like .get(), "
        "where None keeps the leaf or subtree there."
    )
    try:
        subtrees = vdef.flatten_up_to(ctx.tree)
    except (ValueError, TypeError):
        shape = ctx.treedef.unflatten([None] * ctx.treedef.num_leaves)
        diff = first_difference(shape, value).replace("tree 0", "the selection")
        raise ValueError(
            f"{where(state, len(state[1]))}.set(): the value does not match the "
            f"selection's structure: {diff.replace('tree 1', 'the value')}. {fix}"
        ) from None
    leaves, n = ctx.leaves, len(ctx.leaves)
    out: list[Any] = []
    for j, (v, sub) in enumerate(zip(vleaves, subtrees)):
        k = len(out)
        if k < n and sub is leaves[k]:
            out.append(v)
            continue
        count = jax.tree_util.tree_structure(sub).num_leaves
        if v is None:
            out.extend([None] * count)
            continue
        pairs = jax.tree_util.tree_flatten_with_path(value, is_leaf=_is_none)[0]
        at_path = jax.tree_util.keystr(pairs[j][0]) or "its root"
        there = (
            "an empty node (None or an empty container)"
            if count == 0
            else f"a subtree with {count} leaves"
        )
        raise ValueError(
            f"{where(state, len(state[1]))}.set(): the value has the leaf "
            f"{leaf_repr(v)} at {at_path}, where the selection has {there}. {fix}"
        )
    return out


def select_focus(state: tuple[Any, Any, int]) -> tuple[list[Any], Leaves, tuple[bool, ...]]:
    """Walk to the focus, then select its leaves: `(trail to the focus, leaves, selection)`."""
    root, steps, split = state
    trail: list[Any] = []
    node = walk_focus(root, steps[:split], state, trail)  # stack rows: written back
    try:
        ctx, sel = _focus_mask(node, steps[split:], outer_kind(trail), state, split)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("lens", e)
        raise
    return trail, ctx, sel


def put_focus(trail: list[Any], ctx: Leaves, leaves: list[Any]) -> Any:
    value = ctx.treedef.unflatten(leaves)
    for parent, code, token in reversed(trail):
        value = rebuild(parent, code, token, value)
    return value
