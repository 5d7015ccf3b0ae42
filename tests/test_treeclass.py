"""@treeclass and field(): construction, immutability, registration, copying, equality."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import GetAttrKey

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass

from .models import MLP, Linear, make_mlp

# -- declaring and constructing -------------------------------------------------------------


def test_decorator_with_and_without_arguments():
    @treeclass
    class A:
        x: int

    @treeclass(kw_only=True)
    class B:
        x: int
        y: int = 2

    assert A(1).x == 1
    assert B(x=1).y == 2
    with pytest.raises(TypeError):
        B(1)  # type: ignore[misc]


def test_order_option():
    @treeclass(order=True)
    class Version:
        major: int
        minor: int = 0

    assert Version(1) < Version(1, 1) < Version(2) and Version(2) >= Version(2)
    assert Version(1) == Version(1) and hash(Version(1)) == hash(Version(1))
    a = Linear(jnp.ones(2), jnp.zeros(2))
    assert Version.__eq__ is type(a).__eq__  # ours (arrays by value), not dataclasses'


def test_is_a_dataclass(mlp: MLP) -> None:
    m = mlp
    assert dataclasses.is_dataclass(m)
    assert [f.name for f in dataclasses.fields(Linear)] == ["w", "b", "features"]
    m2 = dataclasses.replace(m, mean=jnp.ones(()))
    assert float(m2.mean) == 1.0 and float(m.mean) == 0.0
    d = dataclasses.asdict(Linear(jnp.ones(2), jnp.zeros(2)))
    assert set(d) == {"w", "b", "features"}


def test_fields_and_is_treeclass():
    fs = ptc.fields(Linear)
    assert [(f.name, f.kind, f.static) for f in fs] == [
        ("w", Parameter, False),
        ("b", Parameter, False),
        ("features", None, True),
    ]
    assert ptc.fields(Linear(1.0, 2.0)) == fs
    assert all(isinstance(f, ptc.Field) for f in fs)
    assert ptc.is_treeclass(Linear) and ptc.is_treeclass(Linear(1.0, 2.0))
    assert not ptc.is_treeclass(1) and not ptc.is_treeclass(dict)
    with pytest.raises(TypeError, match="not a treeclass"):
        ptc.fields(dict)


def test_field_keywords():
    @treeclass
    class A:
        a: int = field(default=1, repr=False, metadata={"unit": "m"}, doc="the a")
        b: list = field(default_factory=list, init=False)
        c: tuple = field(default=(1,), axes=None)
        d: jax.Array = field(default=0.0, axes=("embed",), converter=jnp.asarray)

    obj = A()
    f = {f.name: f for f in ptc.fields(A)}
    assert f["a"].metadata["unit"] == "m" and f["a"].doc == "the a"
    assert f["d"].axes == ("embed",)
    assert "a=" not in repr(obj) and obj.a == 1
    assert obj.b == [] and obj.b is not A().b
    assert isinstance(obj.d, jax.Array)
    with pytest.raises(TypeError):
        A(b=[1])  # type: ignore[call-arg]


def test_field_argument_errors():
    with pytest.raises(ValueError, match="not both"):
        field(default=1, default_factory=list)
    with pytest.raises(TypeError, match="not a kind"):
        field(kind=int)
    with pytest.raises(ValueError, match="static field has no leaves"):
        field(static=True, kind=Parameter)
    with pytest.raises(TypeError, match="tuple of logical axis names"):
        field(axes="embed")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="converter must be callable"):
        field(converter=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is a kind, used as a class"):
        Parameter()


def test_non_default_after_default_is_a_clear_error():
    with pytest.raises(TypeError, match="'b' has no default but follows field 'a'"):

        @treeclass
        class A:
            a: int = 1
            b: int  # type: ignore[misc]


def test_reserved_field_name():
    with pytest.raises(TypeError, match="reserves"):

        @treeclass
        class A:
            at: int


# -- immutability ---------------------------------------------------------------------------


def test_frozen_assignment_and_deletion(mlp: MLP) -> None:
    m = mlp
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"obj = obj\.at\.mean\.set\(value\)"):
        m.mean = jnp.ones(())  # type: ignore[misc]
    with pytest.raises(ptc.FrozenInstanceError, match="cannot delete field 'mean'"):
        del m.mean
    with pytest.raises(AttributeError, match="not a field"):
        m.other = 1  # type: ignore[attr-defined]


def test_user_init_missing_fields_and_extra_attributes():
    @treeclass
    class A:
        a: jax.Array
        b: int
        c: int = 3

        def __init__(self, n: int):
            self.a = jnp.ones(n)

    with pytest.raises(TypeError, match=r"A.__init__ returned without setting field\(s\) 'b'"):
        A(2)

    @treeclass
    class B:
        a: int

        def __init__(self):
            self.a = 1
            self.oops = 2

    with pytest.raises(AttributeError, match=r"'oops'.*not a field"):
        B()


def test_user_init_fills_defaults_and_converts():
    @treeclass
    class A:
        a: jax.Array = field(converter=jnp.asarray)
        c: jax.Array = field(default=3, converter=jnp.asarray)
        d: list = field(default_factory=list)

        def __init__(self, n):
            self.a = [n, n]
            assert isinstance(self.a, jax.Array)  # converted when set

    obj = A(2)
    assert isinstance(obj.a, jax.Array) and obj.a.shape == (2,)
    assert isinstance(obj.c, jax.Array) and obj.d == []


def test_post_init_may_assign_fields():
    @treeclass
    class A:
        a: float
        b: float = field(init=False)

        def __post_init__(self):
            self.b = self.a * 2

    assert A(1.5).b == 3.0
    with pytest.raises(ptc.FrozenInstanceError):
        A(1.0).b = 2  # type: ignore[misc]

    @treeclass
    class Missing:
        a: float
        b: float = field(init=False)

    with pytest.raises(TypeError, match="'b'"):
        Missing(1.0)


def test_initvar_goes_to_post_init():
    @treeclass
    class A:
        a: float
        scale: dataclasses.InitVar[float] = 2.0

        def __post_init__(self, scale):
            self.a = self.a * scale

    assert A(1.0).a == 2.0
    assert A(1.0, 3.0).a == 3.0
    assert [f.name for f in ptc.fields(A)] == ["a"]


def test_converter_runs_once_in_init_never_on_unflatten():
    calls = []

    def conv(x):
        calls.append(x)
        if isinstance(x, jax.core.Tracer) or not isinstance(x, (list, np.ndarray, jax.Array)):
            raise TypeError("converter saw a tracer or a sentinel")
        return jnp.asarray(x, dtype=jnp.float32)

    @treeclass
    class A:
        x: jax.Array = field(converter=conv)

    a = A([1.0, 2.0])
    batch = A(jnp.ones((3, 2)))
    assert len(calls) == 2
    jax.vmap(lambda a: a)(batch)
    jax.tree_util.tree_map(lambda _: object(), a)
    eqx.tree_at(lambda t: t.x, a, jnp.zeros(2))
    jax.jit(lambda a: a)(a)
    jax.grad(lambda a: jnp.sum(a.x))(a)
    assert len(calls) == 2  # only the two constructions above


def test_jacobian_of_function_returning_a_treeclass():
    @treeclass
    class A:
        x: jax.Array = field(converter=lambda v: np.asarray(v))  # fails on tracers

    def f(v):
        a = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(A(np.ones(2))), [v * 2])
        return a

    jac = jax.jacobian(f)(jnp.ones(2))
    assert isinstance(jac, A)
    np.testing.assert_allclose(jac.x, 2 * np.eye(2))


# -- static fields ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (jnp.ones(3), r"static field 'features' of Linear holds an array \(f32\[3\]\)"),
        (np.ones((2, 2)), r"holds an array \(f64\[2,2\]\)"),
        ([1, 2], "unhashable list"),
        ({"a": 1}, "unhashable dict"),
        ((1, [2]), "unhashable tuple"),
    ],
)
def test_static_field_must_be_hashable(value, match):
    with pytest.raises(TypeError, match=match):
        Linear(jnp.ones(2), jnp.ones(2), features=value)


def test_static_default_is_checked_at_class_creation():
    with pytest.raises(TypeError, match="static field 'n' of A holds an unhashable list"):

        @treeclass
        class A:
            n: tuple = field(static=True, default_factory=lambda: [1])

        A()


def test_static_fields_live_in_the_treedef():
    a, b = Linear(jnp.ones(2), jnp.ones(2), 3), Linear(jnp.ones(2), jnp.ones(2), 5)
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b)
    assert len(jax.tree_util.tree_leaves(a)) == 2


# -- pytree registration ------------------------------------------------------------------


def test_registered_with_keys(mlp: MLP) -> None:
    m = mlp
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(m)[0]]
    assert paths[0] == (GetAttrKey("layers"), jax.tree_util.SequenceKey(0), GetAttrKey("w"))
    assert paths[-1] == (GetAttrKey("mean"),)
    assert jax.tree_util.keystr(paths[1]) == ".layers[0].b"


def test_round_trip_flatten_unflatten_is_identity_on_leaves(mlp: MLP) -> None:
    m = mlp
    leaves, treedef = jax.tree_util.tree_flatten(m)
    m2 = treedef.unflatten(leaves)
    assert type(m2) is MLP and m2 == m
    assert all(x is y for x, y in zip(jax.tree_util.tree_leaves(m2), leaves))
    assert m2.layers[0].features == 4


def test_transforms_as_plain_arguments(mlp: MLP) -> None:
    m = mlp
    x = jnp.ones((5, 3))

    def loss(m, x):
        for layer in m.layers:
            x = layer(x)
        return jnp.sum(x) + m.mean

    out = jax.jit(loss)(m, x)
    grads = jax.grad(loss)(m, x)
    assert isinstance(grads, MLP) and grads.layers[0].w.shape == (3, 4)
    np.testing.assert_allclose(out, loss(m, x))
    batched = jax.vmap(lambda layer, x: layer(x), in_axes=(None, 0))(m.layers[0], x)
    assert batched.shape == (5, 4)
    stacked = jax.vmap(lambda w: Linear(w, jnp.zeros(4)))(jnp.ones((7, 3, 4)))
    assert stacked.w.shape == (7, 3, 4) and stacked.features == 4

    def body(carry, _):
        return jax.tree_util.tree_map(lambda a: a + 1, carry), carry.mean

    final, means = jax.lax.scan(body, m, None, length=3)
    assert float(final.mean) == 3.0 and means.tolist() == [0.0, 1.0, 2.0]
    ck = jax.checkpoint(loss)(m, x)
    np.testing.assert_allclose(ck, out)
    assert jax.jit(lambda m: m)(m) == m


def test_pickle_and_copy_round_trip(mlp: MLP) -> None:
    m = mlp
    for clone in (pickle.loads(pickle.dumps(m)), copy.copy(m), copy.deepcopy(m)):
        assert type(clone) is MLP and clone == m
        with pytest.raises(ptc.FrozenInstanceError):
            clone.mean = 1  # type: ignore[misc]
    assert copy.copy(m).layers is m.layers
    assert copy.deepcopy(m).layers is not m.layers


def _double(x):
    return 2 * x


@treeclass
class WithFn:  # module level, so pickle finds it; statics whose type tags are no module name
    w: jax.Array = field(kind=Parameter)
    act: Any = field(static=True, default=_double)
    acts: tuple = field(static=True, default=(math.sqrt, jax.nn.gelu, (_double, 1), None))
    dtype: Any = field(static=True, default=jnp.float32)
    kind: type = field(static=True, default=int)

    @functools.cached_property
    def derived(self):  # a value derived from the fields that does not pickle
        return lambda: self.w

    def __call__(self, x):
        return self.act(x * self.w)


class EqxStyle(ptc.TreeClass):  # a user-written __init__, as in Equinox
    inner: WithFn
    layers: list
    n: int = field(static=True)

    def __init__(self, n: int):
        self.inner = WithFn(jnp.ones(2), act=math.tanh)
        self.layers = [WithFn(jnp.full(2, float(i), jnp.float32)) for i in range(n)]
        self.n = n


@treeclass
class StackOfFn:
    blocks: WithFn = field(stack="layers")
    head: WithFn


def _picklable_models():
    stacked = StackOfFn(
        ptc.tree_stack([WithFn(jnp.full(2, float(i), jnp.float32)) for i in range(3)]),
        WithFn(jnp.ones(2)),
    )
    return {"statics": WithFn(jnp.ones(2)), "eqx_init": EqxStyle(2), "stacked": stacked}


def _check_clone(clone, m) -> None:
    assert type(clone) is type(m)
    assert jax.tree_util.tree_structure(clone) == jax.tree_util.tree_structure(m)
    assert ptc.tree_equal(clone, m)
    for node in jax.tree_util.tree_leaves(clone, is_leaf=ptc.is_treeclass):
        # The copy stores its own flatten result (the fast path), not a stale one.
        assert node.__dict__["__ptc_flat__"] == type(node).__ptc_meta__.flatten(node)
    with pytest.raises(ptc.FrozenInstanceError):
        clone.x = 1
    # The copy is a working tree: lens edits, jit, and the same compiled function.
    leaves = jax.tree_util.tree_leaves(clone)
    edited = ptc.at(clone)[ptc.Parameter].apply(lambda a: a + 1)
    assert jax.tree_util.tree_structure(edited) == jax.tree_util.tree_structure(m)
    assert all(np.array_equal(a + 1, b) for a, b in zip(leaves, jax.tree_util.tree_leaves(edited)))
    f = jax.jit(lambda t: t)
    f(m)
    f(clone)
    assert f._cache_size() == 1


@pytest.mark.parametrize("name", ["statics", "eqx_init", "stacked"])
def test_pickle_copy_deepcopy_with_function_statics(name):
    m = _picklable_models()[name]
    for node in jax.tree_util.tree_leaves(m, is_leaf=lambda x: isinstance(x, WithFn)):
        node.derived  # noqa: B018 -- fill the cached_property
    clones = [pickle.loads(pickle.dumps(m, p)) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    for clone in [*clones, copy.copy(m), copy.deepcopy(m)]:
        _check_clone(clone, m)
    assert copy.copy(m).__dict__.keys() <= {f.name for f in ptc.fields(m)} | {"__ptc_flat__"}
    deep = copy.deepcopy(m)
    assert all(
        a is not b for a, b in zip(jax.tree_util.tree_leaves(deep), jax.tree_util.tree_leaves(m))
    )


def test_cloudpickle_round_trip():
    cloudpickle = pytest.importorskip("cloudpickle", reason="cloudpickle is not installed")
    for m in _picklable_models().values():
        _check_clone(pickle.loads(cloudpickle.dumps(m)), m)

    @treeclass
    class Local:  # pickled by value, with a lambda static (a new function once loaded)
        w: jax.Array
        act: Any = field(static=True, default=lambda x: x + 1)

    clone = pickle.loads(cloudpickle.dumps(Local(jnp.ones(2))))
    assert type(clone) is Local and clone.act(1) == 2 and np.array_equal(clone.w, jnp.ones(2))
    assert "__ptc_flat__" in clone.__dict__


_LOAD_IN_NEW_PROCESS = """
import pickle, sys
import jax, jax.numpy as jnp
import pytreeclass as ptc
for (a, b), sub in pickle.loads(sys.stdin.buffer.read()):
    assert jax.tree_util.tree_structure([a, b]).num_leaves == 2
    for t in (a, sub):  # keyed and unkeyed flatten agree
        assert [k for k, _ in jax.tree_util.tree_flatten_with_path(t)[0]] == [
            (jax.tree_util.GetAttrKey("w"),)
        ]
        assert len(jax.tree_util.tree_leaves(t)) == 1
    out = jax.jit(lambda t: ptc.at(t)[0].w.set(t[0].w + t[1].act(1.0)))([a, b])
    assert out[0].w.tolist() == [3.0, 3.0], out
    assert ptc.tree_mask(sub, ptc.Parameter).w is True
    assert jax.tree_util.tree_leaves(type(a)(jnp.zeros(3)))[0].shape == (3,)
