"""Section 8: layer stacks. The transformer of examples/transformer_scan.py at several depths,
its blocks ONE stacked field run by `ptc.scan_layers`, against the same blocks in a Python
list run by a Python loop (unrolled into the compiled program).

* compile time of the jitted training step (trace + lower + XLA compile; CPU time of this
  process, all threads, so other processes on a shared machine do not inflate it);
* time of one compiled training step (forward, backward, adam);
* `model.at.blocks[3].set(block)` on the deepest stack against the `x.at[3].set(v)` calls
  it makes, written by hand over the stack's leaves.

XLA's compile of the unrolled program grows faster than linearly in time and memory (on
this 24 GiB machine depth 64 did not finish: it passed 20 GiB). Unrolled depths from
`CHILD_DEPTH` on are compiled and timed in a child process that is stopped when it
passes `CHILD_GIB` of memory or `CHILD_SECONDS`, so the run survives and says what
happened.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from timing import Section, Settings, fmt_ratio, fmt_us, measure_many

import pytreeclass as ptc

__all__ = ["bench_stacks"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "transformer_scan.py"
CHILD_DEPTH = 64
CHILD_GIB = 12.0
CHILD_SECONDS = 600.0


def _example() -> Any:
    name = "transformer_scan_example"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look classes' modules up here
        spec.loader.exec_module(module)
    return sys.modules[name]


def _unrolled_class() -> type:
    ex = _example()

    @ptc.treeclass
    class Unrolled:
        """The same model with its blocks in a Python list, run by a Python loop."""

        tok: jax.Array = ptc.field(kind=ptc.Parameter)
        pos: jax.Array = ptc.field(kind=ptc.Parameter)
        blocks: list
        ln_f: Any

        def __call__(self, tokens: jax.Array) -> jax.Array:
            x = self.tok[tokens] + self.pos[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.ln_f(x) @ self.tok.T

    Unrolled.__module__ = ex.__name__
    return Unrolled


def _step_fn() -> Callable[..., Any]:
    """A fresh (uncached) training step without dropout, for either model."""

    def step(model: Any, opt: ptc.Optimizer, x: jax.Array, y: jax.Array) -> Any:
        def loss_fn(m: Any) -> jax.Array:
            logits = m(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(model)
        model, opt = opt.update(grads, model)
        return model, opt, loss

    return step


def _models(depth: int, sizes: dict[str, int]) -> tuple[Any, Any, Any]:
    ex = _example()
    model, _, batches = ex.setup(layers=depth, **sizes)
    unrolled = _unrolled_class()(model.tok, model.pos, ptc.tree_unstack(model.blocks), model.ln_f)
    return model, unrolled, batches


def _compile(step: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """The compiled step and the CPU seconds its trace, lowering and compile took."""
    t0 = time.process_time()
    compiled = jax.jit(step).lower(*args).compile()
    return compiled, time.process_time() - t0


_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import jax.numpy as jnp, optax
import bench_stacks as b
import pytreeclass as ptc
depth, sizes, repeat = int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
_, m, batches = b._models(depth, sizes)
x, y = (jnp.asarray(a) for a in next(batches))
opt = ptc.Optimizer.create(optax.adam(1e-3), m)
compiled, seconds = b._compile(b._step_fn(), m, opt, x, y)
print(json.dumps({"compile": seconds}), flush=True)
losses, best_cpu, best_wall = [], float("inf"), float("inf")
for _ in range(repeat):
    c0, w0 = time.process_time(), time.perf_counter()
    m, opt, loss = compiled(m, opt, x, y)
    loss.block_until_ready()
    best_cpu = min(best_cpu, time.process_time() - c0)
    best_wall = min(best_wall, time.perf_counter() - w0)
    losses.append(float(loss))
print(json.dumps({"cpu": best_cpu * 1e6, "wall": best_wall * 1e6, "losses": losses[:2]}))
"""


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _unrolled_in_child(depth: int, sizes: dict[str, int], repeat: int) -> dict[str, Any]:
    """Compile and time the unrolled step in a child process, watched for memory and
    time: `{"compile": s, "cpu": us, "wall": us, "losses": [...]}` or `{"stopped": why}`."""
    args = [sys.executable, "-c", _CHILD, str(Path(__file__).parent), str(depth)]
    args += [json.dumps(sizes), str(repeat)]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    start, peak = time.perf_counter(), 0.0
    while child.poll() is None:
        peak = max(peak, _rss_gib(child.pid))
        elapsed = time.perf_counter() - start
        if peak > CHILD_GIB or elapsed > CHILD_SECONDS:
            child.kill()
            child.wait()
            what = f"{peak:.1f} GiB" if peak > CHILD_GIB else f"{elapsed:.0f} s"
            return {"stopped": f"stopped at {what} ({elapsed:.0f} s, peak {peak:.1f} GiB)"}
        time.sleep(0.2)
    out: dict[str, Any] = {}
    for line in (child.stdout.read() if child.stdout else "").splitlines():
        out |= json.loads(line)
    if child.returncode != 0 or "cpu" not in out:
        return {"stopped": f"failed (exit {child.returncode})"}
    return out


