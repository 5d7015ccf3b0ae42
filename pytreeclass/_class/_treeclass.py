"""`@treeclass` and `TreeClass`: an annotated class becomes a frozen dataclass that is a JAX
pytree. This module processes classes (once each) and assembles the layers below: the
class metadata (`_meta`), what runs per instance (`_instance`), the generated code
(`_codegen`) and the methods every treeclass gets (`_methods`)."""

from __future__ import annotations

import dataclasses
import operator
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

import jax
from typing_extensions import dataclass_transform

from .._cache import type_tag
from .._codegen import compile_function, flatten_sources, unflatten_source
from ._field import Field, field
from ._instance import (
    FlatFallback,
    frozen_delattr,
    frozen_getstate,
    frozen_setattr,
    frozen_setstate,
    init_source,
    wrap_user_init,
)
from ._meta import FLAT, ClassMeta, check_static, meta_of, own_meta
from ._methods import install_methods

if TYPE_CHECKING:
    from typing_extensions import Self

    from .._lens._lens import Lens  # annotations only: no import-order constraint at run time

__all__ = ["RESERVED_NAME", "TREECLASS_OPTIONS_CONFLICT", "TreeClass", "treeclass"]

T = TypeVar("T")

_new = object.__new__
_object_getstate = getattr(object, "__getstate__", None)  # Python 3.11+
_register_lock = threading.Lock()
# Classes JAX knows in this process: cls -> (the metadata registered, the registered
# flatten_with_keys and unflatten).
_registered: weakref.WeakKeyDictionary[type, tuple[ClassMeta, Callable, Callable]] = (
    weakref.WeakKeyDictionary()
)


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

RESERVED_NAME = (
    "{cls} declares a field named {name!r}, which pytreeclass reserves ({why}). Rename the field."
)


def _install_init(cls: type, meta: ClassMeta, user_init: Callable[..., None] | None) -> None:
    if user_init is not None:
        cls.__init__ = wrap_user_init(user_init)  # type: ignore[misc]
        return
    initvars = meta.options.get("_initvars", [])
    source, ns, annotations = init_source(cls, meta.fields, initvars, meta.has_post_init)
    module = sys.modules.get(cls.__module__)
    init = compile_function(
        "__init__", source, ns, cls.__qualname__, module_globals=vars(module) if module else {}
    )
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = annotations
    init.__ptc_post_init__ = meta.has_post_init  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[misc]


def _compile(cls: type, meta: ClassMeta) -> tuple[Callable, Callable, Callable]:
    """Generate `flatten`, `flatten_with_keys` and `unflatten` for `cls`."""
    owner = cls.__qualname__
    flat_src, keys_src = flatten_sources(meta.child_names, meta.static_names)
    tags = {"_tag": type_tag, "_type": type, "_isinstance": isinstance, "_tuple": tuple}
    ns_k = {f"_k{i}": k for i, k in enumerate(meta.keys)}
    flatten = compile_function("flatten", flat_src, dict(tags), owner)
    flatten_with_keys = compile_function("flatten_with_keys", keys_src, {**ns_k, **tags}, owner)
    field_order = tuple(f.name for f in meta.fields)
    unflat_src = unflatten_source(field_order, meta.child_names, meta.static_names)
    unflatten = compile_function("unflatten", unflat_src, {"_new": _new, "_cls": cls}, owner)
    return flatten, flatten_with_keys, unflatten


def _register(cls: type, meta: ClassMeta) -> None:
    """Generate flatten/unflatten for `cls` and register it as a pytree with keys."""
    flatten, flatten_with_keys, unflatten = _compile(cls, meta)
    meta.flatten = flatten
    cls.__ptc_meta__ = meta  # type: ignore[attr-defined]
    jax.tree_util.register_pytree_with_keys(
        cls, flatten_with_keys, unflatten, operator.attrgetter(FLAT)
    )
    _registered[cls] = (meta, flatten_with_keys, unflatten)


