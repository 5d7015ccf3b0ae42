"""`tree_save` / `tree_load`: a tree's leaves in one file, written atomically.

Two formats, chosen by the file's suffix: `.safetensors` (the standard safetensors
format, tensors named by the leaves' flat names; see `_io_safetensors`) or anything else
`.npz` (pytreeclass's own, a NumPy `.npz` archive; see `_io_npz`). Both are written by
pytreeclass itself (no optional package needed), to a temporary file that is fsynced and
renamed over the target, and both are read without unpickling anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import jax
import numpy as np
from jax.tree_util import DictKey

from ._io_file import atomic_write, corrupt, gc_paused, read_slots
from ._io_import import as_array, import_leaves
from ._io_leaves import (
    Offered,
    decode,
    dtype_facts,
    first_repeat,
    flat_names,
    host_leaves,
    keystr,
    show,
)
from ._io_npz import NpzIndex, write_npz
from ._io_rules import RuleSpec, compile_rules, export_flat
from ._io_safetensors import SafetensorsIndex, write_safetensors
from ._stack import find_stacks

__all__ = ["tree_load", "tree_save"]

T = TypeVar("T")
Format = Literal["npz", "safetensors"]
_FORMATS = ("npz", "safetensors")
_ONE_NAME = "a .safetensors file needs one name per leaf. Rename a dict key, or use .npz."
_FIX = (
    "Load with a template of the saved model (same sizes and dtypes), map the names "
    "with rename= or convert the values with transform={pattern: fn}, or pass "
    'on_mismatch="skip" to keep the template\'s values where they differ.'
)
_NPZ_RULES = (
    "{fn}: rename=, transform= and unstack= work on flat names, which .safetensors files "
    "use; a .npz file keys its leaves by key path. Save and load a .safetensors path, or "
    "load the .npz with a template of the saved tree and edit it after loading."
)


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
    format: Format | None = None,
    rename: RuleSpec = None,
    transform: RuleSpec = None,
    unstack: bool = False,
) -> None:
    """Write the leaves of `tree` to the file `path`, atomically (no extension is added).

    The format follows the suffix: a path ending in `.safetensors` gets a standard
    safetensors file whose tensors are named by the leaves' flat names (`layers.0.w`,
    as `ptc.tree_to_dict` gives them), readable by `safetensors`, PyTorch and Hugging
    Face tools; any other path gets pytreeclass's `.npz` format (a NumPy `.npz`
    archive). Both are written by pytreeclass itself, no optional package needed.

    For a `.safetensors` file, `rename`, `transform` and `unstack` are the export rules
    of `ptc.tree_to_dict`, from the tree's flat names to the file's: write a Hugging
    Face layout (numbered layers, fused tensors, a tied weight left out) straight from
    the model.

    Arrays keep their dtype (bfloat16, float8 and other ml_dtypes, PRNG keys included);
    Python numbers (bool, int, float, complex) are saved as 0-d arrays and come back as
    Python numbers when the template holds one. `None` holes hold no leaves, so
    partitioned trees save and load as they are. Static fields are not saved: the
    template passed to `tree_load` supplies them. The file is written to a temporary
    file, fsynced and renamed over `path`: a crash mid-write leaves the old file.

    Args:
        path: the file to write.
        tree: any pytree whose leaves are arrays or Python numbers.
        format: `"npz"` or `"safetensors"` to choose the format whatever the suffix.
        rename: ordered `(pattern, replacement)` rules from the tree's flat names to the
            file's (`.safetensors` only), as in `ptc.tree_to_dict`.
        transform: ordered `(pattern, fn)` rules: `fn` makes the value written under
            each new name the pattern matches.
        unstack: one tensor per layer for the leaves of stacked fields
            (`blocks.3.attn.w`).

    Raises:
        TypeError: a leaf is neither an array nor a Python number, is abstract (a
            tracer or `jax.ShapeDtypeStruct`), or is not numeric (e.g. an object array).
        ValueError: two leaves have the same key path (or, for `.safetensors`, the
            same flat name), `format` is not one of the two, or export rules are given
            for a `.npz` file.
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
        rules = compile_rules("tree_save", rename, transform)
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        if fmt == "safetensors" and (rules.rename or rules.transform or unstack):
            sites = find_stacks(tree, "tree_save", skip_empty=True) if unstack else ()
            named = export_flat("tree_save", flat, sites, ".", unstack, rules)
            names = list(named)
            flat = [((DictKey(n),), v) for n, v in named.items()]
        elif fmt == "safetensors":
            names = flat_names("tree_save", "the tree", flat, ".", _ONE_NAME)
        elif rules.rename or rules.transform or unstack:
            raise ValueError(_NPZ_RULES.format(fn="tree_save"))
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


