"""Layer stacks: many equal-structure trees held as one tree whose arrays gain a leading axis.

Deep models keep their layers *stacked* (one `Block` whose every array has a leading
"layers" axis) and run them with `jax.lax.scan`, so compile time does not grow with depth.
This module owns the pieces that know what a stack is:

* `tree_stack` / `tree_unstack` turn a list of trees into one stacked tree and back;
* `stack_length` checks that every leaf of a stack shares the leading axis;
* `find_stacks` lists the fields declared `field(stack=...)` in a tree;
* `take` / `scatter` read and write rows of a stack (the lens steps `model.at.blocks[3]`);
* `scan_layers` runs a stacked tree over a carry with `jax.lax.scan`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple, TypeVar, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.tree_util import GetAttrKey

from ._class._meta import meta_of
from ._record import is_recording, record, recording
from ._tree_util import first_difference, leaf_repr

__all__ = [
    "TIMES",
    "StackSite",
    "find_stacks",
    "scan_layers",
    "scatter",
    "scatter_rows",
    "stack_fields",
    "stack_length",
    "stack_size",
    "shared_leaf",
    "take",
    "tree_stack",
    "tree_unstack",
]

TIMES = "\u00d7"  # the multiplication sign in `Block x24` (ruff flags the glyph itself)

T = TypeVar("T")
C = TypeVar("C")  # a carry
S = TypeVar("S")  # a stack of layers

_BUILD = "Build a stack with ptc.tree_stack([layer, ...]) or jax.vmap(make_layer)(keys)."


def _keystr(path: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(path) or "<root>"


# -- building and taking apart ----------------------------------------------------------------


def tree_stack(trees: Iterable[T], /) -> T:
    """Stack equal-structure trees into one tree whose array leaves gain a leading axis.

    Works on any pytree (treeclasses, dicts, Equinox modules, ...). Static fields (and
    other pytree aux data) must be equal across the trees, as must each leaf's shape and
    dtype; Python numbers become JAX arrays, NumPy leaves stay NumPy. `tree_unstack`
    undoes it. The result is what a field declared `field(stack="layers")` holds.

    Args:
        trees: a non-empty sequence (or iterable) of trees with one structure.

    Returns:
        One tree with the structure of `trees[0]`; each leaf is the stack of the trees'
        leaves at that position (leading axis: one row per tree): `np.stack` when they
        are all NumPy (the stack stays NumPy, dtype kept), else `jnp.stack`.

    Raises:
        ValueError: no trees; a tree whose structure or static fields differ from the
            first's (naming the first differing path); leaves at one path whose shapes
            or dtypes differ, or that are not arrays or numbers (naming the path).
        TypeError: leaves at one path mix NumPy and JAX arrays, and a NumPy one has a
            dtype JAX cannot hold exactly (int64, float64, ... without x64).

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> s = ptc.tree_stack([{"w": jnp.zeros(3)}, {"w": jnp.ones(3)}])
        >>> s["w"].shape
        (2, 3)
    """
    trees = list(trees)
    if not trees:
        raise ValueError(
            "tree_stack: got an empty list of trees; a stack needs at least one tree to "
            "take its structure from."
        )
    flats = [jax.tree_util.tree_flatten(t) for t in trees]
    treedef = flats[0][1]
    for i, (_, td) in enumerate(flats[1:], 1):
        if td != treedef:
            diff = first_difference(trees[0], trees[i])
            diff = diff.replace("trees 0 and 1", f"trees 0 and {i}").replace("tree 1", f"tree {i}")
            raise ValueError(
                f"tree_stack: tree {i} does not have tree 0's structure: {diff}. Stacked "
                "trees must have the same structure and equal static fields."
            )
    columns = zip(*(leaves for leaves, _ in flats)) if flats[0][0] else ()
    out = []
    paths = None
    for j, column in enumerate(columns):
        first = column[0]
        if (
            shared_leaf(first)
            and not isinstance(first, (bool, int, float, complex))
            and all(x is first or _same_shared(x, first) for x in column[1:])
        ):
            out.append(first)  # shared by every layer (a function, a string)
            continue
        mix = _numpy_jax_mix(column)
        bad = mix or _stack_mismatch(column)
        if bad is not None:
            if paths is None:
                paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(trees[0])[0]]
            error = TypeError if mix else ValueError
            raise error(f"tree_stack: the leaf at {_keystr(paths[j])} {bad}")
        out.append(np.stack(column) if _all_numpy(column) else jnp.stack(column))
    return treedef.unflatten(out)


def _all_numpy(column: tuple[Any, ...]) -> bool:
    """Whether every leaf of a column is NumPy: its stack stays NumPy, dtype and all (what
    `tree_unstack` gives back), as `jnp.stack` would wrap int64 and round float64."""
    return all(isinstance(x, (np.ndarray, np.generic)) for x in column)


def _stack_mismatch(column: tuple[Any, ...]) -> str | None:
    """Why the leaves of one position cannot be stacked, or None."""
    first = column[0]
    if not (hasattr(first, "shape") and hasattr(first, "dtype")):
        if not isinstance(first, _NUMBER_TYPES):
            return (
                f"is {leaf_repr(first)}, not an array or number, so it cannot be stacked. "
                "Make it a static field, an array, or the same value in every tree (then all "
                "layers share it)."
            )
        for i, x in enumerate(column[1:], 1):  # Python numbers: jnp.stack makes an array
            if not isinstance(x, _NUMBER_TYPES):
                return (
                    f"is the number {first!r} in tree 0 but {leaf_repr(x)} in tree {i}; "
                    "every tree must hold a number there, or every tree an array of one "
                    "shape and dtype."
                )
        return None
    for i, x in enumerate(column[1:], 1):
        if getattr(x, "shape", None) != first.shape or getattr(x, "dtype", None) != first.dtype:
            return (
                f"is {leaf_repr(first)} in tree 0 but {leaf_repr(x)} in tree {i}; every "
                "tree must hold the same shape and dtype there."
            )
    return None


_NUMBER_TYPES = (bool, int, float, complex)


def _numpy_jax_mix(column: tuple[Any, ...]) -> str | None:
    """Why a column that mixes NumPy and JAX leaves cannot be one JAX array, or None.

    A NumPy dtype that JAX does not hold as is (int64, uint64, float64 without
    `jax_enable_x64`) would be wrapped or rounded by `jnp.stack`, and differs from the
    JAX leaves' dtype anyway: say which trees hold what, and how to choose.
    """
    numpy = [i for i, x in enumerate(column) if isinstance(x, (np.ndarray, np.generic))]
    if not numpy or len(numpy) == len(column):
        return None
    for i in numpy:
        dtype = column[i].dtype
        if jax.dtypes.canonicalize_dtype(dtype) != dtype:
            j = next((j for j, x in enumerate(column) if isinstance(x, jax.Array)), None)
            if j is None:  # NumPy and Python numbers: a mismatch, said by `_stack_mismatch`
                return None
            return (
                f"is a NumPy {leaf_repr(np.asarray(column[i]))} in tree {i}, a dtype JAX cannot hold "
                f"exactly, but a JAX {leaf_repr(column[j])} in tree {j}. Give every tree "
                "NumPy leaves there (the stack stays NumPy), or convert them to JAX first "
                "with the dtype you want (jnp.asarray(x, jnp.int32))."
            )
    return None


def tree_unstack(tree: T, /) -> list[T]:
    """Split a stacked tree along its leading axis: the list `tree_stack` was given.

    Args:
        tree: a tree whose every leaf is an array with the same leading dimension.

    Returns:
        A list with one tree per row of the leading axis, each with `tree`'s structure.

    Raises:
        ValueError: `tree` has no leaves, a leaf has no leading axis, or the leaves'
            leading dimensions differ (naming the leaves).

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> stacked = {"w": jnp.arange(4.0).reshape(2, 2)}
        >>> [t["w"].tolist() for t in ptc.tree_unstack(stacked)]
        [[0.0, 1.0], [2.0, 3.0]]
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    n = stack_length(tree, "tree_unstack")
    # one unstack op per array, not one index per row; shared leaves go to every layer
    rows = [[x] * n if shared_leaf(x) else list(x) for x in leaves]
    return [treedef.unflatten([r[i] for r in rows]) for i in range(n)]