def _setstate(self: Any, state: dict[str, Any]) -> None:
    """`__setstate__` (unpickling, `copy`): make sure JAX knows the class as it is now.

    cloudpickle sends a class defined in `__main__` or in a function by value: in a new
    process it makes an empty class and then sets its `__dict__` (our generated methods
    and metadata included). A `@treeclass` class was then never registered with JAX; a
    `TreeClass` subclass was, while still empty (`__init_subclass__` ran on it), so its
    registered functions flatten no fields. Either way the metadata it carries now is
    the one to register.
    """
    cls = type(self)
    done = _registered.get(cls)
    if done is None or done[0] is not own_meta(cls):
        with _register_lock:
            _reregister(cls)
    frozen_setstate(self, state)


def _reregister(cls: type) -> None:
    meta = own_meta(cls)
    done = _registered.get(cls)
    if meta is None or meta.cls is not cls or (done is not None and done[0] is meta):
        return  # an undecorated subclass (registered on first use), or done meanwhile
    if done is None:
        _register(cls, meta)
        return
    # JAX refuses a second registration of one class: rewrite the registered functions
    # in place instead (their namespaces are their own, made by `compile_function`).
    flatten, flatten_with_keys, unflatten = _compile(cls, meta)
    for old, new in zip(done[1:], (flatten_with_keys, unflatten)):
        old.__globals__.update(new.__globals__)
        old.__code__ = new.__code__
    meta.flatten = flatten
    _registered[cls] = (meta, *done[1:])


def _process(cls: type, options: dict[str, Any]) -> type:
    if "__slots__" in cls.__dict__:
        raise TypeError(
            f"@treeclass: {cls.__name__} defines __slots__; treeclasses keep fields in "
            "__dict__ (fast unflatten). Remove __slots__."
        )
    own_init = cls.__dict__.get("__init__")
    user_init = getattr(own_init, "__ptc_user_init__", own_init)
    dc_options = {k: v for k, v in options.items() if not k.startswith("_")}
    # dataclasses writes `order=True` methods only together with its own `__eq__` (and then
    # clears `__hash__`); ours (`install_methods`) compare arrays safely, so put back what
    # the class itself had.
    eq = bool(dc_options.get("order"))
    own = {k: cls.__dict__[k] for k in ("__eq__", "__hash__") if k in cls.__dict__}
    cls = dataclasses.dataclass(cls, init=False, repr=False, eq=eq, frozen=False, **dc_options)
    for name in ("__eq__", "__hash__") if eq else ():
        if name in own:
            setattr(cls, name, own[name])
        elif name in cls.__dict__:
            delattr(cls, name)
    fields, initvars = _own_fields(cls)
    for f in fields:
        if f.name in _RESERVED:
            raise TypeError(
                RESERVED_NAME.format(cls=cls.__name__, name=f.name, why=_RESERVED[f.name])
            )
        if f.static and f.default is not dataclasses.MISSING:
            check_static(cls, f.name, f.default)
    meta = ClassMeta(cls, fields, {**options, "_initvars": initvars})
    _install_init(cls, meta, user_init)
    _register(cls, meta)
    cls.__ptc_flat__ = FlatFallback()  # type: ignore[attr-defined]
    cls.__setattr__ = frozen_setattr  # type: ignore[assignment]
    cls.__delattr__ = frozen_delattr  # type: ignore[assignment]
    # Pickle and copy: unless the class (or a user-written base) says otherwise.
    if getattr(cls, "__getstate__", None) in (_object_getstate, None, frozen_getstate):
        cls.__getstate__ = frozen_getstate  # type: ignore[attr-defined]
        if getattr(cls, "__setstate__", None) in (None, _setstate):
            cls.__setstate__ = _setstate  # type: ignore[attr-defined]
    install_methods(cls)
    return cls


