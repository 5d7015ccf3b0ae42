"""scan_layers (against the unrolled Python loop), per-layer RNG: split_key, tree_reseed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, Rng, field, treeclass
from tests.versions import needs_nnx_nodes

L, D = 5, 4


@treeclass
class Layer:
    w: jax.Array = field(kind=Parameter)
    b: jax.Array = field(kind=Parameter)
    act: str = field(static=True, default="tanh")

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.w + self.b
        return jnp.tanh(y) if self.act == "tanh" else jax.nn.relu(y)


@treeclass
class Net:
    layers: Layer = field(stack="layers")

    def __call__(self, x: jax.Array, **kw) -> jax.Array:
        return ptc.scan_layers(lambda layer, h: layer(h), self.layers, x, **kw)


def make_layers(n: int = L) -> list[Layer]:
    keys = jax.random.split(jax.random.key(0), n)
    return [
        Layer(jax.random.normal(k, (D, D)) / 2, jnp.full(D, 0.1 * i)) for i, k in enumerate(keys)
    ]


def loop(layers: list[Layer], x: jax.Array) -> jax.Array:
    for layer in layers:
        x = layer(x)
    return x


X = jnp.linspace(-1, 1, 3 * D).reshape(3, D)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"unroll": 2},
        {"unroll": True},
        {"remat": True},
        {"remat": True, "policy": jax.checkpoint_policies.nothing_saveable},
        {"remat": True, "policy": jax.checkpoint_policies.dots_saveable, "unroll": 3},
    ],
    ids=["plain", "unroll2", "unroll_all", "remat", "remat_nothing", "remat_dots_unroll3"],
)
def test_scan_equals_the_python_loop_values_and_gradients(kw: dict) -> None:
    layers = make_layers()
    net = Net(ptc.tree_stack(layers))
    np.testing.assert_allclose(net(X, **kw), loop(layers, X), rtol=1e-6, atol=1e-6)

    def loss_scan(net: Net, x: jax.Array) -> jax.Array:
        return jnp.sum(net(x, **kw) ** 2)

    def loss_loop(layers: list[Layer], x: jax.Array) -> jax.Array:
        return jnp.sum(loop(layers, x) ** 2)

    g_scan, gx_scan = jax.jit(jax.grad(loss_scan, argnums=(0, 1)))(net, X)
    g_loop, gx_loop = jax.grad(loss_loop, argnums=(0, 1))(layers, X)
    want = ptc.tree_stack(g_loop)
    assert jax.tree_util.tree_structure(g_scan.layers) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(g_scan.layers), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx_scan, gx_loop, rtol=1e-5, atol=1e-6)


def test_reverse_runs_the_last_layer_first() -> None:
    layers = make_layers()
    net = Net(ptc.tree_stack(layers))
    np.testing.assert_allclose(net(X, reverse=True), loop(layers[::-1], X), rtol=1e-6, atol=1e-6)


def test_remat_recomputes_in_the_backward_pass() -> None:
    net = Net(ptc.tree_stack(make_layers()))

    def loss(net: Net, **kw) -> jax.Array:
        return jnp.sum(net(X, **kw))

    plain = str(jax.make_jaxpr(jax.grad(loss))(net))
    remat = str(jax.make_jaxpr(jax.grad(lambda n: loss(n, remat=True)))(net))
    assert "remat" not in plain and "remat" in remat


def test_scan_under_vmap_over_an_ensemble() -> None:
    members = [ptc.tree_stack(make_layers()), ptc.tree_stack(make_layers()[::-1])]
    ensemble = Net(ptc.tree_stack(members))  # leading axis: members, then layers
    out = jax.vmap(lambda net: net(X))(ensemble)
    np.testing.assert_allclose(out[0], loop(make_layers(), X), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[1], loop(make_layers()[::-1], X), rtol=1e-6, atol=1e-6)


@treeclass
class Norm:
    """A layer with state: running mean of its inputs (a batch statistic) and a step count."""

    gain: jax.Array = field(kind=Parameter)
    mean: jax.Array = field(kind=BatchStat)
    count: jax.Array = field(kind=BatchStat)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, Norm]:
        new = self.at.mean.set(0.9 * self.mean + 0.1 * x.mean(0)).at.count.apply(lambda c: c + 1)
        return (x - new.mean) * self.gain, new


def test_stateful_scan_returns_updated_layers() -> None:
    norms = [Norm(jnp.full(D, 1.0 + i), jnp.zeros(D), jnp.zeros((), jnp.int32)) for i in range(3)]
    stack = ptc.tree_stack(norms)

    def step(layer: Norm, h: jax.Array) -> tuple[jax.Array, Norm]:
        return layer(h)

    out, new = jax.jit(lambda s, x: ptc.scan_layers(step, s, x, stateful=True))(stack, X)
    h, want = X, []
    for n in norms:
        h, n2 = n(h)
        want.append(n2)
    np.testing.assert_allclose(out, h, rtol=1e-6)
    assert new.count.tolist() == [1, 1, 1]
    np.testing.assert_allclose(new.mean, ptc.tree_stack(want).mean, rtol=1e-6)
    # stateful with remat and unroll too
    out2, new2 = ptc.scan_layers(step, stack, X, stateful=True, remat=True, unroll=3)
    np.testing.assert_allclose(out2, out, rtol=1e-6)
    np.testing.assert_allclose(new2.mean, new.mean, rtol=1e-6)


def test_scan_errors() -> None:
    stack = ptc.tree_stack(make_layers())
    with pytest.raises(ValueError, match=r"a checkpoint policy only applies with remat=True"):
        ptc.scan_layers(lambda lay, x: x, stack, X, policy=jax.checkpoint_policies.dots_saveable)
    with pytest.raises(TypeError, match=r"fn must return \(carry, new_layer\), got f32\[3,4\]"):
        ptc.scan_layers(lambda lay, x: lay(x), stack, X, stateful=True)
    with pytest.raises(TypeError, match=r"got a 3-tuple"):
        ptc.scan_layers(lambda lay, x: (x, lay, lay), stack, X, stateful=True)
    with pytest.raises(
        ValueError, match=r"fn returned a layer whose structure differs.*act: 'tanh' vs 'relu'"
    ):
        ptc.scan_layers(lambda lay, x: (x, Layer(lay.w, lay.b, "relu")), stack, X, stateful=True)
    bad = {"w": jnp.ones((3, 2)), "b": jnp.ones((4, 2))}
    with pytest.raises(
        ValueError,
        match=r"scan_layers\(layers\): the leaves of a stack disagree .*\['b'\] is f32\[4,2\]",
    ):
        ptc.scan_layers(lambda lay, x: x, bad, X)
    with pytest.raises(ValueError, match=r"scan_layers\(layers\): the stack has no array leaves"):
        ptc.scan_layers(lambda lay, x: x, {}, X)


# -- per-layer RNG -----------------------------------------------------------------------------------


def _data(k: jax.Array) -> np.ndarray:
    return np.asarray(jax.random.key_data(k))


@treeclass
class Dropout:
    key: jax.Array = field(kind=Rng)
    rate: float = field(static=True, default=0.5)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, Dropout]:
        key, sub = jax.random.split(self.key)
        keep = jax.random.bernoulli(sub, 1 - self.rate, x.shape)
        return jnp.where(keep, x / (1 - self.rate), 0.0), self.at.key.set(key)


def test_split_key_gives_distinct_keys_of_the_same_form() -> None:
    typed = ptc.split_key(jax.random.key(0), 4)
    assert typed.shape == (4,) and jnp.issubdtype(typed.dtype, jax.dtypes.prng_key)
    assert len({tuple(r) for r in _data(typed)}) == 4
    raw = ptc.split_key(jax.random.PRNGKey(0), 3)
    assert raw.shape == (3, 2) and raw.dtype == jnp.uint32
    assert ptc.split_key(7, (2, 3)).shape == (2, 3)
    assert np.array_equal(_data(ptc.split_key(7, 2)), _data(ptc.split_key(jax.random.key(7), 2)))
    with pytest.raises(TypeError, match=r"split_key: expected a PRNG key .* got 'seed'"):
        ptc.split_key("seed", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"split_key: expected one key, got key\[2\]"):
        ptc.split_key(typed[:2], 2)


def test_dropout_keys_differ_per_layer_and_per_step() -> None:
    n = 4
    drops = Dropout(ptc.split_key(jax.random.key(0), n))
    x = jnp.ones(64)

    def step(layer: Dropout, seen: jax.Array) -> tuple[jax.Array, Dropout]:
        _, new = layer(x)
        return seen, new  # the carry is unused; the step's mask is recorded below

    @jax.jit
    def forward(drops: Dropout) -> tuple[jax.Array, Dropout]:
        # each layer's output, by scanning with the masks as per-step outputs
        def body(h: jax.Array, layer: Dropout) -> tuple[jax.Array, tuple[jax.Array, Dropout]]:
            y, new = layer(x)
            return h, (y, new)

        _, (ys, new) = jax.lax.scan(body, jnp.zeros(()), drops)
        _, via_helper = ptc.scan_layers(step, drops, jnp.zeros(()), stateful=True)
        assert jax.tree_util.tree_structure(via_helper) == jax.tree_util.tree_structure(new)
        return ys, via_helper

    masks = []
    for _ in range(3):
        ys, new = forward(drops)
        assert np.array_equal(_data(new.key), _data(jax.vmap(lambda d: d(x)[1])(drops).key))
        drops = new
        masks.append([tuple(np.asarray(y == 0)) for y in ys])
        assert len({tuple(r) for r in _data(drops.key)}) == n  # every layer its own key
    for per_layer in masks:
        assert len(set(per_layer)) == n  # layers drop different units
    assert len({m for per_layer in masks for m in per_layer}) == 3 * n  # and so do steps


def test_tree_reseed_is_deterministic_and_differs_by_path_layer_and_member() -> None:
    @treeclass
    class Model:
        blocks: Dropout = field(stack="layers")
        head: Dropout
        raw: jax.Array = field(kind=Rng)
        count: jax.Array = field(kind=Rng, default_factory=lambda: jnp.zeros((), jnp.int32))
        w: jax.Array = field(kind=Parameter, default_factory=lambda: jnp.ones(2))

    m = Model(Dropout(ptc.split_key(0, 3)), Dropout(jax.random.key(0)), jax.random.PRNGKey(0))
    a = ptc.tree_reseed(m, jax.random.key(1))
    b = jax.jit(ptc.tree_reseed)(m, jax.random.key(1))
    assert np.array_equal(_data(a.blocks.key), _data(b.blocks.key))
    assert np.array_equal(np.asarray(a.raw), np.asarray(b.raw))
    assert a.raw.dtype == jnp.uint32 and a.raw.shape == (2,)
    assert a.blocks.key.shape == (3,) and jnp.issubdtype(a.blocks.key.dtype, jax.dtypes.prng_key)
    keys = [tuple(r) for r in _data(a.blocks.key)] + [
        tuple(_data(a.head.key)),
        tuple(np.asarray(a.raw)),
    ]
    assert len(set(keys)) == 5
    assert a.count is m.count and a.w is m.w  # not keys / not Rng: untouched
    c = ptc.tree_reseed(m, 2)
    assert not np.array_equal(_data(c.head.key), _data(a.head.key))
    assert np.array_equal(_data(c.head.key), _data(ptc.tree_reseed(m, jax.random.key(2)).head.key))

    ensemble = jax.vmap(lambda k: ptc.tree_reseed(m, k))(ptc.split_key(5, 4))
    assert ensemble.blocks.key.shape == (4, 3)
    member_keys = {tuple(_data(ensemble.head.key)[i]) for i in range(4)}
    assert len(member_keys) == 4
    layer_keys = {tuple(r) for r in _data(ensemble.blocks.key).reshape(-1, 2)}
    assert len(layer_keys) == 12


def test_tree_reseed_keeps_the_path_hash_stable() -> None:
    # The key of a leaf depends on its path only (not on Python's per-process str hash).
    d = ptc.tree_reseed(Dropout(jax.random.key(0)), jax.random.key(3))
    want = jax.random.fold_in(jax.random.key(3), 0x7FFFFFFF & __import__("zlib").crc32(b".key"))
    assert np.array_equal(_data(d.key), _data(want))


def test_tree_reseed_errors() -> None:
    d = Dropout(jax.random.key(0, impl="rbg"))
    with pytest.raises(
        ValueError,
        match=r"tree_reseed: the key leaf at \.key is key\[\] .*another PRNG implementation",
    ):
        ptc.tree_reseed(d, jax.random.key(1))
    assert ptc.tree_reseed(d, jax.random.key(1, impl="rbg")).key.dtype == d.key.dtype
    with pytest.raises(TypeError, match=r"tree_reseed: expected a PRNG key"):
        ptc.tree_reseed(d, 1.5)


def test_tree_reseed_takes_uint32_rng_leaves_for_raw_keys_by_declaration() -> None:
    @treeclass
    class RawDrops:
        keys: jax.Array = field(kind=Rng)  # raw keys, one per layer: u32[layers, 2]
        steps: jax.Array = field(kind=Rng)  # a counter per layer, not uint32: left alone

    for n in (1, 2, 4):
        m = RawDrops(ptc.split_key(jax.random.PRNGKey(0), n), jnp.zeros(n, jnp.int32))
        out = jax.jit(ptc.tree_reseed)(m, jax.random.key(3))
        assert out.keys.dtype == jnp.uint32 and out.keys.shape == (n, 2)
        assert len({tuple(r) for r in np.asarray(out.keys)}) == n
        assert not np.array_equal(np.asarray(out.keys), np.asarray(m.keys))
        assert out.steps is not None and np.array_equal(out.steps, m.steps)

    # A uint32 counter declared Rng is not raw key data: an error naming it, not a guess.
    @treeclass
    class Counted:
        count: jax.Array = field(kind=Rng)

    for count, shown in (
        (jnp.zeros((), jnp.uint32), r"u32\[\]"),
        (jnp.zeros((2, 3), jnp.uint32), r"u32\[2,3\]"),
    ):
        with pytest.raises(
            ValueError,
            match=rf"tree_reseed: the leaf at \.count is {shown}, of kind Rng and dtype uint32, so it "
            r"is taken for raw key data, but one raw key of the given key's implementation is "
            r"u32\[2\]\. If it is a counter, declare it with another kind \(ptc\.State\)",
        ):
            ptc.tree_reseed(Counted(count), jax.random.key(0))
    # Raw rbg keys (u32[4]) reseed with an rbg key, not with a threefry one.
    rbg = Counted(jax.random.key_data(jax.random.key(0, impl="rbg")))
    assert ptc.tree_reseed(rbg, jax.random.key(1, impl="rbg")).count.shape == (4,)
    with pytest.raises(ValueError, match=r"\.count is u32\[4\], .* is u32\[2\]"):
        ptc.tree_reseed(rbg, jax.random.key(1))


@needs_nnx_nodes
@pytest.mark.parametrize("n", [2, 4])
def test_tree_reseed_on_an_nnx_model_stacked_with_vmap(n: int) -> None:
    """nnx.vmap stacks each layer's RngCount to u32[n]: with 2 layers, the shape of one raw
    key. Keys are told by declaration (RngKey), so the counters stay as they are."""
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.lin = nnx.Linear(3, 3, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Block:
        return Block(rngs)

    model = make(nnx.Rngs(0, dropout=1))
    count = model.drop.rngs.count.get_value()
    assert count.dtype == jnp.uint32 and count.shape == (n,)
    count = count + jnp.arange(n, dtype=jnp.uint32)  # counters that have counted
    model.drop.rngs.count.set_value(count)
    before = model.drop.rngs.key.get_value()
    out = ptc.tree_reseed(model, jax.random.key(7))
    again = jax.jit(ptc.tree_reseed)(model, jax.random.key(7))
    assert np.array_equal(np.asarray(out.drop.rngs.count.get_value()), np.asarray(count))
    assert np.array_equal(np.asarray(again.drop.rngs.count.get_value()), np.asarray(count))
    new = out.drop.rngs.key.get_value()
    assert new.shape == (n,) and jnp.issubdtype(new.dtype, jax.dtypes.prng_key)
    assert len({tuple(r) for r in _data(new)}) == n  # a key per layer
    assert not np.array_equal(_data(new), _data(before))
    assert np.array_equal(_data(new), _data(again.drop.rngs.key.get_value()))
    assert out.lin.kernel.get_value() is model.lin.kernel.get_value()
