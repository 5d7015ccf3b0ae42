"""Data- and model-parallel training over several processes, checkpointed with
Orbax: the scanned transformer of `transformer_scan.py`, never whole on one
device.

    python examples/train_distributed.py --processes 2 --steps 5

starts 2 processes on this machine (4 simulated CPU devices each, talking over
localhost with JAX's multi-controller runtime, `jax.distributed`). Together
they form one 2 x 4 ("data", "model") mesh: the batch is split over "data"
(across the processes), the attention heads and MLP hidden units over "model"
(within each). Each process:

1. builds the model *abstractly* (`jax.eval_shape`: shapes, no memory), maps
   the fields' `axes` to shardings (`ptc.tree_shardings`), and initialises it
   with `jax.jit(..., out_shardings=...)`, so each device computes only its
   own shard;
2. trains with `ptc.Optimizer` (Adam), printing one `loss` line per step;
3. saves model and optimizer with Orbax, every process writing its shards.

`--processes 1` runs the same on one process with 8 devices and prints the
same losses. `--restore DIR --start N` reads such a checkpoint onto another
mesh (`--mesh 4x2`) and continues training from step N.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
import optax

import pytreeclass as ptc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transformer_scan import (
    RULES,
    Batches,
    Transformer,
    corpus,
    loss_fn,
)

DEVICES = 8  # in all, over every process
SIZES = {"layers": 2, "embed": 32, "heads": 4, "context": 16}
BATCH = 8  # global batch, split over the "data" axis


# -- the launcher: one child process per JAX process --------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace, extra: list[str]) -> int:
    """Start `args.processes` copies of this script and wait for all of them.

    Process 0's output is shown as it comes; the others' only if one fails.
    If any process fails or `args.timeout` passes, all are stopped.
    """
    n = args.processes
    if DEVICES % n:
        raise SystemExit(f"--processes must divide {DEVICES}, not {n}")
    port = free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES // n}",
        "JAX_PLATFORMS": "cpu",
    }
    with contextlib.ExitStack() as stack:
        # the others write to files (an unread pipe could fill up and block)
        logs = [
            stack.enter_context(tempfile.TemporaryFile("w+"))
            for _ in range(n - 1)
        ]
        procs = []
        for i in range(n):
            cmd = [sys.executable, os.path.abspath(__file__), *extra]
            cmd += ["--process-id", str(i), "--port", str(port)]
            log = logs[i - 1] if i else None
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=log, text=True
                )
            )
        deadline = time.monotonic() + args.timeout
        try:
            while time.monotonic() < deadline:
                codes = [p.poll() for p in procs]  # poll every one of them
                if None not in codes or any(c not in (None, 0) for c in codes):
                    break  # all done, or one failed
                time.sleep(0.1)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait()
        codes = [p.returncode for p in procs]
        if any(codes):
            for i, log in enumerate(logs, 1):
                log.seek(0)
                text = log.read()[-4000:]
                print(
                    f"-- process {i} (exit {codes[i]}):\n{text}",
                    file=sys.stderr,
                )
            return next(c for c in codes if c) or 1
    return 0


# -- one process --------------------------------------------------------------


def make_mesh(shape: tuple[int, int]) -> jax.sharding.Mesh:
    if hasattr(jax.sharding, "AxisType"):  # jax >= 0.5.3 names the axis types
        auto = (jax.sharding.AxisType.Auto,) * 2
        return jax.make_mesh(shape, ("data", "model"), axis_types=auto)
    return jax.make_mesh(shape, ("data", "model"))


def create(vocab: int) -> tuple[Transformer, ptc.Optimizer]:
    model = Transformer.create(jax.random.key(0), vocab, **SIZES)
    return model, ptc.Optimizer.create(optax.adam(3e-3), model)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """The abstract tree, each leaf carrying its sharding (for Orbax)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract,
        shardings,
    )


def own_rows(batch: np.ndarray, sharding: Any) -> jax.Array:
    """A global array from the batch every process holds: each process puts
    only the rows of its own devices there."""
    return jax.make_array_from_callback(
        batch.shape, sharding, lambda idx: batch[idx]
    )


def train(args: argparse.Namespace) -> None:
    if args.processes > 1:
        # CPU devices of different processes talk over gloo (TCP)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            f"localhost:{args.port}",
            num_processes=args.processes,
            process_id=args.process_id,
        )
    # the same random numbers however the arrays are sharded (default: jax 0.5+)
    jax.config.update("jax_threefry_partitionable", True)
    rows, cols = (int(n) for n in args.mesh.split("x"))
    mesh = make_mesh((rows, cols))
    batches = Batches(corpus(), SIZES["context"], BATCH, seed=0)
    vocab = len(batches.chars)

    # 1. Abstract init: shapes only, then each device computes its own shard.
    make = functools.partial(create, vocab)  # a function of nothing: no inputs
    abstract = jax.eval_shape(make)
    shardings = ptc.tree_shardings(abstract, mesh, RULES)
    if args.restore:
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ckptr:
            target = with_shardings(abstract, shardings)
            names = dict(zip(("model", "opt"), target))
            restored = ckptr.restore(os.path.abspath(args.restore), names)
        model, opt = restored["model"], restored["opt"]
    else:
        model, opt = jax.jit(make, out_shardings=shardings)()
    up = model.blocks.mlp.up
    print(
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"mesh {dict(mesh.shape)}, blocks.mlp.up {up.shape} in shards of "
        f"{up.addressable_shards[0].data.shape} on {len(up.devices())} devices",
        flush=True,
    )

    # 2. Train: the batch split over "data", parameters as their axes say.
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def step(model, opt, x, y, i):
        key = jax.random.fold_in(jax.random.key(1), i)
        loss, grads = jax.value_and_grad(loss_fn)(model, x, y, key)
        model, opt = opt.update(grads, model)
        return model, opt, loss

    train_step = jax.jit(
        step,
        in_shardings=(*shardings, data, data, replicated),
        out_shardings=(*shardings, replicated),
    )
    for _ in range(args.start):  # the batches of the steps already taken
        next(batches)
    for i in range(args.start, args.start + args.steps):
        x, y = next(batches)  # every process draws the same global batch ...
        # ... and puts only its own rows on its own devices
        xs, ys = own_rows(x, data), own_rows(y, data)
        model, opt, loss = train_step(model, opt, xs, ys, np.int32(i))
        print(f"step {i + 1} loss {float(loss):.7f}", flush=True)

    # 3. Checkpoint: every process writes its own shards.
    if args.checkpoint:
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ckptr:
            path = os.path.abspath(args.checkpoint)
            ckptr.save(path, {"model": model, "opt": opt})
            ckptr.wait_until_finished()
        print(f"saved {args.checkpoint}", flush=True)
    # every process must leave together: the others may still need this one
    if args.processes > 1:
        jax.distributed.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train the scanned transformer over several processes."
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mesh", default="2x4", help="data x model, e.g. 4x2")
    parser.add_argument("--checkpoint", help="save model and optimizer here")
    parser.add_argument("--restore", help="start from this checkpoint")
    parser.add_argument(
        "--start", type=int, default=0, help="steps already taken"
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.process_id is None:
        return launch(args, list(sys.argv[1:] if argv is None else argv))
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
