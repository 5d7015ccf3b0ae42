"""The table itself: one `NodeKind` per node code, and the kind of any value."""

from __future__ import annotations

from typing import Any

from .._cache import TypeTable
from ._node_codes import (
    DATACLASS,
    DICT,
    GENERIC,
    LEAF,
    LIST,
    NAMEDTUPLE,
    NONE,
    TREECLASS,
    TUPLE,
    node_code,
)
from ._node_containers import Dict, Leaf, List, NamedTuple, NoneKind, Tuple
from ._node_kind import NodeKind
from ._node_modules import Dataclass, Generic, Treeclass

__all__ = ["KINDS", "KIND_OF", "kind_of"]

KINDS: dict[int, NodeKind] = {
    LEAF: Leaf(),
    NONE: NoneKind(),
    TREECLASS: Treeclass(),
    DATACLASS: Dataclass(),
    LIST: List(),
    TUPLE: Tuple(),
    NAMEDTUPLE: NamedTuple(),
    DICT: Dict(),
    GENERIC: Generic(),
}

KIND_OF = TypeTable(8192)  # per type: its NodeKind (`node_code`'s answer, looked up)


def kind_of(x: Any) -> NodeKind:
    """The kind of node `x` is (cached per type, as its node code is)."""
    kind = KIND_OF.get(type(x))
    if kind is None:
        kind = KIND_OF.remember(type(x), KINDS[node_code(x)])
    return kind
