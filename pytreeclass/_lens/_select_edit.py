"""Rebuilding a tree around selected positions, and the terminals of a selection.

A runner (`runner`) rebuilds each node above a set of positions once, through the
node-kind table; every terminal (`get`, `set`, `apply`, `items`, `remove`, `insert_*`,
`set_items`) is a small function of the positions that hands the runner one function
per position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.core import Tracer
from jax.tree_util import keystr

from .._class._meta import meta_of
from .._nodes._node_codes import LEAF, node_code
from .._nodes._node_kind import NodeKind
from .._tree_util import ARRAY_TYPES, first_difference, leaf_repr, listing
from ._lens_walk import path_text
from ._select import Pos, Selection, is_leaf_pos

__all__ = [
    "Same",
    "edit",
    "is_single_leaf",
    "runner",
    "sel_apply",
    "sel_get",
    "sel_insert",
    "sel_items",
    "sel_remove",
    "sel_set",
    "sel_set_items",
    "token_key",
]


def runner(entries: list[tuple[tuple[Any, ...], bool, int]]) -> Callable[[Any, Any], Any]:
    """A function `(node, fns) -> node` with `fns[i]` applied at the hops of entry `i`
    (`fns` a list, or `Same(fn)` for one function everywhere).

    `entries` are `(hops, static, i)`; each node on the way is rebuilt once. Made once
    per plan (nested closures: a call runs no grouping, only reads, `fns` and rebuilds)."""
    ends = [e for e in entries if not e[0]]
    if ends:
        if len(entries) > 1:
            raise ValueError(
                "a selection holds a position and another one inside it; select one of them"
            )
        i = ends[0][2]
        return lambda node, fns: fns[i](node)
    groups: dict[Any, list[tuple[tuple[Any, ...], bool, int]]] = {}
    heads: dict[Any, tuple[NodeKind, Any]] = {}
    for hops, static, i in entries:
        kind, token = hops[0]
        key = token_key(token)
        if key not in groups:
            groups[key], heads[key] = [], (kind, token)
        groups[key].append((hops[1:], static, i))
    kind0 = next(iter(heads.values()))[0]
    stack = kind0.layered
    subs = []
    for key, sub in groups.items():
        kind, token = heads[key]
        static = all(not h and st for h, st, _ in sub)
        subs.append((token, runner(sub), static))

    def run(node: Any, fns: list[Any]) -> Any:
        new, statics, olds = [], [], []
        layers = None
        if stack and len(subs) > 1:  # many layers: take them apart at once
            layers = [v for _, v, _ in kind0.children(node)]
        for token, r, static in subs:
            if static:
                statics.append((token, r(getattr(node, token), fns)))
            else:
                old = kind0.child(node, token) if layers is None else layers[token]
                new.append((token, r(old, fns)))
                olds.append(old)
        # (a stack keeps the rows of a leaf that no layer changed, by identity)
        out = kind0.rebuild_rows(node, new, olds) if new else node
        for name, value in statics:
            out = kind0.put_static(out, name, value)
        return out

    tokens = [t for t, _, _ in subs]
    ends = [sub[0][2] for sub in groups.values() if len(sub) == 1 and not sub[0][0]]
    if kind0.list_like and tokens == list(range(len(tokens))) and len(ends) == len(tokens):
        width = len(tokens)

        def each(node: Any, fns: Any) -> Any:  # every item of a list: one pass
            if len(node) != width:  # pragma: no cover - plans are per structure
                return run(node, fns)
            if type(fns) is Same:
                fn = fns.fn
                return [fn(x) for x in node]
            return [fns[i](x) for i, x in zip(ends, node)]

        return each
    if len(subs) == 1 and not stack and not subs[0][2]:
        ((token, r, _),) = subs

        def one_child(node: Any, fns: Any) -> Any:  # one child on the way (a model's field)
            return kind0.rebuild(node, [(token, r(kind0.child(node, token), fns))])

        return one_child
    return run


class Same:
    """The `fns` of a runner where every position gets the same function (`apply`)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __getitem__(self, i: int) -> Callable[[Any], Any]:
        return self.fn


