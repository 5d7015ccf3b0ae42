"""Layer stacks: tree_stack/tree_unstack, field(stack=...), stack lens steps, displays."""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass
from pytreeclass._leaf_facts import leaf_axes
from pytreeclass._stack import find_stacks, stack_fields, stack_length
from tests.strategies import trees

# jax.P is spelled out: it does not exist on the oldest jax the matrix tests
P = jax.sharding.PartitionSpec

L = 4


@treeclass
class Block:
    w: jax.Array = field(kind=Parameter, axes=("embed", "mlp"))
    b: jax.Array = field(kind=Parameter)
    scale: jax.Array = field(kind=ptc.BatchStat)
    act: Any = field(static=True, default="relu")


@treeclass
class Model:
    blocks: Block = field(stack="layers")
    head: jax.Array = field(kind=Parameter)


def make_block(i: int, act: Any = "relu") -> Block:
    k = jax.random.key(i)
    return Block(jax.random.normal(k, (3, 5)), jnp.full(5, float(i)), jnp.ones(()) * i, act)


def make_model(n: int = L, act: Any = "relu") -> Model:
    return Model(ptc.tree_stack([make_block(i, act) for i in range(n)]), jnp.ones(5))


def same(a: Any, b: Any) -> bool:
    la, da = jax.tree_util.tree_flatten(a)
    lb, db = jax.tree_util.tree_flatten(b)
    return da == db and all(
        np.shape(x) == np.shape(y)
        and np.asarray(x).dtype == np.asarray(y).dtype
        and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb)
    )


# -- tree_stack / tree_unstack -------------------------------------------------------------------


def _variants(tree: Any, n: int) -> list[Any]:
    """`n` trees with `tree`'s structure whose leaves differ (arrays scaled, numbers shifted)."""
    return [jax.tree.map(lambda x, i=i: x * (i + 1) + i, tree) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(trees, st.integers(1, 3))
def test_stack_then_unstack_is_the_identity(tree: Any, n: int) -> None:
    parts = _variants(tree, n)
    if not jax.tree_util.tree_leaves(tree):
        with pytest.raises(ValueError, match="no array leaves"):
            ptc.tree_unstack(ptc.tree_stack(parts))
        return
    back = ptc.tree_unstack(ptc.tree_stack(parts))
    assert len(back) == n
    for got, want in zip(back, parts):
        # Python numbers come back as 0-d arrays of the dtype jnp gives them.
        assert same(got, jax.tree.map(jnp.asarray, want))


@settings(max_examples=40, deadline=None)
@given(trees, st.integers(1, 3))
def test_unstack_then_stack_is_the_identity(tree: Any, n: int) -> None:
    if not jax.tree_util.tree_leaves(tree):
        return
    stacked = ptc.tree_stack(_variants(tree, n))
    assert same(ptc.tree_stack(ptc.tree_unstack(stacked)), stacked)
    assert stack_length(stacked) == n


def test_stack_works_on_any_pytree() -> None:
    class Lin(eqx.Module):
        w: jax.Array
        n: int = eqx.field(static=True)

    s = ptc.tree_stack([Lin(jnp.ones(2) * i, 3) for i in range(3)])
    assert isinstance(s, Lin) and s.w.shape == (3, 2) and s.n == 3
    assert ptc.tree_unstack(s)[2].w.tolist() == [2.0, 2.0]
    d = ptc.tree_stack(({"a": [1.0, np.ones(2)]}, {"a": [2.0, np.zeros(2)]}))
    assert d["a"][0].tolist() == [1.0, 2.0] and d["a"][1].shape == (2, 2)
    assert ptc.tree_stack(iter([{"x": jnp.ones(1)}]))["x"].shape == (1, 1)


def test_stack_errors_name_the_path() -> None:
    with pytest.raises(ValueError, match="empty list of trees"):
        ptc.tree_stack([])
    with pytest.raises(
        ValueError, match=r"the leaf at \['b'\]\[1\] is f32\[2\] in tree 0 but f32\[3\] in tree 2"
    ):
        ptc.tree_stack([{"b": [1, jnp.ones(2)]}] * 2 + [{"b": [1, jnp.ones(3)]}])
    with pytest.raises(ValueError, match=r"is f32\[2\] in tree 0 but i32\[2\] in tree 1"):
        ptc.tree_stack([jnp.ones(2), jnp.ones(2, jnp.int32)])
    with pytest.raises(
        ValueError,
        match=r"tree 1 does not have tree 0's structure: .*at the root.*Block nodes whose static parts differ \(act: 'relu' vs 'gelu'\)",
    ):
        ptc.tree_stack([make_block(0), make_block(1, "gelu")])
    with pytest.raises(ValueError, match=r"tree 2 does not have tree 0's structure: .*\['c'\]"):
        ptc.tree_stack([{"a": 1}, {"a": 2}, {"c": 1}])
    with pytest.raises(ValueError, match=r"the leaf at \['s'\] is 'x', not an array or number"):
        ptc.tree_stack([{"s": "x"}, {"s": "y"}])
    assert ptc.tree_stack([{"s": "x"}, {"s": "x"}]) == {"s": "x"}  # shared by both layers


_WIDE = st.sampled_from([np.int64, np.uint64, np.float64, np.int8, np.complex128])


@settings(max_examples=30, deadline=None)
@given(_WIDE, st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=3))
def test_numpy_leaves_stack_to_numpy_exactly(dtype: Any, values: list[int]) -> None:
    """int64 beyond int32, uint64 beyond int64, float64 digits: nothing wraps or rounds."""
    rows = [np.array(values, dtype=np.uint64).astype(dtype) + i for i in range(3)]
    trees_ = [{"a": r, "s": r[0]} for r in rows]  # an array and a NumPy scalar
    stacked = ptc.tree_stack(trees_)
    assert type(stacked["a"]) is np.ndarray and stacked["a"].dtype == dtype
    assert np.array_equal(stacked["a"], np.stack(rows))
    assert stacked["s"].dtype == dtype and np.array_equal(stacked["s"], [r[0] for r in rows])
    back = ptc.tree_unstack(stacked)
    assert all(np.array_equal(b["a"], r) and b["a"].dtype == dtype for b, r in zip(back, rows))


