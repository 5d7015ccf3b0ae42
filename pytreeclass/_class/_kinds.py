"""Kinds say what a leaf is (a parameter, a batch statistic, a key, ...); filters select by them.

This module defines the kinds themselves (and maps flax.nnx Variable types onto them).
Which kind each leaf of a tree has is `_leaf_facts.leaf_kinds`.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = [
    "BatchStat",
    "Cache",
    "Kind",
    "OptState",
    "Parameter",
    "Rng",
    "State",
    "check_kind",
    "foreign_kind",
]


class Kind:
    """Base of every kind. Subclass it (or any kind below) to make your own.

    Kinds are never instantiated: the class itself is the marker, given to
    `field(kind=...)` and used as a filter (a kind selects its subkinds too).

    Raises:
        TypeError: a kind is called (`field(kind=ptc.Parameter())`); pass the class.

    Examples:
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
