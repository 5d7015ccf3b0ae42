"""Plans: a selection's update made once per tree structure, then reused.

When every step of a path depends on structure alone (no value-dependent filter, no
traced index), what an update through it does is cached per treedef: the flat indices
of the selected leaves, or a runner (`_select_edit.runner`) over the positions' hops.
A plan holds node kinds and tokens (field names, indices, dict keys), never values, so
each tree is read from its own nodes; a plan that passes a stacked field also keeps the
shapes it was made for, since layer counts are not in the treedef.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from .._cache import BoundedCache, strict_treedef
from .._class._meta import is_treeclass
from .._errors import reraise_if_too_deep
from ._lens_steps import FilterStep, PathStep, TracedIndex
from ._select import Selection, is_leaf_pos, select
from ._select_edit import Same, runner, token_key

__all__ = ["Plan", "is_plain", "planned_update"]


# Per (root treedef, steps): what an update through a structural path does. Holds hops
# (node kinds and tokens), never values; strict, since tokens hold the tree's dict keys.
_PLANS = BoundedCache(maxsize=4096, strict=is_treeclass)


class Plan:
    """A selection's update, made once per structure: either the flat indices of the
    selected leaves (one flatten and one unflatten of the root), or a runner."""

    __slots__ = ("count", "indices", "run", "shapes")

    def __init__(self, sel: Selection, leaves: list[Any]) -> None:
        ps = sel.positions
        # Layers of a stacked field are counted from array shapes, which the treedef
        # does not hold: such a plan also keeps the shapes it was made for.
        stacks = any(h[0].layered for p in ps for h in p.hops)
        self.shapes = _shapes(leaves) if stacks else None
        self.count = len(ps)
        flat = all(p.flat and not p.static and is_leaf_pos(p) for p in ps)
        self.indices = tuple(p.lo for p in ps) if flat and ps else None
        self.run = None
        if self.indices is None and ps:
            spec, seen = [], set()
            for p in ps:
                key = tuple((id(k), token_key(t)) for k, t in p.hops)
                if key not in seen:  # a stack's static, reached through each layer
                    seen.add(key)
                    spec.append((p.hops, p.static, len(spec)))
            self.count = len(spec)
            self.run = runner(spec)

    def fits(self, leaves: list[Any]) -> bool:
        return self.shapes is None or self.shapes == _shapes(leaves)

    def update(self, root: Any, fn: Callable[[Any], Any], flat: Any) -> Any:
        if not self.count:
            return root
        if self.indices is not None:
            leaves, treedef = flat
            leaves = list(leaves)
            for i in self.indices:
                leaves[i] = fn(leaves[i])
            return treedef.unflatten(leaves)
        return self.run(root, Same(fn))  # type: ignore[misc]


_flatten = jax.tree_util.default_registry.flatten


def _shapes(leaves: list[Any]) -> tuple[Any, ...]:
    return tuple(getattr(x, "shape", None) for x in leaves)


def is_plain(treedef: Any) -> bool:
    """Does `treedef` hold no dict keys or foreign aux data whose types `==` ignores
    (`1` vs `True`)? Treeclass statics compare by type already: a model's qualifies."""
    try:
        return strict_treedef(treedef, is_treeclass) is treedef
    except Exception:  # a structure it cannot rebuild (older jax): not plain, not memoised
        return False


def _cacheable(steps: tuple[Any, ...]) -> bool:
    for s in steps:
        t = type(s)
        if t is FilterStep and not s.filter.structural:
            return False
        if t is PathStep and type(s.key) is TracedIndex:
            return False
    return True


def planned_update(
    root: Any, steps: tuple[Any, ...], state: Any, split: int, fn: Any, memo: list[Any]
) -> Any:
    """`apply(fn)` on a selection, through a cached plan when the steps depend on the
    structure alone and pass no stacked field (whose lengths the treedef does not hold).

    `memo` is the lens path's own `[cacheable, (treedef, plan)]`: a path used on trees of
    one structure (the common case) finds its plan without the shared cache."""
    try:
        if memo[0] is None:
            memo[0] = _cacheable(steps)
        if not memo[0]:  # depends on values: a plan for this call only
            flat = _flatten(root)
            return Plan(select(root, steps, state, split), flat[0]).update(root, fn, flat)
        flat = _flatten(root)
        leaves, treedef = flat
        last = memo[1]  # one read: another thread may replace it meanwhile
        if last is not None and last[0] == treedef and last[1].fits(leaves):
            return last[1].update(root, fn, flat)
        key = (treedef, steps)
        plan = _PLANS.get(key)
        if plan is None or not plan.fits(leaves):
            plan = Plan(select(root, steps, state, split), leaves)
            _PLANS.put(key, plan)
        # The path's own memo takes only treedefs without dict keys or foreign aux data
        # (a model's): an `==`-equal treedef then has none either, so nothing `==` ignores.
        if is_plain(treedef):
            memo[1] = (treedef, plan)
        return plan.update(root, fn, flat)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("lens", e)
        raise
