"""`tree_cast`: change the dtype of the floating leaves a filter selects (mixed precision)."""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from ._partition import tree_mask
from ._tree_util import has_shape_dtype

__all__ = ["tree_cast"]

T = TypeVar("T")


def _is_floating(x: Any) -> bool:
    # PRNG key arrays have an extended dtype that is not a NumPy floating type.
    return has_shape_dtype(x) and jnp.issubdtype(x.dtype, jnp.floating)


def _cast(x: Any, dtype: Any) -> Any:
    if x.dtype == dtype:
        return x  # unchanged: the very same object, no copy
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)  # NumPy stays NumPy, JAX stays JAX


def tree_cast(tree: T, dtype: Any, /, *filters: Any) -> T:
    """`tree` with its selected floating-point leaves cast to `dtype`.

    Only arrays with a floating dtype change (JAX and NumPy arrays, `ShapeDtypeStruct`s
    of abstract trees); integer, boolean, complex, PRNG key and non-array leaves, and
    Python numbers, are left as they are, whatever the filters say. A leaf already of
    `dtype` is returned as is (no copy). Works on any pytree and under `jax.jit`; the
    cast is differentiable, so gradients with respect to the uncast tree come back in
    its own dtypes (the mixed-precision recipe: float32 master weights, a bfloat16
    forward pass).

    Args:
        tree: any pytree.
        dtype: the floating dtype to cast to, e.g. `jnp.bfloat16`.
        *filters: which leaves may change, as in `ptc.tree_mask` (combined with AND);
            none: every floating leaf.

    Returns:
        A tree with `tree`'s structure; unselected and non-floating leaves are the very
        same objects.

    Raises:
        TypeError: `dtype` is not a floating dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Norm:
        ...     scale: jnp.ndarray = ptc.field(kind=ptc.Parameter)
        ...     mean: jnp.ndarray = ptc.field(kind=ptc.BatchStat)
        ...     count: jnp.ndarray = ptc.field(kind=ptc.BatchStat)
        >>> norm = Norm(jnp.ones(3), jnp.zeros(3), jnp.zeros((), "int32"))
        >>> norm = ptc.tree_cast(norm, jnp.bfloat16, ptc.Parameter)
        >>> norm
        Norm(scale=bf16[3], mean=f32[3], count=i32[])
        >>> ptc.tree_cast(norm, jnp.float16)
        Norm(scale=f16[3], mean=f16[3], count=i32[])
    """
    try:
        target = np.dtype(dtype)
    except TypeError:
        target = None
    if target is None or not jnp.issubdtype(target, jnp.floating):
        raise TypeError(
            f"tree_cast: {dtype!r} is not a floating dtype; tree_cast only casts "
            "floating-point leaves, to a floating dtype such as jnp.bfloat16 or "
            "jnp.float32 (use jax.tree.map for other conversions)."
        )
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if filters:
        mask = jax.tree_util.tree_leaves(tree_mask(tree, *filters))
    else:
        mask = [True] * len(leaves)
    out = [_cast(x, target) if m and _is_floating(x) else x for x, m in zip(leaves, mask)]
    return jax.tree_util.tree_unflatten(treedef, out)
