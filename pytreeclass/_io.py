"""`tree_save` / `tree_load`: a tree's leaves in one file, written atomically.

Two formats, chosen by the file's suffix: `.safetensors` (the standard safetensors
format, tensors named by the leaves' flat names; see `_io_safetensors`) or anything else
`.npz` (pytreeclass's own, a NumPy `.npz` archive; see `_io_npz`). Both are written by
pytreeclass itself (no optional package needed), to a temporary file that is fsynced and
renamed over the target, and both are read without unpickling anything.
"""

from __future__ import annotations

import os
from typing import Any, Literal, TypeVar

import jax

from ._io_file import atomic_write, corrupt, gc_paused, read_slots
from ._io_leaves import (
    Value,
    check_leaf,
    check_names,
    decode,
    first_repeat,
    flat_names,
    host_leaves,
    keystr,
    place,
    show,
    spread,
)
from ._io_npz import NpzIndex, write_npz
from ._io_safetensors import SafetensorsIndex, write_safetensors

__all__ = ["tree_load", "tree_save"]

T = TypeVar("T")
Format = Literal["npz", "safetensors"]
_FORMATS = ("npz", "safetensors")
_ONE_NAME = "a .safetensors file needs one name per leaf. Rename a dict key, or use .npz."
_HINT = "Load with a template of the saved model (same sizes and dtypes), or convert after loading."


def _format(fn: str, path: str, format: Any) -> Format:
    if format is None:
        return "safetensors" if path.lower().endswith(".safetensors") else "npz"
    if format not in _FORMATS:
        raise ValueError(f"{fn}: format must be 'npz' or 'safetensors', not {format!r}.")
    return format


