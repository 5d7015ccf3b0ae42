"""PRNG keys for layers: a stack of keys for a stack of layers, and reseeding by path.

A layer that draws random numbers (dropout) keeps its key in a field of kind `Rng` and
splits it on every call. In a stack of layers that field holds one key per layer
(`split_key`), so each layer draws different numbers, and each call advances every key,
so each step does too. `tree_reseed` gives every `Rng` leaf of a model a fresh key derived
from one key and the leaf's path: deterministic, different per leaf, per layer of a stack
and, under `jax.vmap` over keys, per ensemble member.
"""

from __future__ import annotations

import zlib
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from ._kinds import Rng
from ._leaf_facts import Leaves
from ._tree_util import leaf_repr

__all__ = ["split_key", "tree_reseed"]

T = TypeVar("T")


def _as_key(key: Any, where: str) -> jax.Array:
    """A typed key from a typed key, a raw `uint32` key or an int seed."""
    if type(key) is int or isinstance(key, np.integer):
        return jax.random.key(int(key))
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{where}: expected one key, got {leaf_repr(key)} (a batch of keys).")
        return key
    if dtype == jnp.uint32 and getattr(key, "ndim", None) == 1:
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"{where}: expected a PRNG key (jax.random.key(0)), a raw uint32 key "
        f"(jax.random.PRNGKey(0)) or an int seed, got {leaf_repr(key)}."
    )


def split_key(key: Any, num: int | tuple[int, ...], /) -> jax.Array:
    """`num` independent keys stacked along a leading axis: the `Rng` leaf of a stack.

    Args:
        key: a typed key (`jax.random.key(0)`), a raw key (`jax.random.PRNGKey(0)`;
            then raw keys come back) or an int seed.
        num: how many keys, or a shape such as `(layers, heads)`.

    Returns:
        The keys, one per layer along the leading axis (or axes).

    Raises:
        TypeError: `key` is not a key or an int seed.
        ValueError: `key` is a batch of keys, not one.

    Examples:
        >>> import jax
        >>> import pytreeclass as ptc
        >>> keys = ptc.split_key(jax.random.key(0), 4)
        >>> data = jax.random.key_data(keys)
        >>> keys.shape, bool((data[0] != data[1]).any())
        ((4,), True)
    """
    raw = getattr(key, "dtype", None) == jnp.uint32
    keys = jax.random.split(_as_key(key, "split_key"), num)
    return jax.random.key_data(keys) if raw else keys


def _is_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return dtype == jnp.uint32 and len(leaf.shape) >= 1 and leaf.shape[-1] in (2, 4)


def _path_seed(path: tuple[Any, ...]) -> int:
    # A stable hash (Python's `hash` of a str changes between processes): 31 bits for fold_in.
    return zlib.crc32(jax.tree_util.keystr(path).encode()) & 0x7FFFFFFF


def tree_reseed(tree: T, key: Any, /) -> T:
    """Give every PRNG key leaf of kind `Rng` a fresh key derived from `key` and its path.

    The new key of a leaf is `fold_in(key, hash(path))`, split to the leaf's shape when it
    holds several keys (a stack of layers: one key per layer). So the result depends only
    on `key` and the tree's structure: reseeding twice with one key gives equal trees, and
    two leaves, two layers of a stack, or two ensemble members reseeded under
    `jax.vmap(lambda k: ptc.tree_reseed(model, k))(keys)` get different keys. Leaves keep
    their form (typed `key<...>` or raw `uint32` data). `Rng` leaves that are not keys
    (counters, e.g. flax's `RngCount`) are left as they are.

    Args:
        tree: any pytree; its leaves of kind `Rng` (or a subkind) that hold keys are
            replaced.
        key: a typed key, a raw key or an int seed.

    Returns:
        A copy of `tree` with fresh keys; every other leaf is shared.

    Raises:
        TypeError: `key` is not a key or an int seed.
        ValueError: `key` is a batch of keys, or a key leaf uses another PRNG
            implementation than `key`.

    Examples:
        >>> import jax
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Dropout:
        ...     key: jax.Array = ptc.field(kind=ptc.Rng)
        >>> d = ptc.tree_reseed(Dropout(jax.random.key(0)), jax.random.key(1))
        >>> d.key.dtype == jax.random.key(0).dtype
        True
    """
    base = _as_key(key, "tree_reseed")
    ctx = Leaves(tree)
    out = []
    for leaf, kind, path in zip(ctx.leaves, ctx.kinds, ctx.paths):
        if kind is None or not issubclass(kind, Rng) or not _is_key(leaf):
            out.append(leaf)
            continue
        new = jax.random.fold_in(base, _path_seed(path))
        typed = jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        batch = tuple(leaf.shape) if typed else tuple(leaf.shape[:-1])
        if batch:
            new = jax.random.split(new, batch)
        new = new if typed else jax.random.key_data(new)
        if new.dtype != leaf.dtype or new.shape != leaf.shape:
            raise ValueError(
                f"tree_reseed: the key leaf at {jax.tree_util.keystr(path)} is "
                f"{leaf_repr(leaf)} ({leaf.dtype}), but the given key makes {leaf_repr(new)} "
                f"({new.dtype}) there: another PRNG implementation. Reseed with a key of "
                "the leaf's implementation, e.g. jax.random.key(0, impl=...)."
            )
        out.append(new)
    return ctx.treedef.unflatten(out)
