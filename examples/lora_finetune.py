"""LoRA fine-tuning with lenses: inject adapters, train them, merge them back.

1. Train a small MLP on scikit-learn's digits.
2. Surgery: `model.at[ptc.OfType(Linear)].apply(...)` wraps every `Linear` in a
   `LoRA` whose low-rank factors have their own kind, `Adapter`.
3. Fine-tune on noisy digits (and the clean ones): the optimizer sees only the
   `Adapter` leaves (a partition by kind): the base weights stay as they were.
4. Surgery again: `model.at[ptc.OfType(LoRA)].apply(LoRA.merge)` folds each
   adapter into its weights, giving back a plain MLP of the original shape.

Run `python examples/lora_finetune.py` (a few seconds on a laptop CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import pytreeclass as ptc
from pytreeclass import Parameter, field


class Adapter(Parameter):
    """The kind of the low-rank factors: trained while the rest is frozen."""


class Linear(ptc.TreeClass):
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)

    @classmethod
    def create(cls, key: jax.Array, n_in: int, n_out: int) -> Linear:
        w = jax.random.normal(key, (n_in, n_out)) * jnp.sqrt(2 / n_in)
        return cls(w, jnp.zeros(n_out))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w + self.b


class LoRA(ptc.TreeClass):
    """`base(x) + scale * x @ a @ b`; `b` starts at zero: no change yet."""

    base: Linear
    a: jax.Array = field(kind=Adapter)
    b: jax.Array = field(kind=Adapter)
    scale: float = field(static=True, default=1.0)

    @classmethod
    def wrap(cls, base: Linear, key: jax.Array, rank: int) -> LoRA:
        n_in, n_out = base.w.shape
        a = jax.random.normal(key, (n_in, rank)) / jnp.sqrt(n_in)
        return cls(base, a, jnp.zeros((rank, n_out)), scale=1.0)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.base(x) + self.scale * (x @ self.a) @ self.b

    def merge(self) -> Linear:
        return self.base.at.w.apply(lambda w: w + self.scale * self.a @ self.b)


class MLP(ptc.TreeClass):
    layers: list
    mean: jax.Array = field(kind=ptc.State)
    std: jax.Array = field(kind=ptc.State)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = (x - self.mean) / self.std
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def load_data() -> list[np.ndarray]:
    """[x_train, x_test, y_train, y_test]: 1797 8x8 images from scikit-learn."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    split = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return [np.asarray(a) for a in split]


def noisy(x: np.ndarray, seed: int) -> np.ndarray:
    """The fine-tuning domain: the same digits, with pixel noise."""
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0.0, 0.25, x.shape), 0.0, 1.0).astype(
        np.float32
    )


def accuracy(model: MLP, x: np.ndarray, y: np.ndarray) -> float:
    return float(jnp.mean(jnp.argmax(model(jnp.asarray(x)), -1) == y))


def train(
    model: MLP, trainable: object, x: np.ndarray, y: np.ndarray, steps: int
) -> MLP:
    """Adam on the leaves `trainable` (any filter) selects; the rest stays."""
    xs, ys = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(params: MLP, rest: MLP) -> jax.Array:
        logits = ptc.tree_merge(params, rest)(xs)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, ys
        ).mean()

    @jax.jit
    def step(model: MLP, opt: ptc.Optimizer) -> tuple[MLP, ptc.Optimizer]:
        params, rest = ptc.tree_partition(model, trainable)
        grads = jax.grad(loss_fn)(params, rest)
        params, opt = opt.update(grads, params)
        return ptc.tree_merge(params, rest), opt

    opt = ptc.Optimizer.create(
        optax.adam(3e-3), ptc.tree_filter(model, trainable)
    )
    for _ in range(steps):
        model, opt = step(model, opt)
    return model


def count(tree: object, *filters: object) -> int:
    """How many numbers the leaves `filters` select hold (all: no filters)."""
    return sum(
        int(np.size(x))
        for x in jax.tree_util.tree_leaves(ptc.tree_filter(tree, *filters))
    )


def report(name: str, model: MLP, trainable: object) -> tuple[int, int]:
    n_train, n_all = count(model, trainable), count(model, Parameter)
    print(f"{name:<24} trainable {n_train:>6,} of {n_all:>6,} parameters")
    return n_train, n_all


def main(
    base_steps: int = 300, tune_steps: int = 200, rank: int = 4
) -> dict[str, object]:
    x_train, x_test, y_train, y_test = load_data()
    k_model, k_lora = jax.random.split(jax.random.key(0))
    sizes = [64, 64, 64, 10]
    keys = jax.random.split(k_model, len(sizes) - 1)
    layers = [
        Linear.create(k, i, o) for k, i, o in zip(keys, sizes[:-1], sizes[1:])
    ]
    model = MLP(layers, jnp.mean(x_train, 0), jnp.std(x_train, 0) + 0.1)

    counts = {"base": report("base model", model, Parameter)}
    base = train(model, Parameter, x_train, y_train, base_steps)
    acc = {"base": accuracy(base, x_test, y_test)}
    acc["base noisy"] = accuracy(base, noisy(x_test, 1), y_test)

    # Surgery 1: every Linear becomes a LoRA around it (fn: once per Linear).
    lora_keys = iter(jax.random.split(k_lora, len(base.layers)))
    lora = base.at[ptc.OfType(Linear)].apply(
        lambda lin: LoRA.wrap(lin, next(lora_keys), rank)
    )
    counts["lora"] = report("with adapters", lora, Adapter)
    print("adapters at", lora.at[ptc.OfType(LoRA)].paths())

    # The new domain: noisy digits; the clean ones in the mix keep what it knew.
    x_tune = np.concatenate([x_train, noisy(x_train, 0)])
    tuned = train(
        lora, Adapter, x_tune, np.concatenate([y_train, y_train]), tune_steps
    )
    frozen = ptc.tree_filter(tuned, Parameter, ptc.Not(Adapter))
    assert ptc.tree_equal(
        frozen, ptc.tree_filter(lora, Parameter, ptc.Not(Adapter))
    )

    # Surgery 2: fold every adapter back into its Linear: the old shape again.
    merged = tuned.at[ptc.OfType(LoRA)].apply(LoRA.merge)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(
        base
    )
    counts["merged"] = report("merged", merged, Parameter)
    acc["tuned"] = accuracy(merged, x_test, y_test)
    acc["tuned noisy"] = accuracy(merged, noisy(x_test, 1), y_test)
    for name, value in acc.items():
        print(f"test accuracy, {name:<12} {value:.4f}")
    return {
        "accuracy": acc,
        "counts": counts,
        "base": base,
        "tuned": tuned,
        "merged": merged,
    }


if __name__ == "__main__":
    main()
