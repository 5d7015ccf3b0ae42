"""Transfer learning: reuse a trained encoder, freeze it, train only the head.

Moving the encoder is one lens call; freezing it is a mask; the optimizer only
ever sees the trainable partition, so the frozen part is neither differentiated
nor updated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass


@treeclass
class Linear:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)

    @classmethod
    def create(cls, key: jax.Array, n_in: int, n_out: int) -> Linear:
        return cls(
            jax.random.normal(key, (n_in, n_out)) / jnp.sqrt(n_in),
            jnp.zeros(n_out),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w + self.b


@treeclass
class Model:
    encoder: list[Linear]
    head: Linear

    @classmethod
    def create(cls, key: jax.Array, n_out: int) -> Model:
        k1, k2, k3 = jax.random.split(key, 3)
        encoder = [Linear.create(k1, 8, 32), Linear.create(k2, 32, 32)]
        return cls(encoder, Linear.create(k3, 32, n_out))

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.encoder:
            x = jnp.tanh(layer(x))
        return self.head(x)


def loss_fn(
    params: Model, rest: Model, x: jax.Array, y: jax.Array
) -> jax.Array:
    return jnp.mean((ptc.tree_merge(params, rest)(x) - y) ** 2)


def fit(
    model: Model, trainable: Model, x: jax.Array, y: jax.Array, steps: int
) -> Model:
    """Train the leaves where the mask `trainable` is True, and no others."""

    # The mask is closed over: its bools stay Python bools, known at trace time.
    @jax.jit
    def train_step(model: Model, opt: ptc.Optimizer):
        params, rest = ptc.tree_partition(model, trainable)
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, x, y)
        params, opt = opt.update(grads, params)
        return ptc.tree_merge(params, rest), opt, loss

    opt = ptc.Optimizer.create(
        optax.adam(1e-2), ptc.tree_filter(model, trainable)
    )
    for step in range(steps):
        model, opt, loss = train_step(model, opt)
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:3d}  mse {loss:.4f}")
    return model


def main(steps: int = 300) -> dict[str, Model]:
    kx, ka, kb, k_task = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (256, 8))
    # What both tasks depend on.
    features = jnp.tanh(x @ jax.random.normal(k_task, (8, 4)))
    y_a, y_b = features, features @ jnp.array([[1.0], [-2.0], [0.5], [1.5]])

    print("task A: train the whole model to predict the 4 features")
    pretrained = Model.create(ka, n_out=4)
    pretrained = fit(
        pretrained, ptc.tree_mask(pretrained, Parameter), x, y_a, steps
    )

    print(
        "task B: a new model with the trained encoder, frozen; train the head"
    )
    fresh = Model.create(kb, n_out=1)
    # Move the trained sub-model in.
    model = ptc.at(fresh).encoder.set(pretrained.encoder)
    trainable = ptc.tree_mask(model, Parameter, ptc.Not("encoder"))
    tuned = fit(model, trainable, x, y_b, steps)
    return {
        "pretrained": pretrained,
        "fresh": fresh,
        "start": model,
        "tuned": tuned,
    }


if __name__ == "__main__":
    main()
