"""Batch norm: statistics update while training and stay frozen in evaluation.

The mode is one static field on the whole model, so switching it is one lens
call, `ptc.at(model).training.set(False)`; `jax.jit` compiles each mode once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass


@treeclass
class BatchNorm:
    mean: jax.Array = field(kind=BatchStat)
    var: jax.Array = field(kind=BatchStat)
    scale: jax.Array = field(kind=Parameter)
    bias: jax.Array = field(kind=Parameter)
    momentum: float = field(static=True, default=0.9)

    @classmethod
    def create(cls, n: int) -> BatchNorm:
        return cls(jnp.zeros(n), jnp.ones(n), jnp.ones(n), jnp.zeros(n))

    def __call__(self, x: jax.Array, training: bool) -> jax.Array:
        if training:
            # Normalise with this batch's statistics and fold them into the
            # running ones.
            mean, var = jnp.mean(x, 0), jnp.var(x, 0)
            m = self.momentum
            self.mean = m * self.mean + (1 - m) * mean
            self.var = m * self.var + (1 - m) * var
        else:
            mean, var = self.mean, self.var
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale + self.bias


@treeclass
class Net:
    w1: jax.Array = field(kind=Parameter)
    norm: BatchNorm
    w2: jax.Array = field(kind=Parameter)
    # Static: a Python bool under jit.
    training: bool = field(static=True, default=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.norm(x @ self.w1, self.training)) @ self.w2


def loss_fn(
    params: Net, rest: Net, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, Net]:
    pred, model = ptc.value_and_tree(lambda m: m(x))(
        ptc.tree_merge(params, rest)
    )
    # The model carries the new batch statistics.
    return jnp.mean((pred - y) ** 2), model


@jax.jit
def train_step(model: Net, opt: ptc.Optimizer, x: jax.Array, y: jax.Array):
    params, rest = ptc.tree_partition(model, Parameter)
    (loss, model), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, rest, x, y
    )
    params, opt = opt.update(grads, params)
    # New statistics, then new parameters.
    return ptc.tree_merge(model, params), opt, loss


@jax.jit
def predict(model: Net, x: jax.Array) -> tuple[jax.Array, Net]:
    # In eval mode nothing is written.
    return ptc.value_and_tree(lambda m: m(x))(model)


def main(steps: int = 200) -> dict[str, Net]:
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    # Far from zero mean, unit variance.
    x = 3.0 + 2.0 * jax.random.normal(k1, (256, 4))
    y = jnp.sum(jnp.sin(x), axis=1, keepdims=True)
    w1, w2 = (
        jax.random.normal(k2, (4, 32)) / 2,
        jax.random.normal(k3, (32, 1)) / 6,
    )
    model = initial = Net(w1, BatchNorm.create(32), w2)
    opt = ptc.Optimizer.create(
        optax.adam(1e-2), ptc.tree_filter(model, Parameter)
    )
    for step in range(steps):
        model, opt, loss = train_step(model, opt, x, y)
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:3d}  mse {loss:.4f}")
    trained = model
    # Evaluation mode for the whole model.
    model = ptc.at(model).training.set(False)
    pred, evaluated = predict(model, x)
    print(f"eval mse {jnp.mean((pred - y) ** 2):.4f}")
    return {"initial": initial, "trained": trained, "evaluated": evaluated}


if __name__ == "__main__":
    main()
