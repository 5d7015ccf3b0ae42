"""Property-based fuzzing of every public function over random trees, filters and paths.

Each call either returns the documented result or raises a documented exception with our
message. Never allowed: an internal error (an AttributeError/IndexError/TypeError leaking
from our own code, a RecursionError), or a changed input (checked by a deep snapshot).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytreeclass as ptc
from pytreeclass import BatchStat, Kind, Parameter, Rng, State, field, treeclass

from .strategies import containers

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


class Frozen(Parameter):
    pass


@treeclass
class Block:
    w: Any
    stats: Any = field(kind=BatchStat, default=None)
    frozen: Any = field(kind=Frozen, default=None)


@treeclass
class Outer:  # a kinded field holding treeclasses: the outer kind wins
    inner: Any = field(kind=State)
    key: Any = field(kind=Rng, default=None)


_leaves = st.one_of(
    st.integers(-3, 3),
    st.floats(-2, 2, allow_nan=False, width=32),
    st.booleans(),
    st.just("text"),
    st.builds(lambda n: np.arange(n, dtype=np.float32), st.integers(0, 3)),
    st.builds(lambda n: jnp.full((n,), 0.5), st.integers(1, 2)),
    st.just(jnp.int32(7)),
)
_keys = st.sampled_from(["a", "b", "w", "x", "layers"])


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # tests/strategies.py's nesting (lists, tuples, dicts, Node, Pair) plus Block and Outer
    block = st.builds(Block, children, children, children)
    outer = st.builds(Outer, children, children)
    return containers(children, _keys, block, outer)


trees = st.recursive(st.one_of(_leaves, st.none()), _extend, max_leaves=10)

_simple_filters = st.sampled_from(
    [
        Parameter,
        BatchStat,
        State,
        Frozen,
        Rng,
        Kind,
        jax.Array,
        np.ndarray,
        int,
        float,
        bool,
        str,
        "a",
        "w",
        "x",
        "nothing",
        ptc.PathContains("layers"),
        lambda x: isinstance(x, (int, float)) and x > 0,
        lambda x: hasattr(x, "shape"),
    ]
)
good_filters = st.recursive(
    _simple_filters,
    lambda f: st.one_of(st.builds(ptc.Not, f), st.builds(ptc.Any, f, f), st.builds(ptc.All, f, f)),
    max_leaves=4,
)
bad_filters = st.sampled_from([3, 1.5, None, b"w", object(), [1, 2], {"a": "yes"}])

# What our errors may be: the documented classes, with a message we wrote.
DOCUMENTED = (TypeError, ValueError, KeyError, AttributeError, IndexError)
# Messages Python writes for bugs (an internal error leaking out of our code).
INTERNAL = re.compile(
    r"object has no attribute|not subscriptable|list index out of range|tuple index out of "
    r"range|unhashable type|object is not iterable|positional argument|NoneType|"
    r"maximum recursion depth|unsupported operand|cannot unpack|too many values"
)


def snapshot(tree: Any) -> Any:
    """Structure, node identities and leaf values: any in-place change shows up."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    nodes = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is not tree)[0]
    values = [(type(x), id(x), np.asarray(x).tolist()) for x in leaves]
    return treedef, [id(n) for n in nodes], values


def documented(exc: BaseException) -> bool:
    if isinstance(exc, RecursionError) and not isinstance(exc, ptc._errors.TreeTooDeepError):
        return False
    return isinstance(exc, DOCUMENTED) and not INTERNAL.search(str(exc))


def check_call(fn, *args, **kwargs):
    """Run `fn`; return (True, result) or (False, documented exception); fail on others."""
    before = [snapshot(a) for a in args]
    try:
        out = (True, fn(*args, **kwargs))
    except Exception as e:
        assert documented(e), f"internal error from {fn.__name__}: {type(e).__name__}: {e}"
        out = (False, e)
    assert [snapshot(a) for a in args] == before, f"{fn.__name__} mutated its input"
    return out


def leaves_identical(a: Any, b: Any) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(x is y for x, y in zip(la, lb))


def kind_leaves(tree: Any) -> list[Any]:
    """The leaves of `tree_kinds(tree)`, one per leaf of `tree` (None for kind-less)."""
    return jax.tree_util.tree_structure(tree).flatten_up_to(ptc.tree_kinds(tree))


