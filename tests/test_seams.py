"""Where features meet: one node model and one selection engine (issue #21).

The seam matrix runs every step form against every terminal on twin models, a list of
layers and the same layers as a stacked field, eagerly and under `jax.jit`; a stack must
give what its list twin gives, and a selection what `tree_mask` on the root selects.
Then one named test per seam that used to give a wrong result or an internal error.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import re
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pytreeclass as ptc
from pytreeclass import OfType, Parameter, field, treeclass

from .versions import needs_nnx_nodes

# -- twin models: a list of blocks, and the same blocks stacked ------------------------------


@treeclass
class Lin:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)


@treeclass
class Block:
    lin: Lin
    mlp: list[Lin]
    norm: jax.Array = field(kind=ptc.BatchStat)
    act: str = field(static=True, default="tanh")


@treeclass
class ListNet:
    blocks: list[Block]
    head: Lin


@treeclass
class StackNet:
    blocks: Block = field(stack="layers")
    head: Lin


N = 4


def block(i: int) -> Block:
    f = float(i)
    return Block(
        Lin(jnp.full((2,), f), jnp.full((2,), 10 + f)),
        [Lin(jnp.full((2,), 100 + f), jnp.full((2,), -f)), Lin(jnp.full((2,), f / 2), jnp.ones(2))],
        jnp.full((2,), 1000 + f),
    )


def twins() -> tuple[ListNet, StackNet]:
    blocks = [block(i) for i in range(N)]
    head = Lin(jnp.full((2,), 7.0), jnp.zeros(2))
    return ListNet(blocks, head), StackNet(ptc.tree_stack(blocks), head)


def as_list(x: Any) -> Any:
    """A result of the stacked twin, written as its list twin would hold it."""
    if isinstance(x, StackNet):
        return ListNet(ptc.tree_unstack(x.blocks), x.head)
    return x


# Step forms after `.blocks` (the list or the stack), and what may follow them.
FIRST = {
    "[1]": lambda s: s[1],
    "[-1]": lambda s: s[-1],
    "[1:3]": lambda s: s[1:3],
    "[::2]": lambda s: s[::2],
    "[...]": lambda s: s[...],
    "[Block]": lambda s: s[OfType(Block)],
    "[Parameter]": lambda s: s[Parameter],
    "['b']": lambda s: s[ptc.PathContains("b")],
    ".nth(2)": lambda s: s[...].nth(2),
}
THEN = {
    "": lambda s: s,
    ".lin": lambda s: s.lin,
    ".lin.w": lambda s: s.lin.w,
    ".mlp[-1]": lambda s: s.mlp[-1],
    ".mlp[0:1]": lambda s: s.mlp[0:1],
    "[...]": lambda s: s[...],
    "[Lin]": lambda s: s[OfType(Lin)],
    "[BatchStat]": lambda s: s[ptc.BatchStat],
    ".act": lambda s: s.act,
}
# Combinations whose result is legitimately shaped by the container (get of a slice, of
# a name after a slice): compared through items(), not get().
PATHS = list(itertools.product(FIRST, THEN))


def lens_for(model: Any, first: str, then: str) -> Any:
    return THEN[then](FIRST[first](model.at.blocks))


def outcome(fn: Any) -> Any:
    try:
        return ("ok", fn())
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        return ("error", type(e).__name__)


def values_equal(a: Any, b: Any) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def shaped_like_get(lens: Any, model: Any) -> Any:
    """`lens.get()`; where a selection holds some layers of the stack (which get() refuses
    to show as whole arrays), the whole stack: set takes each selected layer's rows."""
    try:
        return lens.get()
    except ValueError as e:
        if "of the stacked field at .blocks" not in str(e):
            raise
        return model.blocks


def twice(x: Any) -> Any:
    """An elementwise function (a stack's slice is a sub-stack: compared with this)."""
    return x + "!" if isinstance(x, str) else x * 2 + 1


def bump(x: Any) -> Any:
    """A per-element function that is not elementwise on a stack: it sees the shape."""
    if isinstance(x, str):
        return x + "!"
    if isinstance(x, (Lin, Block, list)):
        return jax.tree.map(lambda a: a * 2 + jnp.sum(a), x)
    return x * 2 + jnp.sum(x)


