"""The import plan both `tree_from_dict` and `tree_load` run: which source names fill
which template leaves (by the rules of `_io_rules`), checked (names, then shapes and
dtypes) before any data is read, with partial loads (`strict=False`,
`on_mismatch="skip"`) reported by a `PartialLoadWarning`.

Sources are abstract (`Source`): a dict's values (`DictSource`), or a file's tensors,
which `tree_load` reads straight into the arrays it returns (the layers of a stacked
leaf into one array).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from .._errors import PartialLoadWarning
from .._stack import StackSite
from ._io_file import aligned_empty
from ._io_leaves import (
    NUMBERS,
    MismatchError,
    Offered,
    Value,
    as_template_number,
    check_leaf,
    check_names,
    describe,
    dtype_facts,
    first_repeat,
    flat_name,
    keystr,
    list_names,
    offered_str,
    place,
    show,
)
from ._io_rules import (
    ONE_NAME,
    Layers,
    Rules,
    gather_error,
    layer_paths,
    layers_of,
    renamed,
    stacked,
)

__all__ = ["DictSource", "Source", "as_array", "import_leaves"]

_MISMATCH = ("error", "skip")


# -- import -------------------------------------------------------------------------------------


class Source(Protocol):
    """Named arrays to fill a template from: a dict's values or a file's tensors."""

    word: str  # "the dict", "the file"
    names: list[str]  # every name, in the source's order

    def offer(self, name: str) -> Offered:
        """What `name` holds, known before its data is read."""
        ...

    def direct(self, name: str, dtype: np.dtype) -> bool:
        """Whether `name`'s data can be read straight into an array of `dtype`."""
        ...

    def fetch(
        self, names: Sequence[str], into: Mapping[str, np.ndarray]
    ) -> dict[str, tuple[Any, bool]]:
        """{name: (value, whether it owns its memory)}; names in `into` are read into
        those (C-contiguous) arrays, which are then their values."""
        ...

    def value(self, name: str, data: Any) -> tuple[Any, Offered]:
        """A transform's result as an array or number, and what it offers."""
        ...


class _Need(NamedTuple):
    """One array a template leaf needs: the whole leaf, or one layer of it."""

    name: str  # the template-side name
    path: tuple[Any, ...]  # its key path (with the layer index for a layer)
    sources: tuple[str, ...]  # the source names renamed to it (several: gathered)
    transforms: list[Callable[[Any], Any]]


class _Plan(NamedTuple):
    leaf: int  # the template leaf's position
    needs: list[_Need]
    layers: Layers | None  # set when the leaf is filled layer by layer


_HINT = (
    "Map {word}'s names onto the template's with rename=[(pattern, replacement), ...], "
    "or pass strict=False to load the names both have (and keep the template's other "
    "leaves)."
)
_FIX = (
    "Fix the rename rules, or convert the value with transform={pattern: fn} "
    "(e.g. lambda w: w.T for a PyTorch nn.Linear weight, lambda x: x.astype(dtype))."
)


def _wanted(
    fn: str,
    t_flat: list[tuple[Any, Any]],
    names: list[str],
    stacks: Callable[[], Sequence[StackSite]],
    targets: Mapping[str, Any],
    sep: str,
    word: str,
) -> tuple[dict[int, tuple[Layers, list[Any], list[str]]], list[str], str]:
    """The names the source must have, and which template leaves it gives layer by layer.

    A leaf of a stacked field is read from its stacked name when the source has it, else
    from one name per layer when the source has any of those (then all are wanted), else
    it is reported missing under its stacked name.
    """
    hint = _HINT.format(word=word)
    if all(n in targets for n in names):  # nothing to number: no need to look for stacks
        return {}, names, hint
    sites = stacks()
    if not sites:
        return {}, names, hint
    per_layer = {}
    wanted = []
    example = None
    for i, (name, (key_path, _)) in enumerate(zip(names, t_flat)):
        layers = layers_of(sites, key_path)
        if layers is None:
            wanted.append(name)
            continue
        paths = layer_paths(key_path, layers)
        layer_names = [flat_name(p, sep) for p in paths]
        example = example or (name, layer_names[0] if layer_names else name)
        if name not in targets and any(n in targets for n in layer_names):
            per_layer[i] = (layers, paths, layer_names)
            wanted += layer_names
        else:
            wanted.append(name)
    twice = first_repeat(wanted)
    if twice is not None:
        raise ValueError(
            f"{fn}: the template has two leaves named {twice!r} once stacked fields are "
            f"numbered by layer; {ONE_NAME}"
        )
    if example is not None:
        hint += (
            f" A leaf of a stacked field is read from its stacked name ({example[0]!r}) "
            f"or from one name per layer ({example[1]!r}, ...)."
        )
    return per_layer, wanted, hint