def test_numpy_stack_of_values_jax_would_change() -> None:
    big = np.array([2**40 + 1, -(2**62)], np.int64)
    third = np.float64(1 / 3)
    s = ptc.tree_stack([{"i": big, "u": np.uint64(2**64 - 1), "f": third}] * 2)
    assert s["i"].tolist() == [big.tolist()] * 2 and s["u"].tolist() == [2**64 - 1] * 2
    assert s["f"].dtype == np.float64 and s["f"][0] == 1 / 3
    # NumPy and JAX leaves of one dtype JAX holds make a JAX stack.
    mixed = ptc.tree_stack([np.ones(2, np.float32), jnp.zeros(2)])
    assert isinstance(mixed, jax.Array) and mixed.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    # Under jit the NumPy leaves are constants; the stack is still NumPy's.
    out = jax.jit(lambda x: ptc.tree_stack([big, big])[0, 0] + x * 0)(1)
    assert int(out) == int(np.int32(big[0]))  # jit itself computes in int32; the stack did not wrap


def test_stack_of_numpy_and_jax_that_jax_cannot_hold_names_the_path() -> None:
    big = np.array([2**40], np.int64)
    for trees_, i, j in (
        ([{"a": [big]}, {"a": [jnp.ones(1, jnp.int32)]}], 0, 1),
        ([{"a": [jnp.ones(1, jnp.int32)]}, {"a": [big]}], 1, 0),
    ):
        with pytest.raises(
            TypeError,
            match=rf"tree_stack: the leaf at \['a'\]\[0\] is a NumPy i64\[1\] in tree {i}, a "
            rf"dtype JAX cannot hold exactly, but a JAX i32\[1\] in tree {j}\. Give every tree NumPy",
        ):
            ptc.tree_stack(trees_)
    with pytest.raises(TypeError, match=r"NumPy f64\[\] in tree 1.*JAX f32\[\] in tree 0"):
        ptc.tree_stack([jnp.float32(1), np.float64(1), np.float64(2)])


def test_stack_of_a_number_and_an_array_names_the_path_in_either_order() -> None:
    for second, shown in (
        (jnp.ones(2), r"f32\[2\]"),
        ("x", "'x'"),
        (np.int64(3), r"np\.int64\(3\)"),
    ):
        with pytest.raises(
            ValueError,
            match=rf"tree_stack: the leaf at \['b'\]\[1\] is the number 1 in tree 0 but {shown} "
            r"in tree 2; every tree must hold a number there",
        ):
            ptc.tree_stack([{"b": [0, 1]}, {"b": [0, 2.5]}, {"b": [0, second]}])
    with pytest.raises(
        ValueError, match=r"the leaf at \['b'\] is f32\[2\] in tree 0 but 1 in tree 1"
    ):
        ptc.tree_stack([{"b": jnp.ones(2)}, {"b": 1}])
    # Numbers of different Python types still stack (to JAX's dtype for them).
    assert ptc.tree_stack([1, 2.5, True]).tolist() == [1.0, 2.5, 1.0]


