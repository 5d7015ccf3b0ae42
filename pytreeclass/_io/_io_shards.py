"""Checkpoints as `tree_load`, `tree_read` and `tree_info` see them: one `.npz` file, one
`.safetensors` file, or `.safetensors` shards with a Hugging Face index.

The sharded layout is Hugging Face's: `name-00001-of-00003.safetensors`, ... (each a
complete safetensors file holding some of the tensors) and `name.safetensors.index.json`:

```
{"metadata": {"total_size": <bytes of tensor data>, "pytreeclass": {...}},
 "weight_map": {tensor name: shard file name, ...}}
```

pytreeclass adds its manifest (format, version, the recorded structure and a random save
id) to the index's metadata, and the same save id to each shard's own manifest.

Writing (`write_sharded`): every shard is written atomically (`atomic_write`), then the
index, last. A crash part way leaves the old index (or none); shard files of the new save
that were already renamed may then have replaced shards of an old save with the same
names. Loading such a mix is refused, not done silently: the save id of every shard
written by pytreeclass must match the index's. Once the new index is in place, shard
files the old index listed and the new one does not are removed.

Reading never follows a path out of the index's folder: shard names are plain file names.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import zipfile
from collections.abc import Sequence
from typing import Any

from ._io_file import atomic_write, corrupt, read_slots
from ._io_leaves import FORMAT, VERSION, HostLeaf, Offered
from ._io_npz import NpzIndex
from ._io_safetensors import META_KEY, SafetensorsIndex, write_safetensors

__all__ = [
    "Checkpoint",
    "is_index_path",
    "open_checkpoint",
    "parse_size",
    "torch_pickle_error",
    "write_sharded",
]

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*")
_SHARD = re.compile(r".+-\d{5}-of-\d{5}\.safetensors")
_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def parse_size(fn: str, size: Any) -> int:
    """Bytes from an int or a string such as `"5GB"` (decimal units, as Hugging Face
    reads them: 1 GB = 10**9 bytes; `"GiB"` is 2**30)."""
    if type(size) is int:
        if size > 0:
            return size
    elif isinstance(size, str):
        m = _SIZE.fullmatch(size)
        unit = m and _UNITS.get(m.group(2).upper())
        if m and unit:
            n = int(float(m.group(1)) * unit)
            if n > 0:
                return n
    else:
        raise TypeError(
            f"{fn}: max_shard_size must be a number of bytes (int) or a string such as "
            f"'5GB' or '500MB', not a {type(size).__name__}."
        )
    raise ValueError(
        f"{fn}: max_shard_size={size!r} is not a positive size; give bytes as an int or a "
        "string such as '5GB', '500MB' or '2GiB' (units B, KB, MB, GB, TB, KiB, MiB, GiB)."
    )


def is_index_path(path: str) -> bool:
    return path.lower().endswith(".index.json")


def _index_and_stem(path: str) -> tuple[str, str]:
    """(`dir/model.safetensors.index.json`, `dir/model`) from either spelling."""
    stem = path[: -len(".index.json")] if is_index_path(path) else path
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    return stem + ".safetensors.index.json", stem


# -- writing ------------------------------------------------------------------------------------


def _plan(sizes: Sequence[int], max_bytes: int) -> list[list[int]]:
    """Leaves in order, cut into shards of at most `max_bytes` (a larger leaf alone)."""
    shards: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(sizes):
        if shards[-1] and used + n > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += n
    return shards


def write_sharded(
    path: str,
    names: Sequence[str],
    leaves: Sequence[HostLeaf],
    max_bytes: int,
    metadata: dict[str, str],
    extra: dict[str, Any],
) -> str:
    """Write shards and then their index (see the module docstring); returns the index path."""
    index_path, stem = _index_and_stem(path)
    folder, base = os.path.split(stem)
    plan = _plan([leaf.data.nbytes for leaf in leaves], max_bytes)
    files = [f"{base}-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    old = _listed_shards(index_path)
    save_id = secrets.token_hex(8)
    weight_map: dict[str, str] = {}
    for group, file in zip(plan, files):
        with atomic_write(os.path.join(folder, file)) as f:
            write_safetensors(
                f,
                [names[i] for i in group],
                [leaves[i] for i in group],
                metadata,
                {"save_id": save_id},
            )
        weight_map.update((names[i], file) for i in group)
    own = {"format": FORMAT, "version": VERSION, "save_id": save_id, **extra}
    total = sum(leaf.data.nbytes for leaf in leaves)
    index = {"metadata": {"total_size": total, META_KEY: own}, "weight_map": weight_map}
    with atomic_write(index_path) as f:
        f.write(json.dumps(index, indent=2).encode())
    for file in old - set(files):
        if _SHARD.fullmatch(file):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, file))
    return index_path


def _listed_shards(index_path: str) -> set[str]:
    try:
        with open(index_path, "rb") as f:
            weight_map = json.load(f).get("weight_map", {})
        return {v for v in weight_map.values() if isinstance(v, str) and _plain_name(v)}
    except (OSError, ValueError, AttributeError):
        return set()


def _plain_name(name: str) -> bool:
    return bool(name) and os.path.basename(name) == name and name not in (".", "..")


# -- reading ------------------------------------------------------------------------------------


def torch_pickle_error(fn: str, path: str) -> ValueError:
    return ValueError(
        f"{fn}: {path!r} is a pickle (as PyTorch's torch.save and pytorch_model.bin "
        "files are), and pytreeclass never unpickles: unpickling a file can run any code "
        "it holds. Convert it once, where you trust the file, to .safetensors: `import "
        "torch; from "
        "safetensors.torch import save_file; save_file(torch.load(path, "
        "weights_only=True), 'model.safetensors')` (or model.save_pretrained(folder, "
        "safe_serialization=True) in transformers), then load that file."
    )


def _is_torch_pickle(path: str) -> bool:
    """A raw pickle (protocol 2+), or a zip archive holding one (torch.save's format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            return True
        if head == b"PK":
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith("data.pkl") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        pass
    return False


class Checkpoint:
    """The tensors of a checkpoint, known from headers and manifests alone.

    `parts` are `(file path, its index)`; `part_of[name]` says which part holds each
    tensor; `offered` / `key_impl` are merged over the parts. `names` are `keystr` key
    paths for `.npz` (what its manifest records) and flat names otherwise.
    """

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path
        self.parts: list[tuple[str, Any]] = []
        self.part_of: dict[str, int] = {}
        self.offered: dict[str, Offered] = {}
        self.key_impl: dict[str, str] = {}
        self.manifest: dict[str, Any] = {}
        self.metadata: dict[str, str] = {}

    @property
    def structure(self) -> Any:
        return self.manifest.get("structure")

    def add(self, file: str, index: Any, names: Sequence[str] | None = None) -> None:
        part = len(self.parts)
        self.parts.append((file, index))
        for name in index.offered if names is None else names:
            self.part_of[name] = part
        self.offered.update(index.offered)
        self.key_impl.update(index.key_impl)

    def read(self, names: Sequence[str]) -> list[tuple[Any, bool]]:
        """The stored arrays of `names` (and whether each owns its memory), read part by
        part with `read_slots` (checksums included)."""
        out: list[Any] = [None] * len(names)
        by_part: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            by_part.setdefault(self.part_of[name], []).append(i)
        for part, members in by_part.items():
            file, index = self.parts[part]
            with open(file, "rb") as f:
                got = read_slots(f, file, index.spans, [index.slots[names[i]] for i in members])
            for i, value in zip(members, got):
                out[i] = value
        return out


def open_checkpoint(fn: str, path: str, fmt: str) -> Checkpoint:
    """Read the headers of the checkpoint at `path` (`fmt`: "npz", "safetensors" or
    "sharded"). A PyTorch pickle is refused, not unpickled: a file that does not parse
    and starts like a pickle or holds one in a zip (or is named `.bin`, `.pt`, ...)."""
    if fmt == "sharded":
        return _open_sharded(fn, path)
    cp = Checkpoint(fmt, path)
    try:
        with open(path, "rb") as f:
            index = SafetensorsIndex(f, path) if fmt == "safetensors" else NpzIndex(f, path)
    except ValueError:
        if path.lower().endswith(_TORCH_SUFFIXES) or _is_torch_pickle(path):
            raise torch_pickle_error(fn, path) from None
        raise
    cp.add(path, index)
    cp.manifest = index.manifest
    cp.metadata = getattr(index, "metadata", {})
    return cp


def _open_sharded(fn: str, path: str) -> Checkpoint:
    try:
        with open(path, "rb") as f:
            index = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise corrupt(path, f"it is not valid JSON ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not (
        isinstance(weight_map, dict)
        and all(isinstance(v, str) and _plain_name(v) for v in weight_map.values())
    ):
        raise corrupt(path, "it has no weight_map of tensor names to shard file names")
    meta = index.get("metadata")
    own = meta.get(META_KEY, {}) if isinstance(meta, dict) else {}
    if not isinstance(own, dict):
        raise corrupt(path, "its pytreeclass manifest is not an object")
    if own and own.get("format") != FORMAT:
        raise corrupt(path, "its manifest is not a pytreeclass manifest")
    if own and own.get("version") != VERSION:
        raise ValueError(
            f"{fn}: {path!r} has format version {own.get('version')!r}; this pytreeclass "
            f"reads version {VERSION}. Upgrade pytreeclass to load it."
        )
    cp = Checkpoint("sharded", path)
    cp.manifest = own
    folder = os.path.dirname(path)
    members: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        members.setdefault(file, []).append(name)
    for file, names in members.items():
        shard = os.path.join(folder, file)
        if not os.path.exists(shard):
            raise FileNotFoundError(
                f"{fn}: the shard {file!r} that {path!r} lists is missing; copy every "
                "shard the index lists next to it."
            )
        try:
            with open(shard, "rb") as f:
                sub = SafetensorsIndex(f, shard)
        except ValueError:  # pytorch_model.bin.index.json lists pickles
            if shard.lower().endswith(_TORCH_SUFFIXES) or _is_torch_pickle(shard):
                raise torch_pickle_error(fn, shard) from None
            raise
        listed = set(names)
        if listed != set(sub.offered):
            odd = sorted(listed ^ set(sub.offered))[0]
            where = "lacks" if odd in listed else "holds, unlisted in the index,"
            raise corrupt(path, f"its shard {file!r} {where} the tensor {odd!r}")
        if own.get("save_id") and sub.manifest.get("save_id", own["save_id"]) != own["save_id"]:
            raise ValueError(
                f"{fn}: the shard {file!r} was written by another save than the index "
                f"{path!r} (a save was interrupted, or files were mixed); save the "
                "checkpoint again, or restore all of its files from one backup."
            )
        if not cp.metadata:
            cp.metadata = sub.metadata
        cp.add(shard, sub, names)
    return cp
