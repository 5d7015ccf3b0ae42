"""Node selections in lenses: `model.at[ptc.OfType(Linear)].apply(to_lora)`.

A lens path whose filters name a node type selects *positions* of the focus, not leaves:
whole nodes (a `Linear`), and leaves where the selection reaches single leaves. Each step
after the walk maps the current positions to new ones:

* a filter naming node types searches each position top down and keeps the outermost
  nodes that are instances of one of them, where the filter holds for the node itself
  (its class, the nodes around it, its key path, the kind a field above gives it) and for
  every node and leaf below it; elsewhere it keeps the leaves it selects, so the leaves a
  node selection covers are exactly those `tree_mask` selects with the same filter;
* a filter of leaves only keeps the leaves it selects under each position;
* `[...]` moves to every child, `.name` / `["key"]` / `[i]` to that child where there is
  one; a node selection may end with a static field's name (`.inference`).

`apply(fn)` calls `fn` once per position and puts its result there (any value); `set(v)`
puts `v` at each. Only the nodes on the way to a position are rebuilt, each once however
many positions lie below it. Which positions a path selects is cached per treedef when
every filter depends on structure alone (kinds, names, node types of treeclasses and
Equinox modules); the cache holds only field names, indices and dict keys, so a tree that
merely compares equal to the one that warmed it is read and rebuilt from its own nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from ._cache import BoundedCache
from ._errors import reraise_if_too_deep
from ._filters import Position
from ._kinds import foreign_kind
from ._leaf_facts import Leaves
from ._lens_select import outer_kind
from ._lens_steps import (
    ALL,
    DATACLASS,
    DICT,
    GENERIC,
    LEAF,
    LIST,
    NAMEDTUPLE,
    NONE,
    SCATTER,
    STACK,
    TREECLASS,
    TUPLE,
    FilterStep,
    node_code,
)
from ._lens_walk import (
    listing,
    match,
    rebuild,
    walk_focus,
    where,
)
from ._meta import meta_of, with_field
from ._tree_util import one_level

__all__ = [
    "hop_key",
    "is_cacheable",
    "is_node_path",
    "node_get",
    "node_items",
    "node_update",
]

# `jax.tree_util.tree_flatten` minus its Python frame (the registry's flatten is C++).
_flatten = jax.tree_util.default_registry.flatten
_PLANS = BoundedCache(maxsize=4096)
_new = object.__new__


def is_node_path(steps: tuple[Any, ...]) -> bool:
    """Does a filter in `steps` name a node type (so the path selects nodes)?"""
    return any(type(s) is FilterStep and s.filter.node_types for s in steps)


class _Cursor:
    """A selected position of the focus: its value, the hops from the focus to it (as
    `(code, token)` for rebuilding and as JAX keys for showing), its leaves, its kind."""

    __slots__ = ("hops", "keys", "kind", "lo", "n", "outer", "static", "value")

    def __init__(
        self,
        value: Any,
        hops: tuple[Any, ...],
        keys: tuple[Any, ...],
        lo: int,
        n: int,
        kind: Any,
        outer: tuple[type, ...],
        static: bool = False,
    ) -> None:
        self.value, self.hops, self.keys, self.lo, self.n = value, hops, keys, lo, n
        self.kind, self.outer, self.static = kind, outer, static


def _token(code: int, key: Any, j: int) -> Any:
    """How `_child`/`_rebuild_many` name the child with JAX key `key` (at position `j`)."""
    if code in (TREECLASS, DATACLASS):
        return key.name
    if code == DICT:
        return key.key
    return j  # lists, tuples, namedtuples: the index; other nodes: the child's position


def _children(c: _Cursor) -> list[_Cursor]:
    node = c.value
    code = node_code(node)
    if code in (LEAF, NONE):
        return []
    level = one_level(node)
    if level is None:
        return []
    keys, children, _ = level
    meta = meta_of(type(node)) if code == TREECLASS else None
    fields = meta.fields_by_name if meta is not None else None
    marker = None if c.kind is not None or fields is not None else foreign_kind(node)
    outer = (*c.outer, type(node))
    out, lo = [], c.lo
    for j, (key, child) in enumerate(zip(keys, children)):
        n = jax.tree_util.tree_structure(child).num_leaves
        kind = c.kind
        if kind is None:
            kind = fields[key.name].kind if fields is not None else marker
        token = (code, _token(code, key, j))
        out.append(_Cursor(child, (*c.hops, token), (*c.keys, key), lo, n, kind, outer))
        lo += n
    return out


def _static_child(c: _Cursor, name: Any) -> _Cursor | None:
    """The cursor of a static field `name` of a treeclass or dataclass-like node, or None."""
    node = c.value
    code = node_code(node)
    if type(name) is not str:
        return None
    if code == TREECLASS:
        meta = meta_of(type(node))
        if meta is None or name not in meta.static_names:
            return None
    elif code == DATACLASS:
        import dataclasses

        if name not in {f.name for f in dataclasses.fields(node)}:
            return None
    else:
        return None
    value = getattr(node, name)
    hops, keys = (*c.hops, (code, name)), (*c.keys, GetAttrKey(name))
    return _Cursor(value, hops, keys, c.lo, 0, c.kind, (*c.outer, type(node)), static=True)


def _search(c: _Cursor, f: Any, mask: tuple[bool, ...], out: list[_Cursor]) -> bool:
    """Add to `out` the positions filter `f` selects in `c`; True if it holds for all of `c`."""
    if node_code(c.value) == LEAF:
        ok = mask[c.lo]
        if ok:
            out.append(c)
        return ok
    ok = f.node_test(Position(type(c.value), c.keys, c.kind, c.outer)) is not False
    start = len(out)
    for child in _children(c):
        ok = _search(child, f, mask, out) and ok  # every child is searched
    if ok:
        try:
            anchored = issubclass(type(c.value), f.node_types)
        except TypeError:
            anchored = False
        if anchored:
            del out[start:]
            out.append(c)
    return ok


def _static_error(state: tuple[Any, Any, int], at: int) -> Exception:
    return TypeError(
        f"{where(state, at + 1)}: {where(state, at)} selects static fields, which hold "
        "configuration, not a subtree: a node selection can only end there (with .get(), "
        ".set(v) or .apply(fn))."
    )


def _positions(
    focus: Any, steps: tuple[Any, ...], outer: Any, state: tuple[Any, Any, int], at: int
) -> tuple[Leaves, list[_Cursor]]:
    """The positions `steps` (all after the walk) select in `focus`."""
    ctx = Leaves(focus)
    if outer is not None:
        ctx.kinds = (outer,) * len(ctx.leaves)
    cursors = [_Cursor(focus, (), (), 0, len(ctx.leaves), outer, ())]
    for j, step in enumerate(steps):
        if any(c.static for c in cursors):
            raise _static_error(state, at + j)
        if type(step) is FilterStep:
            f = step.filter
            mask = f.mask(ctx)
            found: list[_Cursor] = []
            if f.node_types:
                for c in cursors:
                    _search(c, f, mask, found)
            else:
                for c in cursors:
                    _leaves(c, mask, found)
            cursors = found
            continue
        found, seen = [], []
        for c in cursors:
            children = _children(c)
            if step is ALL:
                found.extend(children)
                continue
            if not children and node_code(c.value) in (LEAF, NONE):
                continue
            keys = [k.keys[-1] for k in children]
            seen.extend(keys)
            i = match(step, c.value, keys)
            if i is not None:
                found.append(children[i])
                continue
            static = _static_child(c, step.key)
            if static is not None:
                found.append(static)
        if not found and cursors and step is not ALL:
            names = listing(dict.fromkeys(jax.tree_util.keystr((k,)) for k in seen))
            raise step.error(
                f"{where(state, at + j + 1)}: no child {step!r} under any selected node; "
                f"children there: {names}"
            )
        cursors = found
    return ctx, cursors


def _leaves(c: _Cursor, mask: tuple[bool, ...], out: list[_Cursor]) -> None:
    """Add to `out` the leaves under `c` that `mask` selects."""
    if node_code(c.value) == LEAF:
        if mask[c.lo]:
            out.append(c)
        return
    for child in _children(c):
        _leaves(child, mask, out)


def _select(state: tuple[Any, Any, int]) -> tuple[list[Any], Any, Leaves, list[_Cursor]]:
    root, steps, split = state
    trail: list[Any] = []
    focus = walk_focus(root, steps[:split], state, trail)
    try:
        ctx, cursors = _positions(focus, steps[split:], outer_kind(trail), state, split)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("lens", e)
        raise
    return trail, focus, ctx, cursors


# -- reading and rebuilding along hops -----------------------------------------------------------


def _child(node: Any, code: int, token: Any) -> Any:
    if code in (TREECLASS, DATACLASS):
        d = node.__dict__
        return d[token] if token in d else getattr(node, token)
    if code == GENERIC:
        return one_level(node)[1][token]  # type: ignore[index]
    return node[token]


def _rebuild_many(node: Any, code: int, new: dict[Any, Any]) -> Any:
    """A copy of `node` with the children at the tokens of `new` replaced, each once."""
    if code == TREECLASS:
        out = node
        for token, value in new.items():  # a treeclass has few fields: one copy each
            out = with_field(out, token, value)
        return out
    if code == DATACLASS:
        out = _new(type(node))
        out.__dict__.update(node.__dict__)
        out.__dict__.update(new)
        return out
    if code in (LIST, DICT):
        out = node.copy()  # keeps OrderedDict / defaultdict (and its factory)
        for token, value in new.items():
            out[token] = value
        return out
    if code in (TUPLE, NAMEDTUPLE):
        items = list(node)
        for token, value in new.items():
            items[token] = value
        return tuple(items) if code == TUPLE else tuple.__new__(type(node), items)
    _, children, treedef = one_level(node)  # type: ignore[misc]
    children = list(children)
    for token, value in new.items():
        children[token] = value
    return treedef.unflatten(children)


_END = object()  # a trie entry that ends at a selected position


def _trie(hops_list: list[tuple[Any, ...]]) -> Any:
    """The hops as nested `(code, ((token, subtrie), ...), every)`, `_END` at a position.

    `every` is the number of items of a list whose items are all selected (a one-pass
    rebuild), else -1. Frozen into tuples: cached tries are shared by readers."""
    if any(not hops for hops in hops_list):
        return _END  # the focus itself is selected
    root: dict[Any, Any] = {}
    for hops in hops_list:
        node = root
        for hop in hops[:-1]:
            node = node.setdefault(hop, {})
        node[hops[-1]] = _END
    return _freeze(root)


def _freeze(trie: Any) -> Any:
    if trie is _END:
        return _END
    code = next(iter(trie))[0]
    entries = tuple((tok, _freeze(sub)) for (_, tok), sub in trie.items())
    every = -1
    tokens = [tok for tok, _ in entries]
    if (
        code == LIST
        and all(sub is _END for _, sub in entries)
        and tokens == list(range(len(tokens)))
    ):
        every = len(entries)
    return (code, entries, every)


def _call(node: Any, fn: Callable[[Any], Any]) -> Any:
    return fn(node)


def _runner(trie: Any) -> Callable[[Any, Callable[[Any], Any]], Any]:
    """A function `(node, fn) -> node rebuilt with fn applied at the trie's positions`.

    Made once per plan: nested closures, one per node on the way to a position, so a
    call runs no dispatch on the trie (only `fn`, reads and the rebuilds)."""
    if trie is _END:
        return _call
    code, entries, every = trie
    subs = tuple((tok, _runner(sub)) for tok, sub in entries)

    def general(node: Any, fn: Callable[[Any], Any]) -> Any:
        new = {tok: run(_child(node, code, tok), fn) for tok, run in subs}
        return _rebuild_many(node, code, new)

    if every >= 0:  # every item of a list, in order: one pass

        def each(node: Any, fn: Callable[[Any], Any]) -> Any:
            if len(node) == every:
                return [fn(x) for x in node]
            return general(node, fn)

        return each
    if code == TREECLASS and len(subs) == 1:
        ((tok, run),) = subs

        def one_field(node: Any, fn: Callable[[Any], Any]) -> Any:
            # One field of a treeclass changes (a model's `layers`, say).
            return with_field(node, tok, run(node.__dict__[tok], fn))

        return one_field
    return general


def is_cacheable(steps: tuple[Any, ...]) -> bool:
    """Do the steps of a node selection depend on the focus's structure alone?"""
    return all(type(s) is not FilterStep or s.filter.structural for s in steps)


