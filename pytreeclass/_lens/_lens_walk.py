"""How lenses take pytree nodes apart and put them back together, one node at a time.

`_lens_steps` says what kind of node a value is (its `NodeCode`) and what the steps of a
path are; this module follows a path of single steps (`walk`), naming the whole path in
any error, and rebuilds the nodes on the way back (`rebuild`, `put`).

A field declared `field(stack=...)` holds a stack of layers; an int, slice or traced int
step right after it is a STACK hop. The walk then stays on the stacked tree (later steps
are the same on a stack as on one layer) and remembers the rows; `StackView` takes them
out at the end, and the update writes them back with `x.at[rows].set(v)` per leaf (a
SCATTER hop).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from .._cache import TypeTable
from .._class._meta import drop_derived, meta_of, with_field
from .._stack import scatter, stack_length, take
from .._tree_util import first_difference, has_shape_dtype, leaf_repr, one_level
from ._lens_steps import (
    CODES,
    DATACLASS,
    DATACLASS_FIELDS,
    DICT,
    GENERIC,
    LIST,
    NAMEDTUPLE,
    NONE,
    SCATTER,
    SLICE,
    STACK,
    TREECLASS,
    TUPLE,
    PathStep,
    SliceKey,
    TracedIndex,
    field_names,
    nnx_static,
    node_code,
)

__all__ = [
    "Mapped",
    "StackView",
    "listing",
    "match",
    "put",
    "rebuild",
    "slice_child",
    "step_into",
    "walk",
    "path_text",
]

_new = object.__new__


# -- the single-path walk -----------------------------------------------------------------------


def _root_name(root: Any) -> str:
    return "model" if node_code(root) in (TREECLASS, DATACLASS) else "tree"


def path_text(state: tuple[Any, Any, int], upto: int) -> str:
    """The path of a lens state `(root, steps, split)` up to step `upto`, e.g. `model.layers[7]`."""
    return _root_name(state[0]) + "".join(map(repr, state[1][:upto]))


def listing(items: Any, limit: int = 20) -> str:
    items = list(items)
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more if items else "(none)"


def _missing(
    node: Any, code: int, step: PathStep, state: tuple[Any, Any, int], i: int
) -> Exception:
    """The error for a step that does not exist in `node`, naming the path and what is there."""
    path = path_text(state, i + 1)
    key = step.key
    typ = type(node).__name__
    if type(key) is TracedIndex:
        return TypeError(
            f"{path}: a traced index picks a layer of a stacked field (field(stack=...)) "
            f"only; {typ} needs a concrete Python int. Stack the layers (ptc.tree_stack) "
            "into a field declared ptc.field(stack=...), or index outside the traced code."
        )
    if code in (TREECLASS, DATACLASS, NAMEDTUPLE) and (type(key) is str or code != NAMEDTUPLE):
        names = field_names(node, code)
        if type(key) is not str:
            return step.error(f"{path}: {typ} has fields, not indices; fields: {listing(names)}")
        return step.error(f"{path}: no field {key!r}; fields: {listing(names)}")
    if code == DICT:
        keys = listing(map(repr, node))
        if step.attr:
            return step.error(
                f"{path}: {typ} has keys, not attributes; write [{key!r}] (keys: {keys})"
            )
        return step.error(f"{path}: no key {key!r}; keys: {keys}", mapping=True)
    if code in (LIST, TUPLE, NAMEDTUPLE):
        if step.attr or type(key) is not int:
            return step.error(f"{path}: {typ} is indexed by int (len {len(node)}), not by name")
        return step.error(f"{path}: index out of range (len {len(node)})")
    if code == GENERIC:
        keys = one_level(node)[0]  # type: ignore[index]
        children = listing(jax.tree_util.keystr((k,)) for k in keys)
        keyed = any(type(k) is DictKey for k in keys)
        return step.error(f"{path}: {typ} has no child {step!r}; children: {children}", keyed)
    if code == NONE:
        return step.error(
            f"{path}: the value at {path_text(state, i)} is None, which has no children"
        )
    hint = (
        " To change array elements use .apply(lambda a: a.at[...].set(v))."
        if hasattr(node, "shape")
        else ""
    )
    return step.error(
        f"{path}: cannot step into the leaf {leaf_repr(node)} at {path_text(state, i)}.{hint}"
    )


def _describe(x: Any) -> str:
    if has_shape_dtype(x):
        return f"an array {leaf_repr(x)}"
    return f"{type(x).__name__} {leaf_repr(x)}"


def slice_child(
    node: Any, code: int, s: slice, state: tuple[Any, Any, int], i: int
) -> tuple[Any, int, Any]:
    """`[a:b]` on a list or tuple: the sub-sequence, and the indices it came from."""
    if s.step == 0:
        raise ValueError(
            f"{path_text(state, i + 1)}: slice step cannot be zero; write a step such as "
            "1, 2 or -1."
        )
    if code not in (LIST, TUPLE):
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
    return node[s], SLICE, (range(len(node))[s], path_text(state, i + 1))


def _splice(node: Any, token: tuple[range, str], value: Any) -> Any:
    """`node` with the items at the slice's indices replaced by `value`'s, in order."""
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


def step_into(node: Any, step: Any, state: tuple[Any, Any, int], i: int) -> tuple[Any, int, Any]:
    """`(child, code, token)`: the child `step` names in `node`, and how to put one back."""
    code = CODES.get(type(node))
    if code is None:
        code = node_code(node)
    key = step.key
    if type(key) is SliceKey:
        return slice_child(node, code, key.slice, state, i)
    if code == TREECLASS:
        if type(key) is str and key in meta_of(type(node)).fields_by_name:  # type: ignore[union-attr]
            return node.__dict__[key], code, key
    elif code in (LIST, TUPLE):
        if type(key) is int and not step.attr:
            n = len(node)
            k = key + n if key < 0 else key
            if 0 <= k < n:
                return node[k], code, k
    elif code == DICT:
        if not step.attr and key in node:  # `in` first: a defaultdict would grow on node[key]
            return node[key], code, key
    elif code == DATACLASS:
        if type(key) is str and key in DATACLASS_FIELDS[type(node)]:
            d = node.__dict__
            return (d[key] if key in d else getattr(node, key)), code, key
    elif code == NAMEDTUPLE:
        fields = type(node)._fields
        if type(key) is str:
            if key in fields:
                k = fields.index(key)
                return node[k], code, k
        elif not step.attr:
            n = len(node)
            k = key + n if key < 0 else key
            if 0 <= k < n:
                return node[k], code, k
    elif code == GENERIC:
        keys, children, treedef = one_level(node)  # type: ignore[misc]
        k = match(step, node, keys)
        if k is not None:
            return children[k], code, (treedef, children, k)
        if type(key) is str and nnx_static(node, key):
            raise Mapped  # an NNX module's attribute: set on a fresh module (`_nodes`)
    raise _missing(node, code, step, state, i)


def rebuild(node: Any, code: int, token: Any, value: Any) -> Any:
    """A copy of `node` with the child at `token` (from `step_into`) replaced by `value`."""
    if code == STACK:
        return value  # the walk stayed on the stack: `value` is the updated stack already
    if code == SCATTER:
        return node.write(value)
    if code == TREECLASS:
        return with_field(node, token, value)
    if code in (LIST, DICT):
        new = node.copy()  # keeps OrderedDict / defaultdict (and its factory)
        new[token] = value
        return new
    if code == TUPLE:
        return (*node[:token], value, *node[token + 1 :])
    if code == SLICE:
        return _splice(node, token, value)
    if code == DATACLASS:
        new = _new(type(node))
        d = new.__dict__
        d.update(node.__dict__)
        d[token] = value
        names = DATACLASS_FIELDS[type(node)]
        if len(d) > len(names):  # fields only, as `with_field` does for treeclasses
            drop_derived(d, names)
        return new
    if code == NAMEDTUPLE:
        items = list(node)
        items[token] = value
        return tuple.__new__(type(node), items)  # what `_replace` does, minus the kwargs
    treedef, children, k = token
    children = list(children)
    children[k] = value
    return treedef.unflatten(children)


def match(step: PathStep, node: Any, keys: list[Any]) -> int | None:
    """Index of the child whose JAX key `step` names, or None."""
    key = step.key
    if type(key) is str:
        for j, k in enumerate(keys):
            if (type(k) is GetAttrKey and k.name == key) or (
                not step.attr and type(k) is DictKey and k.key == key
            ):
                return j
        return None
    if step.attr or type(key) is not int:
        return None
    positional = isinstance(node, tuple) or (
        bool(keys) and type(keys[0]) in (SequenceKey, FlattenedIndexKey)
    )
    if positional:
        k = key + len(keys) if key < 0 else key
        return k if 0 <= k < len(keys) else None
    for j, dk in enumerate(keys):
        if type(dk) is DictKey and dk.key == key:
            return j
    return None


# Per treeclass, what a hop needs: its `fields_by_name`. One dict lookup on `type(node)`
# replaces `CODES` + `meta_of` + an attribute read.
_TC = TypeTable(8192)


def _tc_fields(cls: type) -> dict[str, Any] | None:
    """`_TC[cls]`, filled in on first sight of a treeclass; None for any other type."""
    meta = meta_of(cls)
    if meta is None:
        return None
    return _TC.remember(cls, meta.fields_by_name)


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
    trail.append((node, STACK, row))
    return (row,) if idx is None else (*idx, row)


_STACK_KEYS = (int, SliceKey, TracedIndex)


def walk(root: Any, steps: tuple[Any, ...], state: tuple[Any, Any, int], trail: list[Any]) -> Any:
    """Follow path steps from `root`; record `(node, code, token)` per step in `trail`.

    Returns the node reached, or a `StackView` when the path indexed a stack."""
    node = root
    tcs, codes = _TC, CODES
    stacked = False  # whether `node` is the value of a field declared a stack
    idx = None  # the stack rows picked so far
    static = False  # a static field inside a stack's layer: the whole stack's own
    for i, step in enumerate(steps):
        # The two commonest hops, inline: a treeclass field and a list index.
        cls = type(node)
        key = step.key
        if stacked:
            stacked = False
            if type(key) in _STACK_KEYS and not step.attr:
                idx = _stack_hop(node, key, idx, state, i, trail)
                continue
        names = tcs.get(cls)
        if names is None and codes.get(cls, TREECLASS) == TREECLASS:
            names = _tc_fields(cls)
        if names is not None:
            if key in names:
                trail.append((node, TREECLASS, key))
                node = node.__dict__[key]
                f = names[key]
                stacked = f.stack is not None  # type: ignore[union-attr]
                if idx is not None and f.static:  # type: ignore[union-attr]
                    static = True  # shared by every layer: read and set whole
                continue
        elif type(key) is int and codes.get(cls) == LIST and not step.attr:
            n = len(node)
            k = key + n if key < 0 else key
            if 0 <= k < n:
                trail.append((node, LIST, k))
                node = node[k]
                continue
        if trail and trail[-1][1] == SLICE and (step.attr or type(key) is str):
            raise Mapped  # a name after a list's slice: inside each item (`_select`)
        child, code, token = step_into(node, step, state, i)
        trail.append((node, code, token))
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


class Mapped(Exception):
    """Raised by `walk` for a path the selection engine answers instead: one that
    continues inside each item of a list's slice (`model.at.layers[::2].w`), or that
    reaches a Flax NNX module's attribute."""


def put(
    root: Any,
    steps: tuple[Any, ...],
    state: tuple[Any, Any, int],
    value: Any,
    fn: Any,
    trail: list[Any] | None = None,
) -> Any:
    """Set (fn is None) or apply `fn` at the end of a path of single steps.

    `trail`, when given, receives the `(node, code, token)` hops (for `compile_put`)."""
    if trail is None:
        trail = []
    node = walk(root, steps, state, trail)
    if type(node) is StackView:
        trail.append((node, SCATTER, None))
        node = node.value() if fn is not None else None
    if fn is not None:
        value = fn(node)
    if trail and trail[-1][1] == TREECLASS:
        parent, _, key = trail[-1]
        if meta_of(type(parent)).fields_by_name[key].stack is not None:  # type: ignore[union-attr]
            _check_stack(node, value, path_text(state, len(steps)))
    # Paths updated often are compiled (`_lens_compile`); this runs for a path's first
    # updates and for node types that are not compiled, so it simply calls `rebuild`
    # (a treeclass hop is `_meta.with_field`), except for the list item, cheap to inline.
    for parent, code, token in reversed(trail):
        if code == LIST:
            new = parent.copy()
            new[token] = value
            value = new
        else:
            value = rebuild(parent, code, token, value)
    return value
