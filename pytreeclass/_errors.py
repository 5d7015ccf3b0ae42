"""Error messages, kept in one place so their wording stays consistent and tested."""

from __future__ import annotations

import dataclasses
from typing import Any

FROZEN_SET = (
    "cannot assign to field {name!r} of {cls}: treeclass instances are immutable.\n"
    "Make an updated copy instead:\n"
    "    obj = obj.at.{name}.set(value)\n"
    "    obj = dataclasses.replace(obj, {name}=value)\n"
    "or write the update in place inside ptc.value_and_tree(fn)(obj)."
)

FROZEN_DEL = (
    "cannot delete field {name!r} of {cls}: treeclass instances are immutable.\n"
    "Make an updated copy with obj.at.{name}.set(...) or dataclasses.replace(obj, ...)."
)

NOT_A_FIELD = (
    "cannot set {name!r} on {cls}: it is not a field, so it would be silently dropped by "
    "flatten/unflatten (jit, grad, vmap). Declare it in the class body, e.g. `{name}: Any`, "
    "or use `field(static=True)` for non-array configuration. Fields: {fields}."
)

MISSING_FIELDS = (
    "{cls}.__init__ returned without setting field(s) {names}. Assign them in __init__ "
    "(`self.{first} = ...`) or give them a default in the class body."
)

STATIC_ARRAY = (
    "static field {name!r} of {cls} holds an array ({value}). Static values live in the "
    "treedef, which jax.jit hashes and compares; an array there breaks caching. Make it a "
    "normal field (drop static=True), or store a hashable Python value (e.g. int(x), "
    "tuple(x.tolist()))."
)

STATIC_UNHASHABLE = (
    "static field {name!r} of {cls} holds an unhashable {typ} ({value}). Static values live "
    "in the treedef, which jax.jit hashes; use a hashable value (a tuple instead of a list, "
    "a frozenset instead of a set), or make it a normal field."
)

RESERVED_NAME = (
    "{cls} declares a field named {name!r}, which pytreeclass reserves ({why}). Rename the field."
)


class FrozenInstanceError(dataclasses.FrozenInstanceError):
    """Raised on assignment to (or deletion of) a field of a frozen treeclass instance."""


class TreeTooDeepError(ValueError, RecursionError):
    """A tree nested deeper than Python's recursion limit lets JAX (or us) walk, or cyclic."""


TOO_DEEP = (
    "{where}: the tree is nested too deeply to walk, or it contains a reference cycle "
    "(JAX's pytree functions and pytreeclass recurse once per level; Python's recursion "
    "limit is {limit}). Make the nesting shallower (e.g. keep a chain of layers in one list "
    "instead of nesting each inside the next), break the cycle, or raise the limit with "
    "sys.setrecursionlimit(...) if your stack allows it."
)


class depth_guard:  # lower case: used as `with depth_guard(...)`, like a function
    """Turn a RecursionError raised while walking a tree into a `TreeTooDeepError`.

    JAX's C++ flatten reports it as a `SystemError` caused by a `RecursionError`; both are
    translated. One stateless instance per public function is reused (re-entrant).
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> None:  # None: never swallows the exception
        if typ is not None:
            reraise_if_too_deep(self.where, exc)


def reraise_if_too_deep(where: str, exc: BaseException) -> None:
    """Raise `TreeTooDeepError` from `exc` if it comes from recursing too deep; else return.

    For hot paths, where a `try`/`except` costs nothing until something fails (a `with`
    block costs a call on entry and on exit).
    """
    if isinstance(exc, TreeTooDeepError):
        return
    if isinstance(exc, RecursionError) or (
        isinstance(exc, SystemError) and isinstance(exc.__cause__, RecursionError)
    ):
        import sys

        raise TreeTooDeepError(TOO_DEEP.format(where=where, limit=sys.getrecursionlimit())) from exc
