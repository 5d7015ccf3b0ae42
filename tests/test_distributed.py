"""Beyond one process: JAX's multi-controller runtime on this machine's CPUs.

Each test starts real processes on localhost (4 simulated CPU devices each, CPU
collectives over gloo, `jax.distributed.initialize`), always stopped at the end:

* `tests/distributed_script.py` loads files into sharded templates (in one process with
  8 devices, and in each of 2 processes) and checks `tree_save`'s refusal;
* `examples/train_distributed.py` trains over 2 processes and over 1, with the same
  losses, and its Orbax checkpoint restores onto another mesh and trains on. (With
  jaxlib 0.4.36 Orbax cannot save from several processes, see `tests/versions.py`:
  there the checkpoint restored comes from one process with the same 2 x 4 mesh.)

They are skipped only where the installed jax cannot run CPU collectives across
processes (probed once, by a 2-process `psum`), with the probe's error as the reason.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from .versions import ORBAX_SAVES_ACROSS_PROCESSES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed_script.py"
EXAMPLE = ROOT / "examples" / "train_distributed.py"
TIMEOUT = 300  # seconds per run: generous, for a shared 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    """This environment, importing this checkout's pytreeclass first (a script's own
    folder, not the current one, starts its sys.path)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def run_processes(
    cmd: list[str], n: int, extra: tuple[str, ...] = (), timeout: float = TIMEOUT
) -> list[str]:
    """Run `python CMD... ID N PORT EXTRA...` as n processes; their stdouts (all must
    succeed).

    Every process is killed if one fails or the time runs out, so none outlives the test.
    """
    env = {
        **_env(),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // n}",
        "JAX_PLATFORMS": "cpu",
    }
    port = str(_free_port())
    with contextlib.ExitStack() as stack:
        # output to files: a pipe that is read only at the end could fill up and block
        logs = [
            (
                stack.enter_context(tempfile.TemporaryFile("w+")),
                stack.enter_context(tempfile.TemporaryFile("w+")),
            )
            for _ in range(n)
        ]
        procs = [
            subprocess.Popen(
                [sys.executable, *cmd, str(i), str(n), port, *extra],
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )
            for i, (out, err) in enumerate(logs)
        ]
        deadline = time.monotonic() + timeout
        try:  # until all are done, one has failed, or the time is up
            while time.monotonic() < deadline:
                codes = [p.poll() for p in procs]  # (every one polled: no short cut)
                if None not in codes or any(c not in (None, 0) for c in codes):
                    break
                time.sleep(0.1)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        outs = []
        for out, err in logs:
            out.seek(0)
            err.seek(0)
            outs.append((out.read(), err.read()))
    codes = [p.returncode for p in procs]
    assert codes == [0] * n, "\n".join(
        f"-- process {i} (exit {c}):\n{o[-2000:]}\n{e[-4000:]}"
        for i, (c, (o, e)) in enumerate(zip(codes, outs))
    )
    return [o for o, _ in outs]


def test_a_failing_process_stops_the_others() -> None:
    script = "import sys, time; sys.exit(3) if sys.argv[1] == '1' else time.sleep(300)"
    with pytest.raises(AssertionError, match=r"(?s)process 0 \(exit -9\).*process 1 \(exit 3\)"):
        run_processes(["-c", script], 2)


_PSUM = textwrap.dedent(
    """
    import sys, jax
    i, n, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=n, process_id=i)
    import jax.numpy as jnp
    from jax.experimental import multihost_utils
    total = multihost_utils.process_allgather(jnp.asarray([i + 1.0]))
    assert total.sum() == 3.0, total
    print("ok")
    """
)


@functools.cache
def collectives_problem() -> str | None:
    """None if 2 processes of the installed jax can run a collective on CPU, else why not."""
    try:
        run_processes(["-c", _PSUM], 2, timeout=120)
    except AssertionError as e:
        last = [line for line in str(e).splitlines() if line.strip()][-1:]
        return f"this jax cannot run CPU collectives across 2 processes: {' '.join(last)}"
    return None


@pytest.fixture(scope="module")
def collectives() -> None:
    problem = collectives_problem()
    if problem:
        pytest.skip(problem)


