"""Printing: repr, tree_summary, tree_diagram, notebook HTML; outputs pinned exactly."""

from __future__ import annotations

import re
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass
from pytreeclass._repr import html_repr, treeclass_repr
from pytreeclass._summary import TreeSummary
from pytreeclass._tree_util import leaf_repr


@treeclass
class Linear:
    w: jax.Array = field(kind=Parameter, axes=("embed", "mlp"))
    b: jax.Array = field(kind=Parameter, axes=("mlp",))
    features: int = field(static=True, default=4)


@treeclass
class MLP:
    layers: list
    mean: jax.Array = field(kind=BatchStat, default_factory=lambda: jnp.zeros(()))
    lr: float = 0.1
    name: str = field(static=True, default="mlp")


def make_mlp() -> MLP:
    return MLP([Linear(jnp.ones((3, 4)), jnp.zeros(4)), Linear(jnp.ones((4, 2)), jnp.zeros(2), 2)])


# -- leaves -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leaf", "text"),
    [
        (jnp.zeros((3, 4)), "f32[3,4]"),
        (jnp.zeros((), jnp.int32), "i32[]"),
        (np.zeros(2, np.uint8), "u8[2]"),
        (np.zeros(2, np.complex64), "c64[2]"),
        (jnp.zeros(2, bool), "bool[2]"),
        (jnp.zeros(2, jnp.bfloat16), "bf16[2]"),
        (jnp.zeros(2, jnp.float16), "f16[2]"),
        (jnp.zeros(2, ml_dtypes.float8_e4m3fn), "f8_e4m3fn[2]"),
        (jnp.zeros(2, ml_dtypes.float8_e5m2), "f8_e5m2[2]"),
        (jnp.zeros(2, jnp.int4), "i4[2]"),
        (jax.random.split(jax.random.key(0), 3), "key[3]"),
        (jax.ShapeDtypeStruct((5, 1), jnp.float32), "f32[5,1]"),
        (1.5, "1.5"),
        (Parameter, "Parameter"),
        ("x" * 100, "'" + "x" * 56 + "..."),
    ],
    ids=repr,
)
def test_leaf_repr(leaf: object, text: str) -> None:
    assert leaf_repr(leaf) == text


def test_leaf_repr_of_tracers() -> None:
    seen = []
    jax.jit(lambda x: seen.append(leaf_repr(x)) or x)(jnp.ones((2, 3)))
    jax.vmap(lambda x: seen.append(leaf_repr(x)) or x)(jnp.ones((2, 3)))
    assert seen == ["f32[2,3]", "f32[3]"]


# -- repr ---------------------------------------------------------------------------------------


def test_repr_short_fits_one_line() -> None:
    assert (
        repr(Linear(jnp.ones((3, 4)), jnp.zeros(4))) == "Linear(w=f32[3,4], b=f32[4], features=4)"
    )


def test_repr_nested_is_indented() -> None:
    assert repr(make_mlp()) == (
        "MLP(\n"
        "  layers=[Linear(w=f32[3,4], b=f32[4], features=4), Linear(w=f32[4,2], b=f32[2], features=2)],\n"
        "  mean=f32[],\n"
        "  lr=0.1,\n"
        "  name='mlp'\n"
        ")"
    )


def test_repr_long_list_is_elided_with_a_true_count() -> None:
    assert repr(MLP(list(range(20)))) == (
        "MLP(layers=[0, 1, 2, 3, 4, 5, ...(13 more), 19], mean=f32[], lr=0.1, name='mlp')"
    )
    layers = [Linear(jnp.ones((3, i)), jnp.zeros(i)) for i in range(1, 10)]
    text = repr(MLP(layers))
    assert text.count("Linear(") == 7
    assert "    ...(2 more),\n" in text