def _register_subclass(cls: type) -> None:
    """Make an undecorated subclass a treeclass with its parent's fields (first use only)."""
    with _register_lock:
        if own_meta(cls) is not None:
            return
        parent = meta_of(cls)
        assert parent is not None  # only subclasses of treeclasses get here
        _check_no_new_fields(cls, parent)
        own_init = cls.__dict__.get("__init__")
        meta = ClassMeta(cls, parent.fields, parent.options)
        if own_init is not None:
            _install_init(cls, meta, getattr(own_init, "__ptc_user_init__", own_init))
        elif getattr(cls.__init__, "__ptc_post_init__", meta.has_post_init) != meta.has_post_init:
            # The inherited generated __init__ does not call the __post_init__ this subclass
            # defines; the TreeClass spelling would, and so does dataclasses: a new one does.
            _install_init(cls, meta, None)
        # else: the parent's __init__ (generated or wrapped) works as is for the subclass.
        _register(cls, meta)


def _check_no_new_fields(cls: type, parent: ClassMeta) -> None:
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


# The one-shot `__new__` stays on the class after registration (it then only calls
# `object.__new__`): CPython cannot go back to `object.__new__` once a class has had a
# Python `__new__` (deleting it leaves a slot that makes `object.__new__` reject the
# constructor's arguments).
def _lazy_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    if own_meta(cls) is None:
        _register_subclass(cls)
    return _new(cls)


