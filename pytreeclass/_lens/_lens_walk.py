"""The single-path walk: follow a path of single steps, then rebuild the nodes on the way
back. Each hop asks the node-kind table (`_nodes`) for the child a step names
(`lookup`), for the error naming what is there when it names none (`missing`), and to
put a new child back (`put`); errors name the whole path.

A field declared `field(stack=...)` holds a stack of layers; an int, slice or traced int
step right after it is a stack hop. The walk then stays on the stacked tree (later steps
are the same on a stack as on one layer) and remembers the rows; `StackView` takes them
out at the end, and the update writes them back with `x.at[rows].set(v)` per leaf.
"""

from __future__ import annotations

from typing import Any

import jax

from .._nodes._node_kind import NodeKind
from .._nodes._node_table import KIND_OF, kind_of
from .._stack import scatter, stack_length, take
from .._tree_util import first_difference, has_shape_dtype, leaf_repr, listing
from ._lens_steps import SliceKey, TracedIndex

__all__ = [
    "SLICE",
    "Mapped",
    "StackView",
    "missing",
    "path_text",
    "put",
    "slice_items",
    "walk",
]


def path_text(state: tuple[Any, Any, int], upto: int) -> str:
    """The path of a lens state `(root, steps, split)` up to step `upto`, e.g. `model.layers[7]`."""
    root = "model" if kind_of(state[0]).named else "tree"
    return root + "".join(map(repr, state[1][:upto]))


def _describe(x: Any) -> str:
    if has_shape_dtype(x):
        return f"an array {leaf_repr(x)}"
    return f"{type(x).__name__} {leaf_repr(x)}"


# -- the hops of a lens trail that are no node kind ------------------------------------------


class _Slice(NodeKind):
    """`[a:b]` of a list or tuple: the items, put back one by one (token: the indices
    and the path, for messages)."""

    def put(self, node: Any, token: Any, value: Any) -> Any:
        indices, path = token
        n = len(indices)
        fix = f"Set it to (or return from apply) a list or tuple of {n} item(s), one per index."
        if not isinstance(value, (list, tuple)):
            raise TypeError(
                f"{path}: a slice is replaced item by item, so the value must be a list or "
                f"tuple; got {_describe(value)}. {fix}"
            )
        if len(value) != n:
            shown = listing(map(str, indices), 8)
            raise ValueError(
                f"{path}: the slice selects {n} item(s) (indices {shown} of {len(node)}), "
                f"but the value has {len(value)}. {fix}"
            )
        items = list(node)
        for k, v in zip(indices, value):
            items[k] = v
        return items if type(node) is list else tuple(items)


class _StackRows(NodeKind):
    """An index into a stacked field: the walk stayed on the stack, so the value put
    back is the updated stack already."""

    def put(self, node: Any, token: Any, value: Any) -> Any:
        return value


class _Scatter(NodeKind):
    """The picked rows written back into the stack (`node` is the `StackView`)."""

    def put(self, node: Any, token: Any, value: Any) -> Any:
        return node.write(value)


SLICE, _ROWS, _SCATTER = _Slice(), _StackRows(), _Scatter()


def slice_items(node: Any, kind: NodeKind, s: slice, state: Any, i: int) -> tuple[Any, Any]:
    """`[a:b]` on a list or tuple: the sub-sequence, and the token `SLICE` puts back by."""
    if s.step == 0:
        raise ValueError(
            f"{path_text(state, i + 1)}: slice step cannot be zero; write a step such as "
            "1, 2 or -1."
        )
    if not kind.sliceable:
        fix = (
            "To change array elements use .apply(lambda a: a.at[1:3].set(v))."
            if hasattr(node, "shape")
            else "Use a key, an index or [...] there (or declare the field a stack of "
            "layers, field(stack=...), to slice its layers)."
        )
        raise TypeError(
            f"{path_text(state, i + 1)}: a slice selects items of a list or tuple, but the value "
            f"at {path_text(state, i)} is {_describe(node)}. {fix}"
        )
    return node[s], (range(len(node))[s], path_text(state, i + 1))


def missing(node: Any, kind: NodeKind, step: Any, state: Any, i: int) -> Exception:
    """The error for a step that names no child of `node`, naming the path and what is there."""
    path = path_text(state, i + 1)
    if type(step.key) is TracedIndex:
        return TypeError(
            f"{path}: a traced index picks a layer of a stacked field (field(stack=...)) "
            f"only; {type(node).__name__} needs a concrete Python int. Stack the layers "
            "(ptc.tree_stack) into a field declared ptc.field(stack=...), or index outside "
            "the traced code."
        )
    return kind.missing(node, step, path, path_text(state, i))


class StackView:
    """Where a walk through a stack index ended: rows `idx` of the stacked subtree `node`."""

    __slots__ = ("idx", "node", "state", "upto")

    def __init__(self, node: Any, idx: tuple[Any, ...], state: Any, upto: int) -> None:
        self.node, self.idx, self.state, self.upto = node, idx, state, upto

    def value(self) -> Any:
        """The addressed layer(s): an ordinary tree (a stack again for a slice)."""
        return take(self.node, self.idx)

    def write(self, value: Any) -> Any:
        """The stacked subtree with the addressed rows replaced by `value`."""
        return scatter(self.node, self.idx, value, path_text(self.state, self.upto))