def test_repr_of_equal_structure_nodes_in_a_list_is_one_entry_with_a_count() -> None:
    layer = Linear(jnp.ones((3, 4)), jnp.zeros(4))
    assert repr(MLP([layer] * 24)).splitlines()[1] == (
        "  layers=[Linear \u00d724(w=f32[3,4], b=f32[4], features=4)],"
    )
    assert "layers=(Linear \u00d73(w=f32[3,4]" in repr(MLP((layer, layer, layer)))
    # same values are not needed (arrays show no values), same structure and shapes are
    other = Linear(jnp.zeros((3, 4)), jnp.ones(4))
    assert "\u00d73" in repr(MLP([layer, other, layer]))
    assert repr(MLP([layer, layer])).count("Linear(") == 2  # two are shown as they are
    # a shape, a dtype, a static field or a leaf's value shown differs: listed one by one
    for other in (
        Linear(jnp.ones((3, 5)), jnp.zeros(5)),
        Linear(jnp.ones((3, 4), jnp.int32), jnp.zeros(4)),
        Linear(jnp.ones((3, 4)), jnp.zeros(4), features=5),
        Linear(1.0, jnp.zeros(4)),
    ):
        assert repr(MLP([layer, layer, other])).count("Linear(") == 3
    assert repr(MLP([1, 1, 1])) == "MLP(layers=[1, 1, 1], mean=f32[], lr=0.1, name='mlp')"


def test_repr_dicts_tuples_none_and_foreign_modules() -> None:
    lin = eqx.nn.Linear(2, 3, key=jax.random.key(0))
    tree = MLP([{"a": (1, None), "k": jax.random.key(0)}, lin, (jnp.ones(1),)])
    assert repr(tree) == (
        "MLP(\n"
        "  layers=[{'a': (1, None), 'k': key[]}, Linear(weight=f32[3,2], bias=f32[3]), (f32[1],)],\n"
        "  mean=f32[],\n"
        "  lr=0.1,\n"
        "  name='mlp'\n"
        ")"
    )


def test_repr_hides_repr_false_fields_and_marks_cycles() -> None:
    @treeclass
    class Hidden:
        x: int
        secret: int = field(repr=False, default=0)

    assert repr(Hidden(1, 2)) == "Hidden(x=1)"
    loop: list = []
    loop.append(loop)
    assert repr(Hidden(loop)) == "Hidden(x=[<cycle>])"


def test_repr_of_unset_field_during_init() -> None:
    seen = []

    @treeclass
    class Late:
        a: int
        b: int

        def __init__(self) -> None:
            self.a = 1
            seen.append(repr(self))
            self.b = 2

    Late()
    assert seen == ["Late(a=1, b=<unset>)"]


def test_repr_under_jit_shows_tracer_shapes() -> None:
    seen = []

    @jax.jit
    def f(m: MLP) -> MLP:
        seen.append(treeclass_repr(m.layers[0]))
        return m

    f(make_mlp())
    assert seen == ["Linear(w=f32[3,4], b=f32[4], features=4)"]


# -- tree_summary -------------------------------------------------------------------------------

SUMMARY = """\
path          node    kind       type   shape/dtype  count  bytes
------------  ------  ---------  -----  -----------  -----  -----
.layers[0].w  Linear  Parameter  Array  f32[3,4]        12     48
.layers[0].b  Linear  Parameter  Array  f32[4]           4     16
.layers[1].w  Linear  Parameter  Array  f32[4,2]         8     32
.layers[1].b  Linear  Parameter  Array  f32[2]           2      8
.mean         MLP     BatchStat  Array  f32[]            1      4
.lr           MLP     -          float  0.1              1      0
------------  ------  ---------  -----  -----------  -----  -----
total                 Parameter                         26    104
total                 BatchStat                          1      4
total                 -                                  1      0
total                 all                               28    108"""


def test_tree_summary_text_pinned() -> None:
    s = ptc.tree_summary(make_mlp())
    assert isinstance(s, str) and isinstance(s, TreeSummary)
    assert s == SUMMARY
    assert repr(s) == SUMMARY  # shows as a table at the prompt, not a quoted string


def test_tree_summary_data() -> None:
    s = ptc.tree_summary(make_mlp())
    assert s.rows[0] == (".layers[0].w", "Linear", "Parameter", "Array", "f32[3,4]", 12, 48, None)
    assert s.rows[0].bytes == 48 and s.rows[-1].type == "float" and s.rows[-1].node == "MLP"
    assert s.totals == {"Parameter": (26, 104), "BatchStat": (1, 4), "-": (1, 0), "all": (28, 108)}


