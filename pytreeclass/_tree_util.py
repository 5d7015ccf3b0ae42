"""Generic pytree helpers that know nothing of treeclasses (the bottom layer).

* what counts as an array (`is_array`, `has_shape_dtype`);
* one level of a pytree node (`one_level`) and what a key is called (`key_name`,
  `key_label`);
* short text for a leaf (`leaf_repr`) and for elided long containers (`Elided`);
* merging structures with `None` holes, and where two structures first differ
  (`merge_nodes`, `first_difference`), for `tree_merge` and for error messages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, GetAttrKey

from ._cache import type_tag

__all__ = [
    "ARRAY_TYPES",
    "MAX_ITEMS",
    "Elided",
    "StructureMismatch",
    "describe_node",
    "elide",
    "first_difference",
    "has_shape_dtype",
    "is_array",
    "key_label",
    "key_name",
    "leaf_repr",
    "listing",
    "merge_nodes",
    "one_level",
]

# -- arrays -------------------------------------------------------------------------------------

# Concrete or traced arrays and NumPy scalars: values that `np.asarray` turns into an array.
ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


def is_array(x: Any) -> bool:
    """Whether `x` is an array value (a `jax.Array`, tracers included, or a NumPy array or
    scalar): what equality compares by value."""
    return isinstance(x, ARRAY_TYPES)


def has_shape_dtype(x: Any) -> bool:
    """Whether `x` describes an array: anything with a `shape` and a `dtype` (arrays, NumPy
    scalars, `jax.ShapeDtypeStruct`), but not a class (`np.ndarray` itself has both)."""
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type)


# -- one level of a node ------------------------------------------------------------------------


def one_level(node: Any, keyed: bool = True) -> tuple[Any, list[Any], Any] | None:
    """`(keys, children, treedef)` of one level of pytree `node`; `None` if `node` is a leaf.

    The children are the leaves of `treedef`, so `treedef.unflatten(children)` rebuilds the
    node. With `keyed=False`, `keys` is `None` (a cheaper flatten, without key paths).
    """
    if keyed:
        pairs, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
        if treedef.num_nodes == 1 and treedef.num_leaves == 1:
            return None
        return [p[0] for p, _ in pairs], [c for _, c in pairs], treedef
    children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return None
    return None, children, treedef


def key_name(key: Any) -> Any:
    """The name a key path entry gives its child: a field/attribute name or a dict key;
    `None` for positional keys."""
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, DictKey):
        return key.key
    return None


def key_label(key: Any) -> str:
    """A key path entry as a label: a field name bare (`w`), any other key as JAX writes
    it (`['a']`, `[0]`)."""
    if isinstance(key, GetAttrKey):
        return key.name
    return jax.tree_util.keystr((key,))


# -- leaves as text -----------------------------------------------------------------------------


def _dtype_short(dtype: Any) -> str:
    # The names jaxprs use: f32, bf16, i8, u4, c64, f8_e4m3fn, ... (so they read the same).
    if dtype == np.bool_:
        return "bool"
    name = np.dtype(dtype).name
    if name == "bfloat16":
        return "bf16"
    return (
        name.replace("float", "f").replace("uint", "u").replace("int", "i").replace("complex", "c")
    )


def leaf_repr(x: Any) -> str:
    """Short form of a leaf: arrays as `f32[3,4]`, classes by name, others by a short `repr`.

    NumPy scalars keep their `repr`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from pytreeclass._tree_util import leaf_repr
        >>> leaf_repr(jnp.zeros((3, 4))), leaf_repr(jnp.ones(2, "bfloat16"))
        ('f32[3,4]', 'bf16[2]')
    """
    if has_shape_dtype(x) and not isinstance(x, np.generic):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            dt = "key"
        else:
            try:
                dt = _dtype_short(x.dtype)
            except TypeError:
                dt = str(x.dtype)
        return f"{dt}[{','.join(map(str, x.shape))}]"
    if isinstance(x, type):
        return x.__name__
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


MAX_ITEMS = 8  # longer lists/tuples/dicts show their first 6 items, "...(n more)", the last


class Elided:
    """Stands for the children left out of a long container in a display."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"...({self.n} more)"


