"""Per-structure caches hand back each tree's own static values and dict keys (issue 17.3).

JAX compares treedefs with `==`, under which `1`, `1.0`, `True`, `np.int64(1)` and an
`IntEnum` member are all equal. So a cache keyed by treedef alone would hand a tree the
static values and dict keys of the first, `==`-equal tree it saw: `fill=1` instead of
`fill=1.0` (a buffer built from it would be int32, not float32), a plain `1` instead of an
`IntEnum` key. Every test here warms a cache with one such tree, then asks about another
and checks the TYPES of what comes back.
"""

from __future__ import annotations

import enum
import itertools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass


class Color(enum.IntEnum):
    RED = 1


# All equal to 1 (and to each other), all with the same hash, all of different types.
ONES = [1, 1.0, True, Color.RED, np.int64(1)]
PAIRS = [(a, b) for a, b in itertools.permutations(ONES, 2)]
IDS = [f"{type(a).__name__}-then-{type(b).__name__}" for a, b in PAIRS]


@treeclass
class Cfg:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array
    fill: Any = field(static=True, default=1)


@treeclass
class Keyed:
    params: dict = field(kind=Parameter)
    other: jax.Array


class EqxCfg(eqx.Module):
    w: jax.Array
    b: jax.Array
    fill: Any = eqx.field(static=True)


def cfg(fill: Any) -> Cfg:
    return Cfg(jnp.ones(2), jnp.zeros(2), fill)


def keyed(key: Any) -> Keyed:
    return Keyed({key: jnp.ones(2)}, jnp.zeros(2))


def nested(fill: Any) -> dict:
    """Statics at several depths, inside lists and a dict: the cache key covers them all."""
    return {"layers": [cfg(1), cfg(fill)], "head": cfg(2)}


def fills(tree: Any) -> list[type]:
    """The types of every `fill` static and every dict key in `tree`, outermost first."""
    out: list[type] = []

    def visit(x: Any) -> None:
        if isinstance(x, (Cfg, EqxCfg)):
            out.append(type(x.fill))
        if isinstance(x, dict):
            out.extend(type(k) for k in x)
        children = jax.tree_util.tree_leaves(x, is_leaf=lambda y: y is not x)  # one level
        if not (len(children) == 1 and children[0] is x):
            for child in children:
                visit(child)

    visit(tree)
    return out


def _warm_then(fn: Any, make: Any, first: Any, second: Any) -> tuple[Any, Any]:
    for _ in range(3):  # more than once: some caches fill on a second call
        fn(make(first))
    return fn(make(second)), fn(make(second))


def _check(out: Any, expected_type: type) -> None:
    for part in out if isinstance(out, tuple) else (out,):
        types = fills(part)
        assert types and types[-1] is expected_type, types


MAKERS = {"static": cfg, "dict_key": keyed}