@pytest.mark.parametrize(("first", "then"), PATHS, ids=[f + t for f, t in PATHS])
def test_seam_matrix_stack_equals_list(first: str, then: str) -> None:
    listed, stacked = twins()
    ll, sl = lens_for(listed, first, then), lens_for(stacked, first, then)
    # paths and items: one per layer on a stack, as on a list
    lp, sp = outcome(ll.paths), outcome(sl.paths)
    assert lp == sp
    li, si = outcome(ll.items), outcome(sl.items)
    assert li[0] == si[0]
    if li[0] == "ok":
        assert [jax.tree_util.keystr(k) for k, _ in li[1]] == [
            jax.tree_util.keystr(k) for k, _ in si[1]
        ]
        for (_, a), (_, b) in zip(li[1], si[1]):
            assert values_equal(a, b)
    # set one leaf everywhere, apply per element (eagerly and under jit)
    for terminal in ("set", "apply", "apply_path"):
        if terminal == "set":  # each twin gets a value shaped like its own get()
            run = lambda lens, m: lens.set(jax.tree.map(twice, shaped_like_get(lens, m)))  # noqa: E731
        elif terminal == "apply":
            run = lambda lens, m: lens.apply(bump)  # noqa: E731
        else:
            run = lambda lens, m: lens.apply(  # noqa: E731
                lambda p, x: bump(x) if jax.tree_util.keystr(p) else x, with_path=True
            )
        if terminal != "set" and first in ("[1:3]", "[::2]") and then in ("", ".mlp[0:1]"):
            run = lambda lens, m: lens.apply(lambda x: jax.tree.map(twice, x))  # noqa: E731
        lo = outcome(functools.partial(run, ll, listed))
        so = outcome(functools.partial(run, sl, stacked))
        if first in ("[1:3]", "[::2]") and then not in ("",) and not then.startswith("["):
            continue  # a name after a slice: the value is the items' sequence (below)
        assert lo[0] == so[0], (terminal, lo, so)
        if then == ".act" and first not in ("[...]", "[Block]") and lo[0] == "ok":
            # A static field is the whole stack's: set through one layer, it changes for
            # all of them (test_03), where a list changes one block.
            assert so[0] == "ok" and len({b.act for b in as_list(so[1]).blocks}) == 1
            continue
        if lo[0] == "ok":
            assert values_equal(lo[1], as_list(so[1])), terminal
            assert (lo[1].blocks[0].act, lo[1].blocks[-1].act) == (
                as_list(so[1]).blocks[0].act,
                as_list(so[1]).blocks[-1].act,
            )


@pytest.mark.parametrize("first", ["[1]", "[-1]", "[...]", "[Block]", "[Parameter]"])
def test_seam_matrix_under_jit(first: str) -> None:
    listed, stacked = twins()

    @jax.jit
    def run(m: Any) -> Any:
        return FIRST[first](m.at.blocks).apply(lambda x: jax.tree.map(lambda a: a + 1, x))

    assert values_equal(run(listed), as_list(run(stacked)))
    eager = FIRST[first](listed.at.blocks).apply(lambda x: jax.tree.map(lambda a: a + 1, x))
    assert values_equal(run(listed), eager)


FILTERS = [
    Parameter,
    ptc.BatchStat,
    OfType(Lin),
    OfType(Block),
    "b",
    "blocks.1",
    ptc.PathMatch(r"blocks\.\d\.mlp\.0\..*"),
    ptc.All(OfType(Lin), "w"),
    ptc.Any(ptc.BatchStat, "head"),
    ptc.Not(Parameter),
    lambda x: float(jnp.sum(x)) > 10,
]


def _filter_id(f: Any) -> str:
    return "value>10" if type(f).__name__ == "function" else getattr(f, "__name__", repr(f))