def manual_mask(tree: Any, f: Any) -> list[bool]:
    """The mask computed leaf by leaf from the spec (kinds, types, paths, callables)."""
    paths_leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    kinds = kind_leaves(tree)

    def one(f: Any, path: Any, leaf: Any, kind: Any) -> bool:
        if isinstance(f, ptc.Not):
            return not one(f.filter, path, leaf, kind)
        if isinstance(f, ptc.Any):
            return any(one(g, path, leaf, kind) for g in f.filters)
        if isinstance(f, ptc.All):
            return all(one(g, path, leaf, kind) for g in f.filters)
        if isinstance(f, ptc.OfKind):
            f = f.kind
        if isinstance(f, ptc.OfType):
            f = f.type
        if isinstance(f, ptc.Predicate):
            f = f.fn
        if isinstance(f, ptc.PathContains):
            f = f.name
        if isinstance(f, type) and issubclass(f, Kind):
            return kind is not None and issubclass(kind, f)
        if isinstance(f, type):
            return isinstance(leaf, f)
        if isinstance(f, str):
            names = [getattr(k, "name", getattr(k, "key", None)) for k in path]
            return f in names
        return bool(f(leaf))

    return [one(f, p, x, k) for (p, x), k in zip(paths_leaves, kinds)]


# -- filters, masks, partition, merge -----------------------------------------------------------


@FUZZ
@given(trees, good_filters)
def test_mask_filter_partition_merge(tree, f):
    ok, mask = check_call(ptc.tree_mask, tree, f)
    assert ok, mask
    assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(tree)
    assert jax.tree_util.tree_leaves(mask) == manual_mask(tree, f)
    ok, parts = check_call(ptc.tree_partition, tree, f)
    assert ok
    sel, rest = parts
    assert leaves_identical(ptc.tree_filter(tree, f), sel)
    assert leaves_identical(ptc.tree_filter(tree, f, inverse=True), rest)
    ok, merged = check_call(ptc.tree_merge, sel, rest)
    assert ok and leaves_identical(merged, tree)
    # the mask itself is a filter, and selects the same leaves
    assert leaves_identical(ptc.tree_filter(tree, mask), sel)
    # several filters are combined with AND
    both = ptc.tree_mask(tree, f, ptc.Not(f))
    assert not any(jax.tree_util.tree_leaves(both))


@FUZZ
@given(trees, bad_filters)
def test_bad_filters_raise_documented_errors(tree, f):
    for fn in (ptc.tree_mask, ptc.tree_filter, ptc.tree_partition):
        ok, err = check_call(fn, tree, f)
        if not ok:
            assert isinstance(err, (TypeError, ValueError))
            assert "filter" in str(err) or "mask" in str(err)


@FUZZ
@given(trees, trees)
def test_merge_of_unrelated_trees(a, b):
    ok, out = check_call(ptc.tree_merge, a, b)
    if ok:  # the structures agree up to holes: b's leaves win where present
        ok2, out2 = check_call(ptc.tree_merge, out, b)
        assert ok2 and ptc.tree_equal(out2, out)
    else:
        assert isinstance(out, ValueError)
        assert str(out).startswith("tree_merge: the trees differ at ")


@FUZZ
@given(trees, good_filters, st.data())
def test_merge_with_partial_updates(tree, f, data):
    sel, rest = ptc.tree_partition(tree, f)
    # a None may stand for a whole subtree
    replaced = data.draw(st.sampled_from([None, sel, rest]))
    ok, out = check_call(ptc.tree_merge, tree, replaced)
    assert ok
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)


# -- kinds, labels, equality, printing ----------------------------------------------------------


@FUZZ
@given(trees)
def test_kinds_labels_equal_and_printing(tree):
    ok, kinds = check_call(ptc.tree_kinds, tree)
    assert ok
    kinds_ = jax.tree_util.tree_structure(tree).flatten_up_to(kinds)
    assert all(k is None or (isinstance(k, type) and issubclass(k, Kind)) for k in kinds_)
    ok, labels = check_call(ptc.tree_labels, tree)
    assert ok
    assert jax.tree_util.tree_leaves(labels) == [
        "none" if k is None else k.__name__ for k in kinds_
    ]
    ok, mapped = check_call(ptc.tree_labels, tree, mapping={Parameter: "p", None: "n", State: "s"})
    assert ok and set(jax.tree_util.tree_leaves(mapped)) <= {"p", "n", "s"}
    assert check_call(ptc.tree_equal, tree, tree) == (True, True)
    copy = jax.tree_util.tree_map(lambda x: x, tree)
    assert ptc.tree_equal(tree, copy)
    for show in (ptc.tree_summary, ptc.tree_diagram, repr):
        ok, text = check_call(show, tree)
        assert ok and isinstance(text, str)


