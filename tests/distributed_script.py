"""Helper for tests/test_distributed.py: one process of a (1- or 2-process) JAX run.

    python tests/distributed_script.py PROCESS_ID NUM_PROCESSES PORT FOLDER

The test sets XLA_FLAGS to 8 / NUM_PROCESSES CPU devices per process. Over a 2 x 4
("data", "model") mesh this process (all of them, when there are several):

* loads a `.npz` and a `.safetensors` file (a stacked field included) with `tree_load`
  into a template of sharded `jax.ShapeDtypeStruct`s, and checks every shard it holds
  against the data;
* saves (`tree_save`) arrays that span the processes: refused, with the old file intact,
  for arrays it does not hold whole; written, for arrays replicated over the processes.

It prints one line, `RESULT {json}`, which the test reads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax

PROCESS, PROCESSES, PORT, FOLDER = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if PROCESSES > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{PORT}", num_processes=PROCESSES, process_id=PROCESS)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import pytreeclass as ptc  # noqa: E402
from pytreeclass import Parameter, field, treeclass  # noqa: E402


@treeclass
class Block:
    w: jax.Array = field(kind=Parameter, axes=("embed", "mlp"))
    b: jax.Array = field(kind=Parameter, axes=("mlp",))


@treeclass
class Model:
    emb: jax.Array = field(kind=Parameter, axes=("vocab", "embed"))
    blocks: Block = field(stack="layers")
    half: jax.Array = field(axes=(None, "mlp"))
    scale: jax.Array = field(kind=Parameter)  # no axes: replicated
    steps: int = 0  # a Python number


RULES = {"vocab": "model", "embed": "data", "mlp": "model", "layers": None}


def data() -> Model:
    rng = np.random.default_rng(0)
    return Model(
        emb=rng.normal(size=(16, 6)).astype(np.float32),
        blocks=Block(
            rng.normal(size=(3, 6, 8)).astype(np.float32),
            rng.normal(size=(3, 8)).astype(np.float32),
        ),
        half=rng.normal(size=(5, 8)).astype(jnp.bfloat16),
        scale=np.float32(2.5),
        steps=7,
    )


def mesh() -> jax.sharding.Mesh:
    if hasattr(jax.sharding, "AxisType"):
        auto = (jax.sharding.AxisType.Auto,) * 2
        return jax.make_mesh((2, 4), ("data", "model"), axis_types=auto)
    return jax.make_mesh((2, 4), ("data", "model"))


def spec(sharding: NamedSharding) -> list:
    return [list(a) if isinstance(a, tuple) else a for a in sharding.spec]


def check_load(path: str, like: Model, expected: Model) -> dict:
    loaded = ptc.tree_load(path, like=like)
    assert loaded.steps == expected.steps
    leaves = jax.tree_util.tree_flatten_with_path(loaded)[0]
    report = {}
    for (key, got), want, template in zip(leaves, jax.tree.leaves(expected), jax.tree.leaves(like)):
        if not isinstance(got, jax.Array):
            continue
        assert got.sharding == template.sharding, (key, got.sharding, template.sharding)
        assert got.dtype == want.dtype and got.shape == want.shape
        for shard in got.addressable_shards:  # each shard holds its slice of the data
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(want)[shard.index])
        report[jax.tree_util.keystr(key)] = {
            "spec": spec(got.sharding),
            "local_shards": len(got.addressable_shards),
            "fully_addressable": got.is_fully_addressable,
        }
    return report


def check_damaged(files: list[str], like: Model, expected: Model) -> list[str]:
    """Sharded leaves are copied from the file's pages: a damaged file is still an error,
    and changing the file afterwards does not change what was loaded."""
    messages = []
    for path in files:
        mine = Path(FOLDER) / f"p{PROCESS}-{os.path.basename(path)}"
        raw = Path(path).read_bytes()
        at = raw.index(np.asarray(expected.emb).tobytes()[:64])  # inside a sharded leaf
        mine.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
        if path.endswith(".npz"):
            with pytest.raises(ValueError, match=r"damaged \(bad CRC-32\)"):
                ptc.tree_load(mine, like=like)
        mine.write_bytes(raw[: at + 10])
        with pytest.raises(ValueError, match=r"truncated, corrupt") as info:
            ptc.tree_load(mine, like=like)
        messages.append(str(info.value))
        mine.write_bytes(raw)
        loaded = ptc.tree_load(mine, like=like)
        with open(mine, "r+b") as f:  # the same file, overwritten in place
            f.write(bytes(len(raw)))
        np.testing.assert_array_equal(
            np.asarray(loaded.emb.addressable_shards[0].data),
            np.asarray(expected.emb)[loaded.emb.addressable_shards[0].index],
        )
    return messages


def put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def main() -> None:
    assert jax.device_count() == 8 and jax.process_count() == PROCESSES
    m = mesh()
    expected = data()
    shardings = ptc.tree_shardings(expected, m, RULES)
    like = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=s),
        expected,
        shardings,
    )
    like = like.at.steps.set(0)
    files = [os.path.join(FOLDER, "model.npz"), os.path.join(FOLDER, "model.safetensors")]
    if PROCESS == 0:
        for path in files:
            ptc.tree_save(path, expected)
    if PROCESSES > 1:
        multihost_utils.sync_global_devices("saved")
    result: dict = {"load": {os.path.basename(p): check_load(p, like, expected) for p in files}}
    result["damaged"] = check_damaged(files, like, expected)

    if PROCESSES > 1:
        loaded = ptc.tree_load(files[0], like=like)
        refused = {}
        for suffix in ("npz", "safetensors"):
            # each process its own file, saved before, which the refusal must leave as is
            mine = os.path.join(FOLDER, f"own{PROCESS}.{suffix}")
            old = {"emb": np.full(3, PROCESS, np.float32)}
            ptc.tree_save(mine, old)
            before = Path(mine).read_bytes()
            with pytest.raises(ValueError, match=r"tree_save: the leaf at \.emb ") as info:
                ptc.tree_save(mine, loaded)
            assert Path(mine).read_bytes() == before
            stray = [n for n in os.listdir(FOLDER) if n.startswith(f".own{PROCESS}.")]
            assert not stray, stray
            refused[suffix] = str(info.value)
        result["refused"] = refused

        # replicated over the processes: each process holds all of it, and saves it
        whole = {
            "replicated": put(expected.emb, NamedSharding(m, PartitionSpec())),
            "within_process": put(expected.emb, NamedSharding(m, PartitionSpec("model"))),
            "key": jax.jit(
                lambda: jax.random.key(3), out_shardings=NamedSharding(m, PartitionSpec())
            )(),
        }
        assert not whole["within_process"].is_fully_addressable
        path = os.path.join(FOLDER, f"whole{PROCESS}.safetensors")
        ptc.tree_save(path, whole)
        host = np.zeros(expected.emb.shape, np.float32)
        like_whole = {"replicated": host, "within_process": host, "key": jax.random.key(0)}
        back = ptc.tree_load(path, like=like_whole)
        np.testing.assert_array_equal(back["replicated"], expected.emb)
        np.testing.assert_array_equal(back["within_process"], expected.emb)
        np.testing.assert_array_equal(
            jax.random.key_data(back["key"]), jax.random.key_data(jax.random.key(3))
        )
        spread = NamedSharding(m, PartitionSpec())
        key_like = {"key": jax.ShapeDtypeStruct((), whole["key"].dtype, sharding=spread)}
        key_back = ptc.tree_load(path, like=like_whole | key_like)
        assert key_back["key"].sharding == spread
        np.testing.assert_array_equal(
            jax.random.key_data(key_back["key"]).addressable_data(0),
            jax.random.key_data(jax.random.key(3)),
        )
        result["saved_whole"] = True
        multihost_utils.sync_global_devices("done")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
