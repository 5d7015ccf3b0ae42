"""`tree_save` / `tree_load`: a tree's leaves in one file, written atomically.

Two formats, chosen by the file's suffix: `.safetensors` (the standard safetensors
format, tensors named by the leaves' flat names; see `_io_safetensors`) or anything else
`.npz` (pytreeclass's own, a NumPy `.npz` archive; see `_io_npz`). Both are written by
pytreeclass itself (no optional package needed), to a temporary file that is fsynced and
renamed over the target, and both are read without unpickling anything.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Literal, TypeVar, overload

import jax
import jax.numpy as jnp
import numpy as np

from ._io_file import atomic_write, corrupt, gc_paused
from ._io_leaves import (
    Offered,
    Value,
    check_leaf,
    check_names,
    decode,
    first_repeat,
    flat_name,
    flat_names,
    host_leaves,
    keystr,
    place,
    show,
)
from ._io_npz import write_npz
from ._io_safetensors import META_KEY, write_safetensors
from ._io_shards import Checkpoint, is_index_path, open_checkpoint, parse_size, write_sharded
from ._io_structure import rebuild, record_structure

__all__ = ["tree_load", "tree_save"]

T = TypeVar("T")
Format = Literal["npz", "safetensors"]
_FORMATS = ("npz", "safetensors")
_ONE_NAME = "a .safetensors file needs one name per leaf. Rename a dict key, or use .npz."
_DEFAULT_METADATA = {"format": "pt"}  # what transformers' from_pretrained requires
_HINT = "Load with a template of the saved model (same sizes and dtypes), or convert after loading."


def _format(fn: str, path: str, format: Any) -> Format:
    if format is None:
        return "safetensors" if path.lower().endswith(".safetensors") else "npz"
    if format not in _FORMATS:
        raise ValueError(f"{fn}: format must be 'npz' or 'safetensors', not {format!r}.")
    return format


def tree_save(
    path: str | os.PathLike[str],
    tree: Any,
    *,
    format: Literal["npz", "safetensors"] | None = None,
    metadata: dict[str, str] | None = None,
    max_shard_size: int | str | None = None,
) -> None:
    """Write the leaves of `tree` to the file `path`, atomically (no extension is added).

    The format follows the suffix: a path ending in `.safetensors` gets a standard
    safetensors file whose tensors are named by the leaves' flat names (`layers.0.w`,
    as `ptc.tree_to_dict` gives them), readable by `safetensors`, PyTorch and Hugging
    Face tools; any other path gets pytreeclass's `.npz` format (a NumPy `.npz`
    archive). Both are written by pytreeclass itself, no optional package needed.

    Arrays keep their dtype (bfloat16, float8 and other ml_dtypes, PRNG keys included);
    Python numbers (bool, int, float, complex) are saved as 0-d arrays and come back as
    Python numbers when the template holds one. `None` holes hold no leaves, so
    partitioned trees save and load as they are. The file also records the tree's
    structure (classes by module and name, static fields that are JSON values or named
    functions, classes and enums, containers), so `ptc.tree_load(path)` can rebuild it
    without a template. The file is written to a temporary file, fsynced and renamed
    over `path`: a crash mid-write leaves the old file.

    Args:
        path: the file to write.
        tree: any pytree whose leaves are arrays or Python numbers.
        format: `"npz"` or `"safetensors"` to choose the format whatever the suffix.
        metadata: `.safetensors` only: entries for the file's `__metadata__` (str to
            str), added to the default `{"format": "pt"}` (which Hugging Face
            `transformers` requires) or overriding it.
        max_shard_size: `.safetensors` only: write Hugging Face shards of at most this
            many bytes of tensor data each (an int, or a string such as `"5GB"` or
            `"500MB"`, decimal units; `"2GiB"` binary), `name-00001-of-0000N.safetensors`
            plus `name.safetensors.index.json` beside `path` (`name.safetensors` or the
            index path). A tensor larger than the limit gets a shard of its own.

    Raises:
        TypeError: a leaf is neither an array nor a Python number, is abstract (a
            tracer or `jax.ShapeDtypeStruct`), or is not numeric (e.g. an object array);
            `metadata` is not a dict of str to str; `max_shard_size` is not an int or str.
        ValueError: two leaves have the same key path (or, for `.safetensors`, the
            same flat name), a leaf's flat name is `__metadata__`, `format` is not one
            of the two, `metadata` or `max_shard_size` is given for `.npz`, or
            `max_shard_size` is not a positive size.
        OverflowError: a Python int does not fit in 64 bits.
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
    with gc_paused():
        target = os.fspath(path)
        sharded = max_shard_size is not None or is_index_path(target)
        if is_index_path(target) and format is None:
            fmt: Format = "safetensors"
        else:
            fmt = _format("tree_save", target, format)
        meta = _metadata(fmt, metadata, max_shard_size)
        if sharded and max_shard_size is None:
            raise ValueError(
                f"tree_save: {target!r} is a shard index; give max_shard_size= (such as "
                "'5GB') to write shards, or save to a .safetensors path."
            )
        size = parse_size("tree_save", max_shard_size) if sharded else 0
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        if fmt == "safetensors":
            names = flat_names("tree_save", "the tree", flat, ".", _ONE_NAME)
            if "__metadata__" in names:
                where = show(keystr(flat[names.index("__metadata__")][0]))
                raise ValueError(
                    f"tree_save: the leaf at {where} has the flat name '__metadata__', which "
                    "the safetensors format reserves for its metadata; rename that key."
                )
        else:
            names = [keystr(p) for p, _ in flat]
            twice = first_repeat(names)
            if twice is not None:
                raise ValueError(
                    f"tree_save: two leaves have the key path {show(twice)}; rename a dict "
                    "key so every leaf has its own path."
                )
        leaves = host_leaves("tree_save", flat)
        extra: dict[str, Any] = {"structure": record_structure(tree)}
        if sharded:
            write_sharded(target, names, leaves, size, meta, extra)
            return
        with atomic_write(target) as f:
            if fmt == "safetensors":
                write_safetensors(f, names, leaves, meta, extra)
            else:
                extra["names"] = [flat_name(p) for p, _ in flat]
                write_npz(f, leaves, extra)


