"""The node-kind table: how every kind of pytree node is read, keyed and rebuilt.

One entry per kind of node a selection can meet: a treeclass, a list, a tuple, a
namedtuple, a dict, a dataclass-like module (Equinox, flax.struct), any other registered
node (Flax NNX modules among them), and a *stacked field*, seen as the sequence of its
layers. Each entry answers the same questions, so the selection engine (`_select`) never
switches on the kind of node itself:

* `children(node)`: `(JAX key, child, token)` per child, in flatten order;
* `rebuild(node, {token: value})`: a copy with those children replaced, each once;
* `static(node, name)`: whether `name` is a static attribute (configuration kept in the
  treedef: a static treeclass field, an Equinox `field(static=True)`, an NNX attribute);
  `put_static` sets one out of place, the original never touched;
* `remove(node, tokens)` / `insert(node, token, values, after)` for the kinds that are
  sequences or mappings (lists, tuples, dicts, stacks).

The single-path walk (`_lens_walk`) keeps its own inlined hops for speed; the tests check
that it and this table agree on every kind of node.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import numpy as np
from jax.tree_util import GetAttrKey, SequenceKey

from ._cache import TypeTable
from ._class._meta import FLAT, drop_derived, meta_of, with_field
from ._lens._lens_steps import (
    DATACLASS,
    DATACLASS_FIELDS,
    DICT,
    GENERIC,
    LEAF,
    LIST,
    NAMEDTUPLE,
    NONE,
    STACK,
    TREECLASS,
    TUPLE,
    nnx_static,
)
from ._stack import scatter, scatter_rows, shared_leaf, stack_length, take
from ._tree_util import one_level

__all__ = ["KINDS", "NodeKind", "StackKind"]

_new = object.__new__


class NodeKind:
    """How one kind of node is read and rebuilt (the defaults: a leaf, no children)."""

    code: int = LEAF
    leaf = False  # no children at all (a leaf, None)
    positional = False  # `[i]` counts children from 0 (and from the end, negative)
    sliceable = False  # `[a:b]` takes a view of its items; insert works on them
    sequence = False  # remove works on its children
    list_like = False  # rebuilt as a list: a plan may run every item in one pass

    def fields(self, node: Any) -> dict[str, Any] | None:
        """A treeclass's fields by name (their kinds and stack axes), else None."""
        return None

    # `value_and_tree`'s copy: the children alone (no keys: the hot path), and a copy
    # of the node around new children that `fn` may then change in place.

    def values(self, node: Any) -> tuple[Any, Any]:
        """`(children, aux)`: the children in order, and what `thawed` needs back."""
        _, children, treedef = one_level(node, keyed=False)  # type: ignore[misc]
        return children, treedef

    def thawed(self, node: Any, aux: Any, old: Any, new: list[Any]) -> Any:
        """A copy of `node` with children `new` that in-place code may change: lists,
        dicts and treeclass instances are always fresh; an immutable node whose children
        are all unchanged is shared."""
        if all(a is b for a, b in zip(new, old)):
            return node
        return aux.unflatten(new)

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        return []

    def child(self, node: Any, token: Any) -> Any:
        """The child at `token` (as `children` names it)."""
        return node[token]

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        raise TypeError(f"{type(node).__name__} has no children to replace")

    def static(self, node: Any, name: Any) -> bool:
        return False

    def put_static(self, node: Any, name: str, value: Any) -> Any:
        raise AssertionError("unreachable: static() said no")  # pragma: no cover

    def remove(self, node: Any, tokens: list[Any]) -> Any:
        raise TypeError


class _Leaf(NodeKind):
    leaf = True


class _NoneKind(NodeKind):
    code = NONE
    leaf = True


