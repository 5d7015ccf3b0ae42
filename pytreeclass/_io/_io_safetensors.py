"""The `.safetensors` format of `tree_save` / `tree_load`, read and written without the
`safetensors` package.

The format (https://github.com/huggingface/safetensors): 8 bytes, the little-endian
length N of a JSON header; N bytes of header, `{name: {"dtype": "F32", "shape": [...],
"data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}`; then the data section,
every tensor's bytes back to back, covered without gaps or overlaps. Tensor names are the
leaves' flat names (`layers.0.w`), so `safetensors.numpy.load_file`, PyTorch and Hugging
Face tools read the file.

pytreeclass adds its manifest under `__metadata__["pytreeclass"]`, a JSON string:
`{"format": "pytreeclass.tree", "version": 2, "leaves": {name: {...}}}`, listing only the
leaves the standard dtypes cannot describe: Python numbers (`{"python": "float"}`), PRNG
keys (stored as their key data: `{"dtype": "key<fry>", "shape": [...], "key_impl":
"fry"}`) and dtypes with no safetensors code (int4, float8 variants, complex128, ...:
their raw bits as unsigned integers, `{"dtype": "int4", "shape": [...]}`). A file without
it (written by another tool) loads by name, with the dtypes its header gives. The
manifest also holds `"structure"` (the tree's recorded structure, see `_io_structure`)
and, in shards, `"save_id"` (see `_io_shards`); `__metadata__` holds the user's
entries beside it, `{"format": "pt"}` by default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._io_file import Slot, Span, check_tiling, corrupt, make_slot, write_joined
from ._io_leaves import FORMAT, VERSION, HostLeaf, Offered, dtype_facts, itemsize_of

__all__ = ["META_KEY", "SafetensorsIndex", "write_safetensors"]

META_KEY = "pytreeclass"
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_MAX_HEADER = 100_000_000  # what the reference implementation accepts

_CODES: dict[str, Any] = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "F16": np.float16,
    "BF16": jnp.bfloat16,
    "U32": np.uint32,
    "I32": np.int32,
    "F32": np.float32,
    "U64": np.uint64,
    "I64": np.int64,
    "F64": np.float64,
    "C64": np.complex64,
    "F8_E5M2": jnp.float8_e5m2,
    "F8_E4M3": jnp.float8_e4m3fn,
}
_DTYPES = {code: np.dtype(t) for code, t in _CODES.items()}
_CODE_OF = {dt: code for code, dt in _DTYPES.items()}


# -- writing ------------------------------------------------------------------------------------


def _stored(leaf: HostLeaf) -> tuple[str, np.ndarray, dict[str, Any] | None]:
    """(dtype code, array to store, manifest entry or None) for one leaf."""
    data = leaf.data
    code = _CODE_OF.get(data.dtype)
    extra: dict[str, Any] | None = None
    if leaf.key_impl is not None:
        extra = {"dtype": leaf.dtype, "shape": list(leaf.shape), "key_impl": leaf.key_impl}
    elif leaf.python is not None:
        extra = {"python": leaf.python}
    if code is None:
        size = data.dtype.itemsize
        if size in (1, 2, 4, 8):
            data = data.view(f"u{size}")
        else:  # e.g. complex128: bytes, with one more axis
            data = data.reshape(-1).view(np.uint8).reshape((*data.shape, size))
        code = _CODE_OF[data.dtype]
        extra = {"dtype": leaf.dtype, "shape": list(leaf.shape), **(extra or {})}
    return code, data, extra


def write_safetensors(
    f: Any,
    names: Sequence[str],
    leaves: Sequence[HostLeaf],
    metadata: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a `.safetensors` file: `metadata` goes into `__metadata__` beside our
    manifest, `extra` into the manifest (the recorded structure, a save id)."""
    stored = [_stored(leaf) for leaf in leaves]
    # Widest items first, so every tensor starts aligned to its item size (as the
    # reference writer does); tree order otherwise.
    order = sorted(range(len(leaves)), key=lambda i: -stored[i][1].dtype.itemsize)
    # The header is written out by hand: json.dumps of one dict per tensor costs about
    # twice as much, and this is most of the time of saving many small leaves.
    parts = []
    manifest: dict[str, Any] = {}
    offset = 0
    for i in order:
        code, data, entry = stored[i]
        end = offset + data.nbytes
        shape = ",".join(map(str, data.shape))
        parts.append(
            f'{_quote(names[i])}:{{"dtype":"{code}","shape":[{shape}],'
            f'"data_offsets":[{offset},{end}]}}'
        )
        offset = end
        if entry is not None:
            manifest[names[i]] = entry
    meta = {"format": FORMAT, "version": VERSION, "leaves": manifest, **(extra or {})}
    encoded = json.dumps(meta, separators=(",", ":"))
    parts.append('"__metadata__":' + json.dumps({**(metadata or {}), META_KEY: encoded}))
    raw = ("{" + ",".join(parts) + "}").encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    write_joined(f, [stored[i][1] for i in order])


