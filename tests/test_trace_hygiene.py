"""Treeclasses inside `jax.jit`/`grad`/`vmap`/`scan`: no tracer ever lands in a static field
or a cache, and jit retraces exactly when the static structure changes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass

from .models import Linear


@treeclass
class Net:
    layers: list
    mean: jax.Array = field(kind=BatchStat, default_factory=lambda: jnp.zeros(()))
    name: str = field(static=True, default="net")

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x

    def update(self, x):
        self.mean = 0.9 * self.mean + 0.1 * x.mean()
        return self(x)


def make_net(width: int = 3, n: int = 2, name: str = "net") -> Net:
    keys = jax.random.split(jax.random.key(0), n)
    layers = [
        Linear(jax.random.normal(k, (width, width)), jnp.zeros(width), features=width) for k in keys
    ]
    return Net(layers, name=name)


@pytest.fixture(autouse=True)
def _empty_caches():
    """Start from empty caches: what the tests find in them was written by these tests."""
    import sys

    from pytreeclass._cache import BoundedCache

    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("pytreeclass.") and mod is not None:
            for table in list(vars(mod).values()):
                if isinstance(table, BoundedCache):
                    table.clear()


def _all_cached_objects() -> list[Any]:
    """Every key and value held by pytreeclass's caches and tables, flattened."""
    import sys

    from pytreeclass._cache import BoundedCache

    out: list[Any] = []
    for mod_name, mod in sorted(sys.modules.items()):
        if not mod_name.startswith("pytreeclass.") or mod is None:
            continue
        for name, table in vars(mod).items():
            if isinstance(table, BoundedCache):
                for bucket in table._data.values():
                    for key, value in bucket:
                        out.extend([key, value])
            elif isinstance(table, dict) and not name.startswith("__"):
                out.extend(table.items())
    return out


def _contains_tracer(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, jax.core.Tracer):
        return True
    if depth > 20:
        return False
    if isinstance(obj, jax.tree_util.PyTreeDef):
        # static data of every node (our static fields, dict keys) lives in the treedef
        leaves = obj.unflatten([0] * obj.num_leaves)
        return any(_contains_tracer(v, depth + 1) for v in _static_values(leaves))
    if isinstance(obj, (tuple, list)):
        return any(_contains_tracer(x, depth + 1) for x in obj)
    if isinstance(obj, dict):
        return any(_contains_tracer(x, depth + 1) for x in (*obj.keys(), *obj.values()))
    return False


def _static_values(tree: Any) -> list[Any]:
    nodes = jax.tree_util.tree_leaves(tree, is_leaf=ptc.is_treeclass)
    out = []
    for node in nodes:
        if ptc.is_treeclass(node):
            meta = type(node).__ptc_meta__
            out.extend(node.__dict__[n] for n in meta.static_names)
            out.extend(_static_values([node.__dict__[n] for n in meta.child_names]))
    return out


def _everything(net: Net, x: jax.Array) -> Any:
    """Use every tracer-facing function on `net` (which may hold tracers)."""
    params, rest = ptc.tree_partition(net, Parameter)
    net = ptc.tree_merge(params, rest)
    net = ptc.tree_merge(net, ptc.tree_filter(net, "b"))
    mask = ptc.tree_mask(net, ptc.Any(BatchStat, "w"))
    labels = ptc.tree_labels(net)
    kinds = ptc.tree_kinds(net)
    net = net.at[Parameter].apply(lambda p: p * 0.5)
    net = net.at.layers[0].w.set(net.layers[0].w + x.sum())
    net = net.at.layers[...].b.apply(lambda b: b + 1)
    net = net.at[mask].apply(lambda v: v)
    net = ptc.at(net)[jax.Array].apply(lambda v: v * 1.0)
    y, net = ptc.value_and_tree(Net.update)(net, x)
    summary = str(ptc.tree_summary(net))
    del labels, kinds, summary
    return y.sum() + sum(jnp.sum(v) for v in jax.tree_util.tree_leaves(ptc.tree_filter(net, mask)))


def test_jit_grad_vmap_scan_leak_no_tracers():
    net, x = make_net(), jnp.ones((4, 3))
    with jax.checking_leaks():
        jax.jit(_everything)(net, x).block_until_ready()
        jax.grad(lambda n: _everything(n, x))(net)
        jax.vmap(_everything, in_axes=(None, 0))(net, jnp.ones((2, 4, 3)))

        def step(carry, xs):
            return ptc.value_and_tree(Net.update)(carry, xs)[1], None

        jax.lax.scan(step, net, jnp.ones((3, 4, 3)))
    leaked = [obj for obj in _all_cached_objects() if _contains_tracer(obj)]
    assert not leaked, leaked[:3]
    from pytreeclass._class._instance import MUTABLE

    assert not MUTABLE


