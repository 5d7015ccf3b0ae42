"""Section 7: saving and loading, `tree_save` / `tree_load` in both formats against the
`safetensors` package and `np.savez`, from many small leaves to 1 GiB.

The reference does the same work as `tree_save` / `tree_load`: fetch the arrays from the
device, write, fsync (`safetensors.numpy.save_file` + `os.fsync`), and read, then put the
arrays on the device (`safetensors.numpy.load_file` + `jax.device_put`). Times are wall
clock (the work is I/O and XLA's threads), the minimum over a few repeats, with the page
cache warm. Peak memory while loading 1 GiB is measured in a fresh process (peak RSS
above the RSS before the call).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from timing import Section, Settings, fmt_ratio

import pytreeclass as ptc

LOAD_TARGET = 1.5
SAVE_TARGET = 1.3
NO_TEMPLATE_TARGET = 1.1  # tree_load(path) against tree_load(path, like=model)
MEMORY_TARGET_GIB = 1.3


@ptc.treeclass
class Layer:
    w: jax.Array = ptc.field(kind=ptc.Parameter)


@ptc.treeclass
class Model:
    layers: list


def _model(n: int, shape: tuple[int, ...]) -> Model:
    return Model([Layer(jnp.full(shape, float(i), jnp.float32)) for i in range(n)])


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _time(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def _fmt_s(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def _rows(
    model: Model, folder: str, repeat: int, load_repeat: int
) -> dict[str, tuple[float, float]]:
    """{row: (save seconds, load seconds)} for one tree."""
    from safetensors.numpy import load_file, save_file

    flat = ptc.tree_to_dict(model)
    npz, st = os.path.join(folder, "t.npz"), os.path.join(folder, "t.safetensors")
    ref, plain = os.path.join(folder, "r.safetensors"), os.path.join(folder, "p.npz")

    def ref_save() -> None:
        save_file(jax.device_get(flat), ref)
        _fsync(ref)

    def plain_save() -> None:
        np.savez(plain, **jax.device_get(flat))
        _fsync(plain)

    def plain_load() -> Any:
        with np.load(plain) as f:
            return jax.device_put({k: f[k] for k in f.files})

    pairs = {
        "safetensors.numpy (reference)": (ref_save, lambda: jax.device_put(load_file(ref))),
        "np.savez / np.load": (plain_save, plain_load),
        "pytreeclass .safetensors": (
            lambda: ptc.tree_save(st, model),
            lambda: ptc.tree_load(st, like=model),
        ),
        "pytreeclass .npz": (
            lambda: ptc.tree_save(npz, model),
            lambda: ptc.tree_load(npz, like=model),
        ),
    }
    # The same files loaded without a template (the structure they record): not saved
    # again, so their save column repeats the row above.
    pairs["pytreeclass .safetensors, no template"] = (lambda: None, lambda: ptc.tree_load(st))
    pairs["pytreeclass .npz, no template"] = (lambda: None, lambda: ptc.tree_load(npz))
    out = {name: [float("inf"), float("inf")] for name in pairs}
    for _ in range(repeat):  # interleaved: a burst of load hits every row alike
        for name, (save, load) in pairs.items():
            out[name][0] = min(out[name][0], _time(save, 1))
            out[name][1] = min(out[name][1], _time(load, 1))
    for _ in range(load_repeat - repeat):  # loads are quick, and noisier (page faults)
        for name, (_, load) in pairs.items():
            out[name][1] = min(out[name][1], _time(load, 1))
    for fmt in (".safetensors", ".npz"):
        out[f"pytreeclass {fmt}, no template"][0] = out[f"pytreeclass {fmt}"][0]
    return {name: (save_s, load_s) for name, (save_s, load_s) in out.items()}


_MEMORY_SCRIPT = """
import re, sys
import jax, jax.numpy as jnp
import pytreeclass as ptc
path, kind = sys.argv[1], sys.argv[2]
@ptc.treeclass
class Layer:
    w: jax.Array
@ptc.treeclass
class Model:
    layers: list
like = Model([Layer(jax.ShapeDtypeStruct((2048, 2048), jnp.float32))] * 64)
def rss(key):
    text = open("/proc/self/status").read()
    return int(re.search(key + r":\\s+(\\d+) kB", text).group(1)) * 1024
jnp.zeros(1).block_until_ready()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak
base = rss("VmRSS")
if kind == "reference":
    from safetensors.numpy import load_file
    out = jax.device_put(load_file(path))
else:
    out = ptc.tree_load(path, like=like)