def _no_transforms(name: str) -> list[Callable[[Any], Any]]:
    return []


def _label(path: tuple[Any, ...], need: _Need, word: str) -> str:
    where = show(keystr(path))
    if need.sources == (need.name,):
        return where
    return f"{where} ({word}'s {', '.join(map(repr, need.sources))})"


def _is_abstract(leaf: Any) -> bool:
    return isinstance(leaf, jax.ShapeDtypeStruct)


def import_leaves(
    fn: str,
    t_flat: list[tuple[Any, Any]],
    names: list[str],
    stacks: Callable[[], Sequence[StackSite]],
    sep: str,
    rules: Rules,
    strict: bool,
    on_mismatch: str,
    source: Source,
    what: str = "names",
    label: str | None = None,
    hint: str | None = None,
    fix: str = _FIX,
) -> list[Any]:
    """The template's leaves filled from `source` by the import rules, in `t_flat`'s order.

    Names are checked first (`strict`: a `ValueError` for names either side lacks),
    then each untransformed value's shape and dtype, all before any data is read;
    transformed values are checked once made. A leaf the source does not fill (a
    missing name with `strict=False`, a mismatch with `on_mismatch="skip"`) keeps the
    template's own value, and a `PartialLoadWarning` lists what was left out.
    """
    if on_mismatch not in _MISMATCH:
        raise ValueError(f"{fn}: on_mismatch must be 'error' or 'skip', not {on_mismatch!r}.")
    word = source.word
    targets = renamed(fn, source.names, rules, word)
    per_layer, wanted, name_hint = _wanted(fn, t_flat, names, stacks, targets, sep, word)
    missing, unexpected = check_names(
        fn, label or word, word, what, wanted, targets, strict, hint or name_hint
    )
    lacking = set(missing)
    plans: list[_Plan] = []
    kept: dict[int, str] = {}  # template leaf -> why it keeps the template's value
    for i, (name, (key_path, _)) in enumerate(zip(names, t_flat)):
        if i in per_layer:
            layers, layer_keys, layer_names = per_layer[i]
            pairs = list(zip(layer_names, layer_keys))
        else:
            layers, pairs = None, [(name, key_path)]
        if lacking and any(n in lacking for n, _ in pairs):
            kept[i] = "missing"
            continue
        transforms_of = rules.transforms_of if rules.transform else _no_transforms
        needs = [_Need(n, p, targets[n], transforms_of(n)) for n, p in pairs]
        plans.append(_Plan(i, needs, layers))
    skipped: list[str] = []

    def skip(e: ValueError, leaf: int) -> bool:
        """Whether `on_mismatch="skip"` keeps the template's value of `leaf` for `e`."""
        if on_mismatch == "skip" and isinstance(e, MismatchError):
            kept[leaf] = e.reason
            skipped.append(names[leaf])
            return True
        return False

    casts: dict[tuple[int, int], bool] = {}
    checked = []
    for plan in plans:
        key_path, leaf = t_flat[plan.leaf]
        row = leaf
        if plan.layers is not None:
            row = jax.ShapeDtypeStruct(tuple(leaf.shape[len(plan.layers.cuts) :]), leaf.dtype)
        try:
            for j, need in enumerate(plan.needs):
                if need.transforms:
                    continue  # checked once made
                if len(need.sources) != 1:
                    raise gather_error(fn, need.name, need.sources, word)
                got = source.offer(need.sources[0])
                try:  # the label only when it is needed (keystr costs, per leaf)
                    cast = check_leaf(fn, "", row, got, word, fix)
                except (ValueError, TypeError):
                    where = _label(need.path, need, word)
                    cast = check_leaf(fn, where, row, got, word, fix)
                if cast:
                    casts[plan.leaf, j] = True
        except ValueError as e:
            if skip(e, plan.leaf):
                continue
            raise
        checked.append(plan)
    plans = checked
    uses: dict[str, int] = {}
    for plan in plans:
        for need in plan.needs:
            for s in need.sources:
                uses[s] = uses.get(s, 0) + 1
    into, wholes = _destinations(plans, t_flat, source, uses)
    fetched = source.fetch(list(uses), into)
    given: set[str] = set()  # sources whose new memory a leaf took (the others copy it)
    out: list[Any] = [leaf for _, leaf in t_flat]
    paths, leaves, values, where_of = [], [], [], []
    for plan in plans:
        key_path, leaf = t_flat[plan.leaf]
        try:
            if plan.leaf in wholes:  # its layers were read in place: ready as it is
                value = Value(wholes[plan.leaf], True)
            else:
                value = _value_of(fn, plan, leaf, source, fetched, given, casts)
        except ValueError as e:
            if skip(e, plan.leaf):
                continue
            raise
        paths.append(keystr(key_path))
        leaves.append(leaf)
        values.append(value)
        where_of.append(plan.leaf)
    for i, placed in zip(where_of, place(fn, paths, leaves, values, word)):
        out[i] = placed
    if kept or (unexpected and not strict):
        _report(fn, t_flat, names, kept, unexpected, targets, word)
    return out