@FUZZ
@given(trees, trees)
def test_tree_equal_matches_leafwise_comparison(a, b):
    ok, eq = check_call(ptc.tree_equal, a, b)
    assert ok and isinstance(eq, bool)
    if eq:
        assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


# -- lenses -------------------------------------------------------------------------------------

_steps = st.one_of(
    st.tuples(st.just("attr"), st.sampled_from(["a", "b", "w", "x", "y", "stats", "inner", "q"])),
    st.tuples(st.just("key"), st.one_of(_keys, st.integers(-3, 3))),
    st.tuples(st.just("all"), st.just(...)),
    st.tuples(st.just("filter"), good_filters),
)


class Seen:
    """A leaf wrapping the value a lens applied a function to."""

    def __init__(self, value: Any) -> None:
        self.value = value


def has_text(*trees: Any) -> bool:
    return any(isinstance(x, str) for t in trees for x in jax.tree_util.tree_leaves(t))


def build_lens(tree: Any, steps: list[tuple[str, Any]]) -> Any:
    lens = ptc.at(tree)
    for how, arg in steps:
        lens = getattr(lens, arg) if how == "attr" else lens[arg]
    return lens


def _terminal(lens: Any, which: str) -> Any:
    if which == "get":
        return lens.get()
    if which == "set":
        return lens.set(0.25)
    if which == "apply":
        return lens.apply(lambda x: x)
    return lens.set(lens.get())  # set(get()) must give back the same leaves


@FUZZ
@given(trees, st.lists(_steps, max_size=4), st.sampled_from(["get", "set", "apply", "roundtrip"]))
def test_lens_random_paths(tree, steps, which):
    ok, out = check_call(lambda t: _terminal(build_lens(t, steps), which), tree)
    if not ok:
        msg = str(out)
        assert msg.startswith(("tree", "model")) or "is not a filter" in msg, msg
        return
    if which in ("apply", "roundtrip"):
        assert leaves_identical(out, tree)
    if which == "set":
        # only the targeted leaves changed; the structure outside them is the same
        ok2, again = check_call(lambda t: build_lens(t, steps).set(0.25), out)
        assert ok2 and ptc.tree_equal(again, out)


@FUZZ
@given(trees, st.data())
def test_lens_on_existing_paths(tree, data):
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not pairs:
        return
    path, leaf = data.draw(st.sampled_from(pairs))
    lens = ptc.at(tree)
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            lens = lens[k.name] if k.name in ("get", "set", "apply") else getattr(lens, k.name)
        elif isinstance(k, jax.tree_util.DictKey):
            lens = lens[k.key]
        else:
            lens = lens[k.idx]
    ok, got = check_call(lens.get)
    assert ok and got is leaf
    marker = object()
    ok, new = check_call(lens.set, marker)
    assert ok
    i = [p for p, _ in pairs].index(path)
    new_leaves = jax.tree_util.tree_leaves(new)
    old_leaves = jax.tree_util.tree_leaves(tree)
    assert new_leaves[i] is marker
    assert all(x is y for j, (x, y) in enumerate(zip(new_leaves, old_leaves)) if j != i)


@FUZZ
@given(trees, good_filters)
def test_lens_filter_set_matches_tree_merge(tree, f):
    if isinstance(f, str):  # a bare str in brackets is a key step: spell the filter out
        f = ptc.PathContains(f)
    ok, out = check_call(lambda t: ptc.at(t)[f].set(None), tree)
    assert ok  # selected leaves became holes
    assert len(jax.tree_util.tree_leaves(out)) == manual_mask(tree, f).count(False)
    sel = ptc.tree_filter(tree, f)
    ok, applied = check_call(lambda t: ptc.at(t)[f].apply(Seen), tree)
    assert ok
    got = jax.tree_util.tree_leaves(applied)
    expect = manual_mask(tree, f)
    assert [isinstance(x, Seen) for x in got] == expect
    old = jax.tree_util.tree_leaves(tree)
    assert all((x.value if s else x) is y for x, y, s in zip(got, old, expect))
    assert leaves_identical(ptc.at(tree)[f].get(), sel)


