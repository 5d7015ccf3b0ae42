"""Dropout layers that carry their own PRNG key (`kind=Rng`) and split it.

Each call consumes a fresh subkey and stores the other half, so no key is ever
used twice; `ptc.value_and_tree` returns the model with the advanced keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import pytreeclass as ptc
from pytreeclass import Parameter, Rng, field, treeclass


@treeclass
class Dropout:
    key: jax.Array = field(kind=Rng)
    rate: float = field(static=True, default=0.5)

    def __call__(self, x: jax.Array) -> jax.Array:
        # Advance the stored key, use the other.
        self.key, subkey = jax.random.split(self.key)
        keep = jax.random.bernoulli(subkey, 1 - self.rate, x.shape)
        return jnp.where(keep, x / (1 - self.rate), 0.0)


@treeclass
class Net:
    w: jax.Array = field(kind=Parameter)
    drops: list[Dropout]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.drops[0](x)
        return self.drops[1](x @ self.w)


@jax.jit
def forward(net: Net, x: jax.Array) -> tuple[jax.Array, Net]:
    return ptc.value_and_tree(lambda n: n(x))(net)


def main(steps: int = 4) -> tuple[list[Net], list[jax.Array]]:
    """The network before and after every step, and every step's output."""
    k_w, k_a, k_b = jax.random.split(jax.random.key(0), 3)
    net = Net(
        jax.random.normal(k_w, (8, 8)), [Dropout(k_a), Dropout(k_b, rate=0.25)]
    )
    x = jnp.ones((2, 8))
    nets, outputs = [net], []
    for step in range(steps):
        y, net = forward(net, x)
        nets.append(net)
        outputs.append(y)
        print(
            f"step {step}: {int(jnp.sum(y == 0))} of {y.size} outputs dropped"
        )
    return nets, outputs


if __name__ == "__main__":
    main()