# -- reading ------------------------------------------------------------------------------------


class SafetensorsIndex:
    """What a `.safetensors` file holds, read from its header alone.

    `offered[name]` is what the file has for each tensor (before any data is read);
    `slots` / `spans` say where its bytes lie, `key_impl[name]` which PRNG keys it holds;
    `manifest` is pytreeclass's manifest (empty for files of other tools), `metadata`
    the rest of the header's `__metadata__`.
    """

    def __init__(self, f: Any, path: str) -> None:
        self.path = path
        header, data_start, data_size = self._header(f)
        meta = header.pop("__metadata__", None)
        self.manifest: dict[str, Any] = {}
        special = self._manifest(meta)
        self.metadata: dict[str, str] = {k: v for k, v in (meta or {}).items() if k != META_KEY}
        self.spans = [Span(data_start, data_size, "the data section")]
        self.slots: dict[str, Slot] = {}
        self.offered: dict[str, Offered] = {}
        self.key_impl: dict[str, str] = {}
        for name, t in header.items():
            dtype, shape, begin, end = self._tensor(name, t)
            self.slots[name] = make_slot(0, begin, dtype, shape)
            if end - begin != math.prod(shape) * dtype.itemsize:
                raise corrupt(path, f"the tensor {name!r} has {end - begin} bytes for {shape}")
            extra = special.get(name, {})
            offered = Offered(
                extra.get("dtype", dtype_facts(dtype).name),
                tuple(extra.get("shape", shape)),
                extra.get("python"),
            )
            if extra.get("key_impl") is not None:
                self.key_impl[name] = extra["key_impl"]
            elif "dtype" in extra:
                own = itemsize_of(offered.dtype)
                if own is None or own * math.prod(offered.shape) != end - begin:
                    raise corrupt(path, f"the manifest entry for {name!r} is inconsistent")
            self.offered[name] = offered
        unknown = set(special) - set(header)
        if unknown:
            raise corrupt(path, f"its manifest lists {sorted(unknown)[0]!r}, which it lacks")
        check_tiling(path, self.spans, list(self.slots.values()))

    def _header(self, f: Any) -> tuple[dict[str, Any], int, int]:
        path = self.path
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(path, "it is shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > _MAX_HEADER:
            raise corrupt(path, f"its header length ({n} bytes) exceeds the file")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise corrupt(path, f"its header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise corrupt(path, "its header is not a JSON object")
        return header, 8 + n, size - 8 - n

    def _manifest(self, meta: Any) -> dict[str, dict[str, Any]]:
        path = self.path
        if meta is None:
            return {}
        if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            raise corrupt(path, "its __metadata__ is not a mapping of strings")
        if META_KEY not in meta:
            return {}
        try:
            m = json.loads(meta[META_KEY])
        except ValueError as e:
            raise corrupt(path, f"its pytreeclass manifest is not valid JSON ({e})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise corrupt(path, "its manifest is not a pytreeclass manifest")
        if m.get("version") != VERSION:
            raise ValueError(
                f"tree_load: {path!r} has format version {m.get('version')!r}; this "
                f"pytreeclass reads version {VERSION}. Upgrade pytreeclass to load it."
            )
        leaves = m.get("leaves")
        if not (isinstance(leaves, dict) and all(map(_valid_extra, leaves.values()))):
            raise corrupt(path, "its manifest has no valid leaf list")
        self.manifest = m
        return leaves

    def _tensor(self, name: str, t: Any) -> tuple[np.dtype, tuple[int, ...], int, int]:
        if not isinstance(t, dict):
            raise corrupt(self.path, f"the header entry for {name!r} is not an object")
        code, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if code not in _DTYPES:
            raise corrupt(
                self.path,
                f"the tensor {name!r} has dtype {code!r}, which pytreeclass does not read "
                f"(it reads {', '.join(_DTYPES)})",
            )
        if not _is_shape(shape):
            raise corrupt(self.path, f"the tensor {name!r} has no valid shape")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise corrupt(self.path, f"the tensor {name!r} has no valid data_offsets")
        return _DTYPES[code], tuple(shape or ()), offsets[0], offsets[1]


def _is_shape(s: Any) -> bool:
    return isinstance(s, list) and all(type(n) is int and n >= 0 for n in s)


def _valid_extra(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and set(e) <= {"python", "dtype", "shape", "key_impl"}
        and e.get("python") in (None, "bool", "int", "float", "complex")
        and isinstance(e.get("dtype", ""), str)
        and _is_shape(e.get("shape", []))
        and isinstance(e.get("key_impl", ""), str)
        and ("key_impl" not in e or ("dtype" in e and "shape" in e))
        and (("dtype" in e) == ("shape" in e))
    )
