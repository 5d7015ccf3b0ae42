"""Filters, masks, partition, merge and labels, on treeclasses and on any pytree."""

from __future__ import annotations

import typing
from collections import namedtuple

import equinox as eqx
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, State, field, treeclass

from .models import MLP, Linear
from .versions import JAX_BUILDS_TREEDEFS


class Frozen(Parameter):
    pass


@treeclass
class Net:
    layers: list
    mean: jax.Array = field(kind=BatchStat, default=0.0)
    count: float = 0.0

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def _net(n: int = 2) -> Net:
    keys = jax.random.split(jax.random.key(0), n)
    return Net(
        [Linear(jax.random.normal(k, (2, 2)), jnp.zeros(2), features=2) for k in keys],
        jnp.zeros(()),
        0.0,
    )


def _leaves_none(t):
    return jax.tree_util.tree_leaves(t, is_leaf=lambda x: x is None)


# -- the filter forms ------------------------------------------------------------------------


def test_kind_filter_matches_subkinds():
    @treeclass
    class M:
        a: float = field(kind=Frozen, default=1.0)
        b: float = field(kind=Parameter, default=2.0)
        c: float = field(kind=BatchStat, default=3.0)

    assert ptc.tree_mask(M(), Parameter) == M(True, True, False)  # type: ignore[arg-type]
    assert ptc.tree_mask(M(), Frozen) == M(True, False, False)  # type: ignore[arg-type]
    assert ptc.tree_mask(M(), State) == M(False, False, True)  # type: ignore[arg-type]


def test_type_filter_and_callable_filter():
    tree = {"a": jnp.ones(2), "b": 1.0, "c": np.ones(2), "d": "s"}
    assert ptc.tree_mask(tree, jax.Array) == {"a": True, "b": False, "c": False, "d": False}
    assert ptc.tree_mask(tree, float) == {"a": False, "b": True, "c": False, "d": False}
    assert ptc.tree_mask(tree, eqx.is_array) == {"a": True, "b": False, "c": True, "d": False}
    assert ptc.tree_mask(tree, eqx.is_inexact_array)["c"] is True


def test_name_filter():
    net = _net()
    mask = ptc.tree_mask(net, "w")
    assert [layer.w for layer in mask.layers] == [True, True]
    assert [layer.b for layer in mask.layers] == [False, False]
    assert ptc.tree_mask({"w": 1, "x": {"w": 2, "v": 3}}, "w") == {
        "w": True,
        "x": {"w": True, "v": False},
    }
    assert ptc.tree_mask(net, ptc.PathContains("layers")).mean is False


def test_mask_filter_and_prefix_mask():
    tree = {"a": 1.0, "b": [2.0, 3.0]}
    assert ptc.tree_filter(tree, {"a": True, "b": [False, True]}) == {"a": 1.0, "b": [None, 3.0]}
    assert ptc.tree_filter(tree, {"a": False, "b": True}) == {"a": None, "b": [2.0, 3.0]}
    assert ptc.tree_filter(tree, True) == tree
    with pytest.raises(ValueError, match="mask filter does not match the tree"):
        ptc.tree_filter(tree, {"a": True, "c": False})
    with pytest.raises(
        TypeError, match=r"must be a mask, a pytree of bools, but its leaf at \['b'\]\[1\] is 1"
    ):
        ptc.tree_filter(tree, {"a": True, "b": [True, 1]})


def test_combinators_and_and_semantics():
    net = _net()
    both = ptc.tree_mask(net, Parameter, "w")
    assert [layer.w for layer in both.layers] == [True, True]
    assert [layer.b for layer in both.layers] == [False, False]
    anym = ptc.tree_mask(net, ptc.Any("b", BatchStat))
    assert anym.mean is True and anym.layers[0].b is True and anym.layers[0].w is False
    notm = ptc.tree_mask(net, ptc.Not(Parameter))
    assert notm.mean is True and notm.count is True and notm.layers[0].w is False
    assert ptc.tree_mask(net, ptc.All(Parameter, ptc.Not("w"))) == ptc.tree_mask(
        net, Parameter, ptc.Not("w")
    )
    assert all(_leaves_none(ptc.tree_mask(net)))  # no filter selects every leaf


