"""Changing the trainable set mid-training: a clear error, and `Optimizer.reinit`.

optax states mirror the params they were made for (Adam's `mu`/`nu`, a momentum trace),
so an `Optimizer` made for one partition cannot update another, nor params whose leaves
changed shape or dtype at the same paths (surgery). `update` says which paths changed; `reinit(params)` re-initialises for the new partition and keeps the state
of every leaf whose path and shape survive. Because Adam and SGD act leaf by leaf, the
leaves trained all along must follow exactly the trajectory they would have followed
without the change: that is what the tests check, with `optax.adam` and with
`optax.multi_transform`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass


@treeclass
class Block:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)
    scale: jax.Array = field(kind=BatchStat)  # trained by another transformation


@treeclass
class Net:
    body: Block
    head: Block
    name: str = field(static=True, default="net")

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.tanh(x @ self.body.w + self.body.b) * self.body.scale
        return jnp.sum(h @ self.head.w + self.head.b) * self.head.scale


def _net() -> Net:
    k = jax.random.split(jax.random.key(0), 4)

    def block(k1: jax.Array, k2: jax.Array, n: int, m: int) -> Block:
        return Block(jax.random.normal(k1, (n, m)), jax.random.normal(k2, (m,)), jnp.ones(()))

    return Net(block(k[0], k[1], 3, 4), block(k[2], k[3], 4, 2))


X = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)


def _loss(params: Net, rest: Net) -> jax.Array:
    return jnp.sum(ptc.tree_merge(rest, params)(X) ** 2)


HEAD = "head"
ALL = ptc.Any("head", "body")


@jax.jit
def _step(params: Net, rest: Net, opt: ptc.Optimizer) -> tuple[Net, ptc.Optimizer]:
    grads = jax.grad(_loss)(params, rest)
    return opt.update(grads, params)


def _train(model: Net, which: ptc.Any | str, opt: ptc.Optimizer, n: int):
    params, rest = ptc.tree_partition(model, which)
    for _ in range(n):
        params, opt = _step(params, rest, opt)
    return ptc.tree_merge(rest, params), opt


TXS = {
    "adam": lambda: optax.adam(1e-2),
    "multi_transform": lambda: optax.multi_transform(
        {"Parameter": optax.adam(1e-2), "BatchStat": optax.sgd(0.1, momentum=0.9)},
        ptc.tree_labels,
    ),
}


@pytest.mark.parametrize("tx_name", list(TXS))
def test_update_with_a_changed_partition_names_the_paths(tx_name):
    model = _net()
    head, _ = ptc.tree_partition(model, HEAD)
    opt = ptc.Optimizer.create(TXS[tx_name](), head)
    both, rest = ptc.tree_partition(model, ALL)
    grads = jax.tree.map(jnp.ones_like, both)
    match = (
        r"Optimizer.update\(\): the params have leaves that differ from those the optimizer "
        r"state was made for \(did the trainable set change\?\)\. Present now but not in the "
        r"state: \.body\.w, \.body\.b, \.body\.scale\. .*`opt = opt\.reinit\(params\)"
    )
    with pytest.raises(ValueError, match=match):
        opt.update(grads, both)
    with pytest.raises(ValueError, match=match):  # under jit: raised while tracing
        _step(both, rest, opt)
    # Fewer leaves: the ones that went are named too.
    head_w, _ = ptc.tree_partition(model, "head", ptc.PathContains("w"))
    with pytest.raises(ValueError, match=r"In the state but absent now: \.head\.b, \.head\.scale"):
        opt.update(jax.tree.map(jnp.ones_like, head_w), head_w)
    # The params match but the grads do not.
    with pytest.raises(ValueError, match=r"the grads have leaves .* Present now .*\.body\.w"):
        opt.update(grads, head)


@pytest.mark.parametrize("tx_name", list(TXS))
def test_reinit_keeps_the_state_of_surviving_leaves(tx_name):
    model = _net()
    head, _ = ptc.tree_partition(model, HEAD)
    opt = ptc.Optimizer.create(TXS[tx_name](), head)
    model, opt = _train(model, HEAD, opt, 3)

    both, _ = ptc.tree_partition(model, ALL)
    opt2 = opt.reinit(both)
    assert int(opt2.step) == 3
    fresh = opt.tx.init(both)
    old = dict(jax.tree_util.tree_flatten_with_path(opt.opt_state)[0])
    kept = fresh_count = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt2.opt_state)[0]:
        where = jax.tree_util.keystr(path)
        if ".body." in where:  # new to the state: as tx.init made it
            fresh_count += 1
            np.testing.assert_array_equal(
                leaf, dict(jax.tree_util.tree_flatten_with_path(fresh)[0])[path]
            )
        else:  # the head's moments, traces and every count: the old values
            kept += 1
            assert leaf is old[path], where
    assert fresh_count > 0 and kept > 0
    # Training goes on with the bigger set.
    model2, opt3 = _train(model, ALL, opt2, 2)
    assert int(opt3.step) == 5
    assert not np.allclose(model2.body.w, model.body.w)


@pytest.mark.parametrize("tx_name", list(TXS))
def test_leaves_trained_all_along_follow_the_same_trajectory(tx_name):
    # Adam and SGD act leaf by leaf (with one shared count), so one step after the switch
    # moves the head exactly as a step of the optimizer that never changed its trainable
    # set (both steps start from the same model, so the head's gradients are the same).
    model = _net()
    head, _ = ptc.tree_partition(model, HEAD)
    opt = ptc.Optimizer.create(TXS[tx_name](), head)
    model, opt = _train(model, HEAD, opt, 3)

    both, rest_both = ptc.tree_partition(model, ALL)
    head, rest_head = ptc.tree_partition(model, HEAD)
    after_switch, _ = _step(both, rest_both, opt.reinit(both))
    uninterrupted, _ = _step(head, rest_head, opt)
    for a, b in zip(jax.tree.leaves(after_switch.head), jax.tree.leaves(uninterrupted.head)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_reinit_back_to_fewer_leaves_and_shape_changes():
    params = {"a": jnp.ones(2), "b": jnp.ones(3), "c": jnp.ones(())}
    opt = ptc.Optimizer.create(optax.adam(0.1), params)
    _, opt = opt.update(jax.tree.map(jnp.ones_like, params), params)
    mu = opt.opt_state[0].mu
    # "b" frozen, "c" becomes a vector (same path, another shape), "a" as before.
    new = {"a": jnp.ones(2), "b": None, "c": jnp.ones(4)}
    opt2 = opt.reinit(new)
    mu2 = opt2.opt_state[0].mu
    assert mu2["a"] is mu["a"] and mu2["b"] is None
    assert mu2["c"].shape == (4,) and mu2["c"].tolist() == [0.0] * 4
    assert opt2.opt_state[0].count is opt.opt_state[0].count
    new_params, opt3 = opt2.update(jax.tree.map(jnp.ones_like, new), new)
    assert new_params["b"] is None and int(opt3.step) == 2
    # A dtype change at the same path starts afresh too.
    opt4 = opt.reinit({**params, "a": jnp.ones(2, jnp.bfloat16)})
    assert opt4.opt_state[0].mu["a"].dtype == jnp.bfloat16
    assert opt4.opt_state[0].mu["b"] is mu["b"]


def test_reinit_under_jit_and_without_a_structure_check():
    params = {"a": jnp.ones(2)}
    opt = ptc.Optimizer.create(optax.adam(0.1), params)
    bigger = {"a": jnp.ones(2), "b": jnp.ones(2)}
    opt2 = jax.jit(lambda o, p: o.reinit(p))(opt, bigger)
    _, opt3 = opt2.update(bigger, bigger)
    assert int(opt3.step) == 1
    # An Optimizer built by hand has no recorded structure and is not checked.
    manual = ptc.Optimizer(tx=opt.tx, opt_state=opt.opt_state, step=opt.step)
    assert manual.params_structure is None
    out, _ = manual.update(params, params)
    assert out["a"].shape == (2,)


def test_the_structure_is_static_and_shared_so_jit_does_not_retrace():
    params = {"a": jnp.ones(2), "b": None}
    opt = ptc.Optimizer.create(optax.adam(0.1), params)
    traces = []

    @jax.jit
    def step(p, o):
        traces.append(1)
        return o.update(jax.tree.map(jnp.ones_like, p), p)

    for _ in range(3):
        params, opt = step(params, opt)
    assert len(traces) == 1
    # An ==-equal structure from another, equal tree: still no retrace.
    other = ptc.Optimizer.create(opt.tx, {"a": jnp.zeros(2), "b": None})
    assert other.params_structure == opt.params_structure
    assert other.params_structure is not opt.params_structure
    step(params, other)
    assert len(traces) == 1
    # A different structure is a different static value: a retrace (then the error).
    with pytest.raises(ValueError, match="Present now but not in the state: \\['b'\\]"):
        step({"a": jnp.ones(2), "b": jnp.ones(2)}, opt)
    assert len(traces) == 2


# -- a leaf's shape or dtype changed at the same path ------------------------------------------


def _shape_error(arg: str, which: str, changes: str) -> str:
    return (
        rf"Optimizer.update\(\): {which} of the {arg} differ in shape or dtype from the params "
        rf"the optimizer state was made for \(did surgery replace a layer\?\): {changes}\. "
        r".*`opt = opt\.reinit\(params\)`"
    )


@pytest.mark.parametrize("tx_name", list(TXS))
def test_update_after_surgery_changed_a_shape_names_the_path(tx_name):
    """A new classifier head of another width: Adam's old moments would broadcast into it
    (4x2 moments against a 4x1 head) and hand back params of the old shape."""
    model = _net()
    params, rest = ptc.tree_partition(model, ALL)
    opt = ptc.Optimizer.create(TXS[tx_name](), params)
    params, opt = _step(params, rest, opt)
    narrow = ptc.tree_merge(rest, params).at.head.set(
        Block(jnp.ones((4, 1)), jnp.zeros(1), jnp.ones(()))
    )
    new_params, new_rest = ptc.tree_partition(narrow, ALL)
    match = _shape_error(
        "params",
        "2 leaves",
        r"\.head\.w is f32\[4,1\] but was f32\[4,2\], "
        r"\.head\.b is f32\[1\] but was f32\[2\]",
    )
    with pytest.raises(ValueError, match=match):
        opt.update(jax.tree.map(jnp.ones_like, new_params), new_params)
    with pytest.raises(ValueError, match=match):  # under jit: raised while tracing
        _step(new_params, new_rest, opt)
    # The grads are checked too (params as before, grads of the new shape).
    with pytest.raises(
        ValueError,
        match=_shape_error("grads", "2 leaves", r"\.head\.w is f32\[4,1\] but was f32\[4,2\], .*"),
    ):
        opt.update(jax.tree.map(jnp.ones_like, new_params), params)
    # reinit: the head starts afresh, the body keeps its state, and steps work again.
    opt2 = opt.reinit(new_params)
    out, opt3 = _step(new_params, new_rest, opt2)
    assert out.head.w.shape == (4, 1) and int(opt3.step) == 2
    assert jax.tree.map(jnp.shape, out) == jax.tree.map(jnp.shape, new_params)


def test_update_after_a_dtype_change_names_the_path():
    params = {"a": jnp.ones(3), "b": jnp.ones((2, 2)), "n": 1.0}
    opt = ptc.Optimizer.create(optax.adam(0.1), params)
    cast = {**params, "b": params["b"].astype(jnp.bfloat16)}
    match = _shape_error("params", "a leaf", r"\['b'\] is bf16\[2,2\] but was f32\[2,2\]")
    with pytest.raises(ValueError, match=match):
        opt.update(cast, cast)
    # A Python number that became an array (and the other way) is a change too.
    arr = {**params, "n": jnp.ones(())}
    with pytest.raises(ValueError, match=r"\['n'\] is f32\[\] but was not an array"):
        opt.update(arr, arr)
    many = {f"k{i:02d}": jnp.ones(2) for i in range(10)}
    opt = ptc.Optimizer.create(optax.sgd(0.1), many)
    wide = jax.tree.map(lambda x: jnp.ones(3), many)
    with pytest.raises(
        ValueError,
        match=r"10 leaves of the params .*\['k07'\] is f32\[3\] but was f32\[2\], \.\.\. \(2 more\)",
    ):
        opt.update(wide, wide)


def test_structures_with_other_shapes_are_other_static_values():
    a = ptc.Optimizer.create(optax.sgd(0.1), {"w": jnp.ones(2)})
    b = ptc.Optimizer.create(optax.sgd(0.1), {"w": jnp.ones(3)})
    c = ptc.Optimizer.create(optax.sgd(0.1), {"w": jnp.zeros(2)})
    assert a.params_structure != b.params_structure
    assert a.params_structure == c.params_structure
    assert hash(a.params_structure) == hash(c.params_structure)
    # vmapped construction records the per-member shapes, which vmapped updates see.
    stacked = {"w": jnp.ones((3, 2))}
    opts = jax.vmap(lambda p: ptc.Optimizer.create(optax.adam(0.1), p))(stacked)
    new, opts = jax.vmap(lambda o, p: o.update(p, p))(opts, stacked)
    assert new["w"].shape == (3, 2) and opts.step.tolist() == [1, 1, 1]