def _destinations(
    plans: list[_Plan], t_flat: list[tuple[Any, Any]], source: Source, uses: Mapping[str, int]
) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray]]:
    """New arrays for the leaves filled layer by layer from untransformed names used
    once, each layer's name to be read straight into its row: ({name: row}, {leaf
    index: array})."""
    into: dict[str, np.ndarray] = {}
    wholes: dict[int, np.ndarray] = {}
    for plan in plans:
        leaf = t_flat[plan.leaf][1]
        if plan.layers is None or not plan.needs or dtype_facts(leaf.dtype).is_key:
            continue
        dtype = np.dtype(leaf.dtype)
        if not all(
            not need.transforms
            and len(need.sources) == 1
            and uses[need.sources[0]] == 1
            and source.direct(need.sources[0], dtype)
            for need in plan.needs
        ):
            continue
        shape = tuple(leaf.shape)
        whole = aligned_empty(math.prod(shape) * dtype.itemsize).view(dtype).reshape(shape)
        rows = whole.reshape((len(plan.needs), *shape[len(plan.layers.cuts) :]))
        for need, row in zip(plan.needs, rows):
            into[need.sources[0]] = row
        wholes[plan.leaf] = whole
    return into, wholes


def _value_of(
    fn: str,
    plan: _Plan,
    leaf: Any,
    source: Source,
    fetched: Mapping[str, tuple[Any, bool]],
    given: set[str],
    casts: Mapping[tuple[int, int], bool],
) -> Value:
    if plan.layers is None:
        cast = bool(casts) and (plan.leaf, 0) in casts
        return _one(fn, plan.needs[0], leaf, source, fetched, given, cast)
    row_leaf = jax.ShapeDtypeStruct(tuple(leaf.shape[len(plan.layers.cuts) :]), leaf.dtype)
    parts = []
    for j, need in enumerate(plan.needs):
        data, _, cast = _one(fn, need, row_leaf, source, fetched, None, casts.get((plan.leaf, j)))
        if cast:
            data = as_template_number(
                fn, keystr(need.path), data, np.dtype(leaf.dtype), source.word
            )
        parts.append(data)
    if not parts:  # a stack of no layers
        return Value(np.empty(leaf.shape, np.dtype(leaf.dtype)), True)
    whole = stacked(parts, plan.layers.lengths)  # new memory, unless JAX's own
    return Value(whole, not isinstance(whole, jax.Array))


def _one(
    fn: str,
    need: _Need,
    leaf: Any,
    source: Source,
    fetched: Mapping[str, tuple[Any, bool]],
    given: set[str] | None,
    cast: bool | None,
) -> Value:
    """The value for one need: its source's (checked before reading), or the result of
    its transforms (checked now).

    A source read into new memory of its own is handed to the first leaf that takes it
    whole (`given` records it; None: a row copied into a stack takes nothing); the
    other leaves a tied name fills get copies (`place`), so no two leaves share memory."""
    if not need.transforms:
        src = need.sources[0]
        data, owned = fetched[src]
        if owned and given is not None and src not in given:
            given.add(src)
            return Value(data, True, bool(cast))
        return Value(data, False, bool(cast))
    parts = [fetched[s][0] for s in need.sources]
    data: Any = parts[0] if len(parts) == 1 else tuple(parts)
    for f in need.transforms:
        data = f(data)
    data, got = source.value(need.name, data)
    before = ", ".join(offered_str(source.offer(s)) for s in need.sources)
    if len(need.sources) > 1:
        before = f"({before})"
    where = _label(need.path, need, source.word)
    cast = check_leaf(fn, where, leaf, got, source.word, _FIX, before)
    return Value(data, False, cast)


