"""Compiled lens updates: straight-line code for one lens path and the node types it meets.

`Lens.set` and `Lens.apply` first try the function `compile_put` wrote for their path; it
returns `MISS` when the tree is not shaped as it was written for, and the general walk in
`_nodes` (`put`) takes over. Only treeclass, list and dict hops are compiled: they are what
model paths (`model.layers[3].w`) are made of.
"""

from __future__ import annotations

from typing import Any

from ._codegen import compile_function
from ._instance import FLAT, check_static

__all__ = ["MISS", "compile_put"]

MISS = object()  # what a compiled update returns when the tree is not shaped as it expects
_new = object.__new__


def _treeclass_rebuild(j: int, cls: type, name: str, static: bool) -> str:
    """The lines (of `compile_put`) that copy treeclass `n{j}` with field `name` set to `value`."""
    lines = [f"    _check(_t{j}, _k{j}, value)"] if static else []
    lines += [
        f"    new = _new(_t{j}); o = n{j}.__dict__; d = new.__dict__; d.update(o)",
        f"    d[_k{j}] = value",
    ]
    children = cls.__ptc_meta__.child_names  # type: ignore[attr-defined]
    if static or len(children) > 16:
        lines.append(f"    d[_FLAT] = _f{j}(new)")
    else:
        # The new flatten result is the old one with one child swapped: no flatten call.
        # An instance being edited has none stored (`seal`); then flatten the copy.
        i = children.index(name)
        items = "".join("value, " if k == i else f"c[{k}], " for k in range(len(children)))
        lines += [
            "    f = o.get(_FLAT)",
            f"    if f is None: d[_FLAT] = _f{j}(new)",
            f"    else: c = f[0]; d[_FLAT] = (({items}), f[1])",
        ]
    return "\n".join([*lines, "    value = new"])


def compile_put(steps: tuple[Any, ...], trail: list[Any]) -> Any:
    """A function `(root, value, fn) -> new root` for the node types along `trail`, or None.

    A lens path is interned, so an update through it usually meets the same node types
    every time. This writes the walk and the rebuild out as straight-line code with one
    `type(n) is T` guard per hop (no loop, no dispatch, no trail list); it returns `MISS`
    as soon as a node's type, a list's length or a dict's keys differ from what it was
    written for, and the caller then takes the general path (which raises the errors).
    """
    # Imported here, not at the top: `_nodes` re-exports this module's names for `_lens`,
    # so it imports us first. This runs once per path and root type, never per update.
    from ._nodes import DICT, LIST, TREECLASS

    if not 0 < len(trail) <= 32 or any(code not in (TREECLASS, LIST, DICT) for _, code, _ in trail):
        return None  # a long path is rare, and straight-line code for it is long too
    ns: dict[str, Any] = {"_MISS": MISS, "_new": _new, "_FLAT": FLAT, "_check": check_static}
    walk_lines, back = [], []
    for j, ((node, code, _), step) in enumerate(zip(trail, steps)):
        cls = type(node)
        ns[f"_t{j}"], ns[f"_k{j}"] = cls, step.key
        walk_lines.append(f"    if type(n{j}) is not _t{j}: return _MISS")
        if code == TREECLASS:
            meta = getattr(cls, "__ptc_meta__", None)
            if meta is None:
                return None
            ns[f"_f{j}"] = meta.flatten
            walk_lines.append(f"    n{j + 1} = n{j}.__dict__[_k{j}]")
            back.append(_treeclass_rebuild(j, cls, step.key, step.key in meta.static_names))
        elif code == LIST:
            fix = f" + len(n{j})" if step.key < 0 else ""
            walk_lines.append(f"    k{j} = _k{j}{fix}")
            walk_lines.append(f"    if not 0 <= k{j} < len(n{j}): return _MISS")
            walk_lines.append(f"    n{j + 1} = n{j}[k{j}]")
            back.append(f"    new = n{j}.copy(); new[k{j}] = value; value = new")
        else:  # DICT; `in` first: a defaultdict would grow on n[key]
            walk_lines.append(f"    if _k{j} not in n{j}: return _MISS")
            walk_lines.append(f"    n{j + 1} = n{j}[_k{j}]")
            back.append(f"    new = n{j}.copy(); new[_k{j}] = value; value = new")
    n = len(trail)
    source = "\n".join(
        [
            "def update(n0, value, fn):",
            *walk_lines,
            f"    if fn is not None: value = fn(n{n})",
            *reversed(back),
            "    return value",
        ]
    )
    return compile_function("update", source + "\n", ns, "a lens path")