def edit(root: Any, entries: list[tuple[Pos | tuple[Any, ...], Callable[[Any], Any]]]) -> Any:
    """`root` with each function applied at its position (or at the hops given)."""
    spec, fns, seen = [], [], set()
    for p, fn in entries:
        hops, static = (p.hops, p.static) if isinstance(p, Pos) else (p, False)
        if static:  # a stack's static, reached through each layer: set once
            key = tuple((id(k), token_key(t)) for k, t in hops)
            if key in seen:
                continue
            seen.add(key)
        spec.append((hops, static, len(fns)))
        fns.append(fn)
    return runner(spec)(root, fns) if spec else root


def token_key(token: Any) -> Any:
    if isinstance(token, Tracer):
        return ("traced", id(token))
    try:
        hash(token)
    except TypeError:
        return ("id", id(token))
    return (type(token), token)


# -- terminals ---------------------------------------------------------------------------------


def sel_items(sel: Selection) -> list[tuple[tuple[Any, ...], Any]]:
    return [(q.keys, q.value) for p in sel.positions for q in p.items()]


def _focus_leaves(sel: Selection) -> tuple[Pos, list[Any], Any, list[bool]]:
    """The focus, its leaves and treedef, and which of them the selection covers."""
    focus = sel.focus
    if focus is None:  # pragma: no cover - a selection always starts from one position
        raise AssertionError("no focus")
    leaves, treedef = jax.tree_util.tree_flatten(focus.value)
    covered = [False] * len(leaves)
    for p in sel.positions:
        for q in p.items():
            lo = q.lo - focus.lo
            covered[lo : lo + q.n] = [True] * q.n
    return focus, leaves, treedef, covered


def sel_get(sel: Selection) -> Any:
    """The focus with every leaf the selection does not cover replaced by `None`."""
    focus, leaves, treedef, covered = _focus_leaves(sel)
    _check_whole_layers(sel, focus)
    return treedef.unflatten([x if s else None for x, s in zip(leaves, covered)])


def _check_whole_layers(sel: Selection, focus: Pos) -> None:
    """A stacked leaf is one array for all layers: `get()` can show it only when the
    selection covers it in every layer (its list twin would hold `None` for the rest)."""
    depth = len(focus.hops)
    rows: dict[int, set[tuple[Any, ...]]] = {}  # stacked leaf -> the layers covering it
    whole: set[int] = set()
    sample: dict[int, Pos] = {}
    for p in sel.positions:
        for q in p.items():
            picked = tuple(t for k, t in q.hops[depth:] if k.layered)
            span = range(q.lo - focus.lo, q.lo - focus.lo + q.n)
            if not picked:
                whole.update(span)
                continue
            for i in span:
                rows.setdefault(i, set()).add(picked)
                sample.setdefault(i, q)
    for i, got in rows.items():
        if i in whole:
            continue
        q = sample[i]
        node, lengths, at = focus.value, [], None
        for j, (kind, token) in enumerate(q.hops[depth:]):
            if kind.layered:
                lengths.append(kind.length(node))  # type: ignore[attr-defined]
                at = at or keystr(q.keys[: depth + j])
            node = kind.child(node, token)
        n = 1
        for m in lengths:
            n *= m
        traced = not all(type(t) is int for r in got for t in r)
        if traced or len(got) != n:
            held = "a layer picked by a traced index" if traced else f"{len(got)} layer(s)"
            raise ValueError(
                f"{path_text(sel.state, len(sel.state[1]))}.get(): the selection holds "
                f"{held} of the {n} of the stacked field at {at}, whose arrays hold every "
                "layer; one array cannot show the other layers as holes. Use .items() (one "
                "entry per layer), or take the layers first (model.at.blocks[i].get(), or "
                "[a:b]) and select inside them."
            )


