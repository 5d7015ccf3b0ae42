"""`tree_equal`: equal structure and equal leaves, arrays compared by value.

Arrays are equal when they have the same shape, dtype and values (compared once, into a
single Python bool, never an elementwise truth value); any other leaf compares with `==`.
Traced arrays cannot be compared into a Python bool: comparing two different tracers
raises a `TypeError` that points to `jnp.array_equal`. Treeclass `==` compares each field
with this (`_methods`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ._errors import reraise_if_too_deep
from ._tree_util import is_array

__all__ = ["tree_equal"]


def _leaf_equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if is_array(a) or is_array(b):
        if not (is_array(a) and is_array(b)):
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


def tree_equal(a: Any, b: Any) -> bool:
    """Whether two pytrees have equal structure and equal leaves (arrays by value).

    Arrays are equal when their shapes, dtypes and values are; an array never equals a
    non-array, and `NaN != NaN`. Other leaves compare with `==`. This is the rule of `==`
    on treeclass instances, for any two pytrees.

    Args:
        a: a pytree.
        b: another pytree.

    Returns:
        One Python `bool`.

    Raises:
        TypeError: a leaf is a tracer (inside a JAX transformation the answer would be
            traced); compare with `jax.tree.map(jnp.array_equal, a, b)` there.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> ptc.tree_equal({"w": jnp.ones(2)}, {"w": jnp.ones(2)})
        True
        >>> ptc.tree_equal({"w": jnp.ones(2)}, {"w": jnp.ones(2, jnp.int32)})
        False
    """
    if a is b:
        return True
    try:
        la, ta = jax.tree_util.tree_flatten(a)
        lb, tb = jax.tree_util.tree_flatten(b)
        if ta != tb:
            return False
        return all(_leaf_equal(x, y) for x, y in zip(la, lb))
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_equal", e)
        raise
