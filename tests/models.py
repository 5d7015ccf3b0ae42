"""Small models shared by the test files (one definition, one set of expectations)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pytreeclass import BatchStat, Parameter, field, treeclass


@treeclass
class Linear:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)
    features: int = field(static=True, default=4)

    def __call__(self, x):
        return x @ self.w + self.b


@treeclass
class MLP:
    layers: list[Linear]
    mean: jax.Array = field(kind=BatchStat, default_factory=lambda: jnp.zeros(()))

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def make_mlp() -> MLP:
    """The 3 -> 4 -> 2 MLP most tests start from: weights of ones, biases of zeros."""
    return MLP([Linear(jnp.ones((3, 4)), jnp.zeros(4)), Linear(jnp.ones((4, 2)), jnp.zeros(2))])