def _metadata(fmt: str, metadata: Any, max_shard_size: Any) -> dict[str, str]:
    """The `__metadata__` entries of a `.safetensors` file: `{"format": "pt"}` and the
    user's, checked."""
    if fmt != "safetensors":
        if metadata is not None or max_shard_size is not None:
            which = "metadata" if metadata is not None else "max_shard_size"
            raise ValueError(
                f"tree_save: {which}= is for .safetensors files; save to a path ending in "
                ".safetensors (or pass format='safetensors')."
            )
        return {}
    if metadata is None:
        return dict(_DEFAULT_METADATA)
    if not isinstance(metadata, dict):
        raise TypeError(
            f"tree_save: metadata must be a dict of str to str, not a {type(metadata).__name__}."
        )
    for k, v in metadata.items():
        if not (isinstance(k, str) and isinstance(v, str)):
            raise TypeError(
                f"tree_save: metadata[{k!r}] = {v!r}: safetensors metadata maps str to str; "
                f"convert the value, e.g. str(v) or json.dumps(v)."
            )
        if k == META_KEY:
            raise ValueError(
                f"tree_save: metadata key {k!r} is reserved for pytreeclass's own manifest; "
                "use another key."
            )
    return {**_DEFAULT_METADATA, **metadata}


@overload
def tree_load(
    path: str | os.PathLike[str], *, like: T, format: Literal["npz", "safetensors"] | None = None
) -> T: ...
@overload
def tree_load(
    path: str | os.PathLike[str],
    *,
    like: None = None,
    format: Literal["npz", "safetensors"] | None = None,
) -> Any: ...
def tree_load(path: str | os.PathLike[str], *, like: Any = None, format: Any = None) -> Any:
    """Read a file written by `tree_save` into the structure of the template `like`,
    or, without `like`, into the structure the file records.

    The format follows the suffix, as in `tree_save`; a Hugging Face shard index
    (`model.safetensors.index.json`) loads its shards. A `.safetensors` file written by
    another tool loads too when its tensor names are the template's flat names
    (`layers.0.w`); to rename, transpose or stack tensors first, read it with
    `ptc.tree_read` and use `ptc.tree_from_dict`. Every key path (or name), shape and
    dtype is checked against the template before any data is read. Nothing is ever
    unpickled, and nothing is imported: without `like`, the classes the file names must
    already be defined (import the module that defines the model first), static
    functions, classes and enums must be found under their recorded names, and a field
    recorded as needing a template is an error naming it.

    Args:
        path: a file written by `tree_save` (or a standard `.safetensors` file, or a
            Hugging Face `*.safetensors.index.json`).
        like: the template: a tree with the saved tree's structure whose leaves are
            arrays, `jax.ShapeDtypeStruct`s or Python numbers (their values are
            ignored), e.g. `jax.eval_shape(init, key)`. Without it (`None`), the
            file's recorded structure is rebuilt: leaves come back as the kind they were saved as
            (`jax.Array` on the default device, NumPy array or scalar, Python number).
        format: `"npz"` or `"safetensors"` to choose the format whatever the suffix.

    Returns:
        A tree with `like`'s structure and the file's values. A `jax.Array` or
        `ShapeDtypeStruct` template leaf gives a `jax.Array` (on its `sharding`, when
        it has one), a NumPy one a NumPy array, a Python number a Python number (the
        file's value must then be a 0-d array of the same kind: bool, int, float,
        complex).

    Raises:
        ValueError: a key path, shape or dtype differs from the template (the message
            names the first difference, or lists the missing and unexpected paths); the
            file is truncated, corrupt, of another format version, or a PyTorch pickle;
            without `like`: the file records no structure, a class it names is not
            defined or has changed fields, or a field needs a template.
        TypeError: a template leaf is not an array, `ShapeDtypeStruct` or number.
        FileNotFoundError: there is no file at `path`.

    Examples:
        >>> import os, tempfile
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> path = os.path.join(tempfile.mkdtemp(), "params.safetensors")
        >>> ptc.tree_save(path, [jnp.arange(3.0)])
        >>> ptc.tree_load(path, like=[jnp.zeros(3)])
        [Array([0., 1., 2.], dtype=float32)]
        >>> ptc.tree_load(path)
        [Array([0., 1., 2.], dtype=float32)]
    """
    with gc_paused():
        target = os.fspath(path)
        if is_index_path(target) and format is None:
            fmt = "sharded"
        else:
            fmt = _format("tree_load", target, format)
        if like is None:
            return _load_recorded(target, open_checkpoint("tree_load", target, fmt))
        t_flat, treedef = jax.tree_util.tree_flatten_with_path(like)
        paths = [keystr(p) for p, _ in t_flat]
        t_leaves = [leaf for _, leaf in t_flat]
        if fmt != "npz":
            names = flat_names("tree_load", "the template", t_flat, ".", _ONE_NAME)
            what = "names"
        else:
            names, what = paths, "key paths"
        cp = open_checkpoint("tree_load", target, fmt)
        check_names(
            "tree_load",
            f"{target!r}",
            "the file",
            what,
            names,
            cp.offered,
            True,
            "Was it saved from a different version of the model? Load it with a template "
            "of that version, or select the common leaves.",
        )
        offered = [cp.offered[n] for n in names]
        casts = [
            check_leaf("tree_load", p, leaf, got, "the file", _HINT)
            for p, leaf, got in zip(paths, t_leaves, offered)
        ]
        return treedef.unflatten(_values(target, cp, paths, names, offered, t_leaves, casts))


