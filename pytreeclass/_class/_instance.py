"""Treeclass instances: how they are built, and how they stay frozen afterwards.

Kept apart from class processing (`_treeclass.py`) because this is what runs per
instance, on every construction and every attempted assignment, while that runs once per
class. It holds:

* `MUTABLE`, the registry of instances that may be assigned to right now (a constructor
  is running, or `value_and_tree` is editing a copy), and the frozen `__setattr__` /
  `__delattr__` that consult it;
* `seal`, which stores an instance's flatten result (`_meta.FLAT`) once it is frozen;
* the error messages of assignment to a frozen instance and of an incomplete `__init__`;
* the source of the generated `__init__`, and the wrapper that lets a user-written
  `__init__` (or `__post_init__`) assign fields and then checks that all were set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._cache import type_tag
from .._errors import FrozenInstanceError
from ._meta import FLAT, PLAIN_STATIC, check_static, drop_derived

if TYPE_CHECKING:
    from ._field import Field
    from ._meta import ClassMeta

__all__ = [
    "EDIT",
    "FROZEN_DEL",
    "FROZEN_SET",
    "INIT",
    "MISSING_FIELDS",
    "MUTABLE",
    "NOT_A_FIELD",
    "FlatFallback",
    "frozen_delattr",
    "frozen_getstate",
    "frozen_setattr",
    "frozen_setstate",
    "init_source",
    "seal",
    "wrap_user_init",
]

# Instances that may be assigned to right now: id(obj) -> mode. `INIT` while a constructor
# runs (converters apply), `EDIT` while `value_and_tree` runs a function on a copy.
MUTABLE: dict[int, int] = {}
INIT, EDIT = 1, 2

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

# The stored flatten result (`_meta.FLAT`) is refreshed by `seal` after a constructor or an
# edit; while an instance is being built or edited the key is absent, and this fallback
# computes it.


class FlatFallback:
    """Class attribute `__ptc_flat__` for instances that have none stored (being built or
    edited): a non-data descriptor, so a stored value in `__dict__` wins when present."""

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if obj is None:
            return self
        return type(obj).__ptc_meta__.flatten(obj)


def seal(obj: Any) -> None:
    """Store `obj`'s flatten result in its `__dict__` (after its fields changed)."""
    if id(obj) not in MUTABLE:
        obj.__dict__[FLAT] = type(obj).__ptc_meta__.flatten(obj)


# -- pickle and copy ---------------------------------------------------------------------------

# The stored flatten result must not travel: its aux data holds type tags (`type_tag`), and
# a tag such as `<class 'function'>` (a static field holding a function) cannot be pickled
# by name. So the state is the fields alone, and the copy computes its own result. Values
# derived from the fields (a `cached_property`) stay behind too: they are recomputed, and
# need not be picklable.


def frozen_getstate(self: Any) -> dict[str, Any]:
    d = self.__dict__
    return {n: d[n] for n in type(self).__ptc_meta__.fields_by_name if n in d}


def frozen_setstate(self: Any, state: dict[str, Any]) -> None:
    d = self.__dict__
    d.update(state)
    d.pop(FLAT, None)  # a pickle made before the state left it out
    seal(self)


# -- frozen instances -------------------------------------------------------------------------


def frozen_setattr(self: Any, name: str, value: Any) -> None:
    mode = MUTABLE.get(id(self))
    cls = type(self)
    meta: ClassMeta = cls.__ptc_meta__
    f = meta.fields_by_name.get(name)
    if mode is None:
        if f is None and not hasattr(cls, name):
            # Not a field: say so (assignment would be lost by flatten/unflatten anyway).
            raise FrozenInstanceError(
                NOT_A_FIELD.format(
                    name=name, cls=cls.__name__, fields=", ".join(meta.fields_by_name)
                )
            )
        raise FrozenInstanceError(FROZEN_SET.format(name=name, cls=cls.__name__))
    if f is None:
        raise AttributeError(
            NOT_A_FIELD.format(name=name, cls=cls.__name__, fields=", ".join(meta.fields_by_name))
        )
    if mode == INIT and f.converter is not None:
        value = f.converter(value)
    if f.static:
        check_static(cls, name, value)
    d = self.__dict__
    d[name] = value
    d.pop(FLAT, None)
    if mode == EDIT and len(d) >= meta.size:  # more than the fields (FLAT is gone)
        drop_derived(d, meta.fields_by_name)  # e.g. a cached_property read before this write


def frozen_delattr(self: Any, name: str) -> None:
    if id(self) in MUTABLE and name in type(self).__ptc_meta__.fields_by_name:
        del self.__dict__[name]
        self.__dict__.pop(FLAT, None)
        return
    raise FrozenInstanceError(FROZEN_DEL.format(name=name, cls=type(self).__name__))


def _finish_init(self: Any) -> None:
    """After a user-written `__init__`: fill defaults, check that every field was set."""
    d = self.__dict__
    meta: ClassMeta = type(self).__ptc_meta__
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
            MISSING_FIELDS.format(
                cls=type(self).__name__,
                names=", ".join(repr(n) for n in missing),
                first=missing[0],
            )
        )