@pytest.mark.parametrize("f", FILTERS, ids=_filter_id)
@pytest.mark.parametrize("prefix", ["", ".blocks", ".blocks[1]", ".blocks[1].mlp"])
def test_a_selection_is_tree_mask_on_the_root_restricted_to_the_focus(f: Any, prefix: str) -> None:
    listed, _ = twins()
    lens = ptc.at(listed)
    for part in filter(None, prefix.replace("[1]", ".1").split(".")):
        lens = lens[int(part)] if part.isdigit() else getattr(lens, part)
    mask = ptc.tree_mask(listed, f)
    pairs = jax.tree_util.tree_flatten_with_path(mask)[0]
    want = [
        jax.tree_util.keystr(p)
        for p, m in pairs
        if m and jax.tree_util.keystr(p).startswith(prefix)
    ]
    if isinstance(f, str):  # in brackets a bare string is a key: spell the filter out
        f = ptc.PathMatch(re.escape(f) + r"(\..+)?") if "." in f else ptc.PathContains(f)
    got = [jax.tree_util.keystr(k) for k, _ in lens[f].items()]
    covered = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(lens[f].get())[0]
    ]
    focus = prefix
    assert sorted(focus + c for c in covered) == sorted(want)
    assert all(any(w.startswith(g) for g in got) for w in want)


# -- the numbered seams of issue #21 -----------------------------------------------------------


def test_01_set_a_node_type_combination_takes_a_tree_shaped_like_get() -> None:
    m, _ = twins()
    sel = m.at[ptc.All(Lin, "w")]
    assert len(sel.paths()) == N * 3 + 1 and all(p.endswith(".w") for p in sel.paths())
    new = jax.tree.map(lambda x: x * 0, sel.get())
    out = sel.set(new)
    assert all(float(jnp.sum(w)) == 0 for w in [out.head.w, out.blocks[2].mlp[1].w])
    assert float(out.blocks[2].lin.b[0]) == 12.0  # a `b` stays
    with pytest.raises(ValueError, match=r"\.set\(\): the value does not match the selection"):
        sel.set([1, 2, 3])
    same = m.at[ptc.All(ptc.PathContains("w"), jax.Array)]
    assert ptc.tree_equal(same.set(new), out)


def test_02_slices_and_negative_indices_compose_with_every_step() -> None:
    listed, stacked = twins()
    out = listed.at.blocks[::2].lin.w.apply(lambda w: -w)
    assert [float(b.lin.w[0]) for b in out.blocks] == [-0.0, 1.0, -2.0, 3.0]
    assert ptc.tree_equal(
        as_list(stacked.at.blocks[::2].lin.w.apply(lambda w: -w)).blocks, out.blocks
    )
    assert [float(w[0]) for w in listed.at.blocks[::2].lin.w.get()] == [0.0, 2.0]
    assert listed.at.blocks[OfType(Block)].mlp[0:2].paths()[:2] == [
        ".blocks[0].mlp[0]",
        ".blocks[0].mlp[1]",
    ]
    assert ptc.at([[1, 2], [3, 4, 5]])[...][-1].paths() == ["[0][1]", "[1][2]"]
    assert ptc.at([[1, 2], [3, 4, 5]])[...][-1].set(0) == [[1, 0], [3, 4, 0]]
    with pytest.raises(ValueError, match=r"the path selects 2 item\(s\), but the value has 1"):
        listed.at.blocks[::2].lin.w.set([jnp.zeros(2)])


def test_03_a_static_field_read_through_a_stack_index_is_the_shared_value() -> None:
    listed, stacked = twins()
    assert stacked.at.blocks[1].act.get() == "tanh"
    out = stacked.at.blocks[1].act.set("relu")
    assert out.blocks.act == "relu" and stacked.blocks.act == "tanh"
    assert all(b.act == "relu" for b in ptc.tree_unstack(out.blocks))
    assert stacked.at.blocks[OfType(Block)].act.set("gelu").blocks.act == "gelu"
    assert [b.act for b in listed.at.blocks[...].act.set("gelu").blocks] == ["gelu"] * N


def test_04_node_selection_drops_derived_values_on_rebuilt_equinox_and_dataclass_nodes() -> None:
    class E(eqx.Module):
        w: jax.Array

        @functools.cached_property
        def total(self) -> jax.Array:
            return jnp.sum(self.w)

    @dataclasses.dataclass
    class D:
        w: jax.Array

        @functools.cached_property
        def total(self) -> jax.Array:
            return jnp.sum(self.w)

    jax.tree_util.register_dataclass(D, data_fields=["w"], meta_fields=[])
    for cls in (E, D):
        tree = {"x": [cls(jnp.ones(2))]}
        assert float(tree["x"][0].total) == 2.0  # cached on the original
        out = ptc.at(tree)[OfType(cls)].w.apply(lambda w: w * 3)
        assert "total" not in out["x"][0].__dict__
        assert float(out["x"][0].total) == 6.0
        out = ptc.at(tree)[OfType(list)].apply(lambda xs: [x for x in xs])
        assert float(out["x"][0].total) == 2.0


