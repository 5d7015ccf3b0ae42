"""Compiled lens updates: straight-line code for one lens path and the node types it meets.

`Lens.set` and `Lens.apply` first try the function `compile_put` wrote for their path; it
returns `MISS` when the tree is not shaped as it was written for, and the general walk in
`_lens_walk` (`put`) takes over. Treeclass, list, tuple, dict and dataclass-like (Equinox,
flax.struct) hops are compiled: they are what model paths (`model.layers[3].w`) are made of.
"""

from __future__ import annotations

from typing import Any

from .._class._meta import FLAT, check_static, drop_derived, meta_of
from .._codegen import compile_function
from ._lens_steps import (
    DATACLASS,
    DATACLASS_FIELDS,
    DICT,
    LIST,
    TREECLASS,
    TUPLE,
)

__all__ = ["MISS", "compile_put"]

MISS = object()  # what a compiled update returns when the tree is not shaped as it expects
_new = object.__new__


def _treeclass_rebuild(j: int, cls: type, name: str, static: bool) -> str:
    """The lines (of `compile_put`) that copy treeclass `n{j}` with field `name` set to `value`.

    The generated form of `_meta.with_field`; tests/test_layers.py checks they agree."""
    meta = meta_of(cls)
    assert meta is not None  # `compile_put` checked
    head = f"new = _new(_t{j}); o = n{j}.__dict__; d = new.__dict__"
    copy_all = [
        "d.update(o)",
        f"d[_k{j}] = value",
        f"d[_FLAT] = _f{j}(new)",
        # fields only: a derived value (cached_property) describes the old instance
        f"if len(d) > {meta.size}: _drop(d, _names{j})",
    ]
    if static or len(meta.child_names) > 16:
        lines = [f"_check(_t{j}, _k{j}, value)"] if static else []
        lines += [head, *copy_all, "value = new"]
        return "\n".join(f"    {line}" for line in lines)
    # The common case, written out: one store per field in field order (the key order
    # `__init__` makes, so instance dicts keep sharing one key table) and the new flatten
    # result is the old one with one child swapped. An instance being edited by
    # value_and_tree has no flatten result stored (and may lack a field): copy its dict.
    children = meta.child_names
    stores = []
    for f in meta.fields:
        if f.name == name:
            stores.append(f"d[{f.name!r}] = value")
        elif f.name in children:
            stores.append(f"d[{f.name!r}] = c[{children.index(f.name)}]")
        else:
            stores.append(f"d[{f.name!r}] = o[{f.name!r}]")
    i = children.index(name)
    items = "".join("value, " if k == i else f"c[{k}], " for k in range(len(children)))
    lines = [
        f"    {head}",
        "    try: c, s = o[_FLAT]",
        "    except KeyError:",
        *(f"        {line}" for line in copy_all),
        "    else:",
        *(f"        {line}" for line in stores),
        f"        d[_FLAT] = (({items}), s)",
        "    value = new",
    ]
    return "\n".join(lines)


def compile_put(steps: tuple[Any, ...], trail: list[Any]) -> Any:
    """A function `(root, value, fn) -> new root` for the node types along `trail`, or None.

    A lens path is interned, so an update through it usually meets the same node types
    every time. This writes the walk and the rebuild out as straight-line code with one
    `type(n) is T` guard per hop (no loop, no dispatch, no trail list); it returns `MISS`
    as soon as a node's type, a list's length or a dict's keys differ from what it was
    written for, and the caller then takes the general path (which raises the errors).
    """
    codes = (TREECLASS, LIST, TUPLE, DICT, DATACLASS)
    if not 0 < len(trail) <= 32 or any(code not in codes for _, code, _ in trail):
        return None  # a long path is rare, and straight-line code for it is long too
    ns: dict[str, Any] = {
        "_MISS": MISS,
        "_new": _new,
        "_FLAT": FLAT,
        "_check": check_static,
        "_drop": drop_derived,
    }
    last, code, key = trail[-1]
    if code == TREECLASS and meta_of(type(last)).fields_by_name[key].stack is not None:  # type: ignore[union-attr]
        return None  # a whole stack is checked as it is set (`_lens_walk.put`)
    walk_lines, back, fetch = [], [], ""
    for j, ((node, code, _), step) in enumerate(zip(trail, steps)):
        cls = type(node)
        ns[f"_t{j}"], ns[f"_k{j}"] = cls, step.key
        walk_lines.append(f"    if type(n{j}) is not _t{j}: return _MISS")
        if code == TREECLASS:
            meta = meta_of(cls)
            if meta is None:
                return None
            ns[f"_f{j}"], ns[f"_names{j}"] = meta.flatten, meta.fields_by_name
            fetch = f"n{j}.__dict__[_k{j}]"
            back.append(_treeclass_rebuild(j, cls, step.key, step.key in meta.static_names))
        elif code in (LIST, TUPLE):
            if step.key < 0:  # counted from the end: the index depends on the length
                walk_lines.append(f"    k{j} = _k{j} + len(n{j})")
                walk_lines.append(f"    if k{j} < 0: return _MISS")
            else:
                walk_lines.append(f"    k{j} = _k{j}")
                walk_lines.append(f"    if k{j} >= len(n{j}): return _MISS")
            fetch = f"n{j}[k{j}]"
            if code == LIST:
                back.append(f"    new = n{j}.copy(); new[k{j}] = value; value = new")
            else:
                back.append(f"    value = (*n{j}[:k{j}], value, *n{j}[k{j} + 1 :])")
        elif code == DATACLASS:  # Equinox modules, flax.struct: fields live in __dict__
            walk_lines.append(f"    o{j} = n{j}.__dict__")
            walk_lines.append(f"    if _k{j} not in o{j}: return _MISS")
            fetch = f"o{j}[_k{j}]"
            names = DATACLASS_FIELDS[cls]
            ns[f"_names{j}"] = names
            back.append(
                f"    new = _new(_t{j}); d = new.__dict__; d.update(o{j}); d[_k{j}] = value\n"
                f"    if len(d) > {len(names)}: _drop(d, _names{j})\n"
                "    value = new"
            )
        else:  # DICT; `in` first: a defaultdict would grow on n[key]
            walk_lines.append(f"    if _k{j} not in n{j}: return _MISS")
            fetch = f"n{j}[_k{j}]"
            back.append(f"    new = n{j}.copy(); new[_k{j}] = value; value = new")
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
