"""tree_to_dict / tree_from_dict: flat names, filters, rename rules, transforms, the same
checks as tree_load, and a PyTorch-style GPT-2 state dict mapped onto a treeclass model."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass

from .test_io import assert_same, make_mlp
from .test_io_safetensors import _trees

# -- a GPT-2-like model and a PyTorch-style state dict for it ------------------------------------


@treeclass
class Linear:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)


@treeclass
class LayerNorm:
    weight: jax.Array = field(kind=Parameter)
    bias: jax.Array = field(kind=Parameter)


@treeclass
class Block:
    ln1: LayerNorm
    qkv: Linear
    proj: Linear
    ln2: LayerNorm
    fc: Linear
    out: Linear


@treeclass
class GPT:
    wte: jax.Array = field(kind=Parameter)
    wpe: jax.Array = field(kind=Parameter)
    blocks: list = field(default_factory=list)
    ln_f: LayerNorm | None = None


V, T, D, L = 11, 8, 4, 3


def gpt_like() -> GPT:
    def lin(i: int, o: int) -> Linear:
        return Linear(jnp.zeros((i, o)), jnp.zeros(o))

    def ln() -> LayerNorm:
        return LayerNorm(jnp.ones(D), jnp.zeros(D))

    blocks = [Block(ln(), lin(D, 3 * D), lin(D, D), ln(), lin(D, 4 * D), lin(4 * D, D))]
    return GPT(jnp.zeros((V, D)), jnp.zeros((T, D)), blocks * L, ln())


def torch_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """What `model.state_dict()` of a PyTorch GPT-2 with nn.Linear layers looks like:
    weights (out, in), layers numbered, a causal-mask buffer per layer."""
    rng = np.random.default_rng(seed)

    def t(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    sd = {"wte.weight": t(V, D), "wpe.weight": t(T, D)}
    for i in range(L):
        h = f"h.{i}."
        sd |= {h + "ln_1.weight": t(D), h + "ln_1.bias": t(D)}
        sd |= {h + "attn.c_attn.weight": t(3 * D, D), h + "attn.c_attn.bias": t(3 * D)}
        sd |= {h + "attn.c_proj.weight": t(D, D), h + "attn.c_proj.bias": t(D)}
        sd |= {h + "attn.bias": np.tril(np.ones((T, T), np.float32))}
        sd |= {h + "ln_2.weight": t(D), h + "ln_2.bias": t(D)}
        sd |= {h + "mlp.c_fc.weight": t(4 * D, D), h + "mlp.c_fc.bias": t(4 * D)}
        sd |= {h + "mlp.c_proj.weight": t(D, 4 * D), h + "mlp.c_proj.bias": t(D)}
    sd |= {"ln_f.weight": t(D), "ln_f.bias": t(D)}
    return sd


RENAME = [
    (r"\.attn\.bias$", None),  # the causal mask buffer: not a weight
    (r"^h\.", "blocks."),
    (r"\.ln_(\d)\.", r".ln\1."),
    (r"\.attn\.c_attn\.", ".qkv."),
    (r"\.attn\.c_proj\.", ".proj."),
    (r"\.mlp\.c_fc\.", ".fc."),
    (r"\.mlp\.c_proj\.", ".out."),
    (r"(qkv|proj|fc|out)\.weight$", r"\1.w"),
    (r"(qkv|proj|fc|out)\.bias$", r"\1.b"),
    (r"^(wte|wpe)\.weight$", r"\1"),
]
TRANSPOSE = {r"\.w$": lambda w: w.T}  # nn.Linear keeps (out, in); x @ w wants (in, out)


def test_gpt2_state_dict_maps_onto_the_model() -> None:
    sd = torch_state_dict()
    model = ptc.tree_from_dict(sd, like=gpt_like(), rename=RENAME, transform=TRANSPOSE)
    assert type(model) is GPT and len(model.blocks) == L
    b2 = model.blocks[2]
    np.testing.assert_array_equal(b2.qkv.w, sd["h.2.attn.c_attn.weight"].T)
    np.testing.assert_array_equal(b2.qkv.b, sd["h.2.attn.c_attn.bias"])
    np.testing.assert_array_equal(b2.out.w, sd["h.2.mlp.c_proj.weight"].T)
    np.testing.assert_array_equal(b2.ln2.weight, sd["h.2.ln_2.weight"])
    np.testing.assert_array_equal(model.wte, sd["wte.weight"])
    np.testing.assert_array_equal(model.ln_f.bias, sd["ln_f.bias"])  # type: ignore[union-attr]
    assert isinstance(model.wte, jax.Array)
    # Each layer got its own arrays, not the first layer's for all.
    assert not np.array_equal(model.blocks[0].fc.w, model.blocks[1].fc.w)
    # And back: the flat names are the model's; undo the renames by hand.
    flat = ptc.tree_to_dict(model)
    assert len(flat) == len(sd) - L  # everything but the masks
    np.testing.assert_array_equal(flat["blocks.1.fc.w"], sd["h.1.mlp.c_fc.weight"].T)


def test_gpt2_mapping_errors_name_the_leaf_and_the_dict_name() -> None:
    sd = torch_state_dict()
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at \.blocks\[0\]\.qkv\.w \(the dict's 'h\.0\.attn\.c_attn\.weight'\): "
        r"the dict has float32\[12,4\], the template float32\[4,12\]\. .*transform",
    ):
        ptc.tree_from_dict(sd, like=gpt_like(), rename=RENAME)  # forgot the transpose
    with pytest.raises(ValueError) as info:
        ptc.tree_from_dict(sd, like=gpt_like(), rename=RENAME[1:], transform=TRANSPOSE)
    msg = str(info.value)
    assert "(3 in the dict but not the template)" in msg
    assert "in the dict but not the template: blocks.0.attn.bias (closest in" in msg
    assert "strict=False" in msg
    with pytest.warns(ptc.PartialLoadWarning, match="3 of the dict's names unused: h.0.attn.bias"):
        model = ptc.tree_from_dict(
            sd, like=gpt_like(), rename=RENAME[1:], transform=TRANSPOSE, strict=False
        )
    np.testing.assert_array_equal(model.blocks[1].proj.b, sd["h.1.attn.c_proj.bias"])


# -- tree_to_dict ---------------------------------------------------------------------------------


def test_to_dict_names_filters_and_separator() -> None:
    model = make_mlp()
    flat = ptc.tree_to_dict(model)
    assert list(flat) == ["layers.0.w", "layers.0.b", "layers.1.w", "layers.1.b", "mean", "lr"]
    assert flat["layers.1.w"] is model.layers[1].w  # never copied
    assert list(ptc.tree_to_dict(model, Parameter)) == list(flat)[:4]
    assert list(ptc.tree_to_dict(model, Parameter, "b", sep="/")) == ["layers/0/b", "layers/1/b"]
    params, _ = ptc.tree_partition(model, ptc.BatchStat)
    assert list(ptc.tree_to_dict(params)) == ["mean"]  # holes hold no leaves
    assert list(ptc.tree_to_dict({"a": (1, {"x": jnp.ones(1)}), "b": [2.0]})) == [
        "a.0",
        "a.1.x",
        "b.0",
    ]
    assert list(ptc.tree_to_dict({3: [2.0], 1: 1.0})) == ["1", "3.0"]
    assert ptc.tree_to_dict(jnp.ones(2)).keys() == {""}


def test_to_dict_refuses_names_two_leaves_share_and_bad_separators() -> None:
    with pytest.raises(
        ValueError,
        match=r"tree_to_dict: the leaves at \['a'\]\['b'\] and \['a.b'\] of the tree both have "
        r"the flat name 'a.b'; flat names must be unique",
    ):
        ptc.tree_to_dict({"a.b": 1.0, "a": {"b": 2.0}})
    assert list(ptc.tree_to_dict({"a.b": 1.0, "a": {"b": 2.0}}, sep="/")) == ["a/b", "a.b"]
    with pytest.raises(ValueError, match=r"tree_to_dict: sep must be a non-empty string, not ''"):
        ptc.tree_to_dict({}, sep="")
    with pytest.raises(ValueError, match=r"tree_from_dict: sep must be a non-empty string, not 1"):
        ptc.tree_from_dict({}, like={}, sep=1)  # type: ignore[arg-type]


# -- round trips and transformations ----------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(tree=_trees)
def test_round_trip_property(tree: object) -> None:
    try:
        flat = ptc.tree_to_dict(tree)
    except ValueError as e:
        assert "both have the flat name" in str(e)
        return
    assert_same(ptc.tree_from_dict(flat, like=tree), tree)
    # Renaming every name and back is the identity too.
    moved = {"model/" + k: v for k, v in flat.items()}
    assert_same(ptc.tree_from_dict(moved, like=tree, rename=[("^model/", "")]), tree)


def test_abstract_template_and_template_types() -> None:
    model = make_mlp()
    flat = {k: np.array(v) if k != "lr" else v for k, v in ptc.tree_to_dict(model).items()}
    abstract = jax.eval_shape(make_mlp)
    out = ptc.tree_from_dict(flat, like=abstract)
    assert isinstance(out.layers[0].w, jax.Array) and out.lr.dtype == jnp.float32
    assert out == model.at.lr.set(jnp.float32(0.1))
    as_numpy = jax.tree.map(np.asarray, model)
    got = ptc.tree_from_dict(flat, like=as_numpy)
    assert isinstance(got.mean, np.ndarray)
    flat["mean"][...] = 7.0  # the result owns its arrays: the dict's are not aliased
    assert float(got.mean) == 0.0
    assert type(ptc.tree_from_dict(flat, like=model).lr) is float


def test_works_under_jit_and_grad() -> None:
    model = make_mlp()
    flat = ptc.tree_to_dict(model, Parameter)
    like = ptc.tree_filter(model, Parameter)

    def loss(d: dict) -> jax.Array:
        m = ptc.tree_from_dict(d, like=like)
        x = jnp.ones((2, 3))
        for layer in m.layers:
            x = x @ layer.w + layer.b
        return jnp.sum(x**2)

    grads = jax.jit(jax.grad(loss))(flat)
    assert grads.keys() == flat.keys()
    expected = jax.grad(lambda m: loss(ptc.tree_to_dict(m, Parameter)))(like)
    assert ptc.tree_equal(ptc.tree_from_dict(grads, like=like), expected)
    out = jax.jit(lambda d: ptc.tree_to_dict(ptc.tree_from_dict(d, like=like)))(flat)
    assert ptc.tree_equal(out, flat)


def test_rename_rules_apply_in_order_and_may_be_a_dict() -> None:
    like = {"enc": [{"w": np.zeros(2)}]}
    src = {"encoder/layer_0/kernel": np.ones(2)}
    rules = {"/": ".", r"layer_(\d+)": r"\1", r"^encoder": "enc", "kernel$": "w"}
    out = ptc.tree_from_dict(src, like=like, rename=rules)
    np.testing.assert_array_equal(out["enc"][0]["w"], [1.0, 1.0])
    fn_rule = [(r"^(\w+)$", lambda m: m.group(1).lower())]
    assert ptc.tree_from_dict({"W": 1.0}, like={"w": 0.0}, rename=fn_rule) == {"w": 1.0}


def test_transforms_match_the_new_names_every_match_in_order() -> None:
    like = {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)}
    src = {"a": np.ones(2), "b": np.ones(2, np.float32)}  # "a" is float64
    out = ptc.tree_from_dict(
        src,
        like=like,
        transform=[(r"a", lambda x: x.astype(np.float32)), (r".", lambda x: x * 2)],
    )
    np.testing.assert_array_equal(out["a"], [2.0, 2.0])
    np.testing.assert_array_equal(out["b"], [2.0, 2.0])


def test_array_likes_are_converted() -> None:
    class TensorLike:  # what a torch tensor offers NumPy
        shape = (2,)

        def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
            return np.array([1.0, 2.0], np.float32)

    out = ptc.tree_from_dict({"w": TensorLike()}, like={"w": jnp.zeros(2)})
    np.testing.assert_array_equal(out["w"], [1.0, 2.0])


# -- errors ---------------------------------------------------------------------------------------


def test_missing_and_unexpected_names_are_listed() -> None:
    like = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
    with pytest.raises(
        ValueError,
        match=r"tree_from_dict: the dict does not match the template's names \(1 missing from "
        r"the dict, 2 in the dict but not the template\)\.\n  missing from the dict: b\n  "
        r"in the dict but not the template: c, d\nMap the dict's names",
    ):
        ptc.tree_from_dict({"a": np.ones(1), "c": 1, "d": 2}, like=like)
    # Not strict: b keeps the template's value, c is unused, and both are reported.
    with pytest.warns(ptc.PartialLoadWarning, match=r"1 missing from the dict: b\n") as rec:
        out = ptc.tree_from_dict({"a": np.ones(1, np.float32), "c": 1}, like=like, strict=False)
    assert out["b"] is like["b"] and (out["a"] == 1).all()
    w = rec[0].message
    assert isinstance(w, ptc.PartialLoadWarning)
    assert (w.missing, w.mismatched, w.unused) == (("b",), (), ("c",))


def test_dtype_and_type_mismatches() -> None:
    with pytest.raises(
        ValueError,
        match=r"dtype mismatch at \['w'\]: the dict has float64\[2\], the template float32\[2\]\. "
        r"Fix the rename rules, or convert the value with transform",
    ):
        ptc.tree_from_dict({"w": np.zeros(2)}, like={"w": jnp.zeros(2)})
    with pytest.raises(
        ValueError,
        match=r"type mismatch at \['n'\]: the dict has a Python float, the template a Python int",
    ):
        ptc.tree_from_dict({"n": 1.5}, like={"n": 0})


def test_bad_rules_and_values_are_clear_errors() -> None:
    like = {"w": jnp.zeros(1)}
    src = {"w": np.zeros(1, np.float32)}
    with pytest.raises(
        TypeError, match=r"each rename rule is a \(pattern, replacement or None\) pair, got 'w'"
    ):
        ptc.tree_from_dict(src, like=like, rename=["w"])  # type: ignore[list-item]
    with pytest.raises(
        ValueError, match=r"the rename pattern '\(' is not a valid regular expression"
    ):
        ptc.tree_from_dict(src, like=like, rename=[("(", "x")])
    with pytest.raises(TypeError, match=r"the replacement for rename pattern 'w' must be a string"):
        ptc.tree_from_dict(src, like=like, rename=[("w", 3)])
    with pytest.raises(TypeError, match=r"the transform for pattern 'w' must be a function, not 3"):
        ptc.tree_from_dict(src, like=like, transform={"w": 3})
    with pytest.raises(TypeError, match=r"each transform rule is a \(pattern, function\) pair"):
        ptc.tree_from_dict(src, like=like, transform=[(1, abs)])  # type: ignore[list-item]
    with pytest.raises(
        ValueError, match=r"the names 'a' and 'b' of the dict are both renamed to 'w'"
    ):
        ptc.tree_from_dict({"a": 1.0, "b": 2.0}, like={"w": 0.0}, rename=[("[ab]", "w")])
    with pytest.raises(TypeError, match=r"the value for 'w' is a str; values must be arrays"):
        ptc.tree_from_dict({"w": "x"}, like=like)
    with pytest.raises(TypeError, match=r"the dict's keys must be strings, not 0"):
        ptc.tree_from_dict({0: np.zeros(1)}, like=like)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"expected a mapping of names to arrays, got list"):
        ptc.tree_from_dict([("w", np.zeros(1))], like=like)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"the template holds a str leaf at \['w'\]"):
        ptc.tree_from_dict(src, like={"w": "x"})
    with pytest.raises(ValueError, match=r"of the template both have the flat name 'a.b'"):
        ptc.tree_from_dict({}, like={"a.b": 1.0, "a": {"b": 2.0}})


# -- numbered layers <-> a stacked field ------------------------------------------------------


@treeclass
class StackedGPT:
    wte: jax.Array = field(kind=Parameter)
    wpe: jax.Array = field(kind=Parameter)
    blocks: Block = field(stack="layers")
    ln_f: LayerNorm


def stacked_like() -> StackedGPT:
    m = gpt_like()
    return StackedGPT(m.wte, m.wpe, ptc.tree_stack(m.blocks), m.ln_f)  # type: ignore[arg-type]


def test_numbered_layers_fill_a_stacked_field() -> None:
    sd = torch_state_dict()
    model = ptc.tree_from_dict(sd, like=stacked_like(), rename=RENAME, transform=TRANSPOSE)
    assert type(model) is StackedGPT and isinstance(model.blocks.qkv.w, jax.Array)
    assert model.blocks.qkv.w.shape == (L, D, 3 * D)
    for i in range(L):  # each row is its own layer's weight, transposed
        np.testing.assert_array_equal(model.blocks.qkv.w[i], sd[f"h.{i}.attn.c_attn.weight"].T)
        np.testing.assert_array_equal(model.blocks.ln2.bias[i], sd[f"h.{i}.ln_2.bias"])
        np.testing.assert_array_equal(
            model.at.blocks[i].out.w.get(), sd[f"h.{i}.mlp.c_proj.weight"].T
        )
    # The same weights as the list model, stacked.
    listed = ptc.tree_from_dict(sd, like=gpt_like(), rename=RENAME, transform=TRANSPOSE)
    assert_same(model.blocks, ptc.tree_stack(listed.blocks))
    assert_same(model.ln_f, listed.ln_f)


def test_unstack_writes_one_name_per_layer_and_reads_back() -> None:
    sd = torch_state_dict()
    model = ptc.tree_from_dict(sd, like=stacked_like(), rename=RENAME, transform=TRANSPOSE)
    listed = ptc.tree_from_dict(sd, like=gpt_like(), rename=RENAME, transform=TRANSPOSE)
    numbered = ptc.tree_to_dict(model, unstack=True)
    by_list = ptc.tree_to_dict(listed)
    assert sorted(numbered) == sorted(by_list)
    for name, value in by_list.items():
        np.testing.assert_array_equal(numbered[name], value)
    # Each stacked leaf's layers come together, in order, where the leaf is.
    assert list(numbered)[2:5] == [
        "blocks.0.ln1.weight",
        "blocks.1.ln1.weight",
        "blocks.2.ln1.weight",
    ]
    # Both spellings read back into either template.
    assert_same(ptc.tree_from_dict(numbered, like=stacked_like()), model)
    assert_same(ptc.tree_from_dict(ptc.tree_to_dict(model), like=stacked_like()), model)
    assert_same(ptc.tree_from_dict(numbered, like=gpt_like()), listed)
    # Without stacks unstack changes nothing; with filters only selected leaves come.
    assert ptc.tree_to_dict(listed, unstack=True).keys() == by_list.keys()
    assert list(ptc.tree_to_dict(model, "qkv", unstack=True)) == [
        f"blocks.{i}.qkv.{p}" for p in "wb" for i in range(L)
    ]


@treeclass
class StackHolder:
    blocks: dict = field(stack="layers")


def test_unstacked_values_are_rows_of_the_leaf() -> None:
    blocks = {"w": np.repeat(np.arange(3, dtype=np.float32)[:, None], 2, axis=1)}
    tree = StackHolder(blocks)
    flat = ptc.tree_to_dict(tree, unstack=True)
    assert list(flat) == ["blocks.0.w", "blocks.1.w", "blocks.2.w"]
    assert all(np.shares_memory(v, blocks["w"]) for v in flat.values())  # NumPy: views
    np.testing.assert_array_equal(flat["blocks.2.w"], [2.0, 2.0])
    on_device = jax.tree.map(jnp.asarray, tree)
    rows = ptc.tree_to_dict(on_device, unstack=True)
    assert all(isinstance(v, jax.Array) and v.shape == (2,) for v in rows.values())
    abstract = ptc.tree_to_dict(jax.eval_shape(lambda: on_device), unstack=True)
    assert abstract["blocks.1.w"] == jax.ShapeDtypeStruct((2,), jnp.float32)


def test_unstack_refuses_a_stack_whose_leaves_disagree() -> None:
    bad = StackHolder({"a": jnp.zeros((2, 1)), "b": jnp.zeros((3, 1))})
    with pytest.raises(ValueError, match=r"tree_to_dict: the leaves of a stack disagree"):
        ptc.tree_to_dict(bad, unstack=True)
    with pytest.raises(ValueError, match=r"tree_from_dict: the leaves of a stack disagree"):
        ptc.tree_from_dict({}, like=bad)


@treeclass
class Inner:
    w: jax.Array
    sub: dict = field(stack="inner")


def test_nested_stacks_number_both_axes() -> None:
    # 2 outer layers, each with 3 inner layers: sub leaves are [2, 3, ...].
    inner = Inner(jnp.zeros((2, 4)), {"v": jnp.arange(2 * 3 * 5.0).reshape(2, 3, 5)})
    tree = StackHolder(inner)  # type: ignore[arg-type]
    flat = ptc.tree_to_dict(tree, unstack=True)
    assert list(flat)[:3] == ["blocks.0.w", "blocks.1.w", "blocks.0.sub.0.v"]
    assert len(flat) == 2 + 6
    np.testing.assert_array_equal(flat["blocks.1.sub.2.v"], inner.sub["v"][1, 2])
    assert_same(ptc.tree_from_dict(flat, like=tree), tree)
    shuffled = dict(reversed(list(flat.items())))
    assert_same(ptc.tree_from_dict(shuffled, like=tree), tree)


def test_nested_stacks_load_from_a_file_layer_by_layer(tmp_path: Path) -> None:
    """tree_load reads each (outer, inner) layer straight into its place."""
    inner = Inner(jnp.zeros((2, 4)), {"v": jnp.arange(2 * 3 * 5.0).reshape(2, 3, 5)})
    tree = StackHolder(inner)  # type: ignore[arg-type]
    path = str(tmp_path / "nested.safetensors")
    ptc.tree_save(path, tree, unstack=True, rename={r"^blocks\.": "h."})
    out = ptc.tree_load(path, like=jax.eval_shape(lambda: tree), rename={r"^h\.": "blocks."})
    assert_same(out, tree)


def test_transforms_and_renames_see_the_numbered_names() -> None:
    like = StackHolder(ptc.tree_stack([{"w": jnp.zeros(2)}] * 3))
    src = {f"h.{i}.w": np.full(2, float(i), np.float32) for i in range(3)}
    out = ptc.tree_from_dict(
        src, like=like, rename=[(r"^h\.", "blocks.")], transform={r"^blocks\.1\.": lambda x: -x}
    )
    np.testing.assert_array_equal(out.blocks["w"], [[0, 0], [-1, -1], [2, 2]])


def test_python_numbers_fill_rows_of_a_stacked_leaf() -> None:
    like = StackHolder({"s": jnp.zeros(2, jnp.int8)})
    out = ptc.tree_from_dict({"blocks.0.s": 3, "blocks.1.s": -4}, like=like)
    assert out.blocks["s"].dtype == jnp.int8
    np.testing.assert_array_equal(out.blocks["s"], [3, -4])
    with pytest.raises(
        ValueError,
        match=r"value mismatch at \.blocks\[1\]\['s'\]: the dict has the Python int 300, "
        r"which does not fit int8",
    ):
        ptc.tree_from_dict({"blocks.0.s": 3, "blocks.1.s": 300}, like=like)


def test_stacked_field_errors_name_the_layer() -> None:
    sd = torch_state_dict()
    like = stacked_like()
    load = functools.partial(ptc.tree_from_dict, like=like, rename=RENAME)
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at \.blocks\[0\]\.qkv\.w \(the dict's 'h\.0\.attn\.c_attn\.weight'\): "
        r"the dict has float32\[12,4\], the template float32\[4,12\]",
    ):
        load(sd)  # forgot the transpose
    partial = {k: v for k, v in sd.items() if k != "h.2.attn.c_attn.weight"}
    with pytest.raises(ValueError, match=r"missing from the dict: blocks\.2\.qkv\.w ") as info:
        load(partial, transform=TRANSPOSE)
    assert "from its stacked name ('wte'" not in str(info.value)
    assert "read from its stacked name ('blocks.ln1.weight') or from one name per layer " in str(
        info.value
    )
    none = {k: v for k, v in sd.items() if ".attn.c_attn.weight" not in k}
    with pytest.raises(ValueError, match=r"missing from the dict: blocks\.qkv\.w "):
        load(none, transform=TRANSPOSE)


def test_both_spellings_at_once_are_unexpected_unless_not_strict() -> None:
    like = StackHolder(ptc.tree_stack([{"w": jnp.zeros(2)}] * 2))
    both = {"blocks.w": np.ones((2, 2), np.float32)}
    both |= {f"blocks.{i}.w": np.zeros(2, np.float32) for i in range(2)}
    with pytest.raises(
        ValueError,
        match=r"in the dict but not the template: blocks\.0\.w \(closest in the template: "
        r"blocks\.w\), blocks\.1\.w ",
    ):
        ptc.tree_from_dict(both, like=like)
    with pytest.warns(ptc.PartialLoadWarning, match=r"2 of the dict's names unused"):
        out = ptc.tree_from_dict(both, like=like, strict=False)  # the stacked name wins
    np.testing.assert_array_equal(out.blocks["w"], np.ones((2, 2)))


def test_numbered_layers_under_jit_and_grad() -> None:
    like = StackHolder(ptc.tree_stack([{"w": jnp.zeros(2)}] * 3))
    src = {f"blocks.{i}.w": jnp.full(2, i + 1.0) for i in range(3)}

    def loss(d: dict) -> jax.Array:
        tree = ptc.tree_from_dict(d, like=like)
        return ptc.scan_layers(lambda layer, x: x * layer["w"], tree.blocks, jnp.ones(2)).sum()

    assert float(jax.jit(loss)(src)) == 12.0
    grads = jax.jit(jax.grad(loss))(src)
    assert grads.keys() == src.keys()
    np.testing.assert_allclose(grads["blocks.0.w"], [6.0, 6.0])  # d(1*2*3)/d w0 = 2*3
    back = jax.jit(lambda t: ptc.tree_to_dict(t, unstack=True))(ptc.tree_from_dict(src, like=like))
    assert back.keys() == src.keys()


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    shapes=st.lists(st.lists(st.integers(1, 3), max_size=2), min_size=1, max_size=4),
)
def test_numbered_round_trip_property(n: int, shapes: list[list[int]]) -> None:
    rng = np.random.default_rng(n)
    layers = [
        {f"x{j}": rng.normal(size=s).astype(np.float32) for j, s in enumerate(shapes)}
        for _ in range(n)
    ]
    tree = StackHolder(ptc.tree_stack(layers))
    numbered = ptc.tree_to_dict(tree, unstack=True)
    assert len(numbered) == n * len(shapes)
    for i, layer in enumerate(layers):
        for k, v in layer.items():
            np.testing.assert_array_equal(numbered[f"blocks.{i}.{k}"], v)
    assert_same(ptc.tree_from_dict(numbered, like=tree), tree)
    assert_same(ptc.tree_from_dict(ptc.tree_to_dict(tree), like=tree), tree)


def test_numbered_names_that_collide_with_another_leaf_are_refused() -> None:
    # `s.blocks.0.w` is both layer 0 of the stacked leaf `s.blocks.w` and a dict key path.
    like = {"s": StackHolder({"w": jnp.zeros((2, 1))}), "s.blocks.0": {"w": jnp.zeros(1)}}
    src = {"s.blocks.0.w": np.zeros(1, np.float32), "s.blocks.1.w": np.zeros(1, np.float32)}
    with pytest.raises(
        ValueError,
        match=r"tree_from_dict: the template has two leaves named 's\.blocks\.0\.w' once stacked "
        r"fields are numbered by layer; flat names must be unique",
    ):
        ptc.tree_from_dict(src, like=like)
    # Read by their stacked names there is no clash.
    stacked = {"s.blocks.w": np.ones((2, 1), np.float32), "s.blocks.0.w": np.ones(1, np.float32)}
    out = ptc.tree_from_dict(stacked, like=like)
    assert out["s"].blocks["w"].shape == (2, 1)


def test_numbered_layers_into_a_numpy_template_give_writable_numpy() -> None:
    like = StackHolder({"w": np.zeros((2, 3), np.float32)})
    for make in (np.ones, jnp.ones):  # layers from NumPy or from JAX
        src = {f"blocks.{i}.w": make(3, np.float32) * i for i in range(2)}
        out = ptc.tree_from_dict(src, like=like)
        w = out.blocks["w"]
        assert type(w) is np.ndarray and w.flags.writeable
        np.testing.assert_array_equal(w, [[0, 0, 0], [1, 1, 1]])
