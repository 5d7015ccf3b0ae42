"""The training-step comparison (section 4 of run.py) alone, for a machine with a GPU.

    python benchmarks/gpu_step.py           # on a CUDA machine with jax[cuda] installed
    python benchmarks/gpu_step.py --quick   # smoke run; also works on CPU

JAX puts the arrays on its default device (the GPU when there is one); every variant waits
for its loss with `block_until_ready`, so the times include the device work. Prints the
devices and the same table as run.py (wall time is the number that matters on a GPU; CPU
time there is the host-side cost of dispatch).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore", category=DeprecationWarning)

import bench_train  # noqa: E402
import jax  # noqa: E402
from timing import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few repeats")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices: {jax.devices()}")
    if jax.default_backend() == "cpu":
        print("no GPU found: running on CPU (same code path, CPU numbers)")
    section = bench_train.bench_train(Settings(quick=args.quick), title="jitted training step")
    print()
    print(section.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
