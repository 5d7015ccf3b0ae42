"""Helper for tests/test_io.py: start `ptc.tree_save` over an existing file, stall mid-write.

Usage: python io_crash_writer.py PATH stall|big

`stall`: after two leaves of the new tree are in the temporary file, print `MIDWRITE` and
sleep, so the test can SIGKILL it while the temporary file is surely half written.
`big`: save a large tree (256 MiB) at full speed; the test SIGKILLs it as soon as the
temporary file appears, wherever the write has got to.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import pytreeclass as ptc

_write_array = np.lib.format.write_array
_calls = [0]


def _stalling_write_array(*args: object, **kwargs: object) -> None:
    _write_array(*args, **kwargs)  # type: ignore[arg-type]
    _calls[0] += 1
    if _calls[0] == 2:
        print("MIDWRITE", flush=True)
        time.sleep(120)


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "stall":
        np.lib.format.write_array = _stalling_write_array  # type: ignore[assignment]
        tree = {f"layer{i}": np.full((256, 256), 7.0, np.float32) for i in range(8)}
    else:
        tree = {f"layer{i}": np.full((1024, 1024), 7.0, np.float32) for i in range(64)}
    print("START", flush=True)
    ptc.tree_save(path, tree)
    print("FINISHED", flush=True)


if __name__ == "__main__":
    main()
