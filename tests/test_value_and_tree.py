"""value_and_tree: in-place code on a mutable copy, made pure."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass
from pytreeclass._class._instance import MUTABLE

from .strategies import Node, Pair, Stats, snapshot, trees

LAWS = settings(max_examples=60, deadline=None)


@treeclass
class Layer:
    w: jax.Array = field(kind=Parameter)
    count: jax.Array = field(kind=BatchStat, default_factory=lambda: jnp.zeros((), jnp.int32))
    name: str = field(static=True, default="layer")


@treeclass
class Model:
    layers: list[Layer]
    mean: jax.Array = field(kind=BatchStat, default_factory=lambda: jnp.zeros(()))
    extra: dict = field(default_factory=dict)

    def update_stats(self, x):
        self.mean = 0.9 * self.mean + 0.1 * x.mean()
        for layer in self.layers:
            layer.count += 1
        return x.sum()

    def loss(self, x):
        self.mean = x.mean()
        h = x
        for layer in self.layers:
            h = jnp.tanh(h @ layer.w)
        return (h**2).sum()


def make_model() -> Model:
    return Model([Layer(jnp.ones((3, 3))), Layer(jnp.ones((3, 3)) * 0.5)])


def test_returns_value_and_new_tree_original_untouched():
    m = make_model()
    before = snapshot(m)
    out, m2 = ptc.value_and_tree(Model.update_stats)(m, jnp.ones(4))
    assert float(out) == 4.0
    assert float(m2.mean) == pytest.approx(0.1) and int(m2.layers[1].count) == 1
    assert snapshot(m) == before and int(m.layers[0].count) == 0
    assert m2.layers[0].w is m.layers[0].w  # arrays shared, not copied
    with pytest.raises(ptc.FrozenInstanceError):
        m2.mean = jnp.ones(())  # frozen again
    with pytest.raises(ptc.FrozenInstanceError):
        m2.layers[0].count = 5


def test_deep_assignment_lists_and_dicts_are_copies():
    m = make_model()
    m = ptc.at(m).extra.set({"seen": [1]})

    def fn(model, new_layer):
        model.layers[0].count += 1
        model.layers.append(new_layer)
        model.extra["seen"].append(2)
        model.extra["new"] = True

    _, m2 = ptc.value_and_tree(fn)(m, Layer(jnp.zeros((3, 3))))
    assert len(m2.layers) == 3 and len(m.layers) == 2
    assert m2.extra == {"seen": [1, 2], "new": True} and m.extra == {"seen": [1]}
    assert int(m2.layers[0].count) == 1 and int(m.layers[0].count) == 0


def test_original_untouched_when_fn_raises():
    m = make_model()
    before = snapshot(m)
    held = len(MUTABLE)
    grabbed = []

    def fn(model):
        grabbed.append(model)
        model.layers[0].count += 1
        model.layers.pop()
        raise RuntimeError("halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        ptc.value_and_tree(fn)(m)
    assert snapshot(m) == before and len(m.layers) == 2
    assert len(MUTABLE) == held  # nothing left assignable
    with pytest.raises(ptc.FrozenInstanceError):
        grabbed[0].mean = 1.0


def test_kwargs_and_non_treeclass_roots():
    def fn(tree, *, by):
        tree["a"][0] += by
        return "ok"

    tree = {"a": [1, 2], "b": (3, [4])}
    out, new = ptc.value_and_tree(fn)(tree, by=10)
    assert out == "ok" and new == {"a": [11, 2], "b": (3, [4])}
    assert tree == {"a": [1, 2], "b": (3, [4])}
    assert (
        new["b"] is not tree["b"] and new["b"][1] is not tree["b"][1]
    )  # tuple rebuilt around a copy
    leafy = {"t": (1, 2.0, None)}
    assert (
        ptc.value_and_tree(lambda t: None)(leafy)[1]["t"] is leafy["t"]
    )  # nothing mutable: shared
    assert ptc.value_and_tree(lambda x: x + 1)(1) == (2, 1)


def test_containers_keep_their_types_and_aliasing():
    layer = Layer(jnp.ones((2, 2)))
    tree = collections.OrderedDict([("b", [layer, layer]), ("a", Pair(layer, 1))])

    def fn(t):
        t["b"][0].count += 1

    _, new = ptc.value_and_tree(fn)(tree)
    assert type(new) is collections.OrderedDict and list(new) == ["b", "a"]
    assert type(new["a"]) is Pair
    # One node seen three times is copied once, so the copy aliases like the original.
    assert new["b"][0] is new["b"][1] is new["a"].x
    assert int(new["a"].x.count) == 1 and int(layer.count) == 0
    dd = collections.defaultdict(list, {"x": [1]})
    _, new_dd = ptc.value_and_tree(lambda d: d["x"].append(2))(dd)
    assert type(new_dd) is collections.defaultdict and new_dd["x"] == [1, 2] and dd["x"] == [1]


def test_static_fields_assigned_in_fn():
    m = make_model()

    def rename(model, name):
        model.layers[0].name = name

    _, m2 = ptc.value_and_tree(rename)(m, "first")
    assert m2.layers[0].name == "first" and m.layers[0].name == "layer"
    assert jax.tree_util.tree_structure(m2) != jax.tree_util.tree_structure(m)
    with pytest.raises(TypeError, match="static field 'name' of Layer holds an unhashable list"):
        ptc.value_and_tree(rename)(m, ["x"])
    assert m.layers[0].name == "layer"


def test_static_field_written_behind_our_back_is_checked_when_frozen():
    def sneak(model):
        model.layers[0].__dict__["name"] = ["unhashable"]

    with pytest.raises(TypeError, match="static field 'name' of Layer holds an unhashable list"):
        ptc.value_and_tree(sneak)(make_model())


def test_deleting_a_field_is_an_error():
    def fn(model):
        del model.mean

    with pytest.raises(TypeError, match=r"value_and_tree: fn deleted field\(s\) 'mean' of a Model"):
        ptc.value_and_tree(fn)(make_model())


def test_assigning_a_non_field_is_an_error():
    def fn(model):
        model.typo = 1

    with pytest.raises(AttributeError, match="cannot set 'typo' on Model: it is not a field"):
        ptc.value_and_tree(fn)(make_model())


def test_converters_do_not_run_on_edit():
    def strict(x):
        if not isinstance(x, int):
            raise TypeError("converter ran")
        return x

    @treeclass
    class C:
        v: Any = field(converter=strict)

    _, c2 = ptc.value_and_tree(lambda c: setattr(c, "v", "not an int"))(C(1))
    assert c2.v == "not an int"


def test_treeclass_inside_an_equinox_module():
    class Block(eqx.Module):
        inner: Layer
        lin: eqx.nn.Linear

    b = Block(Layer(jnp.ones((2, 2))), eqx.nn.Linear(2, 2, key=jax.random.key(0)))

    def fn(block):
        block.inner.count += 1

    _, b2 = ptc.value_and_tree(fn)(b)
    assert type(b2) is Block and int(b2.inner.count) == 1 and int(b.inner.count) == 0
    assert b2.lin is b.lin  # nothing mutable inside: shared
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'lin'"):
        ptc.value_and_tree(lambda blk: setattr(blk, "lin", None))(b)  # Equinox keeps its own rules


def test_under_jit():
    step = jax.jit(ptc.value_and_tree(Model.update_stats))
    m = make_model()
    out, m2 = step(m, jnp.ones(4))
    out, m3 = step(m2, jnp.ones(4))
    assert int(m3.layers[0].count) == 2 and int(m.layers[0].count) == 0
    assert float(out) == 4.0


def test_under_grad_with_has_aux():
    m = make_model()
    x = jnp.ones((2, 3))
    # allow_int: the int32 counters are leaves too (their gradient is float0).
    grads, m2 = jax.grad(ptc.value_and_tree(Model.loss), has_aux=True, allow_int=True)(m, x)
    assert grads.layers[0].w.shape == (3, 3) and float(jnp.abs(grads.layers[0].w).sum()) > 0
    assert float(m2.mean) == 1.0 and float(m.mean) == 0.0
    expected = jax.grad(_pure_loss, allow_int=True)(m, x)
    assert np.allclose(grads.layers[1].w, expected.layers[1].w)


def _pure_loss(m, x):
    h = x
    for layer in m.layers:
        h = jnp.tanh(h @ layer.w)
    return (h**2).sum()


def test_as_a_scan_body():
    m = make_model()

    def body(model, x):
        out, model = ptc.value_and_tree(Model.update_stats)(model, x)
        return model, out

    final, outs = jax.lax.scan(body, m, jnp.ones((5, 4)))
    assert int(final.layers[1].count) == 5 and outs.shape == (5,)
    assert int(m.layers[1].count) == 0


def test_deep_trees_and_cycles():
    depth = 1500

    @treeclass
    class Chain:
        child: Any
        v: int = 0

    tree: Any = None
    for _ in range(depth):
        tree = Chain(tree)

    def bump_bottom(t):
        while t.child is not None:
            t = t.child
        t.v = 1

    _, new = ptc.value_and_tree(bump_bottom)(tree)
    node, old = new, tree
    while node.child is not None:
        node, old = node.child, old.child
    assert node.v == 1 and old.v == 0

    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="contains a reference cycle"):
        ptc.value_and_tree(lambda t: None)(cyclic)


# -- law: in-place assignment through value_and_tree == a lens update --------------------------


def _mutable_children(node):
    if isinstance(node, (Node, Stats)):
        return [(("attr", f.name), getattr(node, f.name)) for f in ptc.fields(node) if not f.static]
    if isinstance(node, dict):
        return [(("key", k), v) for k, v in node.items()]
    if isinstance(node, list):
        return [(("key", i), v) for i, v in enumerate(node)]
    if isinstance(node, (tuple, Pair)):
        return [(("descend", i), v) for i, v in enumerate(node)]  # can pass through, not assign
    return []


@LAWS
@given(trees, st.data())
def test_in_place_assignment_matches_the_lens(tree, data):
    before = snapshot(tree)
    path, node = [], tree
    while True:
        options = _mutable_children(node)
        if not options:
            break
        step, child = data.draw(st.sampled_from(options))
        path.append(step)
        node = child
        if step[0] != "descend" and data.draw(st.booleans()):
            break
    if not path or path[-1][0] == "descend":
        return  # nothing assignable on this path

    marker = object()

    def fn(t):
        for kind, key in path[:-1]:
            t = getattr(t, key) if kind == "attr" else t[key]  # "descend" indexes a tuple
        kind, key = path[-1]
        if kind == "attr":
            setattr(t, key, marker)
        else:
            t[key] = marker

    _, new = ptc.value_and_tree(fn)(tree)
    lens = ptc.at(tree)
    for kind, key in path:
        lens = getattr(lens, key) if kind == "attr" else lens[key]
    expect = lens.set(marker)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(expect)
    assert all(
        a is b for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(expect))
    )
    assert snapshot(tree) == before


@LAWS
@given(trees)
def test_identity_fn_gives_an_equal_tree(tree):
    _, new = ptc.value_and_tree(lambda t: None)(tree)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(tree)
    assert all(
        a is b for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(tree))
    )


def test_nested_value_and_tree():
    m = make_model()

    def inner(layer):
        layer.count += 10

    def outer(model):
        _, new_layer = ptc.value_and_tree(inner)(model.layers[0])
        model.layers[0] = new_layer  # the outer copy is still assignable
        model.mean = jnp.ones(())

    _, m2 = ptc.value_and_tree(outer)(m)
    assert int(m2.layers[0].count) == 10 and float(m2.mean) == 1.0
    assert int(m.layers[0].count) == 0 and float(m.mean) == 0.0
    with pytest.raises(ptc.FrozenInstanceError):
        m2.layers[0].count = 1


def test_under_vmap():
    m = make_model()
    xs = jnp.arange(12.0).reshape(3, 4)
    outs, ms = jax.vmap(ptc.value_and_tree(Model.update_stats), in_axes=(None, 0))(m, xs)
    assert outs.shape == (3,) and ms.mean.shape == (3,) and ms.layers[0].count.shape == (3,)
    assert int(m.layers[0].count) == 0
