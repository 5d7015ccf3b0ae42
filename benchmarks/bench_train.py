"""Section 4: one jitted training step (MLP 4 x 64, adam, batch 128 x 64) in every library.

Each variant returns a zero-argument `step()` that runs one step on its carried state and
waits for the loss (the loss comes out of the same executable as the new parameters, so it
is ready when they are). The raw-dict variant is the limit: a pure function of a list of
dicts, `jax.jit` and optax, with nothing between the user and JAX.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from timing import Section, Settings, fmt_ratio, fmt_us, measure_many

import pytreeclass as ptc

__all__ = ["bench_train", "missing", "variants"]

WIDTH, DEPTH, BATCH = 64, 4, 128
DIMS = [WIDTH] * DEPTH + [1]  # 4 layers: 64 -> 64 -> 64 -> 64 -> 1
LR = 1e-3


def _loop(step: Callable[..., Any], state: list[Any], x: Any, y: Any) -> Callable[[], Any]:
    """One timed call: a training step on `(state[0], state[1])` that stores the new pair."""

    def run() -> Any:
        state[0], state[1], value = step(state[0], state[1], x, y)
        return value.block_until_ready()

    return run


def _init_arrays(seed: int = 0) -> list[tuple[jax.Array, jax.Array]]:
    # NumPy's generator, not jax.random: nothing to compile before the benchmark starts.
    rng = np.random.default_rng(seed)
    return [
        (
            jnp.asarray(rng.standard_normal((i, o), dtype=np.float32) / np.sqrt(i)),
            jnp.zeros((o,), jnp.float32),
        )
        for i, o in itertools.pairwise(DIMS)
    ]


def _data() -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, WIDTH), dtype=np.float32)
    return jnp.asarray(x), jnp.asarray(rng.standard_normal((BATCH, 1), dtype=np.float32))


def _forward(layers: Any, x: jax.Array, get: Callable[[Any], tuple[Any, Any]]) -> jax.Array:
    for i, layer in enumerate(layers):
        w, b = get(layer)
        x = x @ w + b
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def _mse(pred: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((pred - y) ** 2)


# -- the limit: raw dicts + a pure function + optax ------------------------------------------


def raw_dict() -> Callable[[], Any]:
    params = [{"w": w, "b": b} for w, b in _init_arrays()]
    tx = optax.adam(LR)
    x, y = _data()

    def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return _mse(_forward(params, x, lambda p: (p["w"], p["b"])), y)

    @jax.jit
    def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    state = [params, tx.init(params)]

    return _loop(step, state, x, y)


# -- pytreeclass --------------------------------------------------------------------------------


@ptc.treeclass
class Linear:
    w: jax.Array = ptc.field(kind=ptc.Parameter)
    b: jax.Array = ptc.field(kind=ptc.Parameter)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w + self.b


@ptc.treeclass
class MLP:
    layers: list[Linear]
    activation: str = ptc.field(static=True, default="relu")

    def __call__(self, x: jax.Array) -> jax.Array:
        return _forward(self.layers, x, lambda layer: (layer.w, layer.b))


def _ptc_model() -> MLP:
    return MLP([Linear(w, b) for w, b in _init_arrays()])


def _ptc_loss(params: MLP, rest: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return _mse(ptc.tree_merge(params, rest)(x), y)


def ptc_optimizer() -> Callable[[], Any]:
    """The documented pattern: partition inside jit, `ptc.Optimizer` as a plain argument."""
    model, (x, y) = _ptc_model(), _data()
    opt = ptc.Optimizer.create(optax.adam(LR), ptc.tree_partition(model, ptc.Parameter)[0])

    @jax.jit
    def step(model: MLP, opt: Any, x: jax.Array, y: jax.Array) -> Any:
        params, rest = ptc.tree_partition(model, ptc.Parameter)
        value, grads = jax.value_and_grad(_ptc_loss)(params, rest, x, y)
        params, opt = opt.update(grads, params)
        return ptc.tree_merge(params, rest), opt, value

    state = [model, opt]

    return _loop(step, state, x, y)


def ptc_optax() -> Callable[[], Any]:
    """Same model, optax state carried by hand (isolates the cost of `ptc.Optimizer`)."""
    model, (x, y) = _ptc_model(), _data()
    tx = optax.adam(LR)

    @jax.jit
    def step(model: MLP, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        params, rest = ptc.tree_partition(model, ptc.Parameter)
        value, grads = jax.value_and_grad(_ptc_loss)(params, rest, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return ptc.tree_merge(optax.apply_updates(params, updates), rest), opt_state, value

    state = [model, tx.init(ptc.tree_partition(model, ptc.Parameter)[0])]

    return _loop(step, state, x, y)


@ptc.treeclass
class Trainer:
    model: MLP
    opt: Any


def ptc_value_and_tree() -> Callable[[], Any]:
    """The step written as in-place updates on a trainer, made pure by `value_and_tree`."""
    model, (x, y) = _ptc_model(), _data()
    opt = ptc.Optimizer.create(optax.adam(LR), ptc.tree_partition(model, ptc.Parameter)[0])

    def train(t: Trainer, x: jax.Array, y: jax.Array) -> jax.Array:
        params, rest = ptc.tree_partition(t.model, ptc.Parameter)
        value, grads = jax.value_and_grad(_ptc_loss)(params, rest, x, y)
        params, t.opt = t.opt.update(grads, params)
        t.model = ptc.tree_merge(params, rest)
        return value

    @jax.jit
    def step(trainer: Trainer, x: jax.Array, y: jax.Array) -> Any:
        return ptc.value_and_tree(train)(trainer, x, y)

    state = [Trainer(model, opt)]

    def run() -> Any:
        value, state[0] = step(state[0], x, y)
        return value.block_until_ready()

    return run


# -- equinox ------------------------------------------------------------------------------------


class EqxLinear(eqx.Module):
    w: jax.Array
    b: jax.Array


class EqxMLP(eqx.Module):
    layers: list[EqxLinear]

    def __call__(self, x: jax.Array) -> jax.Array:
        return _forward(self.layers, x, lambda layer: (layer.w, layer.b))


def equinox() -> Callable[[], Any]:
    model = EqxMLP([EqxLinear(w, b) for w, b in _init_arrays()])
    x, y = _data()
    tx = optax.adam(LR)

    def loss(model: EqxMLP, x: jax.Array, y: jax.Array) -> jax.Array:
        return _mse(model(x), y)

    @eqx.filter_jit
    def step(model: EqxMLP, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        value, grads = eqx.filter_value_and_grad(loss)(model, x, y)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    state = [model, tx.init(eqx.filter(model, eqx.is_array))]

    return _loop(step, state, x, y)


# -- flax nnx -------------------------------------------------------------------------------------


class NnxLinear(nnx.Module):
    def __init__(self, w: jax.Array, b: jax.Array) -> None:
        self.w = nnx.Param(w)
        self.b = nnx.Param(b)


class NnxMLP(nnx.Module):
    def __init__(self, layers: list[NnxLinear]) -> None:
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _forward(self.layers, x, lambda layer: (layer.w[...], layer.b[...]))


def _nnx_setup() -> tuple[NnxMLP, nnx.Optimizer, jax.Array, jax.Array]:
    model = NnxMLP([NnxLinear(w, b) for w, b in _init_arrays()])
    optimizer = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)
    return model, optimizer, *_data()


def _nnx_train(model: NnxMLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> Any:
    value, grads = nnx.value_and_grad(lambda m: _mse(m(x), y))(model)
    optimizer.update(model, grads)
    return value


def nnx_jit() -> Callable[[], Any]:
    model, optimizer, x, y = _nnx_setup()
    step = nnx.jit(_nnx_train)
    return lambda: step(model, optimizer, x, y).block_until_ready()


def nnx_cached_partial() -> Callable[[], Any]:
    """nnx's documented way to cut its Python overhead: `nnx.cached_partial`."""
    model, optimizer, x, y = _nnx_setup()
    step = nnx.cached_partial(nnx.jit(_nnx_train), model, optimizer)
    return lambda: step(x, y).block_until_ready()


