"""Treeclass instances: how they are built, and how they stay frozen afterwards.

Kept apart from class processing (`_treeclass.py`) because this is what runs per
instance, on every construction and every attempted assignment, while that runs once per
class. It holds:

* `_MUTABLE`, the registry of instances that may be assigned to right now (a constructor
  is running, or `value_and_tree` is editing a copy), and the frozen `__setattr__` /
  `__delattr__` that consult it;
* `FLAT` and `seal`: each instance's stored flatten result, which whatever writes fields
  must refresh;
* the static-field check every write of a static value goes through;
* the source of the generated `__init__`, and the wrapper that lets a user-written
  `__init__` (or `__post_init__`) assign fields and then checks that all were set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from . import _errors

if TYPE_CHECKING:
    from ._field import Field
    from ._treeclass import _Meta

__all__ = ["FLAT", "check_static", "seal"]

# Instances that may be assigned to right now: id(obj) -> mode. `_INIT` while a constructor
# runs (converters apply), `_EDIT` while `value_and_tree` runs a function on a copy.
_MUTABLE: dict[int, int] = {}
_INIT, _EDIT = 1, 2

# Every instance keeps its flatten result, `(children, aux)`, under this key: JAX's C++
# flatten then reads it with a C-level `operator.attrgetter`, no Python frame per node.
# Whatever writes fields must refresh it (`seal`); while an instance is being built or
# edited the key is absent and `seal` adds it when the instance is frozen again.
FLAT = "__ptc_flat__"


class _FlatFallback:
    """Class attribute `__ptc_flat__` for instances that have none stored (being built or
    edited): a non-data descriptor, so a stored value in `__dict__` wins when present."""

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if obj is None:
            return self
        return type(obj).__ptc_meta__.flatten(obj)


def seal(obj: Any) -> None:
    """Store `obj`'s flatten result in its `__dict__` (after its fields changed)."""
    if id(obj) not in _MUTABLE:
        obj.__dict__[FLAT] = type(obj).__ptc_meta__.flatten(obj)


# Values that are always fine in a static field; anything else is checked.
_PLAIN_STATIC = frozenset({int, float, bool, str, type(None), complex, bytes})


# -- static field checks ----------------------------------------------------------------------


def _short(value: Any) -> str:
    from ._repr import leaf_repr

    return leaf_repr(value)


def check_static(cls: type, name: str, value: Any) -> None:
    """Raise if `value` cannot live in a static field (it must be hashable, not an array)."""
    if type(value) in _PLAIN_STATIC:
        return
    if isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(
            _errors.STATIC_ARRAY.format(name=name, cls=cls.__name__, value=_short(value))
        )
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            _errors.STATIC_UNHASHABLE.format(
                name=name, cls=cls.__name__, typ=type(value).__name__, value=_short(value)
            )
        ) from None


# -- frozen instances -------------------------------------------------------------------------


def _setattr(self: Any, name: str, value: Any) -> None:
    mode = _MUTABLE.get(id(self))
    cls = type(self)
    meta: _Meta = cls.__ptc_meta__
    f = meta.fields_by_name.get(name)
    if mode is None:
        if f is None and not hasattr(cls, name):
            # Not a field: say so (assignment would be lost by flatten/unflatten anyway).
            raise _errors.FrozenInstanceError(
                _errors.NOT_A_FIELD.format(
                    name=name, cls=cls.__name__, fields=", ".join(meta.fields_by_name)
                )
            )
        raise _errors.FrozenInstanceError(_errors.FROZEN_SET.format(name=name, cls=cls.__name__))
    if f is None:
        raise AttributeError(
            _errors.NOT_A_FIELD.format(
                name=name, cls=cls.__name__, fields=", ".join(meta.fields_by_name)
            )
        )
    if mode == _INIT and f.converter is not None:
        value = f.converter(value)
    if f.static:
        check_static(cls, name, value)
    d = self.__dict__
    d[name] = value
    d.pop(FLAT, None)


def _delattr(self: Any, name: str) -> None:
    if id(self) in _MUTABLE and name in type(self).__ptc_meta__.fields_by_name:
        del self.__dict__[name]
        self.__dict__.pop(FLAT, None)
        return
    raise _errors.FrozenInstanceError(_errors.FROZEN_DEL.format(name=name, cls=type(self).__name__))


def _finish_init(self: Any) -> None:
    """After a user-written `__init__`: fill defaults, check that every field was set."""
    d = self.__dict__
    meta: _Meta = type(self).__ptc_meta__
    missing = []
    for f in meta.fields:
        if f.name in d:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            missing.append(f.name)
            continue
        if f.converter is not None:
            value = f.converter(value)
        if f.static:
            check_static(type(self), f.name, value)
        d[f.name] = value
    if missing:
        raise TypeError(
            _errors.MISSING_FIELDS.format(
                cls=type(self).__name__,
                names=", ".join(repr(n) for n in missing),
                first=missing[0],
            )
        )


