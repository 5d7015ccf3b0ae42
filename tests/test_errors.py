"""The error table (API.md section 8), row by row, plus rows found while fuzzing.

Every message must say what was wrong (naming the field or key path) and how to fix it, so
each test matches both halves of the message.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sys
import zipfile
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass
from pytreeclass._errors import TreeTooDeepError

from .models import Linear
from .versions import JAX_FLATTEN_RECURSES


@treeclass
class MLP:
    layers: list
    mean: jax.Array = field(kind=BatchStat, default=0.0)


def make_mlp(n: int = 2, width: int = 2) -> MLP:
    return MLP([Linear(jnp.ones((width, width)), jnp.zeros(width), features=2) for _ in range(n)])


# -- assigning to a frozen instance -------------------------------------------------------------


def test_assign_to_frozen_field_names_field_and_fix():
    m = make_mlp()
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"cannot assign to field 'w'"):
        m.layers[0].w = jnp.zeros((2, 2))
    with pytest.raises(ptc.FrozenInstanceError, match=re.escape("obj.at.w.set(value)")):
        m.layers[0].w = jnp.zeros((2, 2))
    with pytest.raises(ptc.FrozenInstanceError, match=re.escape("dataclasses.replace(obj, w=")):
        m.layers[0].w = jnp.zeros((2, 2))


def test_delete_frozen_field():
    with pytest.raises(
        dataclasses.FrozenInstanceError, match=r"(?s)cannot delete field 'b'.*obj\.at"
    ):
        del make_mlp().layers[0].b


def test_assign_non_field_says_it_would_be_dropped():
    with pytest.raises(ptc.FrozenInstanceError, match=r"'extra'.*not a field.*Fields: w, b"):
        make_mlp().layers[0].extra = 1


def test_frozen_after_value_and_tree_returns():
    leaked = []
    ptc.value_and_tree(leaked.append)(make_mlp())
    with pytest.raises(ptc.FrozenInstanceError, match=r"cannot assign to field 'layers'"):
        leaked[0].layers = []


def test_value_and_tree_rejects_non_field_assignment():
    def fn(m):
        m.extra = 1

    with pytest.raises(AttributeError, match=r"cannot set 'extra' on MLP: it is not a field"):
        ptc.value_and_tree(fn)(make_mlp())


# -- missing required field ---------------------------------------------------------------------


def test_missing_required_field_generated_init():
    with pytest.raises(TypeError, match=r"missing 1 required positional argument: 'b'"):
        Linear(jnp.ones(2))  # type: ignore[call-arg]


def test_missing_required_field_user_init():
    @treeclass
    class Custom:
        a: int
        b: int

        def __init__(self, a):
            self.a = a

    with pytest.raises(TypeError, match=r"without setting field\(s\) 'b'.*self\.b = \.\.\."):
        Custom(1)


def test_missing_init_false_field_without_default():
    @treeclass
    class Late:
        a: int
        b: int = field(init=False)

    with pytest.raises(TypeError, match=r"field\(s\) 'b'.*give them a default"):
        Late(1)


# -- static fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, pattern",
    [
        (
            jnp.ones(3),
            r"static field 'features' of Linear holds an array \(f32\[3\]\).*drop static=True",
        ),
        (np.ones((2, 2)), r"holds an array \(f64\[2,2\]\).*hashable Python value"),
        ([1, 2], r"holds an unhashable list \(\[1, 2\]\).*a tuple instead of a list"),
        ({"a": 1}, r"unhashable dict.*make it a normal field"),
        ({1, 2}, r"unhashable set.*a frozenset instead of a set"),
    ],
    ids=["jax-array", "numpy-array", "list", "dict", "set"],
)
def test_static_field_rejects_arrays_and_unhashables(value, pattern):
    with pytest.raises(TypeError, match=pattern):
        Linear(jnp.ones(2), jnp.ones(2), features=value)


def test_static_check_applies_to_defaults_converters_and_updates():
    with pytest.raises(TypeError, match=r"static field 'n' of Bad holds an unhashable list"):

        @treeclass
        class Bad:
            n: list = field(static=True, default=(1,), converter=list)

        Bad()
    layer = Linear(jnp.ones(2), jnp.ones(2))
    with pytest.raises(TypeError, match=r"static field 'features' of Linear holds an array"):
        layer.at.features.set(jnp.ones(2))
    with pytest.raises(TypeError, match=r"static field 'features' of Linear holds an unhashable"):
        dataclasses.replace(layer, features=[1])

    def edit(m):
        m.features = np.zeros(2)

    with pytest.raises(TypeError, match=r"static field 'features' of Linear holds an array"):
        ptc.value_and_tree(edit)(layer)


# -- tree_merge of mismatched structures --------------------------------------------------------


def test_merge_mismatch_names_first_differing_path():
    with pytest.raises(ValueError, match=r"tree_merge: the trees differ at \['a'\]\[1\].*None may"):
        ptc.tree_merge({"a": [1, 2]}, {"a": [None, (3, 4)]})
    with pytest.raises(ValueError, match=r"differ at the root: tree 0 has dict.*tree 1 has dict"):
        ptc.tree_merge({"a": 1}, {"b": 2})
    with pytest.raises(ValueError, match=r"tree 0 has tuple.*tree 1 has list"):
        ptc.tree_merge((1, 2), [1, 2])


def test_merge_mismatch_leaf_versus_subtree_reads_well():
    with pytest.raises(
        ValueError, match=r"differ at \['a'\]: tree 1 has dict .* tree 0 has leaf 1\."
    ):
        ptc.tree_merge({"a": 1}, {"a": {"b": 2}})


def test_merge_mismatch_in_static_fields_names_them():
    a = Linear(jnp.ones(2), jnp.ones(2), features=2)
    b = Linear(None, jnp.ones(2), features=3)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"Linear nodes whose static parts differ \(features: 2 vs 3\)"
    ):
        ptc.tree_merge(a, b)
    m1, m2 = make_mlp(), make_mlp()
    m2 = m2.at.layers[1].features.set(5)
    with pytest.raises(ValueError, match=r"differ at \.layers\[1\].*features: 2 vs 5"):
        ptc.tree_merge(*ptc.tree_partition(m1, Parameter)[:1], m2)


# -- lens steps that do not exist ---------------------------------------------------------------


@pytest.mark.parametrize(
    "build, exc, pattern",
    [
        (lambda m: m.at.layer, AttributeError, r"model\.layer: no field 'layer'; fields: layers"),
        (
            lambda m: m.at.layers[0].q,
            AttributeError,
            r"model\.layers\[0\]\.q: no field 'q'; fields: w, b",
        ),
        (lambda m: m.at.layers[7], IndexError, r"model\.layers\[7\]: index out of range \(len 2\)"),
        (lambda m: m.at.layers[-3], IndexError, r"model\.layers\[-3\]: index out of range"),
        (lambda m: m.at.layers["a"], KeyError, r"model\.layers\['a'\]: list is indexed by int"),
        (lambda m: m.at.layers[0].w.foo, AttributeError, r"cannot step into the leaf f32\[2,2\]"),
        (lambda m: m.at.layers[...].q, AttributeError, r"model\.layers\[\.\.\.\]\.q: no child \.q"),
        (lambda m: ptc.at({"a": 1})["b"], KeyError, r"tree\['b'\]: no key 'b'; keys: 'a'"),
        (
            lambda m: ptc.at({"a": 1}).a,
            AttributeError,
            r"dict has keys, not attributes; write \['a'\]",
        ),
        (lambda m: ptc.at(None).a, AttributeError, r"tree\.a: the value at tree is None"),
    ],
    ids=[
        "attr",
        "deep-attr",
        "index",
        "neg-index",
        "key-on-list",
        "into-leaf",
        "after-all",
        "dict-key",
        "attr-on-dict",
        "none",
    ],
)
def test_lens_missing_step_names_full_path(build, exc, pattern):
    lens = build(make_mlp())
    for terminal in (lambda lz: lz.get(), lambda lz: lz.set(0.0), lambda lz: lz.apply(abs)):
        with pytest.raises(exc, match=pattern):
            terminal(lens)


def test_lens_misuse():
    m = make_mlp()
    with pytest.raises(AttributeError, match=re.escape("Write `.at.x.set(value)`")):
        m.at.x = 1  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"a Lens is not iterable; end the path with \.get\(\)"):
        list(m.at)


# -- lens set with a tree of the wrong structure ------------------------------------------------


def test_lens_set_wrong_structure():
    m = make_mlp()
    with pytest.raises(ValueError, match=r"model\[Parameter\]\.set\(\): the value does not match"):
        m.at[Parameter].set([1.0, 2.0])
    with pytest.raises(ValueError, match=r"model\.layers\[\.\.\.\]\.set\(\).*Pass a single leaf"):
        m.at.layers[...].set({"a": 1.0})
    # a leaf where the selection holds a whole subtree
    bad = [Linear(jnp.ones(2), None, 2), 3.0]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"the value has the leaf 3\.0 at \[1\].*subtree with 2"):
        m.at.layers[...].set(bad)


# -- unknown filter types -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [3, 1.5, None, b"w", object()], ids=lambda b: type(b).__name__)
def test_unknown_filter_type(bad):
    tree = {"w": 1.0}
    for call in (ptc.tree_mask, ptc.tree_filter, ptc.tree_partition):
        with pytest.raises(TypeError, match=r"is not a filter\b.*A filter is a Kind subclass"):
            call(tree, bad)
    with pytest.raises(TypeError, match=r"is not a filter"):
        ptc.tree_mask(tree, ptc.Any(float, bad))
    with pytest.raises(TypeError, match=r"is not a filter"):
        ptc.tree_mask(tree, ptc.Not(bad))
    if not isinstance(bad, int):  # an int in brackets is an index step, not a filter
        with pytest.raises(TypeError, match=r"is not a filter"):
            ptc.at(tree)[bad].get()


def test_none_is_only_the_mask_of_a_leafless_tree():
    assert ptc.tree_filter(None, ptc.tree_mask(None)) is None
    assert ptc.tree_partition([None, {}], None) == ([None, {}], [None, {}])
    with pytest.raises(TypeError, match=r"None is not a filter \(it is only the mask of a tree"):
        ptc.tree_mask({"a": 1}, None)
    with pytest.raises(TypeError, match=r"None is not a filter"):
        ptc.at({"a": 1})[None].set(2)


def test_mask_filter_errors():
    tree = {"a": 1, "b": 2}
    with pytest.raises(
        ValueError, match=r"mask filter does not match the tree: .*a bool may stand"
    ):
        ptc.tree_mask(tree, {"a": True})
    with pytest.raises(
        TypeError,
        match=r"a dict used as a filter must be a mask, a pytree of bools, but its leaf at \['b'\]",
    ):
        ptc.tree_mask(tree, {"a": True, "b": np.ones(2, bool)})


def test_predicate_must_return_a_bool():
    with pytest.raises(TypeError, match=r"returned ArrayImpl for the leaf at \['a'\].*Python bool"):
        ptc.tree_mask({"a": 1.0}, lambda x: jnp.ones(2))


# -- rows found while fuzzing -------------------------------------------------------------------


def test_tree_labels_mapping_must_be_a_mapping():
    with pytest.raises(TypeError, match=r"tree_labels\(mapping=3\): mapping must be a dict"):
        ptc.tree_labels({"a": 1.0}, 3)  # type: ignore[arg-type]


def test_kinds_are_classes_not_instances():
    with pytest.raises(
        TypeError, match=r"write field\(kind=Parameter\), not field\(kind=Parameter\(\)\)"
    ):
        Parameter()
    with pytest.raises(TypeError, match=r"field\(kind=\.\.\.\): <class 'int'> is not a kind"):
        field(kind=int)
    with pytest.raises(ValueError, match=r"a static field has no leaves.*Drop one of the two"):
        field(kind=Parameter, static=True)


def test_too_deep_tree_gives_clear_error():
    deep: object = 1.0
    for _ in range(sys.getrecursionlimit() + 100):
        deep = [deep]
    # tree_merge's own walk recurses once per level: too deep with every JAX.
    with pytest.raises(RecursionError, match=r"sys\.setrecursionlimit"):
        ptc.tree_merge(deep, deep)
    if not JAX_FLATTEN_RECURSES:  # newer JAX flattens it; then these work (tests/test_scale.py)
        assert jax.tree_util.tree_leaves(ptc.tree_mask(deep, float)) == [True]
        return
    with pytest.raises(TreeTooDeepError, match=r"tree_mask: the tree is nested too deeply"):
        ptc.tree_mask(deep, float)
    with pytest.raises(ValueError, match=r"tree_kinds: .*Make the nesting shallower"):
        ptc.tree_kinds(deep)


def test_reference_cycle_gives_clear_error():
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(TreeTooDeepError, match=r"tree_partition: .*reference cycle"):
        ptc.tree_partition(cyclic, float)
    with pytest.raises(TreeTooDeepError, match=r"tree_labels: .*break the cycle"):
        ptc.tree_labels(cyclic)


def test_tree_save_refuses_non_array_leaves(tmp_path):
    with pytest.raises(TypeError, match=r"the leaf at \['a'\] is a str; only arrays.*static field"):
        ptc.tree_save(tmp_path / "x", {"a": "text"})
    with pytest.raises(TypeError, match=r"abstract .*save concrete arrays, outside jax\.jit"):
        jax.jit(lambda x: ptc.tree_save(tmp_path / "y", x) or x)(jnp.ones(2))
    assert not os.listdir(tmp_path)  # nothing half-written


# -- tree_load ----------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.ptc"
    ptc.tree_save(path, make_mlp())
    return path


def test_load_shape_mismatch(saved):
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at \.layers\[0\]\.w: the file has float32\[2,2\], the template float32\[3,3\]",
    ):
        ptc.tree_load(saved, like=make_mlp(width=3))


def test_load_dtype_mismatch(saved):
    like = make_mlp().at[Parameter].apply(lambda x: x.astype(jnp.bfloat16))
    with pytest.raises(
        ValueError, match=r"dtype mismatch at \.layers\[0\]\.w.*template bfloat16\[2,2\]"
    ):
        ptc.tree_load(saved, like=like)


def test_load_other_model_version_lists_missing_and_unexpected_paths(saved):
    with pytest.raises(
        ValueError,
        match=r"\(2 missing from the file\)\.\n  missing from the file: \.layers\[2\]\.w "
        r"\(closest in the file: \.layers\[1\]\.w\), \.layers\[2\]\.b .*\n.*different version",
    ):
        ptc.tree_load(saved, like=make_mlp(3))
    with pytest.raises(
        ValueError,
        match=r"in the file but not the template: \.layers\[1\]\.w \(closest in the template: "
        r"\.layers\[0\]\.w\), \.layers\[1\]\.b",
    ):
        ptc.tree_load(saved, like=make_mlp(1))

    @treeclass
    class Renamed:
        layers: list
        avg: jax.Array = field(kind=BatchStat, default=0.0)

    with pytest.raises(
        ValueError,
        match=r"missing from the file: \.avg\n  in the file but not the template: \.mean\n",
    ):
        ptc.tree_load(saved, like=Renamed(make_mlp().layers))


def _rewrite(src, dst, edit):
    """Copy zip `src` to `dst`, letting `edit(name, data)` change (or drop: None) entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


