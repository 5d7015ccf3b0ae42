"""Laws of filters and merging, over random nested trees (hypothesis)."""

from __future__ import annotations

import equinox as eqx
import jax
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeclass as ptc

from .strategies import filters, snapshot, trees

LAWS = settings(max_examples=80, deadline=None)


def _with_none(t):
    return jax.tree_util.tree_leaves(t, is_leaf=lambda x: x is None)


@LAWS
@given(trees, st.lists(filters, max_size=2))
def test_merge_after_partition_is_identity(tree, fs):
    before = snapshot(tree)
    a, b = ptc.tree_partition(tree, *fs)
    merged = ptc.tree_merge(a, b)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(tree)
    for x, y in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(tree)):
        assert x is y
    assert snapshot(tree) == before


@LAWS
@given(trees, st.lists(filters, max_size=2))
def test_filter_and_inverse_are_complementary(tree, fs):
    sel = _with_none(ptc.tree_filter(tree, *fs))
    inv = _with_none(ptc.tree_filter(tree, *fs, inverse=True))
    full = _with_none(tree)
    assert len(sel) == len(inv) == len(full)
    for s, i, x in zip(sel, inv, full):
        if x is None:
            assert s is None and i is None
        else:
            assert (s is x) != (i is x)
            assert s is None or i is None


def _subtrees(x):
    yield x
    kids = jax.tree_util.tree_leaves(x, is_leaf=lambda y: y is not x)
    if kids != [x]:
        for kid in kids:
            yield from _subtrees(kid)


@LAWS
@given(trees, st.lists(filters, max_size=2), st.sampled_from(["mask", "labels"]))
def test_repeated_masks_and_labels_share_no_mutable_container(tree, fs, which):
    make = (
        (lambda: ptc.tree_mask(tree, *fs)) if which == "mask" else (lambda: ptc.tree_labels(tree))
    )
    first, second = make(), make()
    assert jax.tree_util.tree_structure(first) == jax.tree_util.tree_structure(second)
    assert jax.tree_util.tree_leaves(first) == jax.tree_util.tree_leaves(second)
    mutable = [n for n in _subtrees(first) if isinstance(n, (list, dict))]
    again = {id(n) for n in _subtrees(second)}
    assert not [n for n in mutable if id(n) in again]


@LAWS
@given(trees, st.lists(filters, max_size=2))
def test_mask_agrees_with_filter(tree, fs):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    mask = treedef.flatten_up_to(ptc.tree_mask(tree, *fs))
    sel = treedef.flatten_up_to(ptc.tree_filter(tree, *fs))
    assert all(isinstance(m, bool) for m in mask)
    for m, s, x in zip(mask, sel, leaves):
        assert (s is x) if m else (s is None)


@LAWS
@given(trees, filters)
def test_interchangeable_with_equinox(tree, f):
    assert bool(eqx.tree_equal(eqx.combine(*ptc.tree_partition(tree, f)), tree))
    assert bool(eqx.tree_equal(ptc.tree_merge(*eqx.partition(tree, eqx.is_array)), tree))


@LAWS
@given(trees, filters)
def test_any_all_not_laws(tree, f):
    m = jax.tree_util.tree_leaves(ptc.tree_mask(tree, f))
    n = jax.tree_util.tree_leaves(ptc.tree_mask(tree, ptc.Not(f)))
    assert [not x for x in m] == n
    assert jax.tree_util.tree_leaves(ptc.tree_mask(tree, ptc.Any(f, ptc.Not(f)))) == [True] * len(m)
    assert jax.tree_util.tree_leaves(ptc.tree_mask(tree, ptc.All(f, ptc.Not(f)))) == [False] * len(
        m
    )


@LAWS
@given(trees)
def test_labels_and_kinds_have_the_tree_structure(tree):
    treedef = jax.tree_util.tree_structure(tree)
    labels = treedef.flatten_up_to(ptc.tree_labels(tree))
    kinds = treedef.flatten_up_to(ptc.tree_kinds(tree))
    assert labels == [("none" if k is None else k.__name__) for k in kinds]
    assert all(k is None or issubclass(k, ptc.Kind) for k in kinds)
