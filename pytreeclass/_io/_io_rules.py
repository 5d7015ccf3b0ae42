"""Rules between a tree's leaves and a flat, named collection of arrays, both ways.

`tree_to_dict` / `tree_save` (export) and `tree_from_dict` / `tree_load` (import, with
`_io_import`) share these:

* numbered layers: a leaf of a field declared `field(stack=...)` has a stacked name
  (`blocks.attn.w`) and one name per layer (`blocks.3.attn.w`, the layer index after
  the stacked field, as the lens `model.at.blocks[3].attn.w` spells it);
* rename rules: ordered `(pattern, replacement)` pairs applied with `re.sub`; `None`
  drops a name, a tuple of replacements sends one name to several (one tensor feeds
  several fields, or a tied field is filled from another name), and several names
  renamed to one are gathered (several fields written as one tensor);
* transform rules: `(pattern, fn)` pairs, `fn` applied to the value of each new name the
  pattern matches (`re.search`), in order; a gathered name's first transform receives
  the tuple of its values.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import SequenceKey

from .._stack import StackSite
from ._io_leaves import (
    flat_names,
)

__all__ = [
    "ONE_NAME",
    "Layers",
    "RuleSpec",
    "Rules",
    "compile_rules",
    "export_flat",
    "gather_error",
    "layer_paths",
    "layers_of",
    "renamed",
    "rows_of",
    "stacked",
]

ONE_NAME = "flat names must be unique. Rename a dict key, or pick another `sep`."
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


def renamed(fn: str, names: Iterable[Any], rules: Rules, word: str) -> dict[str, tuple[str, ...]]:
    """{new name: the source names it comes from}, in order of first appearance."""
    out: dict[str, list[str]] = {}
    for source in names:
        if not isinstance(source, str):
            raise TypeError(f"{fn}: {word}'s keys must be strings, not {source!r}.")
        for name in _new_names(source, rules) if rules.rename else (source,):
            out.setdefault(name, []).append(source)
    return {name: tuple(sources) for name, sources in out.items()}


def gather_error(fn: str, name: str, sources: Sequence[str], word: str) -> ValueError:
    return ValueError(
        f"{fn}: the names {sources[0]!r} and {sources[1]!r} of {word} are both renamed to "
        f"{name!r}; make the rename rules tell them apart, or write them as one tensor "
        "with a transform for that name, which receives their values as a tuple in "
        f"{word}'s order (e.g. transform={{{name!r}: lambda parts: np.concatenate(parts, "
        "-1)})."
    )


# -- numbered layers ----------------------------------------------------------------------------


class Layers(NamedTuple):
    """How a leaf below stacked fields splits into layers."""

    cuts: tuple[int, ...]  # where each enclosing stack's layer index goes in the key path
    lengths: tuple[int, ...]  # each enclosing stack's number of layers, outermost first


def layers_of(sites: Sequence[StackSite], path: tuple[Any, ...]) -> Layers | None:
    """The stacks enclosing the leaf at `path` (None when it is not below one)."""
    inside = [s for s in sites if path[: len(s.path)] == s.path]
    if not inside:
        return None
    return Layers(tuple(len(s.path) for s in inside), tuple(s.length for s in inside))


def layer_paths(path: tuple[Any, ...], layers: Layers) -> list[tuple[Any, ...]]:
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


def _rows(leaf: Any, layers: Layers) -> list[Any]:
    """The layers of a stacked leaf in the order of `layer_paths`."""
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
        layers = layers_of(sites, path)
        if layers is None:
            out.append((path, leaf))
        else:
            out += zip(layer_paths(path, layers), _rows(leaf, layers))
    return out


def stacked(parts: list[Any], lengths: tuple[int, ...]) -> Any:
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
    names = flat_names(fn, "the tree", flat, sep, ONE_NAME)
    if not (rules.rename or rules.transform):
        return {name: leaf for name, (_, leaf) in zip(names, flat)}
    leaf_of = {name: leaf for name, (_, leaf) in zip(names, flat)}
    out = {}
    for name, sources in renamed(fn, names, rules, "the tree").items():
        transforms = rules.transforms_of(name)
        if len(sources) > 1 and not transforms:
            raise gather_error(fn, name, sources, "the tree")
        value = leaf_of[sources[0]] if len(sources) == 1 else tuple(map(leaf_of.get, sources))
        for f in transforms:
            value = f(value)
        out[name] = value
    return out
