"""The counter from JAX's "Stateful computations" guide, made pure.

A Python object that bumps `self.n` breaks under `jax.jit`: the side effect runs
once, at trace time. Here `count` still reads as an in-place update, but
`ptc.value_and_tree` runs it on a copy and hands back
`(result, updated counter)`: a pure function, with no state threaded by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import pytreeclass as ptc
from pytreeclass import State, field, treeclass


@treeclass
class Counter:
    n: jax.Array = field(
        kind=State, default_factory=lambda: jnp.zeros((), jnp.int32)
    )

    def count(self) -> jax.Array:
        """Increment the counter and return the new value."""
        # Lands in value_and_tree's copy, never in the caller's counter.
        self.n = self.n + 1
        return self.n


# (counter) -> (value, new counter).
count = jax.jit(ptc.value_and_tree(Counter.count))


def main(steps: int = 3) -> list[int]:
    counter = Counter()  # to reset, make a new one: there is nothing to undo
    values = []
    for _ in range(steps):
        value, counter = count(counter)  # compiled once, counts every time
        values.append(int(value))
        print(f"count() -> {int(value)}")
    return values


if __name__ == "__main__":
    main()