def test_05_paths_and_items_on_slices_traced_indices_and_filters_after_an_index() -> None:
    listed, stacked = twins()
    for m in (listed, stacked):
        assert m.at.blocks[1:3].paths() == [".blocks[1]", ".blocks[2]"]
        assert m.at.blocks[1][...].paths()[:2] == [".blocks[1].lin.w", ".blocks[1].lin.b"]
        assert m.at.blocks[1][ptc.BatchStat].paths() == [".blocks[1].norm"]
    assert ptc.at([1, 2, 3])[1:].paths() == ["[1]", "[2]"]

    @jax.jit
    def count(m: StackNet, i: jax.Array) -> jax.Array:
        items = m.at.blocks[i].lin.w.items()
        assert [jax.tree_util.keystr(k) for k, _ in items] == [".blocks[<traced>].lin.w"]
        return items[0][1]

    assert count(stacked, jnp.int32(2)).tolist() == [2.0, 2.0]


def test_06_a_filter_after_a_prefix_judges_the_whole_key_path() -> None:
    listed, _ = twins()
    assert listed.at.blocks[1].lin[ptc.PathContains("lin")].paths() == [
        ".blocks[1].lin.w",
        ".blocks[1].lin.b",
    ]
    assert listed.at.blocks[1][ptc.PathContains("blocks")].paths()[:1] == [".blocks[1].lin.w"]
    assert listed.at.blocks[1].mlp[0][OfType(Block)].paths() == [
        ".blocks[1].mlp[0].w",
        ".blocks[1].mlp[0].b",
    ]


def test_07_surgery_by_type_on_a_stack_runs_once_per_layer() -> None:
    listed, stacked = twins()
    calls: list[int] = []

    def normalise(b: Block) -> Block:
        calls.append(1)
        return b.at.lin.w.apply(lambda w: w / (jnp.max(jnp.abs(w)) + 1))

    a = listed.at[OfType(Block)].apply(normalise)
    assert len(calls) == N
    b = stacked.at[OfType(Block)].apply(normalise)
    assert len(calls) == 2 * N
    assert values_equal(a, as_list(b))
    with pytest.raises(ValueError, match=r"\.blocks\[0\]\.set\(\).*stack holds f32\[2\]"):
        stacked.at[OfType(Block)].apply(lambda b: b.at.lin.w.set(jnp.zeros(3)))
    with pytest.raises(ValueError, match=r"stack"):
        stacked.at.blocks.set(block(0))  # one layer is not a stack of 4


def test_08_a_python_int_that_does_not_fit_a_stacked_integer_leaf_is_an_overflow() -> None:
    @treeclass
    class U:
        x: jax.Array = field(stack="layers")

    for arr in (jnp.zeros((3,), jnp.uint8), np.zeros((3,), np.uint8)):
        u = U(arr)
        with pytest.raises(OverflowError, match=r"model\.x\[1\]\.set\(\): 300 does not fit.*uint8"):
            u.at.x[1].set(300)
        assert int(u.at.x[1].set(255).x[1]) == 255
    with pytest.raises(OverflowError, match=r"-1 does not fit"):
        U(jnp.zeros((2,), jnp.uint32)).at.x[0].set(-1)


def test_09_tree_labels_takes_any_filter_as_a_key() -> None:
    listed, _ = twins()
    labels = ptc.tree_labels(listed, {OfType(Lin): "lin", Parameter: "decay", None: "x"})
    assert labels.blocks[0].lin.w == "lin" and labels.blocks[0].norm == "BatchStat"
    labels = ptc.tree_labels(listed, {"norm": "no_decay", Parameter: "decay"})
    assert (labels.blocks[0].norm, labels.head.w) == ("no_decay", "decay")
    labels = ptc.tree_labels(listed, {Lin: "lin"})
    assert labels.blocks[1].norm == "BatchStat" and labels.head.b == "lin"
    labels = ptc.tree_labels(listed, {"blocks.0": "first", ptc.State: "s"})
    assert labels.blocks[0].norm == "first" and labels.blocks[1].norm == "s"
    with pytest.raises(TypeError, match=r"tree_labels\(mapping\): the key 3.5 is not a filter"):
        ptc.tree_labels(listed, {3.5: "x"})


