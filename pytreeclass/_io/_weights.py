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

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import jax

from .._partition import tree_mask
from .._stack import find_stacks
from ._io_import import DictSource, import_leaves
from ._io_leaves import flat_names
from ._io_rules import RuleSpec, compile_rules, export_flat

__all__ = ["tree_from_dict", "tree_to_dict"]

T = TypeVar("T")

_ONE_NAME = "flat names must be unique. Rename a dict key, or pick another `sep`."


def _check_sep(fn: str, sep: Any) -> None:
    if not isinstance(sep, str) or not sep:
        raise ValueError(f"{fn}: sep must be a non-empty string, not {sep!r}.")


def tree_to_dict(
    tree: Any,
    /,
    *filters: Any,
    sep: str = ".",
    unstack: bool = False,
    rename: RuleSpec = None,
    transform: RuleSpec = None,
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

    `rename` and `transform` are export rules, spelled as `ptc.tree_from_dict`'s and
    applied from the tree's names to the dict's: ordered `(pattern, replacement)`
    rules (`re.sub`; `None` leaves a name out, as for a tied weight; a tuple of
    replacements writes one leaf under several names), then `(pattern, fn)` rules
    giving each new name's value. Several names renamed to one are written as one
    value: the first transform matching it receives their values as a tuple, in the
    tree's order (`lambda qkv: np.concatenate(qkv, -1)`).

    `ptc.tree_from_dict` is the inverse; `ptc.tree_save(path, tree)` with a
    `.safetensors` path writes these names (and takes the same rules).

    Args:
        tree: any pytree.
        *filters: select the leaves to include (all of them when none is given).
        sep: what joins the parts of a name.
        unstack: one entry per layer for the leaves of stacked fields.
        rename: ordered `(pattern, replacement)` rules from the tree's names to the
            dict's; `replacement` is a string or function as in `re.sub`, a tuple of
            them, or `None` to leave the name out.
        transform: ordered `(pattern, fn)` rules: `fn(value)` gives the value of each
            new name the pattern matches.

    Returns:
        A dict from each leaf's flat name to the leaf, in the order of the tree's
        leaves (with rules: in the order each new name first appears).

    Raises:
        ValueError: two leaves have the same flat name, several names are renamed to
            one without a transform to join them, or `sep` is not a non-empty string.
        TypeError: a rule is malformed.

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
        >>> list(ptc.tree_to_dict(net, unstack=True, rename={r"^blocks": "h"}))
        ['h.0.w', 'h.1.w']
    """
    fn = "tree_to_dict"
    _check_sep(fn, sep)
    rules = compile_rules(fn, rename, transform)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    if filters:
        keep = jax.tree_util.tree_leaves(tree_mask(tree, *filters))
        flat = [pair for pair, k in zip(flat, keep) if k]
    sites = find_stacks(tree, fn, skip_empty=True) if unstack else ()
    return export_flat(fn, flat, sites, sep, unstack, rules)


def tree_from_dict(
    flat: Mapping[str, Any],
    /,
    *,
    like: T,
    rename: RuleSpec = None,
    transform: RuleSpec = None,
    strict: bool = True,
    on_mismatch: Literal["error", "skip"] = "error",
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
    before; a replacement of `None` drops the names its pattern matches, and a tuple of
    replacements gives the value to several names (one tensor feeds several fields, or
    a tied field is filled from another name). Then each value whose new name matches
    a pattern of `transform` (`(pattern, fn)` pairs or a dict, `re.search`, every
    matching one in order) is replaced by `fn(value)`. Several names renamed to one are
    gathered: the first transform of that name receives their values as a tuple, in
    the dict's order. `ptc.tree_to_dict` takes the same rules the other way.

    The same checks as `tree_load` follow, before any value is used: a `ValueError`
    giving the counts of the template's names the dict lacks and of the names it has
    that the template does not, with at most 10 of each and their closest matches; a
    shape or dtype mismatch names the leaf and the dict's name for it (and, after a
    transform, both shapes). With `strict=False` the names both have are loaded and
    the template's other leaves keep their values; with `on_mismatch="skip"` so do the
    leaves whose value has another shape or dtype (a new head); either way a
    `ptc.PartialLoadWarning` lists what was left out. Leaves come back as the template holds them: a `jax.Array` or
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
            `replacement` is a string or function as in `re.sub`, a tuple of them
            (one name to several), or `None` to drop.
        transform: ordered `(pattern, fn)` rules: `fn(value)` replaces the value of
            each (renamed) name the pattern matches.
        strict: whether names either side lacks are an error (else a partial load).
        on_mismatch: `"error"`, or `"skip"` to keep the template's leaf where the
            dict's value has another shape or dtype.
        sep: what joins the parts of the template's flat names.

    Returns:
        A tree with `like`'s structure and the dict's values.

    Raises:
        ValueError: with `strict`, names are missing or unexpected; a shape or dtype
            differs from the template (unless skipped); two names are renamed to one
            without a transform to join them; a Python number does not fit the
            template's dtype; a leaf a partial load leaves out is abstract (no value
            to keep); a pattern is not a valid regular expression; or `sep` is not a
            non-empty string.
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
    rules = compile_rules(fn, rename, transform)
    t_flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = flat_names(fn, "the template", t_flat, sep, _ONE_NAME)
    source = DictSource(fn, flat)
    leaves = import_leaves(
        fn,
        t_flat,
        names,
        lambda: find_stacks(like, fn, skip_empty=True),
        sep,
        rules,
        strict,
        on_mismatch,
        source,
    )
    return treedef.unflatten(leaves)
