"""`tree_read` and `tree_info`: what a checkpoint holds, without a template.

Both take any checkpoint `tree_load` reads (`.npz`, `.safetensors`, a Hugging Face
`*.safetensors.index.json` with its shards) and name tensors by their flat dotted names
(`layers.0.w`, as `tree_to_dict` gives them), whatever the format.
"""

from __future__ import annotations

import ast
import math
import os
import re
from typing import Any, NamedTuple

import numpy as np

from ._io_file import corrupt, gc_paused
from ._io_leaves import decode, describe, first_repeat, show
from ._io_shards import Checkpoint, is_index_path, open_checkpoint

__all__ = ["TensorInfo", "TreeInfo", "tree_info", "tree_read"]

_KEY = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")


def _format_of(fn: str, path: str, format: Any) -> str:
    if is_index_path(path) and format is None:
        return "sharded"
    if format is None:
        return "safetensors" if path.lower().endswith(".safetensors") else "npz"
    if format not in ("npz", "safetensors"):
        raise ValueError(f"{fn}: format must be 'npz' or 'safetensors', not {format!r}.")
    return format


def _dotted(keystr: str) -> str:
    """`layers.0.w` from `.layers[0].w` (for `.npz` files that do not record flat names)."""
    parts = []
    for attr, item in _KEY.findall(keystr):
        if attr:
            parts.append(attr)
            continue
        try:
            value = ast.literal_eval(item)  # a literal only: never evaluates code
        except (ValueError, SyntaxError):
            value = item
        parts.append(str(value))
    return ".".join(parts)


def _names(fn: str, cp: Checkpoint) -> dict[str, str]:
    """{flat dotted name: the checkpoint's own name} in the checkpoint's order."""
    if cp.kind != "npz":
        return {n: n for n in cp.offered}
    recorded = cp.manifest.get("names")
    rows = cp.manifest.get("leaves")
    if (
        isinstance(recorded, list)
        and isinstance(rows, list)
        and len(recorded) == len(rows) == len(cp.offered)
        and all(isinstance(n, str) for n in recorded)
    ):
        dotted = dict(zip([r[0] for r in rows], recorded))
    else:
        dotted = {p: _dotted(p) for p in cp.offered}
    flat = [dotted.get(p, _dotted(p)) for p in cp.offered]
    twice = first_repeat(flat)
    if twice is not None:
        raise ValueError(
            f"{fn}: two leaves of {cp.path!r} have the flat name {twice!r} (dict keys such as "
            "1 and '1'); load it with ptc.tree_load, by key path."
        )
    return dict(zip(flat, cp.offered))


class TensorInfo(NamedTuple):
    """One tensor of a checkpoint: its shape and dtype as the tree held it (a Python
    number's dtype is that of its 0-d array, with `python` naming the type), the bytes
    it takes in the file, and the file that holds it."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    file: str
    python: str | None = None


class TreeInfo:
    """What a checkpoint holds, read from its headers and manifest only.

    Attributes:
        path: the checkpoint's path.
        format: `"npz"`, `"safetensors"` or `"sharded safetensors"`.
        tensors: `{flat name: TensorInfo}` in the file's order.
        metadata: a `.safetensors` file's `__metadata__` entries (pytreeclass's own
            manifest left out), e.g. `{"format": "pt"}`.
        structure: the recorded structure (JSON, see `tree_save`), or None when the
            file records none (written by another tool).
        files: the files that hold the tensors (the shards, for an index).
    """

    def __init__(
        self,
        path: str,
        format: str,
        tensors: dict[str, TensorInfo],
        metadata: dict[str, str],
        structure: Any,
        files: list[str],
    ) -> None:
        self.path = path
        self.format = format
        self.tensors = tensors
        self.metadata = metadata
        self.structure = structure
        self.files = files

    @property
    def names(self) -> list[str]:
        """The tensors' flat names."""
        return list(self.tensors)

    @property
    def nbytes(self) -> int:
        """The bytes of tensor data in the checkpoint."""
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def root(self) -> str | None:
        """What the recorded structure's root is (`"module.Class"`, `"list"`, ...)."""
        s = self.structure
        if not isinstance(s, dict):
            return None
        root = s.get("root")
        try:
            if type(root) is int:
                node = s["nodes"][root]
                if "class" in node:
                    return s["classes"][node["class"]]["name"].replace(":", ".")
                return node.get("namedtuple", "").replace(":", ".") or next(iter(node))
        except (KeyError, IndexError, TypeError, AttributeError, StopIteration):
            return None
        return "leaf" if isinstance(root, str) else repr(root)

    def __repr__(self) -> str:
        n = len(self.tensors)
        lines = [
            f"TreeInfo({os.path.basename(self.path)!r}: {self.format}, {n} tensor"
            f"{'' if n == 1 else 's'}, {_size(self.nbytes)}"
            + (f" in {len(self.files)} files" if len(self.files) > 1 else "")
            + ")"
        ]
        lines.append(f"  structure: {self.root or 'none recorded (load it with like=)'}")
        if self.metadata:
            lines.append(f"  metadata: {self.metadata}")
        items = list(self.tensors.items())
        shown = items if n <= 20 else items[:10] + items[-5:]
        width = max((len(name) for name, _ in shown), default=0)
        for i, (name, t) in enumerate(shown):
            if n > 20 and i == 10:
                lines.append(f"  ... {n - 15} more")
            what = f"Python {t.python}" if t.python else describe(t.shape, t.dtype)
            lines.append(f"  {name.ljust(width)}  {what}")
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def tree_info(path: str | os.PathLike[str], *, format: Any = None) -> TreeInfo:
    """Names, shapes and dtypes of a checkpoint's tensors and its recorded structure,
    read from its headers only (no tensor data is read).

    Args:
        path: a `.npz` or `.safetensors` file, or a Hugging Face
            `*.safetensors.index.json` (its shards' headers are read).
        format: `"npz"` or `"safetensors"` to choose the format whatever the suffix.

    Returns:
        The file's description as a `TreeInfo`, with `.tensors` (name to
        `TensorInfo(shape, dtype, nbytes, file)`), `.names`, `.metadata`, `.structure`,
        `.nbytes` and `.files`; its repr is a table.

    Raises:
        ValueError: the file is corrupt, of another format version, or a PyTorch pickle.
        FileNotFoundError: there is no file at `path` (or a shard is missing).

    Examples:
        >>> import os, tempfile
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
        >>> ptc.tree_save(path, {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)})
        >>> ptc.tree_info(path)
        TreeInfo('model.safetensors': safetensors, 2 tensors, 36 B)
          structure: dict
          metadata: {'format': 'pt'}
          b  float32[3]
          w  float32[2,3]
    """
    with gc_paused():
        target = os.fspath(path)
        cp = open_checkpoint("tree_info", target, _format_of("tree_info", target, format))
        tensors = {}
        for flat, name in _names("tree_info", cp).items():
            got = cp.offered[name]
            file, index = cp.parts[cp.part_of[name]]
            tensors[flat] = TensorInfo(
                got.shape,
                got.dtype,
                index.slots[name].nbytes,
                os.path.basename(file),
                got.python,
            )
        kind = "sharded safetensors" if cp.kind == "sharded" else cp.kind
        files = [os.path.basename(f) for f, _ in cp.parts]
        return TreeInfo(target, kind, tensors, dict(cp.metadata), cp.structure, files)


