"""Lenses: paths, selections, errors, laws (hypothesis), interop and transformations."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import equinox as eqx
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeclass as ptc
from pytreeclass import BatchStat, OfType, Parameter, field, treeclass

from .models import MLP, Linear, make_mlp
from .strategies import Node, Pair, Stats, snapshot, trees
from .versions import JAX_FLATTEN_RECURSES, needs_nnx_nodes

LAWS = settings(max_examples=60, deadline=None)


class Frozen(Parameter):
    pass


# -- single paths ------------------------------------------------------------------------------


def test_set_get_apply_on_a_model(mlp: MLP) -> None:
    m = mlp
    m2 = m.at.layers[0].w.set(jnp.full((3, 4), 2.0))
    assert float(m2.layers[0].w.sum()) == 24.0
    assert float(m.layers[0].w.sum()) == 12.0  # original unchanged
    assert m.at.layers[-1].b.get() is m.layers[1].b
    m3 = ptc.at(m).layers[0].b.apply(lambda b: b + 1)
    assert np.array_equal(m3.layers[0].b, np.ones(4))
    assert type(m2) is MLP and type(m2.layers) is list and type(m2.layers[0]) is Linear


def test_untouched_subtrees_are_shared_and_only_the_path_is_rebuilt(mlp: MLP) -> None:
    m = mlp
    m2 = m.at.layers[0].w.set(jnp.zeros((3, 4)))
    assert m2 is not m and m2.layers is not m.layers and m2.layers[0] is not m.layers[0]
    assert m2.layers[1] is m.layers[1]
    assert m2.mean is m.mean
    assert m2.layers[0].b is m.layers[0].b


def test_set_replaces_a_subtree_and_a_leaf_by_a_subtree(mlp: MLP) -> None:
    m = mlp
    new_layer = Linear(jnp.zeros((3, 4)), jnp.ones(4))
    assert m.at.layers[0].set(new_layer).layers[0] is new_layer
    assert m.at.layers.set([]).layers == []
    assert ptc.at({"a": 1})["a"].set({"b": [2, 3]}) == {"a": {"b": [2, 3]}}


def test_set_with_no_steps_replaces_the_root():
    assert ptc.at([1, 2]).set(5) == 5
    assert ptc.at([1, 2]).get() == [1, 2]
    assert ptc.at([1, 2]).apply(len) == 2


def test_containers_keep_their_types():
    od = collections.OrderedDict([("b", 1), ("a", 2)])
    out = ptc.at(od)["a"].set(3)
    assert type(out) is collections.OrderedDict and list(out) == ["b", "a"] and out["a"] == 3
    dd = collections.defaultdict(list, {"a": 1})
    out = ptc.at(dd)["a"].set(2)
    assert type(out) is collections.defaultdict and out.default_factory is list
    assert "zzz" not in dd  # the lookup never grew the defaultdict
    p = Pair(1, (2, 3))
    assert ptc.at(p).y[-1].set(9) == Pair(1, (2, 9))
    assert type(ptc.at(p)[0].set(5)) is Pair
    assert ptc.at(p)["x"].set(7) == Pair(7, (2, 3))
    assert ptc.at((1, 2, 3))[1].set(0) == (1, 0, 3)
    fd = FrozenDict({"a": 1, "b": {"c": 2}})
    out = ptc.at(fd)["b"]["c"].set(5)
    assert type(out) is FrozenDict and out["b"]["c"] == 5


def test_static_field_through_a_lens_gives_a_new_treedef(mlp: MLP) -> None:
    m = mlp
    m2 = m.at.layers[0].features.set(8)
    assert m2.layers[0].features == 8 and m.layers[0].features == 4
    assert jax.tree_util.tree_structure(m2) != jax.tree_util.tree_structure(m)
    with pytest.raises(TypeError, match="static field 'features' of Linear holds an unhashable"):
        m.at.layers[0].features.set([1, 2])
    with pytest.raises(TypeError, match="static field 'features' of Linear holds an array"):
        m.at.layers[0].features.set(jnp.ones(2))


def test_fields_named_like_terminals_are_reached_with_brackets():
    @treeclass
    class Odd:
        get: int = 1
        set: int = 2
        apply: int = 3

    o = Odd()
    assert o.at["get"].get() == 1
    assert o.at["set"].set(5).set == 5
    assert o.at["apply"].apply(lambda v: v * 10).apply == 30


def test_dunder_and_ipython_names_are_not_steps():
    lens = ptc.at({"a": 1})
    assert type(lens).__name__ == "Lens"
    with pytest.raises(AttributeError):
        _ = lens._repr_html_
    with pytest.raises(AttributeError):
        _ = lens.__wrapped__
    assert ptc.at({"_repr_html_": 1})["_repr_html_"].get() == 1


def test_lens_is_immutable_and_each_step_is_new(mlp: MLP) -> None:
    m = mlp
    base = m.at.layers
    a, b = base[0], base[1]
    assert repr(base) == "Lens(model.layers)"
    assert repr(a) == "Lens(model.layers[0])" and repr(b) == "Lens(model.layers[1])"
    assert repr(ptc.at({"d": 1})["d"][Parameter]) == "Lens(tree['d'][Parameter])"
    with pytest.raises(
        AttributeError, match=r"cannot assign to a lens \(model.layers.w = \.\.\.\)"
    ):
        base.w = 1
    with pytest.raises(TypeError, match="a Lens is not iterable"):
        list(base)


def test_numpy_integer_index_and_str_subclass_key():
    class Name(str):
        pass

    assert ptc.at([1, 2, 3])[np.int64(-1)].set(0) == [1, 2, 0]
    assert ptc.at({"a": 1})[Name("a")].get() == 1


# -- errors ------------------------------------------------------------------------------------


def test_missing_index_names_the_path():
    with pytest.raises(IndexError, match=r"^model\.layers\[7\]: index out of range \(len 2\)$"):
        make_mlp().at.layers[7].get()
    with pytest.raises(IndexError, match=r"model\.layers\[-3\]: index out of range \(len 2\)"):
        make_mlp().at.layers[-3].set(1)


def test_missing_field_lists_the_fields():
    with pytest.raises(
        AttributeError, match=r"^model\.layerz: no field 'layerz'; fields: layers, mean$"
    ):
        make_mlp().at.layerz.get()
    with pytest.raises(
        KeyError, match=r"model\['layerz'\]: no field 'layerz'; fields: layers, mean"
    ):
        make_mlp().at["layerz"].set(1)
    with pytest.raises(
        IndexError, match=r"model\[0\]: MLP has fields, not indices; fields: layers"
    ):
        make_mlp().at[0].get()


def test_missing_dict_key_lists_the_keys():
    params = {"dense": {"kernel": 1.0, "bias": 0.0}}
    with pytest.raises(
        KeyError, match=r"^tree\['dense'\]\['kernl'\]: no key 'kernl'; keys: 'kernel', 'bias'$"
    ):
        ptc.at(params)["dense"]["kernl"].set(2.0)
    with pytest.raises(
        AttributeError, match=r"tree\.dense: dict has keys, not attributes; write \['dense'\]"
    ):
        ptc.at(params).dense.get()


def test_wrong_step_for_a_sequence():
    with pytest.raises(
        KeyError, match=r"tree\['a'\]: list is indexed by int \(len 2\), not by name"
    ):
        ptc.at([1, 2])["a"].get()
    with pytest.raises(
        AttributeError, match=r"tree\.a: tuple is indexed by int \(len 1\), not by name"
    ):
        ptc.at((1,)).a.get()
    with pytest.raises(AttributeError, match=r"tree\.z: no field 'z'; fields: x, y"):
        ptc.at(Pair(1, 2)).z.get()
    with pytest.raises(IndexError, match=r"tree\[2\]: index out of range \(len 2\)"):
        ptc.at(Pair(1, 2))[2].get()


def test_stepping_into_a_leaf_or_none(mlp: MLP) -> None:
    m = mlp
    with pytest.raises(
        AttributeError,
        match=r"model\.layers\[0\]\.w\.x: cannot step into the leaf f32\[3,4\] at model\.layers\[0\]\.w\. To change array elements use",
    ):
        m.at.layers[0].w.x.get()
    with pytest.raises(
        IndexError,
        match=r"tree\['a'\]\[0\]: the value at tree\['a'\] is None, which has no children",
    ):
        ptc.at({"a": None})["a"][0].get()


def test_missing_child_of_a_generic_node():
    fd = FrozenDict({"a": 1})
    with pytest.raises(
        KeyError, match=r"tree\['x'\]: FrozenDict has no child \['x'\]; children: \['a'\]"
    ):
        ptc.at(fd)["x"].set(1)


def test_missing_step_after_a_selection(mlp: MLP) -> None:
    m = mlp
    with pytest.raises(
        AttributeError,
        match=r"model\.layers\[\.\.\.\]\.bb: no child \.bb under any selected node; children there: \.w, \.b",
    ):
        m.at.layers[...].bb.set(1.0)
    with pytest.raises(
        AttributeError,
        match=r"model\[Parameter\]\.layers\[\.\.\.\]\.w\.q: no child \.q under any selected node; children there: \(none\)",
    ):
        m.at[Parameter].layers[...].w.q.get()
    # A static field is reached after a selection too (one node model for every step).
    m2 = m.at.layers[...].features.set(8)
    assert [layer.features for layer in m2.layers] == [8, 8]
    assert [layer.features for layer in m.layers] == [4, 4]


def test_not_a_filter_in_brackets():
    with pytest.raises(TypeError, match="is not a filter"):
        ptc.at({"a": 1})[3.5]


def test_long_listings_are_cut():
    tree = {f"k{i}": i for i in range(30)}
    with pytest.raises(KeyError, match=r"'k19', \.\.\. \(10 more\)$"):
        ptc.at(tree)["nope"].get()


# -- multi-leaf selections ---------------------------------------------------------------------


def test_filter_selection_get_set_apply(mlp: MLP) -> None:
    m = mlp
    half = m.at[Parameter].apply(lambda p: p * 0.5)
    assert float(half.layers[0].w.sum()) == 6.0 and half.mean is m.mean
    got = m.at[Parameter].get()
    assert got.mean is None and got.layers[0].w is m.layers[0].w
    assert ptc.tree_equal(got, ptc.tree_filter(m, Parameter))
    zeroed = m.at[BatchStat].set(1.0)
    assert zeroed.mean == 1.0 and zeroed.layers[0].w is m.layers[0].w


def test_ellipsis_selects_every_child(mlp: MLP) -> None:
    m = mlp
    m5 = m.at.layers[...].b.set(0.5)
    assert all(layer.b == 0.5 for layer in m5.layers)
    assert m5.layers[0].w is m.layers[0].w and m5.mean is m.mean
    got = m.at.layers[...].b.get()
    assert got[0].w is None and got[1].b is m.layers[1].b
    assert ptc.at([1, [2, 3]])[...].apply(lambda x: -x) == [-1, [-2, -3]]
    assert ptc.at({"a": {"x": 1, "y": 2}, "b": {"x": 3}})[...]["x"].set(0) == {
        "a": {"x": 0, "y": 2},
        "b": {"x": 0},
    }


def test_filter_after_a_prefix_and_not():
    params = {"dense": {"kernel": 1.0, "bias": 2}, "out": {"kernel": 3.0}}
    assert ptc.at(params)["dense"][ptc.Not(float)].set(0) == {
        "dense": {"kernel": 1.0, "bias": 0},
        "out": {"kernel": 3.0},
    }
    assert ptc.at(params)[float]["dense"].get() == {
        "dense": {"kernel": 1.0, "bias": None},
        "out": {"kernel": None},
    }
    assert (
        ptc.at(params)[ptc.PathContains("kernel")].apply(lambda x: x * 10)["out"]["kernel"] == 30.0
    )


def test_outer_field_kind_applies_inside_the_focus():
    @treeclass
    class Wrapper:
        inner: MLP = field(kind=Frozen)
        head: Linear = field(default_factory=lambda: Linear(jnp.ones((2, 2)), jnp.ones(2)))

    w = Wrapper(make_mlp())
    # Inside `inner` every leaf is Frozen (outermost kind wins), also seen from a prefix.
    sel = w.at.inner[Frozen].get()
    assert sel.mean is not None and sel.layers[0].w is not None
    assert w.at.inner[BatchStat].get().mean is None
    assert w.at.head[Parameter].get().w is not None


def test_mask_filter_in_a_lens():
    tree = {"a": 1, "b": 2}
    assert ptc.at(tree)[{"a": True, "b": False}].set(0) == {"a": 0, "b": 2}


def test_multi_set_with_a_tree_and_holes(mlp: MLP) -> None:
    m = mlp
    sel = m.at[Parameter].get()
    new = jax.tree.map(lambda p: p + 1, sel)  # None holes stay None
    m2 = m.at[Parameter].set(new)
    assert float(m2.layers[1].b[0]) == 1.0 and m2.mean is m.mean
    # A None may stand for a whole subtree: keep it.
    m3 = m.at[Parameter].set(MLP([None, new.layers[1]], mean=None))
    assert m3.layers[0].w is m.layers[0].w and float(m3.layers[1].w[0, 0]) == 2.0
    # A full tree of the same structure: values at unselected leaves are ignored.
    m4 = m.at[Parameter].set(jax.tree.map(lambda x: x * 0, m))
    assert float(m4.layers[0].w.sum()) == 0.0 and m4.mean is m.mean


def test_multi_set_none_clears_the_selected_leaves():
    out = ptc.at({"a": 1, "b": 2.0})[float].set(None)
    assert out == {"a": 1, "b": None}


def test_multi_set_with_a_wrong_structure_names_the_mismatch(mlp: MLP) -> None:
    m = mlp
    with pytest.raises(
        ValueError,
        match=r"model\[Parameter\]\.set\(\): the value does not match the selection's structure: the trees differ at \.layers: the selection has list with children \[0\], \[1\]; the value has list with children \[0\]\. Pass a single leaf",
    ):
        m.at[Parameter].set(MLP([m.layers[0]], mean=None))
    with pytest.raises(
        ValueError,
        match=r"tree\[\.\.\.\]\.set\(\): the value has the leaf 5 at \['a'\], where the selection has a subtree with 2 leaves",
    ):
        ptc.at({"a": [1, 2]})[...].set({"a": 5})
    with pytest.raises(
        ValueError,
        match=r"the value has the leaf 5 at \['a'\], where the selection has an empty node",
    ):
        ptc.at({"a": None, "b": 1})[...].set({"a": 5, "b": 2})


def test_empty_selection_is_a_no_op(mlp: MLP) -> None:
    m = mlp
    out = m.at[ptc.State].apply(lambda x: x + 1)
    assert out.layers[0].w is m.layers[0].w and out.mean is not m.mean  # mean is a BatchStat
    out = m.at.layers[...][ptc.Rng].set(0.0)
    assert ptc.tree_equal(out, m)
    assert ptc.at([])[...].b.set(1) == []


def test_selection_is_cached_per_treedef():
    from pytreeclass._lens._select_plans import _PLANS

    m = make_mlp()
    before = len(_PLANS)
    m.at.layers[...][Parameter].set(0.0)
    m.at.layers[...][Parameter].set(1.0)
    assert len(_PLANS) == before + 1
    m.at[lambda x: x.ndim == 2].set(0.0)  # depends on values: never cached
    assert len(_PLANS) == before + 1


def test_the_plan_cache_reads_each_tree_from_its_own_nodes():
    # Warm the cache with a tree that is ==-equal to the next one but holds other keys
    # and values: the second tree must come back with its own keys and leaves.
    warm = {1: [1.0, 2.0], 2: 3.0}
    other = {True: [10.0, 20.0], 2: 30.0}
    assert ptc.at(warm)[...][...].apply(lambda x: x + 1) == {1: [2.0, 3.0], 2: 3.0}
    out = ptc.at(other)[...][...].apply(lambda x: x + 1)
    assert out == {True: [11.0, 21.0], 2: 30.0}
    assert [type(k) for k in out] == [bool, int]
    assert ptc.at(warm)[OfType(list)].apply(len) == {1: 2, 2: 3.0}
    assert ptc.at(other)[OfType(list)].apply(len) == {True: 2, 2: 30.0}


# -- purity: no __init__, no converters, no full flatten ----------------------------------------


class Boom:
    """A converter that refuses tracers and sentinels, as a user's converter might."""

    def __call__(self, x):
        if isinstance(x, jax.core.Tracer) or type(x) is object:
            raise AssertionError("converter ran during a lens update")
        return x


