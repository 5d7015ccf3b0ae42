"""The training recipes of docs/recipes.md, checked beyond what the page asserts: EMA weights
by kind, gradient accumulation (optax.MultiSteps and a scan) equal to the full-batch step,
bit-exact save and resume with the optimizer, and optimizer state sharded like the params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass

HERE = Path(__file__).resolve().parent


@treeclass
class Dense:
    w: jax.Array = field(kind=Parameter, axes=("embed", "mlp"))
    b: jax.Array = field(kind=Parameter, axes=("mlp",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w + self.b


class Frozen(ptc.Kind):
    """Leaves that are never trained (a pretrained layer)."""


@treeclass
class Net:
    base: Dense = field(kind=Frozen)
    head: Dense
    mean: jax.Array = field(kind=BatchStat, axes=("mlp",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jnp.tanh(self.base(x)) - self.mean)


def make_net(seed: int = 0) -> Net:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return Net(
        Dense(jax.random.normal(k1, (4, 8)) / 2, jnp.zeros(8)),
        Dense(jax.random.normal(k2, (8, 8)) / 3, jnp.full(8, 0.1)),
        jnp.zeros(8),
    )


X = jax.random.normal(jax.random.key(5), (16, 4))
Y = jax.random.normal(jax.random.key(6), (16, 8))


def loss(params: Any, rest: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((ptc.tree_merge(params, rest)(x) - y) ** 2)


# -- EMA weights ----------------------------------------------------------------------------


class Average(ptc.State):
    """A moving average of the parameters."""


@treeclass
class WithAverage:
    net: Net
    ema: Net = field(kind=Average)
    decay: float = field(static=True, default=0.5)


@jax.jit
def ema_step(model: WithAverage, opt: ptc.Optimizer) -> tuple[WithAverage, ptc.Optimizer]:
    params, rest = ptc.tree_partition(model, Parameter)
    grads = jax.grad(lambda p: jnp.mean((ptc.tree_merge(p, rest).net(X) - Y) ** 2))(params)
    params, opt = opt.update(grads, params)
    model = ptc.tree_merge(params, rest)
    d = model.decay
    return model.at.ema.set(
        jax.tree.map(lambda e, p: d * e + (1 - d) * p, model.ema, model.net)
    ), opt


def test_ema_is_its_own_kind_outside_grads_and_optimizer_and_updates_once_per_step() -> None:
    net = make_net()
    model = WithAverage(net, net)
    assert {k.__name__ for k in jax.tree.leaves(ptc.tree_kinds(model).ema)} == {"Average"}
    params = ptc.tree_partition(model, Parameter)[0]
    assert jax.tree.leaves(params.ema) == [] and jax.tree.leaves(params.net.base) == []
    opt = ptc.Optimizer.create(optax.sgd(0.1), params)
    assert len(jax.tree.leaves(opt.opt_state)) == 0  # sgd: no state, and none for the EMA
    adam = ptc.Optimizer.create(optax.adam(0.1), params)
    assert len(jax.tree.leaves(adam.opt_state)) == 1 + 2 * 2  # count, mu and nu of head
    one, _ = ema_step(model, opt)
    # one step: the average moved half-way to the new head, the frozen base is unchanged
    np.testing.assert_allclose(one.ema.head.w, 0.5 * net.head.w + 0.5 * one.net.head.w)
    assert not np.allclose(one.net.head.w, net.head.w)
    np.testing.assert_array_equal(one.ema.base.w, net.base.w)
    two, _ = ema_step(one, opt)
    np.testing.assert_allclose(two.ema.head.w, 0.5 * one.ema.head.w + 0.5 * two.net.head.w)
    # evaluation uses the average: a different output from the trained weights
    assert not np.allclose(two.ema(X), two.net(X))


# -- gradient accumulation ------------------------------------------------------------------


def full_batch_step(params: Any, rest: Any, tx: Any) -> Any:
    opt = ptc.Optimizer.create(tx, params)
    return opt.update(jax.grad(loss)(params, rest, X, Y), params)[0]


@pytest.mark.parametrize(
    "tx", [optax.adam(1e-2), optax.sgd(0.3, momentum=0.9)], ids=["adam", "sgd"]
)
def test_multisteps_inside_optimizer_equals_the_full_batch_step(tx: Any) -> None:
    params, rest = ptc.tree_partition(make_net(), Parameter)
    assert params.base.w is None  # a partition with None holes
    expected = full_batch_step(params, rest, tx)
    opt = ptc.Optimizer.create(optax.MultiSteps(tx, every_k_schedule=4), params)
    update = jax.jit(lambda o, g, p: o.update(g, p))
    p = params
    for i, (xb, yb) in enumerate(zip(jnp.split(X, 4), jnp.split(Y, 4))):
        p, opt = update(opt, jax.grad(loss)(p, rest, xb, yb), p)
        if i < 3:  # no step until the fourth micro-batch
            assert all(
                a is None or np.array_equal(a, b)
                for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params))
            )
    assert jax.tree.structure(p) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(p.head.w, params.head.w)


def test_scan_over_micro_batches_on_a_partition_with_holes_equals_the_full_batch_step() -> None:
    params, rest = ptc.tree_partition(make_net(), Parameter)
    tx = optax.adam(1e-2)
    expected = full_batch_step(params, rest, tx)

    @jax.jit
    def accumulated(params: Any, opt: ptc.Optimizer, xs: jax.Array, ys: jax.Array) -> Any:
        def add(total: Any, batch: Any) -> tuple[Any, None]:
            return jax.tree.map(jnp.add, total, jax.grad(loss)(params, rest, *batch)), None

        total, _ = jax.lax.scan(add, jax.tree.map(jnp.zeros_like, params), (xs, ys))
        return opt.update(jax.tree.map(lambda g: g / xs.shape[0], total), params)

    got, opt = accumulated(
        params, ptc.Optimizer.create(tx, params), X.reshape(4, 4, 4), Y.reshape(4, 4, 8)
    )
    assert jax.tree.structure(got) == jax.tree.structure(params) and int(opt.step) == 1
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -- save and resume --------------------------------------------------------------------------


def chain_with_schedule_and_multi_transform() -> Any:
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 20)
    labels = {Parameter: "train", Frozen: "frozen", BatchStat: "frozen"}
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.multi_transform(
            {"train": optax.adamw(schedule), "frozen": optax.set_to_zero()},
            lambda t: ptc.tree_labels(t, labels),
        ),
    )


TRANSFORMS = {
    "adam": lambda: optax.adam(1e-2),
    "chain": chain_with_schedule_and_multi_transform,
}


@jax.jit
def train(model: Net, opt: ptc.Optimizer) -> tuple[Net, ptc.Optimizer]:
    grads = jax.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
    return opt.update(grads, model)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_model_and_optimizer_save_and_resume_bit_exactly(
    tmp_path: Path, name: str, suffix: str
) -> None:
    tx = TRANSFORMS[name]()

    def fresh() -> dict[str, Any]:
        net = make_net()
        return {"model": net, "opt": ptc.Optimizer.create(tx, net)}

    state = fresh()
    for _ in range(3):
        state = dict(zip(("model", "opt"), train(**state)))
    path = tmp_path / f"ckpt{suffix}"
    ptc.tree_save(path, state)
    resumed = ptc.tree_load(path, like=fresh())
    assert ptc.tree_equal(resumed, state) and int(resumed["opt"].step) == 3
    assert dtypes(resumed) == dtypes(state)
    # three more steps from the file give the very same bits as never stopping
    a, b = state, resumed
    for _ in range(3):
        a = dict(zip(("model", "opt"), train(**a)))
        b = dict(zip(("model", "opt"), train(**b)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(a["model"].head.w, state["model"].head.w)


def dtypes(tree: Any) -> list[str]:
    return [str(x.dtype) for x in jax.tree.leaves(tree)]


def test_optimizer_state_is_sharded_like_the_parameters_on_eight_devices(tmp_path: Path) -> None:
    """One subprocess: XLA reads the device count once, when JAX starts."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    code = SHARDED.replace("CKPT", repr(str(tmp_path / "sharded.safetensors")))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=HERE.parent,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert report["mu head.w"] == report["param head.w"] == [None, "model"]
    assert report["nu head.b"] == report["param head.b"] == ["model"]
    assert report["count"] == []
    assert report["mu head.w shard"] == [8, 2]
    assert report["step after jit"] == [None, "model"]
    # loading into the sharded template places every leaf as the template's leaf was
    assert report["resumed equal"] is True and report["resumed mu head.w"] == [None, "model"]