def test_unstack_errors_name_the_leaves() -> None:
    with pytest.raises(ValueError, match="tree_unstack: the stack has no array leaves"):
        ptc.tree_unstack({"a": None})
    with pytest.raises(ValueError, match=r"the leaf \['b'\] is f32\[\], which has no dimension 0"):
        ptc.tree_unstack({"a": jnp.ones(2), "b": jnp.ones(())})
    with pytest.raises(
        ValueError,
        match=r"disagree on the number of layers.*\['a'\] is f32\[2\] but \['b'\] is f32\[3,1\]",
    ):
        ptc.tree_unstack({"a": jnp.ones(2), "b": jnp.ones((3, 1))})
    # A leaf that is not an array is shared by every layer (eqx.filter_vmap stacks):
    # a tree of nothing else has no layers to count.
    with pytest.raises(ValueError, match=r"tree_unstack: the stack has no array leaves"):
        ptc.tree_unstack(1.0)


def test_unstack_under_jit_and_an_empty_stack() -> None:
    s = make_model().blocks
    out = jax.jit(ptc.tree_unstack)(s)
    assert len(out) == L and same(out[1], make_block(1))
    empty = jax.tree.map(lambda x: x[:0], s)
    assert ptc.tree_unstack(empty) == []


# -- declaring a stack -----------------------------------------------------------------------------


