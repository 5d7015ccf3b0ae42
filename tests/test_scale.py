"""Deep trees, wide trees and many distinct structures: it works, or says clearly why not.

* Deep: past Python's recursion limit a tree gives a `TreeTooDeepError` (a `ValueError`
  and a `RecursionError`) naming the function and the fix; with the limit raised, 1,200
  levels work for every function (checked in a subprocess, see below).
* Wide: 100,000 leaves work for every function (saving: 20,000, for time).
* Many structures: the per-treedef caches stay bounded in entries and in memory.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import tracemalloc
from typing import Any

import jax
import numpy as np
import pytest

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass
from pytreeclass._cache import BoundedCache
from pytreeclass._errors import TreeTooDeepError

from .versions import JAX_FLATTEN_RECURSES


@treeclass
class Linear:
    w: Any = field(kind=Parameter)
    b: Any = field(kind=BatchStat)
    features: int = field(static=True, default=1)


@treeclass
class Big:
    layers: list


# -- deep trees ---------------------------------------------------------------------------------


def _nested(depth: int, how: str) -> Any:
    x: Any = 0.5
    for _ in range(depth):
        x = [x, 1.0] if how == "list" else {"a": x, "w": 1.0}
    return x


_DEEP_CALLS = {
    "tree_mask": lambda t: ptc.tree_mask(t, float),
    "tree_filter": lambda t: ptc.tree_filter(t, "w"),
    "tree_partition": lambda t: ptc.tree_partition(t, Parameter),
    "tree_merge": lambda t: ptc.tree_merge(t, t),
    "tree_labels": ptc.tree_labels,
    "tree_kinds": ptc.tree_kinds,
    "tree_equal": lambda t: ptc.tree_equal(t, [t]),
    "lens": lambda t: ptc.at(t)[float].apply(abs),
    "tree_summary": ptc.tree_summary,
    "tree_diagram": ptc.tree_diagram,
    "tree_aliases": ptc.tree_aliases,
}


def _leaves(tree: Any) -> list[Any]:
    return jax.tree_util.tree_leaves(tree)


# What each call returns on `_nested(depth, "list")` (all leaves floats, none kinded), where
# it works: newer JAX (0.12) flattens lists of any depth, and then only `_OWN_RECURSION`
# still runs out of stack (their own walk recurses once per level).
_DEEP_RESULTS = {
    "tree_mask": lambda t, r: _leaves(r) == [True] * len(_leaves(t)),
    "tree_filter": lambda t, r: _leaves(r) == [],  # no leaf is named "w"
    "tree_partition": lambda t, r: _leaves(r[0]) == [] and _leaves(r[1]) == _leaves(t),
    "tree_labels": lambda t, r: _leaves(r) == ["none"] * len(_leaves(t)),
    "tree_kinds": lambda t, r: _leaves(r) == [],  # a kind of None for every leaf
    "tree_equal": lambda t, r: r is False,
    "lens": lambda t, r: _leaves(r) == _leaves(t),  # abs() of positive floats
    "tree_summary": lambda t, r: len(r.rows) == len(_leaves(t)),
    "tree_aliases": lambda t, r: r == [],  # Python floats: only arrays count as ties
}
_OWN_RECURSION = {"tree_merge", "tree_diagram"}


@pytest.mark.parametrize("name", sorted(_DEEP_CALLS))
def test_too_deep_is_a_clear_error_or_works(name):
    # lists only: deep dicts and custom nodes hit a JAX bug, see the xfail test below
    tree = _nested(sys.getrecursionlimit() + 50, "list")
    if JAX_FLATTEN_RECURSES or name in _OWN_RECURSION:
        with pytest.raises(
            TreeTooDeepError, match=rf"{name}: .*nested too deeply to walk.*sys\.setrecursionlimit"
        ):
            _DEEP_CALLS[name](tree)
    else:
        result = _DEEP_CALLS[name](tree)
        assert _DEEP_RESULTS[name](tree, result), name
        assert jax.tree_util.tree_structure(tree).num_leaves == sys.getrecursionlimit() + 51
    # and the interpreter is fine afterwards
    assert ptc.tree_mask(_nested(50, "dict"), float) is not None


def test_every_deep_call_has_an_expected_result():
    assert set(_DEEP_RESULTS) | _OWN_RECURSION == set(_DEEP_CALLS)


def test_too_deep_error_is_both_valueerror_and_recursionerror():
    assert issubclass(TreeTooDeepError, ValueError)
    assert issubclass(TreeTooDeepError, RecursionError)


def test_moderately_deep_trees_work_at_the_default_limit():
    depth = 300
    for how in ("list", "dict"):
        tree = _nested(depth, how)
        sel, rest = ptc.tree_partition(tree, float)
        assert ptc.tree_equal(ptc.tree_merge(sel, rest), tree)
        assert len(jax.tree_util.tree_leaves(ptc.tree_labels(tree))) == depth + 1
        assert ptc.tree_equal(ptc.at(tree)[float].apply(lambda x: x), tree)
        assert ptc.tree_summary(tree)
        assert ptc.tree_diagram(tree)


_DEEP_SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    sys.setrecursionlimit(20_000)
    import jax
    import pytreeclass as ptc
    from pytreeclass import Parameter, field, treeclass

    @treeclass
    class Chain:
        child: object
        w: float = field(kind=Parameter, default=1.0)

    depth = 1200
    for how in ("treeclass", "list", "dict"):
        x = 0.0
        for i in range(depth):
            x = (Chain(x, float(i)) if how == "treeclass"
                 else [x, 1.0] if how == "list" else {"a": x, "w": 1.0})
        n = len(jax.tree_util.tree_leaves(x))
        assert n == depth + 1, n
        assert sum(jax.tree_util.tree_leaves(ptc.tree_mask(x, float))) == n
        if how != "list":
            assert sum(jax.tree_util.tree_leaves(ptc.tree_mask(x, "w"))) == depth
        sel, rest = ptc.tree_partition(x, Parameter)
        assert ptc.tree_equal(ptc.tree_merge(sel, rest), x)
        assert len(jax.tree_util.tree_leaves(ptc.tree_labels(x))) == n
        assert ptc.tree_equal(ptc.at(x)[float].apply(lambda v: v), x)
        assert ptc.value_and_tree(lambda t: 1)(x)[0] == 1
        assert len(str(ptc.tree_summary(x))) > n
        assert ptc.tree_diagram(x).count("\\n") >= depth
        if how == "treeclass":  # (repr is quadratic in depth: once is enough)
            assert repr(Chain(x)).count("Chain") == depth + 1
        path = os.path.join(tempfile.mkdtemp(), "deep")
        ptc.tree_save(path, x)
        assert ptc.tree_equal(ptc.tree_load(path, like=x), x)
        print(how, "ok")
    """
)


