"""PRNG keys for layers: a stack of keys for a stack of layers, and reseeding by path.

A layer that draws random numbers (dropout) keeps its key in a field of kind `Rng` and
splits it on every call. In a stack of layers that field holds one key per layer
(`split_key`), so each layer draws different numbers, and each call advances every key,
so each step does too. `tree_reseed` gives every `Rng` leaf of a model a fresh key derived
from one key and the leaf's path: deterministic, different per leaf, per layer of a stack
and, under `jax.vmap` over keys, per ensemble member.
"""

from __future__ import annotations

import sys
import zlib
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from ._class._kinds import Rng
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


def _is_typed_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _nnx_holders(tree: Any) -> list[Any] | None:
    """For each leaf, the flax.nnx Variable holding it (`None`: none), or `None` when no
    Variable is in the tree. Only `sys.modules` is read: flax is never imported here."""
    variable = getattr(sys.modules.get("flax.nnx"), "Variable", None)
    if variable is None:
        return None
    holders: list[Any] = []
    found = False
    for part in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, variable)):
        if isinstance(part, variable):
            found = True
            holders.extend([part] * len(jax.tree_util.tree_leaves(part)))
        else:
            holders.append(None)
    return holders if found else None


def _is_raw_key(holder: Any) -> bool:
    """Whether a `uint32` leaf of kind `Rng` in `holder` (an nnx Variable or `None`) holds
    raw key data. The declaration says so, never the shape: a field of kind `Rng` or an
    `nnx.RngKey` holds keys; an `nnx.RngCount` (a stack of 2 counters is `u32[2]`, the
    shape of one raw key) or any other Variable holds something else."""
    if holder is None:
        return True
    rng_key = getattr(sys.modules.get("flax.nnx"), "RngKey", None)
    return rng_key is not None and isinstance(holder, rng_key)


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
    their form (typed `key<...>` or raw `uint32` data). Keys are told by declaration,
    never by shape: a typed key by its dtype, raw `uint32` key data by its kind `Rng`
    (or an `nnx.RngKey` holding it). Other `Rng` leaves (counters: an `nnx.RngCount`,
    an `int32` step) are left as they are.

    Args:
        tree: any pytree; its leaves of kind `Rng` (or a subkind) that hold keys are
            replaced.
        key: a typed key, a raw key or an int seed.

    Returns:
        A copy of `tree` with fresh keys; every other leaf is shared.

    Raises:
        TypeError: `key` is not a key or an int seed.
        ValueError: `key` is a batch of keys, or a key leaf uses another PRNG
            implementation than `key` (a `uint32` leaf of kind `Rng` that is not raw
            key data of `key`'s implementation included).

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
    holders = _nnx_holders(tree)
    data = jax.random.key_data(base)  # the shape and dtype of one raw key of base's impl
    out = []
    for i, (leaf, kind, path) in enumerate(zip(ctx.leaves, ctx.kinds, ctx.paths)):
        typed = _is_typed_key(leaf)
        if (
            kind is None
            or not issubclass(kind, Rng)
            or not (
                typed
                or (
                    getattr(leaf, "dtype", None) == data.dtype
                    and _is_raw_key(None if holders is None else holders[i])
                )
            )
        ):
            out.append(leaf)
            continue
        if not typed and tuple(leaf.shape[-1:]) != data.shape:
            raise ValueError(
                f"tree_reseed: the leaf at {jax.tree_util.keystr(path)} is {leaf_repr(leaf)}, "
                f"of kind Rng and dtype uint32, so it is taken for raw key data, but one raw "
                f"key of the given key's implementation is {leaf_repr(data)}. If it is a "
                "counter, declare it with another kind (ptc.State) or dtype (int32); if it "
                "holds keys of another implementation, reseed with a key of that one, e.g. "
                "jax.random.key(0, impl=...)."
            )
        new = jax.random.fold_in(base, _path_seed(path))
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
