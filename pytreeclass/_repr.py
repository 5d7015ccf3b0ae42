"""The `repr` of a treeclass instance, and its notebook HTML.

Leaves show in their short form (`_tree_util.leaf_repr`: `f32[3,4]`).
"""

from __future__ import annotations

import html
from typing import Any

import jax
from jax.tree_util import GetAttrKey

from ._class._meta import is_treeclass, meta_of
from ._stack import TIMES, stack_size
from ._tree_util import elide, has_shape_dtype, key_name, leaf_repr, one_level

__all__ = ["html_repr", "treeclass_repr"]

_WIDTH = 88


# -- repr -------------------------------------------------------------------------------------


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _key_label(key: Any) -> tuple[str, str]:
    """(label, separator) of a child in a generic pytree node, from its key."""
    name = key_name(key)
    if name is None:
        return "", ""
    return (name, "=") if isinstance(key, GetAttrKey) else (repr(name), ": ")


class _Stack:
    """A field declared `field(stack=...)`, for `_render`: shown as `Block x24(...)`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Repeat:
    """`n` equal-structure nodes of a list or tuple, for `_render`: shown once, `Block x24`."""

    __slots__ = ("n", "value")

    def __init__(self, value: Any, n: int) -> None:
        self.value, self.n = value, n


_REPEAT = 3  # from this many equal nodes on, a list shows one and a count


def _repeated(items: list[Any]) -> bool:
    """Are `items` `_REPEAT` or more nodes with one structure (treedef, leaves as shown)?

    Two equal layers still print both (short models read as written); a deep model's
    list of layers prints as one layer and a count, as a stack does."""
    if len(items) < _REPEAT or one_level(items[0], keyed=False) is None:
        return False
    leaves, first = jax.tree_util.tree_flatten(items[0])
    shown = [leaf_repr(x) for x in leaves]
    for item in items[1:]:
        leaves, treedef = jax.tree_util.tree_flatten(item)
        if treedef != first or [leaf_repr(x) for x in leaves] != shown:
            return False
    return True


def _items(obj: Any) -> tuple[str, str, str, list[tuple[str, Any]]] | None:
    """(open, close, separator, [(label, value)]) for containers we lay out; else None."""
    meta = meta_of(type(obj))
    if meta is not None:
        d = obj.__dict__
        items = [
            (
                f.name,
                _Stack(d[f.name]) if f.stack is not None and f.name in d else d.get(f.name, _UNSET),
            )
            for f in meta.fields
            if f.repr
        ]
        return f"{type(obj).__name__}(", ")", "=", items
    if isinstance(obj, dict):
        return "{", "}", ": ", [(repr(k), v) for k, v in obj.items()]
    names = getattr(obj, "_fields", None)
    if isinstance(obj, tuple) and names is not None:  # a namedtuple
        return f"{type(obj).__name__}(", ")", "=", list(zip(names, obj))
    if isinstance(obj, (list, tuple)) and _repeated(list(obj)):
        # a list of 24 equal blocks reads as one block and a count, as a stack does
        open_, close = ("[", "]") if isinstance(obj, list) else ("(", ")")
        return open_, close, "", [("", _Repeat(obj[0], len(obj)))]
    if isinstance(obj, list):
        return "[", "]", "", [("", v) for v in obj]
    if isinstance(obj, tuple):
        return "(", ",)" if len(obj) == 1 else ")", "", [("", v) for v in obj]
    if obj is None or has_shape_dtype(obj) or isinstance(obj, (str, int, float, complex, type)):
        return None
    # Any other pytree node (an Equinox module, an nnx Variable, ...): its keyed children.
    level = one_level(obj)
    if level is None:
        return None
    labels = [_key_label(k) for k in level[0]]
    sep = next((s for _, s in labels if s), "")
    items = [(label, child) for (label, _), child in zip(labels, level[1])]
    return f"{type(obj).__name__}(", ")", sep, items


def _render(obj: Any, indent: int, seen: frozenset[int], strip: int = 0) -> str:
    # `strip`: how many leading (stacked) dimensions array shapes leave out: a stack shows
    # as `Block x24(w=f32[4,4])`, the shapes of one layer.
    count = ""
    if type(obj) is _Repeat:
        obj, count = obj.value, f" {TIMES}{obj.n}"
    elif type(obj) is _Stack:
        obj = obj.value
        n = stack_size(obj, strip)
        if n is not None:  # a malformed stack shows as it is
            count = f" {TIMES}{n}"
            strip += 1
    parts = _items(obj)
    if parts is None:
        if strip and has_shape_dtype(obj) and len(obj.shape) >= strip:
            one = leaf_repr(jax.ShapeDtypeStruct(obj.shape[strip:], obj.dtype))
            return f"{count[1:]} {one}" if count else one
        return leaf_repr(obj)
    if id(obj) in seen:
        return "<cycle>"
    seen = seen | {id(obj)}
    open_, close, sep, items = parts
    if count:
        name = type(obj).__name__
        open_ = (
            name + count + open_[len(name) :] if open_.startswith(name) else f"{count[1:]} {open_}"
        )
    # Fields (of a treeclass, a namedtuple, an Equinox module: the `name=value` items) are
    # never hidden, or hyperparameters would vanish from print(config); only lists, tuples,
    # dicts and other nodes with positional or keyed children are shortened.
    if sep != "=":
        items = elide(items)
    rendered = [(f"{k}{sep}" if k else "") + _render(v, indent + 2, seen, strip) for k, v in items]
    flat = open_ + ", ".join(rendered) + close
    if len(flat) + indent <= _WIDTH and "\n" not in flat:
        return flat
    pad = " " * (indent + 2)
    return open_ + "\n" + ",\n".join(pad + r for r in rendered) + "\n" + " " * indent + close


def treeclass_repr(obj: Any) -> str:
    """The `repr` of a treeclass: one line when short, else one field per line, indented.

    Arrays show as `f32[3,4]`; lists, tuples and dicts longer than 8 items show their first
    6 items, `...(n more)` and the last one. Fields are never elided, however many.
    """
    return _render(obj, 0, frozenset())


# -- notebooks --------------------------------------------------------------------------------


def _treescope_html(obj: Any) -> str:
    import treescope

    # treescope shows any node with `_repr_html_` by calling it, and ours calls treescope:
    # skip that hook for treeclass instances so treescope renders them as dataclasses.
    hook = treescope.handlers.append_repr_html_when_present

    def skip_treeclasses(node: Any, path: Any, node_renderer: Any) -> Any:
        if is_treeclass(node):
            return NotImplemented
        return hook(node, path, node_renderer)

    base = treescope.active_renderer.get()
    renderer = type(base)(
        handlers=base.handlers,
        wrapper_hooks=[skip_treeclasses if h is hook else h for h in base.wrapper_hooks],
        context_builders=base.context_builders,
    )
    with treescope.active_renderer.set_scoped(renderer):
        return treescope.render_to_html(obj, roundtrip_mode=False)


def html_repr(obj: Any) -> str:
    """Notebook display: treescope's rendering where installed, else the escaped `repr`."""
    try:
        return _treescope_html(obj)
    except ImportError:
        return f"<pre>{html.escape(treeclass_repr(obj))}</pre>"