def _result(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, out[-3000:]
    return json.loads(lines[0][len("RESULT ") :])


# -- loading into shards and saving from several processes --------------------------------


def _check_loads(report: dict, processes: int) -> None:
    for fmt in ("model.npz", "model.safetensors"):
        leaves = report["load"][fmt]
        assert set(leaves) == {".emb", ".blocks.w", ".blocks.b", ".half", ".scale"}
        # the stacked axis is prepended (layers -> None), the others follow the rules
        assert leaves[".blocks.w"]["spec"] == [None, "data", "model"]
        assert leaves[".emb"]["spec"] == ["model", "data"]
        assert leaves[".half"]["spec"] == [None, "model"]
        assert leaves[".scale"]["spec"] == []
        for leaf in leaves.values():
            assert leaf["fully_addressable"] == (processes == 1)
            assert leaf["local_shards"] == 8 // processes


def test_tree_load_into_shards_in_one_process(tmp_path) -> None:
    [out] = run_processes([str(SCRIPT)], 1, (str(tmp_path),))
    _check_loads(_result(out), 1)


def test_tree_load_into_shards_and_tree_save_in_each_of_two_processes(
    tmp_path, collectives
) -> None:
    outs = run_processes([str(SCRIPT)], 2, (str(tmp_path),))
    for out in outs:
        report = _result(out)
        _check_loads(report, 2)
        assert report["saved_whole"] is True
        for message in report["refused"].values():
            assert re.search(
                r"tree_save: the leaf at \.emb \(float32\[16,6\]\) is sharded over the "
                r"devices of several processes.*Checkpoint sharded trees with Orbax.*"
                r"docs/scaling\.md",
                message,
            ), message


# -- examples/train_distributed.py: 2 processes, 1 process, restored onto another mesh ----


def run_example(*args: str) -> list[float]:
    """Run the example (it starts its own processes); the loss it prints at each step."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args, "--timeout", str(TIMEOUT - 30)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a timeout can stop its processes too
        env=_env(),  # (its processes inherit it)
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
    steps = re.findall(r"^step (\d+) loss (\S+)$", out, flags=re.M)
    assert [int(s) for s, _ in steps] == list(range(int(steps[0][0]), int(steps[-1][0]) + 1))
    header = re.search(r"^process 0 of (\d+): mesh (.*)$", out, flags=re.M)
    assert header, out[-2000:]
    processes = int(header[1])
    # initialised sharded: each device holds its slice of the stacked MLP weights
    shards = "(2, 32, 32)" if "'model': 4" in header[2] else "(2, 32, 64)"
    assert header[2].endswith(f"blocks.mlp.up (2, 32, 128) in shards of {shards} on 8 devices")
    assert f"--processes {processes}" in " ".join(args)  # every one of them took part
    return [float(loss) for _, loss in steps]


def test_train_over_two_processes_equals_one_and_restores_onto_another_mesh(
    tmp_path, collectives
) -> None:
    """One test, not three sharing fixtures: under pytest-xdist each worker would run
    the module fixtures again (the runs are the slow part)."""
    checkpoint = tmp_path / "checkpoint"
    saving = ["--checkpoint", str(checkpoint)]
    # 3 steps over 2 processes, checkpointed where Orbax can save across processes
    # (else by a 1-process run of the same 3 steps: see ORBAX_SAVES_ACROSS_PROCESSES)
    if ORBAX_SAVES_ACROSS_PROCESSES:
        two = run_example("--processes", "2", "--steps", "3", *saving)
    else:
        two = run_example("--processes", "2", "--steps", "3")
        run_example("--processes", "1", "--steps", "3", *saving)
    one = run_example("--processes", "1", "--steps", "5")
    assert len(two) == 3 and len(one) == 5
    np.testing.assert_allclose(two, one[:3], rtol=0, atol=1e-5)
    assert one[-1] < one[0]  # it trains
    assert checkpoint.is_dir()
    # one process, 8 devices as a 4 x 2 mesh (the model axis halved): model and Adam
    # state come back resharded, and the loss curve goes on as if never interrupted
    more = run_example(
        "--processes", "1", "--mesh", "4x2", "--restore", str(checkpoint),
        "--start", "3", "--steps", "2",
    )  # fmt: skip
    np.testing.assert_allclose(more, one[3:], rtol=0, atol=1e-5)