def test_load_corrupt_files(saved, tmp_path):
    raw = saved.read_bytes()
    cases = {
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "garbage": b"not a zip file at all" * 20,
    }
    for name, data in cases.items():
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(
            ValueError, match=r"cannot read .*not a complete zip archive.*save it again"
        ):
            ptc.tree_load(bad, like=make_mlp())

    bad = tmp_path / "no-manifest"
    _rewrite(saved, bad, lambda n, d: None if n == "__manifest__.json" else d)
    with pytest.raises(
        ValueError, match=r"it has no __manifest__\.json\. The file is truncated, corrupt"
    ):
        ptc.tree_load(bad, like=make_mlp())

    bad = tmp_path / "bad-json"
    _rewrite(saved, bad, lambda n, d: b"{not json" if n == "__manifest__.json" else d)
    with pytest.raises(ValueError, match=r"its manifest is not valid JSON"):
        ptc.tree_load(bad, like=make_mlp())

    bad = tmp_path / "missing-entry"
    _rewrite(saved, bad, lambda n, d: None if n == "float32.npy" else d)
    with pytest.raises(ValueError, match=r"the data for float32\.npy is missing"):
        ptc.tree_load(bad, like=make_mlp())

    bad = tmp_path / "short-entry"
    _rewrite(saved, bad, lambda n, d: d[:-4] if n == "float32.npy" else d)
    with pytest.raises(
        ValueError, match=r"the data for float32\.npy is damaged \(its header says \d+ bytes"
    ):
        ptc.tree_load(bad, like=make_mlp())

    bad = tmp_path / "lying-manifest"

    def grow(n, d):
        if n != "__manifest__.json":
            return d
        header = json.loads(d)
        (row,) = [r for r in header["leaves"] if r[0] == ".layers[0].b"]
        row[2] = [3]
        return json.dumps(header).encode()

    _rewrite(saved, bad, grow)
    like = make_mlp().at.layers[0].b.set(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"float32\.npy holds \d+ bytes but its leaves need \d+"):
        ptc.tree_load(bad, like=like)


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_never_unpickles(tmp_path):
    marker = str(tmp_path / "code-ran")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    header = {
        "format": "pytreeclass.tree",
        "version": 1,
        "leaves": [{"path": "['a']", "shape": [1], "dtype": "float32"}],
    }
    path = tmp_path / "evil.ptc"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__manifest__.json", json.dumps(header))
        zf.writestr("['a'].npy", buf.getvalue())
    with pytest.raises(
        ValueError, match=r"holds Python objects \(a pickle\); tree_load never unpickles"
    ):
        ptc.tree_load(path, like={"a": jnp.zeros(1)})
    assert not os.path.exists(marker)

    import pickle

    pickled = tmp_path / "plain.pkl"
    pickled.write_bytes(pickle.dumps({"a": _Payload(marker)}))
    with pytest.raises(ValueError, match=r"plain\.pkl' is a pickle .* never unpickles"):
        ptc.tree_load(pickled, like={"a": jnp.zeros(1)})
    assert not os.path.exists(marker)


def test_load_numpy_npz_without_manifest_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.ones(2))
    with pytest.raises(
        ValueError, match=r"has no __manifest__\.json.*not written by ptc\.tree_save"
    ):
        ptc.tree_load(path, like={"a": jnp.zeros(2)})


def test_load_newer_format_version_says_upgrade(saved, tmp_path):
    bad = tmp_path / "v3"

    def bump(n, d):
        if n != "__manifest__.json":
            return d
        header = json.loads(d)
        header["version"] = 3
        return json.dumps(header).encode()

    _rewrite(saved, bad, bump)
    with pytest.raises(
        ValueError, match=r"format version 3; this pytreeclass reads versions 1 and 2\. Upgrade"
    ):
        ptc.tree_load(bad, like=make_mlp())


Point = namedtuple("Point", "x y")


def test_error_paths_name_namedtuple_fields():
    with pytest.raises(AttributeError, match=r"tree\.z: no field 'z'; fields: x, y"):
        ptc.at(Point(1, 2)).z.get()
