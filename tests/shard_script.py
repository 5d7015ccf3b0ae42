"""Helper for tests/test_shard.py, run in a subprocess with 8 simulated CPU devices.

XLA reads `--xla_force_host_platform_device_count` once, when JAX initialises, so this
script sets it before importing jax; the test runs it with `subprocess` and checks the JSON
it prints: each parameter's actual sharding after `jax.device_put`, and the loss and
parameters of a data- and model-parallel jitted training step against one device.
"""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass


@treeclass
class Dense:
    w: jax.Array = field(kind=Parameter, axes=("embed", "mlp"))
    b: jax.Array = field(kind=Parameter, axes=("mlp",))


@treeclass
class DenseOut:
    w: jax.Array = field(kind=Parameter, axes=("mlp", "embed"))
    b: jax.Array = field(kind=Parameter, axes=("embed",))


@treeclass
class Norm:
    scale: jax.Array = field(kind=Parameter)  # no axes of its own: inherits from the parent field


@treeclass
class Model:
    embed: jax.Array = field(kind=Parameter, axes=("vocab", "embed"))
    up: Dense
    down: DenseOut
    norm: Norm = field(axes=("norm",))
    gain: jax.Array = field(kind=Parameter)  # replicated
    count: jax.Array = field(kind=BatchStat)  # replicated


VOCAB, EMBED, MLP = 16, 8, 32


def make_model(key: jax.Array) -> Model:
    k = jax.random.split(key, 4)
    return Model(
        embed=jax.random.normal(k[0], (VOCAB, EMBED)) * 0.1,
        up=Dense(jax.random.normal(k[1], (EMBED, MLP)) * 0.1, jnp.zeros(MLP)),
        down=DenseOut(jax.random.normal(k[2], (MLP, EMBED)) * 0.1, jnp.zeros(EMBED)),
        norm=Norm(jnp.ones(EMBED)),
        gain=jnp.asarray(1.0),
        count=jnp.asarray(0, jnp.int32),
    )


def loss_fn(model: Model, tokens: jax.Array, targets: jax.Array) -> jax.Array:
    h = model.embed[tokens] * model.norm.scale
    h = jax.nn.relu(h @ model.up.w + model.up.b)
    out = (h @ model.down.w + model.down.b) * model.gain
    return jnp.mean((out - targets) ** 2)


def train_step(model: Model, tokens: jax.Array, targets: jax.Array) -> tuple[Model, jax.Array]:
    params, rest = ptc.tree_partition(model, Parameter)

    def loss_of(p: Model) -> jax.Array:
        return loss_fn(ptc.tree_merge(p, rest), tokens, targets)

    loss, grads = jax.value_and_grad(loss_of)(params)
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    model = ptc.tree_merge(params, rest)
    return model.at.count.apply(lambda c: c + 1), loss


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    # The default from jax 0.5 on; older jax draws different random numbers under a sharded
    # jit unless it is set, and the init check below compares with an unsharded init.
    jax.config.update("jax_threefry_partitionable", True)
    # Auto axes: the classic jit(in_shardings=..., out_shardings=...) workflow, where XLA
    # propagates shardings through the step (Explicit axes would need annotations inside).
    # (jax < 0.5.3 has no AxisType: its meshes behave as Auto, so none is passed there.)
    if hasattr(jax.sharding, "AxisType"):
        auto = jax.sharding.AxisType.Auto
        mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(auto, auto))
    else:
        mesh = jax.make_mesh((2, 4), ("data", "model"))
    rules = [("vocab", ("data", "model")), ("embed", None), ("mlp", "model"), ("norm", "model")]
    model = make_model(jax.random.key(0))
    shardings = ptc.tree_shardings(model, mesh, rules)
    placed = jax.device_put(model, shardings)

    report: dict[str, object] = {}
    paths = jax.tree_util.tree_flatten_with_path(placed)[0]
    for path, leaf in paths:
        s = leaf.sharding
        assert isinstance(s, NamedSharding) and s.mesh == mesh
        report[jax.tree_util.keystr(path)] = {
            "spec": [list(a) if isinstance(a, tuple) else a for a in s.spec],
            "shard_shape": list(leaf.addressable_shards[0].data.shape),
            "num_shards": len(
                {tuple((sl.start, sl.stop) for sl in sh.index) for sh in leaf.addressable_shards}
            ),
        }

    # The same step, single device vs data- and model-parallel over the 2x4 mesh.
    tokens = jax.random.randint(jax.random.key(1), (8,), 0, VOCAB)
    targets = jax.random.normal(jax.random.key(2), (8, EMBED))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())

    single = jax.jit(train_step)
    m1, loss1 = single(model, tokens, targets)
    m1, loss1b = single(m1, tokens, targets)

    sharded = jax.jit(
        train_step,
        in_shardings=(shardings, batch, batch),
        out_shardings=(shardings, replicated),
    )
    tok_s, tgt_s = jax.device_put(tokens, batch), jax.device_put(targets, batch)
    m2, loss2 = sharded(placed, tok_s, tgt_s)
    m2, loss2b = sharded(m2, tok_s, tgt_s)

    diffs = jax.tree.leaves(
        jax.tree.map(
            lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0)), m1, m2
        )
    )
    out_specs_match = all(
        a.sharding.spec == b.spec for a, b in zip(jax.tree.leaves(m2), jax.tree.leaves(shardings))
    )
    report["__step__"] = {
        "loss_single": [float(loss1), float(loss1b)],
        "loss_sharded": [float(loss2), float(loss2b)],
        "max_param_diff": max(diffs),
        "out_specs_match": out_specs_match,
        "count": int(m2.count),
        "devices_in_step": len(m2.up.w.sharding.device_set),
    }
    # Abstract init straight onto the mesh: jit(out_shardings=tree_shardings(eval_shape)).
    abstract = jax.eval_shape(make_model, jax.random.key(0))
    init = jax.jit(make_model, out_shardings=ptc.tree_shardings(abstract, mesh, rules))
    fresh = init(jax.random.key(0))
    reference = jax.jit(make_model)(jax.random.key(0))
    report["__init__"] = {
        "specs_match": all(
            a.sharding.spec == b.spec
            for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(shardings))
        ),
        "max_diff": max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
            for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(reference))
        ),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