@treeclass
class Guarded:
    x: Any = field(converter=Boom())
    y: Any = 0

    def __init__(self, x, y=0):
        Guarded.inits += 1
        self.x = x
        self.y = y


Guarded.inits = 0


def test_lens_never_runs_init_or_converters():
    g = Guarded(1.0)
    n = Guarded.inits
    sentinel = object()
    assert ptc.at(g).x.set(sentinel).x is sentinel
    assert g.at[...].set(sentinel).y is sentinel
    out = jax.jit(lambda g, v: g.at.x.set(v * 2))(g, 3.0)
    assert float(out.x) == 6.0
    jax.jit(lambda g: g.at[...].apply(lambda v: v + 1))(g)
    assert Guarded.inits == n


class Counted:
    flattens = 0

    def __init__(self, v):
        self.v = v


def _flatten_counted(c):
    Counted.flattens += 1
    return (c.v,), None


jax.tree_util.register_pytree_node(Counted, _flatten_counted, lambda _, ch: Counted(ch[0]))


def test_single_path_update_never_flattens_untouched_subtrees():
    tree = {"big": [Counted(i) for i in range(5)], "small": {"x": 1}}
    ptc.at(tree)["big"][0][0].set(5)  # the first sight of a node type classifies it, once
    Counted.flattens = 0
    out = ptc.at(tree)["small"]["x"].set(2)
    assert out["small"]["x"] == 2 and out["big"] is tree["big"]
    assert Counted.flattens == 0
    out = ptc.at(tree)["big"][0][0].set(5)
    assert out["big"][0].v == 5 and out["big"][1] is tree["big"][1]
    assert Counted.flattens == 1  # only the node on the path, one level