def _init_subclass(cls: type) -> None:
    # Runs for every subclass of a treeclass. We cannot tell yet whether @treeclass will
    # decorate it; registering now would make that decoration a duplicate registration.
    # So registration waits for the first instance (a one-shot __new__), unless @treeclass
    # gets there first.
    if own_meta(cls) is not None:
        return  # already processed: a TreeClass subclass (TreeClass comes later in its MRO)
    if "__init__" in cls.__dict__ and not hasattr(cls.__dict__["__init__"], "__ptc_user_init__"):
        cls.__init__ = wrap_user_init(cls.__dict__["__init__"])  # type: ignore[misc]
    if own_meta(cls) is None and "__new__" not in cls.__dict__:
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
def treeclass(cls: type[T], /) -> type[T]: ...
@overload
def treeclass(
    *, kw_only: bool = False, order: bool = False, match_args: bool = True
) -> Callable[[type[T]], type[T]]: ...
# No `frozen_default`: type checkers would then reject `self.x = ...` inside a user-written
# `__init__` and inside `value_and_tree` functions, the two places assignment is allowed.
@dataclass_transform(field_specifiers=(field, Field, dataclasses.field))
def treeclass(
    cls: type[T] | None = None,
    /,
    *,
    kw_only: bool = False,
    order: bool = False,
    match_args: bool = True,
) -> type[T] | Callable[[type[T]], type[T]]:
    """Make an annotated class an immutable dataclass that is a JAX pytree.

    Non-static fields are the pytree's children (with `GetAttrKey` paths); static fields
    live in the treedef. Unflatten never runs `__init__`, `__post_init__` or converters.
    Use it bare (`@treeclass`) or with options (`@treeclass(kw_only=True)`).

    Args:
        cls: the class to decorate (given when used bare, as `@treeclass`).
        kw_only: make every field of the generated `__init__` keyword-only.
        order: generate `<`, `<=`, `>`, `>=` comparing fields in order, as dataclasses do.
        match_args: set `__match_args__` for `match` statements.

    Returns:
        The class itself, now a frozen dataclass registered as a JAX pytree; with options
        and no class, a decorator that makes one.

    Raises:
        TypeError: `cls` is not a class, defines `__slots__`, is already a treeclass, uses
            a reserved field name (`at`, ...), has a static field whose default is an array
            or unhashable, or is a `TreeClass` subclass defined with other options.

    Examples:
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

    def wrap(c: type[T]) -> type[T]:
        if not isinstance(c, type):
            raise TypeError(f"@treeclass decorates classes, not {type(c).__name__} objects.")
        if own_meta(c) is not None:
            if issubclass(c, TreeClass):
                # Already made a treeclass when it was defined: a no-op, unless the decorator
                # asks for options the class did not get (bare `@treeclass` asks for none).
                _check_same_options(c, options if cls is None else {})
                return c
            raise TypeError(f"@treeclass: {c.__name__} is already a treeclass.")
        out = _process(c, options)
        _install_subclass_hook(out)
        return out  # type: ignore[return-value]

    return wrap if cls is None else wrap(cls)


TREECLASS_OPTIONS_CONFLICT = (
    "@treeclass({asked}) on {cls}, which subclasses ptc.TreeClass and so was made a "
    "treeclass when it was defined, with {got}. Drop the decorator (it is not needed) and "
    "give the options as class keywords: `class {cls}(..., {asked}):`."
)


def _check_same_options(cls: type, asked: dict[str, Any]) -> None:
    got = own_meta(cls).options  # type: ignore[union-attr]
    differ = [k for k, v in asked.items() if got[k] != v]
    if differ:
        raise TypeError(
            TREECLASS_OPTIONS_CONFLICT.format(
                cls=cls.__name__,
                asked=", ".join(f"{k}={asked[k]!r}" for k in differ),
                got=", ".join(f"{k}={got[k]!r}" for k in differ),
            )
        )


@dataclass_transform(field_specifiers=(field, Field, dataclasses.field))
class TreeClass:
    """Base class that makes every subclass a treeclass; the typed spelling of `@treeclass`.

    `class A(ptc.TreeClass): ...` makes `A` exactly what `@ptc.treeclass` would (a frozen
    dataclass registered as a pytree), and so for every subclass of `A` too: a subclass
    that adds fields needs no decorator. `@treeclass`'s options are class keywords:
    `class A(ptc.TreeClass, kw_only=True)`. As with dataclasses, they apply to the class
    that names them, not to its subclasses.

    Unlike a decorator, a base class can declare attributes, so type checkers know that
    `obj.at` is a `Lens` of the instance's own type and `obj.at.w.set(v)` returns `A`.
    `TreeClass` itself has no fields and is not a treeclass (`ptc.is_treeclass` says so);
    `isinstance(obj, ptc.TreeClass)` tells instances of its subclasses. Decorating a
    subclass with `@treeclass` as well is harmless (it is already one); asking the decorator
    for options the class was not given is an error.

    Raises:
        TypeError: `ptc.TreeClass()` itself is called, or a subclass breaks a rule of
            `@treeclass` (see there).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> class Linear(ptc.TreeClass):
        ...     w: jax.Array = ptc.field(kind=ptc.Parameter)
        ...     b: jax.Array = ptc.field(kind=ptc.Parameter)
        >>> layer = Linear(jnp.ones((3, 2)), jnp.zeros(2))
        >>> layer.at.b.set(jnp.ones(2)).b.tolist()
        [1.0, 1.0]
    """

    if TYPE_CHECKING:
        # Declared for type checkers only; `install_methods` puts the real property on each
        # subclass (the one `@treeclass` classes get).
        @property
        def at(self) -> Lens[Self]:
            """A lens on this instance: `obj.at.x.set(v)` returns an updated copy."""
            ...

    def __init__(self) -> None:
        # Subclasses get their own `__init__`; this one runs only for `TreeClass()` itself
        # (or through `super().__init__()` from a user-written one, which is fine).
        if type(self) is TreeClass:
            raise TypeError(
                "ptc.TreeClass is a base class: subclass it with annotated fields, "
                "e.g. `class Linear(ptc.TreeClass): w: jax.Array`"
            )

    def __init_subclass__(
        cls, *, kw_only: bool = False, order: bool = False, match_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        _process(cls, {"kw_only": kw_only, "order": order, "match_args": match_args})