def test_tree_summary_html() -> None:
    h = ptc.tree_summary({"a<b": jnp.zeros((1000,), jnp.bfloat16)})._repr_html_()
    assert h.startswith("<table><thead><tr><th>path</th><th>node</th><th>kind</th>")
    assert "<td>[&#x27;a&lt;b&#x27;]</td>" in h  # escaped
    assert "<th>1,000</th><th>2,000</th>" in h


def test_tree_summary_thousands_keys_and_mixed_leaves() -> None:
    tree = {"big": np.zeros((100, 100), np.float64), "key": jax.random.key(0), "s": "text", "n": 3}
    s = ptc.tree_summary(tree)
    assert [tuple(r) for r in s.rows] == [
        ("['big']", "dict", "-", "ndarray", "f64[100,100]", 10000, 80000, None),
        ("['key']", "dict", "-", "Array", "key[]", 1, 8, None),
        ("['n']", "dict", "-", "int", "3", 1, 0, None),
        ("['s']", "dict", "-", "str", "'text'", 0, 0, None),
    ]
    assert "10,000  80,000" in s
    assert s.totals["all"] == (10002, 80008)


def test_tree_summary_of_abstract_and_traced_trees_and_a_root_leaf() -> None:
    abstract = jax.eval_shape(make_mlp)
    assert ptc.tree_summary(abstract).totals["all"] == (28, 112)  # lr became f32[]
    seen = []
    jax.jit(lambda m: seen.append(ptc.tree_summary(m)) or 0)(make_mlp())
    assert seen[0].rows[0][:7] == (
        ".layers[0].w",
        "Linear",
        "Parameter",
        "Array",
        "f32[3,4]",
        12,
        48,
    )
    root = ptc.tree_summary(jnp.ones(3))
    assert root.rows == (("<root>", "-", "-", "Array", "f32[3]", 3, 12, None),)


def test_tree_summary_node_column_names_the_innermost_non_container_node() -> None:
    @ptc.treeclass
    class Block:
        parts: dict
        extra: tuple = ()

    tree = [Block({"a": [jnp.ones(2)], "n": None}, (1.0,)), {"x": 2.0}]
    s = ptc.tree_summary(tree)
    assert [(r.path, r.node) for r in s.rows] == [
        ("[0].parts['a'][0]", "Block"),
        ("[0].extra[0]", "Block"),
        ("[1]['x']", "list"),
    ]
    eqx_model = {"lin": eqx.nn.Linear(2, 3, key=jax.random.key(0))}
    assert {r.node for r in ptc.tree_summary(eqx_model).rows} == {"Linear"}


def test_tree_summary_counts_a_shared_array_once_and_marks_it() -> None:
    w, b = jnp.ones((3, 4)), jnp.zeros(4)
    tree = {"embed": {"w": w}, "head": {"b": b, "w": w}, "again": w}
    s = ptc.tree_summary(tree)
    assert [(r.path, r.count, r.shared) for r in s.rows] == [
        ("['again']", 12, None),
        ("['embed']['w']", 0, "['again']"),
        ("['head']['b']", 4, None),
        ("['head']['w']", 0, "['again']"),
    ]
    assert s.totals["all"] == (16, 64)
    assert "f32[3,4] = ['again']" in s
    # Equal but distinct arrays, and the same small int at two paths, are not shared.
    s2 = ptc.tree_summary({"a": jnp.ones(2), "b": jnp.ones(2), "c": 1, "d": 1})
    assert all(r.shared is None for r in s2.rows) and s2.totals["all"] == (6, 16)