def test_10_dotted_names_select_what_tree_to_dict_names() -> None:
    listed, _ = twins()
    names = list(ptc.tree_to_dict(listed))
    assert "blocks.0.lin.w" in names
    for prefix in ("blocks.0.lin", "blocks.2", "head.w"):
        got = list(ptc.tree_to_dict(listed, prefix))
        assert got == [n for n in names if n == prefix or n.startswith(prefix + ".")]
        assert got
    assert list(ptc.tree_to_dict(listed, ptc.PathMatch(r".*\.mlp\.1\.b"))) == [
        f"blocks.{i}.mlp.1.b" for i in range(N)
    ]
    with pytest.raises(Exception, match=r"unterminated|missing"):
        ptc.PathMatch("(")


def test_11_equinox_filter_vmap_stacks_keep_shared_leaves() -> None:
    def make(k: jax.Array) -> eqx.nn.MLP:
        return eqx.nn.MLP(2, 2, 4, 1, key=k)

    stack = eqx.filter_vmap(make)(jax.random.split(jax.random.key(0), 3))
    layers = ptc.tree_unstack(stack)
    assert len(layers) == 3 and layers[1].activation is stack.activation
    x = jnp.ones(2)
    want = layers[2](layers[1](layers[0](x)))
    got = ptc.scan_layers(lambda layer, h: layer(h), stack, x)
    assert np.allclose(got, want, atol=1e-6)
    restacked = ptc.tree_stack(layers)
    assert restacked.activation is stack.activation


