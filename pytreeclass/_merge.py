"""tree_mask, tree_filter, tree_partition, tree_merge, tree_labels.

Holes are `None`, as in `equinox.partition`/`equinox.combine`, so outputs feed either library.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import jax

from ._cache import BoundedCache, constant_tree, type_tag
from ._errors import depth_guard, reraise_if_too_deep
from ._filters import All, _cacheable, as_filter, select
from ._kinds import leaf_kinds

__all__ = [
    "first_difference",
    "tree_filter",
    "tree_labels",
    "tree_mask",
    "tree_merge",
    "tree_partition",
]


_GUARD_LABELS = depth_guard("tree_labels")
# `jax.tree_util.tree_flatten` minus its Python frame (the registry's flatten is C++).
_flatten = jax.tree_util.default_registry.flatten


# Per (treedef, filters): everything a call needs besides one flatten and the unflattens.
# Only filters that depend on structure alone are cached (`_cacheable`); others (e.g.
# eqx.is_array) are evaluated on every call. Each side of a partition is rebuilt from a
# C-level itemgetter over the leaves and the treedef of that side (holes are None nodes),
# so a call runs no Python loop over the leaves.
# Every cache here holds treedefs (the sides, the masks, the merged structure), so all are
# strict: a tree whose static values or dict keys are `==` but not of the same types
# misses instead of getting the first tree's (see `BoundedCache`).
_SELECTIONS = BoundedCache(maxsize=4096, strict=True)
# Per (treedef, filters) for structure-only filters: a maker of the mask (`constant_tree`).
_MASKS = BoundedCache(maxsize=4096, strict=True)
# The same for tree_labels, per (treedef, mapping, the mapping's label types).
_LABELS = BoundedCache(maxsize=1024, strict=True)


def _getter(indices: list[int]) -> Callable[[list[Any]], tuple[Any, ...]]:
    """A C-level `leaves -> (leaves[i] for i in indices)` (an itemgetter)."""
    if len(indices) >= 2:
        return operator.itemgetter(*indices)
    if len(indices) == 1:
        i = indices[0]
        return lambda leaves: (leaves[i],)
    return lambda leaves: ()


def _is_cacheable(filters: tuple[Any, ...]) -> bool:
    try:
        f = as_filter(filters[0]) if len(filters) == 1 else All(*filters)
    except TypeError:
        return False
    return _cacheable(f)


def _side(treedef: Any, leaves: list[Any], picked: list[int]) -> tuple[Any, Any] | None:
    """(getter, treedef with None holes) of the tree keeping only the `picked` leaves."""
    wanted = set(picked)
    holed = treedef.unflatten([x if i in wanted else None for i, x in enumerate(leaves)])
    holed_def = jax.tree_util.tree_structure(holed)
    if holed_def.num_leaves != len(picked):  # a node type that drops None children
        return None
    return _getter(picked), holed_def


def _selection(tree: Any, filters: tuple[Any, ...]) -> tuple[Any, Any, Any, Any, Any]:
    """(leaves, treedef, bools, selected side, unselected side) for `filters` on `tree`."""
    leaves, treedef = _flatten(tree)
    plan = _SELECTIONS.get((treedef, filters))  # None for unhashable filters (masks)
    if plan is not None:
        return (leaves, treedef, *plan)
    _, sel = select(tree, filters, (leaves, treedef))
    if _is_cacheable(filters):
        yes = [i for i, s in enumerate(sel) if s]
        no = [i for i, s in enumerate(sel) if not s]
        plan = (sel, _side(treedef, leaves, yes), _side(treedef, leaves, no))
        _SELECTIONS.put((treedef, filters), plan)
        return (leaves, treedef, *plan)
    return leaves, treedef, sel, None, None


def _pick(leaves: list[Any], treedef: Any, sel: Any, side: Any, keep: bool) -> Any:
    if side is not None:
        take, holed_def = side
        return holed_def.unflatten(take(leaves))
    if keep:
        return treedef.unflatten([x if s else None for x, s in zip(leaves, sel)])
    return treedef.unflatten([None if s else x for x, s in zip(leaves, sel)])


def tree_mask(tree: Any, /, *filters: Any) -> Any:
    """A tree of bools shaped like `tree`: True where every filter selects the leaf.

    Example:
        >>> import pytreeclass as ptc
        >>> ptc.tree_mask({"a": 1, "b": 2.0}, float)
        {'a': False, 'b': True}
    """
    try:
        leaves, treedef = _flatten(tree)
        make = _MASKS.get((treedef, filters))
        if make is not None:
            return make()
        _, sel = select(tree, filters, (leaves, treedef))
        if not _is_cacheable(filters):
            return treedef.unflatten(sel)
        make = constant_tree(treedef, list(sel))
        _MASKS.put((treedef, filters), make)
        return make()
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_mask", e)
        raise


def tree_filter(tree: Any, /, *filters: Any, inverse: bool = False) -> Any:
    """`tree` with unselected leaves replaced by `None` (selected ones, with `inverse=True`).

    Example:
        >>> import pytreeclass as ptc
        >>> ptc.tree_filter({"a": 1, "b": 2.0}, float)
        {'a': None, 'b': 2.0}
    """
    try:
        leaves, treedef, sel, yes, no = _selection(tree, filters)
        if inverse:
            return _pick(leaves, treedef, sel, no, keep=False)
        return _pick(leaves, treedef, sel, yes, keep=True)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_filter", e)
        raise


def tree_partition(tree: Any, /, *filters: Any) -> tuple[Any, Any]:
    """Split `tree` into (selected, rest), each with `None` holes; `tree_merge` undoes it.

    Example:
        >>> import pytreeclass as ptc
        >>> ptc.tree_partition({"a": 1, "b": 2.0}, float)
        ({'a': None, 'b': 2.0}, {'a': 1, 'b': None})
    """
    try:
        leaves, treedef, sel, yes, no = _selection(tree, filters)
        return (
            _pick(leaves, treedef, sel, yes, keep=True),
            _pick(leaves, treedef, sel, no, keep=False),
        )
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_partition", e)
        raise


# -- merging ----------------------------------------------------------------------------------


def _is_none(x: Any) -> bool:
    return x is None


def _one_level(node: Any) -> tuple[list[Any], list[Any], Any] | None:
    """(keys, children, one-level treedef) of a pytree node; None for a leaf."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return None
    return [p[0] for p, _ in pairs], [c for _, c in pairs], treedef