def test_tree_aliases_lists_groups_of_paths_holding_one_array() -> None:
    w, v = jnp.ones((3, 4)), np.zeros(2)
    tree = {"a": w, "b": [w, v, 1, 1], "c": (v, w)}
    assert ptc.tree_aliases(tree) == [("['a']", "['b'][0]", "['c'][1]"), ("['b'][1]", "['c'][0]")]
    assert ptc.tree_aliases({"a": jnp.ones(2), "b": jnp.ones(2)}) == []
    # A jitted step unties them: each path gets its own array.
    out = jax.jit(lambda t: jax.tree.map(lambda x: x * 1, t))({"a": w, "b": w})
    assert ptc.tree_aliases(out) == []


# -- tree_diagram -------------------------------------------------------------------------------

DIAGRAM = """\
MLP
├── layers: list
│   ├── [0]: Linear
│   │   ├── w: f32[3,4] (Parameter, axes=('embed', 'mlp'))
│   │   ├── b: f32[4] (Parameter, axes=('mlp',))
│   │   └── features: 4 (static)
│   └── [1]: Linear
│       ├── w: f32[4,2] (Parameter, axes=('embed', 'mlp'))
│       ├── b: f32[2] (Parameter, axes=('mlp',))
│       └── features: 2 (static)
├── mean: f32[] (BatchStat)
├── lr: 0.1
└── name: 'mlp' (static)"""


def test_tree_diagram_pinned() -> None:
    d = ptc.tree_diagram(make_mlp())
    assert isinstance(d, str)
    assert d == DIAGRAM
    assert repr(d) == DIAGRAM


def test_tree_diagram_elides_long_containers_and_keeps_kinds_aligned() -> None:
    @treeclass
    class Holder:
        xs: list = field(kind=Parameter)
        tail: jax.Array = field(kind=BatchStat)

    d = ptc.tree_diagram(Holder([jnp.ones(i + 1) for i in range(10)], jnp.zeros(2)), max_items=4)
    assert d == (
        "Holder\n"
        "├── xs: list\n"
        "│   ├── [0]: f32[1] (Parameter)\n"
        "│   ├── [1]: f32[2] (Parameter)\n"
        "│   ├── ...(7 more)\n"
        "│   └── [9]: f32[10] (Parameter)\n"
        "└── tail: f32[2] (BatchStat)"
    )
    assert ptc.tree_diagram(Holder([1] * 10, 0), max_items=None).count("(Parameter)") == 10


def test_tree_diagram_foreign_nodes_none_and_root_leaf() -> None:
    lin = eqx.nn.Linear(2, 3, key=jax.random.key(0))
    d = ptc.tree_diagram({"eqx": lin, "hole": None, "t": (1.0, "s")})
    assert d == (
        "dict\n"
        "├── ['eqx']: Linear\n"
        "│   ├── weight: f32[3,2]\n"
        "│   └── bias: f32[3]\n"
        "├── ['hole']: None\n"
        "└── ['t']: tuple\n"
        "    ├── [0]: 1.0\n"
        "    └── [1]: 's'"
    )
    assert ptc.tree_diagram(jnp.ones((2, 2))) == "f32[2,2]"


# -- notebooks ----------------------------------------------------------------------------------


def test_repr_html_uses_treescope_without_recursing() -> None:
    pytest.importorskip("treescope")
    m = make_mlp()
    out = m._repr_html_()
    assert "treescope" in out
    # A treeclass inside another structure: treescope must not call our _repr_html_ again.
    assert "treescope" in html_repr([m, {"x": m}])


def test_repr_html_falls_back_to_escaped_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "treescope", None)  # import treescope -> ImportError
    m = MLP([], name="<b>")
    assert m._repr_html_() == (
        "<pre>MLP(layers=[], mean=f32[], lr=0.1, name=&#x27;&lt;b&gt;&#x27;)</pre>"
    )


# -- tree_summary at a depth --------------------------------------------------------------------


def deep_models() -> dict[str, object]:
    """A 96-layer model twice: the scanned transformer example (abstract) and a list."""
    from .test_examples import example

    ts = example("transformer_scan")
    stacked = jax.eval_shape(
        lambda: ts.Transformer.create(
            jax.random.key(0), 100, layers=96, embed=64, heads=4, context=32
        )
    )
    layers = [Linear(jnp.full((64, 64), i), jnp.full(64, i)) for i in range(96)]
    listed = MLP(layers)
    return {"stacked": stacked, "list": listed}