def elide(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """`items` shortened to `MAX_ITEMS`: the first ones, an `Elided`, the last one."""
    if len(items) <= MAX_ITEMS:
        return items
    head = MAX_ITEMS - 2
    return [*items[:head], ("", Elided(len(items) - head - 1)), items[-1]]


def listing(items: Any, limit: int = 20) -> str:
    """Names for a message: at most `limit`, then how many more (`(none)` for none)."""
    items = list(items)
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more if items else "(none)"


# -- merging structures -------------------------------------------------------------------------


class StructureMismatch(ValueError):
    """Two trees to merge differ somewhere other than at a `None` hole."""


def describe_node(node: Any) -> str:
    """A node in words, for structure mismatch messages."""
    level = one_level(node)
    if level is None:
        return f"leaf {leaf_repr(node)}"
    keys = ", ".join(jax.tree_util.keystr((k,)) for k in level[0])
    return f"{type(node).__name__} with children {keys or '(none)'}"


def static_difference(a: Any, b: Any, child_keys: list[Any]) -> str:
    """Which static fields of two same-class dataclass nodes differ, in words.

    The static fields are the dataclass fields that are not children (`child_keys`); they
    live in the pytree's aux data, which is what differs.
    """
    if not dataclasses.is_dataclass(a):
        return "their pytree aux data"
    children = {key_name(k) for k in child_keys}
    diffs = []
    for f in dataclasses.fields(a):
        if f.name in children:
            continue
        va, vb = getattr(a, f.name, None), getattr(b, f.name, None)
        if va != vb or type_tag(va) != type_tag(vb):  # `1` vs `1.0`: treeclass aux is typed
            diffs.append(f"{f.name}: {va!r} vs {vb!r}")
    return "; ".join(diffs) or "their pytree aux data"


def merge_nodes(nodes: list[tuple[int, Any]], path: tuple[Any, ...]) -> Any:
    """Merge `(tree index, node)` pairs at key path `path`: `None` is a hole, later non-None
    leaves win; raise `StructureMismatch` where the structures differ otherwise."""
    present = [(i, n) for i, n in nodes if n is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0][1]
    levels = [one_level(n) for _, n in present]
    if all(lv is None for lv in levels):
        return present[-1][1]  # later non-None values win
    ref_i, ref = next((i, n) for (i, n), lv in zip(present, levels) if lv is not None)
    ref_level = next(lv for lv in levels if lv is not None)
    for (i, n), lv in zip(present, levels):
        if lv is None or lv[2] != ref_level[2]:
            where = jax.tree_util.keystr(path) or "the root"
            if lv is not None and type(n) is type(ref) and lv[0] == ref_level[0]:
                raise StructureMismatch(
                    f"tree_merge: the trees differ at {where}: trees {ref_i} and {i} hold "
                    f"{type(n).__name__} nodes whose static parts differ "
                    f"({static_difference(ref, n, lv[0])}). Trees to merge must have the same "
                    "structure, except that None may stand for any subtree."
                )
            raise StructureMismatch(
                f"tree_merge: the trees differ at {where}: tree {ref_i} has "
                f"{describe_node(ref)}; tree {i} has {describe_node(n)}. Trees to merge must "
                "have the same structure, except that None may stand for any subtree."
            )
    keys, _, treedef = ref_level
    child_lists = [lv[1] for lv in levels if lv is not None]  # all present, checked above
    children = [
        merge_nodes([(i, kids[c]) for (i, _), kids in zip(present, child_lists)], (*path, keys[c]))
        for c in range(len(keys))
    ]
    return treedef.unflatten(children)


def first_difference(a: Any, b: Any) -> str:
    """Where two trees' structures first differ, in words (for error messages)."""
    try:
        merge_nodes([(0, a), (1, b)], ())
    except StructureMismatch as e:
        return str(e).removeprefix("tree_merge: ").split(". Trees to merge")[0]
    la, lb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    return f"structures {la} and {lb} differ"