@needs_nnx_nodes
def test_12_a_lens_reaches_static_attributes_of_nnx_modules() -> None:
    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.lin = nnx.Linear(2, 2, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

    net = Net(nnx.Rngs(0))
    evald = ptc.at(net)[nnx.Dropout].deterministic.set(True)
    assert evald.drop.deterministic is True and net.drop.deterministic is False
    assert ptc.at(net).drop.deterministic.get() is False
    assert ptc.at(net).drop.rate.apply(lambda r: r / 2).drop.rate == 0.25
    assert net.drop.rate == 0.5


Pair = collections.namedtuple("Pair", "x y")


class EqxPair(eqx.Module):
    x: Lin
    y: Lin


@dataclasses.dataclass
class DataPair:
    x: Lin
    y: Lin


jax.tree_util.register_dataclass(DataPair, data_fields=["x", "y"], meta_fields=[])


def two_lins() -> tuple[Lin, Lin]:
    return Lin(jnp.ones(2), jnp.zeros(2)), Lin(jnp.full((2,), 2.0), jnp.zeros(2))


def containers_of(a: Any, b: Any) -> list[Any]:
    """`a` and `b` in every kind of container node: list, tuple, dict, namedtuple,
    Equinox module, registered dataclass."""
    return [[a, b], (a, b), {"x": a, "y": b}, Pair(a, b), EqxPair(a, b), DataPair(a, b)]


def test_the_same_node_selection_on_every_kind_of_container() -> None:
    a, b = two_lins()
    for tree in containers_of(a, b):
        out = ptc.at(tree)[OfType(Lin)].w.apply(lambda w: w * 10)
        assert type(out) is type(tree)
        ws = [
            float(x.w[0])
            for x in jax.tree_util.tree_leaves(out, is_leaf=lambda x: isinstance(x, Lin))
        ]
        assert ws == [10.0, 20.0]
        assert len(ptc.at(tree)[...].paths()) == 4  # leaves of both children
        assert len(ptc.at(tree)[OfType(Lin)].paths()) == 2
        # every step form after the node type, and the terminals, agree with by hand
        with pytest.raises(IndexError, match=r"no child \[-1\] under any selected node"):
            ptc.at(tree)[OfType(Lin)][-1].paths()  # a Lin has fields, not indices
        assert ptc.tree_equal(ptc.at(tree)[OfType(Lin)].b.set(1.0), ptc.at(tree)[...].b.set(1.0))
        got = dict(ptc.at(tree)[OfType(Lin)].w.items())
        assert [float(v[0]) for v in got.values()] == [1.0, 2.0]
        assert ptc.tree_equal(
            ptc.at(tree)[OfType(Lin)].set_items(dict(ptc.at(tree)[OfType(Lin)].items())), tree
        )
    assert ptc.at((1, 2))[0].insert_after(9) == (1, 9, 2)
    ((_, w),) = ptc.at(Pair(a, b))[OfType(Lin)].nth(1).w.items()
    assert w is b.w


@needs_nnx_nodes
def test_an_nnx_module_agrees_between_the_walk_the_engine_and_jax() -> None:
    # A registered node of the generic kind (flattened one level): the single-path walk
    # (lookup / put through the node table) and the selection engine (children /
    # rebuild) give the same trees, and the paths JAX's own flatten gives.
    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.a = nnx.Linear(2, 2, rngs=rngs)
            self.b = nnx.Linear(2, 2, rngs=rngs)

    net = Net(nnx.Rngs(0))
    v = jnp.full((2, 2), 7.0)
    walked = ptc.at(ptc.at(net).a.kernel.set(v)).b.kernel.set(v)
    selected = ptc.at(net)[nnx.Linear].kernel.set(v)
    assert ptc.tree_equal(walked, selected)
    assert ptc.at(walked).a.kernel.get() is v and ptc.at(net).a.kernel.get() is not v
    jax_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(net)[0]]
    assert [jax.tree_util.keystr(p) for p in ptc.at(net)[...].paths()] == jax_paths
    assert [jax.tree_util.keystr(p) for p in ptc.at(net)[nnx.Linear].kernel.paths()] == [
        ".a.kernel",
        ".b.kernel",
    ]
    items = dict(ptc.at(net)[...].items())
    assert ptc.tree_equal(ptc.at(net)[...].set_items(items), net)
    assert ptc.tree_equal(ptc.at(net).a.bias.apply(lambda x: x), net)
    with pytest.raises(
        AttributeError, match=r"tree\.a\.nope: Linear has no child \.nope; children:"
    ):
        ptc.at(net).a.nope.get()


def test_every_node_kind_puts_one_child_as_it_rebuilds_many() -> None:
    # The walk's hop (`lookup` + `put`) and the engine's (`children` + `rebuild`) are two
    # entries of one kind: for every child of every kind of node they must agree.
    from jax.tree_util import DictKey, GetAttrKey, SequenceKey

    from pytreeclass._lens._lens_steps import PathStep
    from pytreeclass._nodes._node_table import kind_of

    a, b = two_lins()
    nodes = [*containers_of(a, b), a, collections.OrderedDict(y=b, x=a)]
    new = jnp.full((2,), 9.0)
    seen = set()
    for node in nodes:
        kind = kind_of(node)
        seen.add(type(kind).__name__)
        for key, child, token in kind.children(node):
            if type(key) is SequenceKey:
                step = PathStep(key.idx, False)
            elif type(key) is DictKey:
                step = PathStep(key.key, False)
            else:
                assert type(key) is GetAttrKey
                step = PathStep(key.name, True)
            found = kind.lookup(node, step)
            assert found is not None and found[0] is child, (node, key)
            one = kind.put(node, found[1], new)
            many = kind.rebuild(node, [(token, new)])
            assert type(one) is type(many) is type(node)
            assert ptc.tree_equal(one, many) and kind.child(one, token) is new
            assert kind.child(node, token) is child  # the original untouched
    assert seen == {"List", "Tuple", "Dict", "NamedTuple", "Dataclass", "Treeclass"}


