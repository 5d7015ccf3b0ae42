"""Helper for tests/test_io.py: start `ptc.tree_save` over an existing file, stall mid-write.

Usage: python io_crash_writer.py PATH stall|big

`stall`: once two leaves of the new tree are in the temporary file, print `MIDWRITE` and
sleep, so the test can SIGKILL it while the temporary file is surely half written.
`big`: save a large tree (256 MiB) at full speed; the test SIGKILLs it as soon as the
temporary file appears, wherever the write has got to.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import pytreeclass as ptc
from pytreeclass._io import _io_file, _io_npz


def _stalling_write_joined(out: object, arrays: list) -> None:
    """Write two leaves' bytes to the temporary file, then stall."""
    _io_file.write_joined(out, arrays[:2])
    out.flush()  # type: ignore[attr-defined]
    print("MIDWRITE", flush=True)
    time.sleep(120)


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "stall":
        _io_npz.write_joined = _stalling_write_joined  # type: ignore[assignment]
        tree = {f"layer{i}": np.full((256, 256), 7.0, np.float32) for i in range(8)}
    else:
        tree = {f"layer{i}": np.full((1024, 1024), 7.0, np.float32) for i in range(64)}
    print("START", flush=True)
    ptc.tree_save(path, tree)
    print("FINISHED", flush=True)


if __name__ == "__main__":
    main()
