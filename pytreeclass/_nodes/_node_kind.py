"""`NodeKind`: the questions every kind of node answers, with a leaf's answers.

A selection (`_lens/_select`) asks for all children at once (`children`) and rebuilds a
node around several new ones (`rebuild`); the single-path walk (`_lens/_lens_walk`)
asks for the one child a path step names (`lookup`) and puts one back (`put`), and its
compiled form asks each kind for the code of one hop (`compile_hop`). Each kind of node
answers in one class (`_node_containers`, `_node_modules`, `_node_stack`), so no caller
switches on the kind of node.
"""

from __future__ import annotations

from typing import Any

from jax.tree_util import FlattenedIndexKey, SequenceKey

from .._tree_util import leaf_repr, listing, one_level
from ._node_codes import LEAF

__all__ = ["Hop", "NodeKind", "child_index", "keyed_by_position", "no_field"]

# What `compile_hop` gives: lines that check node `n{j}` (and find its child), the
# expression that reads the child, and lines that rebuild `n{j}` around `value`.
Hop = tuple[list[str], str, str]


class NodeKind:
    """How one kind of node is read and rebuilt (the defaults: a leaf, no children)."""

    code: int = LEAF
    leaf = False  # no children at all (a leaf, None)
    named = False  # children are named fields (a model): paths print as `model.x`
    frozen = False  # a frozen treeclass instance: value_and_tree thaws and refreezes it
    positional = False  # `[i]` counts children from 0 (and from the end, negative)
    sliceable = False  # `[a:b]` takes a view of its items; insert works on them
    sequence = False  # remove works on its children
    list_like = False  # rebuilt as a list: a plan may run every item in one pass
    layered = False  # children are rows of stacked arrays: counted from shapes, not treedefs

    def fields(self, node: Any) -> dict[str, Any] | None:
        """A treeclass's fields by name (their kinds and stack axes), else None."""
        return None

    # -- all children at once (selections) ------------------------------------------------

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        """`(JAX key, child, token)` per child, in flatten order."""
        return []

    def child(self, node: Any, token: Any) -> Any:
        """The child at `token` (as `children` names it)."""
        return node[token]

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        """A copy of `node` with the children at the tokens replaced, each once."""
        raise TypeError(f"{type(node).__name__} has no children to replace")

    # -- one child (the single-path walk) ---------------------------------------------

    def lookup(self, node: Any, step: Any) -> tuple[Any, Any, Any] | None:
        """`(child, token, field)` for the child a path step (`.name`, `[key]`, `[i]`)
        names, or None. `put` takes the token back (usually the one `children` gives);
        `field` is the child's declaration (its stack axis, whether it is static) where
        the kind declares fields, else None."""
        return None

    def put(self, node: Any, token: Any, value: Any) -> Any:
        """A copy of `node` with the one child at `token` (from `lookup`) replaced."""
        return self.rebuild(node, [(token, value)])

    def missing(self, node: Any, step: Any, path: str, at: str) -> Exception:
        """The error for `step` naming no child of `node`; `path` is the path through the
        step, `at` the path of `node`."""
        hint = (
            " To change array elements use .apply(lambda a: a.at[...].set(v))."
            if hasattr(node, "shape")
            else ""
        )
        return step.error(f"{path}: cannot step into the leaf {leaf_repr(node)} at {at}.{hint}")

    def compile_hop(self, j: int, node: Any, step: Any, ns: dict[str, Any]) -> Hop | None:
        """The straight-line code of one hop (`_lens_compile`), or None where hops of this
        kind are not compiled. `ns` holds `_t{j}` (the node's type) and `_k{j}` (the
        step's key); a kind adds the names its code reads."""
        return None

    # -- static attributes, sequences ---------------------------------------------------

    def static(self, node: Any, name: Any) -> bool:
        """Is `name` a static attribute (configuration kept in the treedef)?"""
        return False

    def put_static(self, node: Any, name: str, value: Any) -> Any:
        """A copy of `node` with the static attribute `name` set; the original untouched."""
        raise AssertionError("unreachable: static() said no")  # pragma: no cover

    def rebuild_rows(self, node: Any, new: list[tuple[Any, Any]], olds: list[Any]) -> Any:
        """`rebuild`, where `olds` are the children as `child` gave them (a stack keeps
        the rows of leaves no layer changed)."""
        return self.rebuild(node, new)

    def remove(self, node: Any, tokens: list[Any]) -> Any:
        raise TypeError

    def insert(self, node: Any, where: dict[Any, tuple[list[Any], list[Any]]]) -> Any:
        """A copy with `where[token] = (before, after)` inserted around those children."""
        raise TypeError

    # -- value_and_tree's copy: the children alone (no keys: the hot path), and a copy of
    # the node around new children that `fn` may then change in place.

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


def no_field(node: Any, step: Any, path: str, names: Any) -> Exception:
    """The error for a step naming no field of a node with named fields."""
    if type(step.key) is not str:
        return step.error(
            f"{path}: {type(node).__name__} has fields, not indices; fields: {listing(names)}"
        )
    return step.error(f"{path}: no field {step.key!r}; fields: {listing(names)}")


def keyed_by_position(keys: Any) -> bool:
    """Do JAX keys count children by position (`[i]`, negative from the end)?"""
    return bool(keys) and type(keys[0]) in (SequenceKey, FlattenedIndexKey)


def child_index(step: Any, keys: Any, positional: bool) -> int | None:
    """The index of the child a `.name`, `["key"]` or `[i]` step names among children
    keyed by the JAX `keys`, or None: a name matches an attribute key (and, as `[name]`,
    a dict key); an int counts positions when `positional`, else matches a dict key."""
    key = step.key
    if type(key) is str:
        for j, k in enumerate(keys):
            if getattr(k, "name", None) == key or (not step.attr and getattr(k, "key", _NO) == key):
                return j
        return None
    if step.attr or type(key) is not int:
        return None
    if positional:
        n = len(keys)
        i = key + n if key < 0 else key
        return i if 0 <= i < n else None
    for j, k in enumerate(keys):  # a dict or a foreign node keyed by ints
        if getattr(k, "key", _NO) == key:
            return j
    return None


_NO = object()
