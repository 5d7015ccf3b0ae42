"""Leaves in and out of pytreeclass: what file formats and flat dicts share.

`tree_save` / `tree_load` (both file formats) and `tree_to_dict` / `tree_from_dict` move
leaves between a tree and a flat, named collection of arrays. They share one definition
of each step, kept here:

* names: a leaf's key path as `keystr` (`.layers[0].w`) or as a flat name (`layers.0.w`);
* saving: each leaf as a host NumPy array (one batched transfer for every device array),
  with what a file must record to give it back (the dtype numpy cannot name, the PRNG key
  implementation, that it was a Python number);
* loading: checking what a file or dict offers against the template's leaf, before any
  data is read, with messages that name the path; then turning the values into the kind
  of leaf the template holds (one batched `jax.device_put` for all device leaves).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from .._tree_util import has_shape_dtype
from ._io_file import aligned_empty

__all__ = [
    "FORMAT",
    "VERSION",
    "NUMBERS",
    "HostLeaf",
    "MismatchError",
    "SHOWN",
    "Offered",
    "Value",
    "as_template_number",
    "check_leaf",
    "check_names",
    "decode",
    "describe",
    "dtype_facts",
    "flat_name",
    "first_repeat",
    "flat_names",
    "host_leaves",
    "itemsize_of",
    "keystr",
    "list_names",
    "offered_str",
    "own_copy",
    "place",
    "show",
    "spread",
]

# Both file formats carry a manifest saying it is ours, and which version of the layout.
FORMAT = "pytreeclass.tree"
VERSION = 2

NUMBERS = (bool, int, float, complex)
_NUMBER_NAMES = {"bool": bool, "int": int, "float": float, "complex": complex}


# -- names --------------------------------------------------------------------------------------


def keystr(path: tuple[Any, ...]) -> str:
    """`.layers[0].w`: the key path as `jax.tree_util.keystr` spells it."""
    return "".join(map(str, path))


_NAME_OF = {
    GetAttrKey: lambda k: k.name,
    DictKey: lambda k: str(k.key),
    SequenceKey: lambda k: str(k.idx),
    FlattenedIndexKey: lambda k: str(k.key),
}


def _key_name(key: Any) -> str:
    get = _NAME_OF.get(type(key))
    if get is not None:
        return get(key)
    for cls, get in _NAME_OF.items():  # subclasses of JAX's key types
        if isinstance(key, cls):
            return get(key)
    return str(key)


def flat_name(path: tuple[Any, ...], sep: str = ".") -> str:
    """`layers.0.w`: the key path's attribute names, dict keys and indices joined by `sep`."""
    return sep.join([_key_name(k) for k in path])


@functools.lru_cache(maxsize=256)
def itemsize_of(dtype: str) -> int | None:
    """The item size of a dtype name (ml_dtypes included); None for keys and nonsense."""
    try:
        return jnp.dtype(dtype).itemsize
    except TypeError:
        return None


def flat_names(
    fn: str, what: str, flat: Sequence[tuple[Any, Any]], sep: str, hint: str
) -> list[str]:
    """The flat names of flattened leaves; two leaves with one name are a `ValueError`."""
    names = [flat_name(p, sep) for p, _ in flat]
    if len(set(names)) != len(names):
        first: dict[str, Any] = {}
        for (p, _), name in zip(flat, names):
            if name in first:
                raise ValueError(
                    f"{fn}: the leaves at {show(keystr(first[name]))} and {show(keystr(p))} "
                    f"of {what} both have the flat name {name!r}; {hint}"
                )
            first[name] = p
    return names


def first_repeat(items: Sequence[Any]) -> Any:
    """The first item that appeared before in `items`, or None (one set, no sort)."""
    if len(set(items)) == len(items):
        return None
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None  # pragma: no cover (the set said there is one)


def show(path: str) -> str:
    return path or "<root>"


def describe(shape: Sequence[int], dtype: str) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]"


# -- dtypes -------------------------------------------------------------------------------------


class _DtypeFacts(NamedTuple):
    name: str  # "float32", "bfloat16", "key<fry>"
    is_key: bool
    savable: bool  # numeric (bool, int, float, complex) or an ml_dtype, or a PRNG key
    native: bool  # a dtype NumPy's own `.npy` format can name (not an ml_dtype or key)
    big_endian: bool


