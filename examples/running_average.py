"""A running mean written as in-place updates of `BatchStat` leaves.

`ptc.value_and_tree` makes the update pure, so it runs under `jax.jit`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import pytreeclass as ptc
from pytreeclass import BatchStat, field, treeclass


def _zero() -> jax.Array:
    return jnp.zeros((), jnp.float32)


@treeclass
class RunningMean:
    count: jax.Array = field(kind=BatchStat, default_factory=_zero)
    total: jax.Array = field(kind=BatchStat, default_factory=_zero)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Fold `x` into the statistics; return the mean of all seen so far."""
        self.count = self.count + x.size
        self.total = self.total + jnp.sum(x)
        return self.total / self.count


@jax.jit
def update(avg: RunningMean, x: jax.Array) -> tuple[jax.Array, RunningMean]:
    return ptc.value_and_tree(lambda m: m(x))(avg)


def main(batches: int = 5, seed: int = 0) -> tuple[list[float], np.ndarray]:
    """Return the running mean after each batch, and all the data seen."""
    data = (
        np.random.default_rng(seed)
        .normal(3.0, 2.0, size=(batches, 16))
        .astype(np.float32)
    )
    avg, means = RunningMean(), []
    for batch in data:
        mean, avg = update(avg, batch)
        means.append(float(mean))
        print(f"seen {int(avg.count):3d} values  running mean {mean:.4f}")
    return means, data


if __name__ == "__main__":
    main()
