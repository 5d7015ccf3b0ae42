"""Python's own nodes: lists, tuples, namedtuples, dicts, and the two without children
(a leaf, `None`)."""

from __future__ import annotations

from typing import Any

from jax.tree_util import GetAttrKey, SequenceKey

from .._tree_util import listing, one_level
from ._node_codes import DICT, LIST, NAMEDTUPLE, NONE, TUPLE
from ._node_kind import Hop, NodeKind, no_field

__all__ = ["Dict", "Leaf", "List", "NamedTuple", "NoneKind", "Tuple"]


class Leaf(NodeKind):
    leaf = True


class NoneKind(NodeKind):
    code = NONE
    leaf = True

    def missing(self, node: Any, step: Any, path: str, at: str) -> Exception:
        return step.error(f"{path}: the value at {at} is None, which has no children")


def _index(node: Any, step: Any) -> int | None:
    """The item `[i]` names (negative from the end), or None."""
    key = step.key
    if type(key) is not int or step.attr:
        return None
    n = len(node)
    k = key + n if key < 0 else key
    return k if 0 <= k < n else None


def _no_item(node: Any, step: Any, path: str) -> Exception:
    typ = type(node).__name__
    if step.attr or type(step.key) is not int:
        return step.error(f"{path}: {typ} is indexed by int (len {len(node)}), not by name")
    return step.error(f"{path}: index out of range (len {len(node)})")


def _index_lines(j: int, step: Any) -> list[str]:
    """Compiled `[i]`: `k{j}`, the index in `n{j}` (from the end when negative)."""
    if step.key < 0:  # counted from the end: the index depends on the length
        return [f"    k{j} = _k{j} + len(n{j})", f"    if k{j} < 0: return _MISS"]
    return [f"    k{j} = _k{j}", f"    if k{j} >= len(n{j}): return _MISS"]


class _Sequence(NodeKind):
    sequence = positional = sliceable = True

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        return [(SequenceKey(i), x, i) for i, x in enumerate(node)]

    def _make(self, node: Any, items: list[Any]) -> Any:
        return items if type(node) is list else tuple(items)

    def lookup(self, node: Any, step: Any) -> tuple[Any, Any, Any] | None:
        k = _index(node, step)
        return None if k is None else (node[k], k, None)

    def missing(self, node: Any, step: Any, path: str, at: str) -> Exception:
        return _no_item(node, step, path)

    def values(self, node: Any) -> tuple[Any, Any]:
        return node, None

    def thawed(self, node: Any, aux: Any, old: Any, new: list[Any]) -> Any:
        if type(node) is list:
            return new  # always a fresh list
        return node if all(a is b for a, b in zip(new, old)) else tuple(new)

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        items = list(node)
        for i, v in new:
            items[i] = v
        return self._make(node, items)

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


class List(_Sequence):
    code = LIST
    list_like = True

    def put(self, node: Any, token: Any, value: Any) -> Any:
        new = node.copy()
        new[token] = value
        return new

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        out = node.copy()
        for i, v in new:
            out[i] = v
        return out

    def compile_hop(self, j: int, node: Any, step: Any, ns: dict[str, Any]) -> Hop | None:
        back = f"    new = n{j}.copy(); new[k{j}] = value; value = new"
        return _index_lines(j, step), f"n{j}[k{j}]", back


class Tuple(_Sequence):
    code = TUPLE

    def put(self, node: Any, token: Any, value: Any) -> Any:
        return (*node[:token], value, *node[token + 1 :])

    def compile_hop(self, j: int, node: Any, step: Any, ns: dict[str, Any]) -> Hop | None:
        back = f"    value = (*n{j}[:k{j}], value, *n{j}[k{j} + 1 :])"
        return _index_lines(j, step), f"n{j}[k{j}]", back


class NamedTuple(NodeKind):
    code = NAMEDTUPLE
    positional = True

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        return [(GetAttrKey(n), x, i) for i, (n, x) in enumerate(zip(type(node)._fields, node))]

    def lookup(self, node: Any, step: Any) -> tuple[Any, Any, Any] | None:
        if type(step.key) is str:
            fields = type(node)._fields
            if step.key not in fields:
                return None
            k: int | None = fields.index(step.key)
        else:
            k = _index(node, step)
        return None if k is None else (node[k], k, None)

    def missing(self, node: Any, step: Any, path: str, at: str) -> Exception:
        if type(step.key) is str:
            return no_field(node, step, path, type(node)._fields)
        return _no_item(node, step, path)

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        items = list(node)
        for i, v in new:
            items[i] = v
        return tuple.__new__(type(node), items)  # what `_replace` does, minus the kwargs

    def values(self, node: Any) -> tuple[Any, Any]:
        return node, None

    def thawed(self, node: Any, aux: Any, old: Any, new: list[Any]) -> Any:
        if all(a is b for a, b in zip(new, old)):
            return node
        return tuple.__new__(type(node), new)


class Dict(NodeKind):
    code = DICT
    sequence = True

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        keys = one_level(node)[0]  # type: ignore[index]  # JAX's key order (sorted)
        return [(k, node[k.key], k.key) for k in keys]

    def lookup(self, node: Any, step: Any) -> tuple[Any, Any, Any] | None:
        key = step.key
        if step.attr or key not in node:  # `in` first: a defaultdict would grow on node[key]
            return None
        return node[key], key, None

    def missing(self, node: Any, step: Any, path: str, at: str) -> Exception:
        keys = listing(map(repr, node))
        if step.attr:
            return step.error(
                f"{path}: {type(node).__name__} has keys, not attributes; write "
                f"[{step.key!r}] (keys: {keys})"
            )
        return step.error(f"{path}: no key {step.key!r}; keys: {keys}", mapping=True)

    def put(self, node: Any, token: Any, value: Any) -> Any:
        new = node.copy()  # keeps OrderedDict / defaultdict (and its factory)
        new[token] = value
        return new

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        out = node.copy()
        for k, v in new:
            out[k] = v
        return out

    def compile_hop(self, j: int, node: Any, step: Any, ns: dict[str, Any]) -> Hop | None:
        guard = [f"    if _k{j} not in n{j}: return _MISS"]  # not n[key]: a defaultdict grows
        return guard, f"n{j}[_k{j}]", f"    new = n{j}.copy(); new[_k{j}] = value; value = new"

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