def tree_read(
    path: str | os.PathLike[str], *, mmap: bool = True, format: Any = None
) -> dict[str, Any]:
    """Every tensor of a checkpoint by its flat name, `{"layers.0.w": array}`, without a
    template.

    With `mmap=True` (the default) the arrays are read-only NumPy views of the file,
    memory-mapped (both formats store tensors uncompressed): nothing is read until it
    is used, and `np.array(x)` or `jax.device_put(x)` copies. The `.npz` checksums are
    then not checked (`tree_load` and `mmap=False` check them). PRNG keys come back
    as typed `jax.Array` keys, Python numbers as 0-d arrays. Use it with
    `ptc.tree_from_dict` to rename, transpose or stack tensors into a model.

    Args:
        path: a `.npz` or `.safetensors` file, or a Hugging Face
            `*.safetensors.index.json` with its shards.
        mmap: map the file(s) instead of reading them into memory.
        format: `"npz"` or `"safetensors"` to choose the format whatever the suffix.

    Returns:
        A dict from each flat name to its array, in the file's order.

    Raises:
        ValueError: the file is corrupt, of another format version, or a PyTorch
            pickle; two `.npz` leaves share a flat name.
        FileNotFoundError: there is no file at `path` (or a shard is missing).

    Examples:
        >>> import os, tempfile
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
        >>> ptc.tree_save(path, {"layers": [{"w": jnp.arange(2.0)}]})
        >>> ptc.tree_read(path)
        {'layers.0.w': array([0., 1.], dtype=float32)}
    """
    with gc_paused():
        target = os.fspath(path)
        cp = open_checkpoint("tree_read", target, _format_of("tree_read", target, format))
        names = _names("tree_read", cp)
        own = list(names.values())
        stored = _mapped(cp, own) if mmap else [a for a, _ in cp.read(own)]
        out = {}
        for flat, name, arr in zip(names, own, stored):
            try:
                out[flat] = decode(arr, cp.offered[name], cp.key_impl.get(name))
            except (ValueError, TypeError) as e:
                raise corrupt(
                    target, f"the data for {show(name)} cannot be decoded ({e})"
                ) from None
        return out


def _mapped(cp: Checkpoint, names: list[str]) -> list[np.ndarray]:
    maps: dict[int, np.ndarray] = {}
    out = []
    for name in names:
        part = cp.part_of[name]
        file, index = cp.parts[part]
        slot = index.slots[name]
        span = index.spans[slot.span]
        m = maps.get(part)
        if m is None:
            size = os.path.getsize(file)
            for s in index.spans:
                if s.start + s.size > size:
                    raise corrupt(file, f"it ends inside {s.label}")
            m = np.memmap(file, np.uint8, mode="r") if size else np.zeros(0, np.uint8)
            maps[part] = m
        if math.prod(slot.shape) == 0:
            out.append(np.zeros(slot.shape, slot.dtype))
            continue
        order = "F" if slot.fortran else "C"
        offset = span.start + slot.offset
        out.append(np.ndarray(slot.shape, slot.dtype, m, offset, order=order))
    return out
