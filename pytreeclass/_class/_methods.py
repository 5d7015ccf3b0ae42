"""Methods every treeclass gets: `==`, `hash`, `repr`, `.at`, notebook display.

Equality rule (documented in docs/treeclass.md): two instances are equal when they have the
same class and every field with `compare=True` is equal by `tree_equal` (`_equal`: arrays
by shape, dtype and values into one Python bool; other values with `==`).

Hashing matches: the hash of `(class, compare-fields)`. A treeclass holding arrays is
therefore unhashable (arrays are), exactly like a frozen dataclass holding arrays; one
holding only hashable values can be hashed (and used as a `static_argnums` argument).
"""

from __future__ import annotations

from typing import Any

from .._equal import tree_equal
from .._errors import reraise_if_too_deep
from .._lens._lens import lens_on
from .._repr import html_repr, treeclass_repr
from .._tree_util import leaf_repr
from ._meta import ClassMeta, meta_of

__all__ = ["install_methods"]


def _meta(obj: Any) -> ClassMeta:
    meta = meta_of(type(obj))
    assert meta is not None  # these methods are installed on treeclasses only
    return meta


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    if self is other:
        return True
    d, e = self.__dict__, other.__dict__
    for f in meta_of(self.__class__).fields:  # type: ignore[union-attr]
        if f.compare and not tree_equal(d[f.name], e[f.name]):
            break
    else:
        return True
    return False


def _hash(self: Any) -> int:
    d = self.__dict__
    values = []
    for f in _meta(self).fields:
        if not f.compare:
            continue
        try:
            values.append(hash(d[f.name]))
        except TypeError:
            raise TypeError(
                f"unhashable {type(self).__qualname__}: field {f.name!r} holds an unhashable "
                f"value ({leaf_repr(d[f.name])}). A treeclass holding arrays cannot be hashed, "
                "like a frozen dataclass holding arrays; pass it to jax.jit as a normal "
                "argument rather than a static one."
            ) from None
    return hash((type(self), *values))


def _repr(self: Any) -> str:
    try:
        return treeclass_repr(self)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("repr", e)
        raise


def _repr_html_(self: Any) -> str:
    return html_repr(self)


# `obj.at` is the property getter itself: no wrapper frame, it runs on every update.
_at = lens_on


def install_methods(cls: type) -> None:
    ns = cls.__dict__
    if "__eq__" not in ns:
        cls.__eq__ = _eq  # type: ignore[method-assign]
        if "__hash__" not in ns or ns["__hash__"] is None:
            cls.__hash__ = _hash  # type: ignore[method-assign]
    if "__repr__" not in ns:
        cls.__repr__ = _repr  # type: ignore[method-assign]
    if "_repr_html_" not in ns:
        cls._repr_html_ = _repr_html_  # type: ignore[attr-defined]
    if "at" not in ns:
        cls.at = property(_at, doc="A lens on this instance: `obj.at.x.set(v)` returns a copy.")  # type: ignore[attr-defined]
