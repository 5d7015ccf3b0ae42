"""Every script in examples/ runs (with fast settings) and does what it claims."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pytreeclass as ptc

from .versions import needs_nnx_nodes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@functools.cache
def example(name: str) -> ModuleType:
    """Import examples/<name>.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look classes' modules up here
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested() -> None:
    scripts = {p.stem for p in EXAMPLES.glob("*.py")}
    tested = {
        "counter",
        "running_average",
        "dropout_rng",
        "batchnorm_train_eval",
        "transfer_learning",
        "train_mlp",
        "lora_finetune",
        "with_equinox",
        "with_flax",
        "transformer_scan",
        "train_distributed",  # in tests/test_distributed.py
    }
    assert scripts == tested


# -- train_mlp: the README demo -------------------------------------------------------------------


@functools.cache
def train_mlp_full_run(plot: Path) -> tuple[list[float], list[float]]:
    """One full run of the README demo, shared by the tests below (it is the slow part)."""
    _, losses, accs = example("train_mlp").main(plot=plot)
    return losses, accs


def test_train_mlp_reaches_95_percent_and_saves_the_plot(tmp_path_factory) -> None:
    plot = tmp_path_factory.getbasetemp() / "train_mlp_loss.png"
    losses, accs = train_mlp_full_run(plot)
    assert accs[-1] >= 0.95
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def raw_mlp_losses(steps: int) -> list[float]:
    """The same training written without pytreeclass: dicts, a pure function, optax."""
    ex = example("train_mlp")
    x_train, _, y_train, _ = ex.load_data()
    sizes = [64, 128, 128, 10]
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = [
        {"w": jax.random.normal(k, (i, o)) * jnp.sqrt(2 / i), "b": jnp.zeros(o)}
        for k, i, o in zip(keys, sizes[:-1], sizes[1:])
    ]
    mean, std = jnp.mean(x_train, 0), jnp.std(x_train, 0) + 1e-6

    def loss_fn(params, x, y):
        h = (x - mean) / std
        for layer in params[:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        logits = h @ params[-1]["w"] + params[-1]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = optax.adam(1e-3)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = tx.init(params)
    order = np.random.default_rng(0).permutation(len(x_train))
    losses = []
    for i in range(steps):
        idx = order[64 * i : 64 * (i + 1)]
        params, state, loss = step(params, state, x_train[idx], y_train[idx])
        losses.append(float(loss))
    return losses


def test_train_mlp_matches_raw_dicts_and_optax_for_20_steps(tmp_path_factory) -> None:
    losses, _ = train_mlp_full_run(tmp_path_factory.getbasetemp() / "train_mlp_loss.png")
    np.testing.assert_allclose(losses[:20], raw_mlp_losses(20), rtol=1e-5, atol=1e-6)


# -- interop ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["with_equinox", pytest.param("with_flax", marks=needs_nnx_nodes)])
def test_foreign_module_example_trains(name: str) -> None:
    losses = example(name).main(steps=60)
    assert len(losses) == 60
    assert losses[-1] < 0.2 * losses[0]


# -- state patterns ---------------------------------------------------------------------------


def test_counter_counts_under_jit() -> None:
    ex = example("counter")
    assert ex.main(steps=5) == [1, 2, 3, 4, 5]
    counter = ex.Counter()
    value, counted = ex.count(counter)
    assert int(value) == 1 and int(counted.n) == 1
    assert int(counter.n) == 0  # the original is never changed
    with pytest.raises(ptc.FrozenInstanceError, match="value_and_tree"):
        counter.count()  # outside value_and_tree the in-place update is refused


def test_running_average_equals_numpy_mean() -> None:
    means, data = example("running_average").main(batches=6, seed=3)
    expected = [np.mean(data[: i + 1]) for i in range(len(data))]
    np.testing.assert_allclose(means, expected, rtol=1e-5)


def test_dropout_keys_are_never_reused() -> None:
    nets, outputs = example("dropout_rng").main(steps=5)
    used = []  # every key any layer stored or consumed, in order
    for before, after in itertools.pairwise(nets):
        for d0, d1 in zip(before.drops, after.drops):
            stored, consumed = jax.random.split(d0.key)
            np.testing.assert_array_equal(jax.random.key_data(d1.key), jax.random.key_data(stored))
            used.append(consumed)
    used += [d.key for net in nets for d in net.drops]
    raw = {tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in used}
    assert len(raw) == len(used) == 2 * 5 + 2 * 6
    masks = {tuple(np.asarray(y == 0).ravel().tolist()) for y in outputs}
    assert len(masks) == len(outputs)  # a fresh dropout pattern on every call


def test_batchnorm_stats_change_in_training_not_in_evaluation() -> None:
    res = example("batchnorm_train_eval").main(steps=20)
    initial, trained, evaluated = res["initial"], res["trained"], res["evaluated"]
    assert trained.training and not evaluated.training
    assert not np.allclose(trained.norm.mean, initial.norm.mean)
    assert not np.allclose(trained.norm.var, initial.norm.var)
    np.testing.assert_array_equal(evaluated.norm.mean, trained.norm.mean)
    np.testing.assert_array_equal(evaluated.norm.var, trained.norm.var)
    assert not np.allclose(trained.w1, initial.w1)  # the parameters trained too


def test_transfer_learning_freezes_the_encoder_and_trains_the_head() -> None:
    res = example("transfer_learning").main(steps=40)
    pretrained, fresh, start, tuned = res["pretrained"], res["fresh"], res["start"], res["tuned"]
    assert start.encoder is pretrained.encoder  # moved by the lens, not copied
    assert start.head is fresh.head
    for a, b in zip(jax.tree.leaves(tuned.encoder), jax.tree.leaves(pretrained.encoder)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(tuned.head.w, start.head.w)
    assert not np.allclose(pretrained.encoder[0].w, fresh.encoder[0].w)


# -- layer stacks: the scanned transformer ------------------------------------------------------


def test_transformer_scan_trains_a_few_hundred_steps() -> None:
    model, losses = example("transformer_scan").main(steps=300, progress=False)
    assert len(losses) == 300 and all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.7 * losses[0]  # ~4.45 (uniform over ~85 chars) -> ~2.5
    assert "blocks=Block \u00d74(" in repr(model)
    assert model.blocks.attn.qkv.shape[0] == 4  # still one stacked field after training


def test_transformer_scan_equals_the_unrolled_loop() -> None:
    ex = example("transformer_scan")
    model, _, batches = ex.setup(layers=3)
    x, _ = next(batches)
    blocks = ptc.tree_unstack(model.blocks)

    def unrolled(key):
        h = model.tok[x] + model.pos[: x.shape[1]]
        keys = [None] * 3 if key is None else list(ptc.split_key(key, 3))
        for block, k in zip(blocks, keys):
            h = block(h, k, model.rate)
        return model.ln_f(h) @ model.tok.T

    scanned = jax.jit(lambda key: model(x, key))
    np.testing.assert_allclose(scanned(None), jax.jit(unrolled)(None), rtol=2e-5, atol=2e-5)
    key = jax.random.key(3)
    np.testing.assert_allclose(scanned(key), jax.jit(unrolled)(key), rtol=2e-5, atol=2e-5)
    # layer 1 through the lens is the second block of the list
    one = model.at.blocks[1].get()
    np.testing.assert_array_equal(one.mlp.up, blocks[1].mlp.up)


def test_transformer_scan_sharded_step_matches_one_device() -> None:
    script = EXAMPLES / "transformer_scan.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--sharded"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    # layers, embed, mlp (older jax prints the spec as PartitionSpec(...), newer as P(...))
    spec = report["blocks.mlp.up spec"].replace("PartitionSpec(", "P(")
    assert spec == "P(None, None, 'model')"
    assert report["blocks.attn.qkv shard"] == [4, 64, 3, 1, 16]  # 4 heads over 4 devices
    np.testing.assert_allclose(report["loss sharded"], report["loss single"], rtol=1e-5)
    assert report["max param diff"] < 1e-3


def test_lora_finetune_trains_adapters_only_and_merges_them_back(capsys) -> None:
    ex = example("lora_finetune")
    res = ex.main()
    out = capsys.readouterr().out
    acc, counts = res["accuracy"], res["counts"]
    assert acc["base"] >= 0.95
    assert acc["tuned"] >= acc["base"] - 0.01  # within a point of the base model
    assert acc["tuned noisy"] > acc["base noisy"] + 0.03  # and it learned the new domain
    # Printed: trainable vs total before (all), with adapters (adapters only), after merging.
    assert counts == {"base": (8970, 8970), "lora": (1320, 10290), "merged": (8970, 8970)}
    assert "trainable  1,320 of 10,290 parameters" in out
    assert f"test accuracy, tuned        {acc['tuned']:.4f}" in out
    base, tuned, merged = res["base"], res["tuned"], res["merged"]
    assert all(type(layer) is ex.LoRA for layer in tuned.layers)
    assert all(type(layer) is ex.Linear for layer in merged.layers)
    for layer, lora in zip(base.layers, tuned.layers):
        assert lora.base is layer or ptc.tree_equal(lora.base, layer)  # frozen exactly
        assert float(jnp.abs(lora.b).sum()) > 0  # the adapters trained
    x = jnp.asarray(ex.load_data()[1][:32])
    np.testing.assert_allclose(merged(x), tuned(x), rtol=1e-4, atol=1e-4)