@pytest.mark.parametrize("where", list(MAKERS))
@pytest.mark.parametrize(("first", "second"), PAIRS, ids=IDS)
class TestEveryCachedFunction:
    def test_tree_mask(self, where: str, first: Any, second: Any) -> None:
        for f in (Parameter, "w", ptc.Not(Parameter)):
            for out in _warm_then(lambda t, f=f: ptc.tree_mask(t, f), MAKERS[where], first, second):
                _check(out, type(second))

    def test_tree_filter_both_ways(self, where: str, first: Any, second: Any) -> None:
        for inverse in (False, True):
            fn = lambda t, inv=inverse: ptc.tree_filter(t, Parameter, inverse=inv)  # noqa: E731
            for out in _warm_then(fn, MAKERS[where], first, second):
                _check(out, type(second))

    def test_tree_partition(self, where: str, first: Any, second: Any) -> None:
        for out in _warm_then(
            lambda t: ptc.tree_partition(t, Parameter), MAKERS[where], first, second
        ):
            _check(out, type(second))

    def test_tree_merge(self, where: str, first: Any, second: Any) -> None:
        def parts(x: Any) -> tuple[Any, Any]:
            # Built by hand (not by tree_partition) so that only tree_merge's cache is warm.
            if where == "static":
                return Cfg(jnp.ones(2), None, x), Cfg(None, jnp.zeros(2), x)  # type: ignore[arg-type]
            return Keyed({x: jnp.ones(2)}, None), Keyed({x: None}, jnp.zeros(2))  # type: ignore[arg-type]

        for out in _warm_then(lambda p: ptc.tree_merge(*p), parts, first, second):
            _check(out, type(second))

    def test_tree_labels(self, where: str, first: Any, second: Any) -> None:
        for mapping in (None, {Parameter: "p"}):
            fn = lambda t, m=mapping: ptc.tree_labels(t, m)  # noqa: E731
            for out in _warm_then(fn, MAKERS[where], first, second):
                _check(out, type(second))

    def test_tree_kinds(self, where: str, first: Any, second: Any) -> None:
        for out in _warm_then(ptc.tree_kinds, MAKERS[where], first, second):
            _check(out, type(second))

    def test_filter_lens(self, where: str, first: Any, second: Any) -> None:
        fn = lambda t: ptc.at(t)[Parameter].apply(lambda x: x + 1)  # noqa: E731
        for out in _warm_then(fn, MAKERS[where], first, second):
            _check(out, type(second))
        for out in _warm_then(lambda t: ptc.at(t)[Parameter].get(), MAKERS[where], first, second):
            _check(out, type(second))

    def test_path_lens(self, where: str, first: Any, second: Any) -> None:
        # Compiled per path and root type after the first calls: it must read the statics
        # and keys of the tree it is given.
        if where == "static":
            fns = [lambda t: t.at.b.set(jnp.ones(2)), lambda t: t.at.fill.apply(lambda v: v)]
        else:
            fns = [lambda t: t.at.other.set(jnp.ones(2)), lambda t: t.at.params[1].set(0.0)]
        for fn in fns:
            for out in _warm_then(fn, MAKERS[where], first, second):
                _check(out, type(second))

    def test_tree_shardings(self, where: str, first: Any, second: Any) -> None:
        mesh = jax.make_mesh((1,), ("data",))
        fn = lambda t: ptc.tree_shardings(t, mesh, {})  # noqa: E731
        for out in _warm_then(fn, MAKERS[where], first, second):
            _check(out, type(second))


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=IDS)
def test_statics_deep_in_a_tree(first: Any, second: Any) -> None:
    for fn in (
        lambda t: ptc.tree_mask(t, Parameter),
        lambda t: ptc.tree_partition(t, Parameter),
        lambda t: ptc.tree_merge(*ptc.tree_partition(t, Parameter)),
        ptc.tree_labels,
    ):
        out = _warm_then(fn, nested, first, second)[1]
        for part in out if isinstance(out, tuple) else (out,):
            assert type(part["layers"][1].fill) is type(second)
            assert type(part["layers"][0].fill) is int and type(part["head"].fill) is int


@pytest.mark.filterwarnings("ignore:A JAX array is being set as static")  # np.int64(1)
@pytest.mark.parametrize(("first", "second"), PAIRS, ids=IDS)
def test_foreign_static_fields(first: Any, second: Any) -> None:
    """An Equinox module's static field is aux data we do not control: compared by type too."""

    def make(x: Any) -> EqxCfg:
        return EqxCfg(jnp.ones(2), jnp.zeros(2), x)

    for fn in (
        lambda t: ptc.tree_mask(t, "w"),
        lambda t: ptc.tree_partition(t, "w"),
        lambda t: ptc.tree_merge(*ptc.tree_partition(t, "w")),
        lambda t: ptc.tree_filter(t, "w", inverse=True),
    ):
        out = _warm_then(fn, make, first, second)[1]
        for part in out if isinstance(out, tuple) else (out,):
            assert type(part.fill) is type(second)


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=IDS)
def test_tree_labels_mapping_values_keep_their_type(first: Any, second: Any) -> None:
    m = cfg(1)
    for _ in range(2):
        ptc.tree_labels(m, {Parameter: first, None: first})
    out = ptc.tree_labels(m, {Parameter: second, None: second})
    assert type(out.w) is type(second) and type(out.b) is type(second)