# -- interop -----------------------------------------------------------------------------------


class EqxBlock(eqx.Module):
    linear: eqx.nn.Linear
    inner: Linear
    scale: float = eqx.field(static=True, default=1.0)


@flax.struct.dataclass
class FlaxState:
    params: dict
    step: int = flax.struct.field(pytree_node=False, default=0)


def test_equinox_module_paths():
    block = EqxBlock(
        eqx.nn.Linear(2, 3, key=jax.random.key(0)), Linear(jnp.ones((2, 2)), jnp.zeros(2))
    )
    out = ptc.at(block).linear.weight.set(jnp.zeros((3, 2)))
    assert type(out) is EqxBlock and type(out.linear) is eqx.nn.Linear
    assert float(out.linear.weight.sum()) == 0.0 and out.inner is block.inner
    assert out.linear.bias is block.linear.bias
    out = ptc.at(block).inner.b.apply(lambda b: b + 1)
    assert float(out.inner.b.sum()) == 2.0
    out = ptc.at(block).scale.set(2.0)
    assert out.scale == 2.0 and jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(
        block
    )
    out = ptc.at(block)[eqx.is_inexact_array].apply(jnp.zeros_like)
    assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree_util.tree_leaves(out))
    # Kinds of a treeclass inside an Equinox module still count.
    assert ptc.at(block)[Parameter].get().linear.weight is None
    assert eqx.tree_equal(ptc.at(block).linear.set(block.linear), block)
    with pytest.raises(
        AttributeError, match=r"model\.lin: no field 'lin'; fields: linear, inner, scale"
    ):
        ptc.at(block).lin.get()


