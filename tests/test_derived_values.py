"""Derived values cached on an instance never travel into an updated copy (issue 17, point 1).

A `functools.cached_property` (or anything else a user puts in an instance's `__dict__`
besides fields) describes the instance it was computed on. Every way of making an updated
copy (lens updates on both the compiled and the general path, `dataclasses.replace`,
`value_and_tree`, `tree_merge`, unflatten, `ptc.Optimizer`'s step) must carry the fields
only, so the copy computes its own value.
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass


@treeclass
class Scaled:
    w: jax.Array = field(kind=Parameter)
    scale: float = 1.0
    name: str = field(static=True, default="s")

    @functools.cached_property
    def total(self) -> float:
        return float(jnp.sum(self.w) * self.scale)


@treeclass
class Holder:
    inner: Scaled
    cells: list


def _fresh() -> Scaled:
    s = Scaled(jnp.ones(3))
    assert s.total == 3.0  # computed and cached on `s`
    return s


def _holder() -> Holder:
    h = Holder(_fresh(), [_fresh()])
    assert h.inner.total == 3.0 and h.cells[0].total == 3.0
    return h


def _fields_only(obj: object) -> bool:
    names = {f.name for f in ptc.fields(obj)} | {"__ptc_flat__"}
    return set(obj.__dict__) <= names


# Each update is run several times: the first runs take the general walk, later ones the
# path compiled for it (`_lens_compile`); both must drop the cached value.
@pytest.mark.parametrize("attempt", range(4))
def test_lens_set_of_a_child_field_recomputes(attempt: int) -> None:
    s = _fresh()
    out = s.at.w.set(jnp.zeros(3))
    assert _fields_only(out)
    assert out.total == 0.0


@pytest.mark.parametrize("attempt", range(4))
def test_lens_set_of_a_plain_field_recomputes(attempt: int) -> None:
    s = _fresh()
    assert s.at.scale.set(10.0).total == 30.0
    assert s.at.scale.apply(lambda v: v * 2).total == 6.0


@pytest.mark.parametrize("attempt", range(4))
def test_lens_set_of_a_static_field_drops_cached_values(attempt: int) -> None:
    s = _fresh()
    out = s.at.name.set("t")
    assert _fields_only(out) and out.name == "t"


@pytest.mark.parametrize("attempt", range(4))
def test_nested_lens_updates_drop_cached_values_on_every_rebuilt_node(attempt: int) -> None:
    h = _holder()
    out = h.at.inner.scale.set(2.0)
    assert _fields_only(out.inner) and out.inner.total == 6.0
    out = h.at.cells[0].w.set(jnp.full(3, 2.0))
    assert _fields_only(out.cells[0]) and out.cells[0].total == 6.0
    assert out.inner is h.inner  # untouched subtrees are still shared, cache and all


def test_filter_lens_updates_drop_cached_values() -> None:
    h = _holder()
    out = h.at.inner[Parameter].apply(lambda w: w * 2)
    assert out.inner.total == 6.0
    out = ptc.at(h)["cells"][...].w.set(jnp.zeros(3))
    assert out.cells[0].total == 0.0


def test_a_wide_class_takes_the_copy_everything_path_and_still_drops_them() -> None:
    names = [f"f{i}" for i in range(20)]  # more than 16 children: the compiled copy-all code
    ns = {"__annotations__": dict.fromkeys(names, float)}
    ns["total"] = functools.cached_property(lambda self: sum(getattr(self, n) for n in names))
    Wide = treeclass(type("Wide", (), ns))
    w = Wide(*[1.0] * 20)
    assert w.total == 20.0
    for _ in range(4):
        out = w.at.f3.set(11.0)
        assert out.total == 30.0


def test_dataclasses_replace_recomputes() -> None:
    s = _fresh()
    assert dataclasses.replace(s, scale=2.0).total == 6.0


def test_unflatten_and_tree_merge_and_tree_map_recompute() -> None:
    s = _fresh()
    treedef = jax.tree_util.tree_structure(s)
    assert treedef.unflatten([jnp.zeros(3), 1.0]).total == 0.0
    doubled = jax.tree_util.tree_map(lambda x: x * 2, s)
    assert doubled.total == 12.0
    params, rest = ptc.tree_partition(s, Parameter)
    merged = ptc.tree_merge(params, rest)
    assert _fields_only(merged) and merged.total == 3.0


def test_value_and_tree_copies_fields_only() -> None:
    s = _fresh()

    def bump(t: Scaled) -> float:
        t.scale = 5.0
        return t.total

    total, out = ptc.value_and_tree(bump)(s)
    assert total == 15.0
    assert out.total == 15.0
    assert s.total == 3.0  # the original keeps its own


def test_value_and_tree_drops_a_value_cached_before_an_assignment() -> None:
    s = Scaled(jnp.ones(3))

    def read_then_bump(t: Scaled) -> float:
        first = t.total  # cached on the copy while fn runs
        t.scale = 2.0  # ... and stale from here on
        return first

    first, out = ptc.value_and_tree(read_then_bump)(s)
    assert first == 3.0
    assert _fields_only(out)
    assert out.total == 6.0


def test_value_and_tree_still_reports_a_deleted_field_by_name() -> None:
    s = _fresh()

    def drop(t: Scaled) -> None:
        del t.scale

    with pytest.raises(TypeError, match=r"fn deleted field\(s\) 'scale' of a Scaled"):
        ptc.value_and_tree(drop)(s)


def test_optimizer_step_drops_cached_values_of_the_optimizer() -> None:
    optax = pytest.importorskip("optax")

    class CountingOptimizer(ptc.Optimizer):
        @functools.cached_property
        def seen(self) -> int:
            return int(self.step)

    params = {"w": jnp.ones(2)}
    opt = CountingOptimizer.create(optax.sgd(0.1), params)
    assert opt.seen == 0
    _, opt2 = opt.update({"w": jnp.ones(2)}, params)
    assert int(opt2.step) == 1 and opt2.seen == 1


def test_equinox_modules_through_a_lens_carry_fields_only() -> None:
    class Mod(eqx.Module):
        w: jax.Array
        scale: float = 1.0

    m = Mod(jnp.ones(3))
    object.__setattr__(m, "stale", "derived from the old fields")  # what a cache would leave
    for _ in range(4):
        out = ptc.at(m).scale.set(2.0)
        assert "stale" not in out.__dict__ and out.scale == 2.0