def _values(
    target: str,
    cp: Checkpoint,
    paths: list[str],
    names: list[str],
    offered: list[Offered],
    t_leaves: list[Any],
    casts: list[bool],
) -> list[Any]:
    """The leaves read from the file, as the kind of leaf the template holds."""
    stored = cp.read(names)
    values = []
    keys = cp.key_impl
    for p, name, got, (arr, owned), cast in zip(paths, names, offered, stored, casts):
        try:
            value = decode(arr, got, keys.get(name) if keys else None)
        except (ValueError, TypeError) as e:
            raise corrupt(target, f"the data for {show(p)} cannot be decoded ({e})") from None
        values.append(Value(value, owned, cast))
    return place("tree_load", paths, t_leaves, values)


def _load_recorded(target: str, cp: Checkpoint) -> Any:
    """`tree_load` without a template: rebuild the recorded structure, then load into it."""
    if cp.structure is None:
        raise ValueError(
            f"tree_load: {target!r} records no tree structure (it was written by another "
            "tool or an older pytreeclass), so it needs a template: pass like= (e.g. "
            "jax.eval_shape(init, key)), or read its arrays by name with ptc.tree_read."
        )
    try:
        template = rebuild("tree_load", repr(target), cp.structure)
    except ValueError as e:
        if str(e).startswith("its recorded structure"):
            raise corrupt(target, str(e)) from None
        raise
    t_flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    if cp.kind == "npz":
        names = paths = [keystr(p) for p, _ in t_flat]
    else:
        names = [flat_name(p) for p, _ in t_flat]
        paths = names  # only messages use them: a flat name says where as well
    offered = cp.offered
    if len(names) != len(offered) or not all(n in offered for n in names):
        raise corrupt(target, "its recorded structure does not match its tensors")
    got = [offered[n] for n in names]
    made: dict[Any, Any] = {}  # template leaves are immutable: one per kind, shape, dtype
    t_leaves = []
    for (_, slot), g, n in zip(t_flat, got, names):
        key = (slot.kind, g, cp.key_impl.get(n) if cp.key_impl else None)
        leaf = made.get(key)
        if leaf is None:
            leaf = made[key] = _template_leaf(target, *key)
        t_leaves.append(leaf)
    return treedef.unflatten(_values(target, cp, paths, names, got, t_leaves, [False] * len(names)))


def _template_leaf(target: str, kind: str, got: Offered, key_impl: str | None) -> Any:
    """A template leaf of the kind recorded for a leaf, for what the file offers."""
    if kind == "python":
        if got.python is None:
            raise corrupt(target, "its recorded structure does not match its tensors")
        return _PYTHON[got.python]()
    dtype = _key_dtype(key_impl) if key_impl is not None else jnp.dtype(got.dtype)
    if kind == "jax":
        return jax.ShapeDtypeStruct(got.shape, dtype)
    if key_impl is not None:
        raise corrupt(target, "its recorded structure does not match its tensors")
    zero = np.zeros((), dtype)
    return zero[()] if kind == "scalar" else np.broadcast_to(zero, got.shape)


_PYTHON: dict[str, type] = {"bool": bool, "int": int, "float": float, "complex": complex}


@functools.lru_cache(maxsize=16)
def _key_dtype(impl: str) -> Any:
    return jax.eval_shape(lambda: jax.random.key(0, impl=impl)).dtype