@pytest.mark.parametrize("name", ["stacked", "list"])
def test_a_96_layer_model_at_depth_2_fits_one_screen(name: str) -> None:
    model = deep_models()[name]
    full = ptc.tree_summary(model)
    s = ptc.tree_summary(model, depth=2)
    lines = s.splitlines()
    assert len(lines) <= 24 and max(map(len, lines)) <= 100, s
    assert s.totals == full.totals  # the totals per kind are those of every leaf
    assert s.rows == full.rows  # and the data per leaf is all there
    assert len(s.groups) == (4 if name == "stacked" else 1)
    if name == "list":
        assert s.groups[0] == (
            ".layers[0:96]",
            "Linear \u00d796",
            "Parameter",
            192,
            399360,
            1597440,
        )


def test_depth_groups_stacks_and_runs_of_equal_layers() -> None:
    stacked = deep_models()["stacked"]
    s = ptc.tree_summary(stacked, depth=2)
    assert [g.path for g in s.groups] == [
        ".blocks.ln1",
        ".blocks.attn",
        ".blocks.ln2",
        ".blocks.mlp",
    ]
    attn = s.groups[1]
    assert (attn.node, attn.kind, attn.leaves) == ("Attention", "Parameter", 2)
    assert attn.count == 96 * (64 * 3 * 64 + 64 * 64)
    # the stack's line stays above its groups
    assert re.search(r"\n\.blocks +Block \u00d796 +49,728/layer", s)
    one = ptc.tree_summary(stacked, depth=1)
    assert [(g.path, g.node) for g in one.groups] == [
        (".blocks", "Block \u00d796"),
        (".ln_f", "LayerNorm"),
    ]
    assert "49,728/layer" not in one  # the stack is one line at its own depth
    root = ptc.tree_summary(stacked, depth=0)
    assert [(g.path, g.node, g.leaves) for g in root.groups] == [("<root>", "Transformer", 14)]
    # a list: equal neighbours merge into one line with a slice; others do not
    a = lambda features=4: Linear(jnp.ones((3, 4)), jnp.zeros(4), features)  # noqa: E731
    b = Linear(jnp.ones((4, 2)), jnp.zeros(2), 2)
    s = ptc.tree_summary(MLP([a(), a(), a(), b, a(), a(5)]), depth=2)
    assert [(g.path, g.node, g.leaves, g.count) for g in s.groups] == [
        (".layers[0:3]", "Linear \u00d73", 6, 48),
        (".layers[3]", "Linear", 2, 10),
        (".layers[4]", "Linear", 2, 16),
        (".layers[5]", "Linear", 2, 16),  # another static field: another structure
    ]
    assert ".mean" in s and ".lr" in s  # leaves above the depth keep their own line
    # leaves in a list merge the same way; dict entries never do
    s = ptc.tree_summary({"xs": [jnp.ones(2), jnp.ones(2), jnp.ones(3)]}, depth=2)
    assert "['xs'][0:2]" in s and "Array \u00d72" in s and "['xs'][2]" in s
    s = ptc.tree_summary({"a": {"w": jnp.ones(2)}, "b": {"w": jnp.ones(2)}}, depth=1)
    assert [g.path for g in s.groups] == ["['a']", "['b']"]


def test_depth_in_html_and_under_jit() -> None:
    h = ptc.tree_summary(MLP([make_mlp().layers[0]] * 3), depth=2)._repr_html_()
    assert "<td>.layers[0:3]</td>" in h and h.count("<tr>") == 1 + 3 + 4
    seen = []
    jax.jit(lambda m: seen.append(ptc.tree_summary(m, depth=1)) or 0)(make_mlp())
    assert [g.path for g in seen[0].groups] == [".layers"]


@pytest.mark.parametrize("depth", [-1, 1.5, True])
def test_depth_must_be_a_non_negative_int(depth: object) -> None:
    with pytest.raises(ValueError, match=r"depth must be an int >= 0 \(or None"):
        ptc.tree_summary(make_mlp(), depth=depth)  # type: ignore[arg-type]