def _describe(node: Any) -> str:
    if isinstance(node, _Marker):  # merge plans run on marker trees: their leaves are markers
        return "a leaf"
    level = _one_level(node)
    if level is None:
        from ._repr import leaf_repr

        return f"leaf {leaf_repr(node)}"
    keys = ", ".join(jax.tree_util.keystr((k,)) for k in level[0])
    return f"{type(node).__name__} with children {keys or '(none)'}"


def _static_difference(a: Any, b: Any) -> str:
    """Which static fields of two same-class treeclass nodes differ, in words."""
    meta = getattr(type(a), "__ptc_meta__", None)
    if meta is None:
        return "their pytree aux data"
    diffs = []
    for name in meta.static_names:
        x, y = a.__dict__.get(name), b.__dict__.get(name)
        if x != y or type_tag(x) != type_tag(y):  # `1` and `1.0` differ (typed aux data)
            diffs.append(f"{name}: {x!r} vs {y!r}")
    return "; ".join(diffs) or "their pytree aux data"


class _Mismatch(ValueError):
    pass


def _merge_nodes(nodes: list[tuple[int, Any]], path: tuple[Any, ...]) -> Any:
    present = [(i, n) for i, n in nodes if n is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0][1]
    levels = [_one_level(n) for _, n in present]
    if all(lv is None for lv in levels):
        return present[-1][1]  # later non-None values win
    ref_i, ref = next((i, n) for (i, n), lv in zip(present, levels) if lv is not None)
    ref_level = next(lv for lv in levels if lv is not None)
    for (i, n), lv in zip(present, levels):
        if lv is None or lv[2] != ref_level[2]:
            where = jax.tree_util.keystr(path) or "the root"
            if lv is not None and type(n) is type(ref) and lv[0] == ref_level[0]:
                raise _Mismatch(
                    f"tree_merge: the trees differ at {where}: trees {ref_i} and {i} hold "
                    f"{type(n).__name__} nodes whose static parts differ "
                    f"({_static_difference(ref, n)}). Trees to merge must have the same "
                    "structure, except that None may stand for any subtree."
                )
            raise _Mismatch(
                f"tree_merge: the trees differ at {where}: tree {ref_i} has "
                f"{_describe(ref)}; tree {i} has {_describe(n)}. Trees to merge must have "
                "the same structure, except that None may stand for any subtree."
            )
    keys, _, treedef = ref_level
    child_lists = [lv[1] for lv in levels if lv is not None]  # all present, checked above
    children = [
        _merge_nodes([(i, kids[c]) for (i, _), kids in zip(present, child_lists)], (*path, keys[c]))
        for c in range(len(keys))
    ]
    return treedef.unflatten(children)


class _Marker:
    __slots__ = ("leaf", "tree")

    def __init__(self, tree: int, leaf: int) -> None:
        self.tree, self.leaf = tree, leaf


_PLANS = BoundedCache(maxsize=4096, strict=True)


