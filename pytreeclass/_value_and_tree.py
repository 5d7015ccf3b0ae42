"""`value_and_tree(fn)`: run `fn` on a mutable copy of a tree, get `(result, new tree)`.

The copy is shallow per node: every treeclass instance, list and dict is a fresh object
(tuples, namedtuples and other pytree nodes holding one are rebuilt around the copies),
while leaves (arrays) are shared. So any in-place assignment `fn` makes, however deep,
lands in the copy; the original is never touched, even if `fn` raises halfway.

Copied treeclass instances accept assignment while `fn` runs because their ids are in
`_instance.MUTABLE` in `EDIT` mode (no converters, static values still checked); the ids
are removed in a `finally`, which freezes the copy again. A node that appears several times
in the tree is copied once, so the copy aliases exactly as the original does.

The walk is iterative, so deep trees cost no Python recursion of ours.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Concatenate, TypeVar

from ._class._instance import EDIT, MUTABLE
from ._class._meta import FLAT, check_static, drop_derived, meta_of
from ._errors import too_deep_error
from ._nodes._node_kind import NodeKind
from ._nodes._node_table import KIND_OF, kind_of

__all__ = ["value_and_tree"]

R = TypeVar("R")
T = TypeVar("T")

_new = object.__new__
# Deeper than this is almost surely a reference cycle (JAX itself stops near 1000 levels).
_MAX_DEPTH = 100_000


class _Frame:
    """One node being copied: its kind, its children, the copies made so far."""

    __slots__ = ("aux", "children", "i", "kind", "node", "out")

    def __init__(self, node: Any, kind: NodeKind) -> None:
        self.node, self.i, self.out = node, 0, []
        self.kind = kind
        self.children, self.aux = kind.values(node)


def _build(fr: _Frame, made: list[tuple[Any, Any]]) -> Any:
    new = fr.kind.thawed(fr.node, fr.aux, fr.children, fr.out)
    if fr.kind.frozen:
        made.append((fr.node, new))
    return new


def _thaw(tree: Any, made: list[tuple[Any, Any]]) -> Any:
    """The mutable copy of `tree` described in the module docs (iterative, post-order)."""
    kind = kind_of(tree)
    if kind.leaf:
        return tree
    memo: dict[int, Any] = {}  # id(original node) -> its copy; originals stay alive in `tree`
    stack = [_Frame(tree, kind)]
    kinds = KIND_OF
    while True:
        fr = stack[-1]
        children, i, n = fr.children, fr.i, len(fr.children)
        while i < n:
            child = children[i]
            i += 1
            c = kinds.get(type(child)) or kind_of(child)
            if c.leaf:
                fr.out.append(child)
                continue
            copy = memo.get(id(child))
            if copy is not None:
                fr.out.append(copy)
                continue
            break
        else:
            stack.pop()
            new = _build(fr, made)
            memo[id(fr.node)] = new
            if not stack:
                return new
            stack[-1].out.append(new)
            continue
        fr.i = i
        if len(stack) >= _MAX_DEPTH:
            raise too_deep_error("value_and_tree")
        stack.append(_Frame(child, c))


def _freeze(made: list[tuple[Any, Any]]) -> None:
    """Check what `fn` left in the copies: every field set, static values hashable."""
    for original, copy in made:
        cls = type(copy)
        meta = meta_of(cls)
        assert meta is not None  # `made` holds treeclass instances only
        d = copy.__dict__
        if len(d) - (FLAT in d) != len(meta.fields):
            missing = [f.name for f in meta.fields if f.name not in d]
            if missing:
                raise TypeError(
                    f"value_and_tree: fn deleted field(s) {', '.join(map(repr, missing))} of a "
                    f"{cls.__qualname__}; a treeclass instance must keep every field. Assign a "
                    "new value instead of deleting it."
                )
            # Values derived while fn ran (a cached_property read after fn's last
            # assignment): the frozen copy carries fields only, like every other copy.
            drop_derived(d, meta.fields_by_name)
        od = original.__dict__
        for name in meta.static_names:
            if d[name] is not od[name]:
                check_static(cls, name, d[name])
        d.pop(FLAT, None)
        d[FLAT] = meta.flatten(copy)


def value_and_tree(fn: Callable[..., R]) -> Callable[Concatenate[T, ...], tuple[R, T]]:
    """Make `fn`, which updates its first argument in place, pure.

    `value_and_tree(fn)(tree, *args, **kwargs)` calls `fn` on a mutable copy of `tree`
    and returns `(fn's result, the copy frozen again)`; `tree` itself is never changed.
    Works under `jax.jit`, `jax.grad(..., has_aux=True)` and as a `jax.lax.scan` body.

    Args:
        fn: a function whose first argument is a pytree it may update in place
            (`self.x = ...` on treeclass instances, item assignment on lists and dicts).

    Returns:
        A function with `fn`'s arguments that returns `(fn's result, updated tree)`.
        It raises what `fn` raises (the original tree is untouched then too), and a
        `TypeError` if `fn` deletes a field of a treeclass instance.

    Raises:
        TypeError: (from the returned function) `fn` deleted a field of a treeclass
            instance, or set a static field to an unhashable value.
        AttributeError: (from the returned function) `fn` set an attribute that is
            not a field of a treeclass instance.
        TreeTooDeepError: (from the returned function) the tree is nested deeper than
            pytreeclass walks, or holds a reference cycle.

    Examples:
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Counter:
        ...     count: int = 0
        ...     def tick(self):
        ...         self.count += 1
        ...         return self.count * 10
        >>> c = Counter()
        >>> ptc.value_and_tree(Counter.tick)(c)
        (10, Counter(count=1))
        >>> c.count
        0
    """

    @functools.wraps(fn)
    def run(tree: T, /, *args: Any, **kwargs: Any) -> tuple[R, T]:
        made: list[tuple[Any, Any]] = []
        copy = _thaw(tree, made)
        mutable = MUTABLE
        try:
            for _, obj in made:
                mutable[id(obj)] = EDIT
            out = fn(copy, *args, **kwargs)
        finally:
            for _, obj in made:
                mutable.pop(id(obj), None)
        _freeze(made)
        return out, copy

    return run
