"""Kinds say what a leaf is (a parameter, a batch statistic, a key, ...); filters select by them.

The kind of a leaf is the `kind` of the OUTERMOST enclosing field that sets one. Resolving
it walks the tree once per tree structure; the result is cached by treedef.
"""

from __future__ import annotations

import sys
from typing import Any

import jax

from ._cache import BoundedCache
from ._errors import depth_guard
from ._leaf_facts import descend, resolve

__all__ = [
    "BatchStat",
    "Cache",
    "Kind",
    "OptState",
    "Parameter",
    "Rng",
    "State",
    "check_kind",
    "leaf_kinds",
    "tree_kinds",
]


class Kind:
    """Base of every kind. Subclass it (or any kind below) to make your own.

    Kinds are never instantiated: the class itself is the marker.

    Example:
        >>> import pytreeclass as ptc
        >>> class Frozen(ptc.Parameter): ...
        >>> issubclass(Frozen, ptc.Kind)
        True
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{cls.__name__} is a kind, used as a class: write field(kind={cls.__name__}), "
            f"not field(kind={cls.__name__}())."
        )


class Parameter(Kind):
    """Trainable weights: what gradients and optimizers act on."""


class State(Kind):
    """Non-trainable state carried between calls."""


class BatchStat(State):
    """Running statistics (e.g. batch-norm means and variances)."""


class Rng(State):
    """PRNG keys."""


class OptState(State):
    """Optimizer state (moments, counts)."""


class Cache(State):
    """Caches (e.g. attention key/value caches)."""


def check_kind(kind: Any, *, where: str) -> None:
    if not (isinstance(kind, type) and issubclass(kind, Kind)):
        raise TypeError(
            f"{where}: {kind!r} is not a kind. Pass a subclass of ptc.Kind, such as "
            "ptc.Parameter, ptc.State, ptc.BatchStat, ptc.Rng, ptc.OptState or ptc.Cache."
        )


# -- foreign markers ------------------------------------------------------------------------
# flax.nnx Variables are pytree nodes whose type says what they hold. We map their types to
# our kinds by looking at `sys.modules` only: if flax was never imported, no nnx Variable can
# be in the tree, so we never import flax ourselves.

_NNX_NAMES = {
    "Param": Parameter,
    "BatchStat": BatchStat,
    "RngState": Rng,
    "RngKey": Rng,
    "RngCount": Rng,
    "Cache": Cache,
}
_nnx_types: dict[type, type[Kind]] | None = None


def _nnx_kind_map() -> dict[type, type[Kind]]:
    global _nnx_types
    if _nnx_types is None:
        nnx = sys.modules.get("flax.nnx")
        if nnx is None:
            return {}
        _nnx_types = {
            getattr(nnx, name): kind for name, kind in _NNX_NAMES.items() if hasattr(nnx, name)
        }
    return _nnx_types


def foreign_kind(node: Any) -> type[Kind] | None:
    """The kind a foreign marker (an nnx Variable) stands for, or None."""
    table = _nnx_kind_map()
    if not table:
        return None
    for typ in type(node).__mro__:
        kind = table.get(typ)
        if kind is not None:
            return kind
    return None


def _kind_fields(node: Any) -> tuple[tuple[Any, type[Kind] | None], ...] | None:
    """For a treeclass node: (child value, field kind) per child field; else None."""
    meta = getattr(type(node), "__ptc_meta__", None)
    if meta is None:
        return None
    d = node.__dict__
    return tuple((d[name], kind) for name, kind in zip(meta.child_names, meta.child_kinds))


def _is_marked(x: Any) -> bool:
    return hasattr(type(x), "__ptc_meta__") or foreign_kind(x) is not None


def _walk(node: Any, kind: type[Kind] | None, out: list[Any]) -> None:
    if kind is not None:
        out.extend([kind] * len(jax.tree_util.tree_leaves(node)))
        return
    pairs = _kind_fields(node)
    if pairs is not None:
        for child, child_kind in pairs:
            _walk(child, child_kind, out)
        return
    marker = foreign_kind(node)
    if marker is not None:
        out.extend([marker] * len(jax.tree_util.tree_leaves(node)))
        return
    # Any other pytree: descend until we meet a treeclass or a foreign marker.
    descend(node, None, out, _walk, _is_marked)


_KINDS_CACHE: BoundedCache = BoundedCache(maxsize=4096)
_GUARD_KINDS = depth_guard("tree_kinds")


def leaf_kinds(tree: Any, treedef: Any = None) -> tuple[type[Kind] | None, ...]:
    """The kind of each leaf of `tree`, in `tree_leaves` order; cached per treedef."""
    if treedef is None:
        treedef = jax.tree_util.tree_structure(tree)
    kinds = _KINDS_CACHE.get(treedef)
    if kinds is None:
        kinds = resolve(_KINDS_CACHE, tree, treedef, _walk, "kinds")
    return kinds


def tree_kinds(tree: Any) -> Any:
    """Replace every leaf by its kind class (or `None` for leaves under no kinded field).

    Example:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Linear:
        ...     w: jnp.ndarray = ptc.field(kind=ptc.Parameter)
        ...     n: jnp.ndarray
        >>> ptc.tree_kinds(Linear(jnp.ones(2), jnp.zeros(())))
        Linear(w=Parameter, n=None)
    """
    with _GUARD_KINDS:
        treedef = jax.tree_util.tree_structure(tree)
        return treedef.unflatten(leaf_kinds(tree, treedef))