def test_filter_reprs_and_hashability():
    f = ptc.Any(Parameter, ptc.Not("w"), ptc.All(jax.Array, eqx.is_array))
    r = repr(f)
    assert r.startswith("Any(Parameter, Not(PathContains(name='w')), All(OfType(")
    assert hash(f) == hash(ptc.Any(Parameter, ptc.Not("w"), ptc.All(jax.Array, eqx.is_array)))


def test_unknown_filter_type_lists_the_forms():
    with pytest.raises(
        TypeError, match=r"3.5 \(of type float\) is not a filter. A filter is a Kind"
    ):
        ptc.tree_mask({"a": 1}, 3.5)
    with pytest.raises(TypeError, match="None is not a filter"):
        ptc.tree_mask({"a": 1}, ptc.Not(None))
    with pytest.raises(TypeError, match="None is not a filter"):
        ptc.tree_mask({"a": 1}, None)
    assert ptc.tree_mask(None, None) is None  # the mask of a leafless tree


def test_predicate_returning_non_bool_is_a_clear_error():
    with pytest.raises(
        TypeError,
        match=r"returned \w+ for the leaf at \['a'\]; a filter function must return a Python bool",
    ):
        ptc.tree_mask({"a": jnp.ones(3)}, lambda x: x > 0)


# -- partition and merge -----------------------------------------------------------------------


def test_partition_merge_round_trip_identity():
    net = _net()
    params, rest = ptc.tree_partition(net, Parameter)
    assert rest.layers[0].w is None and params.mean is None
    merged = ptc.tree_merge(params, rest)
    assert merged == net
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(net)):
        assert a is b  # never copied


def test_interchangeable_with_equinox_both_ways():
    net = _net()
    combined = eqx.combine(*ptc.tree_partition(net, Parameter))
    assert combined == net
    merged = ptc.tree_merge(*eqx.partition(net, eqx.is_array))
    assert merged == net
    mlp = eqx.nn.MLP(2, 2, 4, 2, key=jax.random.key(1))
    p, s = ptc.tree_partition(mlp, eqx.is_inexact_array)
    ep, es = eqx.partition(mlp, eqx.is_inexact_array)
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(ep)
    assert jax.tree_util.tree_structure(s) == jax.tree_util.tree_structure(es)
    assert eqx.tree_equal(ptc.tree_merge(ep, es), mlp)


def test_flax_struct_and_namedtuples():
    @flax.struct.dataclass
    class S:
        a: jax.Array
        n: int = flax.struct.field(pytree_node=False, default=1)

    Pair = namedtuple("Pair", ["x", "y"])
    tree = {"s": S(jnp.ones(2)), "p": Pair(1.0, jnp.zeros(1)), "none": None, "empty": ()}
    sel, rest = ptc.tree_partition(tree, jax.Array)
    assert sel["p"].x is None and rest["s"].a is None and sel["none"] is None
    assert ptc.tree_merge(sel, rest)["p"].x == 1.0
    assert ptc.tree_merge(sel, rest)["s"].n == 1


def test_merge_later_non_none_wins_and_none_stands_for_subtrees():
    a = {"x": 1, "y": [2, 3]}
    assert ptc.tree_merge(a, {"x": 10, "y": None}) == {"x": 10, "y": [2, 3]}
    assert ptc.tree_merge(a, {"x": None, "y": [None, 30]}) == {"x": 1, "y": [2, 30]}
    assert ptc.tree_merge(None, a) == a
    assert ptc.tree_merge(a) == a
    assert ptc.tree_merge({"x": None, "y": None}, {"x": None, "y": None}) == {"x": None, "y": None}


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (
            {"x": 1, "y": 2},
            {"x": 1, "z": 2},
            r"differ at the root: tree 0 has dict with children \['x'\], \['y'\]; tree 1 has dict with children \['x'\], \['z'\]",
        ),
        ({"x": [1, 2]}, {"x": [1, 2, 3]}, r"differ at \['x'\]"),
        (
            {"x": 1},
            {"x": {"y": 2}},
            r"differ at \['x'\]: tree 1 has dict with children \['y'\]; tree 0 has leaf 1",
        ),
    ],
)
def test_merge_mismatch_names_the_key_path(a, b, match):
    with pytest.raises(ValueError, match=match):
        ptc.tree_merge(a, b)


def test_merge_mismatch_inside_treeclass_names_the_path():
    net = _net(2)
    other = _net(3)
    with pytest.raises(ValueError, match=r"differ at \.layers"):
        ptc.tree_merge(net, other)


