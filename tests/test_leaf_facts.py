"""The walk `leaf_kinds` and `leaf_axes` share: one value per leaf, or a clear error."""

from __future__ import annotations

import jax
import pytest

from pytreeclass._leaf_facts import leaf_axes, leaf_kinds


class _Growing:
    """A broken custom node: each flatten yields one more child than the last."""

    def __init__(self) -> None:
        self.calls = 0


def _flatten_growing(g: _Growing) -> tuple[list[int], None]:
    g.calls += 1
    return [0] * g.calls, None


jax.tree_util.register_pytree_node(_Growing, _flatten_growing, lambda _, ch: _Growing())


@pytest.mark.parametrize(("resolver", "what"), [(leaf_kinds, "kinds"), (leaf_axes, "axes")])
def test_inconsistent_custom_node_is_an_error_not_misaligned_values(resolver, what) -> None:
    # The treedef saw one child, the walk (flattening again) two: without the check every
    # later leaf would get the value meant for the one before it.
    with pytest.raises(
        ValueError, match=rf"could not resolve {what}: found 2 leaves, the treedef has 1\. "
    ):
        resolver({"g": _Growing()})
