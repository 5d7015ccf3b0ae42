"""A typed user file with wrong argument types: pyright must report each (and only those)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import pytreeclass as ptc


@ptc.treeclass
class Linear:
    w: jax.Array = ptc.field(kind=ptc.Parameter)
    features: int = ptc.field(static=True, default=4)


class TypedLinear(ptc.TreeClass):
    w: jax.Array = ptc.field(kind=ptc.Parameter)
    features: int = ptc.field(static=True, default=4)


layer = Linear(jnp.ones(2), features="four")
typed = TypedLinear(jnp.ones(2), features="four")