print("OK")
"""


def test_cloudpickle_by_value_into_a_new_process():
    """A class defined in `__main__` or a function travels by value (a notebook class sent
    to a worker): the new process gets a registered treeclass whose keyed and unkeyed
    flatten agree, without `@treeclass` running."""
    cloudpickle = pytest.importorskip("cloudpickle", reason="cloudpickle is not installed")

    @treeclass
    class Local:
        w: jax.Array = field(kind=Parameter)
        act: Any = field(static=True, default=lambda x: x + 1)

    class Sub(Local):  # an undecorated subclass, also by value
        pass

    # A TreeClass subclass: the new process registers it while it is still empty (its
    # __init_subclass__ runs before cloudpickle fills in the class), so it is re-registered.
    class Base(ptc.TreeClass):
        w: jax.Array = field(kind=Parameter)
        act: Any = field(static=True, default=lambda x: x + 1)

    class BaseSub(Base):
        pass

    payload = cloudpickle.dumps(
        [
            ([Local(jnp.ones(2)), Local(jnp.zeros(2))], Sub(jnp.ones(1))),
            ([Base(jnp.ones(2)), Base(jnp.zeros(2))], BaseSub(jnp.ones(1))),
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_NEW_PROCESS],
        input=payload,
        capture_output=True,
        cwd=Path(__file__).parent.parent,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == b"OK", result.stderr[-3000:]


def test_pickle_without_stored_flatten_result_and_old_pickles():
    m = WithFn(jnp.ones(2))
    # Inside value_and_tree the copy is mutable and stores no flatten result.
    out, _ = ptc.value_and_tree(lambda t: pickle.loads(pickle.dumps(t)))(m)
    _check_clone(out, m)
    # A pickle whose state still holds the stored result (as before) loads and is re-sealed.
    state = {**m.__dict__, "__ptc_flat__": ((jnp.zeros(2),), None)}
    clone = copy.copy(m)
    clone.__setstate__(state)
    _check_clone(clone, m)


# -- equality and hashing --------------------------------------------------------------------


def test_equality_compares_arrays_by_value_never_ambiguously():
    a = Linear(jnp.ones(3), jnp.zeros(3))
    assert a == Linear(jnp.ones(3), jnp.zeros(3))
    assert a != Linear(jnp.ones(3), jnp.ones(3))
    assert a != Linear(jnp.ones(4), jnp.zeros(4))  # shapes differ: False, not an error
    assert a != Linear(jnp.ones(3, jnp.int32), jnp.zeros(3))  # dtypes differ
    assert a != Linear(jnp.ones(3), jnp.zeros(3), features=5)
    assert a != "Linear"
    assert Linear(np.ones(3), np.zeros(3)) == Linear(np.ones(3), np.zeros(3))


def test_equality_of_traced_instances_is_a_clear_error():
    a = Linear(jnp.ones(3), jnp.zeros(3))

    def f(x):
        return a == Linear(x, jnp.zeros(3))

    with pytest.raises(TypeError, match=r"jnp\.array_equal"):
        jax.jit(f)(jnp.ones(3))


def test_hash_like_frozen_dataclass():
    @treeclass
    class Config:
        n: int
        name: str = "x"

    assert hash(Config(1)) == hash(Config(1))
    assert {Config(1), Config(1), Config(2)} == {Config(1), Config(2)}
    with pytest.raises(TypeError, match="field 'w' holds an unhashable value"):
        hash(Linear(jnp.ones(2), jnp.ones(2)))


# -- inheritance and generics ------------------------------------------------------------------


class Scaled(Linear):
    def __call__(self, x):
        return 2 * super().__call__(x)


def test_undecorated_subclass_is_a_registered_frozen_treeclass():
    s = Scaled(jnp.ones((2, 2)), jnp.zeros(2))
    assert ptc.is_treeclass(s)
    assert jax.tree_util.tree_structure(s).num_leaves == 2
    assert type(jax.jit(lambda s: s)(s)) is Scaled
    assert ptc.tree_kinds(s) == Scaled(Parameter, Parameter)  # type: ignore[arg-type]
    with pytest.raises(ptc.FrozenInstanceError):
        s.w = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(s)) == s


def test_undecorated_subclass_with_its_own_init():
    class FromSize(Linear):
        def __init__(self, n: int):
            self.w = jnp.ones((n, n))
            self.b = jnp.zeros(n)

    obj = FromSize(3)
    assert obj.w.shape == (3, 3) and obj.features == 4
    assert jax.jit(lambda o: o)(obj) == obj


def test_undecorated_subclass_with_new_annotations_is_an_error():
    class Extra(Linear):
        scale: float = 2.0
        unit: ClassVar[str] = "m"

    with pytest.raises(TypeError, match=r"Extra annotates 'scale' but is not decorated"):
        Extra(jnp.ones(2), jnp.ones(2))


def test_decorated_subclass_adds_fields():
    @treeclass
    class WithScale(Linear):
        scale: jax.Array = field(default=1.0, kind=ptc.State)

    obj = WithScale(jnp.ones(2), jnp.ones(2))
    assert [f.name for f in ptc.fields(obj)] == ["w", "b", "features", "scale"]
    assert ptc.tree_labels(obj) == WithScale("Parameter", "Parameter", 4, "State")  # type: ignore[arg-type]


def test_subclass_of_class_with_user_init_super_call():
    @treeclass
    class Base:
        a: int

        def __init__(self, a):
            self.a = a

    @treeclass
    class Child(Base):
        b: int

        def __init__(self, a, b):
            super().__init__(a)
            self.b = b

    c = Child(1, 2)
    assert (c.a, c.b) == (1, 2)
    with pytest.raises(ptc.FrozenInstanceError):
        c.a = 3  # type: ignore[misc]


T = TypeVar("T")


def test_generic_treeclass():
    @treeclass
    class Box(Generic[T]):
        item: T

    b = Box[int](1)
    assert b.item == 1 and Box(jnp.ones(2)).item.shape == (2,)
    assert jax.tree_util.tree_leaves(Box(jnp.ones(2)))[0].shape == (2,)


def test_slots_are_rejected_clearly():
    with pytest.raises(TypeError, match="__slots__"):

        @treeclass
        class A:
            __slots__ = ("x",)
            x: int


def test_decorating_twice_is_an_error():
    with pytest.raises(TypeError, match="already a treeclass"):
        treeclass(Linear)


def test_repr_is_short():
    assert (
        repr(Linear(jnp.ones((3, 4)), jnp.zeros(4))) == "Linear(w=f32[3,4], b=f32[4], features=4)"
    )


# -- ptc.TreeClass: the base-class spelling ---------------------------------------------------


class TLinear(ptc.TreeClass):  # module level, so pickle finds it
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)
    features: int = field(static=True, default=4)

    def __call__(self, x):
        return x @ self.w + self.b


class TMLP(ptc.TreeClass):
    layers: list[TLinear]
    mean: jax.Array = field(kind=ptc.BatchStat, default_factory=lambda: jnp.zeros(()))

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _tmodel() -> TMLP:
    return TMLP([TLinear(jnp.ones((3, 4)), jnp.zeros(4)), TLinear(jnp.ones((4, 2)), jnp.zeros(2))])


def test_treeclass_base_makes_what_the_decorator_makes():
    m = _tmodel()
    assert dataclasses.is_dataclass(m) and dataclasses.replace(m, mean=1.0).mean == 1.0
    w, _, features = ptc.fields(TLinear)
    assert (w.name, w.kind, features.name, features.static) == ("w", Parameter, "features", True)
    assert ptc.is_treeclass(TLinear) and ptc.is_treeclass(m)
    assert not ptc.is_treeclass(ptc.TreeClass) and not hasattr(ptc.TreeClass, "__ptc_meta__")
    assert isinstance(m, ptc.TreeClass) and not isinstance(make_mlp(), ptc.TreeClass)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(m)[0]]
    assert paths[0] == (GetAttrKey("layers"), jax.tree_util.SequenceKey(0), GetAttrKey("w"))
    assert jax.tree_util.tree_structure(m).num_leaves == 5  # `features` is in the treedef
    assert ptc.tree_labels(m.layers[0]) == TLinear("Parameter", "Parameter")  # type: ignore[arg-type]
    with pytest.raises(ptc.FrozenInstanceError, match=r"obj\.at\.mean\.set\(value\)"):
        m.mean = jnp.ones(())  # type: ignore[misc]
    with pytest.raises(ptc.FrozenInstanceError):
        del m.mean
    with pytest.raises(TypeError, match="holds an array"):
        TLinear(jnp.ones(2), jnp.ones(2), features=jnp.ones(2))  # type: ignore[arg-type]
    assert repr(m.layers[0]) == "TLinear(w=f32[3,4], b=f32[4], features=4)"


def test_treeclass_base_equality_hash_pickle_copy():
    m = _tmodel()
    assert m == _tmodel() and m != m.at.mean.set(jnp.ones(()))
    for clone in (pickle.loads(pickle.dumps(m)), copy.copy(m), copy.deepcopy(m)):
        assert type(clone) is TMLP and clone == m
        with pytest.raises(ptc.FrozenInstanceError):
            clone.mean = 1  # type: ignore[misc]

    class Config(ptc.TreeClass):
        n: int
        name: str = "x"

    assert {Config(1), Config(1), Config(2)} == {Config(1), Config(2)}
    with pytest.raises(TypeError, match="field 'w' holds an unhashable value"):
        hash(TLinear(jnp.ones(2), jnp.ones(2)))


def test_treeclass_base_options_are_class_keywords():
    class Config(ptc.TreeClass, kw_only=True, order=True):
        depth: int
        width: int = 8

    assert Config(depth=2).width == 8 and Config(depth=1) < Config(depth=2)
    with pytest.raises(TypeError):
        Config(2)  # type: ignore[misc]

    class Deeper(Config):  # as with dataclasses, options apply to the class naming them
        heads: int = 1

    assert Deeper(4, depth=2).heads == 4  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes no keyword arguments"):  # Python's own check

        class Bad(ptc.TreeClass, bogus=True):  # type: ignore[call-arg]
            x: int


def test_treeclass_base_subclasses_are_processed_without_a_decorator():
    class WithScale(TLinear):  # adds a field: no decorator needed
        scale: jax.Array = field(default=1.0, kind=ptc.State)

    obj = WithScale(jnp.ones(2), jnp.ones(2))
    assert [f.name for f in ptc.fields(obj)] == ["w", "b", "features", "scale"]
    assert ptc.tree_labels(obj) == WithScale("Parameter", "Parameter", 4, "State")  # type: ignore[arg-type]
    assert type(jax.jit(lambda o: o)(obj)) is WithScale

    class Scaled2(TLinear):  # adds nothing
        def __call__(self, x):
            return 2 * super().__call__(x)

    s = Scaled2(jnp.ones((2, 2)), jnp.zeros(2))
    assert ptc.is_treeclass(Scaled2) and "__ptc_meta__" in Scaled2.__dict__
    assert s(jnp.ones(2)).tolist() == [4.0, 4.0]

    class FromSize(TLinear):  # its own __init__, calling the generated one
        def __init__(self, n: int):
            super().__init__(jnp.ones((n, n)), jnp.zeros(n))
            self.features = n

    f = FromSize(3)
    assert f.features == 3 and f.w.shape == (3, 3) and jax.jit(lambda o: o)(f) == f
    with pytest.raises(ptc.FrozenInstanceError):
        f.features = 4  # type: ignore[misc]


def test_generic_treeclass_base():
    class Box(ptc.TreeClass, Generic[T]):
        item: T

    b = Box[int](1)
    assert b.item == 1 and ptc.is_treeclass(Box)
    assert jax.tree_util.tree_leaves(Box(jnp.ones(2)))[0].shape == (2,)
    assert Box[jax.Array](jnp.ones(2)).at.item.set(jnp.zeros(2)).item.tolist() == [0.0, 0.0]


def test_treeclass_base_under_jit_grad_vmap():
    m = _tmodel()
    x = jnp.ones((5, 3))

    def loss(m, x):
        return jnp.sum(m(x)) + m.mean

    grads = jax.grad(loss)(m, x)
    assert isinstance(grads, TMLP) and grads.layers[0].w.shape == (3, 4)
    np.testing.assert_allclose(jax.jit(loss)(m, x), loss(m, x))
    assert jax.vmap(lambda layer, x: layer(x), in_axes=(None, 0))(m.layers[0], x).shape == (5, 4)
    stacked = jax.vmap(lambda w: TLinear(w, jnp.zeros(4)))(jnp.ones((7, 3, 4)))
    assert type(stacked) is TLinear and stacked.w.shape == (7, 3, 4)
    step = jax.jit(lambda m: jax.tree.map(lambda p, g: p - 0.1 * g, m, jax.grad(loss)(m, x)))
    assert type(step(m)) is TMLP


def test_treeclass_base_at_lens():
    m = _tmodel()
    m2 = m.at.layers[0].w.set(jnp.zeros((3, 4)))
    assert type(m2) is TMLP and float(m2.layers[0].w.sum()) == 0.0
    assert float(m.layers[0].w.sum()) == 12.0 and m2.layers[1] is m.layers[1]
    halved = m.at[Parameter].apply(lambda p: p * 0.5)
    assert float(halved.layers[0].w[0, 0]) == 0.5 and halved.mean is m.mean
    assert ptc.at(m).layers[-1].b.get() is m.layers[1].b


def test_treeclass_decorator_on_a_treeclass_base_subclass():
    class A(ptc.TreeClass, kw_only=True):
        x: int

    # Already a treeclass: the decorator returns the class as is (no second registration).
    assert treeclass(A) is A and treeclass(kw_only=True)(A) is A
    assert A(x=1).x == 1 and jax.tree_util.tree_leaves(A(x=1)) == [1]
    with pytest.raises(TypeError, match=r"@treeclass\(kw_only=False\) on A, .* kw_only=True"):
        treeclass(kw_only=False)(A)
    with pytest.raises(TypeError, match=r"class B\(\.\.\., order=True\)"):

        @treeclass(order=True)
        class B(ptc.TreeClass):
            x: int


def test_treeclass_base_mixed_with_a_decorated_class():
    @treeclass
    class P:
        x: int

    class Q(P, ptc.TreeClass):  # P's subclass hook runs first
        y: int = 0

    class R(ptc.TreeClass, P):  # TreeClass's runs first
        y: int = 0

        def __init__(self, x):
            self.x = x

    assert Q(1, 2) == Q(1, 2) and [f.name for f in ptc.fields(Q)] == ["x", "y"]
    assert R(1).y == 0 and jax.tree_util.tree_leaves(R(1)) == [1, 0]
    assert not hasattr(Q.__init__, "__ptc_user_init__")  # the generated one, not wrapped
    with pytest.raises(ptc.FrozenInstanceError):
        R(1).x = 2  # type: ignore[misc]


def test_treeclass_base_itself_is_not_instantiable():
    with pytest.raises(TypeError, match=r"ptc\.TreeClass is a base class: subclass it"):
        ptc.TreeClass()

    class Counted(ptc.TreeClass):
        n: int

        def __init__(self, n: int) -> None:
            super().__init__()  # reaches TreeClass.__init__: allowed from a subclass
            self.n = n

    assert Counted(3).n == 3


# -- fields named like builtins (issue 17, point 5) ---------------------------------------------
# The generated __init__ takes fields as parameters, so a field called `type` or `len`
# shadows that builtin inside it: generated code must use none of them by their plain name.

BUILTIN_NAMES = [
    "type", "len", "hash", "object", "isinstance", "id", "tuple", "dict", "list", "str",
    "int", "float", "bool", "set", "print", "getattr", "setattr", "super", "iter", "next",
    "callable", "repr", "map", "zip", "min", "max", "range", "self", "cls", "_new", "d",
]  # fmt: skip


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_a_field_named_like_a_builtin_works_everywhere(name: str) -> None:
    ns = {
        "__annotations__": {name: int, "n": int, "conv": int, "k": tuple},
        "n": field(static=True, default=2),
        "conv": field(converter=lambda v: v * 10, default=1),
        "k": field(static=True, default_factory=lambda: (1, 2)),
    }
    A = treeclass(type("A", (), ns))
    a = A(**{name: 5})
    assert getattr(a, name) == 5 and a.n == 2 and a.conv == 10 and a.k == (1, 2)
    b = A(5, 3, 4, (3,))  # positionally too
    assert (getattr(b, name), b.n, b.conv, b.k) == (5, 3, 40, (3,))
    # the static check still runs: an unhashable static value is refused, naming the field
    with pytest.raises(TypeError, match="'n'"):
        A(**{name: 5, "n": [1]})
    leaves, treedef = jax.tree_util.tree_flatten(a)
    assert treedef.unflatten(leaves) == a
    assert a.at[name].set(7) == A(**{name: 7})


@pytest.mark.parametrize("name", ["type", "len", "hash", "object", "isinstance", "self"])
def test_builtin_named_static_fields_and_post_init(name: str) -> None:
    def post_init(self: object) -> None:
        assert getattr(self, name) == "x"

    ns = {
        "__annotations__": {name: str, "m": int},
        name: field(static=True, default="x"),
        "m": field(default=0),
        "__post_init__": post_init,
    }
    A = treeclass(type("A", (), ns))
    assert getattr(A(), name) == "x"
    with pytest.raises(TypeError, match=repr(name)):
        A(**{name: ["unhashable"]})


# -- new-style PRNG keys in == and tree_equal (issue 17, point 4) -------------------------------


@treeclass
class Dropout:
    key: jax.Array = field(kind=ptc.Rng)
    rate: float = field(static=True, default=0.5)


def test_equality_compares_new_style_prng_keys_by_their_data() -> None:
    k0, k1 = jax.random.key(0), jax.random.key(1)
    assert Dropout(k0) == Dropout(jax.random.key(0))
    assert Dropout(k0) != Dropout(k1)
    assert ptc.tree_equal({"k": k0}, {"k": jax.random.key(0)})
    assert not ptc.tree_equal({"k": k0}, {"k": k1})
    assert ptc.tree_equal(jax.random.split(k0, 3), jax.random.split(k0, 3))
    assert not ptc.tree_equal(jax.random.split(k0, 3), jax.random.split(k0, 2))
    # the same bits under another implementation are another key
    rbg = jax.random.key(0, impl="rbg")
    assert not ptc.tree_equal({"k": k0}, {"k": rbg})
    # a key is not its raw data (nor an old-style uint32 key)
    assert not ptc.tree_equal(k0, jax.random.key_data(k0))
    assert not ptc.tree_equal(jax.random.key_data(k0), k0)


def test_equality_of_prng_keys_under_jit_points_to_the_fix() -> None:
    @jax.jit
    def f(k: jax.Array) -> bool:
        return Dropout(k) == Dropout(jax.random.key(0))

    with pytest.raises(TypeError, match=r"jnp\.array_equal"):
        f(jax.random.key(0))


def test_equality_and_hash_skip_fields_with_compare_false() -> None:
    @treeclass
    class Tagged:
        x: int
        note: str = field(default="", compare=False)
        cache: object = field(default=None, compare=False)

    assert Tagged(1, "a") == Tagged(1, "b")
    assert Tagged(1, "a", [1]) == Tagged(1, "a", [2])  # not compared, not even hashable
    assert Tagged(1, "a") != Tagged(2, "a")
    assert hash(Tagged(1, "a")) == hash(Tagged(1, "b"))
    assert ptc.tree_equal(Tagged(1, "a"), Tagged(1, "a"))