SHARDED = """
import json
import jax, optax
import pytreeclass as ptc
from tests.test_recipes import make_net, train

mesh = jax.make_mesh((2, 4), ("data", "model"))
rules = {"embed": None, "mlp": "model"}
net = make_net()
state = {"model": net, "opt": ptc.Optimizer.create(optax.adam(1e-2), net)}
state = jax.device_put(state, ptc.tree_shardings(state, mesh, rules))
adam = state["opt"].opt_state[0]
spec = lambda x: list(x.sharding.spec)
model, opt = train(state["model"], state["opt"])
ptc.tree_save(CKPT, {"model": model, "opt": opt})
back = ptc.tree_load(CKPT, like={"model": model, "opt": opt})
print(json.dumps({
    "devices": len(adam.mu.head.w.sharding.device_set),
    "param head.w": spec(state["model"].head.w),
    "mu head.w": spec(adam.mu.head.w),
    "param head.b": spec(state["model"].head.b),
    "nu head.b": spec(adam.nu.head.b),
    "count": spec(adam.count),
    "mu head.w shard": list(adam.mu.head.w.addressable_shards[0].data.shape),
    "step after jit": spec(opt.opt_state[0].mu.head.w),
    "resumed equal": bool(ptc.tree_equal(back, {"model": model, "opt": opt})),
    "resumed mu head.w": spec(back["opt"].opt_state[0].mu.head.w),
}))
"""
