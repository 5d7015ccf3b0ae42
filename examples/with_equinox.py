"""An Equinox module inside a treeclass: both libraries' filters work together.

`eqx.nn.MLP` keeps its activation functions as leaves, so the trainable part is
"Parameter kind AND an inexact array": two filters passed to one call are
combined with AND.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import pytreeclass as ptc
from pytreeclass import Parameter, State, field, treeclass


@treeclass
class Regressor:
    mlp: eqx.nn.MLP = field(kind=Parameter)  # an Equinox module is just a field
    y_mean: jax.Array = field(kind=State)  # fixed target offset, never trained

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.vmap(self.mlp)(x) + self.y_mean


def loss_fn(
    params: Regressor, rest: Regressor, x: jax.Array, y: jax.Array
) -> jax.Array:
    model = eqx.combine(params, rest)  # Equinox's combine undoes our partition
    return jnp.mean((model(x) - y) ** 2)


@eqx.filter_jit  # traces the arrays; the activation functions stay static
def train_step(
    model: Regressor, opt: ptc.Optimizer, x: jax.Array, y: jax.Array
):
    params, rest = ptc.tree_partition(model, Parameter, eqx.is_inexact_array)
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, x, y)
    params, opt = opt.update(grads, params)
    return ptc.tree_merge(params, rest), opt, loss


def main(steps: int = 500) -> list[float]:
    x = jnp.linspace(-3, 3, 128)[:, None]
    y = jnp.sin(x) + 1.0
    mlp = eqx.nn.MLP(
        1, 1, width_size=32, depth=2, activation=jnp.tanh, key=jax.random.key(0)
    )
    model = Regressor(mlp, y_mean=jnp.mean(y))
    opt = ptc.Optimizer.create(
        optax.adam(1e-2),
        ptc.tree_filter(model, Parameter, eqx.is_inexact_array),
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