_FACTS: dict[Any, _DtypeFacts] = {}


def dtype_facts(dtype: Any) -> _DtypeFacts:
    """Facts about a dtype object, computed once per dtype (a per-leaf hot path)."""
    facts = _FACTS.get(dtype)
    if facts is None:
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            facts = _DtypeFacts(str(dtype), True, True, False, False)
        else:
            dt = np.dtype(dtype)
            native = dt.type.__module__ == "numpy"
            savable = (dt.kind in "biufc" or not native) and not dt.hasobject
            facts = _DtypeFacts(dt.name, False, savable, native, dt.byteorder == ">")
        if len(_FACTS) < 1024:
            _FACTS[dtype] = facts
    return facts


_SMALL = 1 << 14  # elements
# `jax.device_put(..., may_alias=True)` lets the device keep memory we own instead of
# copying it; older jax releases have no such keyword (and copy).
_MAY_ALIAS = "may_alias" in inspect.signature(jax.device_put).parameters

# What kind of leaf each Python type is, worked out once per type (a per-leaf hot path).
_NUMBER, _DEVICE, _HOST, _OTHER = range(4)
_LEAF_KINDS: dict[type, int] = {t: _NUMBER for t in NUMBERS}


def _leaf_kind(leaf: Any) -> int:
    kind = _LEAF_KINDS.get(type(leaf))
    if kind is None:
        if isinstance(leaf, Tracer | jax.ShapeDtypeStruct):
            kind = _OTHER
        elif isinstance(leaf, jax.Array):
            kind = _DEVICE
        elif isinstance(leaf, np.ndarray | np.generic) or (
            hasattr(leaf, "__array__") and has_shape_dtype(leaf)
        ):
            kind = _HOST
        else:
            kind = _OTHER
        if len(_LEAF_KINDS) < 1024:
            _LEAF_KINDS[type(leaf)] = kind
    return kind


# -- saving -------------------------------------------------------------------------------------


class HostLeaf(NamedTuple):
    """One leaf ready to be written: its bytes on the host and what gives it back."""

    key_path: tuple[Any, ...]
    dtype: str  # the leaf's own dtype: "float32", "bfloat16", "key<fry>", ...
    shape: tuple[int, ...]  # the leaf's own shape (for keys: without the key data axis)
    data: np.ndarray  # C-contiguous, little-endian; the key data for PRNG keys
    python: str | None  # "bool" / "int" / "float" / "complex" for Python numbers
    key_impl: str | None  # the PRNG implementation name for typed keys


def _python_array(fn: str, key_path: tuple[Any, ...], leaf: Any) -> np.ndarray:
    if type(leaf) is int and not -(2**63) <= leaf < 2**64:
        raise OverflowError(
            f"{fn}: the Python int at {show(keystr(key_path))} ({leaf}) does not fit in 64 "
            "bits (ints in [-2**63, 2**64) can be saved). Keep it in a static field, or "
            "store it as a string or as several smaller ints."
        )
    # np.asarray picks int64 below 2**63 and uint64 from there: both load back exactly.
    return np.asarray(leaf)


def _unsavable(fn: str, key_path: tuple[Any, ...], leaf: Any) -> TypeError:
    where = show(keystr(key_path))
    if isinstance(leaf, (jax.ShapeDtypeStruct, Tracer)):
        return TypeError(
            f"{fn}: the leaf at {where} is abstract ({type(leaf).__name__}); save concrete "
            "arrays, outside jax.jit."
        )
    if not has_shape_dtype(leaf):
        return TypeError(
            f"{fn}: the leaf at {where} is a {type(leaf).__name__}; only arrays and Python "
            "numbers can be saved. Make it a static field, or save "
            "ptc.tree_filter(tree, jax.Array) and load it with a template filtered the "
            "same way."
        )
    if np.dtype(leaf.dtype).hasobject:
        return TypeError(
            f"{fn}: the leaf at {where} is an object array; only numeric arrays can be "
            "saved (loading never unpickles)."
        )
    return TypeError(
        f"{fn}: the leaf at {where} has dtype {leaf.dtype}; only numeric arrays (bool, "
        "int, float, complex and the ml_dtypes such as bfloat16) can be saved."
    )