_LEAF_TYPES = (*ARRAY_TYPES, int, float, complex, bool, str)


def is_single_leaf(v: Any) -> bool:
    return isinstance(v, _LEAF_TYPES) or node_code(v) == LEAF


def _is_none(x: Any) -> bool:
    return x is None


def sel_set(sel: Selection, value: Any) -> Any:
    """`set(value)`: a leaf (or None) for every position; a tree shaped like `get()`; or,
    when every position is a node, that node for every position."""
    state = sel.state
    if value is None or is_single_leaf(value):
        return edit(sel.root, [(p, _constant(value)) for p in sel.positions])
    focus, leaves, treedef, _ = _focus_leaves(sel)
    vals = _aligned(value, focus.value, treedef, leaves, state)
    if type(vals) is list:
        # Each position takes the part of `value` at its own hops from the focus (a
        # stack's layer: that row), so rows a selection does not hold stay as they are.
        fns = []
        depth = len(focus.hops)
        for p in sel.positions:
            part = value
            rel = p.hops[depth:]
            for j, (kind, token) in enumerate(rel):
                if part is None:
                    break
                last_static = p.static and j == len(rel) - 1
                part = getattr(part, token) if last_static else kind.child(part, token)
            if part is not None:
                fns.append((p, _keep_holes(part)))
        return edit(sel.root, fns)
    nodes = sel.positions
    if nodes and all(q.static or not is_leaf_pos(q) for q in nodes):  # nodes or statics
        return edit(sel.root, [(p, _constant(value)) for p in nodes])  # a node for each
    raise ValueError(
        f"{path_text(state, len(state[1]))}.set(): {vals}. Pass a single leaf (given to every "
        "selected leaf) or a tree shaped like .get(), where None keeps the leaf or subtree "
        "there."
    )


def _aligned(value: Any, focus: Any, treedef: Any, leaves: list[Any], state: Any) -> Any:
    """`value`'s leaves lined up with the focus's (None where it has a hole), or the
    message saying where `value` does not have the focus's structure."""
    vleaves, vdef = jax.tree_util.tree_flatten(value, is_leaf=_is_none)
    try:
        subtrees = vdef.flatten_up_to(focus)
    except (ValueError, TypeError):
        shape = treedef.unflatten([None] * treedef.num_leaves)
        diff = first_difference(shape, value).replace("tree 0", "the selection")
        return "the value does not match the selection's structure: " + diff.replace(
            "tree 1", "the value"
        )
    out: list[Any] = []
    n = len(leaves)
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
        return (
            f"the value has the leaf {leaf_repr(v)} at {at_path}, where the selection has {there}"
        )
    return out


def _keep_holes(part: Any) -> Callable[[Any], Any]:
    """A function putting `part` in place of a value, where `part` has no `None` hole."""

    def put(old: Any) -> Any:
        if _is_none(part) or is_single_leaf(part):
            return part
        return jax.tree.map(lambda v, x: x if v is None else v, part, old, is_leaf=_is_none)

    return put


def _constant(value: Any) -> Callable[[Any], Any]:
    return lambda _: value


def sel_apply(sel: Selection, fn: Callable[..., Any], with_path: bool) -> Any:
    if not with_path:
        return edit(sel.root, [(p, fn) for p in sel.positions])
    pairs = []
    for p in sel.positions:
        if p.view is not None:
            for q in p.items():
                pairs.append((q, _with_path(fn, q.keys)))
        else:
            pairs.append((p, _with_path(fn, p.keys)))
    return edit(sel.root, pairs)


def _with_path(fn: Callable[..., Any], keys: tuple[Any, ...]) -> Callable[[Any], Any]:
    return lambda x: fn(keys, x)


