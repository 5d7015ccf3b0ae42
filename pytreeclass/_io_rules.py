"""Rules between a tree's leaves and a flat, named collection of arrays, both ways.

`tree_to_dict` / `tree_save` (export) and `tree_from_dict` / `tree_load` (import) share
one engine, kept here:

* numbered layers: a leaf of a field declared `field(stack=...)` has a stacked name
  (`blocks.attn.w`) and one name per layer (`blocks.3.attn.w`, the layer index after
  the stacked field, as the lens `model.at.blocks[3].attn.w` spells it);
* rename rules: ordered `(pattern, replacement)` pairs applied with `re.sub`; `None`
  drops a name, a tuple of replacements sends one name to several (one tensor feeds
  several fields, or a tied field is filled from another name), and several names
  renamed to one are gathered (several fields written as one tensor);
* transform rules: `(pattern, fn)` pairs, `fn` applied to the value of each new name the
  pattern matches (`re.search`), in order; a gathered name's first transform receives
  the tuple of its values;
* the import plan: which source names fill which template leaves, checked (names, then
  shapes and dtypes) before any data is read, with partial loads (`strict=False`,
  `on_mismatch="skip"`) reported by a `PartialLoadWarning`.

Sources are abstract (`Source`): a dict's values, or a file's tensors, which `tree_load`
reads straight into the arrays it returns (the layers of a stacked leaf into one array).
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import SequenceKey

from ._errors import PartialLoadWarning
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
    flat_names,
    keystr,
    list_names,
    offered_str,
    place,
    show,
)
from ._stack import StackSite

__all__ = [
    "DictSource",
    "RuleSpec",
    "Rules",
    "Source",
    "as_array",
    "compile_rules",
    "export_flat",
    "import_leaves",
    "rows_of",
]

_ONE_NAME = "flat names must be unique. Rename a dict key, or pick another `sep`."
_MISMATCH = ("error", "skip")
RuleSpec = Mapping[str, Any] | Iterable[tuple[str, Any]] | None


# -- rules --------------------------------------------------------------------------------------


class Rules(NamedTuple):
    rename: list[tuple[re.Pattern[str], Any]]
    transform: list[tuple[re.Pattern[str], Callable[[Any], Any]]]

    def transforms_of(self, name: str) -> list[Callable[[Any], Any]]:
        return [f for pattern, f in self.transform if pattern.search(name)]


_RULE_VALUE = {"rename": "replacement or None", "transform": "function"}


def _pairs(fn: str, what: str, rules: RuleSpec) -> list[tuple[re.Pattern[str], Any]]:
    """Ordered (compiled pattern, value) pairs from a mapping or pairs."""
    if rules is None:
        return []
    pairs = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    out = []
    for rule in pairs:
        if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
            raise TypeError(
                f"{fn}: each {what} rule is a (pattern, {_RULE_VALUE[what]}) pair, got {rule!r}."
            )
        try:
            pattern = re.compile(rule[0])
        except re.error as e:
            raise ValueError(
                f"{fn}: the {what} pattern {rule[0]!r} is not a valid regular expression ({e})."
            ) from None
        out.append((pattern, rule[1]))
    return out


def _is_replacement(r: Any) -> bool:
    return isinstance(r, str) or callable(r)


def compile_rules(fn: str, rename: RuleSpec, transform: RuleSpec) -> Rules:
    """Check and compile the `rename=` and `transform=` arguments of `fn`."""
    renames = _pairs(fn, "rename", rename)
    for pattern, repl in renames:
        ok = repl is None or _is_replacement(repl)
        ok = ok or (isinstance(repl, tuple) and repl != () and all(map(_is_replacement, repl)))
        if not ok:
            raise TypeError(
                f"{fn}: the replacement for rename pattern {pattern.pattern!r} must be a "
                "string or a function of the match (as in re.sub), a tuple of them (one "
                f"name to several), or None (drop the name), not {repl!r}."
            )
    transforms = _pairs(fn, "transform", transform)
    for pattern, f in transforms:
        if not callable(f):
            raise TypeError(
                f"{fn}: the transform for pattern {pattern.pattern!r} must be a function, "
                f"not {f!r}."
            )
    return Rules(renames, transforms)


def _new_names(name: str, rules: Rules) -> list[str]:
    """What the rename rules make of one name: none (dropped), one, or several."""
    names = [name]
    for pattern, repl in rules.rename:
        out = []
        for n in names:
            if repl is None:
                if not pattern.search(n):
                    out.append(n)
            elif isinstance(repl, tuple):
                if pattern.search(n):
                    out += [pattern.sub(r, n) for r in repl]
                else:
                    out.append(n)
            else:
                out.append(pattern.sub(repl, n))
        names = out
    return names


def _renamed(fn: str, names: Iterable[Any], rules: Rules, word: str) -> dict[str, tuple[str, ...]]:
    """{new name: the source names it comes from}, in order of first appearance."""
    out: dict[str, list[str]] = {}
    for source in names:
        if not isinstance(source, str):
            raise TypeError(f"{fn}: {word}'s keys must be strings, not {source!r}.")
        for name in _new_names(source, rules) if rules.rename else (source,):
            out.setdefault(name, []).append(source)
    return {name: tuple(sources) for name, sources in out.items()}


def _gather_error(fn: str, name: str, sources: Sequence[str], word: str) -> ValueError:
    return ValueError(
        f"{fn}: the names {sources[0]!r} and {sources[1]!r} of {word} are both renamed to "
        f"{name!r}; make the rename rules tell them apart, or write them as one tensor "
        "with a transform for that name, which receives their values as a tuple in "
        f"{word}'s order (e.g. transform={{{name!r}: lambda parts: np.concatenate(parts, "
        "-1)})."
    )


# -- numbered layers ----------------------------------------------------------------------------


class _Layers(NamedTuple):
    """How a leaf below stacked fields splits into layers."""

    cuts: tuple[int, ...]  # where each enclosing stack's layer index goes in the key path
    lengths: tuple[int, ...]  # each enclosing stack's number of layers, outermost first


def _layers_of(sites: Sequence[StackSite], path: tuple[Any, ...]) -> _Layers | None:
    """The stacks enclosing the leaf at `path` (None when it is not below one)."""
    inside = [s for s in sites if path[: len(s.path)] == s.path]
    if not inside:
        return None
    return _Layers(tuple(len(s.path) for s in inside), tuple(s.length for s in inside))


def _layer_paths(path: tuple[Any, ...], layers: _Layers) -> list[tuple[Any, ...]]:
    """The key path of each layer of a stacked leaf, its layer indices inserted after
    the stacked fields: `.blocks.attn.w` -> `.blocks[0].attn.w`, `.blocks[1].attn.w`, ..."""
    out = []
    for idx in itertools.product(*map(range, layers.lengths)):
        parts: list[Any] = []
        start = 0
        for cut, i in zip(layers.cuts, idx):
            parts += path[start:cut]
            parts.append(SequenceKey(i))
            start = cut
        out.append((*parts, *path[start:]))
    return out


def _rows(leaf: Any, layers: _Layers) -> list[Any]:
    """The layers of a stacked leaf in the order of `_layer_paths`."""
    k = len(layers.lengths)
    n = math.prod(layers.lengths)
    if not hasattr(leaf, "reshape"):  # an abstract leaf (jax.ShapeDtypeStruct)
        return [jax.ShapeDtypeStruct(tuple(leaf.shape[k:]), leaf.dtype)] * n
    # The number of rows, not -1: a zero-size leaf cannot infer it.
    return list(leaf.reshape((n, *leaf.shape[k:])))


def rows_of(flat: list[tuple[Any, Any]], sites: Sequence[StackSite]) -> list[tuple[Any, Any]]:
    """`(path, leaf)` pairs with each stacked leaf replaced by one pair per layer."""
    out = []
    for path, leaf in flat:
        layers = _layers_of(sites, path)
        if layers is None:
            out.append((path, leaf))
        else:
            out += zip(_layer_paths(path, layers), _rows(leaf, layers))
    return out


def _stacked(parts: list[Any], lengths: tuple[int, ...]) -> Any:
    """One array from the layers of a stacked leaf (row-major over nested stacks)."""
    if all(isinstance(p, jax.Array) for p in parts):
        out = jnp.stack(parts)
    else:
        out = np.stack([np.asarray(p) for p in parts])
    return out.reshape((*lengths, *out.shape[1:]))


# -- export -------------------------------------------------------------------------------------


def export_flat(
    fn: str,
    flat: list[tuple[Any, Any]],
    sites: Sequence[StackSite],
    sep: str,
    unstack: bool,
    rules: Rules,
) -> dict[str, Any]:
    """`{name: value}` for the (key path, leaf) pairs of a tree, by the export rules:
    numbered layers (`unstack`), then renames (from the tree's names to the new ones),
    then transforms of the values. Without rules the values are the leaves themselves."""
    if unstack:
        flat = rows_of(flat, sites)
    names = flat_names(fn, "the tree", flat, sep, _ONE_NAME)
    if not (rules.rename or rules.transform):
        return {name: leaf for name, (_, leaf) in zip(names, flat)}
    leaf_of = {name: leaf for name, (_, leaf) in zip(names, flat)}
    out = {}
    for name, sources in _renamed(fn, names, rules, "the tree").items():
        transforms = rules.transforms_of(name)
        if len(sources) > 1 and not transforms:
            raise _gather_error(fn, name, sources, "the tree")
        value = leaf_of[sources[0]] if len(sources) == 1 else tuple(map(leaf_of.get, sources))
        for f in transforms:
            value = f(value)
        out[name] = value
    return out


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
    layers: _Layers | None  # set when the leaf is filled layer by layer


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
) -> tuple[dict[int, tuple[_Layers, list[Any], list[str]]], list[str], str]:
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
        layers = _layers_of(sites, key_path)
        if layers is None:
            wanted.append(name)
            continue
        layer_paths = _layer_paths(key_path, layers)
        layer_names = [flat_name(p, sep) for p in layer_paths]
        example = example or (name, layer_names[0] if layer_names else name)
        if name not in targets and any(n in targets for n in layer_names):
            per_layer[i] = (layers, layer_paths, layer_names)
            wanted += layer_names
        else:
            wanted.append(name)
    twice = first_repeat(wanted)
    if twice is not None:
        raise ValueError(
            f"{fn}: the template has two leaves named {twice!r} once stacked fields are "
            f"numbered by layer; {_ONE_NAME}"
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
    targets = _renamed(fn, source.names, rules, word)
    per_layer, wanted, name_hint = _wanted(fn, t_flat, names, stacks, targets, sep, word)
    missing, unexpected = check_names(
        fn, label or word, word, what, wanted, targets, strict, hint or name_hint
    )
    lacking = set(missing)
    plans: list[_Plan] = []
    kept: dict[int, str] = {}  # template leaf -> why it keeps the template's value
    for i, (name, (key_path, _)) in enumerate(zip(names, t_flat)):
        if i in per_layer:
            layers, layer_paths, layer_names = per_layer[i]
            pairs = list(zip(layer_names, layer_paths))
        else:
            layers, pairs = None, [(name, key_path)]
        if lacking and any(n in lacking for n, _ in pairs):
            kept[i] = "missing"
            continue
        transforms_of = rules.transforms_of if rules.transform else _no_transforms
        needs = [_Need(n, p, targets[n], transforms_of(n)) for n, p in pairs]
        plans.append(_Plan(i, needs, layers))
    skipped: list[str] = []
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
                    raise _gather_error(fn, need.name, need.sources, word)
                got = source.offer(need.sources[0])
                try:  # the label only when it is needed (keystr costs, per leaf)
                    cast = check_leaf(fn, "", row, got, word, fix)
                except (ValueError, TypeError):
                    where = _label(need.path, need, word)
                    cast = check_leaf(fn, where, row, got, word, fix)
                if cast:
                    casts[plan.leaf, j] = True
        except ValueError as e:
            if on_mismatch == "skip" and isinstance(e, MismatchError):
                kept[plan.leaf] = e.reason
                skipped.append(names[plan.leaf])
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
    out: list[Any] = [leaf for _, leaf in t_flat]
    paths, leaves, values, where_of = [], [], [], []
    for plan in plans:
        key_path, leaf = t_flat[plan.leaf]
        try:
            if plan.leaf in wholes:  # its layers were read in place: ready as it is
                value = Value(wholes[plan.leaf], True)
            else:
                value = _value_of(fn, plan, leaf, source, fetched, uses, casts)
        except ValueError as e:
            if on_mismatch == "skip" and isinstance(e, MismatchError):
                kept[plan.leaf] = e.reason
                skipped.append(names[plan.leaf])
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
    uses: Mapping[str, int],
    casts: Mapping[tuple[int, int], bool],
) -> Value:
    if plan.layers is None:
        cast = bool(casts) and (plan.leaf, 0) in casts
        return _one(fn, plan.needs[0], leaf, source, fetched, uses, cast)
    row_leaf = jax.ShapeDtypeStruct(tuple(leaf.shape[len(plan.layers.cuts) :]), leaf.dtype)
    parts = []
    for j, need in enumerate(plan.needs):
        data, _, cast = _one(fn, need, row_leaf, source, fetched, uses, casts.get((plan.leaf, j)))
        if cast:
            data = as_template_number(
                fn, keystr(need.path), data, np.dtype(leaf.dtype), source.word
            )
        parts.append(data)
    if not parts:  # a stack of no layers
        return Value(np.empty(leaf.shape, np.dtype(leaf.dtype)), True)
    stacked = _stacked(parts, plan.layers.lengths)  # new memory, unless JAX's own
    return Value(stacked, not isinstance(stacked, jax.Array))


def _one(
    fn: str,
    need: _Need,
    leaf: Any,
    source: Source,
    fetched: Mapping[str, tuple[Any, bool]],
    uses: Mapping[str, int],
    cast: bool | None,
) -> Value:
    """The value for one need: its source's (checked before reading), or the result of
    its transforms (checked now)."""
    if not need.transforms:
        data, owned = fetched[need.sources[0]]
        return Value(data, owned and uses[need.sources[0]] == 1, bool(cast))
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