def bench_stacks(settings: Settings) -> list[Section]:
    depths = [2, 4] if settings.quick else [4, 16, 64]
    sizes = (
        {"embed": 16, "heads": 2, "context": 8}
        if settings.quick
        else {"embed": 64, "heads": 4, "context": 32}
    )
    compile_sec = Section(
        f"8a. layer stacks: compile time of a training step (transformer, embed "
        f"{sizes['embed']}, context {sizes['context']}, adam)",
        [
            "depth",
            "scanned (scan_layers)",
            "x depth " + str(depths[0]),
            "unrolled (list)",
            "x depth " + str(depths[0]),
        ],
    )
    step_sec = Section(
        "8b. layer stacks: one compiled training step, scanned vs unrolled",
        [
            "depth",
            "scanned CPU",
            "unrolled CPU",
            "scanned / unrolled",
            "scanned wall",
            "unrolled wall",
        ],
    )
    # The first compile in a process pays one-time costs (JAX's and XLA's own set-up):
    # a throwaway compile first, so the first measured depth is not inflated.
    model, _, batches = _models(depths[0], sizes)
    x, y = (jnp.asarray(a) for a in next(batches))
    _compile(_step_fn(), model, ptc.Optimizer.create(optax.adam(1e-3), model), x, y)
    compiles: dict[str, list[float | None]] = {"scan": [], "loop": []}
    stopped: dict[int, str] = {}
    ratios = []
    deepest = None
    for depth in depths:
        model, unrolled, batches = _models(depth, sizes)
        x, y = (jnp.asarray(a) for a in next(batches))
        in_child = depth >= CHILD_DEPTH and not settings.quick
        runs = []
        losses = []
        for name, m in (("scan", model), ("loop", unrolled)):
            if name == "loop" and in_child:
                continue
            opt = ptc.Optimizer.create(optax.adam(1e-3), m)
            compiled, seconds = _compile(_step_fn(), m, opt, x, y)
            compiles[name].append(seconds)
            state = [m, opt]

            def run(c: Any = compiled, state: list[Any] = state, xy: Any = (x, y)) -> Any:
                state[0], state[1], loss = c(state[0], state[1], *xy)
                return loss.block_until_ready()

            losses.append([float(run()) for _ in range(2)])
            runs.append(run)
        cpu = measure_many(runs, settings.fewer() if depth >= 64 else settings)
        wall = measure_many(runs, settings.wall_clock(repeat=max(2, settings.repeat // 3)))
        if in_child:
            child = _unrolled_in_child(depth, sizes, max(3, settings.repeat // 3))
            compiles["loop"].append(child.get("compile"))
            if "stopped" in child:
                stopped[depth] = child["stopped"]
            else:
                losses.append(child["losses"])
                cpu.append(child["cpu"])
                wall.append(child["wall"])
        if len(losses) == 2 and not np.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-5):
            raise AssertionError(f"depth {depth}: scanned losses {losses[0]}, unrolled {losses[1]}")
        if len(cpu) == 2:
            ratios.append((depth, cpu[0] / cpu[1]))
            cells = [fmt_us(cpu[1]), fmt_ratio(cpu[0] / cpu[1]), fmt_us(wall[0]), fmt_us(wall[1])]
        else:
            cells = ["not run", "-", fmt_us(wall[0]), "-"]
        step_sec.add(depth, fmt_us(cpu[0]), cells[0], cells[1], cells[2], cells[3])
        deepest = model
    for i, depth in enumerate(depths):
        s, u = compiles["scan"][i], compiles["loop"][i]
        assert s is not None
        first = compiles["loop"][0]
        compile_sec.add(
            depth,
            f"{s:.2f} s",
            fmt_ratio(s / compiles["scan"][0]),  # type: ignore[operator]
            f"{u:.2f} s" if u is not None else stopped.get(depth, "-"),
            fmt_ratio(u / first) if u is not None and first else "-",
        )
    growth = compiles["scan"][-1] / compiles["scan"][0]  # type: ignore[operator]
    last_loop = compiles["loop"][-1]
    unrolled_growth = (
        f"{last_loop / compiles['loop'][0]:.2f}x"  # type: ignore[operator]
        if last_loop is not None
        else f"did not compile: {stopped[depths[-1]]}"
    )
    compile_sec.check(
        f"scanned compile at depth {depths[-1]} <= 1.5x depth {depths[0]}",
        f"{growth:.2f}x (unrolled: {unrolled_growth})",
        growth <= 1.5,
    )
    compile_sec.notes.append("CPU time of trace + lower + XLA compile, one compile each")
    if stopped:
        compile_sec.notes.append(
            f"unrolled from depth {CHILD_DEPTH}: compiled in a child process, stopped past "
            f"{CHILD_GIB:.0f} GiB of memory or {CHILD_SECONDS:.0f} s"
        )
    worst = max(r for _, r in ratios)
    step_sec.check(
        "scanned step <= 1.15x unrolled at every depth",
        ", ".join(f"{d}: {r:.2f}x" for d, r in ratios)
        + "".join(f", {d}: unrolled not compiled" for d in stopped),
        worst <= 1.15,
    )
    step_sec.notes.append("both variants checked to compute the same losses first")
    return [compile_sec, step_sec, _bench_set(settings, deepest, depths[-1])]


def _bench_set(settings: Settings, model: Any, depth: int) -> Section:
    block = model.at.blocks[-1].get()
    leaves, treedef = jax.tree_util.tree_flatten(model.blocks)
    values = jax.tree_util.tree_leaves(block)

    def lens() -> Any:
        return model.at.blocks[3].set(block)

    def by_hand() -> Any:
        return treedef.unflatten([x.at[3].set(v) for x, v in zip(leaves, values)])

    got, want = lens().blocks, by_hand()
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)
    lens_us, hand_us = measure_many([lens, by_hand], settings.more(2))
    sec = Section(
        f"8c. layer stacks: write one layer of a {depth}-deep stack ({len(leaves)} leaves)",
        ["operation", "time", "x by hand"],
    )
    sec.add("model.at.blocks[3].set(block)", fmt_us(lens_us), fmt_ratio(lens_us / hand_us))
    sec.add("by hand: x.at[3].set(v) per leaf", fmt_us(hand_us), "1.00x")
    r = lens_us / hand_us
    sec.check("model.at.blocks[3].set(b) <= 2x by hand", f"{r:.2f}x", r <= 2.0)
    return sec
