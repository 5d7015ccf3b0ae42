"""`@treeclass`: an annotated class becomes a frozen dataclass registered as a JAX pytree."""

from __future__ import annotations

import dataclasses
import operator
import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

import jax
import numpy as np
from jax.tree_util import GetAttrKey
from typing_extensions import dataclass_transform

from . import _errors
from ._codegen import compile_function, flatten_sources, unflatten_source
from ._field import Field, field

__all__ = ["is_treeclass", "replace_fields", "treeclass"]

_T = TypeVar("_T")

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

_new = object.__new__
_register_lock = threading.Lock()


class _Meta:
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
        self.has_post_init = hasattr(cls, "__post_init__")
        self.options = options


# -- static field checks ----------------------------------------------------------------------


def _short(value: Any) -> str:
    from ._show import leaf_repr

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
        self.__post_init__(*args)
    else:
        _MUTABLE[key] = _INIT
        try:
            self.__post_init__(*args)
        finally:
            del _MUTABLE[key]
    _finish_init(self)


# -- the generated __init__ --------------------------------------------------------------------


class _FactorySentinel:
    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _FactorySentinel()


def _init_source(
    cls: type, fields: tuple[Field, ...], initvars: list[Any], has_post_init: bool
) -> tuple[str, dict[str, Any]]:
    ns: dict[str, Any] = {"__ptc_FACTORY": _FACTORY, "__ptc_PLAIN": _PLAIN_STATIC, "__ptc_cls": cls}
    ns["__ptc_check_static"] = check_static
    ns["__ptc_run_post_init"] = _run_post_init
    positional, keyword, body = [], [], []
    seen_default = None
    for f in [*fields, *initvars]:
        name = f.name
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            ns[f"__ptc_dflt_{name}"] = f.default
            param = f"{name}=__ptc_dflt_{name}"
        elif f.default_factory is not dataclasses.MISSING:
            param = f"{name}=__ptc_FACTORY"
        else:
            param = name
            if not f.kw_only and seen_default is not None:
                raise TypeError(
                    f"{cls.__name__}: field {name!r} has no default but follows field "
                    f"{seen_default!r}, which has one. Give {name!r} a default, reorder the "
                    "fields, or make it keyword-only with field(kw_only=True)."
                )
        if not f.kw_only and param != name:
            seen_default = name
        (keyword if f.kw_only else positional).append(param)
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
                f"    if type(__ptc_v) not in __ptc_PLAIN: __ptc_check_static(__ptc_cls, {name!r}, __ptc_v)"
            )
            value = "__ptc_v"
        body.append(f"    __ptc_d[{name!r}] = {value}")
    if has_post_init:
        body.append("    __ptc_run_post_init(self" + "".join(f", {f.name}" for f in initvars) + ")")
    elif any(not f.init and f.default is f.default_factory is dataclasses.MISSING for f in fields):
        ns["__ptc_finish_init"] = _finish_init
        body.append("    __ptc_finish_init(self)")  # reports the field that nothing sets
    ns["__ptc_seal"] = seal
    body.append("    __ptc_seal(self)")
    params = ["self", *positional, *(["*", *keyword] if keyword else [])]
    source = (
        f"def __init__({', '.join(params)}):\n    __ptc_d = self.__dict__\n"
        + "\n".join(body)
        + "\n"
    )
    return source, ns


# -- helpers used by other modules --------------------------------------------------------------


def is_treeclass(obj_or_class: Any, /) -> bool:
    """Whether `obj_or_class` is a treeclass or an instance of one.

    Example:
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class A:
        ...     x: int = 1
        >>> ptc.is_treeclass(A), ptc.is_treeclass(A()), ptc.is_treeclass(1)
        (True, True, False)
    """
    cls = obj_or_class if isinstance(obj_or_class, type) else type(obj_or_class)
    return hasattr(cls, "__ptc_meta__")


def replace_fields(obj: Any, changes: dict[str, Any]) -> Any:
    """A copy of treeclass `obj` with some fields replaced; no `__init__`, no converters."""
    cls = type(obj)
    meta: _Meta = cls.__ptc_meta__
    for name, value in changes.items():
        f = meta.fields_by_name.get(name)
        if f is None:
            raise AttributeError(
                f"{cls.__name__} has no field {name!r}; fields: {', '.join(meta.fields_by_name)}"
            )
        if f.static:
            check_static(cls, name, value)
    new = _new(cls)
    d = new.__dict__
    d.update(obj.__dict__)
    d.update(changes)
    d[FLAT] = meta.flatten(new)
    return new