_SPANS_PROCESSES = (
    "{fn}: the leaf at {where} ({shape}) is sharded over the devices of several processes, "
    "and this process ({process}) does not hold all of it, so no one process can write it "
    "to a file. Checkpoint sharded trees with Orbax, from every process at once (see "
    "'Orbax: save, restore, reshard' in docs/scaling.md), or gather the tree onto each "
    "process first (jax.experimental.multihost_utils.process_allgather)."
)


def _index_key(index: tuple[slice, ...]) -> tuple[tuple[Any, Any, Any], ...]:
    # slices are unhashable before Python 3.12
    return tuple((s.start, s.stop, s.step) for s in index)


def _process_copy(fn: str, key_path: tuple[Any, ...], leaf: jax.Array) -> np.ndarray:
    """A host copy of an array that spans other processes' devices, from this process's
    shards; a `ValueError` unless they hold all of it (replicated over the processes)."""
    shape = tuple(leaf.shape)
    wanted = {_index_key(i) for i in leaf.sharding.devices_indices_map(shape).values()}
    shards = {_index_key(s.index): s for s in leaf.addressable_shards}
    if not wanted <= shards.keys():
        raise ValueError(
            _SPANS_PROCESSES.format(
                fn=fn,
                where=show(keystr(key_path)),
                shape=describe(shape, dtype_facts(leaf.dtype).name),
                process=jax.process_index(),
            )
        )
    out = np.empty(shape, leaf.dtype)
    for key in wanted:
        shard = shards[key]
        out[shard.index] = np.asarray(shard.data)
    return out


def host_leaves(fn: str, flat: Sequence[tuple[Any, Any]]) -> list[HostLeaf]:
    """Every leaf of a flattened tree as a `HostLeaf` (device arrays copied to the host)."""
    arrays: list[Any] = []  # per leaf: the array to fetch or convert
    extra: list[tuple[str | None, str | None]] = []  # per leaf: (python, key_impl)
    on_device: list[Any] = []
    for key_path, leaf in flat:
        kind = _leaf_kind(leaf)
        if kind == _DEVICE:
            if dtype_facts(leaf.dtype).is_key:
                extra.append((None, str(jax.random.key_impl(leaf))))
                leaf = jax.random.key_data(leaf)
            else:
                extra.append((None, None))
            if leaf.is_fully_addressable:
                on_device.append(leaf)
            else:
                leaf = _process_copy(fn, key_path, leaf)
        elif kind == _HOST:
            extra.append((None, None))
            leaf = np.asarray(leaf)
        elif kind == _NUMBER:
            extra.append((type(leaf).__name__, None))
            leaf = _python_array(fn, key_path, leaf)
        else:
            raise _unsavable(fn, key_path, leaf)
        arrays.append(leaf)
    if on_device and jax.default_backend() != "cpu":
        # Start every device-to-host copy before waiting for the first (what
        # jax.device_get does; on CPU it costs time and gains nothing).
        for x in on_device:
            x.copy_to_host_async()
    out = []
    for (key_path, leaf), arr, (python, impl) in zip(flat, arrays, extra):
        # For small arrays np.array (a copy) is about twice as fast as np.asarray.
        arr = np.array(arr) if arr.size <= _SMALL else np.asarray(arr)
        facts = dtype_facts(arr.dtype)
        if not facts.savable:
            raise _unsavable(fn, key_path, arr)
        if facts.big_endian:
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        elif not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        if impl is not None:
            out.append(HostLeaf(key_path, str(leaf.dtype), tuple(leaf.shape), arr, None, impl))
        else:
            out.append(HostLeaf(key_path, facts.name, arr.shape, arr, python, None))
    return out


# -- loading: checks ----------------------------------------------------------------------------


class Offered(NamedTuple):
    """What a file or dict offers for one leaf, known before any data is read."""

    dtype: str  # the leaf's own dtype name ("key<fry>" for keys)
    shape: tuple[int, ...]
    python: str | None = None  # it was saved from a Python number of this type


