"""`tree_save` / `tree_load`: a tree's leaves in one `.npz`-style file, written atomically.

File layout: a zip archive (uncompressed) holding one `.npy` entry per leaf, named by the
leaf's key path (`jax.tree_util.keystr`, e.g. `.layers[0].w.npy`), so `numpy.load` can
read it too, plus `__manifest__.json`: the format version and, per leaf, its path, shape,
dtype and how it is stored. numpy has no bfloat16/float8/int4 (ml_dtypes) or PRNG key
dtypes, so those are stored as raw unsigned-integer views (or key data) and the manifest
says how to view them back.

Safety: arrays are always read with `allow_pickle=False`; an entry holding Python objects
is refused before any of it is decoded. Writes go to a temporary file in the target's
directory, are fsynced, then renamed over the target (`os.replace`), so a crash mid-write
leaves the previous file intact (at worst a stray `.<name>.*.tmp` file remains).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import zipfile
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ._tree_util import has_shape_dtype

T = TypeVar("T")
__all__ = ["tree_load", "tree_save"]

_FORMAT = "pytreeclass.tree"
_VERSION = 1
_MANIFEST = "__manifest__.json"
# What zipfile raises on damaged archives (a flipped flag bit can read as "encrypted" or
# "unsupported compression"), on top of BadZipFile.
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError)


class _Refused(ValueError):
    """A readable entry that tree_load will not decode (it would need unpickling)."""


def _path_str(path: Any) -> str:
    return jax.tree_util.keystr(path)


def _show(path: str) -> str:
    return path or "<root>"


def _shape_dtype(shape: Any, dtype: str) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]"


def _encode(path: str, leaf: Any) -> tuple[dict[str, Any], np.ndarray]:
    """(manifest entry, numpy array to store) for one leaf."""
    if type(leaf) in (bool, int, float, complex):
        if type(leaf) is int and not -(2**63) <= leaf < 2**64:
            raise OverflowError(
                f"tree_save: the Python int at {_show(path)} ({leaf}) does not fit in 64 bits "
                "(ints in [-2**63, 2**64) can be saved). Keep it in a static field, or "
                "store it as a string or as several smaller ints."
            )
        # np.asarray picks int64 below 2**63 and uint64 from there: both load back exactly.
        arr = np.asarray(leaf)
        return {"shape": [], "dtype": arr.dtype.name, "python": type(leaf).__name__}, arr
    if not has_shape_dtype(leaf):
        raise TypeError(
            f"tree_save: the leaf at {_show(path)} is a {type(leaf).__name__}; only arrays and "
            "Python numbers can be saved. Make it a static field, or save "
            "ptc.tree_filter(tree, jax.Array) and load it with a template filtered the same way."
        )
    if isinstance(leaf, (jax.ShapeDtypeStruct, Tracer)):
        raise TypeError(
            f"tree_save: the leaf at {_show(path)} is abstract ({type(leaf).__name__}); save "
            "concrete arrays, outside jax.jit."
        )
    entry: dict[str, Any] = {"shape": list(leaf.shape)}
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        arr = np.asarray(jax.random.key_data(leaf))
        entry["dtype"] = str(leaf.dtype)  # e.g. "key<fry>"
        entry["key_impl"] = str(jax.random.key_impl(leaf))
        entry["stored_shape"] = list(arr.shape)
        entry["stored_dtype"] = arr.dtype.name
        return entry, arr
    arr = np.asarray(leaf)
    entry["dtype"] = arr.dtype.name
    if arr.dtype.type.__module__ != "numpy":
        # numpy's .npy header cannot name ml_dtypes (bfloat16, float8_*, int4, ...): it
        # would write them as opaque void; store the bits as unsigned integers instead.
        arr = arr.view(f"u{arr.dtype.itemsize}")
        entry["stored_dtype"] = arr.dtype.name
    if arr.dtype.hasobject:
        raise TypeError(
            f"tree_save: the leaf at {_show(path)} is an object array; only numeric arrays "
            "can be saved (loading never unpickles)."
        )
    return entry, arr


def tree_save(path: str | os.PathLike[str], tree: Any) -> None:
    """Write the leaves of `tree` to the file `path`, atomically (no extension is added).

    Arrays keep their dtype (bfloat16, float8 and other ml_dtypes, PRNG keys included);
    Python numbers (bool, int, float, complex) are saved as 0-d arrays and come back as
    Python numbers when the template holds one. `None` holes hold no leaves, so
    partitioned trees save and load as they are. Static fields are not saved: the
    template passed to `tree_load` supplies them. A crash mid-write leaves the old file.

    Args:
        path: the file to write (an uncompressed `.npz` archive).
        tree: any pytree whose leaves are arrays or Python numbers.

    Raises:
        TypeError: a leaf is neither an array nor a Python number, is abstract (a
            tracer or `jax.ShapeDtypeStruct`), or is an object array.
        ValueError: two leaves have the same key path.
        OSError: the file cannot be written.

    Examples:
        >>> import os, tempfile
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
        >>> ptc.tree_save(path, {"w": jnp.ones(3), "lr": 0.1})
        >>> ptc.tree_load(path, like={"w": jnp.zeros(3), "lr": 0.0})
        {'lr': 0.1, 'w': Array([1., 1., 1.], dtype=float32)}
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    manifest: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    seen: set[str] = set()
    for key_path, leaf in flat:
        p = _path_str(key_path)
        if p in seen:
            raise ValueError(
                f"tree_save: two leaves have the key path {_show(p)}; rename a dict key so "
                "every leaf has its own path."
            )
        seen.add(p)
        entry, arr = _encode(p, leaf)
        manifest.append({"path": p, **entry})
        arrays.append(arr)
    header = {"format": _FORMAT, "version": _VERSION, "leaves": manifest}

    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = _create_temp(directory, os.path.basename(target))
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                zf.writestr(_MANIFEST, json.dumps(header))
                for entry, arr in zip(manifest, arrays):
                    with zf.open(entry["path"] + ".npy", "w", force_zip64=True) as out:
                        np.lib.format.write_array(out, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    # Not tempfile.mkstemp: it creates files with mode 0600, and the checkpoint would keep
    # that mode after the rename. O_CREAT | O_EXCL with 0666 honours the umask like open().
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_dir(directory: str) -> None:
    # Make the rename itself durable; not possible on every platform (e.g. Windows).
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _corrupt(path: str, why: str) -> ValueError:
    return ValueError(
        f"tree_load: cannot read {path!r}: {why}. The file is truncated, corrupt or not "
        "written by ptc.tree_save; restore it from a backup or save it again."
    )


def _read_manifest(zf: zipfile.ZipFile, path: str) -> list[dict[str, Any]]:
    try:
        header = json.loads(zf.read(_MANIFEST))
    except KeyError:
        raise _corrupt(path, f"it has no {_MANIFEST}") from None
    except _ZIP_ERRORS as e:
        raise _corrupt(path, f"its manifest is damaged ({e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"its manifest is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise _corrupt(path, "its manifest is not a pytreeclass manifest")
    if header.get("version") != _VERSION:
        raise ValueError(
            f"tree_load: {path!r} has format version {header.get('version')!r}; this "
            f"pytreeclass reads version {_VERSION}. Upgrade pytreeclass to load it."
        )
    leaves = header.get("leaves")
    if not isinstance(leaves, list) or not all(map(_valid_entry, leaves)):
        raise _corrupt(path, "its manifest has no valid leaf list")
    return leaves


def _valid_entry(e: Any) -> bool:
    shape = e.get("shape") if isinstance(e, dict) else None
    return (
        isinstance(e, dict)
        and isinstance(e.get("path"), str)
        and isinstance(e.get("dtype"), str)
        and isinstance(shape, list)
        and all(type(n) is int and n >= 0 for n in shape)
    )


def _read_array(zf: zipfile.ZipFile, path: str, entry: dict[str, Any]) -> np.ndarray:
    name = entry["path"] + ".npy"
    where = _show(entry["path"])
    try:
        with zf.open(name) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                # Checked from the header alone: the pickled payload is never touched.
                raise _Refused(
                    f"tree_load: the entry for {where} in {path!r} holds Python objects "
                    "(a pickle); tree_load never unpickles. Only numeric arrays can be loaded."
                )
        with zf.open(name) as f:
            arr = np.lib.format.read_array(f, allow_pickle=False)
    except KeyError:
        raise _corrupt(path, f"the data for {where} is missing") from None
    except _ZIP_ERRORS as e:
        raise _corrupt(path, f"the data for {where} is damaged ({e})") from None
    except _Refused:
        raise
    except ValueError as e:
        raise _corrupt(path, f"the data for {where} is damaged ({e})") from None
    expect = _shape_dtype(
        entry.get("stored_shape", entry.get("shape", ())),
        entry.get("stored_dtype", entry.get("dtype", "?")),
    )
    if _shape_dtype(arr.shape, arr.dtype.name) != expect:
        raise _corrupt(
            path,
            f"the data for {where} is {_shape_dtype(arr.shape, arr.dtype.name)} but the "
            f"manifest says {expect}",
        )
    return arr


def _decode(entry: dict[str, Any], arr: np.ndarray) -> Any:
    if "key_impl" in entry:
        return jax.random.wrap_key_data(jnp.asarray(arr), impl=entry["key_impl"])
    if "stored_dtype" in entry:
        return arr.view(jnp.dtype(entry["dtype"]))
    return arr


def _template_sig(leaf: Any) -> tuple[tuple[int, ...], str] | None:
    """(shape, dtype name) of a template leaf; None for a Python number."""
    if type(leaf) in (bool, int, float, complex):
        return None
    if not has_shape_dtype(leaf):
        raise TypeError(
            f"tree_load: the template holds a {type(leaf).__name__} leaf; templates hold "
            "arrays, jax.ShapeDtypeStruct or Python numbers."
        )
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return tuple(leaf.shape), str(leaf.dtype)
    return tuple(leaf.shape), np.dtype(leaf.dtype).name


def _mismatch(path: str, what: str, in_file: str, in_template: str) -> ValueError:
    return ValueError(
        f"tree_load: {what} mismatch at {_show(path)}: the file has {in_file}, the template "
        f"{in_template}. Load with a template of the saved model (same sizes and dtypes), or "
        "convert after loading."
    )


def _like(template: Any, value: Any) -> Any:
    """`value` (numpy) as the kind of object the template leaf is."""
    if isinstance(template, np.ndarray):
        return value
    if isinstance(template, np.generic):
        return value[()]
    sharding = getattr(template, "sharding", None)
    if isinstance(template, (jax.Array, jax.ShapeDtypeStruct)):
        if isinstance(sharding, jax.sharding.Sharding):
            return jax.device_put(value, sharding)
        return jnp.asarray(value)
    return value


def _load_leaf(zf: zipfile.ZipFile, target: str, p: str, entry: dict[str, Any], leaf: Any) -> Any:
    sig = _template_sig(leaf)
    python = entry.get("python")
    in_file = (
        f"a Python {python}"
        if python
        else _shape_dtype(entry.get("shape", ()), str(entry.get("dtype")))
    )
    if sig is None or python:
        # Python numbers and 0-d arrays of the same kind (bool, int, float, complex) load
        # into each other: `jax.eval_shape` and `jax.jit` turn Python numbers into arrays.
        wanted = f"a Python {type(leaf).__name__}" if sig is None else _shape_dtype(*sig)
        if sig is not None and sig[0] != ():
            raise _mismatch(p, "shape", in_file, wanted)
        want = np.asarray(leaf).dtype.kind if sig is None else _kind_of(sig[1])
        if entry["shape"] != [] or not _same_kind(_kind_of(entry["dtype"]), want):
            raise _mismatch(p, "type", in_file, wanted)
        value = _read_array(zf, target, entry)
        if sig is None:
            return type(leaf)(value.item())
        cast = value.astype(sig[1])
        if want in ("i", "u") and cast.item() != value.item():  # a saved int the dtype cannot hold
            raise ValueError(
                f"tree_load: value mismatch at {_show(p)}: the file has the Python int "
                f"{value.item()}, which does not fit {sig[1]}, the template's dtype. Load it "
                "with a wider template dtype (int64) or a Python int."
            )
        return _like(leaf, cast)
    shape, dtype = sig
    if list(shape) != list(entry.get("shape", ())):
        raise _mismatch(p, "shape", in_file, _shape_dtype(shape, dtype))
    if dtype != entry.get("dtype"):
        raise _mismatch(p, "dtype", in_file, _shape_dtype(shape, dtype))
    return _like(leaf, _decode(entry, _read_array(zf, target, entry)))


def _same_kind(got: str | None, want: str | None) -> bool:
    """Whether dtype kinds `got` (the file's) and `want` (the template's) match; signed
    and unsigned ints count as one, since Python ints from 2**63 up are saved as uint64
    (the value is checked against the target dtype after the cast)."""
    return want is not None and (got == want or {got, want} == {"i", "u"})


def _kind_of(dtype: str) -> str | None:
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return None  # a PRNG key dtype


def tree_load(path: str | os.PathLike[str], *, like: T) -> T:
    """Read a file written by `tree_save` into the structure of the template `like`.

    Every key path, shape and dtype is checked against the template before any value is
    used. Entries holding pickled objects are refused, never unpickled.

    Args:
        path: a file written by `tree_save`.
        like: the template: a tree with the saved tree's structure whose leaves are
            arrays, `jax.ShapeDtypeStruct`s or Python numbers (their values are
            ignored), e.g. `jax.eval_shape(init, key)`.

    Returns:
        A tree with `like`'s structure and the file's values. A `jax.Array` or
        `ShapeDtypeStruct` template leaf gives a `jax.Array` (on its `sharding`, when
        it has one), a NumPy one a NumPy array, a Python number a Python number.

    Raises:
        ValueError: a key path, shape or dtype differs from the template (the message
            names the first difference, or lists the missing and unexpected paths), or
            the file is truncated, corrupt or of another format version.
        TypeError: a template leaf is not an array, `ShapeDtypeStruct` or number.
        FileNotFoundError: there is no file at `path`.

    Examples:
        >>> import os, tempfile
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
        >>> ptc.tree_save(path, [jnp.arange(3.0)])
        >>> ptc.tree_load(path, like=[jnp.zeros(3)])
        [Array([0., 1., 2.], dtype=float32)]
    """
    target = os.fspath(path)
    t_flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    t_paths = [_path_str(p) for p, _ in t_flat]
    try:
        zf = zipfile.ZipFile(target, "r")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (*_ZIP_ERRORS, ValueError) as e:
        raise _corrupt(target, f"it is not a complete zip archive ({e})") from None
    with zf:
        entries = _read_manifest(zf, target)
        by_path = {e["path"]: e for e in entries}
        missing = [p for p in t_paths if p not in by_path]
        known = set(t_paths)
        unexpected = [e["path"] for e in entries if e["path"] not in known]
        if missing or unexpected:
            listed = []
            if missing:
                listed.append("missing from the file: " + ", ".join(map(_show, missing)))
            if unexpected:
                listed.append(
                    "in the file but not the template: " + ", ".join(map(_show, unexpected))
                )
            raise ValueError(
                f"tree_load: {target!r} does not match the template's key paths ("
                + "; ".join(listed)
                + "). Was it saved from a different version of the model? Load it with a "
                "template of that version, or select the common leaves."
            )
        out = [_load_leaf(zf, target, p, by_path[p], leaf) for p, (_, leaf) in zip(t_paths, t_flat)]
    return treedef.unflatten(out)
