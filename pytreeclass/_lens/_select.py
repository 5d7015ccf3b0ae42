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

A position's children come from the node-kind table (`_nodes`), so no step switches on
the kind of node. The terminals (`_select_edit`) are small functions of the positions:
an update rebuilds only the nodes above them, each once; `_select_plans` caches what an
update does per tree structure.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.tree_util import DictKey, SequenceKey, keystr

from .._class._kinds import foreign_kind
from .._errors import reraise_if_too_deep
from .._filters import Filter, Position
from .._leaf_facts import Leaves
from .._nodes._node_codes import LEAF, node_code
from .._nodes._node_kind import NodeKind, child_index, keyed_by_position
from .._nodes._node_stack import StackKind
from .._nodes._node_table import kind_of
from .._tree_util import listing
from ._lens_steps import ALL, FilterStep, PathStep, SliceKey, TracedIndex
from ._lens_walk import missing, path_text, slice_items

__all__ = ["NthStep", "Pos", "Selection", "is_leaf_pos", "select"]


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
        return self.stack if self.stack is not None else kind_of(self.value)

    def items(self) -> list[Pos]:
        """A view's items; any other position is its own only item."""
        if self.view is None:
            return [self]
        kids = children(self)
        return [kids[t] for t in self.view]


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
                stack = StackKind(keystr((*p.keys, k)))
        elif sub is None:
            sub = marker
        out.append(Pos(v, (*p.hops, (kind, t)), (*p.keys, k), sub, outer, lo, n, p.flat, stack, td))
        lo += n
    return out


# -- steps ---------------------------------------------------------------------------------


def _match(step: PathStep, kids: list[Pos], seq: bool) -> Pos | None:
    """The child a `.name`, `["key"]` or `[i]` step names among `kids`, or None."""
    j = child_index(step, [c.keys[-1] for c in kids], seq)
    return None if j is None else kids[j]


def _is_seq(p: Pos) -> bool:
    """Are `p`'s children positional (a list, a tuple, a stack's layers, a generic node
    keyed by position)?"""
    if p.node_kind().positional:
        return True
    return keyed_by_position([c.keys[-1] for c in children(p)])


def _static_pos(p: Pos, name: Any) -> Pos | None:
    kind = p.node_kind()
    if p.stack is not None or p.static or type(name) is not str or not kind.static(p.value, name):
        return None
    value = getattr(p.value, name)
    # A static attribute inside a stack's layer is the stacked node's own, shared by
    # every layer: its hops skip the layer, so setting it sets it for all of them.
    hops = tuple(h for h in p.hops if not h[0].layered)
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
    names = listing(dict.fromkeys(keystr((k,)) for k in seen))
    return step.error(
        f"{path_text(state, at + 1)}: no child {step!r} under any selected node; children "
        f"there: {names}",
        mapping=keyed,
    )


def _single_error(p: Pos, step: PathStep, state: Any, at: int) -> Exception:
    """The walk's error for a missing child of one position (it names what is there)."""
    kind = kind_of(p.value)
    if kind.lookup(p.value, step) is None:
        return missing(p.value, kind, step, state, at)
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
                elif single:  # raises the walk's error: what is there cannot be sliced
                    slice_items(p.value, p.node_kind(), key.slice, state, j)
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


def is_leaf_pos(p: Pos) -> bool:
    """Is `p` a leaf (not a stacked field, not a node, not None)?"""
    return p.stack is None and node_code(p.value) == LEAF


def _search(p: Pos, f: Filter, mask: tuple[bool, ...], out: list[Pos]) -> bool:
    """Add to `out` what `f` selects in `p`; True if it holds for all of `p`."""
    if is_leaf_pos(p):
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
        elif is_leaf_pos(p):
            out.append(p)
        else:
            todo.extend(reversed(children(p)))