jax.block_until_ready(out)
print((rss("VmHWM") - base) / 2**30)
"""


def _peak_gib(path: str, kind: str) -> float | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, path, kind],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring the peak memory failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def bench_io(settings: Settings) -> Section:
    sizes: list[tuple[str, int, tuple[int, ...]]] = [("1,000 x f32[4]", 1_000, (4,))]
    if not settings.quick:
        sizes = [
            ("10,000 x f32[4]", 10_000, (4,)),
            ("100,000 x f32[4]", 100_000, (4,)),
            ("64 x f32[2048,2048] (1 GiB)", 64, (2048, 2048)),
        ]
    sec = Section(
        "7. saving and loading (wall time, page cache warm)",
        ["tree / library", "save", "load", "save / ref", "load / ref"],
    )
    folder = tempfile.mkdtemp(prefix="ptc-bench-io-")
    try:
        for label, n, shape in sizes:
            model = _model(n, shape)
            repeat = 1 if settings.quick else (2 if n >= 100_000 or n == 64 else 3)
            rows = _rows(model, folder, repeat, 1 if settings.quick else max(repeat, 5))
            ref_save, ref_load = rows["safetensors.numpy (reference)"]
            for name, (s, ld) in rows.items():
                sec.add(
                    f"{label}: {name}",
                    _fmt_s(s),
                    _fmt_s(ld),
                    fmt_ratio(s / ref_save),
                    fmt_ratio(ld / ref_load),
                )
                if name.endswith("no template"):
                    fmt = name.split()[1].rstrip(",")
                    with_template = rows[f"pytreeclass {fmt}"][1]
                    sec.check(
                        f"{fmt} load without a template <= {NO_TEMPLATE_TARGET}x with one "
                        f"({label})",
                        fmt_ratio(ld / with_template),
                        ld / with_template <= NO_TEMPLATE_TARGET,
                    )
                elif name.startswith("pytreeclass"):
                    fmt = name.split()[-1]
                    sec.check(
                        f"{fmt} load <= {LOAD_TARGET}x reference ({label})",
                        fmt_ratio(ld / ref_load),
                        ld / ref_load <= LOAD_TARGET,
                    )
                    sec.check(
                        f"{fmt} save <= {SAVE_TARGET}x reference ({label})",
                        fmt_ratio(s / ref_save),
                        s / ref_save <= SAVE_TARGET,
                    )
            if n == 64:
                for kind, file in [
                    ("reference", "r.safetensors"),
                    ("pytreeclass .safetensors", "t.safetensors"),
                    ("pytreeclass .npz", "t.npz"),
                ]:
                    peak = _peak_gib(os.path.join(folder, file), kind)
                    if peak is None:
                        continue
                    sec.notes.append(f"peak extra memory loading 1 GiB, {kind}: {peak:.2f} GiB")
                    if kind != "reference":
                        sec.check(
                            f"peak extra memory loading 1 GiB ({kind}) <= {MEMORY_TARGET_GIB} GiB",
                            f"{peak:.2f} GiB",
                            peak <= MEMORY_TARGET_GIB,
                        )
            del model
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    sec.notes.append(
        "reference: save = jax.device_get + safetensors.numpy.save_file + fsync; "
        "load = safetensors.numpy.load_file + jax.device_put (both block until ready)"
    )
    return sec


# -- a Hugging Face file, renamed and stacked ----------------------------------------------------

HF_TIME_TARGET = 0.5  # x safetensors.numpy.load_file
HF_MEMORY_TARGET = 1.1  # x the file size, peak extra memory

_HF_MODEL = """
import jax, jax.numpy as jnp
import pytreeclass as ptc
@ptc.treeclass
class Conv1D:
    weight: jax.Array
    bias: jax.Array
@ptc.treeclass
class Norm:
    weight: jax.Array
    bias: jax.Array
@ptc.treeclass
class Attn:
    c_attn: Conv1D
    c_proj: Conv1D
@ptc.treeclass
class Mlp:
    c_fc: Conv1D
    c_proj: Conv1D
@ptc.treeclass
class Block:
    ln_1: Norm
    attn: Attn
    ln_2: Norm
    mlp: Mlp
@ptc.treeclass
class Emb:
    weight: jax.Array
@ptc.treeclass
class GPT2:
    wte: Emb
    wpe: Emb
    h: Block = ptc.field(stack="layers")
    ln_f: Norm
    lm_head: Emb
def template(V, T, D, L):
    def s(*shape):
        return jax.ShapeDtypeStruct(shape, jnp.float32)
    def conv(i, o):
        return Conv1D(s(L, i, o), s(L, o))
    def norm(*lead):
        return Norm(s(*lead, D), s(*lead, D))
    block = Block(norm(L), Attn(conv(D, 3 * D), conv(D, D)), norm(L),
                  Mlp(conv(D, 4 * D), conv(4 * D, D)))
    return GPT2(Emb(s(V, D)), Emb(s(T, D)), block, norm(), Emb(s(V, D)))
RENAME = [
    (r"^transformer\\.", ""),
    (r"^wte\\.weight$", ("wte.weight", "lm_head.weight")),
]
"""


def _hf_file(path: str, V: int, T: int, D: int, L: int) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)

    def t(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, np.float32)

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
    save_file(out, path, metadata={"format": "pt"})


_HF_FRESH = (
    _HF_MODEL
    + """
import os, re, sys, time
path, kind, V, T, D, L = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
like = template(V, T, D, L)
def rss(key):
    text = open("/proc/self/status").read()
    return int(re.search(key + r":\\s+(\\d+) kB", text).group(1)) * 1024