# -- class processing ----------------------------------------------------------------------


def _own_fields(cls: type) -> tuple[tuple[Field, ...], list[Any]]:
    fields = []
    for f in dataclasses.fields(cls):
        if not isinstance(f, Field):  # a plain dataclasses.field(): upgrade it, same settings
            g = field(  # type: ignore[call-overload]
                default=f.default,
                default_factory=f.default_factory,
                init=f.init,
                repr=f.repr,
                metadata=f.metadata,
                kw_only=f.kw_only,
                compare=f.compare,
                hash=f.hash,
            )
            g.name, g.type = f.name, f.type
            g._field_type = f._field_type  # type: ignore[attr-defined]
            f = g
        fields.append(f)
    initvars = [
        f
        for f in cls.__dataclass_fields__.values()  # type: ignore[attr-defined]
        if f._field_type is dataclasses._FIELD_INITVAR  # type: ignore[attr-defined]
    ]
    return tuple(fields), initvars


_RESERVED = {"at": "the `.at` lens property"}


def _install_init(cls: type, meta: _Meta, user_init: Callable[..., None] | None) -> None:
    if user_init is not None:
        cls.__init__ = _wrap_user_init(user_init)  # type: ignore[misc]
        return
    initvars = meta.options.get("_initvars", [])
    source, ns = _init_source(cls, meta.fields, initvars, meta.has_post_init)
    init = compile_function("__init__", source, ns, cls.__qualname__)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]


def _register(cls: type, meta: _Meta) -> None:
    """Generate flatten/unflatten for `cls` and register it as a pytree with keys."""
    owner = cls.__qualname__
    flat_src, keys_src = flatten_sources(meta.child_names, meta.static_names)
    ns_k = {f"_k{i}": k for i, k in enumerate(meta.keys)}
    flatten = compile_function("flatten", flat_src, {}, owner)
    flatten_with_keys = compile_function("flatten_with_keys", keys_src, ns_k, owner)
    field_order = tuple(f.name for f in meta.fields)
    unflat_src = unflatten_source(field_order, meta.child_names, meta.static_names)
    unflatten = compile_function("unflatten", unflat_src, {"_new": _new, "_cls": cls}, owner)
    meta.flatten = flatten
    cls.__ptc_meta__ = meta  # type: ignore[attr-defined]
    jax.tree_util.register_pytree_with_keys(
        cls, flatten_with_keys, unflatten, operator.attrgetter(FLAT)
    )


def _process(cls: type, options: dict[str, Any]) -> type:
    if "__slots__" in cls.__dict__:
        raise TypeError(
            f"@treeclass: {cls.__name__} defines __slots__; treeclasses keep fields in "
            "__dict__ (fast unflatten). Remove __slots__."
        )
    own_init = cls.__dict__.get("__init__")
    user_init = getattr(own_init, "__ptc_user_init__", own_init)
    dc_options = {k: v for k, v in options.items() if not k.startswith("_")}
    cls = dataclasses.dataclass(cls, init=False, repr=False, eq=False, frozen=False, **dc_options)
    fields, initvars = _own_fields(cls)
    for f in fields:
        if f.name in _RESERVED:
            raise TypeError(
                _errors.RESERVED_NAME.format(cls=cls.__name__, name=f.name, why=_RESERVED[f.name])
            )
        if f.static and f.default is not dataclasses.MISSING:
            check_static(cls, f.name, f.default)
    meta = _Meta(cls, fields, {**options, "_initvars": initvars})
    _install_init(cls, meta, user_init)
    _register(cls, meta)
    cls.__ptc_flat__ = _FlatFallback()  # type: ignore[attr-defined]
    cls.__setattr__ = _setattr  # type: ignore[assignment]
    cls.__delattr__ = _delattr  # type: ignore[assignment]
    from ._methods import install_methods

    install_methods(cls)
    return cls


def _register_subclass(cls: type) -> None:
    """Make an undecorated subclass a treeclass with its parent's fields (first use only)."""
    with _register_lock:
        if "__ptc_meta__" in cls.__dict__:
            return
        parent: _Meta = cls.__ptc_meta__  # type: ignore[attr-defined]
        _check_no_new_fields(cls, parent)
        own_init = cls.__dict__.get("__init__")
        meta = _Meta(cls, parent.fields, parent.options)
        if own_init is not None:
            _install_init(cls, meta, getattr(own_init, "__ptc_user_init__", own_init))
        # else: the parent's __init__ (generated or wrapped) works as is for the subclass.
        _register(cls, meta)
        if cls.__dict__.get("__new__") is _lazy_new:
            del cls.__new__  # type: ignore[misc]


