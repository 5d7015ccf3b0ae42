"""ptc.capture: outputs of selected nodes during a call, on the scanned transformer example."""

from __future__ import annotations

import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass

from .test_examples import example

ts = example("transformer_scan")
Attention, Block, Transformer = ts.Attention, ts.Block, ts.Transformer
ATTN = ptc.OfType(Attention)
TOKENS = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % 10


@pytest.fixture(scope="module")
def model() -> Any:
    return Transformer.create(jax.random.key(0), 10, layers=3, embed=8, heads=2, context=6)


@treeclass
class ListTransformer:
    """The example's transformer with its blocks in a Python list, run by a loop."""

    tok: jax.Array = field(kind=Parameter)
    pos: jax.Array = field(kind=Parameter)
    blocks: list
    ln_f: Any

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.tok[tokens] + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.T


def as_list(m: Any) -> ListTransformer:
    return ListTransformer(m.tok, m.pos, ptc.tree_unstack(m.blocks), m.ln_f)


def attention_outputs(m: Any, tokens: jax.Array) -> list[jax.Array]:
    """What each block's attention returns, computed by hand with a Python loop."""
    x = m.tok[tokens] + m.pos[: tokens.shape[1]]
    outs = []
    for block in ptc.tree_unstack(m.blocks):
        outs.append(block.attn(block.ln1(x)))
        x = block(x)
    return outs