def test_flax_struct_and_treeclass_inside_containers():
    s = FlaxState({"dense": make_mlp()}, step=3)
    out = ptc.at(s).params["dense"].layers[1].b.set(jnp.ones(2))
    assert (
        type(out) is FlaxState
        and out.step == 3
        and float(out.params["dense"].layers[1].b.sum()) == 2.0
    )
    assert out.params["dense"].layers[0] is s.params["dense"].layers[0]
    assert ptc.at(s).step.set(4).step == 4
    out = ptc.at(s)[BatchStat].set(5.0)
    assert float(out.params["dense"].mean) == 5.0


def test_equinox_tree_at_agrees(mlp: MLP) -> None:
    m = mlp
    v = jnp.full((4, 2), 3.0)
    ours = m.at.layers[1].w.set(v)
    theirs = eqx.tree_at(lambda t: t.layers[1].w, m, v)
    assert ptc.tree_equal(ours, theirs)


def test_dataclass_with_slots_uses_the_generic_path():
    @dataclasses.dataclass(frozen=True, slots=True)
    class P:
        a: Any
        b: Any

    jax.tree_util.register_dataclass(P, data_fields=["a", "b"], meta_fields=[])
    out = ptc.at(P(1, [2]))["b"][0].set(5)
    assert type(out) is P and out.b == [5] and out.a == 1
    assert ptc.at(P(1, 2)).a.set(0) == P(0, 2)


