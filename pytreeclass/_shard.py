"""`tree_shardings`: logical axis names on fields -> `NamedSharding`s for a device mesh.

A field says what its array dimensions mean (`field(axes=("embed", "mlp"))`); rules say
how those logical names map onto a particular mesh (`{"embed": None, "mlp": "model"}`).
The model code never names mesh axes, so the same model runs on any mesh.

Which axes a leaf gets (`_leaf_facts.leaf_axes`): those of the NEAREST enclosing treeclass
field that sets `axes` (the innermost one). Unlike kinds, where the outermost field wins so that one declaration
can re-kind a whole submodule, axes describe the dimensions of particular arrays, which
the field closest to them knows best; an outer field's `axes` act as a default for leaves
whose own fields set none.

A field declared `field(stack="layers")` holds layers stacked along a leading axis: every
leaf below it gets "layers" PREPENDED to its axes (see `leaf_axes`), so a rule decides
whether the layer axis is replicated or sharded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax
from jax.sharding import NamedSharding, PartitionSpec

from ._leaf_facts import leaf_axes, leaf_paths
from ._tree_util import leaf_repr

T = TypeVar("T")
__all__ = ["tree_shardings"]

_RuleValue = str | tuple[str, ...] | None


def _normalize_rules(rules: Any, mesh: Any) -> dict[str, _RuleValue]:
    if isinstance(rules, Mapping):
        pairs = list(rules.items())
    elif isinstance(rules, Sequence) and not isinstance(rules, str):
        pairs = []
        for item in rules:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(
                    f"tree_shardings: rule {item!r} is not a (logical name, mesh axes) pair. "
                    "Pass a mapping {'mlp': 'model'} or a sequence of pairs [('mlp', 'model')]."
                )
            pairs.append(tuple(item))
    else:
        raise TypeError(
            f"tree_shardings: rules must be a mapping or a sequence of pairs, not "
            f"{type(rules).__name__}. Example: {{'embed': None, 'mlp': 'model'}}."
        )
    mesh_axes = tuple(mesh.axis_names)
    out: dict[str, _RuleValue] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(
                f"tree_shardings: logical axis {name!r} has two rules ({out[name]!r} and "
                f"{value!r}); give each logical name one rule."
            )
        targets = (value,) if isinstance(value, str) else value
        if targets is None:
            out[name] = None
            continue
        if not isinstance(targets, tuple) or not all(isinstance(t, str) for t in targets):
            raise TypeError(
                f"tree_shardings: the rule for {name!r} is {value!r}; it must be a mesh axis "
                "name, a tuple of mesh axis names, or None (replicated)."
            )
        for t in targets:
            if t not in mesh_axes:
                raise ValueError(
                    f"tree_shardings: the rule {name!r} -> {value!r} names mesh axis {t!r}, "
                    f"which the mesh does not have (mesh axes: {mesh_axes}). Fix the rule or "
                    "the mesh."
                )
        out[name] = value if isinstance(value, str) or len(targets) != 1 else targets[0]
    return out


def _spec(
    path: str, leaf: Any, axes: tuple[Any, ...], rules: dict[str, _RuleValue]
) -> PartitionSpec:
    ndim = len(leaf.shape)
    if axes[-1] is ...:  # stacked, with no axes of its own: None for the rest
        if ndim >= len(axes) - 1:
            axes = (*axes[:-1], *(None,) * (ndim - len(axes) + 1))
        else:
            raise ValueError(
                f"tree_shardings: the leaf at {path} is {leaf_repr(leaf)} ({ndim} dims) but it "
                f"sits in {len(axes) - 1} stacked field(s) ({axes[:-1]!r}), each of which "
                "needs a leading dimension. Build stacks with ptc.tree_stack."
            )
    if ndim != len(axes):
        raise ValueError(
            f"tree_shardings: the leaf at {path} is {leaf_repr(leaf)} ({ndim} dims) but its "
            f"field declares axes={axes!r} ({len(axes)} names). Give one logical name (or "
            "None) per dimension (the names of enclosing field(stack=...) axes come first "
            "and count too)."
        )
    entries: list[_RuleValue] = []
    used: dict[str, str] = {}
    for name in axes:
        if name is None:
            entries.append(None)
            continue
        if name not in rules:
            raise ValueError(
                f"tree_shardings: logical axis {name!r} of the leaf at {path} has no rule. "
                f"Add one, e.g. ({name!r}, 'model') or ({name!r}, None) to replicate; rules "
                f"given for: {sorted(rules)}."
            )
        target = rules[name]
        for t in (target,) if isinstance(target, str) else target or ():
            if t in used:
                raise ValueError(
                    f"tree_shardings: the leaf at {path} maps both {used[t]!r} and {name!r} "
                    f"to mesh axis {t!r} (axes={axes!r}); a mesh axis can shard one "
                    "dimension of an array. Change one of the rules."
                )
            used[t] = name
        entries.append(target)
    return PartitionSpec(*entries)


def tree_shardings(
    tree: T,
    mesh: jax.sharding.Mesh,
    rules: Mapping[str, str | tuple[str, ...] | None]
    | Sequence[tuple[str, str | tuple[str, ...] | None]],
) -> T:
    """A `jax.sharding.NamedSharding` for every leaf of `tree`, from the fields' `axes`.

    A leaf's axes come from the nearest enclosing treeclass field that sets `axes`;
    leaves with none, non-array leaves and 0-d arrays get `PartitionSpec()`
    (replicated). `tree` may be abstract (`jax.eval_shape`).

    Args:
        tree: any pytree.
        mesh: the `jax.sharding.Mesh` to shard over.
        rules: maps each logical axis name to a mesh axis name, a tuple of mesh axis
            names (one dimension split over several mesh axes), or `None` (replicated
            along it); a mapping or a sequence of `(name, value)` pairs.

    Returns:
        A tree with `tree`'s structure and a `NamedSharding` for every leaf, for
        `jax.device_put` and `jax.jit(in_shardings=..., out_shardings=...)`.

    Raises:
        ValueError: a logical name has no rule or two, a rule names a mesh axis the
            mesh lacks, a leaf's rank differs from its field's `axes`, or one mesh axis
            shards two dimensions of a leaf.
        TypeError: `rules` is not a mapping or a sequence of pairs, or a rule's value
            is not a mesh axis name, a tuple of them or `None`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Dense:
        ...     w: jax.Array = ptc.field(axes=("embed", "mlp"))
        ...     b: jax.Array
        >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
        >>> rules = {"embed": None, "mlp": "model"}
        >>> dense = Dense(jnp.ones((4, 8)), jnp.zeros(8))
        >>> s = ptc.tree_shardings(dense, mesh, rules)
        >>> P = jax.sharding.PartitionSpec
        >>> s.w.spec == P(None, "model"), s.b.spec == P()
        (True, True)
    """
    table = _normalize_rules(rules, mesh)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    axes = leaf_axes(tree, treedef)
    paths = None
    out = []
    replicated = NamedSharding(mesh, PartitionSpec())
    for i, (leaf, ax) in enumerate(zip(leaves, axes)):
        if ax is None or not hasattr(leaf, "shape") or len(leaf.shape) == 0:
            # Nothing to shard: Python numbers, and 0-d arrays (which `jax.eval_shape` and
            # `jax.jit` make of them) under an inherited `axes`, are replicated.
            out.append(replicated)
            continue
        if paths is None:
            paths = leaf_paths(tree, treedef)
        path = jax.tree_util.keystr(paths[i]) or "<root>"
        out.append(NamedSharding(mesh, _spec(path, leaf, ax, table)))
    return treedef.unflatten(out)
