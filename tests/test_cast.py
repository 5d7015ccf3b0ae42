"""tree_cast, and the mixed-precision recipe checked on its jaxpr."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, Rng, field, treeclass

from .strategies import filters, trees


@treeclass
class Dense:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w + self.b


@treeclass
class Net:
    hidden: Dense
    out: Dense
    mean: jax.Array = field(kind=BatchStat)
    count: jax.Array = field(kind=BatchStat)
    key: jax.Array = field(kind=Rng)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x - self.mean.astype(x.dtype)
        return self.out(jax.nn.relu(self.hidden(x)))


def make_net() -> Net:
    k1, k2 = jax.random.split(jax.random.key(0))
    return Net(
        Dense(jax.random.normal(k1, (4, 8)), jnp.zeros(8)),
        Dense(jax.random.normal(k2, (8, 2)), jnp.zeros(2)),
        jnp.zeros(4),
        jnp.zeros((), jnp.int32),
        jax.random.key(1),
    )


def dtypes(tree: Any) -> list[str]:
    return [str(x.dtype) for x in jax.tree.leaves(tree)]


def test_only_selected_floating_leaves_change() -> None:
    net = make_net()
    half = ptc.tree_cast(net, jnp.bfloat16, Parameter)
    assert dtypes(half) == ["bfloat16"] * 4 + ["float32", "int32", "key<fry>"]
    assert half.mean is net.mean and half.count is net.count and half.key is net.key
    every = ptc.tree_cast(net, jnp.float16)
    assert dtypes(every) == ["float16"] * 5 + ["int32", "key<fry>"]
    # several filters combine with AND, as in tree_mask
    only_w = ptc.tree_cast(net, jnp.bfloat16, Parameter, "w")
    assert dtypes(only_w)[:4] == ["bfloat16", "float32", "bfloat16", "float32"]


def test_leaves_that_never_change() -> None:
    tree = {
        "int": jnp.arange(3),
        "bool": jnp.ones(2, bool),
        "complex": jnp.ones(2, jnp.complex64),
        "key": jax.random.key(0),
        "raw_key": jax.random.PRNGKey(0),  # uint32: an integer array
        "py": 1.5,
        "str": "text",
        "none": None,
    }
    out = ptc.tree_cast(tree, jnp.bfloat16)
    assert all(out[k] is tree[k] for k in tree)


def test_same_dtype_is_no_copy_numpy_stays_numpy_and_abstract_trees_work() -> None:
    w = jnp.ones(3, jnp.bfloat16)
    assert ptc.tree_cast({"w": w}, jnp.bfloat16)["w"] is w
    host = ptc.tree_cast({"w": np.ones(3, np.float32), "s": np.float32(2)}, jnp.bfloat16)
    assert type(host["w"]) is np.ndarray and host["w"].dtype == jnp.bfloat16
    assert isinstance(host["s"], np.generic) and host["s"].dtype == jnp.bfloat16
    abstract = jax.eval_shape(make_net)
    cast = ptc.tree_cast(abstract, jnp.bfloat16, Parameter)
    assert isinstance(cast.hidden.w, jax.ShapeDtypeStruct)
    assert dtypes(cast) == dtypes(ptc.tree_cast(make_net(), jnp.bfloat16, Parameter))


def test_under_jit_and_vmap() -> None:
    net = make_net()
    out = jax.jit(lambda n: ptc.tree_cast(n, jnp.bfloat16, Parameter))(net)
    assert dtypes(out) == dtypes(ptc.tree_cast(net, jnp.bfloat16, Parameter))
    batched = jax.vmap(lambda w: ptc.tree_cast({"w": w}, jnp.float16))(jnp.ones((2, 3)))
    assert batched["w"].dtype == jnp.float16 and batched["w"].shape == (2, 3)


def test_a_dtype_that_is_not_floating_is_an_error() -> None:
    for bad in (jnp.int32, "int8", bool, jnp.complex64, "nonsense"):
        with pytest.raises(TypeError, match=r"is not a floating dtype; tree_cast only casts"):
            ptc.tree_cast(make_net(), bad)


@settings(max_examples=60, deadline=None)
@given(trees, filters)
def test_law_structure_kept_and_exactly_the_selected_floating_leaves_cast(
    tree: Any, filt: Any
) -> None:
    out = ptc.tree_cast(tree, jnp.float16, filt)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    mask = jax.tree.leaves(ptc.tree_mask(tree, filt))
    for x, y, m in zip(jax.tree.leaves(tree), jax.tree.leaves(out), mask):
        floating = hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
        if m and floating:
            assert y.dtype == jnp.float16 and type(y) is type(x)
            np.testing.assert_array_equal(np.asarray(y), np.asarray(x).astype(np.float16))
        else:
            assert y is x


# -- the mixed-precision recipe (docs/recipes.md), checked on the jaxpr ------------------------


def loss_fn(params: Any, rest: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    model = ptc.tree_merge(params, rest)
    half = ptc.tree_cast(model, jnp.bfloat16, Parameter)
    pred = half(x.astype(jnp.bfloat16))
    return jnp.mean((pred.astype(jnp.float32) - y) ** 2)


def train_step(model: Net, opt: ptc.Optimizer, x: jax.Array, y: jax.Array) -> Any:
    params, rest = ptc.tree_partition(model, Parameter)
    grads = jax.grad(loss_fn)(params, rest, x, y)
    params, opt = opt.update(grads, params)
    model = ptc.tree_merge(params, rest)
    model = model.at.mean.set(0.9 * model.mean + 0.1 * x.mean(0))
    return model, opt, grads


def equations(jaxpr: Any) -> list[Any]:
    """Every equation of a closed jaxpr, those of nested jaxprs (pjit, custom_jvp) included."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out.extend(equations(inner))
    return out


def test_mixed_precision_runs_the_forward_in_bf16_and_keeps_float32_state() -> None:
    model = make_net()
    x = jax.random.normal(jax.random.key(2), (16, 4))
    y = jax.random.normal(jax.random.key(3), (16, 2))
    opt = ptc.Optimizer.create(optax.adam(1e-2), ptc.tree_partition(model, Parameter)[0])
    closed = jax.make_jaxpr(jax.jit(train_step))(model, opt, x, y)
    dots = [e for e in equations(closed.jaxpr) if e.primitive.name == "dot_general"]
    # forward (2 layers) and backward (2 per layer; the first layer's input needs no grad)
    assert len(dots) >= 5
    assert all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
    new_model, new_opt, grads = jax.jit(train_step)(model, opt, x, y)
    assert set(dtypes(grads)) == {"float32"}
    assert set(dtypes(new_opt.opt_state[0].mu)) == {"float32"}
    assert dtypes(new_model) == dtypes(model)  # master weights and BatchStat stay float32
    # without the cast the same step has no bfloat16 in it at all
    params, rest = ptc.tree_partition(model, Parameter)
    plain = jax.make_jaxpr(jax.grad(lambda p: jnp.mean(ptc.tree_merge(p, rest)(x) ** 2)))(params)
    assert "bf16" not in str(plain)
