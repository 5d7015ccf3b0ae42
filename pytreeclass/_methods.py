"""Methods every treeclass gets: `==`, `hash`, `repr`, `.at`, notebook display.

Equality rule (documented in docs/treeclass.md): two instances are equal when they have the
same class and every field with `compare=True` is equal, where arrays are equal when they
have the same shape, dtype and values (compared once, into a single Python bool, never an
elementwise truth value), and any other value compares with `==`. Traced arrays cannot be
compared to a Python bool; comparing two instances holding different tracers raises a
`TypeError` that points to `jnp.array_equal`.

Hashing matches: the hash of `(class, compare-fields)`. A treeclass holding arrays is
therefore unhashable (arrays are), exactly like a frozen dataclass holding arrays; one
holding only hashable values can be hashed (and used as a `static_argnums` argument).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ._errors import depth_guard
from ._lens import lens_on as _lens_on

__all__ = ["install_methods", "tree_equal"]


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _leaf_equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if _is_array(a) or _is_array(b):
        if not (_is_array(a) and _is_array(b)):
            return False
        if isinstance(a, Tracer) or isinstance(b, Tracer):
            raise TypeError(
                "cannot compare treeclass instances holding traced arrays with `==` inside "
                "a JAX transformation (the answer would be traced, not a Python bool). "
                "Compare the leaves with jnp.array_equal instead."
            )
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            # New-style keys have no NumPy form; equal dtypes mean the same implementation,
            # so the keys are equal when their raw data is.
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=False))
    return bool(a == b)


_GUARD_EQUAL = depth_guard("tree_equal")
_GUARD_REPR = depth_guard("repr")


def tree_equal(a: Any, b: Any) -> bool:
    """Whether two pytrees have equal structure and equal leaves (arrays by value)."""
    if a is b:
        return True
    with _GUARD_EQUAL:
        la, ta = jax.tree_util.tree_flatten(a)
        lb, tb = jax.tree_util.tree_flatten(b)
        if ta != tb:
            return False
        return all(_leaf_equal(x, y) for x, y in zip(la, lb))


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    if self is other:
        return True
    d, e = self.__dict__, other.__dict__
    for f in self.__ptc_meta__.fields:
        if f.compare and not tree_equal(d[f.name], e[f.name]):
            return False
    return True


def _hash(self: Any) -> int:
    d = self.__dict__
    values = []
    for f in self.__ptc_meta__.fields:
        if not f.compare:
            continue
        try:
            values.append(hash(d[f.name]))
        except TypeError:
            from ._repr import leaf_repr

            raise TypeError(
                f"unhashable {type(self).__qualname__}: field {f.name!r} holds an unhashable "
                f"value ({leaf_repr(d[f.name])}). A treeclass holding arrays cannot be hashed, "
                "like a frozen dataclass holding arrays; pass it to jax.jit as a normal "
                "argument rather than a static one."
            ) from None
    return hash((type(self), *values))


def _repr(self: Any) -> str:
    from ._repr import treeclass_repr

    with _GUARD_REPR:
        return treeclass_repr(self)


def _repr_html_(self: Any) -> str:
    from ._show import html_repr

    return html_repr(self)


# `obj.at` is the property getter itself: no wrapper frame, it runs on every update.
_at = _lens_on


def install_methods(cls: type) -> None:
    ns = cls.__dict__
    if "__eq__" not in ns:
        cls.__eq__ = _eq  # type: ignore[method-assign]
        if "__hash__" not in ns or ns["__hash__"] is None:
            cls.__hash__ = _hash  # type: ignore[method-assign]
    if "__repr__" not in ns:
        cls.__repr__ = _repr  # type: ignore[method-assign]
    if "_repr_html_" not in ns:
        cls._repr_html_ = _repr_html_  # type: ignore[attr-defined]
    if "at" not in ns:
        cls.at = property(_at, doc="A lens on this instance: `obj.at.x.set(v)` returns a copy.")  # type: ignore[attr-defined]