def stack_length(tree: Any, where: str = "the stack", axis: int = 0, prefix: str = "") -> int:
    """The size of dimension `axis` shared by every leaf of the stacked `tree`.

    A ValueError naming the leaves (their paths after `prefix`) when they disagree, when a
    leaf has no such dimension (a Python number, a 0-d array), or when there are no leaves.
    """
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if not shared_leaf(x)]
    if not leaves:
        raise ValueError(
            f"{where}: the stack has no array leaves, so it has no layers to count. {_BUILD}"
        )
    n = _shared_size(leaves, axis)
    if n is not None:
        return n

    def name(p: tuple[Any, ...]) -> str:
        return prefix + jax.tree_util.keystr(p) if prefix else _keystr(p)

    pairs = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if not shared_leaf(x)]
    p0, x0 = pairs[0]
    for p, x in pairs:
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) <= axis:
            what = "a leading (layer) axis" if axis == 0 else f"{axis + 1} stacked axes"
            raise ValueError(
                f"{where}: the leaf {name(p)} is {leaf_repr(x)}, which has no dimension "
                f"{axis}; every leaf of a stack needs {what}. {_BUILD}"
            )
        if shape[axis] != x0.shape[axis]:
            raise ValueError(
                f"{where}: the leaves of a stack disagree on the number of layers "
                f"(dimension {axis}): {name(p0)} is {leaf_repr(x0)} but {name(p)} is "
                f"{leaf_repr(x)}. {_BUILD}"
            )
    raise AssertionError("unreachable")  # pragma: no cover