def _wrap_user_init(user_init: Callable[..., None]) -> Callable[..., None]:
    """Let a user-written `__init__` assign fields, then check that it set all of them."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        key = id(self)
        if key in _MUTABLE:  # a super().__init__ call from a subclass's __init__
            user_init(self, *args, **kwargs)
            return
        _MUTABLE[key] = _INIT
        try:
            user_init(self, *args, **kwargs)
            _finish_init(self)
        finally:
            del _MUTABLE[key]
        seal(self)

    __init__.__ptc_user_init__ = user_init  # type: ignore[attr-defined]
    __init__.__wrapped__ = user_init  # type: ignore[attr-defined]
    __init__.__qualname__ = getattr(user_init, "__qualname__", "__init__")
    __init__.__doc__ = user_init.__doc__
    return __init__


def _run_post_init(self: Any, *args: Any) -> None:
    key = id(self)
    if key in _MUTABLE:
        # A generated `__init__` called by `super().__init__(...)` from a subclass's own
        # `__init__`: `__post_init__` runs now, as with dataclasses, and the outermost
        # `__init__` checks for missing fields and freezes the instance when it returns.
        self.__post_init__(*args)
        return
    _MUTABLE[key] = _INIT
    try:
        self.__post_init__(*args)
    finally:
        del _MUTABLE[key]
    _finish_init(self)


def _finish_outermost_init(self: Any) -> None:
    """`_finish_init`, unless an outer `__init__` is still running (it finishes then)."""
    if id(self) not in _MUTABLE:
        _finish_init(self)


# -- the generated __init__ --------------------------------------------------------------------


class _FactorySentinel:
    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _FactorySentinel()


def _init_source(
    cls: type, fields: tuple[Field, ...], initvars: list[Any], has_post_init: bool
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """`(source, namespace, annotations)` of the generated `__init__`.

    Parameters come in declaration order, `InitVar`s among the fields (as dataclasses
    does), keyword-only ones last. The instance is called `self` unless a field is (then
    `__ptc_self`, so a field named `self` works as with dataclasses).
    """
    ns: dict[str, Any] = {"__ptc_FACTORY": _FACTORY, "__ptc_PLAIN": _PLAIN_STATIC, "__ptc_cls": cls}
    ns["__ptc_type"] = type  # the module's globals may shadow the builtin
    ns["__ptc_check_static"] = check_static
    ns["__ptc_run_post_init"] = _run_post_init
    order = {name: i for i, name in enumerate(cls.__dataclass_fields__)}  # type: ignore[attr-defined]
    params = sorted([*fields, *initvars], key=lambda f: order.get(f.name, len(order)))
    initvar_names = {f.name for f in initvars}
    me = "__ptc_self" if any(f.name == "self" for f in params) else "self"
    positional, keyword, body = [], [], []
    annotations: dict[str, Any] = {}
    seen_default = None
    for f in params:
        name = f.name
        if not f.init:
            continue
        annotations[name] = f.type
        if f.default is not dataclasses.MISSING:
            ns[f"__ptc_dflt_{name}"] = f.default
            param = f"{name}=__ptc_dflt_{name}"
        elif f.default_factory is not dataclasses.MISSING:
            param = f"{name}=__ptc_FACTORY"
        else:
            param = name
            if not f.kw_only and seen_default is not None:
                what = "InitVar" if name in initvar_names else "field"
                raise TypeError(
                    f"{cls.__name__}: {what} {name!r} has no default but follows field "
                    f"{seen_default!r}, which has one. Give {name!r} a default, reorder the "
                    "fields, or make it keyword-only with field(kw_only=True)."
                )
        if not f.kw_only and param != name:
            seen_default = name
        (keyword if f.kw_only else positional).append(param)
    annotations["return"] = None
    for f in fields:
        name = f.name
        if f.init:
            value = name
            if f.default_factory is not dataclasses.MISSING:
                ns[f"__ptc_factory_{name}"] = f.default_factory
                body.append(f"    if {name} is __ptc_FACTORY: {name} = __ptc_factory_{name}()")
        elif f.default is not dataclasses.MISSING:
            ns[f"__ptc_dflt_{name}"] = f.default
            value = f"__ptc_dflt_{name}"
        elif f.default_factory is not dataclasses.MISSING:
            ns[f"__ptc_factory_{name}"] = f.default_factory
            value = f"__ptc_factory_{name}()"
        else:
            continue  # init=False without a default: __post_init__ must set it
        if f.converter is not None:
            ns[f"__ptc_conv_{name}"] = f.converter
            value = f"__ptc_conv_{name}({value})"
        if f.static:
            body.append(f"    __ptc_v = {value}")
            body.append(
                "    if __ptc_type(__ptc_v) not in __ptc_PLAIN: "
                f"__ptc_check_static(__ptc_cls, {name!r}, __ptc_v)"
            )
            value = "__ptc_v"
        body.append(f"    __ptc_d[{name!r}] = {value}")
    if has_post_init:
        args = "".join(f", {f.name}" for f in params if f.name in initvar_names)
        body.append(f"    __ptc_run_post_init({me}{args})")
    elif any(not f.init and f.default is f.default_factory is dataclasses.MISSING for f in fields):
        ns["__ptc_finish_init"] = _finish_outermost_init
        body.append(f"    __ptc_finish_init({me})")  # reports the field that nothing sets
    ns["__ptc_seal"] = seal
    body.append(f"    __ptc_seal({me})")
    params_src = [me, *positional, *(["*", *keyword] if keyword else [])]
    source = (
        f"def __init__({', '.join(params_src)}):\n    __ptc_d = {me}.__dict__\n"
        + "\n".join(body)
        + "\n"
    )
    return source, ns, annotations
