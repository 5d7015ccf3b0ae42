"""Section 7c: loading 1 GiB into shards over 8 simulated CPU devices.

    python benchmarks/bench_shards.py            # this section alone (about a minute)
    python benchmarks/bench_shards.py --quick    # smoke run, 1/64 of the size

`tree_load(path, like=abstract)` where `abstract` holds `jax.ShapeDtypeStruct`s with
the shardings `ptc.tree_shardings` gives on a 2 x 4 ("data", "model") mesh, against the
reference `safetensors.numpy.load_file` + `jax.device_put(arrays, shardings)`. The
model: 56 layers in a list (`w: f32[2048,2048]`, axes ("embed", "mlp"): sharded along
both dimensions) and a stacked field of 8 blocks (`up: f32[8,2048,1024]`, `down:
f32[8,1024,2048]`, 64 MiB each, the stacked axis replicated, the others sharded), 1 GiB
in all.

Each load runs in a fresh process with 8 CPU devices. Memory: the peak of the
process's anonymous (and shared anonymous) resident memory, sampled every millisecond
on a thread, above what it was before the load, less the result itself (on CPU the
devices' buffers are host memory): what loading costs beyond holding the model, in
MiB and in units of the largest leaf. Time: wall clock, the minimum over repeats in
that process, page cache warm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import Section, Settings, fmt_ratio

MEMORY_TARGET = 1.2  # largest leaves of memory beyond the result
TIME_TARGET = 1.0  # x the reference

_SCRIPT = r"""
import json, os, re, sys, threading, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, jax.numpy as jnp, numpy as np
import pytreeclass as ptc

folder, kind, scale, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


@ptc.treeclass
class Layer:
    w: jax.Array = ptc.field(kind=ptc.Parameter, axes=("embed", "mlp"))


@ptc.treeclass
class Block:
    up: jax.Array = ptc.field(kind=ptc.Parameter, axes=("embed", "mlp"))
    down: jax.Array = ptc.field(kind=ptc.Parameter, axes=("mlp", "embed"))


@ptc.treeclass
class Model:
    layers: list
    blocks: Block = ptc.field(stack="layers")


E = 2048 // scale
RULES = {"embed": "data", "mlp": "model", "layers": None}


def make(array):
    return Model(
        [Layer(array((E, E), i)) for i in range(56)],
        Block(array((8, E, E // 2), 56), array((8, E // 2, E), 57)),
    )


def rss():
    text = open("/proc/self/status").read()
    return sum(
        int(re.search(k + r":\s+(\d+) kB", text).group(1)) * 1024
        for k in ("RssAnon", "RssShmem")
    )


if kind == "write":
    model = make(lambda shape, i: np.full(shape, i, np.float32))
    ptc.tree_save(os.path.join(folder, "model.safetensors"), model)
    ptc.tree_save(os.path.join(folder, "model.npz"), model)
    raise SystemExit

mesh = jax.make_mesh((2, 4), ("data", "model"))
abstract = make(lambda shape, i: jax.ShapeDtypeStruct(shape, jnp.float32))
shardings = ptc.tree_shardings(abstract, mesh, RULES)
like = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
)
by_name = ptc.tree_to_dict(shardings)

if kind == "reference":
    from safetensors.numpy import load_file

    path = os.path.join(folder, "model.safetensors")

    def load():
        arrays = load_file(path)
        return jax.device_put(arrays, {k: by_name[k] for k in arrays})
else:
    path = os.path.join(folder, "model" + kind)

    def load():
        return ptc.tree_load(path, like=like)


jnp.zeros(1).block_until_ready()
peak, stop = [0], [False]


def sample():
    while not stop[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)


base = rss()
thread = threading.Thread(target=sample)
thread.start()
start = time.perf_counter()
out = jax.block_until_ready(load())
first = time.perf_counter() - start
stop[0] = True
thread.join()
peak[0] = max(peak[0], rss())
leaves = jax.tree.leaves(out)
result = sum(x.nbytes for x in leaves)
largest = max(x.nbytes for x in leaves)
assert all(len(x.sharding.device_set) == 8 for x in leaves)
del out, leaves
best = first
for _ in range(repeat - 1):
    start = time.perf_counter()
    jax.block_until_ready(load())
    best = min(best, time.perf_counter() - start)
print(json.dumps({
    "extra": peak[0] - base - result, "result": result, "largest": largest,
    "seconds": best,
}))
"""


def _run(folder: str, kind: str, scale: int, repeat: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, folder, kind, str(scale), str(repeat)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench_shards ({kind}) failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def bench_shards(settings: Settings) -> Section:
    scale = 8 if settings.quick else 1  # quick: 1/64 of the bytes
    repeat = 1 if settings.quick else 3
    size = "16 MiB" if settings.quick else "1 GiB"
    sec = Section(
        f"7c. loading {size} into shards over 8 CPU devices (wall time, page cache warm)",
        ["library", "load", "load / ref", "extra memory", "in largest leaves"],
    )
    folder = tempfile.mkdtemp(prefix="ptc-bench-shards-")
    try:
        _run(folder, "write", scale, 1)
        rows = {
            "safetensors load_file + device_put (reference)": "reference",
            "pytreeclass tree_load .safetensors": ".safetensors",
            "pytreeclass tree_load .npz": ".npz",
        }
        got = {name: _run(folder, kind, scale, repeat) for name, kind in rows.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ref = got["safetensors load_file + device_put (reference)"]["seconds"]
    for name, r in got.items():
        leaves = r["extra"] / r["largest"]
        ratio = r["seconds"] / ref
        sec.add(
            name,
            f"{r['seconds'] * 1000:.0f} ms",
            fmt_ratio(ratio),
            f"{r['extra'] / 2**20:.0f} MiB",
            f"{leaves:.2f}",
        )
        if name.startswith("pytreeclass"):
            fmt = name.split()[-1]
            sec.check(
                f"{fmt} load into shards: extra memory <= {MEMORY_TARGET} largest leaves",
                f"{leaves:.2f}",
                leaves <= MEMORY_TARGET,
            )
            sec.check(
                f"{fmt} load into shards <= {TIME_TARGET}x load_file + device_put",
                fmt_ratio(ratio),
                ratio <= TIME_TARGET,
            )
    r = next(iter(got.values()))
    sec.notes.append(
        f"model: 56 x f32[2048,2048] in a list + a stacked field of 8 blocks (up and "
        f"down, f32[8,2048,1024] and its transpose), {r['result'] / 2**20:.0f} MiB, largest leaf {r['largest'] / 2**20:.0f} "
        "MiB; mesh 2 x 4 (data, model), rules embed -> data, mlp -> model, layers -> None"
    )
    sec.notes.append(
        "extra memory: peak anonymous RSS during the load above the RSS before it, less "
        "the result (on CPU the devices' buffers are host memory)"
    )
    return sec


if __name__ == "__main__":
    section = bench_shards(Settings(quick="--quick" in sys.argv))
    print(section.text())
    for target, measured, ok in section.checks:
        print(f"  {'MET   ' if ok else 'MISSED'} {target}: {measured}")
