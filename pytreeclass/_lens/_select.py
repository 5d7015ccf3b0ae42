"""The selection engine: what a lens path selects, and every terminal on it.

A selection is the ordered list of *positions* its steps focus on, each found from the
root: its value, the hops that lead to it (to rebuild the tree around a new value) and
its key path. Steps map positions to positions, in any order:

* `.name` / `["key"]` / `[i]` (negative too) move to that child; a static attribute
  (a static treeclass field, an Equinox static field, a Flax NNX attribute) is a
  position too, which only a terminal may follow;
* `[a:b]` takes a *view* of a list, a tuple or a stacked field: later `[i]`, `[a:b]`
  and `[...]` index the view, a name or a string key continues inside each item;
* `[...]` moves to every child; a stacked field's children are its layers;
* a traced `[i]` picks a layer of a stacked field;
* a filter keeps what it selects below each position, judged as `tree_mask` on the
  root judges it (the whole key path, every enclosing node, the kind from above); a
  filter naming a node type keeps the outermost matching nodes;
* `.nth(n)` keeps the n-th position.

The terminals (`get`, `set`, `apply`, `items`, `remove`, `insert_*`, `set_items`) are
small functions of the positions: an update rebuilds only the nodes above them, each
once, through the node-kind table (`_nodes`). When every step depends on structure alone
the positions' hops are cached per treedef (`_PLANS`): the cache holds tokens (field
names, indices, dict keys), never values, so each tree is read from its own nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.core import Tracer
from jax.tree_util import DictKey, SequenceKey

from .._cache import BoundedCache, strict_treedef
from .._class._kinds import foreign_kind
from .._class._meta import is_treeclass, meta_of
from .._errors import reraise_if_too_deep
from .._filters import Filter, Position
from .._leaf_facts import Leaves
from .._nodes import KINDS, NodeKind, StackKind
from .._tree_util import ARRAY_TYPES, first_difference, leaf_repr
from ._lens_steps import (
    ALL,
    LEAF,
    FilterStep,
    PathStep,
    SliceKey,
    TracedIndex,
    node_code,
)
from ._lens_walk import listing, path_text

__all__ = [
    "NthStep",
    "is_single_leaf",
    "planned_update",
    "Pos",
    "select",
    "sel_apply",
    "sel_get",
    "sel_insert",
    "sel_items",
    "sel_remove",
    "sel_set",
    "sel_set_items",
]


class NthStep:
    """`.nth(n)`: keep the n-th position of the selection (negative from the end)."""

    __slots__ = ("n",)
    multi = True

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f".nth({self.n})"

    def __eq__(self, other: object) -> bool:
        return type(other) is NthStep and other.n == self.n

    def __hash__(self) -> int:
        return hash(("nth", self.n))


class Pos:
    """A selected position: its value, the hops `(kind, token)` from the root to it, its
    JAX key path, the kind a field above gives it, the classes of the nodes around it,
    its leaves in the root's flatten (`lo`, `n`; `flat` False inside a stack's layer,
    whose leaves are rows), and what it is: a stacked field (`stack`), a view of items
    (`view`: the item tokens), or a static attribute (`static`)."""

    __slots__ = (
        *("flat", "hops", "keys", "kind", "lo", "n", "outer", "stack", "static", "td"),
        *("value", "view"),
    )

    def __init__(
        self,
        value: Any,
        hops: tuple[Any, ...],
        keys: tuple[Any, ...],
        kind: Any,
        outer: tuple[type, ...],
        lo: int,
        n: int,
        flat: bool = True,
        stack: StackKind | None = None,
        td: Any = None,
    ) -> None:
        self.value, self.hops, self.keys, self.kind, self.outer = value, hops, keys, kind, outer
        self.lo, self.n, self.flat, self.stack = lo, n, flat, stack
        self.td = jax.tree_util.tree_structure(value) if td is None else td
        self.static = False
        self.view: tuple[Any, ...] | None = None

    def node_kind(self) -> NodeKind:
        return self.stack if self.stack is not None else KINDS[node_code(self.value)]

    def items(self) -> list[Pos]:
        """A view's items; any other position is its own only item."""
        if self.view is None:
            return [self]
        kids = children(self)
        return [kids[t] for t in self.view]


def _num_leaves(x: Any) -> int:
    return jax.tree_util.tree_structure(x).num_leaves