# -- transformations ---------------------------------------------------------------------------


def test_lens_under_jit():
    @jax.jit
    def f(m, v):
        m = m.at.layers[0].w.set(v)
        m = m.at[Parameter].apply(lambda p: p * 2)
        return m.at.layers[...].b.apply(lambda b: b + 1)

    out = f(make_mlp(), jnp.zeros((3, 4)))
    assert float(out.layers[0].w.sum()) == 0.0 and float(out.layers[1].b[0]) == 1.0


def test_lens_under_grad(mlp: MLP) -> None:
    m = mlp
    x = jnp.ones((5, 3))

    def loss(w, m):
        return m.at.layers[0].w.set(w)(x).sum()

    g = jax.grad(loss)(m.layers[0].w, m)
    assert g.shape == (3, 4) and float(g[0, 0]) == 10.0

    def loss2(params):
        return m.at[Parameter].set(params)(x).sum()

    grads = jax.grad(loss2)(m.at[Parameter].get())
    assert grads.layers[0].w.shape == (3, 4) and grads.mean is None


def test_lens_in_scan_body(mlp: MLP) -> None:
    m = mlp

    def body(m, i):
        m = m.at.mean.apply(lambda s: s + i)
        m = m.at.layers[-1].b.apply(lambda b: b + 1.0)
        return m, m.at.mean.get()

    out, means = jax.lax.scan(body, m, jnp.arange(4.0))
    assert float(out.mean) == 6.0 and float(out.layers[1].b[0]) == 4.0
    assert means.shape == (4,)


def test_deep_paths_and_deep_trees():
    depth = 1200
    tree: Any = 1
    for _ in range(depth):
        tree = [tree]
    lens = ptc.at(tree)
    for _ in range(depth):
        lens = lens[0]
    assert lens.get() == 1
    out = lens.set(2)
    node = out
    for _ in range(depth):
        node = node[0]
    assert node == 2
    if JAX_FLATTEN_RECURSES:
        with pytest.raises(RecursionError, match="nested too deeply"):
            ptc.at(tree)[...].get()
    else:  # newer JAX flattens any depth: selecting every leaf works too
        assert jax.tree_util.tree_leaves(ptc.at(tree)[...].get()) == [1]


# -- laws (hypothesis) -------------------------------------------------------------------------


def _children(node):
    """(step, child) for every child a random path may take; static fields excluded."""
    if isinstance(node, (Node, Stats)):
        names = [f.name for f in ptc.fields(node) if not f.static]
        return [(("attr", n), getattr(node, n)) for n in names] + [
            (("key", n), getattr(node, n)) for n in names
        ]
    if isinstance(node, Pair):
        return [(("attr", n), getattr(node, n)) for n in node._fields] + [
            (("key", i), v) for i, v in enumerate(node)
        ]
    if isinstance(node, dict):
        return [(("key", k), v) for k, v in node.items()]
    if isinstance(node, (list, tuple)):
        return [(("key", i), v) for i, v in enumerate(node)] + [
            (("key", i - len(node)), v) for i, v in enumerate(node)
        ]
    return []