def wrap_user_init(user_init: Callable[..., None]) -> Callable[..., None]:
    """Let a user-written `__init__` assign fields, then check that it set all of them."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        key = id(self)
        if key in MUTABLE:  # a super().__init__ call from a subclass's __init__
            user_init(self, *args, **kwargs)
            return
        MUTABLE[key] = INIT
        try:
            user_init(self, *args, **kwargs)
            _finish_init(self)
        finally:
            del MUTABLE[key]
        seal(self)

    __init__.__ptc_user_init__ = user_init  # type: ignore[attr-defined]
    __init__.__wrapped__ = user_init  # type: ignore[attr-defined]
    __init__.__qualname__ = getattr(user_init, "__qualname__", "__init__")
    __init__.__doc__ = user_init.__doc__
    return __init__


def _run_post_init(self: Any, *args: Any) -> None:
    key = id(self)
    if key in MUTABLE:
        # A generated `__init__` called by `super().__init__(...)` from a subclass's own
        # `__init__`: `__post_init__` runs now, as with dataclasses, and the outermost
        # `__init__` checks for missing fields and freezes the instance when it returns.
        self.__post_init__(*args)
        return
    MUTABLE[key] = INIT
    try:
        self.__post_init__(*args)
    finally:
        del MUTABLE[key]
    _finish_init(self)


def _finish_outermost_init(self: Any) -> None:
    """`_finish_init`, unless an outer `__init__` is still running (it finishes then)."""
    if id(self) not in MUTABLE:
        _finish_init(self)


# -- the generated __init__ --------------------------------------------------------------------


class _FactorySentinel:
    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _FactorySentinel()


def init_source(
    cls: type, fields: tuple[Field, ...], initvars: list[Any], has_post_init: bool
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """`(source, namespace, annotations)` of the generated `__init__`.

    Parameters come in declaration order, `InitVar`s among the fields (as dataclasses
    does), keyword-only ones last. The instance is called `self` unless a field is (then
    `__ptc_self`, so a field named `self` works as with dataclasses).
    """
    # Fields are the parameters of the generated function, so a field may be called `type`,
    # `len`, `id`, ...: the body uses no builtin and no plain name other than the
    # instance's, only `__ptc_*` names bound in its namespace (a field cannot be called
    # that: the class body mangles it).
    ns: dict[str, Any] = {
        "__ptc_FACTORY": _FACTORY,
        "__ptc_PLAIN": PLAIN_STATIC,
        "__ptc_cls": cls,
        "__ptc_check_static": check_static,
        "__ptc_run_post_init": _run_post_init,
        "__ptc_type": type,
        "__ptc_tag": type_tag,
        "__ptc_id": id,
        "__ptc_MUTABLE": MUTABLE,
    }
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
    tags = []  # per static field, the local holding its type tag (see `flatten_sources`)
    all_set = True  # whether this function sets every field (then it stores FLAT itself)
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
            all_set = False
            continue  # init=False without a default: __post_init__ must set it
        if f.converter is not None:
            ns[f"__ptc_conv_{name}"] = f.converter
            value = f"__ptc_conv_{name}({value})"
        if f.static:
            t = f"__ptc_t{len(tags)}"
            tags.append(t)
            body.append(f"    __ptc_v = {value}")
            body.append(f"    {t} = __ptc_type(__ptc_v)")
            body.append(
                f"    if {t} not in __ptc_PLAIN: "
                f"__ptc_check_static(__ptc_cls, {name!r}, __ptc_v); {t} = __ptc_tag(__ptc_v)"
            )
            value = "__ptc_v"
        body.append(f"    __ptc_d[{name!r}] = {value}")
    if has_post_init:
        args = "".join(f", {f.name}" for f in params if f.name in initvar_names)
        body.append(f"    __ptc_run_post_init({me}{args})")
    elif not all_set:
        ns["__ptc_finish_init"] = _finish_outermost_init
        body.append(f"    __ptc_finish_init({me})")  # reports the field that nothing sets
    if has_post_init or not all_set:
        ns["__ptc_seal"] = seal
        body.append(f"    __ptc_seal({me})")
    else:
        # What `seal` would store (`type(self).__ptc_meta__.flatten(self)`), written out:
        # children in field order, then the static values' tags and the values. Skipped
        # while a subclass's own __init__ runs this one (it seals when it is done).
        children = "".join(f"__ptc_d[{f.name!r}], " for f in fields if not f.static)
        statics = "".join(f"__ptc_d[{f.name!r}], " for f in fields if f.static)
        aux = f"({''.join(t + ', ' for t in tags)}{statics})" if tags else "None"
        body.append(f"    if __ptc_id({me}) not in __ptc_MUTABLE:")
        body.append(f"        __ptc_d[{FLAT!r}] = (({children}), {aux})")
    params_src = [me, *positional, *(["*", *keyword] if keyword else [])]
    source = (
        f"def __init__({', '.join(params_src)}):\n    __ptc_d = {me}.__dict__\n"
        + "\n".join(body)
        + "\n"
    )
    return source, ns, annotations
