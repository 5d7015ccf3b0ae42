"""Class metadata: what every other module may know about a treeclass, in one place.

`@treeclass` computes a `ClassMeta` once per class and stores it as the class attribute
`__ptc_meta__`; every module outside the class protocol reads it through `meta_of` (or
asks `is_treeclass`), never by probing the attribute itself. Beside it live the pieces of
the protocol that need nothing but the metadata:

* `FLAT`, the instance attribute holding each instance's stored flatten result;
* `check_static`, the check every write of a static field goes through;
* `with_field`, the one way to copy an instance with one field replaced;
* `fields`, the public view of a class's fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.tree_util import GetAttrKey

from .._tree_util import leaf_repr

if TYPE_CHECKING:
    from ._field import Field

__all__ = [
    "FLAT",
    "PLAIN_STATIC",
    "STATIC_ARRAY",
    "STATIC_UNHASHABLE",
    "ClassMeta",
    "check_static",
    "drop_derived",
    "fields",
    "is_treeclass",
    "meta_of",
    "own_meta",
    "with_field",
]

# Every instance keeps its flatten result, `(children, aux)`, under this key: JAX's C++
# flatten then reads it with a C-level `operator.attrgetter`, no Python frame per node.
# Whatever writes fields must refresh it; while an instance is being built or edited the
# key is absent (see `_instance`).
FLAT = "__ptc_flat__"


class ClassMeta:
    """What flatten, unflatten, kinds and filters need to know about a class, computed once."""

    __slots__ = (
        "child_kinds",
        "child_names",
        "cls",
        "fields",
        "fields_by_name",
        "flatten",
        "has_post_init",
        "keys",
        "options",
        "size",
        "static_names",
    )

    def __init__(self, cls: type, fields: tuple[Field, ...], options: dict[str, Any]) -> None:
        self.cls = cls
        self.fields = fields
        self.fields_by_name = {f.name: f for f in fields}
        self.child_names = tuple(f.name for f in fields if not f.static)
        self.child_kinds = tuple(f.kind for f in fields if not f.static)
        self.static_names = tuple(f.name for f in fields if f.static)
        self.keys = tuple(GetAttrKey(n) for n in self.child_names)
        # What an instance's __dict__ holds when it carries nothing but its fields and the
        # stored flatten result; more means derived values (see `drop_derived`).
        self.size = len(fields) + 1
        self.has_post_init = hasattr(cls, "__post_init__")
        self.options = options


def meta_of(cls: type) -> ClassMeta | None:
    """The `ClassMeta` of treeclass `cls`, or `None` for any other class.

    A subclass of a treeclass that was not decorated is registered on its first instance;
    until then this is its parent's metadata (`meta.cls is not cls`), which has the same
    fields.
    """
    return getattr(cls, "__ptc_meta__", None)


def own_meta(cls: type) -> ClassMeta | None:
    """The `ClassMeta` registered for `cls` itself (not inherited from a parent), or `None`."""
    return cls.__dict__.get("__ptc_meta__")


def is_treeclass(obj_or_class: Any, /) -> bool:
    """Whether `obj_or_class` is a treeclass or an instance of one.

    Args:
        obj_or_class: any object or class.

    Returns:
        `True` for a class made by `@treeclass` or `TreeClass` (and its instances);
        `False` otherwise, `ptc.TreeClass` itself included.

    Examples:
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class A:
        ...     x: int = 1
        >>> ptc.is_treeclass(A), ptc.is_treeclass(A()), ptc.is_treeclass(1)
        (True, True, False)
    """
    cls = obj_or_class if isinstance(obj_or_class, type) else type(obj_or_class)
    return hasattr(cls, "__ptc_meta__")


def fields(obj_or_class: Any, /) -> tuple[Field, ...]:
    """The fields of a treeclass (instance or class), as `Field` objects.

    Args:
        obj_or_class: a treeclass or an instance of one.

    Returns:
        The fields in declaration order, with their `kind`, `static`, `axes`, ...

    Raises:
        TypeError: `obj_or_class` is not a treeclass or an instance of one.

    Examples:
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Point:
        ...     x: float
        ...     y: float = ptc.field(kind=ptc.Parameter, default=0.0)
        >>> [(f.name, f.kind) for f in ptc.fields(Point)]
        [('x', None), ('y', <class '...Parameter'>)]
    """
    cls = obj_or_class if isinstance(obj_or_class, type) else type(obj_or_class)
    meta = meta_of(cls)
    if meta is None:
        raise TypeError(
            f"ptc.fields(): {cls.__qualname__} is not a treeclass. "
            "Decorate it with @ptc.treeclass, or use dataclasses.fields for plain dataclasses."
        )
    return meta.fields


# -- static fields ------------------------------------------------------------------------------

# Values that are always fine in a static field; anything else is checked.
PLAIN_STATIC = frozenset({int, float, bool, str, type(None), complex, bytes})

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


def check_static(cls: type, name: str, value: Any) -> None:
    """Raise if `value` cannot live in a static field (it must be hashable, not an array)."""
    if type(value) in PLAIN_STATIC:
        return
    if isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(STATIC_ARRAY.format(name=name, cls=cls.__name__, value=leaf_repr(value)))
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            STATIC_UNHASHABLE.format(
                name=name, cls=cls.__name__, typ=type(value).__name__, value=leaf_repr(value)
            )
        ) from None


# -- copies -------------------------------------------------------------------------------------

_new = object.__new__


def with_field(obj: Any, name: str, value: Any) -> Any:
    """A copy of treeclass instance `obj` with field `name` set to `value`.

    No `__init__`, no converters (as on unflatten); a static value is checked. Every other
    field is shared, and the copy's stored flatten result is fresh. Compiled lens updates
    (`_lens_compile`) write this same copy out as straight-line code (the hot path of
    `obj.at.x.set(v)`); tests/test_layers.py checks that the two agree.
    """
    cls = type(obj)
    meta: ClassMeta = cls.__ptc_meta__  # type: ignore[attr-defined]
    if name in meta.static_names:
        check_static(cls, name, value)
    new = _new(cls)
    d = new.__dict__
    d.update(obj.__dict__)
    d[name] = value
    d[FLAT] = meta.flatten(new)
    if len(d) > meta.size:  # derived values (a cached_property) stay behind
        drop_derived(d, meta.fields_by_name)
    return new


def drop_derived(d: dict[str, Any], names: Any) -> None:
    """Remove from the instance dict `d` every entry that is not a field in `names` (nor
    the stored flatten result).

    Whatever else an instance's `__dict__` holds (a `functools.cached_property` value, an
    attribute set with `object.__setattr__`) was derived from the fields of the instance
    it was computed on: it must not travel into a copy whose fields differ. Callers copy
    the whole dict (one C-level `update`) and call this only when `len(d)` says there is
    more in it than fields and `FLAT`.
    """
    for key in [k for k in d if k not in names and k != FLAT]:
        del d[key]