def test_the_buffer_built_from_a_partition_keeps_its_dtype() -> None:
    """The issue's example: a float32 fill must not come back as the int of another tree."""
    ptc.tree_partition(cfg(1), Parameter)
    params, _ = ptc.tree_partition(cfg(1.0), Parameter)
    assert jnp.asarray(params.fill).dtype == jnp.float32


def test_error_paths_name_this_trees_keys() -> None:
    """Key paths are cached per structure too (they name leaves in error messages)."""
    ptc.tree_mask({1: 1.0}, "x")  # computes and caches the key paths of {1: *}
    with pytest.raises(TypeError, match=r"for the leaf at \[True\]"):
        ptc.tree_mask({True: 1.0}, lambda x: jnp.ones(2))


def test_tree_shardings_errors_name_this_trees_keys() -> None:
    @treeclass
    class Sharded:
        params: dict = field(axes=("a",))

    mesh = jax.make_mesh((1,), ("data",))
    ok = Sharded({1: jnp.ones(2)})
    ptc.tree_shardings(ok, mesh, {"a": "data"})
    ptc.tree_mask(ok, "params")
    bad = Sharded({True: jnp.ones((2, 2))})
    with pytest.raises(ValueError, match=r"leaf at \.params\[True\]"):
        ptc.tree_shardings(bad, mesh, {"a": "data"})


def test_equal_trees_still_share_one_cache_entry() -> None:
    """The stricter key must not make every call a miss: same types, same plan."""
    from pytreeclass import _partition as _merge

    ptc.tree_partition(cfg(1.5), Parameter)
    before = len(_merge._SELECTIONS)
    for _ in range(5):
        ptc.tree_partition(cfg(1.5), Parameter)
        ptc.tree_partition(keyed("k"), Parameter)
    assert len(_merge._SELECTIONS) <= before + 1


def test_jit_retraces_for_a_static_of_another_type() -> None:
    """Treedefs themselves tell the types apart, so jax.jit does not reuse a trace made
    with `fill=1` for `fill=1.0` (which would give int32 where float32 is due)."""
    f = jax.jit(lambda m: jnp.asarray(m.fill) * jnp.ones(2, jnp.int32))
    assert f(cfg(1)).dtype == jnp.int32
    assert f(cfg(1.0)).dtype == jnp.float32
    assert jax.tree_util.tree_structure(cfg(1)) != jax.tree_util.tree_structure(cfg(1.0))
    assert jax.tree_util.tree_structure(cfg(1)) == jax.tree_util.tree_structure(cfg(1))
    assert cfg(1) == cfg(1.0)  # instance equality compares values, as dataclasses do


def test_the_flatten_init_stores_is_what_flatten_computes() -> None:
    """`__init__` writes the flatten result out inline (the hot construction path); it
    must be exactly what the generated flatten returns, type tags included."""

    @treeclass
    class Mixed:
        a: jax.Array
        s1: Any = field(static=True, default=1)
        b: Any = 2.0
        s2: Any = field(static=True, default=(1, (2.0, "x")))
        s3: Any = field(static=True, default=Color.RED)

    for obj in (Mixed(jnp.ones(1)), Mixed(jnp.ones(1), 1.0, 3, (True,), None), cfg(1), cfg(True)):
        stored = obj.__dict__["__ptc_flat__"]
        computed = type(obj).__ptc_meta__.flatten(obj)
        assert stored == computed
        assert repr(stored[1]) == repr(computed[1])  # tags and values, of the same types
    assert Mixed(jnp.ones(1)).__dict__["__ptc_flat__"][1][:3] == (
        int,
        (tuple, int, (tuple, float, str)),
        Color,
    )


def test_merging_halves_whose_statics_differ_in_type_names_the_field() -> None:
    a = Cfg(jnp.ones(2), None, 1)  # type: ignore[arg-type]
    b = Cfg(None, jnp.zeros(2), 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"static parts differ \(fill: 1 vs 1\.0\)"):
        ptc.tree_merge(a, b)