class _Treeclass(NodeKind):
    code = TREECLASS

    def fields(self, node: Any) -> dict[str, Any] | None:
        return meta_of(type(node)).fields_by_name  # type: ignore[union-attr]

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        d = node.__dict__
        names = meta_of(type(node)).child_names  # type: ignore[union-attr]
        return [(GetAttrKey(n), d[n], n) for n in names]

    def child(self, node: Any, token: Any) -> Any:
        return node.__dict__[token]

    def values(self, node: Any) -> tuple[Any, Any]:
        names = meta_of(type(node)).child_names  # type: ignore[union-attr]
        d = node.__dict__
        return [d[n] for n in names], names

    def thawed(self, node: Any, aux: Any, old: Any, new: list[Any]) -> Any:
        copy = _new(type(node))
        d = copy.__dict__
        d.update(node.__dict__)
        d.pop(FLAT, None)  # stale once fn assigns a field; frozen again afterwards
        for name, value in zip(aux, new):
            d[name] = value
        meta = meta_of(type(node))
        if len(d) >= meta.size:  # type: ignore[union-attr]  # derived values stay behind
            drop_derived(d, meta.fields_by_name)  # type: ignore[union-attr]
        return copy

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        for name, value in new:  # few fields: one copy each
            node = with_field(node, name, value)
        return node

    def static(self, node: Any, name: Any) -> bool:
        return name in meta_of(type(node)).static_names  # type: ignore[union-attr]

    def put_static(self, node: Any, name: str, value: Any) -> Any:
        return with_field(node, name, value)  # checks hashability


class _Dataclass(NodeKind):
    """Equinox modules, flax.struct and other dataclass pytrees keeping fields in __dict__."""

    code = DATACLASS

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        d = node.__dict__
        names = _child_names(node)
        return [(GetAttrKey(n), d[n] if n in d else getattr(node, n), n) for n in names]

    def child(self, node: Any, token: Any) -> Any:
        d = node.__dict__
        return d[token] if token in d else getattr(node, token)

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        out = _new(type(node))
        d = out.__dict__
        d.update(node.__dict__)
        d.update(new)  # pairs (name, value)
        names = DATACLASS_FIELDS[type(node)]  # every field, static ones included
        if len(d) > len(names):  # a cached_property describes the old node
            drop_derived(d, names)
        return out

    def static(self, node: Any, name: Any) -> bool:
        return name in DATACLASS_FIELDS[type(node)] and name not in _child_names(node)

    def put_static(self, node: Any, name: str, value: Any) -> Any:
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"static field {name!r} of {type(node).__name__} holds an unhashable "
                f"{type(value).__name__}; static values live in the treedef, which jax.jit "
                "hashes: use a hashable value (a tuple instead of a list)."
            ) from None
        return self.rebuild(node, [(name, value)])


_CHILDREN = TypeTable(8192)  # per dataclass-like type: the fields that are children


def _child_names(node: Any) -> tuple[str, ...]:
    names = _CHILDREN.get(type(node))
    if names is None:
        keys = one_level(node)[0]  # type: ignore[index]
        names = _CHILDREN.remember(type(node), tuple(k.name for k in keys))
    return names


class _Sequence(NodeKind):
    sequence = positional = sliceable = True

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        return [(SequenceKey(i), x, i) for i, x in enumerate(node)]

    def _make(self, node: Any, items: list[Any]) -> Any:
        return items if type(node) is list else tuple(items)

    def values(self, node: Any) -> tuple[Any, Any]:
        return node, None

    def thawed(self, node: Any, aux: Any, old: Any, new: list[Any]) -> Any:
        if type(node) is list:
            return new  # always a fresh list
        return node if all(a is b for a, b in zip(new, old)) else tuple(new)

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        if type(node) is list:
            out = node.copy()
            for i, v in new:
                out[i] = v
            return out
        items = list(node)
        for i, v in new:
            items[i] = v
        return tuple(items)

    def remove(self, node: Any, tokens: list[Any]) -> Any:
        drop = set(tokens)
        return self._make(node, [x for i, x in enumerate(node) if i not in drop])

    def insert(self, node: Any, where: dict[Any, tuple[list[Any], list[Any]]]) -> Any:
        items: list[Any] = []
        for i, x in enumerate(node):
            before, after = where.get(i, ((), ()))
            items.extend(before)
            items.append(x)
            items.extend(after)
        return self._make(node, items)


class _List(_Sequence):
    code = LIST
    list_like = True


class _Tuple(_Sequence):
    code = TUPLE


class _NamedTuple(NodeKind):
    code = NAMEDTUPLE
    positional = True

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        return [(GetAttrKey(n), x, i) for i, (n, x) in enumerate(zip(type(node)._fields, node))]

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        items = list(node)
        for i, v in new:
            items[i] = v
        return tuple.__new__(type(node), items)

    def values(self, node: Any) -> tuple[Any, Any]:
        return node, None

    def thawed(self, node: Any, aux: Any, old: Any, new: list[Any]) -> Any:
        if all(a is b for a, b in zip(new, old)):
            return node
        return tuple.__new__(type(node), new)