def draw_path(data, tree):
    path, node = [], tree
    while True:
        options = _children(node)
        if not options or data.draw(st.booleans()):
            return path, node
        step, node = data.draw(st.sampled_from(options))
        path.append(step)


def follow(lens, path):
    for kind, key in path:
        lens = getattr(lens, key) if kind == "attr" else lens[key]
    return lens


class Marker:
    """A fresh leaf, comparable only by identity."""


def _one_level_children(node):
    leaves, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    return [] if treedef.num_nodes == 1 and treedef.num_leaves == 1 else leaves


@LAWS
@given(trees, st.data())
def test_put_get_law(tree, data):
    before = snapshot(tree)
    path, _ = draw_path(data, tree)
    v = data.draw(st.one_of(st.builds(Marker), trees))
    out = follow(ptc.at(tree), path).set(v)
    assert follow(ptc.at(out), path).get() is v
    assert snapshot(tree) == before


@LAWS
@given(trees, st.data())
def test_get_put_law_and_sharing(tree, data):
    before = snapshot(tree)
    path, target = draw_path(data, tree)
    lens = follow(ptc.at(tree), path)
    assert lens.get() is target
    out = lens.set(lens.get())
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)
    assert all(
        a is b for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(tree))
    )
    # Along the path, every child off the path is the original object.
    old, new = tree, out
    for step in path:
        olds, news = _one_level_children(old), _one_level_children(new)
        assert len(olds) == len(news) and sum(a is not b for a, b in zip(olds, news)) <= 1
        old, new = follow(ptc.at(old), [step]).get(), follow(ptc.at(new), [step]).get()
    assert snapshot(tree) == before


@LAWS
@given(trees, st.data())
def test_put_put_law(tree, data):
    path, _ = draw_path(data, tree)
    v1, v2 = data.draw(trees), Marker()
    lens = follow(ptc.at(tree), path)
    twice = follow(ptc.at(lens.set(v1)), path).set(v2)
    once = lens.set(v2)
    assert jax.tree_util.tree_structure(twice) == jax.tree_util.tree_structure(once)
    assert all(
        a is b for a, b in zip(jax.tree_util.tree_leaves(twice), jax.tree_util.tree_leaves(once))
    )


_structural_filters = st.sampled_from(
    [Parameter, BatchStat, ptc.Rng, ptc.State, ptc.Not(Parameter), ...]
)
_value_filters = st.sampled_from(
    [jax.Array, np.ndarray, int, float, lambda x: isinstance(x, (int, float)) and x > 0]
)


@LAWS
@given(trees, st.data(), st.one_of(_structural_filters, _value_filters))
def test_selection_matches_tree_mask_in_root_context(tree, data, f):
    before = snapshot(tree)
    path, _ = draw_path(data, tree)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    # Which leaves lie under the path: put leaf numbers in the tree and read them back there.
    numbered = treedef.unflatten(list(range(len(leaves))))
    focus = follow(ptc.at(numbered), path).get()
    under = set(jax.tree_util.tree_leaves(focus))
    if f is ... and isinstance(focus, int):
        under = set()  # `[...]` selects children, and a leaf has none
    selected = (
        jax.tree_util.tree_leaves(ptc.tree_mask(tree, f)) if f is not ... else [True] * len(leaves)
    )
    out = follow(ptc.at(tree), path)[f].apply(lambda x: ("new", x))
    expect = [
        ("new", x) if i in under and s else x for i, (x, s) in enumerate(zip(leaves, selected))
    ]
    got = treedef.flatten_up_to(out)
    assert len(got) == len(expect)
    for a, b in zip(got, expect):
        assert (type(a) is tuple and a[1] is b[1]) if type(b) is tuple else a is b
    assert snapshot(tree) == before


@LAWS
@given(trees, st.data(), _structural_filters)
def test_selection_laws(tree, data, f):
    before = snapshot(tree)
    path, _ = draw_path(data, tree)
    lens = follow(ptc.at(tree), path)[f]
    # GetPut: putting back what get() returns changes nothing.
    same = lens.set(lens.get())
    assert all(
        a is b for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(tree))
    )
    # PutGet: markers put at the selected leaves are what get() returns.
    v = jax.tree.map(lambda _: Marker(), lens.get())
    out = lens.set(v)
    lens_out = follow(ptc.at(out), path)[f]
    got = lens_out.get()
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(v)
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(v)))
    # PutPut (structural filters select the same leaves again).
    w = jax.tree.map(lambda _: Marker(), v)
    twice, once = lens_out.set(w), lens.set(w)
    assert all(
        a is b for a, b in zip(jax.tree_util.tree_leaves(twice), jax.tree_util.tree_leaves(once))
    )
    assert snapshot(tree) == before


