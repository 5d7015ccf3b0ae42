"""Per-leaf facts that the enclosing fields decide (kinds, sharding axes), cached per treedef.

`leaf_kinds` and `leaf_axes` walk a tree the same way: through treeclass fields by name,
through any other pytree node down to its leaves or to the next node that carries fields
of its own. They differ only in what a treeclass field passes down (the outermost `kind`
wins, the innermost `axes` win), so each keeps its own treeclass step and shares the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from ._cache import BoundedCache

__all__ = ["descend", "resolve"]

Walk = Callable[[Any, Any, list[Any]], None]


def descend(node: Any, value: Any, out: list[Any], walk: Walk, stop: Callable[[Any], bool]) -> None:
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