def tree_save(path: str | os.PathLike[str], tree: Any, *, format: Format | None = None) -> None:
    """Write the leaves of `tree` to the file `path`, atomically (no extension is added).

    The format follows the suffix: a path ending in `.safetensors` gets a standard
    safetensors file whose tensors are named by the leaves' flat names (`layers.0.w`,
    as `ptc.tree_to_dict` gives them), readable by `safetensors`, PyTorch and Hugging
    Face tools; any other path gets pytreeclass's `.npz` format (a NumPy `.npz`
    archive). Both are written by pytreeclass itself, no optional package needed.

    Arrays keep their dtype (bfloat16, float8 and other ml_dtypes, PRNG keys included);
    Python numbers (bool, int, float, complex) are saved as 0-d arrays and come back as
    Python numbers when the template holds one. `None` holes hold no leaves, so
    partitioned trees save and load as they are. Static fields are not saved: the
    template passed to `tree_load` supplies them. The file is written to a temporary
    file, fsynced and renamed over `path`: a crash mid-write leaves the old file.
    In a multi-process run a leaf spanning several processes' devices is saved when
    this process holds a copy of all of it (replicated), and refused otherwise.

    Args:
        path: the file to write.
        tree: any pytree whose leaves are arrays or Python numbers.
        format: `"npz"` or `"safetensors"` to choose the format whatever the suffix.

    Raises:
        TypeError: a leaf is neither an array nor a Python number, is abstract (a
            tracer or `jax.ShapeDtypeStruct`), or is not numeric (e.g. an object array).
        ValueError: two leaves have the same key path (or, for `.safetensors`, the
            same flat name), `format` is not one of the two, or (in a multi-process
            run) a leaf is sharded over other processes' devices and this process
            does not hold all of it: checkpoint such trees with Orbax. Nothing is
            written then, and an existing file at `path` is left as it was.
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
        fmt = _format("tree_save", target, format)
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        if fmt == "safetensors":
            names = flat_names("tree_save", "the tree", flat, ".", _ONE_NAME)
        else:
            names = [keystr(p) for p, _ in flat]
            twice = first_repeat(names)
            if twice is not None:
                raise ValueError(
                    f"tree_save: two leaves have the key path {show(twice)}; rename a dict "
                    "key so every leaf has its own path."
                )
        leaves = host_leaves("tree_save", flat)
        with atomic_write(target) as f:
            if fmt == "safetensors":
                write_safetensors(f, names, leaves)
            else:
                write_npz(f, leaves)


def tree_load(path: str | os.PathLike[str], *, like: T, format: Format | None = None) -> T:
    """Read a file written by `tree_save` into the structure of the template `like`.

    The format follows the suffix, as in `tree_save`. A `.safetensors` file written by
    another tool loads too when its tensor names are the template's flat names
    (`layers.0.w`); to rename, transpose or stack tensors first, read it with
    `safetensors.numpy.load_file` and use `ptc.tree_from_dict`. Every key path (or
    name), shape and dtype is checked against the template before any data is read.
    Nothing is ever unpickled.

    Args:
        path: a file written by `tree_save` (or a standard `.safetensors` file).
        like: the template: a tree with the saved tree's structure whose leaves are
            arrays, `jax.ShapeDtypeStruct`s or Python numbers (their values are
            ignored), e.g. `jax.eval_shape(init, key)`.
        format: `"npz"` or `"safetensors"` to choose the format whatever the suffix.

    Returns:
        A tree with `like`'s structure and the file's values. A `jax.Array` or
        `ShapeDtypeStruct` template leaf gives a `jax.Array` (on its `sharding`, when
        it has one: each device gets its shard, copied from the file's pages, and in
        a multi-process run each process places only its own devices' shards), a
        NumPy one a NumPy array, a Python number a Python number (the file's value
        must then be a 0-d array of the same kind: bool, int, float, complex).

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
        >>> path = os.path.join(tempfile.mkdtemp(), "params.safetensors")
        >>> ptc.tree_save(path, [jnp.arange(3.0)])
        >>> ptc.tree_load(path, like=[jnp.zeros(3)])
        [Array([0., 1., 2.], dtype=float32)]
    """
    with gc_paused():
        target = os.fspath(path)
        fmt = _format("tree_load", target, format)
        t_flat, treedef = jax.tree_util.tree_flatten_with_path(like)
        paths = [keystr(p) for p, _ in t_flat]
        t_leaves = [leaf for _, leaf in t_flat]
        if fmt == "safetensors":
            names = flat_names("tree_load", "the template", t_flat, ".", _ONE_NAME)
            what = "names"
        else:
            names, what = paths, "key paths"
        with open(target, "rb") as f:
            index = SafetensorsIndex(f, target) if fmt == "safetensors" else NpzIndex(f, target)
            check_names(
                "tree_load",
                f"{target!r}",
                "the file",
                what,
                names,
                index.offered,
                True,
                "Was it saved from a different version of the model? Load it with a template "
                "of that version, or select the common leaves.",
            )
            offered = [index.offered[n] for n in names]
            casts = [
                check_leaf("tree_load", p, leaf, got, "the file", _HINT)
                for p, leaf, got in zip(paths, t_leaves, offered)
            ]
            keys = index.key_impl

            def finish(ks: list[int], chunk: list[tuple[Any, bool]]) -> list[Any]:
                # Each chunk is placed as soon as it is read, so a leaf that device_put
                # copies (e.g. sharded along a later axis) frees its host memory at once.
                values = []
                for k, (arr, owned) in zip(ks, chunk):
                    try:
                        value = decode(arr, offered[k], keys.get(names[k]) if keys else None)
                    except (ValueError, TypeError) as e:
                        why = f"the data for {show(paths[k])} cannot be decoded ({e})"
                        raise corrupt(target, why) from None
                    values.append(Value(value, owned, casts[k]))
                return place("tree_load", [paths[k] for k in ks], [t_leaves[k] for k in ks], values)

            slots = [index.slots[n] for n in names]
            mapped = [spread(leaf) for leaf in t_leaves]
            leaves = read_slots(f, target, index.spans, slots, finish, mapped)
        return treedef.unflatten(leaves)
