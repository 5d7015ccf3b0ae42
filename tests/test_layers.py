"""The package is layered, and this test keeps it so.

Every module of `pytreeclass` belongs to one layer below. A module imports only from
lower layers, or from modules listed before it in its own layer; modules of L4 never
import each other. Every import counts: module-level, function-level and those under
`if TYPE_CHECKING:` (a type-only import still ties the modules together for readers and
type checkers, and is the usual first step of a cycle). So there is no import cycle, and
each layer can be read, tested and changed knowing only the layers below it.

L0  generic, no treeclass knowledge: the error types and the one depth guard (`_errors`),
    the bounded caches (`_cache`), code generation (`_codegen`), and the pytree helpers
    every layer needs (`_tree_util`: one-level flatten, what an array is, key names, the
    short form of a leaf, merging structures and where two structures differ); the
    per-thread frames `capture` records into, which `scan_layers` lifts out of its scan
    body (`_record`); and the
    leaf I/O both `_io` and `_weights` build on (`_io_file`: atomic writes and chunked
    reads; `_io_leaves`: flat names, leaves to and from host arrays, the checks against a
    template; `_io_npz`, `_io_safetensors`: the two file formats; `_io_shards`: a
    checkpoint as one file or Hugging Face shards with their index; `_io_read`:
    `tree_read` / `tree_info`, which need no treeclass knowledge).
L1  the class protocol: kinds (`_kinds`), `Field` (`_field`), the class metadata every
    other module reads through `meta_of`, with the static check and the one copy helper
    `with_field` (`_meta`), and what runs per instance (`_instance`).
L2  selection: what kind of node a value is (`_node_codes`, read by the I/O structure
    record too), per-leaf facts cached per treedef (kinds, axes, key paths: `_leaf_facts`),
    filters (`_filters`), partition/merge (`_partition`), dtype casts of selected
    leaves (`_cast`), labels (`_labels`).
L3  editing: the node-kind table (`_nodes/`: one class per kind of node, reading, keying
    and rebuilding it, and the table from types to kinds), path steps (`_lens_steps`),
    the single-path walk (`_lens_walk`), the selection engine (`_select`), compiled
    updates (`_lens_compile`), `Lens`/`at` (`_lens`), and `value_and_tree`.
L4  peripherals that use the layers below and nothing beside them: `tree_equal`
    (`_equal`), the treeclass `repr` and notebook HTML (`_repr`), summaries and diagrams
    (`_summary`), sharding (`_shard`), saving and loading (`_io`), flat weight dicts
    (`_weights`), recording node outputs during a call (`_capture`, built on the lens).
L5  assembly: the methods every treeclass gets (`_methods`), `@treeclass`/`TreeClass`
    (`_treeclass`), and `Optimizer`, itself a treeclass (`_optim`).

Changes from the plan in STYLE.md, and why:

* "Structure diff" sits in L0 (`_tree_util.merge_nodes`/`first_difference`) together with
  the merge walk it is part of: it names differing static fields through the dataclass
  protocol (`dataclasses.fields` minus the children), so it needs no treeclass metadata.
* Per-leaf kinds and axes (L2) live apart from the kind classes (L1): `field()` checks a
  kind when a class is defined, long before any tree is walked.
* `tree_equal` is an L4 peripheral: only the assembled `==` (L5) needs it.
* The leaf I/O and the file formats sit in L0, not beside `_io` in L4: they know nothing
  of treeclasses (leaves, key paths, bytes), and two peripherals share them (`_io` saves
  and loads files, `_weights` converts flat dicts with the same names and checks).
* The recorded structure of a saved tree (`_io_structure`) sits at the end of L2, not
  with the other I/O in L0: it reads the class metadata (L1) to record and rebuild
  treeclass instances, and `_io` (L4) is its only user.
* The rules between a tree's leaves and flat names (`_io_rules`: numbered layers of
  stacked fields, rename and transform rules both ways) and the import plan that both
  `tree_from_dict` and `tree_load` run (`_io_import`) sit at the end of L2: they need
  the stack sites of `_stack`, and two peripherals share them, which may not import
  each other.
* Within a layer, order matters only where one module builds on another (`_meta` reads
  `Field`, `_instance` uses `_meta`); the order below is that dependency order.

Besides the layering, this checks the other architecture rules: a private name
(`_x`) never crosses a module boundary, every name a module imports from another is in
that module's `__all__` (its documented internal interface), the class metadata
attribute is touched only by the class protocol, and the copy that compiled lens updates
write out inline agrees with `_meta.with_field`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jax.numpy as jnp
import pytest

import pytreeclass as ptc
from pytreeclass._class import _meta
from pytreeclass._lens._lens_steps import PathStep
from pytreeclass._lens._lens_walk import put

PACKAGE = Path(ptc.__file__).resolve().parent

LAYERS: list[tuple[str, list[str]]] = [
    (
        "L0 generic",
        [
            "_errors",
            "_cache",
            "_codegen",
            "_tree_util",
            "_record",
            "_io_file",
            "_io_leaves",
            "_io_npz",
            "_io_safetensors",
            "_io_shards",
            "_io_read",
        ],
    ),
    ("L1 class protocol", ["_kinds", "_field", "_meta", "_instance"]),
    (
        "L2 selection",
        [
            "_node_codes",
            "_leaf_facts",
            "_stack",
            "_filters",
            "_partition",
            "_cast",
            "_labels",
            "_io_rules",
            "_io_import",
            "_io_structure",
        ],
    ),
    (
        "L3 editing",
        [
            "_node_kind",
            "_node_containers",
            "_node_modules",
            "_node_stack",
            "_node_table",
            "_lens_steps",
            "_lens_walk",
            "_select",
            "_select_edit",
            "_select_plans",
            "_lens_compile",
            "_lens",
            "_value_and_tree",
        ],
    ),
    (
        "L4 peripherals",
        ["_equal", "_repr", "_summary", "_shard", "_io", "_weights", "_rng", "_capture"],
    ),
    ("L5 assembly", ["_methods", "_treeclass", "_optim"]),
]
PERIPHERALS = "L4 peripherals"

# module -> (layer index, position in its layer)
RANK = {m: (i, j) for i, (_, mods) in enumerate(LAYERS) for j, m in enumerate(mods)}
LAYER_NAME = {m: name for name, mods in LAYERS for m in mods}

# The only modules that may touch `__ptc_meta__` by name: `_meta` reads it (`meta_of`),
# `_instance` is the per-instance half of the protocol, `_treeclass` writes it once per class.
META_OWNERS = {"_meta", "_instance", "_treeclass"}


# Modules by file name, wherever they sit: the folders `_class/`, `_lens/` and `_io/`
# group them for readers (each has a README); the layers are what the imports obey.
PATHS = {p.stem: p for p in sorted(PACKAGE.rglob("*.py")) if p.stem != "__init__"}


def _modules() -> dict[str, ast.Module]:
    return {m: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for m, p in PATHS.items()}


MODULES = _modules()


def _imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(package module, names imported from it, line) for every import anywhere in `tree`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level and node.module is None:  # from . import _x
                out.extend((a.name, [], node.lineno) for a in node.names)
            elif node.level:  # from ._x import y, from .._lens._x import y
                out.append((node.module.split(".")[-1], [a.name for a in node.names], node.lineno))
            elif node.module == "pytreeclass" or (
                node.module in {f"pytreeclass.{g}" for g in ("_class", "_lens", "_io")}
            ):
                out.extend((a.name, [], node.lineno) for a in node.names if a.name[0] == "_")
            elif node.module and node.module.startswith("pytreeclass."):
                out.append((node.module.split(".")[-1], [a.name for a in node.names], node.lineno))
            else:
                assert node.level == 0, f"line {node.lineno}: relative import beyond the package"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("pytreeclass."):
                    out.append((a.name.split(".")[-1], [], node.lineno))
    return out


def _all(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


def test_every_module_has_a_layer() -> None:
    assert set(MODULES) == set(RANK), (
        f"not in LAYERS: {sorted(set(MODULES) - set(RANK))}; "
        f"listed but missing: {sorted(set(RANK) - set(MODULES))}"
    )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    bad = []
    for target, _, line in _imports(MODULES[module]):
        assert target in RANK, f"{module}.py:{line} imports unknown module {target}"
        if LAYER_NAME[target] == LAYER_NAME[module] == PERIPHERALS:
            bad.append(f"{module}.py:{line} imports {target}: L4 peripherals are independent")
        elif RANK[target] >= RANK[module]:
            bad.append(
                f"{module}.py:{line} ({LAYER_NAME[module]}) imports {target} "
                f"({LAYER_NAME[target]}), which is not below it"
            )
    assert not bad, "\n".join(bad)


def test_the_layer_checker_sees_every_kind_of_import() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import _a\n"
        "from ._b import x\n"
        "import pytreeclass._c\n"
        "from pytreeclass import _d\n"
        "if TYPE_CHECKING:\n"
        "    from ._e import T\n"
        "def f():\n"
        "    from ._f import g\n"
    )
    found = {m for m, _, _ in _imports(ast.parse(source))}
    assert found == {"_a", "_b", "_c", "_d", "_e", "_f"}


def test_no_import_cycle() -> None:
    graph = {m: {t for t, _, _ in _imports(tree)} for m, tree in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, f"import cycle: {' -> '.join([*stack, m, t])}"
            if t not in state:
                visit(t, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_private_names_stay_in_their_module(module: str) -> None:
    """Only names in a module's `__all__` are imported elsewhere, and none is private."""
    tree = MODULES[module]
    bad = []
    imported_modules = set()
    for target, names, line in _imports(tree):
        if not names:
            imported_modules.add(target)
        exported = _all(MODULES[target])
        for name in names:
            if name.startswith("_"):
                bad.append(f"{module}.py:{line} imports private {target}.{name}")
            elif name not in exported:
                bad.append(f"{module}.py:{line} imports {target}.{name}, not in its __all__")
    for node in ast.walk(tree):  # `from . import _x` then `_x._private`
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported_modules
            and node.attr.startswith("_")
        ):
            bad.append(f"{module}.py:{node.lineno} reads private {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_all_lists_only_what_the_module_defines(module: str) -> None:
    tree = MODULES[module]
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        defined.add(n.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
    missing = _all(tree) - defined
    assert not missing, f"{module}.__all__ names what it does not define: {sorted(missing)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_class_metadata_is_read_through_meta_of(module: str) -> None:
    if module in META_OWNERS:
        return
    text = PATHS[module].read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "__ptc_meta__" not in code, (
        f"{module}.py reads __ptc_meta__; use _meta.meta_of(cls) / _meta.is_treeclass"
    )


def test_one_level_flatten_has_one_implementation() -> None:
    for module in MODULES:
        if module == "_tree_util":
            continue
        text = PATHS[module].read_text(encoding="utf-8")
        # the idiom: flatten with `is_leaf=lambda x: x is not node` (children are leaves)
        assert re.search(r"lambda (\w+): \1 is not \w+\)", text) is None, (
            f"{module}.py flattens a node one level itself; use _tree_util.one_level"
        )


def test_one_depth_guard() -> None:
    """Every translation of RecursionError goes through `_errors.reraise_if_too_deep`."""
    for module, tree in MODULES.items():
        if module == "_errors":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc
                name = getattr(getattr(call, "func", None), "id", None)
                assert name != "TreeTooDeepError", f"{module}.py:{node.lineno}"


# -- lens updates copy a treeclass as `with_field` does ------------------------------------------


@ptc.treeclass
class _Layer:
    w: jnp.ndarray = ptc.field(kind=ptc.Parameter)
    b: jnp.ndarray
    n: int = ptc.field(static=True, default=3)


@ptc.treeclass
class _Outer:
    inner: _Layer
    items: list


def _same_copy(a: object, b: object) -> None:
    assert type(a) is type(b)
    assert list(a.__dict__) == list(b.__dict__)  # same key order: shared key tables
    for k in a.__dict__:
        if k == _meta.FLAT:
            ca, aa = a.__dict__[k]
            cb, ab = b.__dict__[k]
            assert len(ca) == len(cb) and all(x is y for x, y in zip(ca, cb)) and aa == ab
        else:
            assert a.__dict__[k] is b.__dict__[k], k


@pytest.mark.parametrize("name", ["w", "b", "n"])
def test_lens_walk_update_agrees_with_with_field(name: str) -> None:
    layer = _Layer(jnp.ones(2), jnp.zeros(2))
    value = 7 if name == "n" else jnp.full(2, 5.0)
    steps = (PathStep(name, True),)
    via_put = put(layer, steps, (layer, steps, -1), value, None)
    _same_copy(via_put, _meta.with_field(layer, name, value))


@pytest.mark.parametrize("name", ["w", "b", "n"])
def test_compiled_update_agrees_with_with_field(name: str) -> None:
    layer = _Layer(jnp.ones(2), jnp.zeros(2))
    outer = _Outer(layer, [layer])
    value = 7 if name == "n" else jnp.full(2, 5.0)
    lens = getattr(outer.at.inner, name)
    for _ in range(3):  # the first update compiles the path, later ones run the compiled code
        got = lens.set(value)
    _same_copy(got.inner, _meta.with_field(layer, name, value))
    _same_copy(got, _meta.with_field(outer, "inner", got.inner))
    with pytest.raises(TypeError, match="static field 'n' of _Layer holds an unhashable list"):
        outer.at.inner.n.set([1])


def test_every_cache_is_listed_in_one_place() -> None:
    """`_cache.py`'s table lists every module-level cache the package makes."""
    import pytreeclass._cache as cache_module

    doc = cache_module.__doc__ or ""
    listed = set(re.findall(r"\| `(_\w+)\.(\w+)`", doc))
    made = set()
    for module, tree in MODULES.items():
        for node in tree.body:
            value = getattr(node, "value", None)
            targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
            call = getattr(getattr(value, "func", None), "id", None)
            if call in ("BoundedCache", "TypeTable"):
                made |= {(module, t.id) for t in targets if isinstance(t, ast.Name)}
            if isinstance(node, ast.FunctionDef) and any(
                "lru_cache" in ast.unparse(d) for d in node.decorator_list
            ):
                made.add((module, node.name))
    made |= {("_filters", "_NODE_TYPES"), ("_io_leaves", "_FACTS")}  # plain bounded dicts
    assert made <= listed, f"caches missing from _cache.py's table: {sorted(made - listed)}"
    assert listed <= made, f"listed in _cache.py but not made: {sorted(listed - made)}"