@needs_nnx_nodes
def test_foreign_marker_above_the_focus_sets_the_kind():
    from flax import nnx

    tree = {"p": nnx.Param(jnp.ones(2)), "s": nnx.BatchStat(jnp.zeros(2))}
    # The focus is the array inside the Param: its kind comes from the marker above it.
    p_value, s_value = tree["p"].get_value(), tree["s"].get_value()
    assert ptc.at(tree)["p"]["value"][Parameter].get() is p_value
    assert ptc.at(tree)["s"]["value"][Parameter].get() is None
    out = ptc.at(tree)[Parameter].apply(lambda x: x + 1)
    assert float(out["p"].get_value().sum()) == 4.0 and out["s"].get_value() is s_value


def test_lens_under_vmap(mlp: MLP) -> None:
    m = mlp
    ws = jnp.stack([jnp.full((3, 4), float(i)) for i in range(5)])
    batched = jax.vmap(lambda w: m.at.layers[0].w.set(w).at[BatchStat].set(w.sum()))(ws)
    assert batched.layers[0].w.shape == (5, 3, 4) and batched.mean.shape == (5,)
    assert float(batched.layers[0].w[3, 0, 0]) == 3.0 and float(batched.mean[2]) == 24.0
    assert batched.layers[1].w.shape == (5, 4, 2)  # vmap broadcasts unbatched outputs


# -- the compiled fast path of single-path updates ---------------------------------------------


@ptc.treeclass
class _Cell:
    w: Any
    size: int = ptc.field(static=True, default=1)


@ptc.treeclass
class _Grid:
    cells: list


def _grid(n: int) -> _Grid:
    return _Grid([_Cell(jnp.full(2, float(i))) for i in range(n)])


def _fresh_flat(obj: Any) -> bool:
    return obj.__dict__["__ptc_flat__"] == type(obj).__ptc_meta__.flatten(obj)


def test_compiled_path_falls_back_with_the_usual_errors():
    for _ in range(3):  # repeated: the compiled code runs after the first calls
        g = _grid(4).at.cells[3].w.set(jnp.zeros(2))
        assert float(g.cells[3].w[0]) == 0.0
    with pytest.raises(IndexError, match=r"cells\[3\]: index out of range \(len 2\)"):
        _grid(2).at.cells[3].w.set(jnp.zeros(2))
    with pytest.raises(KeyError, match="no key 'k'"):
        ptc.at({"cells": {"j": 1}})["cells"]["k"].set(1)
    d = ptc.at({"cells": [_Cell(1.0)] * 4})["cells"][3].w.set(2.0)  # another node type
    assert d["cells"][3].w == 2.0 and d["cells"][2].w == 1.0


def test_compiled_path_checks_static_fields_every_time():
    g = _grid(2)
    for _ in range(3):
        g = g.at.cells[0].size.set(8)
    assert g.cells[0].size == 8
    with pytest.raises(TypeError, match="static field 'size' of _Cell holds an unhashable list"):
        g.at.cells[0].size.set([1, 2])
    assert jax.tree_util.tree_structure(g) != jax.tree_util.tree_structure(_grid(2))


def test_compiled_path_keeps_cached_flatten_fresh():
    g = _grid(3)
    for i in range(4):
        g = g.at.cells[1].w.apply(lambda w: w + 1)
        g = g.at.cells[2].size.set(i + 2)
        assert _fresh_flat(g) and all(_fresh_flat(c) for c in g.cells)
    leaves, treedef = jax.tree_util.tree_flatten(g)
    assert float(leaves[1][0]) == 5.0
    assert treedef.unflatten(leaves).cells[2].size == 5


def test_compiled_path_copies_instances_being_edited_and_keeps_key_order():
    # Inside value_and_tree the nodes are mutable copies without a stored flatten result
    # (and a field may have been deleted): the compiled update copies their dict instead.
    def edit(g: _Grid) -> list:
        assert "__ptc_flat__" not in g.cells[-1].__dict__  # what the test is about
        out = []
        for i in range(3):
            new = g.at.cells[-1].w.set(jnp.full(2, 10.0 + i))
            out.append(new)
        return out

    results, after = ptc.value_and_tree(edit)(_grid(2))
    for i, new in enumerate(results):
        assert float(new.cells[1].w[0]) == 10.0 + i and float(new.cells[0].w[0]) == 0.0
        assert _fresh_flat(new) and all(_fresh_flat(c) for c in new.cells)
        with pytest.raises(dataclasses.FrozenInstanceError):
            new.cells[1].w = 1.0
    assert float(after.cells[1].w[0]) == 1.0  # the edited tree itself is untouched
    g = _grid(3)
    for _ in range(3):  # the compiled code: fields stored in declaration order
        new = g.at.cells[-2].w.set(jnp.ones(2))
        assert list(new.cells[1].__dict__) == list(g.cells[1].__dict__)
        assert list(new.__dict__) == list(g.__dict__)
    with pytest.raises(IndexError, match="out of range"):
        _grid(1).at.cells[-2].w.set(jnp.ones(2))


