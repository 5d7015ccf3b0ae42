"""`tree_labels`: a label per leaf from its kind or from filters, for `optax.multi_transform`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import jax

from ._cache import BoundedCache, type_tag
from ._class._kinds import Kind
from ._class._meta import is_treeclass
from ._errors import reraise_if_too_deep
from ._filters import as_filter, select_leaves
from ._leaf_facts import constant_tree, leaf_kinds

T = TypeVar("T")
__all__ = ["tree_labels"]

# Per (treedef, mapping, the mapping's label types): a maker of the labels tree. Strict (see
# `BoundedCache`): the labels tree is a treedef, and must hold this tree's statics and keys.
_LABELS = BoundedCache(maxsize=1024, strict=is_treeclass)


def _kind_label(kind: Any, mapping: Mapping[Any, Any] | None) -> Any:
    if mapping is not None:
        if kind is None:
            if None in mapping:
                return mapping[None]
        else:
            for ancestor in kind.__mro__:
                if ancestor in mapping:
                    return mapping[ancestor]
    return "none" if kind is None else kind.__name__


def tree_labels(tree: T, /, mapping: Mapping[Any, Any] | None = None) -> T:
    """Label every leaf by its kind, for `optax.multi_transform(txs, ptc.tree_labels)`.

    Args:
        tree: any pytree.
        mapping: `{key: label}` overriding the default labels. When every key is a
            `Kind` (or `None`, for kind-less leaves), a subkind takes the entry of its
            nearest listed ancestor. Any other filter may be a key too (a node type
            such as `ptc.OfType(Norm)`, a name, a dotted name, a callable,
            `ptc.Any/All/Not`): then the keys are tried in the mapping's order and the
            first whose filter selects a leaf gives its label (a `Kind` key selects that
            kind and its subkinds, `None` the kind-less leaves); a leaf no key selects
            keeps its default label.

    Returns:
        A tree with `tree`'s structure whose leaves are labels, the kind's class name
        (`"Parameter"`) or `"none"` for kind-less leaves, unless `mapping` says
        otherwise.

    Raises:
        TypeError: `mapping` is not a mapping, or one of its keys is not a filter.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Layer:
        ...     w: jnp.ndarray = ptc.field(kind=ptc.Parameter)
        ...     mean: jnp.ndarray = ptc.field(kind=ptc.BatchStat)
        >>> layer = Layer(jnp.ones(2), jnp.zeros(2))
        >>> ptc.tree_labels(layer)
        Layer(w='Parameter', mean='BatchStat')
        >>> ptc.tree_labels(layer, {ptc.State: "frozen"})
        Layer(w='Parameter', mean='frozen')
        >>> ptc.tree_labels(layer, {"mean": "stats", ptc.Parameter: "adam"})
        Layer(w='adam', mean='stats')
    """
    if mapping is not None and not isinstance(mapping, Mapping):
        raise TypeError(
            f"tree_labels(mapping={mapping!r}): mapping must be a dict from a Kind (or None) "
            "to a label, e.g. {ptc.Parameter: 'adam', None: 'frozen'}."
        )
    try:
        treedef = jax.tree_util.tree_structure(tree)
        if mapping is None:
            key: Any = treedef
        else:  # labels `1` and `1.0` are `==`: the key says which types they are
            items = tuple(mapping.items())
            key = (treedef, items, tuple(type_tag(v) for _, v in items))
        make = _LABELS.get(key)  # None for unhashable labels: computed every call
        if make is not None:
            return make()
        if mapping is not None and not all(_is_kind_key(k) for k in mapping):
            return _labels_by_filters(tree, treedef, mapping, key)
        kinds = leaf_kinds(tree, treedef)
        table: dict[Any, Any] = {}
        labels = []
        for k in kinds:
            label = table.get(k, table)
            if label is table:
                label = table[k] = _kind_label(k, mapping)
            labels.append(label)
        make = constant_tree(treedef, labels)
        _LABELS.put(key, make)
        return make()
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_labels", e)
        raise


def _is_kind_key(k: Any) -> bool:
    return k is None or (isinstance(k, type) and issubclass(k, Kind))


def _labels_by_filters(tree: Any, treedef: Any, mapping: Mapping[Any, Any], key: Any) -> Any:
    """Labels from a mapping with filter keys: the first key selecting a leaf wins."""
    kinds = leaf_kinds(tree, treedef)
    labels: list[Any] = [_kind_label(k, None) for k in kinds]
    done = [False] * len(labels)
    flat = jax.tree_util.tree_flatten(tree)
    cacheable = True
    for k, label in mapping.items():
        if k is None:
            sel = tuple(kind is None for kind in kinds)
        else:
            try:
                f = as_filter(k)
            except TypeError as e:
                raise TypeError(
                    f"tree_labels(mapping): the key {k!r} is not a filter: {e}"
                ) from None
            cacheable = cacheable and f.structural
            sel = select_leaves(tree, (f,), flat)[1]
        for i, s in enumerate(sel):
            if s and not done[i]:
                labels[i], done[i] = label, True
    make = constant_tree(treedef, labels)
    if cacheable:
        _LABELS.put(key, make)
    return make()
