"""The error types users catch, and the one guard for trees too deep to walk.

Error-message policy: a message is written beside its raise, in the module that raises
it (inline, or as a module-level constant there when it is long or raised twice), so a
reader sees what the user will see next to the condition that triggers it. This module
holds only what several modules share: the error classes and the depth guard (whose
message is below).
"""

from __future__ import annotations

import dataclasses
import sys

__all__ = [
    "TOO_DEEP",
    "FrozenInstanceError",
    "PartialLoadWarning",
    "TreeTooDeepError",
    "reraise_if_too_deep",
    "too_deep_error",
]


class FrozenInstanceError(dataclasses.FrozenInstanceError):
    """Raised on assignment to (or deletion of) a field of a frozen treeclass instance.

    A subclass of `dataclasses.FrozenInstanceError`; the message shows the out-of-place
    ways to make the change (`obj.at.x.set(v)`, `dataclasses.replace`,
    `ptc.value_and_tree`).
    """


class TreeTooDeepError(ValueError, RecursionError):
    """A tree nested deeper than Python's recursion limit lets JAX (or us) walk, or cyclic.

    Raised by every public function that walks a whole tree (`tree_mask`, `tree_merge`,
    lenses, `repr`, `value_and_tree`, ...), with a message naming the function and how to
    fix the tree. It is a `ValueError` and a `RecursionError`, so code catching either
    still catches it.
    """


class PartialLoadWarning(UserWarning):
    """Warned by a partial load (`strict=False` or `on_mismatch="skip"` in `tree_load` and
    `tree_from_dict`) that left something out, so nothing is dropped silently.

    The message lists what happened (at most 10 names of each kind, and the counts);
    the attributes say all of it to a program, as tuples of names in order (flat names
    such as `head.weight`; key paths such as `.head.weight` for `.npz` files):

    - `missing`: the template's names the source lacks (those leaves kept the
      template's own values);
    - `mismatched`: the template's names whose values had another shape or dtype (kept
      the template's values too);
    - `unused`: the source's names that filled no leaf.

    Turn it into an error with `warnings.simplefilter("error", ptc.PartialLoadWarning)`,
    or read it with `warnings.catch_warnings(record=True)`.
    """

    def __init__(
        self,
        message: str,
        missing: tuple[str, ...] = (),
        mismatched: tuple[str, ...] = (),
        unused: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.mismatched = mismatched
        self.unused = unused


TOO_DEEP = (
    "{where}: the tree is nested too deeply to walk, or it contains a reference cycle "
    "(JAX's pytree functions and pytreeclass recurse once per level; Python's recursion "
    "limit is {limit}). Make the nesting shallower (e.g. keep a chain of layers in one list "
    "instead of nesting each inside the next), break the cycle, or raise the limit with "
    "sys.setrecursionlimit(...) if your stack allows it."
)


def too_deep_error(where: str) -> TreeTooDeepError:
    """The `TreeTooDeepError` for public function `where`."""
    return TreeTooDeepError(TOO_DEEP.format(where=where, limit=sys.getrecursionlimit()))


def reraise_if_too_deep(where: str, exc: BaseException) -> None:
    """Raise `TreeTooDeepError` from `exc` if it comes from recursing too deep; else return.

    The one depth guard. Every public function that walks a tree wraps the walk as

        try:
            ...
        except (RecursionError, SystemError) as e:
            reraise_if_too_deep("tree_mask", e)
            raise

    (a `try` costs nothing until something fails). JAX's C++ flatten reports a too-deep
    tree as a `SystemError` caused by a `RecursionError`; both are translated.
    """
    if isinstance(exc, TreeTooDeepError):
        return
    if isinstance(exc, RecursionError) or (
        isinstance(exc, SystemError) and isinstance(exc.__cause__, RecursionError)
    ):
        raise too_deep_error(where) from exc