def missing() -> list[str]:
    """Library features a variant needs that this checkout does not have yet."""
    return [name for name in ("Optimizer", "value_and_tree") if not hasattr(ptc, name)]


def variants() -> dict[str, Callable[[], Callable[[], Any]]]:
    """Name -> builder of a `step()` function, the raw-dict limit first."""
    out: dict[str, Callable[[], Callable[[], Any]]] = {
        "raw dict + jax.jit + optax (limit)": raw_dict,
    }
    if hasattr(ptc, "Optimizer"):
        out["pytreeclass jax.jit + partition/merge + ptc.Optimizer"] = ptc_optimizer
    out["pytreeclass jax.jit + partition/merge + optax state"] = ptc_optax
    if hasattr(ptc, "Optimizer") and hasattr(ptc, "value_and_tree"):
        out["pytreeclass jax.jit + value_and_tree(trainer)"] = ptc_value_and_tree
    out["equinox filter_jit + filter_value_and_grad"] = equinox
    out["nnx nnx.jit + nnx.Optimizer"] = nnx_jit
    out["nnx nnx.cached_partial(nnx.jit(...))"] = nnx_cached_partial
    return out


def bench_train(settings: Settings, title: str = "4. jitted training step") -> Section:
    """Time one step per variant; ratios against the raw-dict limit."""
    names, builders = zip(*variants().items())
    steps = [b() for b in builders]
    # Compile, and check that every variant computes the same thing: same start, same data,
    # same optimizer, so the losses of the first steps must agree.
    losses = np.array([[float(s()) for _ in range(3)] for s in steps])
    for name, row in zip(names, losses):
        if not np.allclose(row, losses[0], rtol=1e-4, atol=1e-6):
            raise AssertionError(f"{name} computes losses {row}, the raw-dict step {losses[0]}")
    # Wall time is what a training loop waits for; CPU time (all threads of this process)
    # is immune to other processes on a shared machine. Both are minimums over repeats.
    wall = measure_many(steps, settings.wall_clock(repeat=settings.repeat * 2))
    times = measure_many(steps, settings.more(2))
    sec = Section(
        f"{title} (MLP {DEPTH} x {WIDTH}, adam, batch {BATCH} x {WIDTH})",
        ["variant", "wall time", "x raw dict", "CPU time", "x raw dict"],
    )
    for name, w, us in zip(names, wall, times):
        sec.add(name, fmt_us(w), fmt_ratio(w / wall[0]), fmt_us(us), fmt_ratio(us / times[0]))
    ours = next(n for n in names if n.startswith("pytreeclass"))
    r = times[names.index(ours)] / times[0]
    rw = wall[names.index(ours)] / wall[0]
    sec.check(f"ours <= 1.05x raw dict ({ours})", f"{r:.2f}x CPU, {rw:.2f}x wall", r <= 1.05)
    sec.notes.extend(f"skipped variants: ptc.{m} is not in this checkout yet" for m in missing())
    sec.notes.append(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    sec.notes.append(f"every variant checked to compute the same losses: {losses[0].round(5)}")
    return sec