class _Dict(NodeKind):
    code = DICT
    sequence = True

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        keys = one_level(node)[0]  # type: ignore[index]  # JAX's key order (sorted)
        return [(k, node[k.key], k.key) for k in keys]

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        out = node.copy()  # keeps OrderedDict / defaultdict (and its factory)
        for k, v in new:
            out[k] = v
        return out

    def remove(self, node: Any, tokens: list[Any]) -> Any:
        out = node.copy()
        for k in tokens:
            del out[k]
        return out

    def values(self, node: Any) -> tuple[Any, Any]:
        return list(node.values()), list(node)

    def thawed(self, node: Any, aux: Any, old: Any, new: list[Any]) -> Any:
        copy = node.copy()  # same dict type (OrderedDict, defaultdict and its factory)
        for key, value in zip(aux, new):
            copy[key] = value
        return copy


class _Generic(NodeKind):
    """Any other registered node: flattened one level, rebuilt by unflatten. Flax NNX
    modules keep their configuration as attributes outside the children: those are
    static attributes, set on the fresh node that unflatten makes."""

    code = GENERIC

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        keys, children, _ = one_level(node)  # type: ignore[misc]
        return [(k, c, j) for j, (k, c) in enumerate(zip(keys, children))]

    def child(self, node: Any, token: Any) -> Any:
        return one_level(node, keyed=False)[1][token]  # type: ignore[index]

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        _, children, treedef = one_level(node, keyed=False)  # type: ignore[misc]
        children = list(children)
        for j, v in new:
            children[j] = v
        return treedef.unflatten(children)

    def static(self, node: Any, name: Any) -> bool:
        return type(name) is str and nnx_static(node, name)

    def put_static(self, node: Any, name: str, value: Any) -> Any:
        _, children, treedef = one_level(node, keyed=False)  # type: ignore[misc]
        new = treedef.unflatten(list(children))  # a fresh module: the original is untouched
        if new is node:  # pragma: no cover - a node type whose unflatten returns its input
            new = copy.copy(node)
        object.__setattr__(new, name, value)
        return new


class StackKind(NodeKind):
    """A field declared `field(stack=...)`, seen as the sequence of its layers.

    Its children are the layers (`take`), keyed `[i]`; rebuilding writes rows back
    (`scatter`), so a layer put back must have the layer's structure, shapes and dtypes.
    Non-array leaves (an activation function in an `eqx.filter_vmap` stack) are shared
    by every layer."""

    code = STACK
    sequence = positional = sliceable = True

    def __init__(self, where: str = "the stack") -> None:
        self.where = where

    def length(self, node: Any) -> int:
        return stack_length(node, self.where, prefix=self.where)

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        n = self.length(node)
        leaves, treedef = jax.tree_util.tree_flatten(node)
        # one unstack per leaf (`list(x)`), not one index per layer and leaf
        rows = [[x] * n if shared_leaf(x) else list(x) for x in leaves]
        return [(SequenceKey(i), treedef.unflatten([r[i] for r in rows]), i) for i in range(n)]

    def child(self, node: Any, token: Any) -> Any:
        return take(node, (token,))

    def rebuild_rows(self, node: Any, new: list[tuple[Any, Any]], olds: list[Any]) -> Any:
        """`rebuild`, where `olds` are the layers as taken: a leaf no layer changed (every
        row still the object `take` gave) is kept as it is, not written again."""
        if all(type(i) is int for i, _ in new):
            return scatter_rows(node, new, self.where, olds)
        return self.rebuild(node, new)

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        if len(new) > 1 and all(type(i) is int for i, _ in new):
            return scatter_rows(node, new, self.where)  # one write per leaf
        for i, layer in new:
            at = f"{self.where}[{i}]" if type(i) is int else f"{self.where}[<traced>]"
            node = scatter(node, (i,), layer, at)
        return node

    def remove(self, node: Any, tokens: list[Any]) -> Any:
        drop = set(tokens)
        keep = np.array([i for i in range(self.length(node)) if i not in drop], dtype=np.int64)
        return jax.tree.map(lambda x: x if shared_leaf(x) else x[keep], node)


KINDS: dict[int, NodeKind] = {
    LEAF: _Leaf(),
    NONE: _NoneKind(),
    TREECLASS: _Treeclass(),
    DATACLASS: _Dataclass(),
    LIST: _List(),
    TUPLE: _Tuple(),
    NAMEDTUPLE: _NamedTuple(),
    DICT: _Dict(),
    GENERIC: _Generic(),
}