def test_caches_hold_no_tracers_after_jit_of_fresh_structures():
    # fresh structures (new static values) mean cache misses *under trace*: the entries
    # written then must still be tracer-free
    for width in (5, 6, 7):
        net = make_net(width, name=f"n{width}")
        jax.jit(_everything)(net, jnp.ones((2, width)))
    assert not any(_contains_tracer(obj) for obj in _all_cached_objects())


def test_a_tracer_cannot_enter_a_static_field():
    net = make_net()

    @jax.jit
    def construct(v):
        return Linear(v, v, features=v)

    with pytest.raises(TypeError, match=r"static field 'features' of Linear holds an array"):
        construct(jnp.ones(3))

    @jax.jit
    def through_lens(n, v):
        return n.at.layers[0].features.set(v)

    with pytest.raises(TypeError, match=r"static field 'features' of Linear holds an array"):
        through_lens(net, jnp.ones(()))

    def assign(n, v):
        n.name = v

    with pytest.raises(TypeError, match=r"static field 'name' of Net holds an array"):
        jax.jit(lambda n, v: ptc.value_and_tree(assign)(n, v)[1])(net, jnp.ones(()))


def test_structure_deciding_filters_reject_traced_answers():
    net = make_net()
    with pytest.raises(TypeError, match=r"returned .*Tracer.*must return a Python bool"):
        jax.jit(lambda n: ptc.tree_mask(n, lambda v: v.sum() > 0))(net)
    with pytest.raises(TypeError, match=r"cannot compare treeclass instances holding traced"):
        jax.jit(lambda a, b: a == b)(net, net)


def test_jit_retraces_exactly_when_static_structure_changes():
    traces = []

    @jax.jit
    def f(n, x):
        traces.append(1)  # a Python side effect: runs once per trace
        params, rest = ptc.tree_partition(n, Parameter)
        return ptc.tree_merge(params, rest)(x)

    x = jnp.ones((4, 3))
    net = make_net()
    f(net, x)
    assert len(traces) == 1
    # new array values, same shapes and statics: no retrace
    f(net.at[Parameter].apply(lambda p: p + 1), x)
    f(make_net(), x)
    f(jax.tree_util.tree_map(lambda v: v * 2, net), x)
    assert len(traces) == 1
    # an equal static value held by another object: no retrace
    f(net.at.name.set("".join(["n", "et"])), x)
    assert len(traces) == 1
    # a new static value: exactly one retrace, then cached
    renamed = net.at.name.set("other")
    f(renamed, x)
    f(renamed.at[Parameter].apply(jnp.negative), x)
    assert len(traces) == 2
    # a static field deep inside: one retrace
    f(net.at.layers[1].features.set(99), x)
    assert len(traces) == 3
    # a new shape, a new number of layers: one retrace each
    f(make_net(width=3, n=3), x)
    assert len(traces) == 4
    f(net.at.mean.set(jnp.zeros((1,))), x)
    assert len(traces) == 5
    # and back to the first structure: cached, no retrace
    f(net, x)
    assert len(traces) == 5


def test_jit_of_partitioned_trees_retraces_on_hole_pattern_only():
    traces = []

    @jax.jit
    def g(params, rest):
        traces.append(1)
        return ptc.tree_merge(params, rest)

    net = make_net()
    p, r = ptc.tree_partition(net, Parameter)
    out = g(p, r)
    assert ptc.tree_equal(jax.tree_util.tree_map(np.asarray, out), net)
    g(*ptc.tree_partition(net.at[Parameter].apply(jnp.abs), Parameter))
    assert len(traces) == 1
    g(*ptc.tree_partition(net, BatchStat))  # other holes: a new structure
    assert len(traces) == 2


def test_jitted_results_match_eager_results():
    net, x = make_net(), jnp.ones((4, 3))
    eager = _everything(net, x)
    jitted = jax.jit(_everything)(net, x)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5)


def test_the_leak_detector_finds_a_planted_tracer():
    from pytreeclass import _leaf_facts

    key = ("planted-by-test",)

    @jax.jit
    def plant(v):
        _leaf_facts._KINDS_CACHE.put(key, (v,))
        return v

    plant(jnp.ones(()))
    try:
        assert any(_contains_tracer(obj) for obj in _all_cached_objects())
    finally:
        _leaf_facts._KINDS_CACHE.put(key, (None,))
    assert not any(_contains_tracer(obj) for obj in _all_cached_objects())
