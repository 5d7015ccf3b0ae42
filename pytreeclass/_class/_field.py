"""`field()` and `Field`: dataclass fields that also know their kind, staticness and axes.

(`fields(cls)`, which reads a class's fields, is `_meta.fields`.)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from ._kinds import check_kind

__all__ = ["Field", "field"]

T = TypeVar("T")

# `dataclasses.Field.__init__` grew a `doc` parameter in Python 3.14; pass only what it takes.
_FIELD_TAKES_DOC = "doc" in inspect.signature(dataclasses.Field.__init__).parameters


class Field(dataclasses.Field):  # type: ignore[type-arg]
    """A `dataclasses.Field` with pytreeclass metadata; made by `ptc.field`.

    `ptc.fields(cls)` returns them. Besides the attributes of `dataclasses.Field`
    (`name`, `type`, `default`, `default_factory`, `init`, `repr`, `compare`, `hash`,
    `kw_only`, `metadata`) it has the ones below.

    Attributes:
        kind: the `Kind` subclass of every leaf under this field, or `None`.
        static: whether the value lives in the treedef (aux data) instead of the leaves.
        axes: logical sharding axis names of the array leaves under this field, or `None`.
        converter: called on the value during construction, never on unflatten.
        doc: a short description of the field, for readers and the docs.
        stack: the logical name of the stacked axis when the field holds a stack of
            layers (every array leaf below has it as a leading dimension), or `None`.
    """

    __slots__ = ("axes", "converter", "kind", "stack", "static") + (
        () if _FIELD_TAKES_DOC else ("doc",)
    )

    def __init__(
        self,
        *,
        default: Any,
        default_factory: Any,
        init: bool,
        repr: bool,
        hash: bool | None,
        compare: bool,
        metadata: Mapping[Any, Any] | None,
        kw_only: Any,
        kind: type | None,
        static: bool,
        axes: tuple[str | None, ...] | None,
        converter: Callable[[Any], Any] | None,
        doc: str | None,
        stack: str | None = None,
    ) -> None:
        args = (default, default_factory, init, repr, hash, compare, metadata or {}, kw_only)
        if _FIELD_TAKES_DOC:
            super().__init__(*args, doc)  # type: ignore[call-arg]
        else:
            super().__init__(*args)
            self.doc = doc
        self.kind = kind
        self.static = static
        self.axes = axes
        self.converter = converter
        self.stack = stack

    def __repr__(self) -> str:
        extra = []
        if self.kind is not None:
            extra.append(f"kind={self.kind.__name__}")
        if self.static:
            extra.append("static=True")
        if self.axes is not None:
            extra.append(f"axes={self.axes!r}")
        if self.stack is not None:
            extra.append(f"stack={self.stack!r}")
        if self.converter is not None:
            extra.append(f"converter={self.converter!r}")
        return f"Field(name={self.name!r}, type={self.type!r}{''.join(', ' + e for e in extra)})"


@overload
def field(
    *,
    default: T,
    kind: type | None = None,
    static: bool = False,
    init: bool = True,
    repr: bool = True,
    converter: Callable[[Any], Any] | None = None,
    metadata: Mapping[Any, Any] | None = None,
    doc: str | None = None,
    axes: tuple[str | None, ...] | None = None,
    stack: str | None = None,
    kw_only: bool = ...,
    compare: bool = True,
    hash: bool | None = None,
) -> T: ...
@overload
def field(
    *,
    default_factory: Callable[[], T],
    kind: type | None = None,
    static: bool = False,
    init: bool = True,
    repr: bool = True,
    converter: Callable[[Any], Any] | None = None,
    metadata: Mapping[Any, Any] | None = None,
    doc: str | None = None,
    axes: tuple[str | None, ...] | None = None,
    stack: str | None = None,
    kw_only: bool = ...,
    compare: bool = True,
    hash: bool | None = None,
) -> T: ...
@overload
def field(
    *,
    kind: type | None = None,
    static: bool = False,
    init: bool = True,
    repr: bool = True,
    converter: Callable[[Any], Any] | None = None,
    metadata: Mapping[Any, Any] | None = None,
    doc: str | None = None,
    axes: tuple[str | None, ...] | None = None,
    stack: str | None = None,
    kw_only: bool = ...,
    compare: bool = True,
    hash: bool | None = None,
) -> Any: ...
def field(
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    kind: type | None = None,
    static: bool = False,
    init: bool = True,
    repr: bool = True,
    converter: Callable[[Any], Any] | None = None,
    metadata: Mapping[Any, Any] | None = None,
    doc: str | None = None,
    axes: tuple[str | None, ...] | None = None,
    stack: str | None = None,
    kw_only: Any = dataclasses.MISSING,
    compare: bool = True,
    hash: bool | None = None,
) -> Any:
    """Declare a treeclass field.

    Args:
        default: the default value.
        default_factory: a zero-argument callable making the default (for mutable defaults).
        kind: a `Kind` subclass (e.g. `Parameter`) applied to every leaf under this field.
        static: keep the value in the treedef instead of the leaves; it must be hashable.
        init: whether the generated `__init__` takes this field as an argument.
        repr: whether `repr` shows the field.
        converter: called on the value whenever it is set during construction
            (defaults included); never called on unflatten.
        metadata: free-form mapping, as in `dataclasses.field`.
        doc: a short description.
        axes: logical sharding axis names for the array leaves under this field (for
            a stack, the dimensions of one layer).
        stack: the field holds a stack of layers: one value (say a `Block`) whose every
            array leaf has a leading axis, one row per layer; `stack` names that axis
            for `tree_shardings`. A lens index or slice right after the field picks layers
            (`model.at.blocks[3]`), displays show the layer count. See `ptc.tree_stack`.
        kw_only: as in `dataclasses.field`.
        compare: whether `==` and `hash` use the field, as in `dataclasses.field`.
        hash: whether `hash` uses the field (`None`: as `compare`), as in
            `dataclasses.field`.

    Returns:
        A `Field`, which type checkers see as a value of the default's type, so that
        the field's annotation and its default agree.

    Raises:
        ValueError: both `default` and `default_factory` are given; a static field is
            given a kind, axes or a stack; `stack` is also named in `axes`.
        TypeError: `kind` is not a `Kind` subclass, `axes` is not a tuple of str or
            None, `stack` is not a non-empty str, or `converter` is not callable.

    Examples:
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Linear:
        ...     w: float = ptc.field(kind=ptc.Parameter, default=1.0)
        ...     features: int = ptc.field(static=True, default=4)
        >>> Linear().features
        4
    """
    if default is not dataclasses.MISSING and default_factory is not dataclasses.MISSING:
        raise ValueError("field(): pass `default` or `default_factory`, not both.")
    if kind is not None:
        check_kind(kind, where="field(kind=...)")
    if static and kind is not None:
        raise ValueError(
            f"field(static=True, kind={getattr(kind, '__name__', kind)}): a static field has "
            "no leaves, so a kind would select nothing. Drop one of the two."
        )
    if axes is not None:
        if isinstance(axes, str) or not isinstance(axes, tuple):
            raise TypeError(
                f"field(axes={axes!r}): axes must be a tuple of logical axis names "
                "(str or None), one per array dimension, e.g. axes=('embed', 'mlp')."
            )
        for a in axes:
            if a is not None and not isinstance(a, str):
                raise TypeError(f"field(axes={axes!r}): every axis name must be a str or None.")
        if static:
            raise ValueError(
                "field(static=True, axes=...): a static field holds no arrays to shard."
            )
    if stack is not None:
        if not isinstance(stack, str) or not stack:
            raise TypeError(
                f"field(stack={stack!r}): stack must be the logical name of the stacked "
                "axis, a non-empty str, e.g. stack='layers'."
            )
        if static:
            raise ValueError(
                "field(static=True, stack=...): a static field holds no arrays to stack."
            )
        if axes is not None and stack in axes:
            raise ValueError(
                f"field(stack={stack!r}, axes={axes!r}): axes name the dimensions of one "
                f"layer; the stacked axis {stack!r} is prepended to them, so leave it out."
            )
    if converter is not None and not callable(converter):
        raise TypeError(f"field(converter={converter!r}): the converter must be callable.")
    return Field(
        default=default,
        default_factory=default_factory,
        init=init,
        repr=repr,
        hash=hash,
        compare=compare,
        metadata=metadata,
        kw_only=kw_only,
        kind=kind,
        static=static,
        axes=axes,
        converter=converter,
        doc=doc,
        stack=stack,
    )