def test_get_on_some_layers_of_a_stack_is_an_error_not_every_layer() -> None:
    # A stacked leaf holds every layer: where a selection covers only some of them,
    # get() used to return the whole arrays, unselected layers included (silently).
    listed, stacked = twins()
    for lens in [
        stacked.at.blocks[1:3][...],
        stacked.at.blocks[OfType(Lin)].nth(1),
        stacked.at[OfType(Lin)].nth(0).w,
    ]:
        with pytest.raises(
            ValueError, match=r"\.get\(\): the selection holds \d layer\(s\) of the 4 "
        ):
            lens.get()
    # every layer selected: the stacked arrays, as the list twin's layers stacked
    got = stacked.at.blocks[...].lin.w.get()
    twin = listed.at.blocks[...].lin.w.get()
    assert np.array_equal(got.lin.w, np.stack([b.lin.w for b in twin]))
    assert got.lin.b is None and twin[0].lin.b is None
    # items() shows the layers one by one, as on the list twin
    assert len(stacked.at.blocks[1:3][...].items()) == len(listed.at.blocks[1:3][...].items())


# -- the selection verbs ---------------------------------------------------------------------


def test_remove_drops_selected_list_items_dict_entries_and_layers() -> None:
    listed, stacked = twins()
    out = listed.at.blocks[1:3].remove()
    assert [float(b.lin.w[0]) for b in out.blocks] == [0.0, 3.0]
    out_s = stacked.at.blocks[1:3].remove()
    assert out_s.blocks.lin.w[:, 0].tolist() == [0.0, 3.0]
    assert ptc.at({"a": 1, "b": 2})["a"].remove() == {"b": 2}
    assert ptc.at((1, 2, 3))[ptc.Predicate(lambda x: x == 2)].remove() == (1, 3)
    with pytest.raises(
        TypeError, match=r"remove\(\): \.head is an item of a ListNet, whose children are fixed"
    ):
        listed.at.head.remove()
    assert len(listed.blocks) == N  # the original never changes


def test_insert_before_and_after_take_a_value_or_a_function_of_the_item() -> None:
    listed, stacked = twins()
    out = listed.at.blocks[1].insert_after(lambda b: b.at.lin.w.set(jnp.full((2,), 9.0)))
    assert [float(b.lin.w[0]) for b in out.blocks] == [0.0, 1.0, 9.0, 2.0, 3.0]
    out = stacked.at.blocks[0].insert_before(block(7))
    assert out.blocks.lin.w[:, 0].tolist() == [7.0, 0.0, 1.0, 2.0, 3.0]
    assert ptc.at([1, 2])[...].insert_after(0) == [1, 0, 2, 0]
    with pytest.raises(TypeError, match=r"insert_before\(\): \['a'\] is an item of a dict"):
        ptc.at({"a": 1})["a"].insert_before(0)
    wide = block(7).at.lin.w.set(jnp.zeros(3))  # a layer of another shape does not stack
    with pytest.raises(
        ValueError,
        match=r"model\.blocks\[0\]: the inserted layer does not stack with the others: ",
    ):
        stacked.at.blocks[0].insert_before(wide)


def test_nth_narrows_to_one_match() -> None:
    listed, stacked = twins()
    assert listed.at[OfType(Lin)].nth(-1).paths() == [".head"]
    assert stacked.at.blocks[...].nth(2).lin.w.paths() == [".blocks[2].lin.w"]
    assert listed.at[OfType(Lin)].nth(99).paths() == []
    with pytest.raises(TypeError, match=r"nth\(n\): n must be an int"):
        listed.at[...].nth("1")  # type: ignore[arg-type]


def test_apply_with_path_and_set_items_are_inverse_to_items() -> None:
    listed, _ = twins()
    lens = listed.at.blocks[OfType(Lin)]
    seen = []
    out = lens.apply(lambda p, x: seen.append(jax.tree_util.keystr(p)) or x, with_path=True)
    assert seen == lens.paths() and ptc.tree_equal(out, listed)
    items = dict(lens.items())
    assert ptc.tree_equal(lens.set_items(items), listed)
    out = lens.set_items({".blocks[0].lin": Lin(jnp.zeros(2), jnp.zeros(2))})
    assert float(out.blocks[0].lin.b[0]) == 0.0
    with pytest.raises(KeyError, match=r"set_items\(\): '\.nope' is not a key path"):
        lens.set_items({".nope": 1})