jnp.zeros(1).block_until_ready()
from safetensors.numpy import load_file
memory = os.path.exists("/proc/self/clear_refs")
if memory:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak
    base = rss("VmRSS")
start = time.perf_counter()
if kind == "reference":
    out = load_file(path)
else:
    out = ptc.tree_load(path, like=like, rename=RENAME)
jax.block_until_ready(out)
print(time.perf_counter() - start, rss("VmHWM") - base if memory else -1)
"""
)


def bench_hf_load(settings: Settings) -> Section:
    """A GPT-2-shaped Hugging Face file (`transformer.` prefix, numbered layers, tied
    head) loaded into a stacked model by `tree_load` with rename rules, against
    `safetensors.numpy.load_file` alone (which neither renames nor stacks)."""
    from safetensors.numpy import load_file

    V, T, D, L = (512, 64, 64, 2) if settings.quick else (8192, 1024, 768, 10)
    sec = Section(
        "7b. a Hugging Face GPT-2 file, renamed and stacked (page cache warm)",
        ["load", "time", "/ load_file", "peak extra memory", "/ file size"],
    )
    folder = tempfile.mkdtemp(prefix="ptc-bench-hf-")
    try:
        path = os.path.join(folder, "model.safetensors")
        _hf_file(path, V, T, D, L)
        size = os.path.getsize(path)
        scope: dict[str, Any] = {}
        exec(_HF_MODEL, scope)
        like = scope["template"](V, T, D, L)

        def ours() -> Any:
            return jax.block_until_ready(ptc.tree_load(path, like=like, rename=scope["RENAME"]))

        def ref() -> Any:
            return load_file(path)

        def ref_device() -> Any:
            return jax.block_until_ready(jax.device_put(load_file(path)))

        ours(), ref(), ref_device()  # warm the page cache and compile nothing later
        repeat = 1 if settings.quick else 7
        again = {"ref": float("inf"), "ours": float("inf"), "device": float("inf")}
        for _ in range(repeat):  # interleaved, in this process
            again["ref"] = min(again["ref"], _time(ref, 1))
            again["ours"] = min(again["ours"], _time(ours, 1))
            again["device"] = min(again["device"], _time(ref_device, 1))
        # A checkpoint is loaded once per process: the first load in a fresh process
        # (JAX started, page cache warm) is the measure. Repeated in one process, the
        # reference's allocations come back from a heap that earlier loads (and large
        # `jax.device_put`s) left faulted in, which no first load has.
        first: dict[str, float] = {"reference": float("inf"), "pytreeclass": float("inf")}
        peaks: dict[str, int] = {}
        for _ in range(1 if settings.quick else 5):
            for kind in first:
                proc = subprocess.run(
                    [sys.executable, "-c", _HF_FRESH, path, kind, *map(str, (V, T, D, L))],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"a fresh-process load failed:\n{proc.stderr[-3000:]}")
                seconds, peak = proc.stdout.strip().splitlines()[-1].split()
                first[kind] = min(first[kind], float(seconds))
                if int(peak) >= 0:
                    peaks[kind] = max(peaks.get(kind, 0), int(peak))
        label = f"{size / 2**20:.0f} MB, {L} layers"
        for name, kind in [
            ("safetensors.numpy.load_file", "reference"),
            ("ptc.tree_load(rename=..., stacked)", "pytreeclass"),
        ]:
            peak = peaks.get(kind)
            sec.add(
                f"{label}, first load in a fresh process: {name}",
                _fmt_s(first[kind]),
                fmt_ratio(first[kind] / first["reference"]),
                "-" if peak is None else f"{peak / 2**20:.0f} MB",
                "-" if peak is None else fmt_ratio(peak / size),
            )
        for name, key in [
            ("safetensors.numpy.load_file", "ref"),
            ("load_file + jax.device_put (no renaming, no stacking)", "device"),
            ("ptc.tree_load(rename=..., stacked)", "ours"),
        ]:
            sec.add(
                f"{label}, repeated in one process: {name}",
                _fmt_s(again[key]),
                fmt_ratio(again[key] / again["ref"]),
                "-",
                "-",
            )
        ratio = first["pytreeclass"] / first["reference"]
        sec.check(
            f"renamed + stacked first load <= {HF_TIME_TARGET}x load_file's",
            fmt_ratio(ratio),
            ratio <= HF_TIME_TARGET,
        )
        if "pytreeclass" in peaks:
            mem = peaks["pytreeclass"] / size
            sec.check(
                f"peak extra memory <= {HF_MEMORY_TARGET}x the file size",
                fmt_ratio(mem),
                mem <= HF_MEMORY_TARGET,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    sec.notes.append(
        "tree_load checks every name, shape and dtype first, then reads each tensor once, "
        "each layer straight into its row of the stacked array; load_file returns the "
        "file's tensors as NumPy arrays (no renaming, no stacking, no device arrays). "
        "First loads: best of 5 fresh processes each, interleaved; repeated: best of 7. "
        "Repeated in one process, load_file reuses memory its earlier calls faulted in"
    )
    return sec