def _plan(trees: tuple[Any, ...], treedefs: tuple[Any, ...]) -> tuple[Any, Any]:
    """Output treedef, and a getter that picks every output leaf from the trees' leaves
    joined in order (one C-level call instead of a Python loop)."""
    markers = [
        td.unflatten([_Marker(i, j) for j in range(td.num_leaves)]) for i, td in enumerate(treedefs)
    ]
    merged = _merge_nodes(list(enumerate(markers)), ())
    out, out_def = jax.tree_util.tree_flatten(merged)
    offsets = [0]
    for td in treedefs:
        offsets.append(offsets[-1] + td.num_leaves)
    return out_def, _getter([offsets[m.tree] + m.leaf for m in out])


def tree_merge(tree: Any, /, *updates: Any) -> Any:
    """Put partitioned trees back together; later non-`None` values win.

    A `None` in any tree is a hole: it may stand for a leaf or a whole subtree. Trees whose
    structures differ elsewhere raise `ValueError` naming the first differing key path.

    Example:
        >>> import pytreeclass as ptc
        >>> params, rest = ptc.tree_partition({"a": 1, "b": 2.0}, float)
        >>> ptc.tree_merge(params, rest)
        {'a': 1, 'b': 2.0}
    """
    try:
        trees = (tree, *updates)
        if len(updates) == 1:  # the common case, without a loop
            leaves, td0 = _flatten(tree)
            more, td1 = _flatten(updates[0])
            leaves = leaves + more
            treedefs: tuple[Any, ...] = (td0, td1)
        else:
            flats = [_flatten(t) for t in trees]
            leaves = [x for flat, _ in flats for x in flat]
            treedefs = tuple(td for _, td in flats)
        plan = _PLANS.get(treedefs)
        if plan is None:
            try:
                plan = _plan(trees, treedefs)
            except RecursionError:
                raise
            except Exception:
                # A mismatch (found again on the real trees, so the message shows real
                # leaves), or a node type that cannot be rebuilt around markers: merge
                # directly, uncached.
                try:
                    return _merge_nodes(list(enumerate(trees)), ())
                except _Mismatch as e:
                    raise ValueError(str(e)) from None
            _PLANS.put(treedefs, plan)
        out_def, take = plan
        return out_def.unflatten(take(leaves))
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_merge", e)
        raise


def first_difference(a: Any, b: Any) -> str:
    """Where two trees' structures first differ, in words (for error messages)."""
    try:
        _merge_nodes([(0, a), (1, b)], ())
    except _Mismatch as e:
        return str(e).removeprefix("tree_merge: ").split(". Trees to merge")[0]
    la, lb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    return f"structures {la} and {lb} differ"


# -- labels -----------------------------------------------------------------------------------


def _label(kind: Any, mapping: Mapping[Any, Any] | None) -> Any:
    if mapping is not None:
        if kind is None:
            if None in mapping:
                return mapping[None]
        else:
            for ancestor in kind.__mro__:
                if ancestor in mapping:
                    return mapping[ancestor]
    return "none" if kind is None else kind.__name__


def tree_labels(tree: Any, /, mapping: Mapping[Any, Any] | None = None) -> Any:
    """Label every leaf by its kind, for `optax.multi_transform(txs, ptc.tree_labels)`.

    Labels are the kind's class name (`"Parameter"`) and `"none"` for kind-less leaves;
    `mapping` (`{Kind or None: label}`) overrides them, a subkind taking the entry of its
    nearest listed ancestor.

    Example:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Layer:
        ...     w: jnp.ndarray = ptc.field(kind=ptc.Parameter)
        ...     mean: jnp.ndarray = ptc.field(kind=ptc.BatchStat)
        >>> ptc.tree_labels(Layer(jnp.ones(2), jnp.zeros(2)))
        Layer(w='Parameter', mean='BatchStat')
        >>> ptc.tree_labels(Layer(jnp.ones(2), jnp.zeros(2)), {ptc.State: "frozen"})
        Layer(w='Parameter', mean='frozen')
    """
    if mapping is not None and not isinstance(mapping, Mapping):
        raise TypeError(
            f"tree_labels(mapping={mapping!r}): mapping must be a dict from a Kind (or None) "
            "to a label, e.g. {ptc.Parameter: 'adam', None: 'frozen'}."
        )
    with _GUARD_LABELS:
        treedef = jax.tree_util.tree_structure(tree)
        if mapping is None:
            key: Any = treedef
        else:  # labels `1` and `1.0` are `==`: the key says which types they are
            items = tuple(mapping.items())
            key = (treedef, items, tuple(type_tag(v) for _, v in items))
        make = _LABELS.get(key)  # None for unhashable labels: computed every call
        if make is not None:
            return make()
        kinds = leaf_kinds(tree, treedef)
        table: dict[Any, Any] = {}
        labels = []
        for k in kinds:
            label = table.get(k, table)
            if label is table:
                label = table[k] = _label(k, mapping)
            labels.append(label)
        make = constant_tree(treedef, labels)
        _LABELS.put(key, make)
        return make()