def _check_no_new_fields(cls: type, parent: _Meta) -> None:
    """An undecorated subclass cannot add fields: say so instead of dropping them silently."""
    import inspect

    new = []
    for name, ann in inspect.get_annotations(cls).items():
        text = ann if isinstance(ann, str) else repr(ann)
        if name in parent.fields_by_name or "ClassVar" in text or "InitVar" in text:
            continue
        new.append(name)
    if new:
        raise TypeError(
            f"{cls.__name__} annotates {', '.join(map(repr, new))} but is not decorated, so "
            f"{'they are' if len(new) > 1 else 'it is'} not a field (flatten would drop "
            f"{'them' if len(new) > 1 else 'it'}). Decorate the subclass with @ptc.treeclass "
            "to add fields, or annotate with typing.ClassVar for class-level constants."
        )


def _lazy_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    if "__ptc_meta__" not in cls.__dict__:
        _register_subclass(cls)
    return _new(cls)


def _init_subclass(cls: type) -> None:
    # Runs for every subclass of a treeclass. We cannot tell yet whether @treeclass will
    # decorate it; registering now would make that decoration a duplicate registration.
    # So registration waits for the first instance (a one-shot __new__), unless @treeclass
    # gets there first.
    if "__init__" in cls.__dict__ and not hasattr(cls.__dict__["__init__"], "__ptc_user_init__"):
        cls.__init__ = _wrap_user_init(cls.__dict__["__init__"])  # type: ignore[misc]
    if "__ptc_meta__" not in cls.__dict__ and "__new__" not in cls.__dict__:
        cls.__new__ = staticmethod(_lazy_new)  # type: ignore[assignment]


def _install_subclass_hook(owner: type) -> None:
    user_hook = owner.__dict__.get("__init_subclass__")
    user_func = getattr(user_hook, "__func__", user_hook)

    def __init_subclass__(cls: type, **kwargs: Any) -> None:
        if user_func is not None:
            user_func(cls, **kwargs)
        else:
            super(owner, cls).__init_subclass__(**kwargs)  # type: ignore[misc]
        _init_subclass(cls)

    owner.__init_subclass__ = classmethod(__init_subclass__)  # type: ignore[assignment]


@overload
def treeclass(cls: type[_T], /) -> type[_T]: ...
@overload
def treeclass(
    *, kw_only: bool = False, order: bool = False, match_args: bool = True
) -> Callable[[type[_T]], type[_T]]: ...
# No `frozen_default`: type checkers would then reject `self.x = ...` inside a user-written
# `__init__` and inside `value_and_tree` functions, the two places assignment is allowed.
@dataclass_transform(field_specifiers=(field, Field, dataclasses.field))
def treeclass(
    cls: type[_T] | None = None,
    /,
    *,
    kw_only: bool = False,
    order: bool = False,
    match_args: bool = True,
) -> Any:
    """Make an annotated class an immutable dataclass that is a JAX pytree.

    Non-static fields are the pytree's children (with `GetAttrKey` paths); static fields
    live in the treedef. Unflatten never runs `__init__`, `__post_init__` or converters.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Linear:
        ...     w: jax.Array = ptc.field(kind=ptc.Parameter)
        ...     b: jax.Array = ptc.field(kind=ptc.Parameter)
        ...     features: int = ptc.field(static=True, default=2)
        >>> layer = Linear(jnp.ones((3, 2)), jnp.zeros(2))
        >>> jax.tree_util.tree_structure(layer).num_leaves
        2
    """
    options = {"kw_only": kw_only, "order": order, "match_args": match_args}

    def wrap(c: type[_T]) -> type[_T]:
        if not isinstance(c, type):
            raise TypeError(f"@treeclass decorates classes, not {type(c).__name__} objects.")
        if "__ptc_meta__" in c.__dict__:
            raise TypeError(f"@treeclass: {c.__name__} is already a treeclass.")
        if c.__dict__.get("__new__") is _lazy_new:
            del c.__new__  # type: ignore[misc]
        out = _process(c, options)
        _install_subclass_hook(out)
        return out  # type: ignore[return-value]

    return wrap if cls is None else wrap(cls)