def loss(m: Any, tokens: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(m(tokens), tokens).mean()


def test_attention_outputs_of_a_scanned_stack_come_stacked_along_the_layer_axis(
    model: Any,
) -> None:
    y, acts = ptc.capture(model, ATTN)(TOKENS)
    # one entry for the stacked node (scan_layers runs it once per layer, traced);
    # the lens lists one path per layer
    assert list(acts) == [".blocks.attn"]
    assert ptc.at(model)[ATTN].paths() == [f".blocks[{i}].attn" for i in range(3)]
    np.testing.assert_array_equal(y, model(TOKENS))  # the call itself is unchanged
    expected = jnp.stack(attention_outputs(model, TOKENS))
    assert acts[".blocks.attn"].shape == (3, 2, 6, 8)
    np.testing.assert_allclose(acts[".blocks.attn"], expected, rtol=1e-5, atol=1e-6)


def test_a_list_model_and_the_stacked_model_agree(model: Any) -> None:
    listed = as_list(model)
    y_list, acts_list = ptc.capture(listed, ATTN)(TOKENS)
    y_stack, acts_stack = ptc.capture(model, ATTN)(TOKENS)
    assert list(acts_list) == [f".blocks[{i}].attn" for i in range(3)]
    assert list(acts_list) == ptc.at(listed)[ATTN].paths()
    np.testing.assert_allclose(y_list, y_stack, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        jnp.stack(list(acts_list.values())), acts_stack[".blocks.attn"], rtol=1e-5, atol=1e-6
    )


def test_an_ablation_changes_the_loss_as_zeroing_the_weights_does(model: Any) -> None:
    def ablate(path: str, out: jax.Array) -> jax.Array:
        assert path == ".blocks.attn"
        return jnp.zeros_like(out)

    def ablated_loss(m: Any) -> tuple[jax.Array, dict[str, Any]]:
        return ptc.capture(m, ATTN, call=loss, edit=ablate)(TOKENS)

    value, acts = ablated_loss(model)
    assert not jnp.allclose(value, loss(model, TOKENS))
    no_attention = ptc.at(model).blocks.attn.out.apply(jnp.zeros_like)
    np.testing.assert_allclose(value, loss(no_attention, TOKENS), rtol=1e-6)
    assert not acts[".blocks.attn"].any()  # acts hold what the model went on with
    # the same under jit, and the gradient flows around the ablated attention
    jitted, _ = jax.jit(ablated_loss)(model)
    np.testing.assert_allclose(jitted, value, rtol=1e-6)
    grads = jax.grad(lambda m: ablated_loss(m)[0])(model)
    assert not grads.blocks.attn.qkv.any() and grads.blocks.mlp.up.any()


def test_edit_per_layer_and_per_node_in_a_list_model(model: Any) -> None:
    listed = as_list(model)
    only_one = lambda path, out: out * 0 if path == ".blocks[1].attn" else out  # noqa: E731
    _, acts = ptc.capture(listed, ATTN, edit=only_one)(TOKENS)
    assert acts[".blocks[0].attn"].any() and not acts[".blocks[1].attn"].any()
    assert acts[".blocks[2].attn"].any()


def test_jit_grad_with_acts_as_aux_and_vmap(model: Any) -> None:
    _, eager = ptc.capture(model, ATTN)(TOKENS)
    _, jitted = jax.jit(lambda m, t: ptc.capture(m, ATTN)(t))(model, TOKENS)
    np.testing.assert_allclose(jitted[".blocks.attn"], eager[".blocks.attn"], rtol=1e-5, atol=1e-6)
    grads, acts = jax.grad(lambda m: ptc.capture(m, ATTN, call=loss)(TOKENS), has_aux=True)(model)
    np.testing.assert_allclose(acts[".blocks.attn"], eager[".blocks.attn"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        grads.blocks.attn.qkv, jax.grad(loss)(model, TOKENS).blocks.attn.qkv, rtol=1e-5
    )
    assert type(grads.blocks.attn) is Attention  # gradients hold no stand-ins
    # vmap over the batch: one example at a time, outputs batched in front
    _, per = jax.vmap(lambda t: ptc.capture(model, ATTN)(t[None]))(TOKENS)
    assert per[".blocks.attn"].shape == (2, 3, 1, 6, 8)
    np.testing.assert_allclose(
        per[".blocks.attn"][:, :, 0].transpose(1, 0, 2, 3),
        eager[".blocks.attn"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_dropout_keys_scanned_with_the_blocks_and_remat(model: Any) -> None:
    key = jax.random.key(3)
    y, acts = ptc.capture(model, ATTN)(TOKENS, key)
    np.testing.assert_array_equal(y, model(TOKENS, key))
    assert acts[".blocks.attn"].shape == (3, 2, 6, 8)
    # scan_layers with remat (jax.checkpoint) and in reverse lift the records too
    x = model.tok[TOKENS]
    for kwargs in ({"remat": True}, {"reverse": True}):
        run = lambda m, x: ptc.scan_layers(lambda b, h: b(h), m.blocks, x, **kwargs)  # noqa: E731, B023
        out, acts = ptc.capture(model, ATTN, call=run)(x)
        assert acts[".blocks.attn"].shape == (3, 2, 6, 8)
        np.testing.assert_allclose(out, run(model, x), rtol=1e-6)


def test_stateful_scan_and_a_method_that_returns_the_model(model: Any) -> None:
    def step(m: Any, x: jax.Array) -> tuple[jax.Array, Any]:
        x, blocks = ptc.scan_layers(lambda b, h: (b(h), b), m.blocks, x, stateful=True)
        return x, m.at.blocks.set(blocks)

    (out, returned), acts = ptc.capture(model, ATTN, call=step)(model.tok[TOKENS])
    assert acts[".blocks.attn"].shape == (3, 2, 6, 8)
    expected = ptc.scan_layers(lambda b, h: b(h), model.blocks, model.tok[TOKENS])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # the model that comes back holds the real nodes, not the stand-ins
    assert type(returned.blocks.attn) is Attention
    assert jax.tree_util.tree_structure(returned) == jax.tree_util.tree_structure(model)


@treeclass
class Scale:
    k: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.k * x


@treeclass
class Twice:
    """Calls one layer twice, another once, and a third never."""

    a: Scale
    b: Scale
    unused: Scale

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.a(self.b(self.a(x)))

    def first(self, x: jax.Array) -> jax.Array:
        return self.a(x) + self.a.k  # attribute access reaches the real node


TWICE = Twice(Scale(jnp.float32(2)), Scale(jnp.float32(3)), Scale(jnp.float32(5)))


def test_repeated_calls_give_a_tuple_in_call_order_and_unused_nodes_no_entry() -> None:
    y, acts = ptc.capture(TWICE, ptc.OfType(Scale))(jnp.float32(1))
    assert float(y) == 12.0
    assert list(acts) == [".a", ".b"]
    assert [float(v) for v in acts[".a"]] == [2.0, 12.0]
    assert float(acts[".b"]) == 6.0
    # under jit too
    _, jitted = jax.jit(lambda m: ptc.capture(m, ptc.OfType(Scale))(jnp.float32(1)))(TWICE)
    assert [float(v) for v in jitted[".a"]] == [2.0, 12.0]


def test_call_picks_a_method_or_a_function_and_where_any_selection() -> None:
    y, acts = ptc.capture(TWICE, ptc.OfType(Scale), call="first")(jnp.float32(1))
    assert float(y) == 4.0 and list(acts) == [".a"]
    y, acts = ptc.capture(TWICE, "b", call=lambda m, x: m.b(x) + 1)(jnp.float32(1))
    assert float(y) == 4.0 and float(acts[".b"]) == 3.0
    _, acts = ptc.capture(
        {"f": Scale(jnp.float32(2))}, ptc.OfType(Scale), call=lambda m, x: m["f"](x)
    )(jnp.float32(1))
    assert list(acts) == ["['f']"]


def test_the_model_and_its_class_are_unchanged_also_when_the_call_raises() -> None:
    before_call = Scale.__call__
    leaves_before = jax.tree_util.tree_leaves(TWICE)

    def boom(m: Any, x: jax.Array) -> None:
        m.a(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ptc.capture(TWICE, ptc.OfType(Scale), call=boom)(jnp.float32(1))
    assert Scale.__call__ is before_call and "__call__" in vars(Scale)
    assert type(TWICE.a) is Scale and type(TWICE.b) is Scale
    assert all(x is y for x, y in zip(jax.tree_util.tree_leaves(TWICE), leaves_before))
    # nothing is left recording: a plain call afterwards records nowhere and works
    assert float(TWICE(jnp.float32(1))) == 12.0
    _, acts = ptc.capture(TWICE, "b")(jnp.float32(1))
    assert list(acts) == [".b"]


def test_threads_capturing_at_once_do_not_see_each_others_outputs() -> None:
    barrier = threading.Barrier(2, timeout=30)

    @treeclass
    class Waits:
        k: jax.Array

        def __call__(self, x: jax.Array) -> jax.Array:
            barrier.wait()  # both threads are inside their capture at this point
            return self.k * x

    results: dict[int, Any] = {}

    def work(i: int) -> None:
        model = {"w": Waits(jnp.float32(i + 1))}
        results[i] = ptc.capture(model, ptc.OfType(Waits), call=lambda m, x: m["w"](x))(
            jnp.float32(10)
        )

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: float(r[1]["['w']"]) for i, r in results.items()} == {0: 10.0, 1: 20.0}


def test_bad_input_names_the_problem(model: Any) -> None:
    with pytest.raises(ValueError, match=r"selects nothing in Transformer.*paths\(\)"):
        ptc.capture(model, ptc.OfType(Scale))
    with pytest.raises(TypeError, match=r"selects \.tok = f32\[10,8\], which is not a callable"):
        ptc.capture(model, "tok")
    with pytest.raises(ValueError, match="selects the model itself"):
        ptc.capture(model, ptc.OfType(Transformer))
    with pytest.raises(AttributeError, match="Transformer has no method 'encode'"):
        ptc.capture(model, ATTN, call="encode")
    with pytest.raises(TypeError, match=r"call must be None \(call the model\), a method name"):
        ptc.capture(model, ATTN, call=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"edit must be a function edit\(path, output\)"):
        ptc.capture(model, ATTN, edit="zero")  # type: ignore[arg-type]


@treeclass
class HalfNet:
    """Casts its own parameters inside the call: filters by kind must see through taps."""

    a: Scale = field(kind=Parameter)
    b: Scale

    def __call__(self, x: jax.Array) -> jax.Array:
        half = ptc.tree_cast(self, jnp.bfloat16, Parameter)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(self)[0]]
        assert paths == [".a.k", ".b.k"], paths  # key paths read as without the stand-ins
        return half.b(half.a(x))


def test_kinds_and_key_paths_inside_the_call_are_those_of_the_model() -> None:
    net = HalfNet(Scale(jnp.float32(2)), Scale(jnp.float32(3)))
    x = jnp.ones(2, jnp.bfloat16)
    y, acts = ptc.capture(net, ptc.OfType(Scale))(x)
    assert y.dtype == net(x).dtype == jnp.float32  # only .a is a Parameter: bf16 * f32
    assert acts[".a"].dtype == jnp.bfloat16 and acts[".b"].dtype == jnp.float32