def _stack_hop(
    node: Any, key: Any, idx: tuple[Any, ...] | None, state: Any, i: int, trail: list[Any]
) -> tuple[Any, ...]:
    """Record the stack index `key` (int or SliceKey) into `node`; the rows so far + it."""
    depth = 0 if idx is None else len(idx)
    field = path_text(state, i)
    n = stack_length(node, path_text(state, i + 1), axis=depth, prefix=field)
    if type(key) is int:
        k = key + n if key < 0 else key
        if not 0 <= k < n:
            raise IndexError(
                f"{path_text(state, i + 1)}: index out of range (the stack {field} has {n} layers)"
            )
        row: Any = k
    elif type(key) is TracedIndex:
        row = key.value  # not known here: jnp indexing clamps it into range, as x[i] does
    else:
        row = key.slice
        if row.step == 0:
            raise ValueError(
                f"{path_text(state, i + 1)}: slice step cannot be zero; a slice of the stack "
                f"{field} needs a step such as 1, 2 or -1."
            )
    trail.append((node, _ROWS, row))
    return (row,) if idx is None else (*idx, row)


_STACK_KEYS = (int, SliceKey, TracedIndex)


class Mapped(Exception):
    """Raised by `walk` for a path the selection engine answers instead: one that
    continues inside each item of a list's slice (`model.at.layers[::2].w`), or that
    reaches a static attribute outside a node's children (a Flax NNX module's)."""


def walk(root: Any, steps: tuple[Any, ...], state: tuple[Any, Any, int], trail: list[Any]) -> Any:
    """Follow path steps from `root`; record `(node, kind, token)` per step in `trail`.

    Returns the node reached, or a `StackView` when the path indexed a stack."""
    node = root
    stacked = False  # whether `node` is the value of a field declared a stack
    idx = None  # the stack rows picked so far
    static = False  # a static field inside a stack's layer: the whole stack's own
    kinds = KIND_OF
    for i, step in enumerate(steps):
        key = step.key
        if stacked:
            stacked = False
            if type(key) in _STACK_KEYS and not step.attr:
                idx = _stack_hop(node, key, idx, state, i, trail)
                continue
        kind = kinds.get(type(node)) or kind_of(node)
        if type(key) is SliceKey:
            child, token = slice_items(node, kind, key.slice, state, i)
            trail.append((node, SLICE, token))
            node = child
            continue
        found = kind.lookup(node, step)
        if found is None:
            if trail and trail[-1][1] is SLICE and (step.attr or type(key) is str):
                raise Mapped  # a name after a list's slice: inside each item (`_select`)
            if type(key) is str and kind.static(node, key):
                raise Mapped  # an attribute outside the children: set on a fresh node
            raise missing(node, kind, step, state, i)
        child, token, f = found
        trail.append((node, kind, token))
        if f is not None:  # a declared field: it may hold a stack of layers, or be static
            stacked = f.stack is not None
            if idx is not None and f.static:
                static = True  # shared by every layer: read and set whole
        node = child
    return node if idx is None or static else StackView(node, idx, state, len(steps))


def _check_stack(old: Any, new: Any, path: str) -> None:
    """A stacked field set whole takes a stack of as many layers, of the same structure."""
    n = stack_length(old, path, prefix=path)
    fix = (
        f"Set it to a stack of {n} layers (ptc.tree_stack([...])), or set one layer with "
        f"{path}[i].set(layer)."
    )
    if jax.tree_util.tree_structure(new) != jax.tree_util.tree_structure(old):
        diff = (
            first_difference(old, new).replace("tree 0", "the stack").replace("tree 1", "the value")
        )
        raise ValueError(f"{path}.set(): the value is not a stack like the field's: {diff}. {fix}")
    try:
        m = stack_length(new, path, prefix=path)
    except ValueError as e:
        raise ValueError(f"{path}.set(): the value is not a stack: {e} {fix}") from None
    if m != n:
        raise ValueError(f"{path}.set(): the stack has {n} layers, the value {m}. {fix}")


def put(
    root: Any,
    steps: tuple[Any, ...],
    state: tuple[Any, Any, int],
    value: Any,
    fn: Any,
    trail: list[Any] | None = None,
) -> Any:
    """Set (fn is None) or apply `fn` at the end of a path of single steps.

    `trail`, when given, receives the `(node, kind, token)` hops (for `compile_put`)."""
    if trail is None:
        trail = []
    node = walk(root, steps, state, trail)
    if type(node) is StackView:
        trail.append((node, _SCATTER, None))
        node = node.value() if fn is not None else None
    if fn is not None:
        value = fn(node)
    if trail:
        parent, kind, key = trail[-1]
        fields = kind.fields(parent)
        if fields is not None and fields[key].stack is not None:
            _check_stack(node, value, path_text(state, len(steps)))
    # Paths updated often are compiled (`_lens_compile`); this runs for a path's first
    # updates and for the hops that are not compiled.
    for parent, kind, token in reversed(trail):
        value = kind.put(parent, token, value)
    return value