class _EqxCell(eqx.Module):
    w: Any
    size: int = eqx.field(static=True, default=1)


@flax.struct.dataclass
class _StructCell:
    w: Any
    size: int = flax.struct.field(pytree_node=False, default=1)


@pytest.mark.parametrize("cell", [_EqxCell, _StructCell], ids=["equinox", "flax.struct"])
def test_compiled_path_through_foreign_dataclasses_and_tuples(cell: Any):
    tree = {"cells": ([cell(jnp.zeros(2)), cell(jnp.ones(2))], cell(3.0))}
    for i in range(3):  # compiled after the first call
        new = ptc.at(tree)["cells"][0][-1].w.set(float(i))
        assert new["cells"][0][1].w == float(i) and type(new["cells"][0][1]) is cell
        assert new["cells"][0][0] is tree["cells"][0][0] and new["cells"][1] is tree["cells"][1]
        assert float(tree["cells"][0][1].w[0]) == 1.0  # the original is untouched
        new = ptc.at(tree)["cells"][-1].size.apply(lambda s, i=i: s + i)
        assert new["cells"][1].size == 1 + i and isinstance(new["cells"], tuple)
    short = {"cells": ([cell(0.0)],)}
    with pytest.raises(IndexError, match=r"\['cells'\]\[0\]\[-2\]: index out of range \(len 1\)"):
        ptc.at(short)["cells"][0][-2].w.set(2.0)
    with pytest.raises(IndexError, match=r"\[0\]\[-1\]: index out of range \(len 0\)"):
        ptc.at({"cells": ([],)})["cells"][0][-1].w.set(2.0)  # the compiled path's guard
    bad = {"cells": ([tree["cells"][1], object.__new__(cell)],)}  # a field missing
    with pytest.raises(AttributeError):
        ptc.at(bad)["cells"][0][-1].w.set(2.0)


# -- a missing int key in a mapping is a KeyError (issue 17, point 8) ---------------------------


def test_a_missing_int_key_in_a_dict_is_a_key_error() -> None:
    with pytest.raises(KeyError, match=r"^tree\[3\]: no key 3; keys: 1, 2$"):
        ptc.at({1: "a", 2: "b"})[3].get()
    with pytest.raises(KeyError, match=r"tree\['a'\]\[-1\]: no key -1"):
        ptc.at({"a": {0: 1.0}})["a"][-1].set(2.0)
    with pytest.raises(KeyError, match="no key 5"):
        ptc.at({0: 1.0})[5].apply(lambda x: x)
    # a list index out of range stays an IndexError
    with pytest.raises(IndexError, match="index out of range"):
        ptc.at([1.0])[3].get()


def test_a_missing_int_key_in_a_selection_of_dicts_is_a_key_error() -> None:
    tree = {"a": {0: 1.0}, "b": {0: 2.0}}
    with pytest.raises(KeyError, match=r"no child \[1\] under any selected node"):
        ptc.at(tree)[...][1].get()


def test_a_missing_int_key_in_a_foreign_mapping_node_is_a_key_error() -> None:
    from flax.core import FrozenDict

    with pytest.raises(KeyError, match=r"FrozenDict has no child \[2\]"):
        ptc.at(FrozenDict({1: 1.0}))[2].get()


def test_a_filter_lens_takes_the_outermost_kind_on_its_path() -> None:
    """`inner` is declared kind=State, so every leaf under it is State (the outermost field
    that sets a kind wins), even `inner.w`, whose own field says Parameter."""

    @treeclass
    class Inner:
        w: jax.Array = field(kind=ptc.Parameter)
        v: jax.Array

    @treeclass
    class Outer:
        inner: Inner = field(kind=ptc.State)
        p: jax.Array = field(kind=ptc.Parameter)

    o = Outer(Inner(jnp.ones(2), jnp.ones(2)), jnp.ones(2))
    assert ptc.tree_kinds(o).inner.w is ptc.State
    assert o.at.inner.w[ptc.Parameter].get() is None  # nothing selected
    assert o.at.inner.w[ptc.Parameter].apply(lambda x: x * 0) == o
    assert o.at.inner.w[ptc.State].get() is o.inner.w
    out = o.at.inner[ptc.State].apply(lambda x: x * 3)
    assert float(out.inner.w[0]) == 3.0 and float(out.inner.v[0]) == 3.0
    assert o.at.inner[ptc.Parameter].get() == Inner(None, None)  # type: ignore[arg-type]
