"""Hypothesis strategies: random nested trees of treeclasses, dicts, lists, tuples and None."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from pytreeclass import BatchStat, Parameter, Rng, field, treeclass


@treeclass
class Node:
    a: Any = field(kind=Parameter)
    b: Any = None
    tag: str = field(static=True, default="n")


@treeclass
class Stats:
    mean: Any = field(kind=BatchStat)
    key: Any = field(kind=Rng, default=None)


Pair = namedtuple("Pair", ["x", "y"])

leaves = st.one_of(
    st.integers(-5, 5),
    st.floats(-2, 2, allow_nan=False, width=32),
    st.builds(lambda n: jnp.arange(n, dtype=jnp.float32), st.integers(0, 3)),
    st.builds(lambda n: np.ones((n, 2), np.float32), st.integers(1, 2)),
)

_names = st.sampled_from(["a", "b", "w", "layers", "x"])


def containers(
    children: st.SearchStrategy[Any],
    names: st.SearchStrategy[str],
    *nodes: st.SearchStrategy[Any],
) -> st.SearchStrategy[Any]:
    """One level of nesting: a list, tuple, dict (keys from `names`), Node, `nodes`, Pair."""
    return st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(names, children, max_size=3),
        st.builds(Node, children, children, st.sampled_from(["n", "m"])),
        *nodes,
        st.builds(Pair, children, children),
    )


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return containers(children, _names, st.builds(Stats, children, children))


trees = st.recursive(st.one_of(leaves, st.none()), _extend, max_leaves=12)

filters = st.one_of(
    st.sampled_from([Parameter, BatchStat, Rng, jax.Array, np.ndarray, int, float, "a", "w", "x"]),
    st.just(lambda x: isinstance(x, (int, float)) and x > 0),
)


def snapshot(tree: Any) -> Any:
    """A deep, comparable copy of a tree's structure and leaf values (to prove no mutation)."""
    leaves_, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, [(type(x), np.asarray(x).tolist()) for x in leaves_]
