"""The `.npz` format of `tree_save` / `tree_load` (pytreeclass's own).

Version 2 (written since pytreeclass 0.1): an uncompressed zip archive that `numpy.load`
reads (`allow_pickle=False`), with

* `__manifest__.json`: `{"format": "pytreeclass.tree", "version": 2, "buffers": [...],
  "leaves": [[path, dtype, shape, buffer, extra?], ...]}`, one entry per leaf in tree
  order: its key path (`jax.tree_util.keystr`), dtype and shape, which buffer holds it,
  and, only where needed, how to give it back (`{"python": "float"}`, or for PRNG keys
  `{"key_impl": ..., "stored_shape": ...}`); newer files also hold `"names"`, the
  leaves' flat names in the same order (for `tree_read`), and `"structure"`, the tree's
  recorded structure (see `_io_structure`), both ignored by older readers;
* one `.npy` entry per stored dtype (`float32.npy`, `uint16.npy`, ...): a 1-D array
  holding the leaves of that dtype back to back, in manifest order. numpy has no
  bfloat16/float8/int4 (ml_dtypes) or PRNG key dtypes, so those are stored as the raw
  bits (unsigned integers of the same width) or the key data.

A few large entries instead of one per leaf: a zip entry, a `.npy` header and a manifest
object per leaf made saving and loading many small leaves slow. Version 1 files (one
`.npy` entry per leaf, named by its key path) still load.

Safety: the manifest is JSON; each `.npy` header is parsed by NumPy's own header reader
(a Python literal, never unpickled) and an object dtype is refused before any data is
read; every entry's CRC-32 is checked.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._io_file import Slot, Span, check_tiling, corrupt, make_slot, write_joined
from ._io_leaves import FORMAT, VERSION, HostLeaf, Offered, dtype_facts, itemsize_of, keystr, show

__all__ = ["NpzIndex", "write_npz"]

MANIFEST = "__manifest__.json"
# What zipfile raises on damaged archives (a flipped flag bit can read as "encrypted" or
# "unsupported compression"), on top of BadZipFile.
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError)
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader


class Refused(ValueError):
    """A readable entry that tree_load will not decode (it would need unpickling)."""


# -- writing ------------------------------------------------------------------------------------


def _stored(leaf: HostLeaf) -> np.ndarray:
    data = leaf.data
    if not dtype_facts(data.dtype).native:
        # numpy's .npy header cannot name ml_dtypes (bfloat16, float8_*, int4, ...): it
        # would write them as opaque void; store the bits as unsigned integers instead.
        data = data.view(f"u{data.dtype.itemsize}")
    return data


def write_npz(f: Any, leaves: Sequence[HostLeaf], extra: dict[str, Any] | None = None) -> None:
    """Write an `.npz` file; `extra` goes into the manifest (the names, the structure)."""
    buffers: dict[str, list[np.ndarray]] = {}
    index: dict[str, int] = {}
    rows: list[list[Any]] = []
    for leaf in leaves:
        data = _stored(leaf)
        name = dtype_facts(data.dtype).name
        if name not in index:
            index[name] = len(index)
            buffers[name] = []
        buffers[name].append(data)
        row: list[Any] = [keystr(leaf.key_path), leaf.dtype, list(leaf.shape), index[name]]
        if leaf.python:
            row.append({"python": leaf.python})
        elif leaf.key_impl:
            row.append({"key_impl": leaf.key_impl, "stored_shape": list(data.shape)})
        rows.append(row)
    manifest = {"format": FORMAT, "version": VERSION, "buffers": list(index), "leaves": rows}
    manifest.update(extra or {})
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, separators=(",", ":")))
        for name, arrays in buffers.items():
            count = sum(a.size for a in arrays)
            with zf.open(name + ".npy", "w", force_zip64=True) as out:
                header = {"descr": np.dtype(name).str, "fortran_order": False, "shape": (count,)}
                np.lib.format.write_array_header_1_0(out, header)
                write_joined(out, arrays)


# -- reading ------------------------------------------------------------------------------------


class NpzIndex:
    """What an `.npz` file written by `tree_save` holds, read without touching leaf data.

    `offered[path]` is what the file has for each leaf (before any data is read);
    `slots` / `spans` say where its bytes lie, `key_impl[path]` which PRNG keys it holds.
    """

    def __init__(self, f: Any, path: str) -> None:
        self.path = path
        try:
            zf = zipfile.ZipFile(f, "r")
        except (*_ZIP_ERRORS, ValueError) as e:
            raise corrupt(path, f"it is not a complete zip archive ({e})") from None
        self.zf, self.f = zf, f
        header = self._manifest()
        self.manifest: dict[str, Any] = header
        self.offered: dict[str, Offered] = {}
        self.key_impl: dict[str, str] = {}
        self.spans: list[Span] = []
        self.slots: dict[str, Slot] = {}
        if header["version"] == 1:
            self._index_v1(header)
        else:
            self._index_v2(header)
        check_tiling(path, self.spans, list(self.slots.values()))

    def _manifest(self) -> dict[str, Any]:
        path = self.path
        try:
            header = json.loads(self.zf.read(MANIFEST))
        except KeyError:
            raise corrupt(path, f"it has no {MANIFEST}") from None
        except _ZIP_ERRORS as e:
            raise corrupt(path, f"its manifest is damaged ({e})") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise corrupt(path, f"its manifest is not valid JSON ({e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise corrupt(path, "its manifest is not a pytreeclass manifest")
        if header.get("version") not in (1, VERSION):
            raise ValueError(
                f"tree_load: {path!r} has format version {header.get('version')!r}; this "
                f"pytreeclass reads versions 1 and {VERSION}. Upgrade pytreeclass to load it."
            )
        leaves = header.get("leaves")
        if not isinstance(leaves, list):
            raise corrupt(path, "its manifest has no valid leaf list")
        return header

    def _entry(self, name: str, where: str) -> tuple[Span, np.dtype, tuple[int, ...], bool]:
        """The span of a `.npy` entry's data, and its header's dtype, shape, order."""
        path, f = self.path, self.f
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise corrupt(path, f"the data for {where} is missing") from None
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise corrupt(path, f"the data for {where} is compressed or encrypted")
        try:
            f.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if fields[0] != b"PK\x03\x04":
                raise ValueError("bad local header")
            start = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]
            f.seek(start)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except Exception as e:  # numpy's header parser raises many kinds on garbage
            raise corrupt(path, f"the data for {where} is damaged ({e!r})") from None
        if dtype.hasobject:
            # Checked from the header alone: the pickled payload is never touched.
            raise Refused(
                f"tree_load: the entry for {where} in {path!r} holds Python objects "
                "(a pickle); tree_load never unpickles. Only numeric arrays can be loaded."
            )
        data = f.tell()
        head = data - start
        if head > info.file_size:
            raise corrupt(path, f"the data for {where} is damaged (its header is too long)")
        size = math.prod(shape) * dtype.itemsize
        if size != info.file_size - head:
            raise corrupt(
                path,
                f"the data for {where} is damaged (its header says {size} bytes, it holds "
                f"{info.file_size - head})",
            )
        f.seek(start)
        crc = zlib.crc32(f.read(head))
        span = Span(data, size, name, (crc, info.CRC))
        return span, dtype, tuple(shape), bool(fortran)

    def _index_v1(self, header: dict[str, Any]) -> None:
        for e in header["leaves"]:
            if not _valid_v1(e):
                raise corrupt(self.path, "its manifest has no valid leaf list")
            p = e["path"]
            span, dtype, shape, fortran = self._entry(p + ".npy", show(p))
            want = (
                tuple(e.get("stored_shape", e["shape"])),
                e.get("stored_dtype", e["dtype"]),
            )
            if (shape, dtype.name) != want:
                raise corrupt(
                    self.path,
                    f"the data for {show(p)} is {_desc(shape, dtype.name)} but the manifest "
                    f"says {_desc(*want)}",
                )
            self._add(p, e["dtype"], e["shape"], e.get("python"), e.get("key_impl"))
            self.slots[p] = make_slot(len(self.spans), 0, dtype, shape, fortran)
            self.spans.append(span)

    def _index_v2(self, header: dict[str, Any]) -> None:
        path = self.path
        names = header.get("buffers")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise corrupt(path, "its manifest has no valid buffer list")
        dtypes, counts = [], []
        for n in names:
            span, dtype, shape, _ = self._entry(n + ".npy", n + ".npy")
            if dtype.name != n or len(shape) != 1:
                raise corrupt(path, f"{n}.npy holds {_desc(shape, dtype.name)}")
            self.spans.append(span)
            dtypes.append(dtype)
            counts.append(0)
        for row in header["leaves"]:
            if not _valid_v2(row, len(names)):
                raise corrupt(path, "its manifest has no valid leaf list")
            p, dtype_name, shape, b = row[:4]
            extra = row[4] if len(row) > 4 else {}
            stored = tuple(extra.get("stored_shape", shape))
            key_impl = extra.get("key_impl")
            if key_impl is None and itemsize_of(dtype_name) != dtypes[b].itemsize:
                raise corrupt(path, f"the manifest entry for {show(p)} is inconsistent")
            if p in self.slots:
                raise corrupt(path, f"its manifest lists {show(p)} twice")
            self.slots[p] = make_slot(b, counts[b] * dtypes[b].itemsize, dtypes[b], stored)
            counts[b] += math.prod(stored)
            self._add(p, dtype_name, shape, extra.get("python"), key_impl)

    def _add(self, p: str, dtype: str, shape: list[int], python: Any, key_impl: Any) -> None:
        if p in self.offered:
            raise corrupt(self.path, f"its manifest lists {show(p)} twice")
        self.offered[p] = Offered(dtype, tuple(shape), python)
        if key_impl is not None:
            self.key_impl[p] = key_impl


def _desc(shape: Sequence[int], dtype: str) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]"


def _is_shape(s: Any) -> bool:
    return isinstance(s, list) and all(type(n) is int and n >= 0 for n in s)


_PYTHON = (None, "bool", "int", "float", "complex")


def _valid_v1(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("path"), str)
        and isinstance(e.get("dtype"), str)
        and _is_shape(e.get("shape"))
        and _is_shape(e.get("stored_shape", []))
        and isinstance(e.get("stored_dtype", ""), str)
        and e.get("python") in _PYTHON
        and isinstance(e.get("key_impl", ""), str)
    )


def _valid_v2(row: Any, buffers: int) -> bool:
    if not (isinstance(row, list) and len(row) in (4, 5)):
        return False
    p, dtype, shape, b = row[:4]
    extra = row[4] if len(row) == 5 else {}
    return (
        isinstance(p, str)
        and isinstance(dtype, str)
        and _is_shape(shape)
        and type(b) is int
        and 0 <= b < buffers
        and isinstance(extra, dict)
        and set(extra) <= {"python", "key_impl", "stored_shape"}
        and extra.get("python") in _PYTHON
        and isinstance(extra.get("key_impl", ""), str)
        and _is_shape(extra.get("stored_shape", []))
        and (extra.get("python") is None or shape == [])
        and (("key_impl" in extra) == ("stored_shape" in extra))
    )
