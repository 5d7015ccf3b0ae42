"""Self-describing checkpoints: `tree_save` records the structure, `tree_load(path)`
rebuilds it without a template, importing nothing and unpickling nothing."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import sys
import types
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy as safetensors_numpy
from hypothesis import HealthCheck, given, settings

import pytreeclass as ptc
from pytreeclass._io._io_structure import LeafSlot, rebuild, record_structure

from .models import MLP, make_mlp
from .strategies import trees

FORMATS = ["model.npz", "model.safetensors", "model.safetensors.index.json"]


class Color(enum.Enum):
    RED = 1
    BLUE = 2


Point = collections.namedtuple("Point", ["x", "y"])


def double(x: Any) -> Any:
    return 2 * x


@ptc.treeclass
class Block:
    w: jax.Array = ptc.field(kind=ptc.Parameter)
    scale: Any = 1.0
    act: Any = ptc.field(static=True, default=jax.nn.relu)
    fn: Any = ptc.field(static=True, default=double)
    color: Color = ptc.field(static=True, default=Color.RED)
    shape: Any = ptc.field(static=True, default=(1, (2, "a"), None, True, 2.5))
    extra: Any = ptc.field(static=True, default=None)


@ptc.treeclass
class Net:
    blocks: Block = ptc.field(stack="layers")
    head: Any = None
    cls: Any = ptc.field(static=True, default=Block)


@ptc.treeclass
class Plain:
    x: Any
    n: int = ptc.field(static=True, default=0)


class SubPlain(Plain):  # an undecorated subclass: registered on its first instance
    pass


class Unregistered(Plain):  # only ever rebuilt from a structure, never instantiated
    pass


def _save(tmp_path: Path, name: str, tree: Any) -> Path:
    path = tmp_path / name
    shard = {"max_shard_size": 64} if name.endswith(".index.json") else {}
    ptc.tree_save(path, tree, **shard)
    return path


def _same(a: Any, b: Any) -> None:
    """Equal structure (classes, statics, containers), leaf types and values."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert type(x) is type(y), (type(x), type(y))
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _rich() -> Any:
    stack = ptc.tree_stack([Block(jnp.full((2,), i, jnp.float32)) for i in range(3)])
    net = Net(stack, head=Block(jnp.ones(3, jnp.bfloat16), act=jnp.tanh, color=Color.BLUE))
    return {
        "net": net,
        "plain": [Plain(np.arange(3, dtype=np.int64)), SubPlain(np.float32(2.5), n=3)],
        "numbers": (True, 7, 0.5, 1 + 2j),
        "keys": {(1, "a"): jnp.ones(1), (2, "b"): jnp.zeros(1)},
        "point": Point(jnp.zeros(2), None),
        "od": collections.OrderedDict(b=jnp.ones(1), a=np.ones((2, 2), np.uint8)),
        "key": jax.random.key(0),
        "f8": jnp.ones(2, ml_dtypes.float8_e4m3fn),
        "statics": Plain(
            jnp.zeros(()),
            n=(  # type: ignore[arg-type]
                frozenset({1, 2}),
                b"\x00\xff",
                float("inf"),
                -0.0,
                complex(1, -1),
                Point(1, "a"),
            ),
        ),
    }


@pytest.mark.parametrize("name", FORMATS)
def test_load_without_template_rebuilds_the_tree(tmp_path: Path, name: str) -> None:
    tree = _rich()
    path = _save(tmp_path, name, tree)
    out = ptc.tree_load(path)
    _same(out, tree)
    assert out["net"].head.act is jnp.tanh and out["net"].cls is Block
    assert out["net"].blocks.fn is double and out["net"].head.color is Color.BLUE
    assert type(out["od"]) is collections.OrderedDict and list(out["od"]) == ["b", "a"]
    assert type(out["plain"][1]) is SubPlain
    # the loaded model works: a stacked field is still a stack
    assert out["net"].at.blocks[1].w.get().tolist() == [1.0, 1.0]
    # and the template path gives the same
    _same(ptc.tree_load(path, like=tree), out)


@pytest.mark.parametrize("name", FORMATS[:2])
def test_load_without_template_under_jit_afterwards(tmp_path: Path, name: str) -> None:
    model = make_mlp()
    out = ptc.tree_load(_save(tmp_path, name, model))
    x = jnp.ones((1, 3))
    np.testing.assert_array_equal(jax.jit(lambda m, x: m(x))(out, x), model(x))
    grads = jax.grad(lambda m: m(x).sum())(out)
    assert jax.tree.structure(grads) == jax.tree.structure(model)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees)