def _number_kind(dtype: str) -> str | None:
    """ "bool" / "int" / "float" / "complex" for a numeric dtype name, else None."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        return None  # a PRNG key dtype, or nonsense
    if dt == np.bool_:
        return "bool"
    for kind, base in (("int", jnp.integer), ("float", jnp.floating), ("complex", jnp.complex_)):
        if jnp.issubdtype(dt, base):
            return kind
    return None


def check_leaf(
    fn: str,
    where: str,
    leaf: Any,
    got: Offered,
    source: str,
    hint: str,
    before: str | None = None,
) -> bool:
    """Raise unless `got` can fill the template leaf `leaf` (at `where`) exactly.

    Arrays must agree in shape and dtype. A Python number and a 0-d array of the same kind
    (bool, int, float, complex) fill each other: `jax.eval_shape` and `jax.jit` turn
    Python numbers into 0-d arrays. Returns whether the value must be cast to the
    template's dtype (a Python number filling a 0-d array). `before` describes what the
    source held before a transform made `got` of it (messages give both).
    """
    if type(leaf) in NUMBERS:
        if got.shape != () or _number_kind(got.dtype) != type(leaf).__name__:
            wanted = f"a Python {type(leaf).__name__}"
            raise _mismatch(fn, where, "type", source, got, wanted, hint, before)
        return False
    if not has_shape_dtype(leaf):
        raise TypeError(
            f"{fn}: the template holds a {type(leaf).__name__} leaf at {show(where)}; "
            "templates hold arrays, jax.ShapeDtypeStruct or Python numbers."
        )
    shape, dtype = tuple(leaf.shape), dtype_facts(leaf.dtype).name
    if got.python:
        if shape != ():
            raise _mismatch(fn, where, "shape", source, got, describe(shape, dtype), hint, before)
        if _number_kind(dtype) != got.python:
            raise _mismatch(fn, where, "type", source, got, describe(shape, dtype), hint, before)
        return True
    if shape != got.shape:
        raise _mismatch(fn, where, "shape", source, got, describe(shape, dtype), hint, before)
    if dtype != got.dtype:
        raise _mismatch(fn, where, "dtype", source, got, describe(shape, dtype), hint, before)
    return False


def offered_str(got: Offered) -> str:
    """`float32[3,4]`, or `a Python float`: what a source offers, for messages."""
    return f"a Python {got.python}" if got.python else describe(got.shape, got.dtype)


class MismatchError(ValueError):
    """A shape, dtype or type mismatch; `reason` is the message without its context."""

    reason: str = ""


def _mismatch(
    fn: str,
    where: str,
    what: str,
    source: str,
    got: Offered,
    wanted: str,
    hint: str,
    before: str | None,
) -> MismatchError:
    offered = offered_str(got)
    if before is not None:
        offered = f"{before}, which the transform made {offered}"
    reason = f"{what} mismatch: {source} has {offered}, the template {wanted}"
    e = MismatchError(
        f"{fn}: {what} mismatch at {show(where)}: {source} has {offered}, the template "
        f"{wanted}. {hint}"
    )
    e.reason = reason
    return e


SHOWN = 10  # names listed in a name-mismatch message; the rest are counted


def _closest(name: str, pool: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(name, pool, n=1, cutoff=0.5)
    return found[0] if found else None


def list_names(names: Sequence[str], pool: Sequence[str] = (), where: str = "") -> str:
    """At most `SHOWN` names, each with its closest match in `pool` (when it has one),
    and how many more there are."""
    shown = []
    for name in names[:SHOWN]:
        near = _closest(name, pool) if pool else None
        shown.append(show(name) + (f" (closest in {where}: {show(near)})" if near else ""))
    more = len(names) - SHOWN
    return ", ".join(shown) + (f", and {more} more" if more > 0 else "")


def check_names(
    fn: str,
    source: str,
    word: str,
    what: str,
    wanted: Sequence[str],
    offered: Any,
    strict: bool,
    hint: str,
) -> tuple[list[str], list[str]]:
    """The names the template wants that `offered` lacks, and those `offered` has that
    the template does not. With `strict`, either is a `ValueError` giving the counts and
    at most `SHOWN` names of each, each with its closest match on the other side."""
    missing = [n for n in wanted if n not in offered]
    unexpected: list[str] = []
    if missing or len(offered) != len(wanted):
        known = set(wanted)
        unexpected = [n for n in offered if n not in known]
    if not (strict and (missing or unexpected)):
        return missing, unexpected
    counts, listed = [], []
    if missing:
        counts.append(f"{len(missing)} missing from {word}")
        pool = unexpected or list(offered)
        listed.append(f"missing from {word}: {list_names(missing, pool, word)}")
    if unexpected:
        counts.append(f"{len(unexpected)} in {word} but not the template")
        pool = missing or list(wanted)
        listed.append(
            f"in {word} but not the template: {list_names(unexpected, pool, 'the template')}"
        )
    raise ValueError(
        f"{fn}: {source} does not match the template's {what} ({', '.join(counts)}).\n  "
        + "\n  ".join(listed)
        + f"\n{hint}"
    )


# -- loading: values ----------------------------------------------------------------------------


class Value(NamedTuple):
    """A value for one template leaf, ready to be placed."""

    data: Any  # a NumPy array (host) or a jax.Array
    owned: bool  # nothing else references `data`'s memory: the device may keep it (no copy)
    cast: bool = False  # a Python number's value, to be cast to the template's dtype


def decode(stored: np.ndarray, got: Offered, key_impl: str | None) -> Any:
    """The leaf's own value from the array stored in a file (bits viewed back, keys wrapped).

    Raises `ValueError` / `TypeError` when the stored array cannot give what `got` says.
    """
    if key_impl is not None:
        value = jax.random.wrap_key_data(jnp.asarray(stored), impl=key_impl)
    elif dtype_facts(stored.dtype).name != got.dtype:
        value = stored.view(jnp.dtype(got.dtype)).reshape(got.shape)
    else:
        value = stored
    if value.shape != got.shape or dtype_facts(value.dtype).name != got.dtype:
        have = describe(value.shape, dtype_facts(value.dtype).name)
        raise ValueError(f"it gives {have}, not {describe(got.shape, got.dtype)}")
    return value


def as_template_number(fn: str, where: str, value: Any, dtype: np.dtype, source: str) -> np.ndarray:
    """A Python number's 0-d array cast to a template dtype, refusing values that change."""
    value = np.asarray(value)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        cast = value.astype(dtype)
    kind = _number_kind(value.dtype.name)
    if kind == "int":
        changed = int(cast) != int(value)
    else:
        changed = bool(np.isfinite(value).all()) and not bool(np.isfinite(cast).all())
    if changed:
        raise ValueError(
            f"{fn}: value mismatch at {show(where)}: {source} has the Python {kind} "
            f"{value.item()!r}, which does not fit {dtype.name}, the template's dtype. Load "
            f"it with a wider template dtype or a Python {kind}."
        )
    return cast