def _parent_groups(sel: Selection, verb: str) -> dict[tuple[Any, ...], list[Pos]]:
    """The selected items grouped by the hops of their parent (lists, tuples, dicts,
    stacks only)."""
    state = sel.state
    groups: dict[tuple[Any, ...], list[Pos]] = {}
    for p in sel.positions:
        for q in p.items():
            if not q.hops:
                raise TypeError(
                    f"{path_text(state, len(state[1]))}.{verb}(): the selection is the root "
                    "itself, which has no parent to take it from."
                )
            kind = q.hops[-1][0]
            if not kind.sequence:
                what = type(_parent_value(sel.root, q.hops)).__name__
                raise TypeError(
                    f"{path_text(state, len(state[1]))}.{verb}(): {keystr(q.keys)} is an item "
                    f"of a {what}, whose children are fixed (a field or an attribute). "
                    f"{verb}() works on items of lists, tuples, dicts and stacked fields; "
                    "to replace a field use .set(v) or .apply(fn)."
                )
            if verb != "remove" and not kind.sliceable:
                raise TypeError(
                    f"{path_text(state, len(state[1]))}.{verb}(): {keystr(q.keys)} is an item "
                    "of a dict, which has no order to insert into; build the dict with "
                    ".set(...) on its parent instead."
                )
            groups.setdefault(q.hops[:-1], []).append(q)
    return groups


def _parent_value(root: Any, hops: tuple[Any, ...]) -> Any:
    node = root
    for kind, token in hops[:-1]:
        node = kind.child(node, token)
    return node


def sel_remove(sel: Selection) -> Any:
    groups = _parent_groups(sel, "remove")
    fns = []
    for parent_hops, items in groups.items():
        kind = items[0].hops[-1][0]
        tokens = [q.hops[-1][1] for q in items]
        fns.append((parent_hops, _remover(kind, tokens)))
    return edit(sel.root, fns)


def _remover(kind: NodeKind, tokens: list[Any]) -> Callable[[Any], Any]:
    return lambda node: kind.remove(node, tokens)


def sel_insert(sel: Selection, x: Any, after: bool) -> Any:
    groups = _parent_groups(sel, "insert_after" if after else "insert_before")
    fns = []
    for parent_hops, items in groups.items():
        kind = items[0].hops[-1][0]
        at: dict[Any, tuple[list[Any], list[Any]]] = {}
        for q in items:
            new = x(q.value) if callable(x) and not _is_tree_value(x) else x
            before, behind = at.setdefault(q.hops[-1][1], ([], []))
            (behind if after else before).append(new)
        fns.append((parent_hops, _inserter(kind, at, sel.state)))
    return edit(sel.root, fns)


def _is_tree_value(x: Any) -> bool:
    """A callable that is a value to insert, not a function making one (a module)."""
    return meta_of(type(x)) is not None or node_code(x) not in (LEAF,)


def _inserter(kind: NodeKind, at: dict[Any, Any], state: Any) -> Callable[[Any], Any]:
    def run(node: Any) -> Any:
        try:
            return kind.insert(node, at)
        except ValueError as e:  # a stack's new layer that does not stack
            raise ValueError(f"{path_text(state, len(state[1]))}: {e}") from None

    return run


def sel_set_items(sel: Selection, mapping: Any) -> Any:
    state = sel.state
    by_key: dict[Any, Pos] = {}
    by_str: dict[str, Pos] = {}
    for p in sel.positions:
        for q in p.items():
            by_key[q.keys] = q
            by_str[keystr(q.keys)] = q
    fns = []
    for k, v in dict(mapping).items():
        q = by_str.get(k) if isinstance(k, str) else by_key.get(tuple(k))
        if q is None:
            shown = listing(by_str, 10)
            raise KeyError(
                f"{path_text(state, len(state[1]))}.set_items(): {k!r} is not a key path this "
                f"lens selects; it selects: {shown}. Use the paths .items() or .paths() give."
            )
        fns.append((q, _constant(v)))
    return edit(sel.root, fns)