def test_round_trip_law(tmp_path_factory: pytest.TempPathFactory, tree: Any) -> None:
    folder = tmp_path_factory.mktemp("law")
    for name in FORMATS[:2]:
        path = folder / name
        try:
            ptc.tree_save(path, tree)
        except ValueError as e:  # two leaves with one flat name: .safetensors refuses
            assert "flat name" in str(e)
            continue
        _same(ptc.tree_load(path), tree)


def test_equal_subtrees_are_recorded_once(tmp_path: Path) -> None:
    first, last = make_mlp().layers
    model = MLP([first] * 48 + [ptc.at(last).features.set(2)])
    structure = record_structure(model)
    # Linear (shapes are the file's), Linear with features=2, the list, the MLP
    assert len(structure["nodes"]) == 4
    out = ptc.tree_load(_save(tmp_path, "m.npz", model))
    _same(out, model)
    assert out.layers[0] is not out.layers[1]  # shared in the template, not in the result


def test_stack_axis_is_recorded_and_checked(tmp_path: Path, monkeypatch: Any) -> None:
    net = Net(ptc.tree_stack([Block(jnp.ones(2))] * 2))
    path = _save(tmp_path, "net.safetensors", net)
    entry = next(c for c in ptc.tree_info(path).structure["classes"] if "Net" in c["name"])
    assert entry["stack"] == {"blocks": "layers"}

    @ptc.treeclass
    class Net2:
        blocks: Block = ptc.field(stack="depth")
        head: Any = None
        cls: Any = ptc.field(static=True, default=Block)

    monkeypatch.setattr(sys.modules[__name__], "Net", Net2)
    with pytest.raises(ValueError, match=r"'blocks' had stack='layers', now stack='depth'"):
        ptc.tree_load(path)


def test_changed_class_lists_the_differences(tmp_path: Path, monkeypatch: Any) -> None:
    original = Plain
    path = _save(tmp_path, "p.npz", {"p": original(jnp.ones(2), n=1)})

    @ptc.treeclass
    class Renamed:
        y: Any
        z: Any = None

    monkeypatch.setattr(sys.modules[__name__], "Plain", Renamed)
    with pytest.raises(ValueError) as e:
        ptc.tree_load(path)
    msg = str(e.value)
    assert "changed since" in msg and "['p']" in msg
    assert "fields in the file but not in the class: x, n" in msg
    assert "fields in the class but not in the file: y, z" in msg

    @ptc.treeclass
    class NowChild:
        x: Any
        n: int = 0

    monkeypatch.setattr(sys.modules[__name__], "Plain", NowChild)
    with pytest.raises(ValueError, match=r"'n' was static when saved"):
        ptc.tree_load(path)
    # with a template, the file loads as before
    out = ptc.tree_load(path, like={"p": original(jnp.zeros(2), n=1)})
    assert out["p"].x.tolist() == [1.0, 1.0]


# -- what needs a template -----------------------------------------------------------------


def test_unrecordable_statics_and_nodes_need_a_template(tmp_path: Path) -> None:
    def local(x: Any) -> Any:
        return x

    @ptc.treeclass
    class Local:
        x: Any

    cases = {
        "lambda": (
            Plain(jnp.ones(1), n=lambda x: x),
            r"\['t'\]\.n holds .*<lambda> \(defined in a function\)",
        ),  # type: ignore[arg-type]
        "local function": (
            Plain(jnp.ones(1), n=local),
            r"\['t'\]\.n holds .*local \(defined in a function\)",
        ),  # type: ignore[arg-type]
        "object": (
            Plain(jnp.ones(1), n=object()),
            r"\['t'\]\.n holds an instance of object \(not a JSON value\), which a file cannot",
        ),  # type: ignore[arg-type]
        "in a tuple": (
            Plain(jnp.ones(1), n=(1, object())),
            r"\['t'\]\.n holds an instance of object",
        ),  # type: ignore[arg-type]
        "local class": (Local(jnp.ones(1)), r"\['t'\] holds a .*Local \(a class defined in a"),
        "key": ({_Frozen(1): jnp.ones(1)}, r"\['t'\] holds a dict with keys that are not JSON"),
    }
    for what, (tree, match) in cases.items():
        path = tmp_path / f"{what}.npz"
        ptc.tree_save(path, {"t": tree})  # saving always works
        with pytest.raises(ValueError, match="cannot be loaded without a template: " + match):
            ptc.tree_load(path)
        out = ptc.tree_load(path, like={"t": tree})  # and a template loads it
        assert jax.tree.structure(out) == jax.tree.structure({"t": tree})


