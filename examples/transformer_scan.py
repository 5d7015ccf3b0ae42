"""A small decoder-only transformer whose blocks are ONE stacked field, run by
`jax.lax.scan` (`ptc.scan_layers`).

Run `python examples/transformer_scan.py`: it trains a character-level language
model on the docstrings of Python's builtins (text that ships with every Python,
no download) for 300 steps, in well under a minute on a laptop CPU, with a
progress bar showing the loss.

`python examples/transformer_scan.py --sharded` runs the same training step over
8 simulated CPU devices: a 2 x 4 ("data", "model") mesh, the parameters placed
by `ptc.tree_shardings` from the fields' `axes` (the stacked "layers" axis is
prepended to every block leaf), and checks that it computes the loss one device
computes.
"""

from __future__ import annotations

import os
import sys

# XLA reads this once, when JAX starts: 8 CPU devices for the sharded run.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")]
    + ["--xla_force_host_platform_device_count=8"] * ("--sharded" in sys.argv)
).strip()

import argparse
import builtins
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import trange

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass

# -- the model ----------------------------------------------------------------


@treeclass
class LayerNorm:
    scale: jax.Array = field(kind=Parameter, axes=("embed",))
    bias: jax.Array = field(kind=Parameter, axes=("embed",))

    @classmethod
    def create(cls, embed: int) -> LayerNorm:
        return cls(jnp.ones(embed), jnp.zeros(embed))

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale + self.bias


@treeclass
class Attention:
    qkv: jax.Array = field(
        kind=Parameter, axes=("embed", None, "heads", None)
    )  # E,3,H,D
    out: jax.Array = field(
        kind=Parameter, axes=("heads", None, "embed")
    )  # H,D,E

    @classmethod
    def create(cls, key: jax.Array, embed: int, heads: int) -> Attention:
        k1, k2 = jax.random.split(key)
        d = embed // heads
        qkv = jax.random.normal(k1, (embed, 3, heads, d)) / math.sqrt(embed)
        out = jax.random.normal(k2, (heads, d, embed)) / math.sqrt(embed)
        return cls(qkv, out)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = jnp.einsum("bte,ekhd->kbthd", x, self.qkv)
        scores = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
        causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        y = jnp.einsum("bhts,bshd->bthd", weights, v)
        return jnp.einsum("bthd,hde->bte", y, self.out)


@treeclass
class MLP:
    up: jax.Array = field(kind=Parameter, axes=("embed", "mlp"))
    up_b: jax.Array = field(kind=Parameter, axes=("mlp",))
    down: jax.Array = field(kind=Parameter, axes=("mlp", "embed"))
    down_b: jax.Array = field(kind=Parameter, axes=("embed",))

    @classmethod
    def create(cls, key: jax.Array, embed: int) -> MLP:
        k1, k2 = jax.random.split(key)
        hidden = 4 * embed
        up = jax.random.normal(k1, (embed, hidden)) / math.sqrt(embed)
        down = jax.random.normal(k2, (hidden, embed)) / math.sqrt(hidden)
        return cls(up, jnp.zeros(hidden), down, jnp.zeros(embed))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x @ self.up + self.up_b) @ self.down + self.down_b


def dropout(x: jax.Array, key: jax.Array | None, rate: float) -> jax.Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), 0.0)


@treeclass
class Block:
    ln1: LayerNorm
    attn: Attention
    ln2: LayerNorm
    mlp: MLP

    @classmethod
    def create(cls, key: jax.Array, embed: int, heads: int) -> Block:
        k1, k2 = jax.random.split(key)
        norm = LayerNorm.create(embed)
        return cls(
            norm,
            Attention.create(k1, embed, heads),
            norm,
            MLP.create(k2, embed),
        )

    def __call__(
        self, x: jax.Array, key: jax.Array | None = None, rate: float = 0.0
    ) -> jax.Array:
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        x = x + dropout(self.attn(self.ln1(x)), k1, rate)
        return x + dropout(self.mlp(self.ln2(x)), k2, rate)


@treeclass
class Transformer:
    tok: jax.Array = field(kind=Parameter, axes=("vocab", "embed"))
    pos: jax.Array = field(kind=Parameter, axes=(None, "embed"))
    blocks: Block = field(
        stack="layers"
    )  # ONE Block; every array has a leading layer axis
    ln_f: LayerNorm
    rate: float = field(static=True, default=0.1)  # dropout

    @classmethod
    def create(
        cls,
        key: jax.Array,
        vocab: int,
        *,
        layers: int,
        embed: int,
        heads: int,
        context: int,
    ) -> Transformer:
        k_tok, k_pos, k_blocks = jax.random.split(key, 3)
        # vmap over one key per layer builds the stack directly (no Python list
        # of blocks); jit makes it one compiled call, not many small eager ones.
        keys = ptc.split_key(k_blocks, layers)
        blocks = jax.jit(jax.vmap(lambda k: Block.create(k, embed, heads)))(
            keys
        )
        tok = jax.random.normal(k_tok, (vocab, embed)) * 0.02
        pos = jax.random.normal(k_pos, (context, embed)) * 0.02
        return cls(tok, pos, blocks, LayerNorm.create(embed))

    @property
    def layers(self) -> int:
        return self.blocks.ln1.scale.shape[0]

    def __call__(
        self, tokens: jax.Array, key: jax.Array | None = None
    ) -> jax.Array:
        x = self.tok[tokens] + self.pos[: tokens.shape[1]]
        if key is None:  # evaluation: no dropout
            x = ptc.scan_layers(lambda block, h: block(h), self.blocks, x)
        else:  # training: one dropout key per layer, scanned with the blocks
            keys = ptc.split_key(key, self.layers)
            x = ptc.scan_layers(
                lambda bk, h: bk[0](h, bk[1], self.rate), (self.blocks, keys), x
            )
        return self.ln_f(x) @ self.tok.T  # logits, with the embedding tied


