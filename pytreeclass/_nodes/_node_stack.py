"""A field declared `field(stack=...)`, seen as the sequence of its layers."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.tree_util import SequenceKey

from .._stack import scatter, scatter_rows, shared_leaf, stack_length, take, tree_stack
from ._node_codes import STACK
from ._node_kind import NodeKind

__all__ = ["StackKind"]


class StackKind(NodeKind):
    """A stacked field as the sequence of its layers.

    Its children are the layers (`take`), keyed `[i]`; rebuilding writes rows back
    (`scatter`), so a layer put back must have the layer's structure, shapes and dtypes.
    Non-array leaves (an activation function in an `eqx.filter_vmap` stack) are shared
    by every layer. The field's value itself is an ordinary node of its own kind: this
    kind is how a selection reads it once the field says it is a stack."""

    code = STACK
    sequence = positional = sliceable = layered = True

    def __init__(self, where: str = "the stack") -> None:
        self.where = where

    def length(self, node: Any) -> int:
        return stack_length(node, self.where, prefix=self.where)

    def children(self, node: Any) -> list[tuple[Any, Any, Any]]:
        n = self.length(node)
        leaves, treedef = jax.tree_util.tree_flatten(node)
        # one unstack per leaf (`list(x)`), not one index per layer and leaf
        rows = [[x] * n if shared_leaf(x) else list(x) for x in leaves]
        return [(SequenceKey(i), treedef.unflatten([r[i] for r in rows]), i) for i in range(n)]

    def child(self, node: Any, token: Any) -> Any:
        return take(node, (token,))

    def rebuild_rows(self, node: Any, new: list[tuple[Any, Any]], olds: list[Any]) -> Any:
        """`rebuild`, where `olds` are the layers as taken: a leaf no layer changed (every
        row still the object `take` gave) is kept as it is, not written again."""
        if all(type(i) is int for i, _ in new):
            return scatter_rows(node, new, self.where, olds)
        return self.rebuild(node, new)

    def rebuild(self, node: Any, new: list[tuple[Any, Any]]) -> Any:
        if len(new) > 1 and all(type(i) is int for i, _ in new):
            return scatter_rows(node, new, self.where)  # one write per leaf
        for i, layer in new:
            at = f"{self.where}[{i}]" if type(i) is int else f"{self.where}[<traced>]"
            node = scatter(node, (i,), layer, at)
        return node

    def insert(self, node: Any, where: dict[Any, tuple[list[Any], list[Any]]]) -> Any:
        layers = []
        for i, (_, layer, _) in enumerate(self.children(node)):
            before, after = where.get(i, ((), ()))
            layers.extend(before)
            layers.append(layer)
            layers.extend(after)
        try:
            return tree_stack(layers)
        except ValueError as e:
            raise ValueError(f"the inserted layer does not stack with the others: {e}") from None

    def remove(self, node: Any, tokens: list[Any]) -> Any:
        drop = set(tokens)
        keep = np.array([i for i in range(self.length(node)) if i not in drop], dtype=np.int64)
        return jax.tree.map(lambda x: x if shared_leaf(x) else x[keep], node)