def test_equinox_modules_need_a_template(tmp_path: Path) -> None:
    """Equinox modules are recorded as "needs a template": their classes may run code on
    construction and carry fields an unflatten cannot see; the template path works."""
    eqx = pytest.importorskip("equinox")
    lin = eqx.nn.Linear(2, 3, key=jax.random.key(0))
    tree = {"net": Plain(lin)}
    path = _save(tmp_path, "eqx.safetensors", tree)
    with pytest.raises(
        ValueError, match=r"\['net'\]\.x holds an instance of equinox\.nn\..*Linear"
    ):
        ptc.tree_load(path)
    out = ptc.tree_load(path, like=tree)
    np.testing.assert_array_equal(out["net"].x.weight, lin.weight)


def test_file_without_structure_needs_a_template(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    safetensors_numpy.save_file({"w": np.ones(2, np.float32)}, str(path))
    with pytest.raises(ValueError, match=r"records no tree structure .* pass like="):
        ptc.tree_load(path)
    assert ptc.tree_load(path, like={"w": np.zeros(2, np.float32)})["w"].tolist() == [1, 1]


# -- safety: nothing imported, no hooks run ------------------------------------------------


def _with_structure(tmp_path: Path, edit: Any) -> Path:
    """An `.npz` file whose recorded structure `edit(structure)` changed."""
    import zipfile

    src = _save(tmp_path, "src.npz", {"p": Plain(jnp.ones(2), n=1)})
    dst = tmp_path / "edited.npz"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "__manifest__.json":
                manifest = json.loads(data)
                edit(manifest["structure"])
                data = json.dumps(manifest).encode()
            zout.writestr(info, data)
    return dst


def test_a_class_of_a_module_not_imported_is_not_imported(tmp_path: Path) -> None:
    name = "ptc_test_never_imported_module"

    def edit(s: dict[str, Any]) -> None:
        s["classes"][0]["name"] = f"{name}:Plain"

    with pytest.raises(ValueError, match=f"module '{name}' is not imported; loading never"):
        ptc.tree_load(_with_structure(tmp_path, edit))
    assert name not in sys.modules


def test_lookups_run_no_module_getattr_hook(tmp_path: Path, monkeypatch: Any) -> None:
    calls = []
    module = types.ModuleType("ptc_test_lazy_module")
    module.__getattr__ = lambda attr: calls.append(attr) or Plain  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def edit(s: dict[str, Any]) -> None:
        s["classes"][0]["name"] = "ptc_test_lazy_module:Plain"

    with pytest.raises(ValueError, match="which module 'ptc_test_lazy_module' does not define"):
        ptc.tree_load(_with_structure(tmp_path, edit))
    assert calls == []


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("builtins:dict", "names builtins.dict as the class at .*, but that is not a treeclass"),
        ("os:path.join", "but that is not a treeclass"),
    ],
)
def test_only_treeclasses_are_rebuilt_by_name(tmp_path: Path, name: str, match: str) -> None:
    def edit(s: dict[str, Any]) -> None:
        s["classes"][0]["name"] = name

    with pytest.raises(ValueError, match=match):
        ptc.tree_load(_with_structure(tmp_path, edit))