# -- data and training --------------------------------------------------------


def corpus() -> str:
    """The docstrings of Python's builtins: ~100 kB of English text."""
    docs = (getattr(builtins, name).__doc__ for name in sorted(dir(builtins)))
    return "\n\n".join(d for d in docs if d)


class Batches:
    """Random windows of the corpus, as (inputs, next-character targets)."""

    def __init__(
        self, text: str, context: int, batch: int, seed: int = 0
    ) -> None:
        self.chars = sorted(set(text))
        index = {c: i for i, c in enumerate(self.chars)}
        self.data = np.array([index[c] for c in text], np.int32)
        self.context, self.batch = context, batch
        self.rng = np.random.default_rng(seed)

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        starts = self.rng.integers(
            0, len(self.data) - self.context - 1, self.batch
        )
        windows = self.data[starts[:, None] + np.arange(self.context + 1)]
        return windows[:, :-1], windows[:, 1:]


def loss_fn(
    model: Transformer, x: jax.Array, y: jax.Array, key: jax.Array | None
) -> jax.Array:
    logits = model(x, key)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def train_step(
    model: Transformer,
    opt: ptc.Optimizer,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
) -> tuple[Transformer, ptc.Optimizer, jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(model, x, y, key)
    model, opt = opt.update(grads, model)
    return model, opt, loss


SIZES = {"layers": 4, "embed": 64, "heads": 4, "context": 32}


def setup(
    seed: int = 0, **sizes: int
) -> tuple[Transformer, ptc.Optimizer, Batches]:
    sizes = {**SIZES, **sizes}
    batches = Batches(corpus(), sizes["context"], batch=16, seed=seed)
    model = Transformer.create(
        jax.random.key(seed), len(batches.chars), **sizes
    )
    opt = ptc.Optimizer.create(optax.adam(3e-3), model)
    return model, opt, batches


def main(
    steps: int = 300, progress: bool = True
) -> tuple[Transformer, list[float]]:
    """Train for `steps` steps; return the model and the loss of every step."""
    model, opt, batches = setup()
    summary = ptc.tree_summary(model).splitlines()
    print(
        *summary[:2],
        *(line for line in summary if line.startswith(".blocks ")),
        sep="\n",
    )
    key = jax.random.key(1)
    losses = []
    bar = trange(steps, disable=not progress, desc="training", ncols=80)
    start = time.perf_counter()
    for step in bar:
        x, y = next(batches)
        model, opt, loss = train_step(
            model, opt, x, y, jax.random.fold_in(key, step)
        )
        losses.append(float(loss))
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    print(
        f"{steps} steps in {time.perf_counter() - start:.1f} s: "
        f"loss {losses[0]:.3f} -> "
        f"{np.mean(losses[-20:]):.3f} (mean of the last 20 steps)"
    )
    return model, losses


# -- the same step over 8 devices ---------------------------------------------

RULES = {
    "layers": None,
    "vocab": None,
    "embed": None,
    "heads": "model",
    "mlp": "model",
}


def sharded_vs_single(steps: int = 3) -> dict[str, object]:
    """Run `steps` training steps on one device and on a 2 x 4 mesh."""
    # the same random numbers sharded or not (the default from jax 0.5 on)
    jax.config.update("jax_threefry_partitionable", True)
    if jax.device_count() < 8:
        raise RuntimeError(
            "needs 8 devices: run with --sharded (or set XLA_FLAGS yourself)"
        )
    if hasattr(jax.sharding, "AxisType"):  # jax >= 0.5.3 names the axis types
        auto = jax.sharding.AxisType.Auto
        mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(auto, auto))
    else:
        mesh = jax.make_mesh((2, 4), ("data", "model"))
    model, opt, batches = setup()
    data = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("data", None)
    )
    placed = jax.device_put(model, ptc.tree_shardings(model, mesh, RULES))
    placed_opt = jax.device_put(opt, ptc.tree_shardings(opt, mesh, RULES))
    key = jax.random.key(1)
    single, sharded = [], []
    for step in range(steps):
        x, y = next(batches)
        k = jax.random.fold_in(key, step)
        model, opt, loss = train_step(model, opt, x, y, k)
        xs, ys = jax.device_put(x, data), jax.device_put(y, data)
        placed, placed_opt, loss_s = train_step(placed, placed_opt, xs, ys, k)
        single.append(float(loss))
        sharded.append(float(loss_s))
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(placed))
    )
    return {
        "devices": len(placed.blocks.mlp.up.sharding.device_set),
        "blocks.mlp.up spec": str(placed.blocks.mlp.up.sharding.spec),
        "blocks.attn.qkv shard": list(
            placed.blocks.attn.qkv.addressable_shards[0].data.shape
        ),
        "loss single": single,
        "loss sharded": sharded,
        "max param diff": diff,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Train a scanned transformer on characters."
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--sharded", action="store_true", help="compare 8 devices with 1"
    )
    args = parser.parse_args()
    if args.sharded:
        print(json.dumps(sharded_vs_single()))
    else:
        main(args.steps)