def stack_size(tree: Any, axis: int) -> int | None:
    """The size of dimension `axis` that every leaf of `tree` shares, or None (displays)."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if not shared_leaf(x)]
    return _shared_size(leaves, axis) if leaves else None


def shared_leaf(x: Any) -> bool:
    """A leaf of a stack that every layer shares rather than a row of: anything that is
    not an array (an activation function or a string in an `eqx.filter_vmap` stack)."""
    return not (hasattr(x, "shape") and hasattr(x, "dtype")) or isinstance(x, type)


def _shared_size(leaves: list[Any], axis: int) -> int | None:
    n = None
    for x in leaves:
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) <= axis or (n is not None and shape[axis] != n):
            return None
        n = shape[axis]
    return n


# -- stacks declared on fields ---------------------------------------------------------------


class StackSite(NamedTuple):
    """A field declared `field(stack=...)`, found in a tree by `find_stacks`."""

    path: tuple[Any, ...]  # JAX key path to the stacked field's value
    axis: str  # the logical name of the stacked axis
    length: int  # the number of layers


def stack_fields(cls: type) -> dict[str, str]:
    """`{field name: stack axis name}` for the stacked fields of a treeclass (or `{}`)."""
    meta = meta_of(cls)
    if meta is None:
        return {}
    return {f.name: f.stack for f in meta.fields if f.stack is not None}


def find_stacks(
    tree: Any, where: str = "find_stacks", skip_empty: bool = False
) -> tuple[StackSite, ...]:
    """Every field declared `field(stack=...)` in `tree`, outermost first.

    Stacks nested inside a stack are listed too; their `length` is their own (dimension
    1 of their leaves, after the outer stack's dimension 0, and so on). `where` names the
    caller in the error raised for a stack whose leaves disagree on its length. With
    `skip_empty`, a stack without leaves (emptied by `tree_filter`) is left out: it has
    no leaves to number, so flat names need no layer count for it.
    """
    out: list[StackSite] = []

    def visit(node: Any, path: tuple[Any, ...], depth: int) -> None:
        meta = meta_of(type(node))
        if meta is None:
            pairs = jax.tree_util.tree_flatten_with_path(
                node, is_leaf=lambda x: x is not node and meta_of(type(x)) is not None
            )[0]
            for p, child in pairs:
                if meta_of(type(child)) is not None:
                    visit(child, path + p, depth)
            return
        d = node.__dict__
        for name in meta.child_names:
            f = meta.fields_by_name[name]
            sub = (*path, GetAttrKey(name))
            if f.stack is not None:
                if skip_empty and not jax.tree_util.tree_leaves(d[name]):
                    continue
                n = stack_length(d[name], where, axis=depth, prefix=_keystr(sub))
                out.append(StackSite(sub, f.stack, n))
                visit(d[name], sub, depth + 1)
            else:
                visit(d[name], sub, depth)

    visit(tree, (), 0)
    return tuple(out)


# -- rows of a stack (lens steps) ----------------------------------------------------------------


def _index(idx: tuple[Any, ...]) -> Any:
    return idx[0] if len(idx) == 1 else idx


def _traced(idx: tuple[Any, ...]) -> bool:
    return any(isinstance(r, Tracer) for r in idx)


def take(tree: T, idx: tuple[Any, ...]) -> T:
    """The rows `idx` (ints, slices or traced ints over the leading axes) of every leaf of
    `tree`. A traced index out of range is clamped into it (as JAX's `x[i]` does)."""
    i = _index(idx)
    if _traced(idx):
        return jax.tree.map(lambda x: x if shared_leaf(x) else jnp.asarray(x)[i], tree)
    getter = operator.itemgetter(i)
    return jax.tree.map(lambda x: x if shared_leaf(x) else getter(x), tree)


def _indexed_shape(shape: tuple[int, ...], idx: tuple[Any, ...]) -> tuple[int, ...]:
    kept = []
    for dim, i in zip(shape, idx):
        if type(i) is slice:
            kept.append(len(range(*i.indices(dim))))
    return (*kept, *shape[len(idx) :])


_NUMBERS = {bool: 0, int: 1, float: 2, complex: 3}


def _category(dtype: Any) -> int:
    for cat, kind in enumerate((np.bool_, np.integer, np.floating, np.complexfloating)):
        if jnp.issubdtype(dtype, kind):
            return cat
    return -1


def scatter(tree: T, idx: tuple[Any, ...], value: Any, where: str) -> T:
    """`tree` with the rows `idx` of every leaf replaced by the leaves of `value`.

    `value` must have the structure of `take(tree, idx)` (static fields included) and each
    leaf that row's shape and dtype: a stack cannot hold layers of different shapes. A
    Python number fills the rows (`bool` < `int` < `float` < `complex`: one the stack's
    dtype holds without losing its kind).
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    vleaves, vdef = jax.tree_util.tree_flatten(value)
    if vdef != treedef:
        diff = first_difference(take(tree, idx), value)
        diff = diff.replace("tree 0", "the stack's layer").replace("tree 1", "the value")
        diff = diff.replace("trees 0 and 1", "the stack's layer and the value")
        raise ValueError(
            f"{where}.set(): the value does not have the structure of a layer of the "
            f"stack: {diff}. A stack's layers share one structure and equal static fields."
        )
    i = _index(idx)
    traced = _traced(idx)
    out = []
    paths = None
    for j, (x, v) in enumerate(zip(leaves, vleaves)):
        if shared_leaf(x):  # shared by every layer: a layer cannot hold its own
            if v is not x and not _same_shared(v, x):
                if paths is None:
                    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(value)[0]]
                raise ValueError(
                    f"{where}.set(): the value's leaf at {jax.tree_util.keystr(paths[j])} is "
                    f"{leaf_repr(v)}, but every layer of the stack shares {leaf_repr(x)} there "
                    "(it is not an array, so it has no row per layer). Keep it, or set it "
                    "for the whole stack."
                )
            out.append(x)
            continue
        want = _indexed_shape(x.shape, idx)
        if type(v) in _NUMBERS:  # a Python number fills the rows, if the dtype can hold it
            ok = _NUMBERS[type(v)] <= _category(x.dtype)
            if ok and type(v) is int and _category(x.dtype) == 1:
                info = np.iinfo(x.dtype)
                if not info.min <= v <= info.max:
                    if paths is None:
                        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(value)[0]]
                    at = jax.tree_util.keystr(paths[j])
                    raise OverflowError(
                        f"{where}{at}.set(): {v} does not fit the stack's dtype "
                        f"{np.dtype(x.dtype).name} (range {info.min}..{info.max}); pass a "
                        "value in range, or cast the leaf to a wider dtype first."
                    )
        else:
            ok = np.shape(v) == want and getattr(v, "dtype", x.dtype) == x.dtype
        if not ok:
            if paths is None:
                paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(value)[0]]
            wanted = leaf_repr(jax.ShapeDtypeStruct(want, x.dtype))
            what = f"'s leaf at {jax.tree_util.keystr(paths[j])}" if paths[j] else ""
            raise ValueError(
                f"{where}.set(): the value{what} is {leaf_repr(v)}, where the stack holds "
                f"{wanted} (a stack's layers share shapes and dtypes; cast with "
                ".astype(...) or reshape first)."
            )
        if traced:  # clamped into range like `take`, so a set is read back by a get
            out.append(jnp.asarray(x).at[i].set(v, mode="clip"))
        elif isinstance(x, np.ndarray):
            y = x.copy()
            y[i] = v
            out.append(y)
        else:
            out.append(x.at[i].set(v))
    return treedef.unflatten(out)


def scatter_rows(
    tree: T, rows: list[tuple[int, Any]], where: str, olds: list[Any] | None = None
) -> T:
    """`tree` with each row `i` replaced by its layer, for many rows at once: each layer
    is checked as `scatter` checks one (the error names that layer), then every leaf is
    written once (`jnp.stack` when the rows are all the layers in order)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    columns: list[list[Any]] = [[] for _ in leaves]
    for _, layer in rows:
        vleaves, vdef = jax.tree_util.tree_flatten(layer)
        if vdef != treedef or any(
            not shared_leaf(x)
            and (np.shape(v) != x.shape[1:] or getattr(v, "dtype", None) != x.dtype)
            for x, v in zip(leaves, vleaves)
        ):
            return _scatter_each(tree, rows, where)  # the one-by-one path says what is wrong
        for col, v in zip(columns, vleaves):
            col.append(v)
    idx = [i for i, _ in rows]
    n = stack_length(tree, where, prefix=where)
    whole = idx == list(range(n))
    kept = [[] for _ in leaves] if olds is None else list(zip(*map(_leaves_of, olds)))
    out = []
    for x, col, was in zip(leaves, columns, kept):
        if olds is not None and all(a is b for a, b in zip(col, was)):
            out.append(x)  # no layer changed this leaf
        elif shared_leaf(x):
            if any(v is not x and not _same_shared(v, x) for v in col):
                return _scatter_each(tree, rows, where)
            out.append(x)
        elif isinstance(x, np.ndarray):
            y = np.stack(col) if whole else x.copy()
            if not whole:
                y[idx] = np.stack(col)
            out.append(y)
        else:
            out.append(jnp.stack(col) if whole else x.at[np.asarray(idx)].set(jnp.stack(col)))
    return treedef.unflatten(out)


def _leaves_of(tree: Any) -> list[Any]:
    return jax.tree_util.tree_leaves(tree)


def _scatter_each(tree: Any, rows: list[tuple[int, Any]], where: str) -> Any:
    for i, layer in rows:
        tree = scatter(tree, (i,), layer, f"{where}[{i}]")
    return tree


def _same_shared(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


# -- scanning ---------------------------------------------------------------------------------


@overload
def scan_layers(
    fn: Callable[[S, C], C],
    layers: S,
    carry: C,
    /,
    *,
    stateful: Literal[False] = False,
    remat: bool = False,
    policy: Callable[..., Any] | None = None,
    unroll: int | bool = 1,
    reverse: bool = False,
) -> C: ...
@overload
def scan_layers(
    fn: Callable[[S, C], tuple[C, S]],
    layers: S,
    carry: C,
    /,
    *,
    stateful: Literal[True],
    remat: bool = False,
    policy: Callable[..., Any] | None = None,
    unroll: int | bool = 1,
    reverse: bool = False,
) -> tuple[C, S]: ...
def scan_layers(
    fn: Callable[[S, C], Any],
    layers: S,
    carry: C,
    /,
    *,
    stateful: bool = False,
    remat: bool = False,
    policy: Callable[..., Any] | None = None,
    unroll: int | bool = 1,
    reverse: bool = False,
) -> C | tuple[C, S]:
    """Run a stack of layers over a carry with `jax.lax.scan`: one compiled step, any depth.

    The compiled program holds `fn` once, so compile time does not grow with the number
    of layers; gradients are those of the unrolled Python loop. Under `ptc.capture`, the
    outputs recorded inside the layers come out stacked along the layer axis.

    Args:
        fn: `fn(layer, carry) -> carry`, called with one layer of the stack (an
            ordinary, unstacked tree such as a `Block`). With `stateful=True`:
            `fn(layer, carry) -> (carry, new_layer)`.
        layers: the stacked layers (e.g. `model.blocks`): any tree whose leaves share
            a leading axis; a tuple `(blocks, keys)` scans several stacks together.
        carry: the initial carry (e.g. the activations).
        stateful: layers with state (batch statistics, an RNG key): `fn` also returns
            the updated layer, and the updated layers come back stacked.
        remat: wrap `fn` in `jax.checkpoint`: recompute its activations in the
            backward pass instead of storing them.
        policy: with `remat=True`, what to save anyway, e.g.
            `jax.checkpoint_policies.dots_saveable`.
        unroll: passed to `jax.lax.scan` (layers per loop iteration; `True`: all).
        reverse: run the last layer first.

    Returns:
        The final carry; with `stateful=True`, `(carry, new_layers)`.

    Raises:
        ValueError: `policy` without `remat=True`; leaves of `layers` that do not share
            a leading axis; with `stateful=True`, a layer returned with another
            structure.
        TypeError: with `stateful=True`, `fn` returned something other than a pair.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> layers = ptc.tree_stack([{"w": jnp.float32(2)}, {"w": jnp.float32(3)}])
        >>> ptc.scan_layers(lambda layer, x: x * layer["w"], layers, jnp.float32(1))
        Array(6., dtype=float32)
    """
    if policy is not None and not remat:
        raise ValueError(
            "scan_layers: a checkpoint policy only applies with remat=True; pass "
            "remat=True, policy=... (or drop policy)."
        )
    n = stack_length(layers, "scan_layers(layers)")
    # Under `ptc.capture`, what the layers record is a tracer of the scan body: it leaves
    # the body as an extra scan output and is recorded outside, stacked per layer.
    tapped = is_recording()
    names: list[str] = []

    def run(layer: Any, c: Any) -> Any:
        if not tapped:
            return fn(layer, c)
        with recording() as frame:
            out = fn(layer, c)
        names[:] = [name for name, _ in frame]
        return out, [value for _, value in frame]

    step = jax.checkpoint(run, policy=policy, prevent_cse=False) if remat else run
    layer_def = jax.tree_util.tree_structure(layers)

    def body(c: Any, layer: Any) -> tuple[Any, Any]:
        out, records = step(layer, c) if tapped else (step(layer, c), None)
        new_c, new_layer = checked(out, layer) if stateful else (out, None)
        return new_c, (new_layer, records)

    def checked(out: Any, layer: Any) -> tuple[Any, Any]:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "scan_layers(stateful=True): fn must return (carry, new_layer), got "
                f"{leaf_repr(out) if not isinstance(out, tuple) else f'a {len(out)}-tuple'}."
            )
        new_c, new_layer = out
        if jax.tree_util.tree_structure(new_layer) != layer_def:
            diff = first_difference(layer, new_layer)
            diff = diff.replace("tree 0", "the layer").replace("tree 1", "fn's layer")
            diff = diff.replace("trees 0 and 1", "the layer and fn's layer")
            raise ValueError(
                "scan_layers(stateful=True): fn returned a layer whose structure differs "
                f"from the layer it got: {diff}. Return the layer with updated leaves only."
            )
        return new_c, new_layer

    flat, treedef = jax.tree_util.tree_flatten(layers)
    shared = [shared_leaf(x) for x in flat]
    if any(shared):  # shared leaves (functions, strings) are closed over, not scanned
        xs: Any = [None if s else x for x, s in zip(flat, shared)]

        def scanned(c: Any, layer: Any) -> tuple[Any, Any]:
            rows = layer
            layer = treedef.unflatten([x if s else r for x, r, s in zip(flat, rows, shared)])
            new_c, (new_layer, records) = body(c, layer)
            if new_layer is not None:
                leaves = jax.tree_util.tree_leaves(new_layer)
                new_layer = [None if s else y for y, s in zip(leaves, shared)]
            return new_c, (new_layer, records)

    else:
        xs, scanned = layers, body
    carry, (ys, records) = jax.lax.scan(
        scanned, carry, xs, length=n, unroll=unroll, reverse=reverse
    )
    if stateful and any(shared):
        ys = treedef.unflatten([x if s else r for x, r, s in zip(flat, ys, shared)])
    for name, value in zip(names, records or ()):
        record(name, value)
    return (carry, ys) if stateful else carry