# -- value_and_tree -----------------------------------------------------------------------------


@FUZZ
@given(trees, st.data())
def test_value_and_tree_never_touches_the_original(tree, data):
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    raise_at_end = data.draw(st.booleans())

    def edit(t):
        # assign in place at a random existing path of the copy
        if pairs and pairs[0][0]:  # not a bare leaf
            path, _ = data.draw(st.sampled_from(pairs))
            node = t
            for k in path[:-1]:
                node = _child(node, k)
            _assign(node, path[-1], "edited")
        if raise_at_end:
            raise RuntimeError("boom")
        return 1

    before = snapshot(tree)
    try:
        out, new = ptc.value_and_tree(edit)(tree)
    except RuntimeError:
        assert raise_at_end
    except Exception as e:
        # tuples and namedtuples are immutable: assigning into them is the caller's TypeError
        assert isinstance(e, (TypeError, AttributeError)), e
    else:
        assert out == 1
        if pairs and pairs[0][0]:
            assert any(isinstance(x, str) and x == "edited" for x in jax.tree_util.tree_leaves(new))
    assert snapshot(tree) == before


def _child(node: Any, k: Any) -> Any:
    if isinstance(k, jax.tree_util.GetAttrKey):
        return getattr(node, k.name)
    if isinstance(k, jax.tree_util.DictKey):
        return node[k.key]
    return node[k.idx]


def _assign(node: Any, k: Any, value: Any) -> None:
    if isinstance(k, jax.tree_util.GetAttrKey):
        setattr(node, k.name, value)
    elif isinstance(k, jax.tree_util.DictKey):
        node[k.key] = value
    else:
        node[k.idx] = value


# -- saving and loading -------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, derandomize=True)
@given(trees)
def test_save_load_roundtrip_or_documented_error(tmp_path_factory, tree):
    path = tmp_path_factory.mktemp("fuzz") / "tree.ptc"
    ok, err = check_call(ptc.tree_save, path, tree)
    text = has_text(tree)
    if not ok:
        assert text and isinstance(err, TypeError) and "only arrays" in str(err), err
        return
    assert not text
    ok, loaded = check_call(lambda: ptc.tree_load(path, like=tree))
    assert ok, loaded
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(tree)
    for x, y in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(tree)):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        assert np.array_equal(np.asarray(x), np.asarray(y))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(trees, trees)
def test_load_with_a_different_template(tmp_path_factory, saved, template):
    path = tmp_path_factory.mktemp("fuzz") / "tree.ptc"
    if has_text(saved, template):
        return
    ptc.tree_save(path, saved)
    ok, out = check_call(lambda: ptc.tree_load(path, like=template))
    if ok:
        assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(template)
    else:
        assert isinstance(out, ValueError) and str(out).startswith("tree_load: "), out


@pytest.mark.parametrize("cut", [0, 1, 10, 30, 100, 200, -100, -22, -1])
def test_load_of_truncated_file_never_escapes(tmp_path, cut):
    tree = {"w": jnp.arange(12.0).reshape(3, 4), "b": [np.int8(3), 2.5], "k": jax.random.key(0)}
    path = tmp_path / "t.ptc"
    ptc.tree_save(path, tree)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"^tree_load: cannot read .* save it again\.$"):
        ptc.tree_load(path, like=tree)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_load_of_flipped_byte_is_ok_or_valueerror(tmp_path_factory, pos, byte):
    tree = {"w": jnp.arange(12.0).reshape(3, 4), "n": 3, "b": jnp.ones(2, jnp.bfloat16)}
    path = tmp_path_factory.mktemp("flip") / "t.ptc"
    ptc.tree_save(path, tree)
    data = bytearray(path.read_bytes())
    data[pos % len(data)] = byte
    path.write_bytes(bytes(data))
    ok, out = check_call(lambda: ptc.tree_load(path, like=tree))
    if not ok:  # a flipped data byte may go unnoticed (no checksum); structure damage may not
        assert isinstance(out, ValueError) and str(out).startswith("tree_load: "), out
