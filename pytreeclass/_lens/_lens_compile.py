"""Compiled lens updates: straight-line code for one lens path and the node types it meets.

`Lens.set` and `Lens.apply` first try the function `compile_put` wrote for their path; it
returns `MISS` when the tree is not shaped as it was written for, and the general walk in
`_lens_walk` (`put`) takes over. Each node kind writes the code of its own hop
(`NodeKind.compile_hop`): treeclasses, lists, tuples, dicts and dataclass-like modules
(Equinox, flax.struct) do, which is what model paths (`model.layers[3].w`) are made of.
"""

from __future__ import annotations

from typing import Any

from .._class._meta import FLAT, check_static, drop_derived
from .._codegen import compile_function

__all__ = ["MISS", "compile_put"]

MISS = object()  # what a compiled update returns when the tree is not shaped as it expects


def compile_put(steps: tuple[Any, ...], trail: list[Any]) -> Any:
    """A function `(root, value, fn) -> new root` for the node types along `trail`, or None.

    A lens path is interned, so an update through it usually meets the same node types
    every time. This writes the walk and the rebuild out as straight-line code with one
    `type(n) is T` guard per hop (no loop, no dispatch, no trail list); it returns `MISS`
    as soon as a node's type, a list's length or a dict's keys differ from what it was
    written for, and the caller then takes the general path (which raises the errors).
    """
    if not 0 < len(trail) <= 32:
        return None  # a long path is rare, and straight-line code for it is long too
    last, kind, key = trail[-1]
    fields = kind.fields(last)
    if fields is not None and fields[key].stack is not None:
        return None  # a whole stack is checked as it is set (`_lens_walk.put`)
    ns: dict[str, Any] = {
        "_MISS": MISS,
        "_new": object.__new__,
        "_FLAT": FLAT,
        "_check": check_static,
        "_drop": drop_derived,
    }
    walk_lines, back, fetch = [], [], ""
    for j, ((node, kind, _), step) in enumerate(zip(trail, steps)):
        ns[f"_t{j}"], ns[f"_k{j}"] = type(node), step.key
        hop = kind.compile_hop(j, node, step, ns)
        if hop is None:
            return None  # a hop of a kind that is not compiled: the walk runs
        lines, fetch, rebuild = hop
        walk_lines.append(f"    if type(n{j}) is not _t{j}: return _MISS")
        walk_lines.extend(lines)
        back.append(rebuild)
        if j < len(trail) - 1:  # the last node is only read by `fn`: no fetch for `set`
            walk_lines.append(f"    n{j + 1} = {fetch}")
    source = "\n".join(
        [
            "def update(n0, value, fn):",
            *walk_lines,
            f"    if fn is not None: value = fn({fetch})",
            *reversed(back),
            "    return value",
        ]
    )
    return compile_function("update", source + "\n", ns, "a lens path")
