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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey

from .._stack import find_stacks
from ._io_file import atomic_write, corrupt, gc_paused, read_slots
from ._io_import import as_array, import_leaves
from ._io_leaves import (
    Offered,
    Value,
    decode,
    dtype_facts,
    first_repeat,
    flat_name,
    flat_names,
    host_leaves,
    keystr,
    place,
    show,
    spread,
)
from ._io_npz import write_npz
from ._io_rules import RuleSpec, compile_rules, export_flat
from ._io_safetensors import META_KEY, write_safetensors
from ._io_shards import Checkpoint, is_index_path, open_checkpoint, parse_size, write_sharded
from ._io_structure import rebuild, record_structure

__all__ = ["tree_load", "tree_save"]

T = TypeVar("T")
Format = Literal["npz", "safetensors"]
_FORMATS = ("npz", "safetensors")
_ONE_NAME = "a .safetensors file needs one name per leaf. Rename a dict key, or use .npz."
_DEFAULT_METADATA = {"format": "pt"}  # what transformers' from_pretrained requires
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
    format: Literal["npz", "safetensors"] | None = None,
    metadata: dict[str, str] | None = None,
    max_shard_size: int | str | None = None,
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

    Arrays keep their dtype (bfloat16, float8 and other ml_dtypes, PRNG keys included);
    Python numbers (bool, int, float, complex) are saved as 0-d arrays and come back as
    Python numbers when the template holds one. `None` holes hold no leaves, so
    partitioned trees save and load as they are. The file also records the tree's
    structure (classes by module and name, static fields that are JSON values or named
    functions, classes and enums, containers), so `ptc.tree_load(path)` can rebuild it
    without a template. The file is written to a temporary file, fsynced and renamed
    over `path`: a crash mid-write leaves the old file.
    In a multi-process run a leaf spanning several processes' devices is saved when
    this process holds a copy of all of it (replicated), and refused otherwise.

    For a `.safetensors` file, `rename`, `transform` and `unstack` are the export rules
    of `ptc.tree_to_dict`, from the tree's flat names to the file's: write a Hugging
    Face layout (numbered layers, fused tensors, a tied weight left out) straight from
    the model. Such a file is in another layout than the tree's, so it records no
    structure: load it back with a template and the import rules.

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
        rename: ordered `(pattern, replacement)` rules from the tree's flat names to the
            file's (`.safetensors` only), as in `ptc.tree_to_dict`.
        transform: ordered `(pattern, fn)` rules: `fn` makes the value written under
            each new name the pattern matches.
        unstack: one tensor per layer for the leaves of stacked fields
            (`blocks.3.attn.w`).

    Raises:
        TypeError: a leaf is neither an array nor a Python number, is abstract (a
            tracer or `jax.ShapeDtypeStruct`), or is not numeric (e.g. an object array);
            `metadata` is not a dict of str to str; `max_shard_size` is not an int or str.
        ValueError: two leaves have the same key path (or, for `.safetensors`, the
            same flat name), a leaf's flat name is `__metadata__`, `format` is not one
            of the two, `metadata` or `max_shard_size` is given for `.npz`,
            `max_shard_size` is not a positive size, export rules are given for a
            `.npz` file, or (in a multi-process run) a leaf is sharded over other
            processes' devices and this process does not hold all of it: checkpoint
            such trees with Orbax. Nothing is written then, and an existing file at
            `path` is left as it was.
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
        rules = compile_rules("tree_save", rename, transform)
        exported = bool(rules.rename or rules.transform or unstack)
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        if fmt == "safetensors" and exported:
            sites = find_stacks(tree, "tree_save", skip_empty=True) if unstack else ()
            named = export_flat("tree_save", flat, sites, ".", unstack, rules)
            flat = [((DictKey(n),), v) for n, v in named.items()]
        elif exported:
            raise ValueError(_NPZ_RULES.format(fn="tree_save"))
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
        extra: dict[str, Any] = {} if exported else {"structure": record_structure(tree)}
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


_Mismatch = Literal["error", "skip"]


