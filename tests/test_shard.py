"""tree_shardings: axes -> NamedSharding; errors in-process; 8 simulated devices in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import pytreeclass as ptc
from pytreeclass import Parameter, field, treeclass
from pytreeclass._leaf_facts import leaf_axes

HERE = Path(__file__).resolve().parent


@treeclass
class Dense:
    w: jax.Array = field(kind=Parameter, axes=("embed", "mlp"))
    b: jax.Array = field(kind=Parameter, axes=("mlp",))


@treeclass
class Norm:
    scale: jax.Array
    eps: float = 1e-6


@treeclass
class Block:
    dense: Dense = field(axes=("ignored", "ignored"))  # Dense's own fields set axes: they win
    norm: Norm = field(axes=("embed",))  # Norm's fields set none: they inherit this
    extra: list = field(default_factory=list)
    name: str = field(static=True, default="block")


def make_block() -> Block:
    return Block(Dense(jnp.ones((4, 8)), jnp.zeros(8)), Norm(jnp.ones(4)), [jnp.ones(3)])


@pytest.fixture(scope="module")
def mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((1, 1), ("data", "model"))


RULES = {"embed": None, "mlp": "model"}


def test_axes_come_from_the_nearest_field() -> None:
    assert leaf_axes(make_block()) == (
        ("embed", "mlp"),
        ("mlp",),
        ("embed",),
        ("embed",),  # eps, a Python float: inherits too, but is not an array (replicated)
        None,
    )


def test_tree_shardings_structure_and_specs(mesh: jax.sharding.Mesh) -> None:
    block = make_block()
    s = ptc.tree_shardings(block, mesh, RULES)
    assert jax.tree.structure(s) == jax.tree.structure(block)
    assert all(isinstance(x, NamedSharding) and x.mesh == mesh for x in jax.tree.leaves(s))
    assert s.dense.w.spec == PartitionSpec(None, "model")
    assert s.dense.b.spec == PartitionSpec("model")
    assert s.norm.scale.spec == PartitionSpec(None)
    assert s.norm.eps.spec == PartitionSpec()
    assert s.extra[0].spec == PartitionSpec()
    assert s.name == "block"


def test_rules_as_pairs_and_tuples_of_mesh_axes(mesh: jax.sharding.Mesh) -> None:
    s = ptc.tree_shardings(make_block(), mesh, [("embed", ("data", "model")), ("mlp", None)])
    assert s.dense.w.spec == PartitionSpec(("data", "model"), None)
    s = ptc.tree_shardings(make_block(), mesh, [("embed", ("data",)), ("mlp", "model")])
    assert s.dense.w.spec == PartitionSpec("data", "model")


def test_device_put_and_jit_with_the_shardings(mesh: jax.sharding.Mesh) -> None:
    block = make_block()
    s = ptc.tree_shardings(block, mesh, RULES)
    placed = jax.device_put(block, s)
    assert placed.dense.w.sharding == s.dense.w
    step = jax.jit(
        lambda b: b.at.dense.w.apply(lambda w: w * 2), in_shardings=(s,), out_shardings=s
    )
    out = step(placed)
    assert out.dense.w.sharding.spec == PartitionSpec(None, "model")
    assert float(out.dense.w[0, 0]) == 2.0


def test_abstract_trees_work(mesh: jax.sharding.Mesh) -> None:
    abstract = jax.eval_shape(make_block)
    assert abstract.norm.eps.shape == ()  # a 0-d array now, under the inherited axes
    s = ptc.tree_shardings(abstract, mesh, RULES)
    assert s.norm.eps.spec == PartitionSpec()  # scalars are replicated, never a rank error
    init = jax.jit(make_block, out_shardings=s)
    assert init().dense.w.sharding.spec == PartitionSpec(None, "model")


def test_trees_without_treeclasses_are_replicated(mesh: jax.sharding.Mesh) -> None:
    s = ptc.tree_shardings({"a": jnp.ones((2, 2)), "b": [1.0]}, mesh, {})
    assert [x.spec for x in jax.tree.leaves(s)] == [PartitionSpec(), PartitionSpec()]


# -- errors ---------------------------------------------------------------------------------------


def test_logical_axis_without_rule(mesh: jax.sharding.Mesh) -> None:
    with pytest.raises(
        ValueError,
        match=r"logical axis 'mlp' of the leaf at \.dense\.w has no rule\. Add one, .*rules given for: \['embed'\]",
    ):
        ptc.tree_shardings(make_block(), mesh, {"embed": None})


def test_rule_naming_a_mesh_axis_not_in_the_mesh(mesh: jax.sharding.Mesh) -> None:
    with pytest.raises(
        ValueError,
        match=r"the rule 'mlp' -> 'tensor' names mesh axis 'tensor', which the mesh does not have \(mesh axes: \('data', 'model'\)\)",
    ):
        ptc.tree_shardings(make_block(), mesh, {"embed": None, "mlp": "tensor"})
    with pytest.raises(ValueError, match="names mesh axis 'x'"):
        ptc.tree_shardings(make_block(), mesh, {"unused": ("data", "x")})  # checked even if unused


def test_rank_mismatch_names_the_field_path(mesh: jax.sharding.Mesh) -> None:
    block = make_block().at.dense.w.set(jnp.ones((2, 4, 8)))
    with pytest.raises(
        ValueError,
        match=r"the leaf at \.dense\.w is f32\[2,4,8\] \(3 dims\) but its field declares axes=\('embed', 'mlp'\) \(2 names\)",
    ):
        ptc.tree_shardings(block, mesh, RULES)
    inherited = make_block().at.norm.scale.set(jnp.ones((4, 4)))
    with pytest.raises(ValueError, match=r"the leaf at \.norm\.scale is f32\[4,4\] \(2 dims\)"):
        ptc.tree_shardings(inherited, mesh, RULES)


def test_one_mesh_axis_for_two_dimensions(mesh: jax.sharding.Mesh) -> None:
    with pytest.raises(
        ValueError, match=r"the leaf at \.dense\.w maps both 'embed' and 'mlp' to mesh axis 'model'"
    ):
        ptc.tree_shardings(make_block(), mesh, {"embed": "model", "mlp": "model"})


def test_malformed_rules(mesh: jax.sharding.Mesh) -> None:
    with pytest.raises(TypeError, match="rules must be a mapping or a sequence of pairs, not int"):
        ptc.tree_shardings(make_block(), mesh, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"rule 'embed' is not a \(logical name, mesh axes\) pair"):
        ptc.tree_shardings(make_block(), mesh, ["embed"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="logical axis 'mlp' has two rules"):
        ptc.tree_shardings(make_block(), mesh, [("mlp", "model"), ("mlp", None)])
    with pytest.raises(TypeError, match="the rule for 'mlp' is 3; it must be a mesh axis name"):
        ptc.tree_shardings(make_block(), mesh, {"mlp": 3})  # type: ignore[dict-item]


def test_field_axes_validation() -> None:
    with pytest.raises(TypeError, match="axes must be a tuple of logical axis names"):
        field(axes="embed")  # type: ignore[arg-type]


# -- several devices --------------------------------------------------------------------------------


def test_eight_simulated_devices() -> None:
    """One subprocess (XLA_FLAGS must be set before JAX starts), checked section by section."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, str(HERE / "shard_script.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    # Each parameter's actual sharding after jax.device_put on the 2x4 ("data", "model") mesh.
    leaves = {k: v for k, v in report.items() if not k.startswith("__")}
    assert leaves == {
        ".embed": {"spec": [["data", "model"], None], "shard_shape": [2, 8], "num_shards": 8},
        ".up.w": {"spec": [None, "model"], "shard_shape": [8, 8], "num_shards": 4},
        ".up.b": {"spec": ["model"], "shard_shape": [8], "num_shards": 4},
        ".down.w": {"spec": ["model", None], "shard_shape": [8, 8], "num_shards": 4},
        ".down.b": {"spec": [None], "shard_shape": [8], "num_shards": 1},
        ".norm.scale": {"spec": ["model"], "shard_shape": [2], "num_shards": 4},
        ".gain": {"spec": [], "shard_shape": [], "num_shards": 1},
        ".count": {"spec": [], "shard_shape": [], "num_shards": 1},
    }

    # Two data- and model-parallel jitted training steps match the single-device ones.
    step = report["__step__"]
    assert step["loss_sharded"] == pytest.approx(step["loss_single"], rel=1e-6)
    assert step["loss_single"][1] < step["loss_single"][0]  # it trains
    assert step["max_param_diff"] < 1e-6
    assert step["out_specs_match"] is True
    assert step["count"] == 2
    assert step["devices_in_step"] == 8

    # jax.jit(init, out_shardings=tree_shardings(eval_shape(init), ...)) builds it in place.
    assert report["__init__"] == {"specs_match": True, "max_diff": 0.0}
