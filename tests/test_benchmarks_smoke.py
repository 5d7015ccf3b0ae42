"""The benchmark suite runs end to end (`--quick`) and prints every section.

No timing assertions: this only checks that the benchmarks still run against the current
library and its peers, so the README numbers can be regenerated at any time. One test (not
one per section) so that pytest-xdist never starts the ~20 s subprocess twice.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .versions import needs_nnx_nodes

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"

SECTIONS = [
    "== 1a. flatten",
    "== 1b. unflatten",
    "== 1c. jit dispatch",
    "== 1d. jit dispatch",
    "== 1e. construct one layer",
    "== 2a. partition",
    "== 2b. merge",
    "== 2c. mask",
    "== 3. single-leaf update",
    "== 4. jitted training step",
    "== 5. scaling",
    "== 6. model surgery",
    "== 7. saving and loading",
    "== 7b. a Hugging Face GPT-2 file",
    "== 7c. loading",
    "== 8a. layer stacks: compile time",
    "== 8b. layer stacks: one compiled training step",
    "== 8c. layer stacks: write one layer",
    "== summary:",
]


@needs_nnx_nodes  # the benchmarks compare with flax.nnx's current API (nnx.List)
def test_quick_run_prints_every_section(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    missing = [title for title in SECTIONS if title not in proc.stdout]
    assert not missing, f"sections not printed: {missing}\n{proc.stdout[-4000:]}"
    # Every section compares us with a peer: our rows are there, each with a time in it.
    ours = [ln for ln in proc.stdout.splitlines() if ln.startswith("pytreeclass")]
    assert len(ours) >= 12, proc.stdout[-4000:]
    assert all("µs" in ln or "ms" in ln for ln in ours), ours
    # The training variants are checked to compute the same losses before they are timed.
    assert "every variant checked to compute the same losses" in proc.stdout
    # Quick numbers are not measurements: they never overwrite the README's table.
    assert not out.exists()
    assert "wrote" not in proc.stdout