def test_field_stack_is_recorded_and_checked() -> None:
    (blocks, head) = ptc.fields(Model)
    assert blocks.stack == "layers" and head.stack is None
    assert "stack='layers'" in repr(blocks)
    assert stack_fields(Model) == {"blocks": "layers"} and stack_fields(int) == {}
    with pytest.raises(TypeError, match=r"field\(stack=3\): stack must be the logical name"):
        field(stack=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty str"):
        field(stack="")
    with pytest.raises(ValueError, match="a static field holds no arrays to stack"):
        field(static=True, stack="layers")
    with pytest.raises(ValueError, match="the stacked axis 'layers' is prepended to them"):
        field(stack="layers", axes=("layers", "embed"))


def test_find_stacks_lists_every_stacked_field() -> None:
    m = make_model()
    sites = find_stacks({"m": m, "other": [m]})
    assert [(jax.tree_util.keystr(s.path), s.axis, s.length) for s in sites] == [
        ("['m'].blocks", "layers", L),
        ("['other'][0].blocks", "layers", L),
    ]
    bad = dataclasses.replace(m, blocks=dataclasses.replace(m.blocks, b=jnp.ones((2, 5))))
    with pytest.raises(
        ValueError,
        match=r"find_stacks: .*\.blocks\.w is f32\[4,3,5\] but \.blocks\.b is f32\[2,5\]",
    ):
        find_stacks(bad)


# -- lens steps on a stack ----------------------------------------------------------------------


def test_index_gets_one_layer() -> None:
    m = make_model()
    layers = ptc.tree_unstack(m.blocks)
    assert same(m.at.blocks[1].get(), layers[1])
    assert same(m.at.blocks[-1].get(), layers[-1])
    assert type(m.at.blocks[2].get()) is Block and m.at.blocks[2].get().act == "relu"
    assert m.at.blocks[3].w.get().tolist() == m.blocks.w[3].tolist()
    assert m.at.blocks[np.int64(2)].b.get().tolist() == [2.0] * 5
    assert m.at.blocks.w.get() is m.blocks.w  # no index: the whole stacked leaf


def test_slices_get_a_smaller_stack() -> None:
    m = make_model()
    assert same(m.at.blocks[1:3].get(), ptc.tree_stack(ptc.tree_unstack(m.blocks)[1:3]))
    assert m.at.blocks[::2].b.get()[:, 0].tolist() == [0.0, 2.0]
    assert m.at.blocks[-2:].scale.get().tolist() == [2.0, 3.0]
    assert m.at.blocks[5:9].w.get().shape == (0, 3, 5)
    assert repr(m.at.blocks[1:3].w) == "Lens(model.blocks[1:3].w)"
    assert repr(m.at.blocks[::2]) == "Lens(model.blocks[::2])"


def test_set_writes_one_row_of_every_leaf() -> None:
    m = make_model()
    new = make_block(9)
    m2 = m.at.blocks[1].set(new)
    want = jax.tree.map(lambda x, v: x.at[1].set(v), m.blocks, new)
    assert same(m2.blocks, want)
    assert same(m, make_model())  # the original is unchanged
    assert m2.head is m.head  # untouched fields are shared
    assert same(
        m.at.blocks[-1].set(new).blocks, jax.tree.map(lambda x, v: x.at[3].set(v), m.blocks, new)
    )


def test_set_below_the_index_touches_only_that_leaf() -> None:
    m = make_model()
    m2 = m.at.blocks[2].w.set(jnp.zeros((3, 5)))
    assert m2.blocks.w[2].tolist() == np.zeros((3, 5)).tolist()
    assert np.array_equal(m2.blocks.w[1], m.blocks.w[1])
    assert m2.blocks.b is m.blocks.b and m2.blocks.scale is m.blocks.scale
    m3 = m.at.blocks[0].b.apply(lambda b: b + 10)
    assert m3.blocks.b[:, 0].tolist() == [10.0, 1.0, 2.0, 3.0]


def test_apply_gets_an_ordinary_layer() -> None:
    m = make_model()
    seen = []

    def fn(blk: Block) -> Block:
        seen.append(blk)
        return blk.at.w.apply(lambda w: -w)

    m2 = m.at.blocks[3].apply(fn)
    assert type(seen[0]) is Block and seen[0].w.shape == (3, 5)
    assert np.array_equal(m2.blocks.w[3], -m.blocks.w[3])
    assert np.array_equal(m2.blocks.w[:3], m.blocks.w[:3])


def test_slice_set_and_apply() -> None:
    m = make_model()
    part = ptc.tree_stack([make_block(7), make_block(8)])
    m2 = m.at.blocks[1:3].set(part)
    assert m2.blocks.b[:, 0].tolist() == [0.0, 7.0, 8.0, 3.0]
    m3 = m.at.blocks[::2].b.apply(lambda b: b * 0 - 1)
    assert m3.blocks.b[:, 0].tolist() == [-1.0, 1.0, -1.0, 3.0]


def test_multi_steps_after_an_index() -> None:
    m = make_model()
    m2 = m.at.blocks[1][Parameter].apply(lambda x: x * 0)
    assert m2.blocks.b[:, 0].tolist() == [0.0, 0.0, 2.0, 3.0]
    assert np.array_equal(m2.blocks.scale, m.blocks.scale)
    assert np.all(m2.blocks.w[1] == 0) and np.array_equal(m2.blocks.w[2], m.blocks.w[2])
    got = m.at.blocks[2][ptc.BatchStat].get()
    assert got.w is None and got.b is None and float(got.scale) == 2.0
    m3 = m.at.blocks[0][...].set(0.0)  # a Python number fills the rows
    assert m3.blocks.scale.tolist() == [0.0, 1.0, 2.0, 3.0] and float(m3.blocks.b[0, 0]) == 0.0
    m4 = m.at.blocks[1:3]["b"].set(jnp.zeros((2, 5)))
    assert m4.blocks.b[:, 0].tolist() == [0.0, 0.0, 0.0, 3.0]


def test_a_stacked_list_is_indexed_as_a_stack() -> None:
    @treeclass
    class Pairs:
        pair: list = field(stack="layers")

    p = Pairs([jnp.arange(3.0), jnp.arange(3.0) * 10])
    assert [x.tolist() for x in p.at.pair[1].get()] == [1.0, 10.0]
    assert p.at.pair[2][1].get().tolist() == 20.0
    p2 = p.at.pair[0].set([jnp.float32(-1), jnp.float32(-2)])
    assert p2.pair[0].tolist() == [-1.0, 1.0, 2.0] and p2.pair[1].tolist() == [-2.0, 10.0, 20.0]


@treeclass
class Inner:
    v: jax.Array = field(kind=Parameter, axes=("feat",))


@treeclass
class Outer:
    inner: Inner = field(stack="heads")
    u: jax.Array = field(default_factory=lambda: jnp.zeros(()))


@treeclass
class Deep:
    outer: Outer = field(stack="layers")


@treeclass
class Outer2:
    inner: dict = field(stack="heads")


@treeclass
class Deep2:
    outer: Outer2 = field(stack="layers")


def make_deep() -> Deep:
    # 3 layers x 2 heads x 4 features
    return Deep(Outer(Inner(jnp.arange(24.0).reshape(3, 2, 4)), jnp.arange(3.0)))


def test_nested_stacks_compose_their_indices() -> None:
    d = make_deep()
    assert d.at.outer[1].inner[0].v.get().tolist() == [8.0, 9.0, 10.0, 11.0]
    assert d.at.outer[2].inner[-1].get().v.tolist() == [20.0, 21.0, 22.0, 23.0]
    assert d.at.outer[0:2].inner[1].v.get().shape == (2, 4)
    d2 = d.at.outer[1].inner[1].v.set(jnp.zeros(4))
    assert d2.outer.inner.v[1, 1].tolist() == [0.0] * 4
    assert float(d2.outer.inner.v.sum()) == float(d.outer.inner.v.sum()) - (12 + 13 + 14 + 15)
    assert d2.outer.u is d.outer.u
    with pytest.raises(
        IndexError,
        match=r"model\.outer\[1\]\.inner\[2\]: index out of range \(the stack model\.outer\[1\]\.inner has 2 layers\)",
    ):
        d.at.outer[1].inner[2].get()
    sites = find_stacks(d)
    assert [(jax.tree_util.keystr(s.path), s.axis, s.length) for s in sites] == [
        (".outer", "layers", 3),
        (".outer.inner", "heads", 2),
    ]


def test_stack_lens_errors() -> None:
    m = make_model()
    with pytest.raises(
        IndexError,
        match=r"model\.blocks\[4\]: index out of range \(the stack model\.blocks has 4 layers\)",
    ):
        m.at.blocks[4].get()
    with pytest.raises(IndexError, match=r"model\.blocks\[-5\]: index out of range"):
        m.at.blocks[-5].w.set(jnp.zeros((3, 5)))
    with pytest.raises(
        ValueError,
        match=r"model\.blocks\[1\]\.w\.set\(\): the value is f32\[5\], where the stack holds f32\[3,5\]",
    ):
        m.at.blocks[1].w.set(jnp.zeros(5))
    with pytest.raises(
        ValueError, match=r"the value's leaf at \.b is bf16\[5\], where the stack holds f32\[5\]"
    ):
        m.at.blocks[1].set(make_block(1).at.b.apply(lambda b: b.astype(jnp.bfloat16)))
    with pytest.raises(
        ValueError,
        match=r"model\.blocks\[0\]\.set\(\): the value does not have the structure of a layer.*act.*gelu",
    ):
        m.at.blocks[0].set(make_block(0, "gelu"))
    with pytest.raises(
        ValueError,
        match=r"model\.blocks\[0:2\]\.set\(\).*\.w is f32\[3,5\], where the stack holds f32\[2,3,5\]",
    ):
        m.at.blocks[0:2].set(make_block(0))
    with pytest.raises(
        ValueError,
        match=r"model\.b\[0\]\.set\(\): the value is 0\.5, where the stack holds i32\[2\]",
    ):
        ptc.at(IntStack(jnp.zeros((3, 2), jnp.int32))).b[0].set(0.5)
    bad = dataclasses.replace(m, blocks=dataclasses.replace(m.blocks, b=jnp.ones((2, 5))))
    with pytest.raises(
        ValueError,
        match=r"model\.blocks\[0\]: the leaves of a stack disagree on the number of layers \(dimension 0\): model\.blocks\.w is f32\[4,3,5\] but model\.blocks\.b is f32\[2,5\]",
    ):
        bad.at.blocks[0].get()
    with pytest.raises(
        ValueError,
        match=r"model\.blocks\.set\(\): the value is not a stack: .*model\.blocks\.w is f32\[3,5\] but model\.blocks\.b is f32\[5\].*Set it to a stack of 4 layers",
    ):
        make_model().at.blocks.set(make_block(0))  # one layer is not a stack of 4
    with pytest.raises(
        ValueError,
        match=r"model\.b\[0\]: the leaf model\.b is f32\[\], which has no dimension 0; every leaf of a stack needs a leading \(layer\) axis",
    ):
        IntStack(jnp.ones(())).at.b[0].get()
    with pytest.raises(ValueError, match=r"model\.b\[0\]: the stack has no array leaves"):
        IntStack(None).at.b[0].set(1)
    with pytest.raises(
        TypeError,
        match=r"model\.layers\[0:1\]: a slice selects items of a list or tuple.*declare the "
        r"field a stack of layers, field\(stack=\.\.\.\), to slice its layers",
    ):
        ptc.at(NotStacked({"a": 1})).layers[0:1].get()
    assert ptc.at(NotStacked([1, 2, 3])).layers[0:2].get() == [1, 2]  # a list slice


@treeclass
class IntStack:
    b: jax.Array = field(stack="rows")


@treeclass
class NotStacked:
    layers: list


def test_the_same_path_on_a_list_and_on_a_stack() -> None:
    # Lens paths are interned and compiled per root type: a compiled list update must not
    # be reused for a stacked field, nor the other way round.
    listed = NotStacked([make_block(i) for i in range(L)])
    stacked = make_model()
    for _ in range(3):
        a = ptc.at(listed).layers[1].b.set(jnp.zeros(5))
        b = ptc.at(stacked).blocks[1].b.set(jnp.zeros(5))
        assert a.layers[1].b.tolist() == [0.0] * 5 and a.layers[2] is listed.layers[2]
        assert b.blocks.b[1].tolist() == [0.0] * 5 and b.blocks.b[2].tolist() == [2.0] * 5


def test_stack_steps_under_jit_grad_and_vmap() -> None:
    m = make_model()
    put = jax.jit(lambda m, v: m.at.blocks[2].w.set(v))
    assert np.all(put(m, jnp.ones((3, 5))).blocks.w[2] == 1)

    def loss(m: Model) -> jax.Array:
        blk = m.at.blocks[1].get()
        return jnp.sum(blk.w) + 2 * jnp.sum(m.at.blocks[0:2].b.get())

    g = jax.grad(loss)(m)
    assert g.blocks.w[1].tolist() == np.ones((3, 5)).tolist()
    assert (
        float(jnp.abs(g.blocks.w[0]).sum()) == 0.0 and float(jnp.abs(g.blocks.w[2:]).sum()) == 0.0
    )
    assert g.blocks.b[:, 0].tolist() == [2.0, 2.0, 0.0, 0.0]

    ensemble = jax.vmap(lambda i: make_model().at.blocks[1].b.set(jnp.full(5, i)))(jnp.arange(3.0))
    assert ensemble.blocks.b.shape == (3, L, 5)
    assert ensemble.blocks.b[:, 1, 0].tolist() == [0.0, 1.0, 2.0]
    got = jax.vmap(lambda m: m.at.blocks[1].b.get()[0])(ensemble)
    assert got.tolist() == [0.0, 1.0, 2.0]


# -- kinds, masks, partitions, labels, optimizers --------------------------------------------------


def test_stacked_leaves_are_ordinary_leaves_to_filters() -> None:
    m = make_model()
    kinds = ptc.tree_kinds(m)
    assert kinds.blocks.w is Parameter and kinds.blocks.scale is ptc.BatchStat
    mask = ptc.tree_mask(m, Parameter)
    assert mask.blocks.w is True and mask.blocks.scale is False and mask.head is True
    params, rest = ptc.tree_partition(m, Parameter)
    assert params.blocks.w is m.blocks.w and rest.blocks.w is None
    assert ptc.tree_merge(params, rest) == m
    labels = ptc.tree_labels(m)
    assert labels.blocks.b == "Parameter" and labels.blocks.scale == "BatchStat"
    m2 = m.at[Parameter].apply(lambda x: x * 0)
    assert float(jnp.abs(m2.blocks.w).sum()) == 0 and m2.blocks.scale is m.blocks.scale


def test_optimizer_updates_stacked_parameters() -> None:
    m = make_model()
    params, rest = ptc.tree_partition(m, Parameter)
    opt = ptc.Optimizer.create(optax.sgd(0.5), params)

    def loss(p: Model) -> jax.Array:
        model = ptc.tree_merge(p, rest)
        return jnp.sum(model.blocks.w[1]) + jnp.sum(model.head)

    grads = jax.grad(loss)(params)
    new, opt = jax.jit(lambda g, p, o: o.update(g, p)[::-1])(grads, params, opt)[::-1]
    assert np.allclose(new.blocks.w[1], m.blocks.w[1] - 0.5)
    assert np.array_equal(new.blocks.w[0], m.blocks.w[0])
    assert new.blocks.w.shape == (L, 3, 5)


# -- sharding axes ---------------------------------------------------------------------------------


def test_stack_axis_is_prepended_to_every_leaf() -> None:
    m = make_model()
    assert leaf_axes(m) == (("layers", "embed", "mlp"), ("layers", ...), ("layers", ...), None)
    assert leaf_axes(make_deep()) == (("layers", "heads", "feat"), ("layers", ...))


def test_tree_shardings_of_a_stack() -> None:
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    rules = {"layers": None, "embed": None, "mlp": "model"}
    s = ptc.tree_shardings(make_model(), mesh, rules)
    assert s.blocks.w.spec == P(None, None, "model")
    assert s.blocks.b.spec == P(None, None) and s.blocks.scale.spec == P(None)
    assert s.head.spec == P()
    s2 = ptc.tree_shardings(make_model(), mesh, {**rules, "layers": "data"})
    assert s2.blocks.w.spec == P("data", None, "model") and s2.blocks.b.spec == P("data", None)
    with pytest.raises(
        ValueError, match=r"logical axis 'layers' of the leaf at \.blocks\.w has no rule"
    ):
        ptc.tree_shardings(make_model(), mesh, {"embed": None, "mlp": "model"})
    flat = dataclasses.replace(make_model(), blocks=make_block(0))  # not stacked: one dim short
    with pytest.raises(
        ValueError,
        match=r"\.blocks\.w is f32\[3,5\] \(2 dims\) but its field declares axes=\('layers', 'embed', 'mlp'\) \(3 names\)",
    ):
        ptc.tree_shardings(flat, mesh, rules)
    with pytest.raises(
        ValueError,
        match=r"\.outer\.inner\.v is f32\[4\] \(1 dims\) but its field declares axes=\('layers', 'heads', 'feat'\)",
    ):
        ptc.tree_shardings(
            Deep(Outer(Inner(jnp.ones(4)), jnp.ones(()))),
            mesh,
            {"layers": None, "heads": None, "feat": None},
        )
    with pytest.raises(
        ValueError,
        match=r"the leaf at \.outer\.inner\['x'\] is f32\[3\] \(1 dims\) but it sits in 2 stacked field\(s\) \(\('layers', 'heads'\)\)",
    ):
        ptc.tree_shardings(Deep2(Outer2({"x": jnp.ones(3)})), mesh, {"layers": None, "heads": None})


def test_shardings_cache_warmed_by_an_equal_treedef() -> None:
    # The axes are cached per treedef: a stack of 2 layers warms it for a stack of 3 (an
    # equal treedef, other shapes); statics 1 and 1.0 must not mix up the layers' values.
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    rules = {"layers": None, "embed": None, "mlp": "model"}
    one = Model(ptc.tree_stack([make_block(i, 1) for i in range(2)]), jnp.ones(5))
    other = Model(ptc.tree_stack([make_block(i, 1) for i in range(3)]), jnp.ones(5))
    assert jax.tree_util.tree_structure(one) == jax.tree_util.tree_structure(other)
    ptc.tree_shardings(one, mesh, rules)
    s = ptc.tree_shardings(other, mesh, rules)
    assert s.blocks.w.spec == P(None, None, "model") and s.blocks.b.spec == P(None, None)
    floats = Model(ptc.tree_stack([make_block(i, 1.0) for i in range(3)]), jnp.ones(5))
    assert type(floats.at.blocks[2].get().act) is float
    assert type(other.at.blocks[2].get().act) is int


# -- displays ----------------------------------------------------------------------------------------


def test_repr_shows_the_layer_count_and_one_layer() -> None:
    r = repr(make_model())
    assert (
        r
        == "Model(blocks=Block \u00d74(w=f32[3,5], b=f32[5], scale=f32[], act='relu'), head=f32[5])"
    )
    assert "Outer \u00d73(inner=Inner \u00d72(v=f32[4]), u=f32[])" in repr(make_deep())
    p = IntStack(jnp.zeros((3, 2), jnp.int32))
    assert repr(p) == "IntStack(b=\u00d73 i32[2])"
    bad = dataclasses.replace(make_model(), blocks=make_block(0))  # not a stack: shown as is
    assert "blocks=Block(w=f32[3,5]" in repr(bad)


def test_summary_has_a_line_per_stack() -> None:
    s = ptc.tree_summary(make_model())
    per = 3 * 5 + 5 + 1
    assert s.stacks == (ptc._summary.StackRow(".blocks", "Block", L, per, per * L, per * L * 4),)
    line = next(x for x in str(s).splitlines() if x.startswith(".blocks "))
    assert "Block \u00d74" in line and f"{per}/layer" in line and f"{per * L}" in line
    assert [r.path for r in s.rows] == [".blocks.w", ".blocks.b", ".blocks.scale", ".head"]
    assert s.totals["all"] == (per * L + 5, (per * L + 5) * 4)
    deep = ptc.tree_summary(make_deep())
    assert [(r.path, r.layers, r.count_per_layer) for r in deep.stacks] == [
        (".outer", 3, 9),
        (".outer.inner", 2, 12),
    ]


def test_diagram_shows_the_layer_count() -> None:
    text = ptc.tree_diagram(make_model())
    assert "blocks: Block \u00d74" in text
    assert "b: f32[4,5] (Parameter, axes=('layers', ...))" in text
    assert "inner: Inner \u00d72" in ptc.tree_diagram(make_deep())


def test_node_filters_after_an_index() -> None:
    m = make_model()
    m2 = m.at.blocks[1][ptc.OfType(Block)].apply(lambda b: b.at.b.set(jnp.zeros(5)))
    assert m2.blocks.b[:, 0].tolist() == [0.0, 0.0, 2.0, 3.0]
    got = m.at.blocks[2][ptc.OfType(Block)].get()
    assert float(got.scale) == 2.0


# -- traced layer indices ----------------------------------------------------------------------


def test_a_traced_index_picks_a_layer_under_jit() -> None:
    m = make_model()
    get = jax.jit(lambda m, i: m.at.blocks[i].get())
    for i in range(-L, L):  # negative indices count from the end, as for ints
        assert same(get(m, i), m.at.blocks[i].get()), i
    put = jax.jit(lambda m, i, b: m.at.blocks[i].set(b))
    new = make_block(9)
    for i in (0, 2, -1):
        assert same(put(m, i, new), m.at.blocks[i].set(new)), i
    scaled = jax.jit(lambda m, i: m.at.blocks[i].w.apply(lambda w: 10 * w))(m, 1)
    assert same(scaled, m.at.blocks[1].w.apply(lambda w: 10 * w))
    negated = jax.jit(lambda m, i: m.at.blocks[i][Parameter].apply(jnp.negative))(m, 3)
    assert same(negated, m.at.blocks[3][Parameter].apply(jnp.negative))


def test_a_concrete_array_index_is_an_int() -> None:
    m = make_model()
    assert same(m.at.blocks[jnp.int32(2)].get(), m.at.blocks[2].get())
    assert same(m.at.blocks[np.int64(-1)].b.set(jnp.zeros(5)), m.at.blocks[-1].b.set(jnp.zeros(5)))
    with pytest.raises(IndexError, match=r"model\.blocks\[7\]: index out of range"):
        m.at.blocks[jnp.array(7)].get()


def test_traced_indices_in_fori_loop_and_scan() -> None:
    m = make_model()

    def body(i: jax.Array, m: Model) -> Model:
        return m.at.blocks[i].b.apply(lambda b: b * (i + 1))

    out = jax.lax.fori_loop(0, L, body, m)
    want = m.blocks.b * jnp.arange(1, L + 1.0)[:, None]
    np.testing.assert_allclose(out.blocks.b, want)
    assert same(out.blocks.w, m.blocks.w)  # the other leaves are untouched

    def step(carry: jax.Array, i: jax.Array) -> tuple[jax.Array, jax.Array]:
        return carry + m.at.blocks[i].b.get().sum(), i

    total, _ = jax.lax.scan(step, jnp.float32(0), jnp.arange(L))
    np.testing.assert_allclose(total, m.blocks.b.sum())


def test_traced_index_under_grad_and_vmap() -> None:
    m = make_model()
    rows = jax.vmap(lambda i: m.at.blocks[i].get())(jnp.arange(L))
    assert same(rows, m.blocks)

    def loss(m: Model, i: jax.Array) -> jax.Array:
        return jnp.sum(m.at.blocks[i].w.get() ** 2)

    g = jax.jit(jax.grad(loss))(m, 2)
    np.testing.assert_allclose(g.blocks.w[2], 2 * m.blocks.w[2])
    assert float(jnp.abs(g.blocks.w[jnp.array([0, 1, 3])]).sum()) == 0.0


def test_nested_stacks_take_a_traced_inner_index() -> None:
    d = make_deep()
    f = jax.jit(lambda d, i, j: d.at.outer[i].inner[j].v.set(jnp.zeros(4)))
    assert same(f(d, 1, 1), d.at.outer[1].inner[1].v.set(jnp.zeros(4)))
    g = jax.jit(lambda d, j: d.at.outer[2].inner[j].v.get())
    assert same(g(d, -2), d.at.outer[2].inner[0].v.get())


def test_a_traced_index_out_of_range_clamps_like_jax() -> None:
    # Not knowable while tracing: reads clamp into range (as x[i] does in JAX), and writes
    # clamp the same way, so what a set writes is what a get at that index reads.
    m = make_model()
    get = jax.jit(lambda m, i: m.at.blocks[i].get())
    assert same(get(m, L + 3), m.at.blocks[L - 1].get())
    new = make_block(9)
    out = jax.jit(lambda m, i: m.at.blocks[i].set(new))(m, L + 3)
    assert same(out, m.at.blocks[L - 1].set(new))
    assert same(get(out, L + 3), new)


def test_a_traced_index_outside_a_stack_is_a_clear_error() -> None:
    with pytest.raises(
        TypeError,
        match=r"tree\[<traced int32>\]: a traced index picks a layer of a stacked field "
        r"\(field\(stack=\.\.\.\)\) only; list needs a concrete Python int",
    ):
        jax.jit(lambda xs, i: ptc.at(xs)[i].get())([jnp.ones(2)], 0)
    m = make_model()
    with pytest.raises(TypeError, match=r"model\.head\[<traced int32>\]: a traced index"):
        jax.jit(lambda m, i: m.at.head[i].get())(m, 0)
    with pytest.raises(TypeError, match=r"is not a filter"):  # a float array is no index
        m.at.blocks[jnp.float32(1)].get()