def _plan(
    state: tuple[Any, Any, int], memo: list[Any] | None
) -> tuple[list[Any], Any, Any, tuple[bool, ...]]:
    """(trail, focus, runner of the update or None, leaves covered), cached per treedef.

    `memo` (a cacheable path's own one-entry cache, `[treedef, outer kind, plan]`) saves
    the shared cache's lookup when a path is used on trees of one structure, the common
    case."""
    root, steps, split = state
    rest = steps[split:]
    key = None
    if memo is not None:
        trail: list[Any] = []
        focus = walk_focus(root, steps[:split], state, trail) if split else root
        treedef = _flatten(focus)[1]
        outer = outer_kind(trail) if trail else None
        if memo[1] is outer and memo[0] == treedef:
            return trail, focus, *memo[2]
        key = (treedef, outer, rest)
        plan = _PLANS.get(key)
        if plan is not None:
            memo[:] = treedef, outer, plan
            return trail, focus, *plan
    trail, focus, ctx, cursors = _select(state)
    covered = [False] * len(ctx.leaves)
    for c in cursors:
        covered[c.lo : c.lo + c.n] = [True] * c.n
    plan = (_runner(_trie([c.hops for c in cursors])) if cursors else None, tuple(covered))
    if key is not None and memo is not None:
        _PLANS.put(key, plan)
        memo[:] = key[0], key[1], plan
    return trail, focus, *plan