def test_a_stack_plan_is_not_reused_for_a_stack_of_another_length() -> None:
    # Warm the plan cache with a 4-layer stack; a 3-layer stack has an equal treedef
    # (layer counts live in shapes), and must get its own plan.
    _, four = twins()
    three = StackNet(ptc.tree_stack([block(i) for i in range(3)]), four.head)
    assert jax.tree_util.tree_structure(three) == jax.tree_util.tree_structure(four)
    calls: list[int] = []

    def count(b: Block) -> Block:
        calls.append(1)
        return b

    lens = four.at[OfType(Block)]
    lens.apply(count)
    assert len(calls) == N
    out = three.at[OfType(Block)].apply(count)
    assert len(calls) == N + 3 and out.blocks.lin.w.shape == (3, 2)
    four.at[OfType(Block)].apply(count)  # back to four: right again
    assert len(calls) == 2 * N + 3


# -- issue #22, the lens items ---------------------------------------------------------------


def test_a_zero_slice_step_names_the_path() -> None:
    listed, stacked = twins()
    with pytest.raises(ValueError, match=r"model\.blocks\[::0\]: slice step cannot be zero.*stack"):
        stacked.at.blocks[::0].get()
    with pytest.raises(ValueError, match=r"model\.blocks\[::0\]: slice step cannot be zero"):
        listed.at.blocks[::0].get()
    with pytest.raises(ValueError, match=r"model\.blocks\[::0\]: slice step cannot"):
        listed.at.blocks[::0].lin.get()  # a name after the slice: the same check first
    with pytest.raises(ValueError, match=r"slice step cannot be zero"):
        listed.at[...][::0].get()


def test_setting_a_layer_of_a_numpy_stack_never_writes_into_the_original() -> None:
    layers = [Block(Lin(np.full(2, float(i)), np.zeros(2)), [], np.zeros(2)) for i in range(3)]

    @treeclass
    class NpNet:
        blocks: Block = field(stack="layers")

    net = NpNet(ptc.tree_stack(layers))
    assert isinstance(net.blocks.lin.w, np.ndarray)
    before = net.blocks.lin.w.copy()
    one = net.at.blocks[1].lin.w.set(np.full(2, 9.0))  # the walk's scatter
    many = net.at[OfType(Block)].lin.w.apply(lambda w: w * 0 + 7)  # the engine's rows
    some = net.at.blocks[::2].set(ptc.tree_stack([layers[0], layers[0]]))
    assert np.array_equal(net.blocks.lin.w, before)  # the original is untouched
    assert one.blocks.lin.w[1].tolist() == [9.0, 9.0] and one.blocks.lin.w is not before
    assert many.blocks.lin.w.tolist() == [[7.0, 7.0]] * 3
    assert some.blocks.lin.w[:, 0].tolist() == [0.0, 1.0, 0.0]


def test_a_negative_index_after_every_child() -> None:
    tree = {"a": [1, 2, 3], "b": (4, 5), "c": [6]}
    assert ptc.at(tree)[...][-1].paths() == ["['a'][2]", "['b'][1]", "['c'][0]"]
    assert ptc.at(tree)[...][-2].set(0) == {"a": [1, 0, 3], "b": (0, 5), "c": [6]}
    _, stacked = twins()
    last = stacked.at[...][-1].paths()  # the leaves of the stack's last layer
    assert last and all(p.startswith(".blocks[3].") for p in last)


class Pairish:
    """A node registered without keys: JAX names its children `FlattenedIndexKey(i)`."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


jax.tree_util.register_pytree_node(Pairish, lambda p: ((p.a, p.b), None), lambda _, c: Pairish(*c))


def test_a_node_keyed_by_flattened_index_is_indexed_alike_by_the_walk_and_the_engine() -> None:
    # The walk and the engine ask one helper which child a step names: `[-1]` on such
    # a node counts from the end in both (the engine used to look for a dict key -1).
    tree = [Pairish(1.0, 2.0), Pairish(3.0, 4.0)]
    walked = ptc.at(tree)[1][-1].set(9.0)
    selected = ptc.at(tree)[...][-1].set(9.0)
    assert (walked[1].a, walked[1].b) == (3.0, 9.0)
    assert [(p.a, p.b) for p in selected] == [(1.0, 9.0), (3.0, 9.0)]
    assert ptc.at(tree)[...][-1].paths() == ["[0][<flat index 1>]", "[1][<flat index 1>]"]