def children(p: Pos) -> list[Pos]:
    """The child positions of `p` (a stacked field's are its layers)."""
    kind = p.node_kind()
    if kind.leaf or p.static:
        return []
    outer = (*p.outer, type(p.value))
    if p.stack is not None:  # layers: each has the stack's leaves, as rows
        return [
            Pos(v, (*p.hops, (kind, t)), (*p.keys, k), p.kind, p.outer, p.lo, p.n, False, td=p.td)
            for k, v, t in kind.children(p.value)
        ]
    fields = kind.fields(p.value)
    marker = None if p.kind is not None or fields is not None else foreign_kind(p.value)
    out, lo = [], p.lo
    subdefs = p.td.children()
    for j, (k, v, t) in enumerate(kind.children(p.value)):
        td = subdefs[j]
        n = td.num_leaves
        sub = p.kind
        stack = None
        if fields is not None:
            f = fields[t]
            if sub is None:
                sub = f.kind
            if f.stack is not None:
                stack = StackKind(_keystr((*p.keys, k)))
        elif sub is None:
            sub = marker
        out.append(Pos(v, (*p.hops, (kind, t)), (*p.keys, k), sub, outer, lo, n, p.flat, stack, td))
        lo += n
    return out


def _keystr(keys: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(keys)


# -- steps ---------------------------------------------------------------------------------


def _match(step: PathStep, kids: list[Pos], seq: bool) -> Pos | None:
    """The child a `.name`, `["key"]` or `[i]` step names among `kids`, or None."""
    key, attr = step.key, step.attr
    if type(key) is str:
        for c in kids:
            k = c.keys[-1]
            if getattr(k, "name", None) == key or (not attr and getattr(k, "key", _NO) == key):
                return c
        return None
    if attr or type(key) is not int:
        return None
    if seq:
        n = len(kids)
        i = key + n if key < 0 else key
        return kids[i] if 0 <= i < n else None
    for c in kids:  # a dict or a foreign node keyed by ints
        if getattr(c.keys[-1], "key", _NO) == key:
            return c
    return None


_NO = object()


def _is_seq(p: Pos) -> bool:
    """Are `p`'s children positional (a list, a tuple, a stack's layers, a generic node
    keyed by position)?"""
    if p.node_kind().positional:
        return True
    kids = children(p)
    return bool(kids) and type(kids[0].keys[-1]) is SequenceKey


def _static_pos(p: Pos, name: Any) -> Pos | None:
    kind = p.node_kind()
    if p.stack is not None or p.static or type(name) is not str or not kind.static(p.value, name):
        return None
    value = getattr(p.value, name)
    # A static attribute inside a stack's layer is the stacked node's own, shared by
    # every layer: its hops skip the layer, so setting it sets it for all of them.
    hops = tuple(h for h in p.hops if not isinstance(h[0], StackKind))
    keys = (*p.keys, jax.tree_util.GetAttrKey(name))
    q = Pos(value, (*hops, (kind, name)), keys, p.kind, (*p.outer, type(p.value)), p.lo, 0, p.flat)
    q.static = True
    return q


def _view(p: Pos, s: slice) -> Pos:
    """A view of the items `s` picks: of `p`'s children, or of a view's items."""
    if p.view is not None:
        picked = p.view[s]
    else:
        n = p.stack.length(p.value) if p.stack is not None else len(p.value)
        picked = tuple(range(n)[s])
    q = Pos(p.value, p.hops, p.keys, p.kind, p.outer, p.lo, p.n, p.flat, p.stack, p.td)
    q.view = tuple(picked)
    return q


def _layer(p: Pos, index: Any) -> Pos:
    """Layer `index` (an int or a tracer) of the stacked field at `p`."""
    kind = p.stack
    assert kind is not None
    from .._stack import take

    value = take(p.value, (index,))
    keys = (*p.keys, SequenceKey(index) if type(index) is int else TracedKey(index))
    return Pos(value, (*p.hops, (kind, index)), keys, p.kind, p.outer, p.lo, p.n, False, td=p.td)


class TracedKey:
    """The key of a layer picked by a traced index (`SequenceKey` needs an int)."""

    __slots__ = ("idx",)

    def __init__(self, idx: Any) -> None:
        self.idx = idx

    def __str__(self) -> str:
        return "[<traced>]"

    __repr__ = __str__


class Selection:
    """The positions of a path, found from the root, and the index of its first multi
    step (where `get()`'s focus is)."""

    __slots__ = ("focus", "positions", "root", "state")

    def __init__(self, root: Any, positions: list[Pos], focus: Pos | None, state: Any) -> None:
        self.root, self.positions, self.focus, self.state = root, positions, focus, state


def _step_error(step: Any, state: Any, at: int, seen: list[Any], keyed: bool) -> Exception:
    names = listing(dict.fromkeys(_keystr((k,)) for k in seen))
    return step.error(
        f"{path_text(state, at + 1)}: no child {step!r} under any selected node; children "
        f"there: {names}",
        mapping=keyed,
    )


def _single_error(p: Pos, step: PathStep, state: Any, at: int) -> Exception:
    """The walk's error for a missing child of one position (it names what is there)."""
    from ._lens_walk import step_into

    try:
        step_into(p.value, step, state, at)
    except (AttributeError, KeyError, IndexError, TypeError) as e:
        return e
    return step.error(f"{path_text(state, at + 1)}: no such child")  # pragma: no cover


def select(root: Any, steps: tuple[Any, ...], state: Any, split: int) -> Selection:
    """Follow `steps` from `root`; the selection they make."""
    try:
        return _select(root, steps, state, split)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("lens", e)
        raise


def _select(root: Any, steps: tuple[Any, ...], state: Any, split: int) -> Selection:
    ctx: Leaves | None = None
    td = jax.tree_util.tree_structure(root)
    cur = [Pos(root, (), (), None, (), 0, td.num_leaves, td=td)]
    focus: Pos | None = None
    single = True  # one position, reached by single steps only
    pending: tuple[bool, ...] | None = None  # a leaf filter's mask, applied at the end
    leafwise = any(s is ALL or type(s) is FilterStep for s in steps)
    nodewise = any(type(s) is FilterStep and s.filter.node_types for s in steps)
    for j, step in enumerate(steps):
        if j == split:
            focus = cur[0] if len(cur) == 1 else None
        if any(p.static for p in cur):
            raise TypeError(
                f"{path_text(state, j + 1)}: {path_text(state, j)} is a static attribute (static "
                "fields hold configuration, not a subtree): a path can only end there "
                "(with .get(), .set(v) or .apply(fn))."
            )
        t = type(step)
        if t is FilterStep:
            # A filter of leaves narrows what the path selects wherever it stands (so
            # `[Parameter].layers` = `.layers[Parameter]`); one naming node types moves
            # to the outermost matching nodes.
            if ctx is None:
                ctx = Leaves(root)
            f = step.filter
            mask = f.mask(ctx)
            if pending is not None:
                mask = tuple(a and b for a, b in zip(mask, pending))
            if f.node_types:
                found: list[Pos] = []
                for p in cur:
                    for q in p.items():
                        _search(q, f, mask, found)
                cur, pending = found, None
            else:
                pending = mask
            single = False
            continue
        if t is NthStep:
            if pending is not None:
                cur, pending = _expand(cur, pending), None
            flat = [q for p in cur for q in p.items()]
            n = step.n + len(flat) if step.n < 0 else step.n
            cur = [flat[n]] if 0 <= n < len(flat) else []
            single = False
            continue
        if step is ALL:
            cur = [c for p in cur for c in (p.items() if p.view is not None else children(p))]
            single = False
            continue
        key = step.key
        if type(key) is SliceKey:
            out = []
            for p in cur:
                if key.slice.step == 0:
                    raise ValueError(
                        f"{path_text(state, j + 1)}: slice step cannot be zero; write a step "
                        "such as 1, 2 or -1."
                    )
                if p.view is not None or p.node_kind().sliceable:
                    out.append(_view(p, key.slice))
                elif single:
                    from ._lens_walk import slice_child

                    slice_child(p.value, p.node_kind().code, key.slice, state, j)
            cur = out
            continue
        if type(key) is TracedIndex:
            out = []
            for p in cur:
                if p.stack is None:
                    raise _single_error(p, step, state, j)
                out.append(_layer(p, key.value))
            cur = out
            continue
        out, seen, keyed = [], [], False
        for p in cur:
            if p.view is not None and (type(key) is str or step.attr):
                targets = p.items()  # a name after a slice: inside each item
            else:
                targets = [p]
            for q in targets:
                if q.stack is not None and type(key) is int and not step.attr:
                    n = q.stack.length(q.value)
                    i = key + n if key < 0 else key
                    if not 0 <= i < n:
                        if single and len(cur) == 1:
                            raise IndexError(
                                f"{path_text(state, j + 1)}: index out of range (the stack "
                                f"{path_text(state, j)} has {n} layers)"
                            )
                        continue
                    out.append(_layer(q, i))
                    continue
                if q.view is not None:  # [i] of a view
                    kids = q.items()
                    c = _match(step, kids, True)
                else:
                    kids = children(q)
                    c = _match(step, kids, _is_seq(q))
                if c is None:
                    c = _static_pos(q, key)
                if c is not None:
                    out.append(c)
                    continue
                if single and len(cur) == 1:
                    raise _single_error(q, step, state, j)
                seen.extend(k.keys[-1] for k in kids)
                keyed = keyed or any(type(k.keys[-1]) is DictKey for k in kids)
        if not out and cur:
            raise _step_error(step, state, j, seen, keyed)
        cur = out
    if split < 0 or split >= len(steps):
        focus = cur[0] if len(cur) == 1 else focus
    if pending is not None or (leafwise and not nodewise):
        # Without a node-type filter, `[...]` and filters select leaves: the terminals
        # work on the leaves under the positions (`model.at.layers[...].apply(f)` calls
        # `f` per leaf); a node-type filter makes the positions themselves the elements.
        cur = _expand(cur, (True,) * td.num_leaves if pending is None else pending)
    else:
        cur = [q for p in cur for q in p.items()]  # a view's items, one by one
    return Selection(root, cur, focus, state)


def _expand(cur: list[Pos], mask: tuple[bool, ...]) -> list[Pos]:
    """The leaves under the positions that `mask` selects."""
    found: list[Pos] = []
    for p in cur:
        for q in p.items():
            _leaves(q, mask, found)
    return found


def _is_leaf(p: Pos) -> bool:
    return p.stack is None and node_code(p.value) == LEAF


def _search(p: Pos, f: Filter, mask: tuple[bool, ...], out: list[Pos]) -> bool:
    """Add to `out` what `f` selects in `p`; True if it holds for all of `p`."""
    if _is_leaf(p):
        ok = bool(p.n) and mask[p.lo]
        if ok:
            out.append(p)
        return ok
    ok = f.node_test(Position(type(p.value), p.keys, p.kind, p.outer)) is not False
    start = len(out)
    for c in children(p):
        ok = _search(c, f, mask, out) and ok  # every child is searched
    if ok and p.stack is None:
        try:
            anchored = issubclass(type(p.value), f.node_types)
        except TypeError:
            anchored = False
        if anchored:
            del out[start:]
            out.append(p)
    return ok


def _leaves(p: Pos, mask: tuple[bool, ...], out: list[Pos]) -> None:
    """Add to `out` the leaves under `p` that `mask` selects (a stack's: per layer, as
    its list twin's)."""
    todo = [p]  # iterative, in tree order: deep trees cost no recursion of ours
    while todo:
        p = todo.pop()
        if p.static:  # a static attribute is an element of its own (it has no leaves)
            out.append(p)
        elif not any(mask[p.lo : p.lo + p.n]):
            continue  # nothing selected below: no need to take it apart
        elif _is_leaf(p):
            out.append(p)
        else:
            todo.extend(reversed(children(p)))


# -- rebuilding along hops ---------------------------------------------------------------------


_END = object()


def runner(entries: list[tuple[tuple[Any, ...], bool, int]]) -> Callable[[Any, list[Any]], Any]:
    """A function `(node, fns) -> node` with `fns[i]` applied at the hops of entry `i`.

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
        key = _token_key(token)
        if key not in groups:
            groups[key], heads[key] = [], (kind, token)
        groups[key].append((hops[1:], static, i))
    kind0 = next(iter(heads.values()))[0]
    stack = isinstance(kind0, StackKind)
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
        if stack:  # rows a layer kept as taken stay the stack's own (by identity)
            out = kind0.rebuild_rows(node, new, olds) if new else node  # type: ignore[attr-defined]
        else:
            out = kind0.rebuild(node, new) if new else node
        for name, value in statics:
            out = kind0.put_static(out, name, value)
        return out

    tokens = [t for t, _, _ in subs]
    ends = [sub[0][2] for sub in groups.values() if len(sub) == 1 and not sub[0][0]]
    if kind0.list_like and tokens == list(range(len(tokens))) and len(ends) == len(tokens):
        width = len(tokens)

        def each(node: Any, fns: list[Any]) -> Any:  # every item of a list: one pass
            if len(node) != width:  # pragma: no cover - plans are per structure
                return run(node, fns)
            return [fns[i](x) for i, x in zip(ends, node)]

        return each
    return run


def _edit(root: Any, entries: list[tuple[Pos | tuple[Any, ...], Callable[[Any], Any]]]) -> Any:
    """`root` with each function applied at its position (or at the hops given)."""
    spec, fns, seen = [], [], set()
    for p, fn in entries:
        hops, static = (p.hops, p.static) if isinstance(p, Pos) else (p, False)
        if static:  # a stack's static, reached through each layer: set once
            key = tuple((id(k), _token_key(t)) for k, t in hops)
            if key in seen:
                continue
            seen.add(key)
        spec.append((hops, static, len(fns)))
        fns.append(fn)
    return runner(spec)(root, fns) if spec else root


def _token_key(token: Any) -> Any:
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
    _, leaves, treedef, covered = _focus_leaves(sel)
    return treedef.unflatten([x if s else None for x, s in zip(leaves, covered)])


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
        return _edit(sel.root, [(p, _constant(value)) for p in sel.positions])
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
        return _edit(sel.root, fns)
    nodes = sel.positions
    if nodes and all(q.static or not _is_leaf(q) for q in nodes):  # nodes or statics
        return _edit(sel.root, [(p, _constant(value)) for p in nodes])  # a node for each
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
        count = _num_leaves(sub)
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
        return _edit(sel.root, [(p, fn) for p in sel.positions])
    pairs = []
    for p in sel.positions:
        if p.view is not None:
            for q in p.items():
                pairs.append((q, _with_path(fn, q.keys)))
        else:
            pairs.append((p, _with_path(fn, p.keys)))
    return _edit(sel.root, pairs)


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
                    f"{path_text(state, len(state[1]))}.{verb}(): {_keystr(q.keys)} is an item "
                    f"of a {what}, whose children are fixed (a field or an attribute). "
                    f"{verb}() works on items of lists, tuples, dicts and stacked fields; "
                    "to replace a field use .set(v) or .apply(fn)."
                )
            if verb != "remove" and not kind.sliceable:
                raise TypeError(
                    f"{path_text(state, len(state[1]))}.{verb}(): {_keystr(q.keys)} is an item "
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
    return _edit(sel.root, fns)


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
    return _edit(sel.root, fns)


def _is_tree_value(x: Any) -> bool:
    """A callable that is a value to insert, not a function making one (a module)."""
    return meta_of(type(x)) is not None or node_code(x) not in (LEAF,)


def _inserter(kind: NodeKind, at: dict[Any, Any], state: Any) -> Callable[[Any], Any]:
    if isinstance(kind, StackKind):

        def run_stack(node: Any) -> Any:
            from .._stack import tree_stack

            layers = [c for _, c, _ in kind.children(node)]
            out = []
            for i, layer in enumerate(layers):
                before, after = at.get(i, ((), ()))
                out.extend(before)
                out.append(layer)
                out.extend(after)
            try:
                return tree_stack(out)
            except ValueError as e:
                raise ValueError(
                    f"{path_text(state, len(state[1]))}: the inserted layer does not stack with "
                    f"the others: {e}"
                ) from None

        return run_stack
    return lambda node: kind.insert(node, at)  # type: ignore[attr-defined]


def sel_set_items(sel: Selection, mapping: Any) -> Any:
    state = sel.state
    by_key: dict[Any, Pos] = {}
    by_str: dict[str, Pos] = {}
    for p in sel.positions:
        for q in p.items():
            by_key[q.keys] = q
            by_str[_keystr(q.keys)] = q
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
    return _edit(sel.root, fns)


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
        stacks = any(isinstance(h[0], StackKind) for p in ps for h in p.hops)
        self.shapes = _shapes(leaves) if stacks else None
        self.count = len(ps)
        flat = all(p.flat and not p.static and _is_leaf(p) for p in ps)
        self.indices = tuple(p.lo for p in ps) if flat and ps else None
        self.run = None
        if self.indices is None and ps:
            spec, seen = [], set()
            for p in ps:
                key = tuple((id(k), _token_key(t)) for k, t in p.hops)
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
        return self.run(root, [fn] * self.count)  # type: ignore[misc]


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
