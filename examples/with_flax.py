"""Flax NNX layers in a treeclass: `nnx.Param` leaves count as `ptc.Parameter`.

NNX modules are pytrees, so a treeclass can hold them and plain `jax.jit` traces
the whole model; pytreeclass's kind filters see through the `nnx.Param`
wrappers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import pytreeclass as ptc
from pytreeclass import Parameter, treeclass


@treeclass
class TwoLayer:
    hidden: nnx.Linear
    out: nnx.Linear

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x)))


def loss_fn(
    params: TwoLayer, rest: TwoLayer, x: jax.Array, y: jax.Array
) -> jax.Array:
    model = ptc.tree_merge(params, rest)
    return jnp.mean((model(x) - y) ** 2)


@jax.jit
def train_step(model: TwoLayer, opt: ptc.Optimizer, x: jax.Array, y: jax.Array):
    params, rest = ptc.tree_partition(model, Parameter)  # every nnx.Param leaf
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, x, y)
    params, opt = opt.update(grads, params)
    return ptc.tree_merge(params, rest), opt, loss


def main(steps: int = 500) -> list[float]:
    x = jnp.linspace(-3, 3, 128)[:, None]
    y = jnp.sin(x)
    rngs = nnx.Rngs(0)
    model = TwoLayer(nnx.Linear(1, 32, rngs=rngs), nnx.Linear(32, 1, rngs=rngs))
    opt = ptc.Optimizer.create(
        optax.adam(1e-2), ptc.tree_filter(model, Parameter)
    )
    losses = []
    for step in range(steps):
        model, opt, loss = train_step(model, opt, x, y)
        losses.append(float(loss))
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  mse {loss:.5f}")
    return losses


if __name__ == "__main__":
    main()