def _report(
    fn: str,
    t_flat: list[tuple[Any, Any]],
    names: Sequence[str],
    kept: Mapping[int, str],
    unexpected: Sequence[str],
    targets: Mapping[str, tuple[str, ...]],
    word: str,
) -> None:
    """Refuse to keep an abstract template leaf; warn what a partial load left out."""
    for i in sorted(kept):
        key_path, leaf = t_flat[i]
        if _is_abstract(leaf):
            why = "it is missing from " + word if kept[i] == "missing" else kept[i]
            raise ValueError(
                f"{fn}: the template's leaf at {show(keystr(key_path))} is not loaded "
                f"({why}), and it is abstract ({leaf_str(leaf)}), so there is no value to "
                "keep. Pass a template with concrete values for the leaves the source does "
                "not fill (e.g. a freshly initialised model), or load only the part it fills: "
                "like=ptc.tree_filter(model, ...)."
            )
    missing = tuple(names[i] for i in sorted(kept) if kept[i] == "missing")
    mismatched = [i for i in sorted(kept) if kept[i] != "missing"]
    unused = tuple(dict.fromkeys(s for n in unexpected for s in targets[n]))
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing from {word}: {list_names(missing)}")
    if mismatched:
        shown = [f"{show(names[i])} ({kept[i]})" for i in mismatched]
        lines.append(f"{len(mismatched)} with another shape or dtype: {list_names(shown)}")
    if unused:
        lines.append(f"{len(unused)} of {word}'s names unused: {list_names(unused)}")
    left = len(missing) + len(mismatched)
    warnings.warn(
        PartialLoadWarning(
            f"{fn}: a partial load; {left} of the template's {len(t_flat)} leaves kept their "
            "own values.\n  " + "\n  ".join(lines),
            missing,
            tuple(names[i] for i in mismatched),
            unused,
        ),
        stacklevel=4,
    )


def leaf_str(leaf: Any) -> str:
    return describe(tuple(leaf.shape), dtype_facts(leaf.dtype).name)


def as_array(fn: str, what: str, value: Any) -> tuple[Any, Offered]:
    """(the value as an array or number, what it offers) for one value of a dict or one
    transform's result; anything else is a `TypeError` naming `what` and the fix."""
    if type(value) in NUMBERS:
        return value, Offered(np.asarray(value).dtype.name, (), type(value).__name__)
    if not isinstance(value, jax.Array | np.ndarray | np.generic):
        cls = type(value)
        foreign = cls.__module__.split(".")[0] == "torch" or hasattr(value, "__dlpack__")
        if not (foreign or hasattr(value, "__array__")):
            raise TypeError(
                f"{fn}: the value for {what} is a {cls.__name__}; values must be arrays "
                "(NumPy, JAX, or anything np.asarray accepts) or Python numbers."
            )
        try:
            value = np.asarray(value)
            if value.dtype.hasobject:
                raise TypeError("it gives an object array")
        except Exception as e:  # whatever the array library raises
            if cls.__module__.split(".")[0] == "torch":
                fix = (
                    "convert the tensors first, {k: jnp.from_dlpack(t.detach().cpu()) for "
                    "k, t in state_dict.items()} (every dtype, bfloat16 included), or load "
                    "the .safetensors file itself: ptc.tree_load(path, like=..., rename=...)"
                )
            elif hasattr(value, "__dlpack__"):
                fix = "convert it first with jnp.from_dlpack(value)"
            else:
                fix = "convert it to a NumPy or JAX array first"
            raise TypeError(
                f"{fn}: the value for {what} is a {cls.__module__}.{cls.__qualname__}, which "
                f"NumPy cannot read ({e}); values must be NumPy or JAX arrays or Python "
                f"numbers: {fix}."
            ) from None
    return value, Offered(dtype_facts(value.dtype).name, tuple(value.shape))


class DictSource:
    """A mapping's values as a `Source` (converted to arrays once, when first used)."""

    word = "the dict"

    def __init__(self, fn: str, flat: Mapping[str, Any]) -> None:
        self.fn = fn
        self.flat = flat
        self.names: list[str] = list(flat)
        self._seen: dict[str, tuple[Any, Offered]] = {}

    def _get(self, name: str) -> tuple[Any, Offered]:
        got = self._seen.get(name)
        if got is None:
            got = self._seen[name] = as_array(self.fn, repr(name), self.flat[name])
        return got

    def offer(self, name: str) -> Offered:
        return self._get(name)[1]

    def direct(self, name: str, dtype: np.dtype) -> bool:
        return False

    def fetch(
        self, names: Sequence[str], into: Mapping[str, np.ndarray]
    ) -> dict[str, tuple[Any, bool]]:
        return {n: (self._get(n)[0], False) for n in names}

    def value(self, name: str, data: Any) -> tuple[Any, Offered]:
        return as_array(self.fn, f"{name!r} (the result of its transform)", data)
