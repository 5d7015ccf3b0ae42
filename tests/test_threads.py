"""Eight threads hammering filters, lenses, merge, labels and construction on shared trees
get exactly the single-threaded answers (caches are shared; writes race with evictions)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import pytest

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass

from .models import Linear

N_THREADS = 8


@treeclass
class Net:
    layers: list
    mean: jax.Array = field(kind=BatchStat, default=0.0)

    def __init__(self, n: int, features: int = 2):  # a user __init__: uses the MUTABLE table
        self.layers = [
            Linear(jnp.full((2,), float(i)), jnp.zeros(()), features=features) for i in range(n)
        ]
        self.mean = jnp.zeros(())

    def update(self, x):
        self.mean = self.mean + x
        self.layers[0].b = self.layers[0].b + 1
        return self.mean


def _leaves(tree: Any) -> list[Any]:
    return jax.tree_util.tree_leaves(tree)


def _same(a: Any, b: Any) -> bool:
    return ptc.tree_equal(a, b) and jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(
        b
    )


@contextmanager
def tiny_caches() -> Iterator[None]:
    """Shrink every cache so that threads constantly evict each other's entries."""
    from pytreeclass import _filters, _labels, _leaf_facts, _partition
    from pytreeclass._lens import _select_plans

    caches = [
        _leaf_facts._KINDS_CACHE,
        _leaf_facts._PATHS_CACHE,
        _filters._MASK_CACHE,
        _partition._PLANS,
    ]
    caches += [_select_plans._PLANS, _partition._SELECTIONS, _partition._MASKS, _labels._LABELS]
    sizes = [c.maxsize for c in caches]
    interval = sys.getswitchinterval()
    try:
        for c in caches:
            c.maxsize = 4
        sys.setswitchinterval(1e-6)  # switch threads as often as possible
        yield
    finally:
        sys.setswitchinterval(interval)
        for c, n in zip(caches, sizes):
            c.maxsize = n


def _work(i: int) -> list[tuple[str, Callable[[], Any]]]:
    net = NETS[i % len(NETS)]
    return [
        ("mask", lambda: ptc.tree_mask(net, Parameter)),
        ("mask-name", lambda: ptc.tree_mask(net, "b")),
        ("partition", lambda: ptc.tree_partition(net, ptc.Any(BatchStat, "w"))),
        ("merge", lambda: ptc.tree_merge(*ptc.tree_partition(net, Parameter))),
        ("labels", lambda: ptc.tree_labels(net)),
        ("kinds", lambda: ptc.tree_kinds(net)),
        ("lens-filter", lambda: net.at[Parameter].apply(lambda x: x * 2)),
        ("lens-path", lambda: net.at.layers[-1].w.set(jnp.ones(2))),
        ("lens-static", lambda: net.at.layers[0].features.set(7)),
        ("lens-all", lambda: net.at.layers[...].b.get()),
        ("edit", lambda: ptc.value_and_tree(Net.update)(net, 1.0)),
        ("construct", lambda: Net(1 + i % 3, features=i % 5)),
    ]


NETS = [Net(n, features=f) for n in (1, 2, 3) for f in (2, 3)]


def run_threads(hammer: Callable[[int], None]) -> list[BaseException]:
    """Run `hammer(t)` for t in range(N_THREADS) at once, with tiny caches; return what raised."""
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            hammer(t)
        except BaseException as e:
            errors.append(e)

    with tiny_caches():
        threads = [threading.Thread(target=run, args=(t,)) for t in range(N_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    return errors


def test_threads_agree_with_a_single_thread():
    expected = {(i, name): fn() for i in range(len(NETS)) for name, fn in _work(i)}
    mismatches: list[tuple[int, str]] = []
    start = threading.Barrier(N_THREADS)

    def hammer(t: int) -> None:
        start.wait()
        for rep in range(12):
            for i in range(len(NETS)):
                j = (i + t + rep) % len(NETS)
                for name, fn in _work(j):
                    if not _same(fn(), expected[(j, name)]):
                        mismatches.append((j, name))

    errors = run_threads(hammer)
    assert not errors, errors[:3]
    assert not mismatches, sorted(set(mismatches))[:10]
    # nothing was left mutable, and the shared trees are untouched
    from pytreeclass._class._instance import MUTABLE

    assert not MUTABLE
    for net in NETS:
        with pytest.raises(ptc.FrozenInstanceError, match=r"cannot assign to field 'mean'"):
            net.mean = 1.0
    assert all(float(n.mean) == 0.0 for n in NETS)


def test_threads_with_distinct_structures_share_caches_safely():
    # Every thread makes its own structures (distinct static values) while the others
    # do the same: cache entries are written, evicted and read concurrently.
    wrong: list[Any] = []

    def hammer(t: int) -> None:
        for k in range(150):
            layer = Linear(jnp.ones(2), jnp.zeros(()), features=t * 1000 + k)
            tree = {f"t{t}_{k % 7}": layer, "n": 1.0}
            labels = ptc.tree_labels(tree)
            if _leaves(labels) != ["none", "Parameter", "Parameter"]:  # keys sorted
                wrong.append(labels)
            sel, rest = ptc.tree_partition(tree, Parameter)
            merged = ptc.tree_merge(sel, rest)
            if not all(x is y for x, y in zip(_leaves(merged), _leaves(tree))):
                wrong.append(merged)
            if _leaves(ptc.at(tree)[Parameter].get()) != _leaves(sel):
                wrong.append(tree)
            if merged[f"t{t}_{k % 7}"].features != layer.features:
                wrong.append(merged)

    errors = run_threads(hammer)
    assert not errors, errors[:3]
    assert not wrong, wrong[:3]