class _FileSource:
    """A file's tensors as a source for `import_leaves`, read only when fetched."""

    word = "the file"

    def __init__(self, f: Any, path: str, index: Any, fmt: Format) -> None:
        self.f, self.path, self.index, self.fmt = f, path, index, fmt
        self.names: list[str] = list(index.offered)

    def offer(self, name: str) -> Offered:
        return self.index.offered[name]

    def direct(self, name: str, dtype: np.dtype) -> bool:
        slot, got = self.index.slots[name], self.index.offered[name]
        return (
            slot.dtype == dtype
            and not slot.fortran
            and name not in self.index.key_impl
            and got.python is None
            and got.shape == slot.shape
            and got.dtype == dtype_facts(dtype).name
        )

    def fetch(
        self, names: Sequence[str], into: Mapping[str, np.ndarray]
    ) -> dict[str, tuple[Any, bool]]:
        index = self.index
        if self.fmt == "npz" and len(names) != len(self.names):
            names = self.names  # a CRC covers a whole entry: read all of it to check it
        slots = [index.slots[n] for n in names]
        stored = read_slots(self.f, self.path, index.spans, slots, [into.get(n) for n in names])
        out = {}
        for name, (arr, owned) in zip(names, stored):
            if name not in into:
                try:
                    arr = decode(arr, index.offered[name], index.key_impl.get(name))
                except (ValueError, TypeError) as e:
                    why = f"the data for {show(name)} cannot be decoded ({e})"
                    raise corrupt(self.path, why) from None
            out[name] = (arr, owned)
        return out

    def value(self, name: str, data: Any) -> tuple[Any, Offered]:
        return as_array("tree_load", f"{name!r} (the result of its transform)", data)


def tree_load(
    path: str | os.PathLike[str],
    *,
    like: T,
    format: Format | None = None,
    rename: RuleSpec = None,
    transform: RuleSpec = None,
    strict: bool = True,
    on_mismatch: Literal["error", "skip"] = "error",
) -> T:
    """Read a file written by `tree_save` into the structure of the template `like`.

    The format follows the suffix, as in `tree_save`. A `.safetensors` file written by
    another tool (a Hugging Face checkpoint) loads too: its tensor names go through the
    import rules of `ptc.tree_from_dict` (`rename`, `transform`, numbered layers filling
    a stacked field, `strict`, `on_mismatch`) on the way, and the data is still read
    once, straight into the arrays returned (the layers of a stacked leaf into one
    array). Every name, shape and dtype is checked against the template before any data
    is read (values made by a transform once made). Nothing is ever unpickled.

    Args:
        path: a file written by `tree_save` (or a standard `.safetensors` file).
        like: the template: a tree with the saved tree's structure whose leaves are
            arrays, `jax.ShapeDtypeStruct`s or Python numbers (their values are
            ignored), e.g. `jax.eval_shape(init, key)`.
        format: `"npz"` or `"safetensors"` to choose the format whatever the suffix.
        rename: ordered `(pattern, replacement)` rules from the file's tensor names to
            the template's flat names (`.safetensors` only), as in `ptc.tree_from_dict`.
        transform: ordered `(pattern, fn)` rules: `fn(value)` replaces the value of
            each (renamed) name the pattern matches.
        strict: whether names either side lacks are an error. With `strict=False` the
            names both have are loaded, the template's other leaves keep their values
            and a `ptc.PartialLoadWarning` lists what was left out.
        on_mismatch: `"error"`, or `"skip"` to keep the template's value where the
            file's has another shape or dtype (a new head), reported the same way.

    Returns:
        A tree with `like`'s structure and the file's values. A `jax.Array` or
        `ShapeDtypeStruct` template leaf gives a `jax.Array` (on its `sharding`, when
        it has one), a NumPy one a NumPy array, a Python number a Python number (the
        file's value must then be a 0-d array of the same kind: bool, int, float,
        complex).

    Raises:
        ValueError: a key path, shape or dtype differs from the template (the message
            names the first difference, or lists the missing and unexpected paths), the
            file is truncated, corrupt or of another format version, or a leaf left
            out by a partial load has no value of its own (an abstract template leaf).
        TypeError: a template leaf is not an array, `ShapeDtypeStruct` or number, or a
            rule is malformed.
        FileNotFoundError: there is no file at `path`.

    Examples:
        >>> import os, tempfile
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> path = os.path.join(tempfile.mkdtemp(), "params.safetensors")
        >>> ptc.tree_save(path, [jnp.arange(3.0)])
        >>> ptc.tree_load(path, like=[jnp.zeros(3)])
        [Array([0., 1., 2.], dtype=float32)]
        >>> ptc.tree_load(path, like={"w": jnp.zeros(3)}, rename={r"^0$": "w"})
        {'w': Array([0., 1., 2.], dtype=float32)}
    """
    fn = "tree_load"
    with gc_paused():
        target = os.fspath(path)
        fmt = _format(fn, target, format)
        rules = compile_rules(fn, rename, transform)
        t_flat, treedef = jax.tree_util.tree_flatten_with_path(like)
        if fmt == "safetensors":
            names = flat_names(fn, "the template", t_flat, ".", _ONE_NAME)
            what, hint, fix = "names", None, _FIX
        elif rules.rename or rules.transform:
            raise ValueError(_NPZ_RULES.format(fn=fn))
        else:
            names, what = [keystr(p) for p, _ in t_flat], "key paths"
            fix = (
                "Load with a template of the saved model (same sizes and dtypes), or "
                "convert after loading."
            )
            hint = (
                "Was it saved from a different version of the model? Load it with a "
                "template of that version, or pass strict=False to load the leaves both have."
            )
        with open(target, "rb") as f:
            index = SafetensorsIndex(f, target) if fmt == "safetensors" else NpzIndex(f, target)
            source = _FileSource(f, target, index, fmt)
            stacks = (
                (lambda: find_stacks(like, fn, skip_empty=True)) if fmt == "safetensors" else tuple
            )
            leaves = import_leaves(
                fn,
                t_flat,
                names,
                stacks,
                ".",
                rules,
                strict,
                on_mismatch,
                source,
                what,
                f"{target!r}",
                hint,
                fix,
            )
        return treedef.unflatten(leaves)