@pytest.mark.parametrize(
    ("static", "match"),
    [
        ({"ref": "ptc_test_nowhere:f"}, r"function or class ptc_test_nowhere\.f at \['p'\]\.n"),
        ({"enum": "builtins:int", "name": "X"}, r"the enum builtins\.int at .*not defined"),
        ({"enum": f"{__name__}:Color", "name": "GREEN"}, "Color.GREEN at .*no longer has"),
        ({"namedtuple": "builtins:tuple", "items": []}, r"the namedtuple builtins\.tuple"),
        ({"needs": "a Widget"}, r"\['p'\]\.n holds a Widget, which a file cannot describe"),
    ],
)
def test_named_statics_resolve_only_to_defined_objects(
    tmp_path: Path, static: Any, match: str
) -> None:
    def edit(s: dict[str, Any]) -> None:
        s["nodes"][-2]["static"] = [static]  # the Plain node (the dict is last)

    with pytest.raises(ValueError, match=match):
        ptc.tree_load(_with_structure(tmp_path, edit))


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(version=99),
        lambda s: s.update(root=len(s["nodes"])),  # a reference past the table
        lambda s: s["nodes"][0].update(fields=[1]),  # a node containing its parent
        lambda s: s["nodes"][0].update(fields=["tensor"]),  # an unknown leaf kind
        lambda s: s["nodes"][0].update(fields=[]),  # field count
        lambda s: s["nodes"][0].update(static=[{"what": 1}]),
        lambda s: s["nodes"][0].update(static=[{"bytes": "zz"}]),
        lambda s: s["nodes"].append({"set": []}) or s.update(root=2),
        lambda s: s["classes"][0].update(fields="x"),
        lambda s: s.update(classes=[{}]),
        lambda s: s["nodes"][1].update(dict=[["p"]]),
        lambda s: s["nodes"][1].update(dict=[["p", None]]),  # leaves the file has, unclaimed
    ],
)
def test_malformed_structures_are_corrupt_files(tmp_path: Path, edit: Any) -> None:
    with pytest.raises(ValueError, match=r"recorded structure .*truncated, corrupt"):
        ptc.tree_load(_with_structure(tmp_path, edit))


def test_an_undecorated_subclass_registers_when_rebuilt() -> None:
    structure = {
        "version": 1,
        "classes": [
            {"name": f"{__name__}:Unregistered", "fields": ["x"], "static": ["n"], "stack": {}}
        ],
        "nodes": [{"class": 0, "fields": ["jax"], "static": [5]}],
        "root": 0,
    }
    out = rebuild("tree_load", "'f'", structure)
    assert type(out) is Unregistered and out.n == 5 and isinstance(out.x, LeafSlot)
    assert jax.tree.leaves(out) == [out.x]  # a registered pytree, not one opaque leaf


def test_static_values_keep_tuple_list_dict_distinct() -> None:
    value = ((1, [2, {"a": (3,)}]), [(), []], {1: "x", "1": "y"})
    structure = record_structure(Plain(jnp.ones(1), n=_Frozen(value)))  # type: ignore[arg-type]
    # a hashable wrapper is not a JSON value: recorded as needing a template
    assert "needs" in structure["nodes"][0]["static"][0]
    structure = record_structure(Plain(jnp.ones(1), n=0))
    structure["nodes"][0]["static"] = [json.loads(json.dumps(_encode(value)))]
    out = rebuild("tree_load", "'f'", structure)
    assert out.n == value and type(out.n[0][1]) is list and type(out.n[1][0]) is tuple


@dataclasses.dataclass(frozen=True)
class _Frozen:
    v: Any

    def __hash__(self) -> int:
        return 0


def _encode(v: Any) -> Any:
    from pytreeclass._io._io_structure import encode_value

    return encode_value(v)


def test_a_named_object_must_be_found_under_its_own_name(tmp_path: Path) -> None:
    """A function whose recorded name leads to another object is not recorded by name:
    loading would silently swap it."""

    def impostor(x: Any) -> Any:
        return x

    impostor.__module__, impostor.__qualname__ = __name__, "double"
    path = _save(tmp_path, "swap.npz", {"t": Plain(jnp.ones(1), n=impostor)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"holds double \(not found under its own name\)"):
        ptc.tree_load(path)
    path = _save(tmp_path, "ok.npz", {"t": Plain(jnp.ones(1), n=double)})  # type: ignore[arg-type]
    assert ptc.tree_load(path)["t"].n is double


def test_trees_deeper_than_the_recursion_limit() -> None:
    """Saving works where flattening does; a template-free load then needs a template
    (recorded), and a rebuild that recurses too deep is a TreeTooDeepError."""
    tree: Any = jnp.ones(1)
    for _ in range(150):
        tree = [tree]
    structure = record_structure(tree)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(120)  # below this test's own depth + 150: the walk hits it
    try:
        shallow = record_structure(tree)
        with pytest.raises(ptc.TreeTooDeepError, match="tree_load"):
            rebuild("tree_load", "'f'", structure)
    finally:
        sys.setrecursionlimit(old)
    assert shallow["nodes"] == [{"template": "a tree nested deeper than Python's recursion limit"}]
    assert jax.tree.structure(rebuild("tree_load", "'f'", structure)) == jax.tree.structure(tree)