@overload
def tree_load(
    path: str | os.PathLike[str],
    *,
    like: T,
    format: Literal["npz", "safetensors"] | None = None,
    rename: RuleSpec = None,
    transform: RuleSpec = None,
    strict: bool = True,
    on_mismatch: Literal["error", "skip"] = "error",
) -> T: ...
@overload
def tree_load(
    path: str | os.PathLike[str],
    *,
    like: None = None,
    format: Literal["npz", "safetensors"] | None = None,
) -> Any: ...
def tree_load(
    path: str | os.PathLike[str],
    *,
    like: Any = None,
    format: Any = None,
    rename: RuleSpec = None,
    transform: RuleSpec = None,
    strict: bool = True,
    on_mismatch: Any = "error",
) -> Any:
    """Read a file written by `tree_save` into the structure of the template `like`,
    or, without `like`, into the structure the file records.

    The format follows the suffix, as in `tree_save`; a Hugging Face shard index
    (`model.safetensors.index.json`) loads its shards. A `.safetensors` file written by
    another tool (a Hugging Face checkpoint) loads too: its tensor names go through the
    import rules of `ptc.tree_from_dict` (`rename`, `transform`, numbered layers filling
    a stacked field, `strict`, `on_mismatch`) on the way, and the data is still read
    once, straight into the arrays returned (the layers of a stacked leaf into one
    array). Every name, shape and dtype is checked against the template before any data
    is read (values made by a transform once made). Nothing is ever unpickled, and
    nothing is imported: without `like`, the classes the file names must already be
    defined (import the module that defines the model first), static functions, classes
    and enums must be found under their recorded names, and a field recorded as needing
    a template is an error naming it.

    Args:
        path: a file written by `tree_save` (or a standard `.safetensors` file, or a
            Hugging Face `*.safetensors.index.json`).
        like: the template: a tree with the saved tree's structure whose leaves are
            arrays, `jax.ShapeDtypeStruct`s or Python numbers (their values are
            ignored), e.g. `jax.eval_shape(init, key)`. Without it (`None`), the
            file's recorded structure is rebuilt: leaves come back as the kind they
            were saved as (`jax.Array` on the default device, NumPy array or scalar,
            Python number).
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
        it has one: each device gets its shard, copied from the file's pages, and in
        a multi-process run each process places only its own devices' shards), a
        NumPy one a NumPy array, a Python number a Python number (the file's value
        must then be a 0-d array of the same kind: bool, int, float, complex).

    Raises:
        ValueError: a key path, shape or dtype differs from the template (the message
            names the first difference, or lists the missing and unexpected paths); the
            file is truncated, corrupt, of another format version, or a PyTorch pickle;
            a leaf left out by a partial load has no value of its own (an abstract
            template leaf); rules are given for a `.npz` file; without `like`: the file
            records no structure, a class it names is not defined or has changed
            fields, or a field needs a template.
        TypeError: a template leaf is not an array, `ShapeDtypeStruct` or number, a rule
            is malformed, or import rules are given without `like`.
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
        >>> ptc.tree_load(path, like={"w": jnp.zeros(3)}, rename={r"^0$": "w"})
        {'w': Array([0., 1., 2.], dtype=float32)}
    """
    fn = "tree_load"
    with gc_paused():
        target = os.fspath(path)
        if is_index_path(target) and format is None:
            fmt = "sharded"
        else:
            fmt = _format(fn, target, format)
        rules = compile_rules(fn, rename, transform)
        if like is None:
            if rules.rename or rules.transform or not strict or on_mismatch != "error":
                raise TypeError(
                    f"{fn}: rename=, transform=, strict= and on_mismatch= map a file onto a "
                    "template; pass like= (e.g. jax.eval_shape(init, key)) with them."
                )
            return _load_recorded(target, open_checkpoint(fn, target, fmt))
        t_flat, treedef = jax.tree_util.tree_flatten_with_path(like)
        if fmt != "npz":
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
        cp = open_checkpoint(fn, target, fmt)
        source = _CheckpointSource(cp)
        if not (rules.rename or rules.transform):  # file names are the template's
            # A leaf placed on several devices is copied there part by part anyway
            # (`place`): view the file's pages instead of reading into memory of its own.
            source.mapped = {n for n, (_, leaf) in zip(names, t_flat) if spread(leaf)}
        stacks = (lambda: find_stacks(like, fn, skip_empty=True)) if fmt != "npz" else tuple
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
        for check in source.checks:  # the file's checksums, which ran while placing
            check()
        return treedef.unflatten(leaves)


class _CheckpointSource:
    """A checkpoint's tensors (one file or shards) as a source for `import_leaves`,
    read only when fetched, each straight into its destination where one is given."""

    word = "the file"

    def __init__(self, cp: Checkpoint) -> None:
        self.cp = cp
        self.names: list[str] = list(cp.offered)
        self.mapped: set[str] = set()  # names to view in a mapping of the file, not read
        self.checks: list[Callable[[], None]] = []  # their CRC checks, run after placing

    def _index(self, name: str) -> tuple[str, Any]:
        return self.cp.parts[self.cp.part_of[name]]

    def offer(self, name: str) -> Offered:
        return self.cp.offered[name]

    def direct(self, name: str, dtype: np.dtype) -> bool:
        index = self._index(name)[1]
        slot, got = index.slots[name], self.cp.offered[name]
        return (
            slot.dtype == dtype
            and not slot.fortran
            and name not in self.cp.key_impl
            and got.python is None
            and got.shape == slot.shape
            and got.dtype == dtype_facts(dtype).name
        )

    def fetch(
        self, names: Sequence[str], into: Mapping[str, np.ndarray]
    ) -> dict[str, tuple[Any, bool]]:
        cp = self.cp
        if cp.kind == "npz" and len(names) != len(self.names):
            names = self.names  # a CRC covers a whole entry: read all of it to check it
        by_part: dict[int, list[str]] = {}
        for name in names:
            by_part.setdefault(cp.part_of[name], []).append(name)
        out = {}
        for part, members in by_part.items():
            file, index = cp.parts[part]
            slots = [index.slots[n] for n in members]
            dest = [into.get(n) for n in members]
            mapped = [n in self.mapped and n not in into for n in members]
            with open(file, "rb") as f:
                stored = read_slots(f, file, index.spans, slots, dest, mapped, self.checks)
            for name, (arr, owned) in zip(members, stored):
                if name not in into:
                    try:
                        arr = decode(arr, cp.offered[name], cp.key_impl.get(name))
                    except (ValueError, TypeError) as e:
                        why = f"the data for {show(name)} cannot be decoded ({e})"
                        raise corrupt(file, why) from None
                out[name] = (arr, owned)
        return out

    def value(self, name: str, data: Any) -> tuple[Any, Offered]:
        return as_array("tree_load", f"{name!r} (the result of its transform)", data)


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