def test_1200_levels_work_with_a_raised_recursion_limit():
    # A subprocess: it raises the recursion limit, and (see the next test) JAX itself can
    # break the interpreter on deep custom nodes, which must not take pytest down with it.
    out = subprocess.run(
        [sys.executable, "-c", _DEEP_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["treeclass", "ok", "list", "ok", "dict", "ok"]


_JAX_CUSTOM_NODE_SCRIPT = textwrap.dedent(
    """
    import sys
    import pytreeclass as ptc
    from pytreeclass._errors import TreeTooDeepError

    @ptc.treeclass
    class Chain:
        child: object

    x = 0.0
    for _ in range(sys.getrecursionlimit() + 100):
        x = Chain(x) if sys.argv[1] == "treeclass" else {"a": x, "w": 1.0}

    def at_depth(k):  # where JAX's C++ recursion runs out depends on the stack depth
        if k:
            return at_depth(k - 1)
        try:
            ptc.tree_mask(x, float)
        except TreeTooDeepError:
            return "clear error"
        return "no error"

    print(set(at_depth(k) for k in range(12)))
    """
)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "jaxlib bug, not ours (seen with jaxlib 0.4.36, 0.10.2 and 0.12.0.1): flattening dicts or custom pytree nodes (any "
        "register_pytree_node class) nested deeper than the recursion limit leaves the "
        "interpreter broken ('lost sys.stderr', RecursionError everywhere after); lists get "
        "a clean RecursionError. When this XPASSes, JAX fixed it: drop the mark."
    ),
)
@pytest.mark.parametrize("how", ["treeclass", "dict"])
def test_deep_custom_nodes_and_dicts_past_the_default_limit(how):
    out = subprocess.run(
        [sys.executable, "-c", _JAX_CUSTOM_NODE_SCRIPT, how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "{'clear error'}", out.stderr[-2000:]


def test_reference_cycles_are_a_clear_error():
    cyclic: list = [1.0]
    cyclic.append(cyclic)
    for call in _DEEP_CALLS.values():
        with pytest.raises(TreeTooDeepError, match=r"or it contains a reference cycle"):
            call(cyclic)


# -- wide trees ---------------------------------------------------------------------------------

N_LAYERS = 50_000  # two leaves each: 100,000 leaves


@pytest.fixture(scope="module")
def wide():
    return Big([Linear(np.float32(i), np.float32(-i)) for i in range(N_LAYERS)])


def test_100k_leaves_filters_merge_labels(wide):
    n = 2 * N_LAYERS
    mask = ptc.tree_mask(wide, Parameter)
    assert sum(jax.tree_util.tree_leaves(mask)) == N_LAYERS
    assert sum(jax.tree_util.tree_leaves(ptc.tree_mask(wide, "w"))) == N_LAYERS
    assert sum(jax.tree_util.tree_leaves(ptc.tree_mask(wide, lambda x: x > 0))) == N_LAYERS - 1
    sel, rest = ptc.tree_partition(wide, Parameter)
    merged = ptc.tree_merge(sel, rest)
    assert all(
        x is y for x, y in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(wide))
    )
    assert ptc.tree_merge(sel, rest) == wide  # the cached plan gives the same answer
    labels = jax.tree_util.tree_leaves(ptc.tree_labels(wide))
    assert labels.count("Parameter") == labels.count("BatchStat") == N_LAYERS
    assert len(jax.tree_util.tree_leaves(ptc.tree_kinds(wide))) == n
    assert ptc.tree_equal(wide, Big(list(wide.layers)))


def test_100k_leaves_lenses_and_value_and_tree(wide):
    assert len(wide.at.layers[...].w.get()) == N_LAYERS
    doubled = wide.at[Parameter].apply(lambda x: x * 2)
    assert (
        doubled.layers[-1].w == 2 * wide.layers[-1].w and doubled.layers[-1].b is wide.layers[-1].b
    )
    same = wide.at[Parameter].set(wide.at[Parameter].get())
    assert same == wide
    one = wide.at.layers[N_LAYERS - 1].w.set(7.0)
    assert one.layers[N_LAYERS - 1].w == 7.0 and one.layers[0] is wide.layers[0]

    def edit(m):
        m.layers[5].w = 3.0
        return len(m.layers)

    out, new = ptc.value_and_tree(edit)(wide)
    assert out == N_LAYERS and new.layers[5].w == 3.0 and wide.layers[5].w == 5.0


def test_100k_leaves_printing(wide):
    summary = ptc.tree_summary(wide)
    assert f"{2 * N_LAYERS}" in str(summary).replace(",", "")
    assert ptc.tree_diagram(wide).count("\n") < 100  # elided, not 100,000 lines
    assert len(repr(wide)) < 10_000


def test_save_and_load_of_a_wide_tree(tmp_path):
    # 20,000 leaves, not 100,000: one .npy entry per leaf makes 100,000 take ~25 s here
    # (save ~5 s, load ~18 s), too slow for the suite; this checks it works at width.
    wide = Big([Linear(np.float32(i), np.float32(-i)) for i in range(10_000)])
    path = tmp_path / "wide"
    ptc.tree_save(path, wide)
    loaded = ptc.tree_load(path, like=wide)
    assert loaded == wide


# -- many distinct structures -------------------------------------------------------------------


def _structure(i: int) -> Any:
    # distinct dict keys and static values: JAX's treedef hash ignores both, so all of
    # these share one hash; the caches must neither grow nor degrade into long scans
    return {f"k{i}": Linear(1.0, 2.0, features=i), "b": 2.0}


def _touch(i: int) -> None:
    tree = _structure(i)
    ptc.tree_mask(tree, Parameter)
    if i % 25 == 0:
        ptc.tree_merge(*ptc.tree_partition(tree, "b"))
        ptc.tree_labels(tree)
        ptc.at(tree)[BatchStat].get()
        getattr(ptc.at(tree), f"attr{i}")  # distinct lens attribute names
        ptc.at(tree)[f"key{i}"]


def _module_tables() -> list[tuple[str, Any]]:
    """Every module-level dict or cache in pytreeclass (where unbounded growth would hide)."""
    import pytreeclass

    out = []
    for mod_name, mod in sorted(sys.modules.items()):
        if mod_name.startswith("pytreeclass.") and mod is not None:
            for name, obj in vars(mod).items():
                if isinstance(obj, (dict, BoundedCache)) and not name.startswith("__"):
                    out.append((f"{mod_name}.{name}", obj))
    assert out and pytreeclass
    return out


def test_100k_structures_keep_memory_bounded():
    from pytreeclass import _filters, _leaf_facts, _partition
    from pytreeclass._lens import _select_plans

    for i in range(80_000):  # fill every cache past its bound first (untraced: faster)
        _touch(i)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(80_000, 100_000):
            _touch(i)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # 20,000 more structures (each cache entry is a few hundred bytes): bounded caches
    # stay put; an unbounded one would grow by tens of megabytes
    assert grown < 2_000_000, grown
    for cache in (
        _leaf_facts._KINDS_CACHE,
        _leaf_facts._PATHS_CACHE,
        _partition._PLANS,
        _select_plans._PLANS,
    ):
        assert len(cache) <= cache.maxsize
    assert len(_filters._MASK_CACHE) <= _filters._MASK_CACHE.maxsize
    for name, table in _module_tables():  # any other table a module keeps
        assert len(table) <= 8192, name


def test_type_filter_table_is_bounded():
    from pytreeclass._filters import _TYPE_FILTERS

    tree = {"a": 1.0}
    for i in range(3000):
        cls = type(f"T{i}", (), {})
        assert ptc.tree_mask(tree, cls) == {"a": False}
    assert len(_TYPE_FILTERS) <= 1024


class _Key:
    """A key whose hash always collides and which counts its == calls."""

    eq_calls = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return 42

    def __eq__(self, other: object) -> bool:
        _Key.eq_calls += 1
        return isinstance(other, _Key) and other.n == self.n


def test_cache_lookup_cost_is_bounded_under_hash_collisions():
    cache = BoundedCache(maxsize=4096, per_hash=8)
    for i in range(10_000):
        cache.put(_Key(i), i)
    assert len(cache) <= 8
    _Key.eq_calls = 0
    assert cache.get(_Key(9_999)) == 9_999
    assert cache.get(_Key(3)) is None  # evicted by later colliding keys: a miss, not a scan
    assert _Key.eq_calls <= 16


def test_cache_evicts_oldest_and_counts_exactly():
    cache = BoundedCache(maxsize=100)
    for i in range(1000):
        cache.put(("k", i), i)
        cache.put(("k", i), i)  # a re-put replaces, never duplicates
    assert len(cache) == 100
    assert cache.get(("k", 999)) == 999 and cache.get(("k", 0)) is None
    cache.put([1], 1)  # unhashable: not cached, no error
    assert cache.get([1]) is None
    cache.clear()
    assert len(cache) == 0 and cache.get(("k", 999)) is None


def test_treedefs_that_only_differ_in_static_values_get_their_own_results():
    trees = [Linear(1.0, 2.0, features=i) for i in range(50)]
    assert len({hash(jax.tree_util.tree_structure(t)) for t in trees}) == 1  # JAX's hash
    for t in trees:
        assert ptc.tree_labels(t) == Linear("Parameter", "BatchStat", features=t.features)
        merged = ptc.tree_merge(*ptc.tree_partition(t, Parameter))
        assert merged.features == t.features
