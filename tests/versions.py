"""What the installed JAX and peers do, for the tests whose expectations depend on it.

`.ci/run` runs the suite on Python 3.10 with the jax floor (0.4.36, flax 0.10) and on
Python 3.13 with the newest jax, beside the main 3.11 environment. Where those differ, a
test asks one of the facts below (each is probed, not read off a version number) and asserts
what that version does; it is never skipped just for being on another version.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import pytest


def _jax_flatten_recurses() -> bool:
    """True if JAX's flatten recurses on the C stack and so fails past the recursion limit.

    jax/jaxlib up to 0.10 raise (a `RecursionError`, or a `SystemError` caused by one) on a
    list nested deeper than `sys.getrecursionlimit()`; 0.12 walks it without a limit. Where
    it does not fail, pytreeclass's functions work on such trees too, except those whose own
    walk recurses once per level (see `tests/test_scale.py`).
    """
    tree: Any = 0.5
    for _ in range(sys.getrecursionlimit() + 50):
        tree = [tree, 1.0]
    try:
        jax.tree_util.tree_flatten(tree)
    except (RecursionError, SystemError):
        return True
    return False


JAX_FLATTEN_RECURSES = _jax_flatten_recurses()


def _nnx_variables_are_nodes() -> bool:
    """True if flax.nnx `Variable`s and `Module`s are pytree nodes (flax 0.11 and later).

    In flax 0.10, the newest release for Python 3.10, an `nnx.Param` is a single leaf and an
    `nnx.Module` is opaque (a leaf); their newer API (`Variable.get_value`, `nnx.List`) does
    not exist either.
    """
    import jax.numpy as jnp
    from flax import nnx

    treedef = jax.tree_util.tree_structure(nnx.Param(jnp.ones(1)))
    return not jax.tree_util.treedef_is_leaf(treedef)


NNX_VARIABLES_ARE_NODES = _nnx_variables_are_nodes()

needs_nnx_nodes = pytest.mark.skipif(
    not NNX_VARIABLES_ARE_NODES,
    reason=(
        "flax.nnx Modules and Variables are pytree leaves in this flax (0.10, the newest for "
        "Python 3.10): this test's subject does not exist there; what pytreeclass does with "
        "them instead is tested by test_kinds.py::test_nnx_variables_as_leaves_are_kinds"
    ),
)

JAX_HAS_AXIS_TYPES = hasattr(jax.sharding, "AxisType")  # jax >= 0.5.3

# `PyTreeDef.from_node_data_and_children` (not in jax 0.6.2, the newest for Python 3.10):
# without it, the caches keyed by a strict treedef (masks, partitions, merge plans) do not
# cache trees that hold a dict or foreign aux data; they are built anew on every call.
JAX_BUILDS_TREEDEFS = hasattr(jax.tree_util.PyTreeDef, "from_node_data_and_children")

# The random bits of `jax.random` (threefry) changed when `jax_threefry_partitionable`
# became the default (jax 0.5.0). The outputs shown under docs blocks were printed with
# it on; where it is off, numbers drawn from random weights differ, so tests/test_docs.py
# compares those outputs with their numbers masked.
JAX_THREEFRY_PARTITIONABLE = bool(jax.config.jax_threefry_partitionable)


def _jax_client_has_try_get() -> bool:
    """True if jaxlib's distributed-runtime client has `key_value_try_get`.

    orbax-checkpoint (0.11.5 in the oldest environment, and later) calls it when several
    processes save one checkpoint; jaxlib 0.4.36's client lacks it, so there a
    multi-process Orbax save fails with an AttributeError (single-process saves work).
    """
    try:
        from jax._src.lib import _jax as lib  # type: ignore[attr-defined]
    except ImportError:
        from jax._src.lib import xla_extension as lib  # type: ignore[attr-defined]
    client = getattr(lib, "DistributedRuntimeClient", None)
    return client is not None and hasattr(client, "key_value_try_get")


ORBAX_SAVES_ACROSS_PROCESSES = _jax_client_has_try_get()