def _global_array(data: Any, sharding: Any) -> jax.Array:
    """An array on devices of several processes from data this process holds whole.

    Each process puts only its own shards there, with no collective: jax.device_put
    refuses device arrays for such shardings, and older jax (0.4) checks that host
    data is equal in every process by sending it all to every process.
    """
    if isinstance(data, jax.Array) and dtype_facts(data.dtype).is_key:
        raw = np.asarray(jax.random.key_data(data))
        wrap = functools.partial(jax.random.wrap_key_data, impl=jax.random.key_impl(data))
        shards = jax.make_array_from_callback(raw.shape, sharding, lambda i: raw[i])
        return jax.jit(wrap, out_shardings=sharding)(shards)
    host = np.asarray(data)
    return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])


def _spread(jobs: list[tuple[int, np.ndarray, Any]]) -> list[jax.Array]:
    """Arrays over several devices from data we do not own (a view of a file's pages, a
    user's array): each device's part copied into memory of its own (`own_copy`), the
    copies on worker threads (NumPy copies release the GIL). Only this process's devices
    get parts, so it works for shardings over several processes too, with no collective."""
    parts = []
    for _, host, sharding in jobs:
        where = sharding.addressable_devices_indices_map(host.shape)
        parts.append([(device, host[index]) for device, index in where.items()])
    views = [view for p in parts for _, view in p]
    with ThreadPoolExecutor(_COPY_WORKERS) as pool:
        copies = iter(list(pool.map(own_copy, views)))
    out = []
    for (_, host, sharding), p in zip(jobs, parts):
        on = [_put(next(copies), device) for device, _ in p]
        out.append(jax.make_array_from_single_device_arrays(host.shape, sharding, on))
    return out


