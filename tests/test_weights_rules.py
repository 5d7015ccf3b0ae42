"""Rules both ways: a Hugging Face GPT-2 `.safetensors` file as `transformers` writes it,
loaded by `tree_load` into a list model and a stacked model and written back bit for bit;
one tensor feeding several fields and several fields written as one; tied weights; partial
loads; and the errors that say what to fix."""

from __future__ import annotations

import os
import tracemalloc
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass

# -- GPT-2 as transformers' GPT2LMHeadModel.save_pretrained writes it ----------------------------
#
# transformers' GPT-2 uses Conv1D layers, whose weight is (in, out): y = x @ weight + bias,
# so nothing is transposed. GPT2LMHeadModel's state dict prefixes the body with
# `transformer.` and has `lm_head.weight`, tied to `transformer.wte.weight`; save_pretrained
# leaves the tied copy out and writes {"format": "pt"} as metadata. The causal mask
# `attn.bias` is a non-persistent buffer today, but older files (the hub's `gpt2`) have it,
# without the prefix.

V, T, D, L = 13, 8, 4, 3  # vocabulary, context, width, layers


def hf_gpt2_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def t(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    out = {"transformer.wte.weight": t(V, D), "transformer.wpe.weight": t(T, D)}
    for i in range(L):
        h = f"transformer.h.{i}."
        out |= {h + "ln_1.weight": t(D), h + "ln_1.bias": t(D)}
        out |= {h + "attn.c_attn.weight": t(D, 3 * D), h + "attn.c_attn.bias": t(3 * D)}
        out |= {h + "attn.c_proj.weight": t(D, D), h + "attn.c_proj.bias": t(D)}
        out |= {h + "ln_2.weight": t(D), h + "ln_2.bias": t(D)}
        out |= {h + "mlp.c_fc.weight": t(D, 4 * D), h + "mlp.c_fc.bias": t(4 * D)}
        out |= {h + "mlp.c_proj.weight": t(4 * D, D), h + "mlp.c_proj.bias": t(D)}
    out |= {"transformer.ln_f.weight": t(D), "transformer.ln_f.bias": t(D)}
    return out


@pytest.fixture
def hf_file(tmp_path: Any) -> str:
    path = str(tmp_path / "model.safetensors")
    save_file(hf_gpt2_tensors(), path, metadata={"format": "pt"})
    return path


@treeclass
class Conv1D:
    weight: jax.Array = field(kind=Parameter)  # (in, out)
    bias: jax.Array = field(kind=Parameter)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight + self.bias


@treeclass
class LayerNorm:
    weight: jax.Array = field(kind=Parameter)
    bias: jax.Array = field(kind=Parameter)


@treeclass
class Attention:
    c_attn: Conv1D
    c_proj: Conv1D


@treeclass
class MLP:
    c_fc: Conv1D
    c_proj: Conv1D


@treeclass
class Block:
    ln_1: LayerNorm
    attn: Attention
    ln_2: LayerNorm
    mlp: MLP


@treeclass
class Embedding:
    weight: jax.Array = field(kind=Parameter)


@treeclass
class Head:
    weight: jax.Array = field(kind=Parameter)  # (vocabulary, width), tied to wte


@treeclass
class GPT2:
    wte: Embedding
    wpe: Embedding
    h: list
    ln_f: LayerNorm
    lm_head: Head


@treeclass
class StackedGPT2:
    wte: Embedding
    wpe: Embedding
    h: Block = field(stack="layers")
    ln_f: LayerNorm
    lm_head: Head


def _block() -> Block:
    def conv(i: int, o: int) -> Conv1D:
        return Conv1D(jnp.zeros((i, o)), jnp.zeros(o))

    def ln() -> LayerNorm:
        return LayerNorm(jnp.ones(D), jnp.zeros(D))

    return Block(
        ln(), Attention(conv(D, 3 * D), conv(D, D)), ln(), MLP(conv(D, 4 * D), conv(4 * D, D))
    )


def init() -> GPT2:
    blocks = [_block() for _ in range(L)]
    ln_f = LayerNorm(jnp.ones(D), jnp.zeros(D))
    return GPT2(
        Embedding(jnp.zeros((V, D))),
        Embedding(jnp.zeros((T, D))),
        blocks,
        ln_f,
        Head(jnp.zeros((V, D))),
    )


def init_stacked() -> StackedGPT2:
    m = init()
    return StackedGPT2(m.wte, m.wpe, ptc.tree_stack(m.h), m.ln_f, m.lm_head)


# The user's glue, both ways (the measure: at most 6 lines each).
LOAD = dict(
    rename=[
        (r"^transformer\.", ""),  # GPT2LMHeadModel's prefix (the hub's gpt2 has none)
        (r"\.attn\.(masked_)?bias$", None),  # causal-mask buffers of older files
        (r"^wte\.weight$", ("wte.weight", "lm_head.weight")),  # the tied head
    ]
)
SAVE = dict(rename=[(r"^lm_head\.", None), (r"^", "transformer.")], unstack=True)


def _same_tensors(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(sorted(a)) == list(sorted(b))
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


@pytest.mark.parametrize("make", [init, init_stacked], ids=["list", "stacked"])
def test_hf_gpt2_file_loads_and_writes_back_bit_identically(
    hf_file: str, tmp_path: Any, make: Any
) -> None:
    file = load_file(hf_file)
    with safe_open(hf_file, "np") as f:
        assert f.metadata() == {"format": "pt"}
    template = jax.eval_shape(make)
    model = ptc.tree_load(hf_file, like=template, **LOAD)
    h2 = model.h[2] if isinstance(model, GPT2) else model.at.h[2].get()
    np.testing.assert_array_equal(h2.attn.c_attn.weight, file["transformer.h.2.attn.c_attn.weight"])
    np.testing.assert_array_equal(h2.mlp.c_proj.weight, file["transformer.h.2.mlp.c_proj.weight"])
    np.testing.assert_array_equal(model.lm_head.weight, file["transformer.wte.weight"])
    np.testing.assert_array_equal(model.ln_f.bias, file["transformer.ln_f.bias"])
    assert isinstance(model.wte.weight, jax.Array)
    if isinstance(model, StackedGPT2):
        assert model.h.attn.c_attn.weight.shape == (L, D, 3 * D)
    # Export after import is the identity: the same names, dtypes, shapes and bytes...
    back = ptc.tree_to_dict(model, **SAVE)
    _same_tensors(back, file)
    # ... and the same file, byte for byte, when written as transformers writes it.
    out = str(tmp_path / "back.safetensors")
    save_file({k: np.asarray(v) for k, v in back.items()}, out, metadata={"format": "pt"})
    with open(out, "rb") as a, open(hf_file, "rb") as b:
        assert a.read() == b.read()
    # tree_save takes the same rules: the reference reader sees the same tensors.
    saved = str(tmp_path / "saved.safetensors")
    ptc.tree_save(saved, model, **SAVE)
    _same_tensors(load_file(saved), file)
    # And the loaded model computes with them: block 0's attention input projection.
    x = jnp.ones((2, D))
    qkv = h2.attn.c_attn(x)
    w, b = file["transformer.h.2.attn.c_attn.weight"], file["transformer.h.2.attn.c_attn.bias"]
    np.testing.assert_allclose(qkv, np.ones((2, D), np.float32) @ w + b, rtol=1e-6)


def test_hub_layout_without_prefix_and_with_mask_buffers_loads_too(tmp_path: Any) -> None:
    tensors = {k.removeprefix("transformer."): v for k, v in hf_gpt2_tensors(1).items()}
    mask = np.tril(np.ones((T, T), np.float32))[None, None]
    tensors |= {f"h.{i}.attn.bias": mask for i in range(L)}
    path = str(tmp_path / "gpt2.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    model = ptc.tree_load(path, like=jax.eval_shape(init_stacked), **LOAD)
    np.testing.assert_array_equal(model.h.ln_2.bias[1], tensors["h.1.ln_2.bias"])
    np.testing.assert_array_equal(model.lm_head.weight, tensors["wte.weight"])
    # tree_from_dict takes the very same rules.
    same = ptc.tree_from_dict(load_file(path), like=jax.eval_shape(init_stacked), **LOAD)
    assert ptc.tree_equal(same, model)


def test_stacked_load_reads_layers_straight_into_one_array(tmp_path: Any) -> None:
    """No layer is read into memory of its own and then copied into the stack: the
    stacked leaf's array is the only host allocation of its size (tracemalloc sees
    NumPy's allocations)."""
    path = str(tmp_path / "layers.safetensors")
    rows = {f"h.{i}.w": np.full((256, 256), i, np.float32) for i in range(4)}
    save_file(rows, path)
    like = StackHolder(ptc.tree_stack([{"w": np.zeros((256, 256), np.float32)}] * 4))
    tracemalloc.start()
    try:
        out = ptc.tree_load(path, like=like, rename=[(r"^h\.", "blocks.")])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out.blocks["w"][:, 0, 0], [0, 1, 2, 3])
    # The file's bytes once (plus bookkeeping), not the layers and then their stack.
    assert peak < 1.2 * os.path.getsize(path)


# -- one tensor to several fields, several fields to one tensor -----------------------------------


@treeclass
class SplitAttention:
    q: Conv1D
    k: Conv1D
    v: Conv1D
    c_proj: Conv1D


@treeclass
class SplitBlock:
    ln_1: LayerNorm
    attn: SplitAttention
    ln_2: LayerNorm
    mlp: MLP


@treeclass
class SplitGPT2:
    wte: Embedding
    wpe: Embedding
    h: SplitBlock = field(stack="layers")
    ln_f: LayerNorm


def init_split() -> SplitGPT2:
    m = init()

    def split(b: Block) -> SplitBlock:
        a = b.attn
        q = Conv1D(jnp.zeros((D, D)), jnp.zeros(D))
        return SplitBlock(b.ln_1, SplitAttention(q, q, q, a.c_proj), b.ln_2, b.mlp)

    return SplitGPT2(m.wte, m.wpe, ptc.tree_stack([split(b) for b in m.h]), m.ln_f)


def _part(i: int) -> Any:
    return lambda w: np.split(w, 3, axis=-1)[i]


SPLIT_LOAD = dict(
    rename=[(r"^transformer\.", ""), (r"\.c_attn\.", (".q.", ".k.", ".v."))],
    transform={r"\.q\.": _part(0), r"\.k\.": _part(1), r"\.v\.": _part(2)},
)
SPLIT_SAVE = dict(
    rename=[(r"\.attn\.[qkv]\.", ".attn.c_attn."), (r"^", "transformer.")],
    transform={r"\.c_attn\.": lambda qkv: np.concatenate(qkv, axis=-1)},
    unstack=True,
)


def test_one_tensor_feeds_q_k_v_and_they_are_written_back_as_one(hf_file: str) -> None:
    file = load_file(hf_file)
    model = ptc.tree_load(hf_file, like=jax.eval_shape(init_split), **SPLIT_LOAD)
    w = file["transformer.h.1.attn.c_attn.weight"]
    np.testing.assert_array_equal(model.h.attn.q.weight[1], w[:, :D])
    np.testing.assert_array_equal(model.h.attn.k.weight[1], w[:, D : 2 * D])
    np.testing.assert_array_equal(model.h.attn.v.weight[1], w[:, 2 * D :])
    np.testing.assert_array_equal(
        model.h.attn.v.bias[2], file["transformer.h.2.attn.c_attn.bias"][2 * D :]
    )
    # The gathered tensors arrive in the tree's order (q, k, v): back to the same bytes.
    back = ptc.tree_to_dict(model, **SPLIT_SAVE)
    _same_tensors({k: v for k, v in back.items()}, {k: v for k, v in file.items()})
    # The same rules on a dict.
    same = ptc.tree_from_dict(file, like=jax.eval_shape(init_split), **SPLIT_LOAD)
    assert ptc.tree_equal(same, model)


def test_a_gather_without_a_transform_is_an_error_naming_both() -> None:
    tree = {"q": jnp.ones(2), "k": jnp.zeros(2)}
    with pytest.raises(
        ValueError,
        match=r"tree_to_dict: the names 'k' and 'q' of the tree are both renamed to 'qk'; make "
        r"the rename rules tell them apart, or write them as one tensor with a transform for "
        r"that name, which receives their values as a tuple in the tree's order \(e\.g\. "
        r"transform=\{'qk': lambda parts: np\.concatenate\(parts, -1\)\}\)\.$",
    ):
        ptc.tree_to_dict(tree, rename=[(r"^[qk]$", "qk")])
    joined = ptc.tree_to_dict(tree, rename=[(r"^[qk]$", "qk")], transform={"qk": jnp.stack})
    np.testing.assert_array_equal(joined["qk"], [[0, 0], [1, 1]])  # the tree's order: k, q
    with pytest.raises(ValueError, match=r"tree_from_dict: the names 'a' and 'b' of the dict"):
        ptc.tree_from_dict(
            {"a": np.ones(1, np.float32), "b": np.ones(1, np.float32)},
            like={"x": jnp.zeros(1)},
            rename=[(r"^[ab]$", "x")],
        )
    # On import, a gather joined by a transform fills one leaf from several names.
    out = ptc.tree_from_dict(
        {"a": np.ones(1, np.float32), "b": np.zeros(1, np.float32)},
        like={"x": jnp.zeros(2)},
        rename=[(r"^[ab]$", "x")],
        transform={"x": np.concatenate},
    )
    np.testing.assert_array_equal(out["x"], [1, 0])


def test_fan_out_gives_each_field_the_value_and_numpy_leaves_do_not_alias() -> None:
    w = np.arange(4, dtype=np.float32)
    like = {"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)}
    out = ptc.tree_from_dict({"w": w}, like=like, rename=[("^w$", ("a", "b"))])
    np.testing.assert_array_equal(out["a"], w)
    out["a"][0] = 100  # NumPy leaves are copies: neither the dict nor the other leaf moves
    assert out["b"][0] == 0 and w[0] == 0


def test_fan_out_from_a_file_reads_once_and_leaves_do_not_alias(tmp_path: Any) -> None:
    path = str(tmp_path / "t.safetensors")
    save_file({"w": np.arange(4, dtype=np.float32)}, path)
    like = {"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)}
    out = ptc.tree_load(path, like=like, rename=[("^w$", ("a", "b"))])
    out["a"][0] = 100
    assert out["b"][0] == 0


@pytest.mark.parametrize("n", [4, 64 * 1024])
def test_fan_out_into_device_leaves_gives_each_its_own_memory(tmp_path: Any, n: int) -> None:
    # One file tensor feeding two JAX leaves (a tied head): they must not share a buffer,
    # or donating the loaded model is refused ("donate the same buffer twice").
    path = str(tmp_path / "t.safetensors")
    save_file({"w": np.arange(n, dtype=np.float32)}, path)
    like = {
        "a": jax.ShapeDtypeStruct((n,), jnp.float32),
        "b": jax.ShapeDtypeStruct((n,), jnp.float32),
    }
    out = ptc.tree_load(path, like=like, rename=[("^w$", ("a", "b"))])
    assert out["a"].unsafe_buffer_pointer() != out["b"].unsafe_buffer_pointer()
    step = jax.jit(lambda t: jax.tree.map(lambda x: x + 1, t), donate_argnums=0)
    new = step(out)
    assert float(new["a"][1]) == float(new["b"][1]) == 2.0


def test_tied_field_left_out_on_export_and_filled_on_import(tmp_path: Any) -> None:
    model = init()
    flat = ptc.tree_to_dict(model, **SAVE)
    assert not any(k.startswith("lm_head") for k in flat)
    assert "transformer.h.0.ln_1.weight" in flat


# -- export and import agree: a law -------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    prefix=st.sampled_from(["", "model.", "transformer."]),
    stacked=st.booleans(),
)
def test_export_after_import_is_the_identity(n: int, prefix: str, stacked: bool) -> None:
    rng = np.random.default_rng(n)
    flat = {f"{prefix}h.{i}.w": rng.normal(size=(2, 3)).astype(np.float32) for i in range(n)}
    flat[f"{prefix}emb"] = rng.normal(size=(5,)).astype(np.float32)
    load = dict(
        rename=[(f"^{prefix}", ""), (r"^h\.", "blocks.")] if prefix else [(r"^h\.", "blocks.")]
    )
    save = dict(rename=[(r"^blocks\.", "h."), (r"^", prefix)], unstack=True)
    if stacked:
        like: Any = StackHolder(ptc.tree_stack([{"w": jnp.zeros((2, 3))}] * n), jnp.zeros(5))
    else:
        like = ListHolder([{"w": jnp.zeros((2, 3))}] * n, jnp.zeros(5))
    model = ptc.tree_from_dict(flat, like=like, **load)
    _same_tensors(ptc.tree_to_dict(model, **save), flat)


@treeclass
class StackHolder:
    blocks: dict = field(stack="layers")
    emb: Any = None


@treeclass
class ListHolder:
    blocks: list
    emb: Any = None


# -- partial loads ------------------------------------------------------------------------------


@treeclass
class Classifier:
    body: Conv1D
    head: Conv1D


def test_new_head_skipped_by_shape_keeps_its_init_and_is_reported(tmp_path: Any) -> None:
    path = str(tmp_path / "pretrained.safetensors")
    pre = Classifier(
        Conv1D(jnp.ones((4, 4)), jnp.ones(4)), Conv1D(jnp.ones((4, 1000)), jnp.ones(1000))
    )
    ptc.tree_save(path, pre)
    new = Classifier(
        Conv1D(jnp.zeros((4, 4)), jnp.zeros(4)), Conv1D(jnp.full((4, 10), 7.0), jnp.zeros(10))
    )
    with pytest.raises(
        ValueError, match=r"shape mismatch at \.head\.weight: the file has float32\[4,1000\]"
    ):
        ptc.tree_load(path, like=new)
    with pytest.warns(ptc.PartialLoadWarning) as rec:
        out = ptc.tree_load(path, like=new, on_mismatch="skip")
    w = rec[0].message
    assert isinstance(w, ptc.PartialLoadWarning)
    assert w.mismatched == ("head.weight", "head.bias") and w.missing == w.unused == ()
    assert "2 with another shape or dtype: head.weight (shape mismatch: the file has " in str(w)
    assert out.head.weight is new.head.weight  # kept as it is
    np.testing.assert_array_equal(out.body.weight, np.ones((4, 4)))
    # The same from a dict, and for .npz files.
    with pytest.warns(ptc.PartialLoadWarning, match="2 with another shape"):
        ptc.tree_from_dict(ptc.tree_to_dict(pre), like=new, on_mismatch="skip")
    npz = str(tmp_path / "pretrained.npz")
    ptc.tree_save(npz, pre)
    with pytest.warns(ptc.PartialLoadWarning, match=r"\.head\.weight \(shape mismatch"):
        out = ptc.tree_load(npz, like=new, on_mismatch="skip")
    assert out.head.weight is new.head.weight


def test_strict_false_loads_the_common_names_of_a_file(tmp_path: Any) -> None:
    path = str(tmp_path / "body.safetensors")
    ptc.tree_save(path, {"body": {"w": jnp.ones(3)}, "extra": jnp.ones(2)})
    like = {"body": {"w": jnp.zeros(3)}, "head": jnp.full(2, 5.0)}
    with pytest.warns(ptc.PartialLoadWarning) as rec:
        out = ptc.tree_load(path, like=like, strict=False)
    w = rec[0].message
    assert isinstance(w, ptc.PartialLoadWarning)
    assert (w.missing, w.unused) == (("head",), ("extra",))
    assert out["head"] is like["head"]
    np.testing.assert_array_equal(out["body"]["w"], np.ones(3))
    # Also for .npz, whose CRCs are still checked although some entries go unused.
    npz = str(tmp_path / "body.npz")
    ptc.tree_save(npz, {"body": {"w": jnp.ones(3)}, "extra": jnp.ones(2)})
    with pytest.warns(ptc.PartialLoadWarning, match=r"1 missing from the file: \['head'\]"):
        out = ptc.tree_load(npz, like=like, strict=False)
    np.testing.assert_array_equal(out["body"]["w"], np.ones(3))


def test_a_partial_load_skips_tensors_between_the_ones_it_reads(tmp_path: Any) -> None:
    path = str(tmp_path / "abc.safetensors")
    save_file({k: np.full(3, i, np.float32) for i, k in enumerate("abcde")}, path)
    like = {k: np.zeros(3, np.float32) for k in "ace"}
    with pytest.warns(ptc.PartialLoadWarning, match="2 of the file's names unused: b, d"):
        out = ptc.tree_load(path, like=like, strict=False)
    assert [out[k][0] for k in "ace"] == [0, 2, 4]


def test_a_partial_load_cannot_keep_an_abstract_leaf(tmp_path: Any) -> None:
    path = str(tmp_path / "body.safetensors")
    ptc.tree_save(path, {"body": jnp.ones(3)})
    like = jax.eval_shape(lambda: {"body": jnp.zeros(3), "head": jnp.zeros(2)})
    with pytest.raises(
        ValueError,
        match=r"tree_load: the template's leaf at \['head'\] is not loaded \(it is missing from "
        r"the file\), and it is abstract \(float32\[2\]\), so there is no value to keep",
    ):
        ptc.tree_load(path, like=like, strict=False)
    like = jax.eval_shape(lambda: {"body": jnp.zeros(4)})
    with pytest.raises(
        ValueError, match=r"is not loaded \(shape mismatch: the file has float32\[3\]"
    ):
        ptc.tree_load(path, like=like, on_mismatch="skip")


def test_partial_load_warning_can_be_an_error(tmp_path: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ptc.PartialLoadWarning)
        with pytest.raises(ptc.PartialLoadWarning):
            ptc.tree_from_dict({"a": 1.0, "b": 2.0}, like={"a": 0.0}, strict=False)
    with pytest.raises(ValueError, match=r"on_mismatch must be 'error' or 'skip', not 'ignore'"):
        ptc.tree_from_dict({"a": 1.0}, like={"a": 0.0}, on_mismatch="ignore")  # type: ignore[arg-type]


# -- errors that help ---------------------------------------------------------------------------


def test_name_mismatch_lists_ten_names_with_counts_and_closest_matches(hf_file: str) -> None:
    with pytest.raises(ValueError) as info:
        ptc.tree_load(hf_file, like=jax.eval_shape(init_stacked))  # forgot the prefix rule
    msg = str(info.value)
    first = msg.splitlines()[0]
    assert "(17 missing from the file, 40 in the file but not the template)" in first
    assert "missing from the file: wte.weight (closest in the file: transformer.wte.weight)" in msg
    assert ", and 7 more\n" in msg and ", and 30 more\n" in msg
    assert len(msg) < 3000


def test_shape_error_after_a_transform_gives_both_shapes(hf_file: str) -> None:
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at \.h\.attn\.c_attn\.weight \(the file's "
        r"'transformer\.h\.0\.attn\.c_attn\.weight'\)|shape mismatch at \.h\[0\]",
    ) as info:
        ptc.tree_load(
            hf_file,
            like=jax.eval_shape(init),
            rename=LOAD["rename"],
            transform={r"c_attn\.weight$": lambda w: w.T},  # the wrong fix for Conv1D
        )
    assert (
        "the file has float32[4,12], which the transform made float32[12,4], the template "
        "float32[4,12]" in str(info.value)
    )


class FakeTorchTensor:
    """Stands in for a torch bfloat16 tensor (torch is not a test dependency): NumPy
    cannot read it."""

    __module__ = "torch"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("Got unsupported ScalarType BFloat16")


class DlpackOnly:
    def __dlpack__(self, stream: Any = None) -> Any:
        raise BufferError("no")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("not on the host")


def test_a_non_numpy_array_is_named_with_the_fix() -> None:
    FakeTorchTensor.__qualname__ = "Tensor"
    with pytest.raises(
        TypeError,
        match=r"tree_from_dict: the value for 'h\.0\.w' is a torch\.Tensor, which NumPy cannot "
        r"read \(Got unsupported ScalarType BFloat16\).*jnp\.from_dlpack\(t\.detach\(\)\.cpu\(\)\)",
    ):
        ptc.tree_from_dict({"h.0.w": FakeTorchTensor()}, like={"h": [{"w": jnp.zeros(2)}]})
    with pytest.raises(
        TypeError, match=r"is a tests\.test_weights_rules\.DlpackOnly.*jnp\.from_dlpack\(value\)"
    ):
        ptc.tree_from_dict({"w": DlpackOnly()}, like={"w": jnp.zeros(2)})
    with pytest.raises(
        TypeError, match=r"the value for 'w' \(the result of its transform\) is a str"
    ):
        ptc.tree_from_dict({"w": np.zeros(2)}, like={"w": jnp.zeros(2)}, transform={"w": str})


def test_rules_for_npz_files_are_refused(tmp_path: Any) -> None:
    path = str(tmp_path / "m.npz")
    with pytest.raises(
        ValueError, match=r"tree_save: rename=, transform= and unstack= work on flat names"
    ):
        ptc.tree_save(path, {"a": jnp.ones(1)}, rename={"a": "b"})
    ptc.tree_save(path, {"a": jnp.ones(1)})
    with pytest.raises(
        ValueError, match=r"tree_load: rename=, transform= and unstack= work on flat"
    ):
        ptc.tree_load(path, like={"b": jnp.ones(1)}, rename={"a": "b"})


def test_bad_tuple_replacement_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"a tuple of them \(one name to several\), or None"):
        ptc.tree_to_dict({"a": 1.0}, rename=[("a", ("b", 3))])
    with pytest.raises(TypeError, match=r"a tuple of them"):
        ptc.tree_to_dict({"a": 1.0}, rename=[("a", ())])


# -- issue 22 item 5: filtered stacks, zero-size layers -----------------------------------------


@treeclass
class Net:
    blocks: Any = field(stack="layers")
    head: Any = None


def _net() -> Net:
    blocks = ptc.tree_stack(
        [{"w": jnp.full(2, float(i)), "n": jnp.ones((), jnp.int32)} for i in range(3)]
    )
    return Net(blocks, jnp.ones(2))


def test_a_filter_that_empties_a_stack_still_converts() -> None:
    net = _net()
    head_only = ptc.tree_filter(net, "head")
    assert ptc.tree_to_dict(head_only, unstack=True).keys() == {"head"}
    # A name not found as it is makes tree_from_dict look for stacks: the empty one is
    # no error, and the message is about the name.
    with pytest.raises(
        ValueError, match=r"\(1 missing from the dict\)\.\n  missing from the dict: head"
    ):
        ptc.tree_from_dict({}, like=head_only)
    got = ptc.tree_from_dict({"head": np.full(2, 3.0, np.float32)}, like=head_only)
    np.testing.assert_array_equal(got.head, [3.0, 3.0])
    assert got.blocks["w"] is None
    merged = ptc.tree_merge(net, got)
    np.testing.assert_array_equal(merged.head, [3.0, 3.0])
    # And a filter keeping part of a stack.
    w_only = ptc.tree_filter(net, "w")
    back = ptc.tree_from_dict(ptc.tree_to_dict(net, "w", unstack=True), like=w_only)
    np.testing.assert_array_equal(back.blocks["w"], net.blocks["w"])


def test_zero_size_leaves_in_a_stack_unstack_and_load(tmp_path: Any) -> None:
    net = Net(ptc.tree_stack([{"w": jnp.zeros((0, 2))}] * 3), jnp.ones(2))
    flat = ptc.tree_to_dict(net, unstack=True)
    assert [k for k in flat] == ["blocks.0.w", "blocks.1.w", "blocks.2.w", "head"]
    assert flat["blocks.1.w"].shape == (0, 2)
    back = ptc.tree_from_dict(flat, like=net)
    assert back.blocks["w"].shape == (3, 0, 2)
    path = str(tmp_path / "z.safetensors")
    ptc.tree_save(path, net, unstack=True)
    assert ptc.tree_load(path, like=net).blocks["w"].shape == (3, 0, 2)


def test_stacked_load_under_jit_matches_the_eager_one(hf_file: str) -> None:
    model = ptc.tree_load(hf_file, like=jax.eval_shape(init_stacked), **LOAD)

    @jax.jit
    def logits(m: StackedGPT2, x: jax.Array) -> jax.Array:
        def body(h: jax.Array, blk: Block) -> tuple[jax.Array, None]:
            return h + blk.mlp.c_proj(blk.mlp.c_fc(h)), None

        h, _ = jax.lax.scan(body, x, m.h)
        return h @ m.lm_head.weight.T

    x = jnp.ones((2, D))
    eager = x
    for i in range(L):
        b = model.at.h[i].get()
        eager = eager + b.mlp.c_proj(b.mlp.c_fc(eager))
    np.testing.assert_allclose(logits(model, x), eager @ model.wte.weight.T, rtol=1e-5)


# -- reading on two threads ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_threaded_reads_give_the_same_values_and_catch_damage(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    from pytreeclass._io import _io_file

    monkeypatch.setattr(_io_file, "_READ_THREAD", 0)  # every read on the threads
    monkeypatch.setattr(_io_file, "CHUNK", 256)  # and many of them
    tree = {f"x{i}": np.arange(40, dtype=np.float32) + i for i in range(10)}
    tree["big"] = np.arange(1000, dtype=np.int64)
    path = str(tmp_path / f"t{suffix}")
    ptc.tree_save(path, tree)
    out = ptc.tree_load(path, like=tree)
    for k in tree:
        np.testing.assert_array_equal(out[k], tree[k])
    stacked = StackHolder(ptc.tree_stack([{"w": np.zeros(40, np.float32)}] * 10))
    if suffix == ".safetensors":
        rows = ptc.tree_load(
            path, like=stacked, rename=[(r"^x(\d+)$", r"blocks.\1.w"), ("big", None)]
        )
        np.testing.assert_array_equal(rows.blocks["w"][:, 0], np.arange(10))
    else:  # a flipped bit is still caught by the CRC, computed on the threads
        data = bytearray((tmp_path / f"t{suffix}").read_bytes())
        # inside the one large leaf, which is read (and checked) in 256-byte pieces
        data[bytes(data).index(tree["big"].tobytes()) + 5000] ^= 0xFF
        (tmp_path / f"t{suffix}").write_bytes(bytes(data))
        with pytest.raises(ValueError, match=r"cannot read .*(damaged|corrupt|CRC)"):
            ptc.tree_load(path, like=tree)


def test_a_short_positional_read_is_a_corrupt_file(tmp_path: Any) -> None:
    from pytreeclass._io import _io_file

    path = str(tmp_path / "short.bin")
    (tmp_path / "short.bin").write_bytes(b"12345678")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match=r"cannot read .*: it ends inside the data section"):
            _io_file._pread_exactly(fd, 4, np.zeros(8, np.uint8), path, "the data section")
    finally:
        os.close(fd)


def test_rules_both_ways_under_jit_and_grad() -> None:
    """A fan-out, a split and a gather trace: the rules run on tracers, once."""
    like = {"q": jnp.zeros(2), "k": jnp.zeros(2), "tied": jnp.zeros(4)}
    load = {
        "rename": [("^qk$", ("q", "k", "tied"))],
        "transform": {"^q$": lambda w: w[:2], "^k$": lambda w: w[2:]},
    }
    save = {
        "rename": [("^[qk]$", "qk"), ("^tied$", None)],
        "transform": {"^qk$": jnp.concatenate},
    }

    @jax.jit
    def round_trip(x: jax.Array) -> dict[str, Any]:
        tree = ptc.tree_from_dict({"qk": x}, like=like, **load)
        return ptc.tree_to_dict(tree, **save)

    x = jnp.arange(4.0)
    # The tree's order is sorted dict keys (k, q), so the gather joins k then q.
    np.testing.assert_array_equal(round_trip(x)["qk"], [2.0, 3.0, 0.0, 1.0])

    def loss(x: jax.Array) -> jax.Array:
        tree = ptc.tree_from_dict({"qk": x}, like=like, **load)
        return (tree["q"] * 2).sum() + tree["tied"].sum()

    np.testing.assert_array_equal(jax.grad(loss)(x), [3.0, 3.0, 1.0, 1.0])
