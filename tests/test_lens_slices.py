"""Lens slices on lists and tuples: `model.at.layers[1:3]`, `[::2]`, `[::-1]`.

A slice is a single step whose value is the sub-sequence (a list for a list, a tuple for a
tuple): `get` returns it, `set` takes a list or tuple of the same length and puts its
items back at the sliced indices, `apply(fn)` does that with `fn(sub-sequence)`. Later
steps continue inside the sub-sequence. After a multi step (`[...]`, a filter) a slice
narrows the selection to those items.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeclass as ptc

from .models import MLP, Linear


def _model(n: int = 4) -> MLP:
    return MLP([Linear(jnp.full((2, 2), float(i)), jnp.full(2, float(i))) for i in range(n)])


def _ids(layers: list[Linear]) -> list[float]:
    return [float(layer.b[0]) for layer in layers]


def test_get_returns_the_sub_sequence():
    m = _model()
    assert _ids(m.at.layers[1:3].get()) == [1.0, 2.0]
    assert _ids(m.at.layers[::2].get()) == [0.0, 2.0]
    assert _ids(m.at.layers[::-1].get()) == [3.0, 2.0, 1.0, 0.0]
    assert _ids(m.at.layers[-2:].get()) == [2.0, 3.0]
    assert m.at.layers[5:9].get() == []
    assert type(m.at.layers[1:3].get()) is list
    assert ptc.at((1, 2, 3, 4))[1::2].get() == (2, 4)


def test_set_puts_items_back_at_the_sliced_indices():
    m = _model()
    new = [
        Linear(jnp.zeros((2, 2)), jnp.full(2, 10.0)),
        Linear(jnp.zeros((2, 2)), jnp.full(2, 20.0)),
    ]
    m2 = m.at.layers[1:3].set(new)
    assert _ids(m2.layers) == [0.0, 10.0, 20.0, 3.0]
    assert _ids(m.layers) == [0.0, 1.0, 2.0, 3.0]  # the original is unchanged
    assert m2.layers[0] is m.layers[0] and m2.layers[3] is m.layers[3]  # shared, not copied
    assert m2.mean is m.mean
    assert _ids(m.at.layers[::2].set(tuple(new)).layers) == [10.0, 1.0, 20.0, 3.0]
    assert _ids(m.at.layers[::-2].set(new).layers) == [0.0, 20.0, 2.0, 10.0]
    assert ptc.at({"t": (1, 2, 3)})["t"][:2].set([7, 8]) == {"t": (7, 8, 3)}
    assert ptc.at([1, 2])[2:].set([]) == [1, 2]


def test_apply_gets_and_returns_the_sub_sequence():
    m = _model()
    m2 = m.at.layers[1:3].apply(lambda ls: [layer.at.b.apply(lambda b: -b) for layer in ls])
    assert _ids(m2.layers) == [0.0, -1.0, -2.0, 3.0]
    assert ptc.at([1, 2, 3, 4])[::-1].apply(lambda s: [10 * x for x in s]) == [10, 20, 30, 40]
    assert ptc.at([1, 2, 3])[1:].apply(lambda s: tuple(reversed(s))) == [1, 3, 2]


def test_later_steps_continue_inside_the_slice():
    m = _model()
    m2 = m.at.layers[1:3][0].b.set(jnp.full(2, 9.0))  # [0] of the slice is layers[1]
    assert _ids(m2.layers) == [0.0, 9.0, 2.0, 3.0]
    m3 = m.at.layers[::2][...].b.set(jnp.zeros(2))  # every leaf b in layers 0 and 2
    assert _ids(m3.layers) == [0.0, 1.0, 0.0, 3.0]
    assert float(m3.layers[2].w[0, 0]) == 2.0
    m4 = m.at.layers[1:][ptc.Parameter].apply(lambda x: x * 0)
    assert _ids(m4.layers) == [0.0, 0.0, 0.0, 0.0] and float(m4.layers[0].w[0, 0]) == 0.0
    assert float(m4.layers[1].w[0, 0]) == 0.0
    assert m.at.layers[1:3][-1].b.get().tolist() == [2.0, 2.0]


def test_a_slice_after_a_multi_step_narrows_the_selection():
    tree = {"a": [1, 2, 3], "b": (4, 5, 6), "c": 7}
    assert ptc.at(tree)[...][1:].set(0) == {"a": [1, 0, 0], "b": (4, 0, 0), "c": 7}
    assert ptc.at(tree)[...][::2].get() == {"a": [1, None, 3], "b": (4, None, 6), "c": None}


def test_under_jit_grad_and_vmap():
    m = _model()

    @jax.jit
    def halve_odd(model: MLP) -> MLP:
        return model.at.layers[1::2].apply(
            lambda ls: [jax.tree.map(lambda x: x / 2, x) for x in ls]
        )

    assert _ids(halve_odd(m).layers) == [0.0, 0.5, 2.0, 1.5]

    def loss(model: MLP) -> jax.Array:
        return sum(jnp.sum(layer.b) for layer in model.at.layers[:2].get())

    g = jax.grad(loss)(m)
    assert [float(layer.b[0]) for layer in g.layers] == [1.0, 1.0, 0.0, 0.0]
    out = jax.vmap(lambda x: ptc.at([x, x + 1, x + 2])[::2].set([x * 0, x * 0]))(jnp.arange(3.0))
    assert [v.tolist() for v in out] == [[0.0] * 3, [1.0, 2.0, 3.0], [0.0] * 3]


def test_repr_of_a_slice_lens():
    m = _model()
    assert repr(m.at.layers[1:3]) == "Lens(model.layers[1:3])"
    assert repr(m.at.layers[::2]) == "Lens(model.layers[::2])"
    assert repr(m.at.layers[-3::-1]) == "Lens(model.layers[-3::-1])"


def test_set_with_the_wrong_length_or_type_is_a_clear_error():
    m = _model()
    with pytest.raises(
        ValueError,
        match=r"model\.layers\[1:3\]: the slice selects 2 item\(s\) \(indices 1, 2 of 4\), "
        r"but the value has 1\. Set it to \(or return from apply\) a list or tuple of 2",
    ):
        m.at.layers[1:3].set([m.layers[0]])
    with pytest.raises(ValueError, match=r"model\.layers\[::2\]: the slice selects 2 item"):
        m.at.layers[::2].apply(lambda ls: ls + ls)
    with pytest.raises(
        TypeError, match=r"model\.layers\[1:3\]: .* must be a list or tuple; got Linear"
    ):
        m.at.layers[1:3].set(m.layers[0])
    with pytest.raises(TypeError, match=r"must be a list or tuple; got an array f32\[2\]"):
        ptc.at([1.0, 2.0, 3.0])[1:].set(jnp.zeros(2))


def test_a_slice_on_something_else_is_a_clear_error():
    m = _model()
    with pytest.raises(
        TypeError,
        match=r"model\[1:3\]: a slice selects items of a list or tuple, but the value at model is MLP",
    ):
        m.at[1:3].get()
    with pytest.raises(TypeError, match=r"tree\['a'\]\[:1\]: a slice selects items .* is dict"):
        ptc.at({"a": {"x": 1}})["a"][:1].set([1])
    Point = collections.namedtuple("Point", "x y")
    with pytest.raises(TypeError, match=r"tree\[0:1\]: a slice selects items .* is Point"):
        ptc.at(Point(1, 2))[0:1].get()
    with pytest.raises(
        TypeError, match=r"model\.mean\[1:\]: .* is an array f32\[\]\. To change array elements"
    ):
        m.at.mean[1:].get()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 7),
    start=st.none() | st.integers(-9, 9),
    stop=st.none() | st.integers(-9, 9),
    step=st.none() | st.integers(-3, 3).filter(lambda s: s != 0),
    as_tuple=st.booleans(),
)
def test_law_matches_python_slicing(n, start, stop, step, as_tuple):
    xs = list(range(n))
    seq = tuple(xs) if as_tuple else xs
    s = slice(start, stop, step)
    lens = ptc.at({"k": seq})["k"][s]
    assert lens.get() == seq[s]
    values = [100 + i for i in range(len(xs[s]))]
    expected = list(xs)
    expected[s] = values
    got = lens.set(values)["k"]
    assert type(got) is type(seq) and list(got) == expected
    assert seq == (tuple(range(n)) if as_tuple else list(range(n)))  # input untouched