def _put(x: np.ndarray, device: Any) -> jax.Array:
    if _MAY_ALIAS:
        return jax.device_put(x, device, may_alias=True)  # our own copy: taken as it is
    return jax.device_put(x, device)


_COPY_WORKERS = max(2, min(8, os.cpu_count() or 1))


def own_copy(x: Any) -> np.ndarray:
    """`x` copied into new memory of our own, aligned so that JAX takes it as it is.

    Data we do not own (a user's NumPy array, a view of a file's pages) must be copied,
    and `jax.device_put(x, may_alias=False)` does not: for NumPy input whose memory XLA
    can use in place (64-byte aligned) JAX aliases it anyway (jax-ml/jax#37830), so the
    user's array mutated later, or the file rewritten in place, would change the loaded
    leaf; and a copy JAX does make runs asynchronously, racing such a change."""
    x = np.asarray(x)
    if x.nbytes < _OWN_ALIGNED:  # small: a plain copy is cheaper (JAX copies it again)
        return np.array(x, order="C")
    out = aligned_empty(x.nbytes).view(x.dtype).reshape(x.shape)
    np.copyto(out, x)
    return out


_OWN_ALIGNED = 1 << 16  # bytes from which `own_copy` makes memory JAX takes as it is


def spread(leaf: Any) -> bool:
    """Whether a template leaf is placed on several devices (so `place` copies each
    device's part from the data it is given, wherever that lies)."""
    sharding = getattr(leaf, "sharding", None) if isinstance(leaf, _PLACED) else None
    return sharding is not None and len(sharding.device_set) > 1


_PLACED = (jax.Array, jax.ShapeDtypeStruct)


def place(
    fn: str,
    paths: Sequence[str],
    leaves: Sequence[Any],
    values: Sequence[Value],
    source: str = "the file",
) -> list[Any]:
    """Each value as the kind of leaf the template holds at the same position.

    A `jax.Array` or `jax.ShapeDtypeStruct` template leaf gives a `jax.Array` on its
    `sharding` (all transfers in one `jax.device_put` per sharding), a NumPy array a
    NumPy array, a NumPy scalar a NumPy scalar, a Python number a Python number.
    """
    out: list[Any] = [None] * len(leaves)
    # Batches for jax.device_put: (sharding or None, may_alias) -> (indices, arrays)
    batches: dict[tuple[Any, bool], tuple[list[int], list[Any]]] = {}
    spread_jobs: list[tuple[int, np.ndarray, Any]] = []  # data we do not own, on devices
    for i, (leaf, (data, owned, cast)) in enumerate(zip(leaves, values)):
        if type(leaf) in NUMBERS:
            out[i] = type(leaf)(np.asarray(data).item())
            continue
        if cast:
            data = as_template_number(fn, paths[i], data, np.dtype(leaf.dtype), source)
            owned = True
        if isinstance(leaf, jax.Array | jax.ShapeDtypeStruct):
            sharding = getattr(leaf, "sharding", None)
            if not owned and not isinstance(data, jax.Array):
                if sharding is not None and len(sharding.device_set) > 1:
                    spread_jobs.append((i, np.asarray(data), sharding))
                    continue
                data, owned = own_copy(data), True
            alias = owned and not isinstance(data, jax.Array)
            idx, arrs = batches.setdefault((sharding, alias), ([], []))
            idx.append(i)
            arrs.append(data)
        elif isinstance(leaf, np.ndarray):
            out[i] = np.asarray(data) if owned else np.array(data)
        elif isinstance(leaf, np.generic):
            out[i] = np.asarray(data)[()]
        else:
            out[i] = data
    for (sharding, alias), (idx, arrs) in batches.items():
        if sharding is not None and not sharding.is_fully_addressable:
            placed = [_global_array(x, sharding) for x in arrs]
        elif alias and _MAY_ALIAS:
            placed = jax.device_put(arrs, sharding, may_alias=True)
        elif _MAY_ALIAS:  # a user's JAX arrays: copied (NumPy data was copied above)
            placed = jax.device_put(arrs, sharding, may_alias=False)
        else:
            placed = jax.device_put(arrs, sharding)
        for i, x in zip(idx, placed):
            out[i] = x
    if spread_jobs:
        for (i, _, _), x in zip(spread_jobs, _spread(spread_jobs)):
            out[i] = x
    return out
