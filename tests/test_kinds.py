"""Kinds: the hierarchy, the outermost-field rule, foreign markers, tree_kinds."""

from __future__ import annotations

import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import pytreeclass as ptc
from pytreeclass import BatchStat, Cache, Kind, OptState, Parameter, Rng, State, field, treeclass

from .versions import NNX_VARIABLES_ARE_NODES, needs_nnx_nodes


class Frozen(Parameter):
    """A user kind: parameters we do not train."""


@treeclass
class Linear:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)
    n: jax.Array = field(default=0)


@treeclass
class Model:
    body: Linear
    frozen: Linear = field(kind=Frozen)
    extra: dict = field(default_factory=dict)
    stats: list = field(kind=BatchStat, default_factory=list)


def _lin():
    return Linear(jnp.ones(2), jnp.zeros(2))


def test_hierarchy():
    assert issubclass(Parameter, Kind) and issubclass(State, Kind)
    for k in (BatchStat, Rng, OptState, Cache):
        assert issubclass(k, State)
    assert issubclass(Frozen, Parameter)


def test_leaf_kinds_follow_fields():
    lin = _lin()
    assert ptc.tree_kinds(lin) == Linear(Parameter, Parameter, None)  # type: ignore[arg-type]


def test_outermost_kinded_field_wins():
    m = Model(_lin(), _lin(), {"a": _lin()}, [jnp.ones(1), {"x": jnp.ones(1)}])
    kinds = ptc.tree_kinds(m)
    assert kinds.body == Linear(Parameter, Parameter, None)  # type: ignore[arg-type]
    # Every leaf under `frozen` is Frozen, whatever the inner fields say.
    assert kinds.frozen == Linear(Frozen, Frozen, Frozen)  # type: ignore[arg-type]
    # An unkinded container: the inner model's own fields count.
    assert kinds.extra["a"] == Linear(Parameter, Parameter, None)  # type: ignore[arg-type]
    assert kinds.stats == [BatchStat, {"x": BatchStat}]


def test_kind_through_equinox_modules_and_containers():
    @treeclass
    class Holder:
        mlp: eqx.nn.MLP = field(kind=Parameter)
        plain: eqx.nn.Linear

    key = jax.random.key(0)
    h = Holder(eqx.nn.MLP(2, 2, 4, 1, key=key), eqx.nn.Linear(2, 2, key=key))
    kinds = jax.tree_util.tree_leaves(ptc.tree_kinds(h.mlp), is_leaf=lambda x: x is None)
    labels = jax.tree_util.tree_leaves(ptc.tree_labels(h))
    n_mlp = len(jax.tree_util.tree_leaves(h.mlp))
    assert labels[:n_mlp] == ["Parameter"] * n_mlp
    assert labels[n_mlp:] == ["none"] * len(jax.tree_util.tree_leaves(h.plain))
    assert kinds == [None] * n_mlp  # on its own, an eqx module has no kinds


def test_optimizer_state_mirroring_parameters_is_optstate():
    @treeclass
    class Opt:
        state: object = field(kind=OptState)

    opt = Opt({"mu": _lin(), "nu": _lin()})
    assert set(jax.tree_util.tree_leaves(ptc.tree_kinds(opt))) == {OptState}


def test_nnx_variables_as_leaves_are_kinds():
    # Every flax: a Variable's kind is its class, whether the Variable is a pytree node
    # (flax >= 0.11: the label sits on its value) or a leaf itself (flax 0.10, Python 3.10).
    tree = {"p": nnx.Param(jnp.ones(2)), "s": nnx.BatchStat(jnp.zeros(2))}
    assert jax.tree_util.tree_leaves(ptc.tree_labels(tree)) == ["Parameter", "BatchStat"]
    params, rest = ptc.tree_partition(tree, Parameter)
    assert jax.tree_util.tree_leaves(params) == jax.tree_util.tree_leaves(tree["p"])
    assert jax.tree_util.tree_leaves(rest) == jax.tree_util.tree_leaves(tree["s"])
    if not NNX_VARIABLES_ARE_NODES:  # flax 0.10: a Module is one opaque leaf of no kind
        assert ptc.tree_labels(nnx.BatchNorm(3, rngs=nnx.Rngs(0))) == "none"


@needs_nnx_nodes
def test_nnx_markers_are_kinds():
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    labels = ptc.tree_labels(bn)
    assert jax.tree_util.tree_leaves(labels.scale) == ["Parameter"]
    assert jax.tree_util.tree_leaves(labels.mean) == ["BatchStat"]
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    assert set(jax.tree_util.tree_leaves(ptc.tree_kinds(drop))) == {Rng}

    @treeclass
    class Wrap:
        lin: nnx.Linear
        extra: jax.Array = field(kind=State, default=0.0)

    w = Wrap(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    params, rest = ptc.tree_partition(w, Parameter)
    assert (
        jax.tree_util.tree_leaves(params.lin.kernel)[0]
        is jax.tree_util.tree_leaves(w.lin.kernel)[0]
    )
    assert rest.extra == 0.0 and params.extra is None


def test_flax_not_imported_by_pytreeclass():
    code = "import sys, pytreeclass; assert 'flax' not in sys.modules, 'flax imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_tree_kinds_on_plain_pytrees():
    assert ptc.tree_kinds({"a": 1, "b": [2, None]}) == {"a": None, "b": [None, None]}
    assert ptc.tree_kinds(None) is None
    assert ptc.tree_kinds(3) is None


def test_kinds_are_cached_per_structure():
    from pytreeclass._leaf_facts import _KINDS_CACHE, leaf_kinds

    m = Model(_lin(), _lin())
    first = leaf_kinds(m)
    assert leaf_kinds(jax.tree_util.tree_map(lambda x: x + 1, m)) is first
    assert len(_KINDS_CACHE) >= 1


def test_kinds_inside_jit():
    m = Model(_lin(), _lin())

    @jax.jit
    def f(m):
        return ptc.tree_filter(m, Parameter)

    out = f(m)
    assert out.frozen.w is not None and out.body.n is None


def test_bad_kind_argument():
    with pytest.raises(TypeError, match=r"not a kind. Pass a subclass of ptc.Kind"):
        field(kind=Linear)
