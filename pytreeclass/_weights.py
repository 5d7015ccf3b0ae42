"""`tree_to_dict` / `tree_from_dict`: a tree's leaves as a flat `{name: array}` dict, and back.

Pretrained weights arrive as flat name -> array mappings (PyTorch / Hugging Face state
dicts, `.safetensors` files, Flax's `traverse_util.flatten_dict`). The flat name of a leaf
is its key path joined by a separator: field names, dict keys and list indices
(`layers.0.w`), the names `tree_save` gives tensors in a `.safetensors` file.
`tree_from_dict` fills a template with the same checks as `tree_load`, after optional
renaming (ordered regex rules) and per-name transforms (e.g. transposing PyTorch
`Linear` weights).

A field declared `field(stack=...)` holds its layers in one array per leaf. State dicts
number layers instead (`blocks.3.attn.w`), so the leaf `blocks.attn.w` has two spellings:
its stacked name, or one name per layer (the layer index inserted right after the
stacked field, as the lens `model.at.blocks[3].attn.w` spells it). `tree_to_dict(...,
unstack=True)` writes the second; `tree_from_dict` reads either.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import SequenceKey

from ._io_leaves import (
    NUMBERS,
    Offered,
    Value,
    as_template_number,
    check_leaf,
    check_names,
    dtype_facts,
    first_repeat,
    flat_name,
    flat_names,
    keystr,
    place,
    show,
)
from ._partition import tree_mask
from ._stack import StackSite, find_stacks

__all__ = ["tree_from_dict", "tree_to_dict"]

T = TypeVar("T")

_ONE_NAME = "flat names must be unique. Rename a dict key, or pick another `sep`."
_HINT = (
    "Map the dict's names onto the template's with rename=[(pattern, replacement), ...], "
    "or pass strict=False to ignore names the template does not have."
)
_FIX = (
    "Fix the rename rules, or convert the value with transform={pattern: fn} "
    "(e.g. lambda w: w.T for a PyTorch Linear weight, lambda x: x.astype(dtype))."
)


def _check_sep(fn: str, sep: Any) -> None:
    if not isinstance(sep, str) or not sep:
        raise ValueError(f"{fn}: sep must be a non-empty string, not {sep!r}.")


# -- stacked fields: one name per layer ---------------------------------------------------------


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
    if not hasattr(leaf, "reshape"):  # an abstract leaf (jax.ShapeDtypeStruct)
        row = jax.ShapeDtypeStruct(tuple(leaf.shape[k:]), leaf.dtype)
        return [row] * int(np.prod(layers.lengths))
    return list(leaf.reshape((-1, *leaf.shape[k:])))


def _unstacked(flat: list[tuple[Any, Any]], sites: Sequence[StackSite]) -> list[tuple[Any, Any]]:
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


def tree_to_dict(
    tree: Any, /, *filters: Any, sep: str = ".", unstack: bool = False
) -> dict[str, Any]:
    """The leaves of `tree` as a flat dict keyed by their flat names.

    A flat name joins the leaf's key path with `sep`: field and attribute names, dict
    keys and list/tuple indices (`{"layers.0.w": ...}`), in the order of
    `jax.tree_util.tree_flatten`. With `filters` (as in `ptc.tree_mask`: kinds, types,
    names, masks, ...), only the leaves they select. Values are the leaves themselves,
    never copied; `None` holes hold no leaves. Two leaves with the same flat name (a dict
    key containing `sep`, or `{"0": ...}` beside `[...]`) are a `ValueError`.

    With `unstack=True`, each leaf of a field declared `field(stack=...)` becomes one
    entry per layer, named with the layer index after the stacked field
    (`blocks.3.attn.w` for row 3 of `blocks.attn.w`), as PyTorch state dicts number
    layers; the values are the rows (views of NumPy leaves, new arrays for JAX ones).

    `ptc.tree_from_dict` is the inverse; `ptc.tree_save(path, tree)` with a
    `.safetensors` path writes these names.

    Args:
        tree: any pytree.
        *filters: select the leaves to include (all of them when none is given).
        sep: what joins the parts of a name.
        unstack: one entry per layer for the leaves of stacked fields.

    Returns:
        A dict from each leaf's flat name to the leaf, in the order of the tree's
        leaves.

    Raises:
        ValueError: two leaves have the same flat name, or `sep` is not a non-empty
            string.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> tree = {"layers": [{"w": jnp.ones(2)}], "step": 3}
        >>> ptc.tree_to_dict(tree)
        {'layers.0.w': Array([1., 1.], dtype=float32), 'step': 3}
        >>> list(ptc.tree_to_dict(tree, jnp.ndarray, sep="/"))
        ['layers/0/w']

        >>> @ptc.treeclass
        ... class Net:
        ...     blocks: dict = ptc.field(stack="layers")
        >>> net = Net(ptc.tree_stack([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}]))
        >>> list(ptc.tree_to_dict(net)), list(ptc.tree_to_dict(net, unstack=True))
        (['blocks.w'], ['blocks.0.w', 'blocks.1.w'])
    """
    _check_sep("tree_to_dict", sep)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    if filters:
        keep = jax.tree_util.tree_leaves(tree_mask(tree, *filters))
        flat = [pair for pair, k in zip(flat, keep) if k]
    if unstack:
        flat = _unstacked(flat, find_stacks(tree, "tree_to_dict"))
    names = flat_names("tree_to_dict", "the tree", flat, sep, _ONE_NAME)
    return {name: leaf for name, (_, leaf) in zip(names, flat)}


def _rules(fn: str, what: str, rules: Any) -> list[tuple[re.Pattern[str], Any]]:
    """Ordered (compiled pattern, replacement) pairs from a mapping or pairs."""
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


_RULE_VALUE = {"rename": "replacement or None", "transform": "function"}


def _renamed(fn: str, flat: Mapping[str, Any], rename: Any) -> dict[str, str]:
    """{new name: source name}: every rule applied in order (a None replacement drops)."""
    rules = _rules(fn, "rename", rename)
    for pattern, repl in rules:
        if repl is not None and not isinstance(repl, str) and not callable(repl):
            raise TypeError(
                f"{fn}: the replacement for rename pattern {pattern.pattern!r} must be a "
                f"string, a function of the match, or None (drop the name), not {repl!r}."
            )
    out: dict[str, str] = {}
    for source in flat:
        if not isinstance(source, str):
            raise TypeError(f"{fn}: the dict's keys must be strings, not {source!r}.")
        name: str | None = source
        for pattern, repl in rules:
            if repl is None:
                if pattern.search(name):
                    name = None
                    break
            else:
                name = pattern.sub(repl, name)
        if name is None:
            continue
        if name in out:
            raise ValueError(
                f"{fn}: the names {out[name]!r} and {source!r} of the dict are both renamed "
                f"to {name!r}; make the rename rules tell them apart."
            )
        out[name] = source
    return out


def _offered(fn: str, source: str, value: Any) -> tuple[Any, Offered]:
    """(the value as an array or number, what it offers) for one dict value."""
    if type(value) in NUMBERS:
        return value, Offered(np.asarray(value).dtype.name, (), type(value).__name__)
    if not isinstance(value, jax.Array | np.ndarray | np.generic):
        if not hasattr(value, "__array__"):
            raise TypeError(
                f"{fn}: the value for {source!r} is a {type(value).__name__}; values must "
                "be arrays (NumPy, JAX, or anything np.asarray accepts) or Python numbers."
            )
        value = np.asarray(value)
    return value, Offered(dtype_facts(value.dtype).name, tuple(value.shape))


def tree_from_dict(
    flat: Mapping[str, Any],
    /,
    *,
    like: T,
    rename: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
    transform: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
    strict: bool = True,
    sep: str = ".",
) -> T:
    """A tree shaped like the template `like`, its leaves taken from a flat dict by name.

    Each template leaf is looked up under its flat name (as `ptc.tree_to_dict` makes
    them with this `sep`: `layers.0.w`, so numbered layers fill a list of layers). A
    leaf of a field declared `field(stack=...)` is found under its stacked name
    (`blocks.attn.w`) or, when the dict has none, assembled from one name per layer
    (`blocks.0.attn.w`, `blocks.1.attn.w`, ...: numbered layers fill a stack). Before
    the lookup, the dict's names go through `rename`: ordered `(pattern, replacement)`
    pairs (or a dict of them), each applied with `re.sub` to the result of the one
    before; a replacement of `None` drops the names its pattern matches. Then each value
    whose new name matches a pattern of `transform` (`(pattern, fn)` pairs or a dict,
    `re.search`, every matching one in order) is replaced by `fn(value)`.

    The same checks as `tree_load` follow, before any value is used: a `ValueError`
    listing the template's names the dict lacks and (unless `strict=False`) the names
    it has that the template does not; a shape or dtype mismatch names the leaf and the
    dict's name for it. Leaves come back as the template holds them: a `jax.Array` or
    `jax.ShapeDtypeStruct` template leaf gives a `jax.Array` (on its `sharding`, one
    batched transfer for all), a NumPy one a NumPy copy, a Python number a Python number.
    To fill part of a model, pass part of it (`ptc.tree_filter(model, ptc.Parameter)`)
    and `ptc.tree_merge` the result back.

    Args:
        flat: a mapping from names to arrays (NumPy, JAX, or anything `np.asarray`
            takes) or Python numbers, e.g. a PyTorch state dict or
            `safetensors.numpy.load_file(path)`.
        like: the template: a tree whose leaves are arrays, `jax.ShapeDtypeStruct`s
            or Python numbers (their values are ignored), e.g. `jax.eval_shape(init,
            key)`.
        rename: ordered `(pattern, replacement)` rules for the dict's names;
            `replacement` is a string or function as in `re.sub`, or `None` to drop.
        transform: ordered `(pattern, fn)` rules: `fn(value)` replaces the value of
            each (renamed) name the pattern matches.
        strict: whether names the template does not have are an error.
        sep: what joins the parts of the template's flat names.

    Returns:
        A tree with `like`'s structure and the dict's values.

    Raises:
        ValueError: names are missing (or, with `strict`, unexpected), a shape or
            dtype differs from the template, two names are renamed to one, a Python
            number does not fit the template's dtype, a pattern is not a valid
            regular expression, or `sep` is not a non-empty string.
        TypeError: `flat` is not a mapping of strings, a value is not an array or
            number, a rule is malformed, or a template leaf is not an array,
            `ShapeDtypeStruct` or number.

    Examples:
        >>> import numpy as np
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> like = {"layers": [{"w": jnp.zeros((2, 3))}]}
        >>> state = {"model.h.0.weight": np.ones((3, 2), np.float32)}
        >>> tree = ptc.tree_from_dict(
        ...     state,
        ...     like=like,
        ...     rename=[(r"^model\\.h\\.", "layers."), (r"weight$", "w")],
        ...     transform={r"\\.w$": lambda w: w.T},
        ... )
        >>> tree["layers"][0]["w"].shape
        (2, 3)
    """
    fn = "tree_from_dict"
    _check_sep(fn, sep)
    if not isinstance(flat, Mapping):
        raise TypeError(f"{fn}: expected a mapping of names to arrays, got {type(flat).__name__}.")
    sources = _renamed(fn, flat, rename)
    transforms = _rules(fn, "transform", transform)
    for pattern, f in transforms:
        if not callable(f):
            raise TypeError(
                f"{fn}: the transform for pattern {pattern.pattern!r} must be a function, "
                f"not {f!r}."
            )
    t_flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = flat_names(fn, "the template", t_flat, sep, _ONE_NAME)
    per_layer, wanted, hint = _wanted(fn, like, t_flat, names, sources, sep)
    check_names(fn, "the dict", "the dict", "names", wanted, sources, strict, hint)

    def value_for(name: str, key_path: tuple[Any, ...], leaf: Any) -> Value:
        source = sources[name]
        value = flat[source]
        for pattern, f in transforms:
            if pattern.search(name):
                value = f(value)
        value, got = _offered(fn, source, value)
        where = keystr(key_path)
        label = f"{show(where)} (the dict's {source!r})" if source != name else show(where)
        return Value(value, False, check_leaf(fn, label, leaf, got, "the dict", _FIX))

    paths, leaves, values = [], [], []
    for i, (name, (key_path, leaf)) in enumerate(zip(names, t_flat)):
        if i in per_layer:
            layers, layer_paths, layer_names = per_layer[i]
            row = jax.ShapeDtypeStruct(tuple(leaf.shape[len(layers.cuts) :]), leaf.dtype)
            parts = []
            for p, n in zip(layer_paths, layer_names):
                data, _, cast = value_for(n, p, row)
                if cast:
                    data = as_template_number(fn, keystr(p), data, np.dtype(leaf.dtype), "the dict")
                parts.append(data)
            stacked = _stacked(parts, layers.lengths)  # new memory, unless JAX's own
            value = Value(stacked, not isinstance(stacked, jax.Array))
        else:
            value = value_for(name, key_path, leaf)
        paths.append(keystr(key_path))
        leaves.append(leaf)
        values.append(value)
    return treedef.unflatten(place(fn, paths, leaves, values, "the dict"))


def _wanted(
    fn: str,
    like: Any,
    t_flat: list[tuple[Any, Any]],
    names: list[str],
    sources: Mapping[str, str],
    sep: str,
) -> tuple[dict[int, tuple[_Layers, list[Any], list[str]]], list[str], str]:
    """The names the dict must have, and which template leaves it gives layer by layer.

    A leaf of a stacked field is read from its stacked name when the dict has it, else
    from one name per layer when the dict has any of those (then all are wanted), else it
    is reported missing under its stacked name.
    """
    sites = find_stacks(like, fn)
    if not sites:
        return {}, names, _HINT
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
        example = example or (name, layer_names[0])
        if name not in sources and any(n in sources for n in layer_names):
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
    assert example is not None  # a stack has leaves (find_stacks checks)
    hint = (
        f"{_HINT} A leaf of a stacked field is read from its stacked name "
        f"({example[0]!r}) or from one name per layer ({example[1]!r}, ...)."
    )
    return per_layer, wanted, hint