def _constant(value: Any) -> Callable[[Any], Any]:
    return lambda _: value


def node_update(
    state: tuple[Any, Any, int], value: Any, fn: Any, memo: list[Any] | None = None
) -> Any:
    """`.set(value)` (fn None) or `.apply(fn)` on a node selection."""
    root = state[0]
    try:
        # The hot case, inline: the lens starts at the root (no walk, no outer kind) and
        # the tree has the structure of the path's last one.
        hot = memo is not None and not state[2] and memo[1] is None
        if hot and memo[0] == _flatten(root)[1]:  # type: ignore[index]
            run = memo[2][0]  # type: ignore[index]
            return root if run is None else run(root, _constant(value) if fn is None else fn)
        trail, focus, run, _ = _plan(state, memo)
        if run is None:
            return root  # nothing selected: the tree, unchanged
        out = run(focus, _constant(value) if fn is None else fn)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("lens", e)
        raise
    for parent, code, token in reversed(trail):
        out = rebuild(parent, code, token, out)
    return out


def node_get(state: tuple[Any, Any, int], memo: list[Any] | None = None) -> Any:
    """The focus with every leaf no selected position covers replaced by `None`."""
    try:
        _, focus, _, covered = _plan(state, memo)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("lens", e)
        raise
    leaves, treedef = jax.tree_util.tree_flatten(focus)
    return treedef.unflatten([x if s else None for x, s in zip(leaves, covered)])


def hop_key(node: Any, code: int, token: Any) -> Any:
    """The JAX key of a lens hop `(node, code, token)` (from `descend`/`walk`)."""
    if code in (TREECLASS, DATACLASS):
        return GetAttrKey(token)
    if code in (LIST, TUPLE):
        return SequenceKey(token)
    if code == DICT:
        return DictKey(token)
    if code == NAMEDTUPLE:
        return GetAttrKey(type(node)._fields[token])
    if code == STACK:  # layers of a stacked field: `.blocks[3]`
        return SequenceKey(token)
    return one_level(node)[0][token[2]]  # type: ignore[index]


def node_items(state: tuple[Any, Any, int]) -> list[tuple[tuple[Any, ...], Any]]:
    """`(key path from the root, value)` of every selected position, in tree order."""
    trail, _, _, cursors = _select(state)
    prefix = tuple(hop_key(*hop) for hop in trail if hop[1] != SCATTER)
    return [((*prefix, *c.keys), c.value) for c in cursors]