def test_tree_filter_inverse_is_complement():
    net = _net()
    a = ptc.tree_filter(net, Parameter)
    b = ptc.tree_filter(net, Parameter, inverse=True)
    assert ptc.tree_merge(a, b) == net
    for x, y in zip(_leaves_none(a), _leaves_none(b)):
        assert (x is None) != (y is None)


def test_structural_filters_are_cached():
    from pytreeclass._partition import _MASKS, _SELECTIONS

    net = _net()
    _SELECTIONS.clear()
    _MASKS.clear()
    ptc.tree_partition(net, Parameter)
    ptc.tree_partition(jax.tree_util.tree_map(lambda x: x * 2, net), Parameter)
    assert len(_SELECTIONS) == 1
    ptc.tree_partition(net, eqx.is_array)  # leaf-value filters are not cached
    assert len(_SELECTIONS) == 1
    ptc.tree_mask(net, Parameter)
    ptc.tree_mask(jax.tree_util.tree_map(lambda x: x * 2, net), Parameter)
    assert len(_MASKS) == 1
    ptc.tree_mask(net, eqx.is_array)
    assert len(_MASKS) == 1


def test_cached_masks_and_labels_are_fresh_where_mutable():
    # A cached mask shares only what nobody can mutate; lists and dicts are new each call.
    @treeclass
    class Layer:
        w: jax.Array = field(kind=Parameter)
        n: int = field(static=True, default=1)

    @treeclass
    class Net:
        layers: list
        extra: dict
        pair: tuple

    net = Net([Layer(jnp.ones(2)), Layer(jnp.ones(2))], {"s": jnp.zeros(())}, (Layer(1.0), 2.0))
    for make in (lambda t: ptc.tree_mask(t, Parameter), ptc.tree_labels):
        a, b = make(net), make(net)
        assert a == b and a is not b
        assert a.layers is not b.layers and a.extra is not b.extra
        if JAX_BUILDS_TREEDEFS:  # cached: frozen parts shared
            assert a.layers[0] is b.layers[0] and a.pair is b.pair
        else:  # a tree with a dict is not cached there (tests/versions.py): built anew
            assert a.layers[0] is not b.layers[0] and a.layers[0] == b.layers[0]
        a.layers.append("mutated")
        a.extra["s"] = "mutated"
        c = make(net)
        assert c == b and len(c.layers) == 2 and c.extra["s"] == b.extra["s"]
    only_frozen = (Layer(jnp.ones(2)), Layer(3.0))
    assert ptc.tree_mask(only_frozen, Parameter) is ptc.tree_mask(only_frozen, Parameter)
    assert ptc.tree_mask(only_frozen, Parameter) == (Layer(True), Layer(True))  # type: ignore[arg-type]


# -- labels --------------------------------------------------------------------------------


def test_labels_default_and_mapping():
    net = _net()
    labels = ptc.tree_labels(net)
    assert (
        labels.layers[0].w == "Parameter" and labels.mean == "BatchStat" and labels.count == "none"
    )

    @treeclass
    class M:
        a: float = field(kind=Frozen, default=1.0)
        b: float = field(kind=BatchStat, default=1.0)
        c: float = 1.0

    mapped = ptc.tree_labels(M(), {Parameter: "train", State: "keep", None: "other"})
    assert mapped == M("train", "keep", "other")  # type: ignore[arg-type]
    assert ptc.tree_labels(M(), {Frozen: "frozen", Parameter: "train"}).a == "frozen"
    assert ptc.tree_labels(M(), {Parameter: "train"}).b == "BatchStat"


# -- optax and gradients -----------------------------------------------------------------------


def _data():
    x = jax.random.normal(jax.random.key(2), (16, 2))
    return x, jnp.sin(x)


def _loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def test_gradient_pattern_under_jit():
    net = _net()
    x, y = _data()

    @jax.jit
    def step(net):
        params, rest = ptc.tree_partition(net, Parameter)

        def loss(params):
            return _loss(ptc.tree_merge(params, rest), x, y)

        value, grads = jax.value_and_grad(loss)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
        return value, ptc.tree_merge(params, rest), grads

    value, new, grads = step(net)
    assert grads.mean is None and grads.layers[0].w.shape == (2, 2)
    assert new.mean is net.mean or float(new.mean) == float(net.mean)
    v2, _, _ = step(new)
    assert float(v2) < float(value)


