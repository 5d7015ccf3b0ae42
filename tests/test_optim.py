"""ptc.Optimizer: optax state as a treeclass; jit without retracing; partitions; lazy optax."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeclass as ptc
from pytreeclass import BatchStat, OptState, Parameter, field, treeclass

from . import strategies


@treeclass
class Linear:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)
    mean: jax.Array = field(kind=BatchStat)
    name: str = field(static=True, default="linear")

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w + self.b + self.mean


def make_model() -> Linear:
    k1, k2 = jax.random.split(jax.random.key(0))
    return Linear(
        jax.random.normal(k1, (3, 2)), jax.random.normal(k2, (2,)), jnp.full((2,), 0.5, jnp.float32)
    )


X = jnp.arange(12.0).reshape(4, 3) / 10


def loss(model: Linear) -> jax.Array:
    return jnp.mean(model(X) ** 2)


def loss_split(params: Linear, rest: Linear) -> jax.Array:
    return loss(ptc.tree_merge(params, rest))


def assert_trees_close(a, b, **kw) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def raw_optax_run(tx: optax.GradientTransformation, params, grad_fn, steps: int):
    """The reference: plain optax, state threaded by hand (one jit: eager ops are slow)."""

    @jax.jit
    def run(params):
        state = tx.init(params)
        for _ in range(steps):
            updates, state = tx.update(grad_fn(params), state, params)
            params = optax.apply_updates(params, updates)
        return params

    return run(params)


def test_create_holds_tx_state_and_step() -> None:
    tx = optax.adam(1e-2)
    params = {"w": jnp.ones(3)}
    opt = ptc.Optimizer.create(tx, params)
    assert opt.tx is tx
    assert int(opt.step) == 0 and opt.step.dtype == jnp.int32
    assert_trees_close(opt.opt_state, tx.init(params))
    # Every leaf is optimizer state, and the static tx is not a leaf.
    assert set(jax.tree.leaves(ptc.tree_kinds(opt))) == {OptState}
    assert len(jax.tree.leaves(opt)) == len(jax.tree.leaves(tx.init(params))) + 1


def test_update_matches_plain_optax_and_is_out_of_place() -> None:
    tx = optax.adam(0.05)
    params = {"a": jnp.arange(3.0), "b": [jnp.ones((2, 2))]}

    def grad_fn(p):
        return jax.grad(lambda q: sum(jnp.sum(x**2) for x in jax.tree.leaves(q)))(p)

    opt = ptc.Optimizer.create(tx, params)
    first = opt
    p, opt = opt.update(grad_fn(params), params)  # once eagerly, then compiled
    step = jax.jit(lambda p, o: o.update(grad_fn(p), p))
    for _ in range(4):
        p, opt = step(p, opt)
    assert_trees_close(p, raw_optax_run(tx, params, grad_fn, 5), rtol=1e-6)
    assert int(opt.step) == 5
    assert int(first.step) == 0  # the original optimizer is untouched
    assert opt.tx is first.tx


def test_jit_plain_argument_does_not_retrace() -> None:
    traces = []

    @jax.jit
    def train_step(model: Linear, opt: ptc.Optimizer):
        traces.append(1)
        params, rest = ptc.tree_partition(model, Parameter)
        grads = jax.grad(loss_split)(params, rest)
        params, opt = opt.update(grads, params)
        return ptc.tree_merge(params, rest), opt

    model = make_model()
    opt = ptc.Optimizer.create(optax.adam(1e-2), ptc.tree_filter(model, Parameter))
    losses = []
    for _ in range(4):
        losses.append(float(loss(model)))
        model, opt = train_step(model, opt)
    assert len(traces) == 1, "a new Optimizer from update() must reuse the compiled step"
    assert int(opt.step) == 4
    assert losses[-1] < losses[0]


def test_partition_with_none_holes_updates_only_parameters() -> None:
    model = make_model()
    params, rest = ptc.tree_partition(model, Parameter)
    assert params.mean is None and rest.w is None
    opt = ptc.Optimizer.create(optax.sgd(0.1), params)
    grads = jax.grad(loss_split)(params, rest)
    assert grads.mean is None
    new_params, opt = opt.update(grads, params)
    assert new_params.mean is None  # holes stay holes
    new_model = ptc.tree_merge(new_params, rest)
    assert new_model.mean is model.mean
    np.testing.assert_allclose(new_model.w, model.w - 0.1 * grads.w, rtol=1e-6)
    assert new_model.name == "linear"


def test_masked_with_tree_mask_function_under_jit() -> None:
    # masked + set_to_zero on the complement: Parameters get adam, the rest stays put.
    tx = optax.chain(
        optax.masked(optax.adam(0.1), lambda p: ptc.tree_mask(p, Parameter)),
        optax.masked(optax.set_to_zero(), lambda p: ptc.tree_mask(p, ptc.Not(Parameter))),
    )
    model = make_model()
    opt = ptc.Optimizer.create(tx, model)

    @jax.jit
    def step(model: Linear, opt: ptc.Optimizer):
        return opt.update(jax.grad(loss)(model), model)

    new, opt = step(model, opt)
    new, opt = step(new, opt)
    np.testing.assert_array_equal(new.mean, model.mean)
    assert not np.allclose(new.w, model.w)
    # The Parameter part follows adam on the parameters alone.
    params, rest = ptc.tree_partition(model, Parameter)
    ref = raw_optax_run(optax.adam(0.1), params, lambda p: jax.grad(loss_split)(p, rest), 2)
    assert_trees_close(ptc.tree_filter(new, Parameter), ref, rtol=1e-5)


def test_masked_passes_other_leaves_through_like_optax() -> None:
    # optax.masked applies the raw update to unmasked leaves; our mask must not change that.
    tx = optax.masked(optax.scale(0.0), lambda p: ptc.tree_mask(p, Parameter))
    model = make_model()
    opt = ptc.Optimizer.create(tx, model)
    grads = jax.grad(loss)(model)
    new, _ = jax.jit(lambda m, o, g: o.update(g, m))(model, opt, grads)
    np.testing.assert_array_equal(new.w, model.w)
    np.testing.assert_allclose(new.mean, model.mean + grads.mean, rtol=1e-6)


def test_multi_transform_with_tree_labels_under_jit() -> None:
    tx = optax.multi_transform(
        {"Parameter": optax.adam(0.1), "BatchStat": optax.set_to_zero()}, ptc.tree_labels
    )
    model = make_model()
    opt = ptc.Optimizer.create(tx, model)
    traces = []

    @jax.jit
    def step(model: Linear, opt: ptc.Optimizer):
        traces.append(1)
        return opt.update(jax.grad(loss)(model), model)

    new = model
    for _ in range(3):
        new, opt = step(new, opt)
    assert len(traces) == 1
    np.testing.assert_array_equal(new.mean, model.mean)
    params, rest = ptc.tree_partition(model, Parameter)
    ref = raw_optax_run(optax.adam(0.1), params, lambda p: jax.grad(loss_split)(p, rest), 3)
    assert_trees_close(ptc.tree_filter(new, Parameter), ref, rtol=1e-5)


def test_multi_transform_with_label_mapping() -> None:
    tx = optax.multi_transform(
        {"train": optax.sgd(1.0), "frozen": optax.set_to_zero()},
        lambda p: ptc.tree_labels(p, {Parameter: "train", ptc.State: "frozen"}),
    )
    model = make_model()
    grads = jax.grad(loss)(model)
    new, _ = ptc.Optimizer.create(tx, model).update(grads, model)
    np.testing.assert_allclose(new.b, model.b - grads.b, rtol=1e-6)
    np.testing.assert_array_equal(new.mean, model.mean)


def test_chain_with_schedule_matches_optax() -> None:
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=2, decay_steps=6)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-2))
    model = make_model()
    params, rest = ptc.tree_partition(model, Parameter)

    def grad_fn(p):
        return jax.grad(loss_split)(p, rest)

    opt = ptc.Optimizer.create(tx, params)
    step = jax.jit(lambda p, o: o.update(grad_fn(p), p))
    p = params
    for _ in range(6):
        p, opt = step(p, opt)
    assert_trees_close(p, raw_optax_run(tx, params, grad_fn, 6), rtol=1e-5, atol=1e-7)
    assert int(opt.step) == 6


def test_extra_args_reach_the_transformation() -> None:
    tx = optax.chain(
        optax.sgd(1.0), optax.contrib.reduce_on_plateau(factor=0.5, patience=0, cooldown=0)
    )
    params = {"w": jnp.array([1.0])}
    opt = ptc.Optimizer.create(tx, params)
    grads = {"w": jnp.array([0.1])}
    for value in (1.0, 2.0, 3.0):  # the loss never improves: the scale must drop
        params, opt = opt.update(grads, params, value=jnp.asarray(value))
    plateau_state = opt.opt_state[1]
    assert float(plateau_state.scale) < 1.0


def test_scan_carries_the_optimizer() -> None:
    model = make_model()
    params, rest = ptc.tree_partition(model, Parameter)
    opt = ptc.Optimizer.create(optax.sgd(0.05), params)

    def body(carry, _):
        p, o = carry
        p, o = o.update(jax.grad(loss_split)(p, rest), p)
        return (p, o), loss_split(p, rest)

    (p, opt), losses = jax.lax.scan(body, (params, opt), None, length=5)
    assert int(opt.step) == 5
    assert losses.shape == (5,) and float(losses[-1]) < float(losses[0])
    grad_fn = lambda q: jax.grad(loss_split)(q, rest)  # noqa: E731
    assert_trees_close(p, raw_optax_run(optax.sgd(0.05), params, grad_fn, 5), rtol=1e-5)


def test_adam_moments_inside_a_train_state_are_optstate_not_parameter() -> None:
    # Adam's moments mirror the model (a Linear with Parameter fields); the outer
    # opt_state field's kind wins, so filtering Parameters picks the model only.
    @treeclass
    class TrainState:
        model: Linear
        opt: ptc.Optimizer

    model = make_model()
    state = TrainState(model, ptc.Optimizer.create(optax.adam(1e-3), model))
    selected = jax.tree.leaves(ptc.tree_filter(state, Parameter))
    assert len(selected) == 2
    assert all(any(s is leaf for leaf in (model.w, model.b)) for s in selected)
    n_opt = len(jax.tree.leaves(ptc.tree_filter(state, OptState)))
    assert n_opt == len(jax.tree.leaves(state.opt))


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_optax_import_works_and_optimizer_says_how_to_install() -> None:
    proc = run_python(
        """
        import sys
        sys.modules["optax"] = None  # makes every `import optax` raise ImportError
        import jax.numpy as jnp
        import pytreeclass as ptc  # must not need optax (nor flax, which imports it)
        assert sys.modules["optax"] is None
        try:
            ptc.Optimizer.create(object(), {"w": jnp.ones(2)})
        except ImportError as e:
            print(e)
        else:
            raise SystemExit("no ImportError")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "ptc.Optimizer needs optax" in proc.stdout
    assert "pip install optax" in proc.stdout


