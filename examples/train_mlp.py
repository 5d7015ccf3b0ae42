"""Train an MLP on scikit-learn's handwritten digits with pytreeclass and optax.

Run `python examples/train_mlp.py`: ~97% test accuracy in a few seconds on a
laptop CPU; the loss curve goes to examples/train_mlp_loss.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import pytreeclass as ptc
from pytreeclass import Parameter, State, field, treeclass

PLOT = Path(__file__).with_name("train_mlp_loss.png")  # gitignored


@treeclass
class Linear:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)

    @classmethod
    def create(cls, key: jax.Array, n_in: int, n_out: int) -> Linear:
        # He init.
        w = jax.random.normal(key, (n_in, n_out)) * jnp.sqrt(2 / n_in)
        return cls(w=w, b=jnp.zeros(n_out))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w + self.b


@treeclass
class MLP:
    layers: list[Linear]
    # Input statistics, measured once on the training set: part of the model,
    # never trained.
    mean: jax.Array = field(kind=State)
    std: jax.Array = field(kind=State)

    @classmethod
    def create(
        cls, key: jax.Array, sizes: list[int], x_train: np.ndarray
    ) -> MLP:
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [
            Linear.create(k, i, o)
            for k, i, o in zip(keys, sizes[:-1], sizes[1:])
        ]
        return cls(
            layers, mean=jnp.mean(x_train, 0), std=jnp.std(x_train, 0) + 1e-6
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = (x - self.mean) / self.std
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)  # logits


def loss_fn(params: MLP, rest: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    # Gradients flow to the Parameters only.
    model = ptc.tree_merge(params, rest)
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


# The model and the optimizer are ordinary arguments: no static_argnums, and no
# retracing from step to step.
@jax.jit
def train_step(model: MLP, opt: ptc.Optimizer, x: jax.Array, y: jax.Array):
    params, rest = ptc.tree_partition(model, Parameter)
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, x, y)
    params, opt = opt.update(grads, params)
    return ptc.tree_merge(params, rest), opt, loss


@jax.jit
def accuracy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def load_data() -> list[np.ndarray]:
    """[x_train, x_test, y_train, y_test]: scikit-learn's 1797 8x8 digits."""
    x, y = load_digits(return_X_y=True)
    split = train_test_split(
        x.astype(np.float32), y, test_size=0.2, random_state=0
    )
    return [np.asarray(a) for a in split]


def batches(x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator):
    """One epoch of shuffled full batches.

    The ragged tail is dropped, so the step compiles for one shape only.
    """
    order = rng.permutation(len(x))
    for i in range(0, len(x) - size + 1, size):
        yield x[order[i : i + size]], y[order[i : i + size]]


def main(epochs: int = 15, plot: Path | None = PLOT):
    """Train; return the model, every step's loss, every epoch's accuracy."""
    x_train, x_test, y_train, y_test = load_data()
    model = MLP.create(jax.random.key(0), [64, 128, 128, 10], x_train)
    # Adam state for the Parameters only:
    params = ptc.tree_filter(model, Parameter)
    opt = ptc.Optimizer.create(optax.adam(1e-3), params)
    rng = np.random.default_rng(0)
    losses: list[float] = []
    accs: list[float] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for x, y in batches(x_train, y_train, 64, rng):
            model, opt, loss = train_step(model, opt, x, y)
            losses.append(float(loss))
        accs.append(float(accuracy(model, x_test, y_test)))
        seconds = time.perf_counter() - start
        print(
            f"epoch {epoch:2d}/{epochs}  loss {losses[-1]:.4f}  "
            f"test accuracy {accs[-1]:.2%}  ({seconds:.1f}s)"
        )
    if plot is not None:
        save_plot(losses, accs, plot)
    return model, losses, accs


def save_plot(losses: list[float], accs: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # render to a file, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(losses, lw=1, label="train loss")
    ax.set(
        xlabel="step",
        ylabel="cross-entropy",
        yscale="log",
        title="pytreeclass MLP on digits",
    )
    epoch_ends = len(losses) / len(accs) * np.arange(1, len(accs) + 1)
    ax.twinx().plot(
        epoch_ends, accs, "o-", color="tab:orange", label="test accuracy"
    )
    fig.legend(loc="center right", bbox_to_anchor=(0.88, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"loss curve saved to {path}")


if __name__ == "__main__":
    main()