def test_optax_masked_with_function_form_trains_callable_model():
    net = _net()
    x, y = _data()
    # Freeze the first layer: a mask that selects parameters outside layers[0].
    first_w, first_b = net.layers[0].w, net.layers[0].b
    tx = optax.masked(optax.sgd(0.1), lambda p: ptc.tree_mask(p, Parameter))
    params = net
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(_loss)(params, x, y)
        grads = eqx.tree_at(
            lambda g: (g.layers[0].w, g.layers[0].b), grads, replace_fn=jnp.zeros_like
        )
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    losses = []
    for _ in range(20):
        losses.append(float(_loss(params, x, y)))
        params, state = step(params, state)
    assert losses[-1] < losses[0]
    assert params.layers[0].w is not first_w
    np.testing.assert_allclose(params.layers[0].w, first_w)
    np.testing.assert_allclose(params.layers[0].b, first_b)
    assert float(params.mean) == 0.0  # BatchStat is masked out: sgd never touched it


def test_optax_multi_transform_with_tree_labels():
    net = _net()
    x, y = _data()
    tx = optax.multi_transform(
        {
            "Parameter": optax.adam(0.05),
            "BatchStat": optax.set_to_zero(),
            "none": optax.set_to_zero(),
        },
        ptc.tree_labels,
    )
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), net)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        grads = eqx.tree_at(lambda g: g.mean, grads, jnp.ones(()))  # would move mean if not masked
        updates, state = tx.update(grads, state, params)
        return loss, optax.apply_updates(params, updates), state

    first, params, state = step(params, state)
    for _ in range(30):
        loss, params, state = step(params, state)
    assert float(loss) < float(first)
    assert float(params.mean) == 0.0


def test_no_array_is_copied():
    net = _net(8)
    leaves = jax.tree_util.tree_leaves(net)
    a, b = ptc.tree_partition(net, Parameter)
    ids = {id(x) for x in leaves}
    assert all(id(x) in ids for x in jax.tree_util.tree_leaves((a, b)))
    assert all(id(x) in ids for x in jax.tree_util.tree_leaves(ptc.tree_filter(net, "b")))


# -- unions and generic aliases as type filters (issue 17, point 7) -----------------------------


# The old typing spellings, as users write them (named here so the linter lets them be).
_Union, _Optional, _List = typing.Union, typing.Optional, vars(typing)["List"]


@pytest.mark.parametrize(
    "union",
    [int | float, _Union[int, float], _Optional[_Union[int, float]]],
    ids=["pipe", "Union", "Optional"],
)
def test_a_union_of_types_selects_what_isinstance_accepts(union: object) -> None:
    tree = [1, 2.0, "s", jnp.ones(2), True]
    assert ptc.tree_mask(tree, union) == [True, True, False, False, True]
    assert ptc.tree_filter(tree, union) == [1, 2.0, None, None, True]
    assert ptc.at(tree)[union].apply(lambda x: x * 2) == [2, 4.0, "s", tree[3], 2]
    assert "int" in repr(ptc.Any(union)) and "float" in repr(ptc.Any(union))


def test_a_union_of_kinds_selects_either_kind() -> None:
    m = MLP([Linear(jnp.ones((2, 2)), jnp.zeros(2))])
    by_union = ptc.tree_mask(m, Parameter | ptc.BatchStat)
    assert by_union == ptc.tree_mask(m, ptc.Any(Parameter, ptc.BatchStat))
    assert jax.tree_util.tree_leaves(by_union) == [True, True, True]
    mixed = ptc.tree_mask({"a": 1, "b": m}, Parameter | int)
    assert jax.tree_util.tree_leaves(mixed) == [True, True, True, False]


@pytest.mark.parametrize(
    "alias",
    [list[int], _List[int], dict[str, int], tuple[int, ...], list[int] | int],
    ids=["list[int]", "List[int]", "dict", "tuple", "union-with-alias"],
)
def test_a_parametrized_generic_is_refused_with_the_accepted_forms(alias: object) -> None:
    with pytest.raises(
        TypeError, match=r"is a parametrized generic; .*isinstance.*the bare type"
    ) as e:
        ptc.tree_mask([1, jnp.ones(3)], alias)
    assert "a Kind subclass" in str(e.value)  # the list of accepted forms
    with pytest.raises(TypeError, match="parametrized generic"):
        ptc.at([jnp.ones(3)])[alias].get()