def test_create_rejects_what_is_not_a_transformation() -> None:
    with pytest.raises(TypeError, match=r"got adam\. Did you pass optax\.adam instead of"):
        ptc.Optimizer.create(optax.adam, {"w": jnp.ones(2)})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must be an optax GradientTransformation"):
        ptc.Optimizer.create(0.1, {"w": jnp.ones(2)})  # type: ignore[arg-type]


def test_missing_optax_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    opt = ptc.Optimizer.create(optax.sgd(0.1), {"w": jnp.ones(2)})
    monkeypatch.setitem(sys.modules, "optax", None)
    with pytest.raises(ImportError, match=r"needs optax.*pip install optax"):
        ptc.Optimizer.create(optax.sgd(0.1), {"w": jnp.ones(2)})
    with pytest.raises(ImportError, match=r"pip install optax"):
        opt.update({"w": jnp.ones(2)}, {"w": jnp.ones(2)})


@settings(max_examples=25, deadline=None)
@given(tree=strategies.trees, kind=st.sampled_from([Parameter, BatchStat, "a", "w"]))
def test_update_on_any_partition_keeps_holes_and_the_rest(tree, kind) -> None:
    tree = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), tree)
    params, rest = ptc.tree_partition(tree, kind)
    opt = ptc.Optimizer.create(optax.sgd(0.5), params)
    new, opt = opt.update(jax.tree.map(jnp.ones_like, params), params)
    assert jax.tree.structure(new) == jax.tree.structure(params)  # holes stay holes
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b - 0.5)
    merged = ptc.tree_merge(new, rest)
    assert jax.tree.structure(merged) == jax.tree.structure(tree)
    untouched = [x for x in jax.tree.leaves(merged) if any(x is r for r in jax.tree.leaves(rest))]
    assert len(untouched) == len(jax.tree.leaves(rest))
