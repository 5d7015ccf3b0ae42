"""Text for one value: short leaf forms (`f32[3,4]`) and the `repr` of treeclasses.

The lower layer of the display code: error messages across the library show leaves with
`leaf_repr`, and `_show` builds its summaries, diagrams and HTML on these pieces.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MAX_ITEMS", "Elided", "is_array", "leaf_repr", "node_children", "treeclass_repr"]

_WIDTH = 88
TIMES = "\u00d7"  # the multiplication sign in `Block x24` (ruff flags the glyph itself)
MAX_ITEMS = 8  # longer lists/tuples/dicts show their first 6 items, "...(n more)", the last


# -- leaves -------------------------------------------------------------------------------------


def _dtype_short(dtype: Any) -> str:
    # The names jaxprs use: f32, bf16, i8, u4, c64, f8_e4m3fn, ... (so they read the same).
    if dtype == np.bool_:
        return "bool"
    name = np.dtype(dtype).name
    if name == "bfloat16":
        return "bf16"
    return (
        name.replace("float", "f").replace("uint", "u").replace("int", "i").replace("complex", "c")
    )


def is_array(x: Any) -> bool:
    # jax.Array (tracers included), np.ndarray, jax.ShapeDtypeStruct; numpy scalars keep repr.
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (np.generic, type))


def _array_repr(dtype: Any, shape: tuple[int, ...]) -> str:
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        dt = "key"
    else:
        try:
            dt = _dtype_short(dtype)
        except TypeError:
            dt = str(dtype)
    return f"{dt}[{','.join(map(str, shape))}]"


def leaf_repr(x: Any) -> str:
    """Short form of a leaf: arrays as `f32[3,4]`, classes by name, others by a short `repr`.

    Example:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> ptc._repr.leaf_repr(jnp.zeros((3, 4))), ptc._repr.leaf_repr(jnp.ones(2, "bfloat16"))
        ('f32[3,4]', 'bf16[2]')
    """
    if is_array(x):
        return _array_repr(x.dtype, x.shape)
    if isinstance(x, type):
        return x.__name__
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


# -- repr -------------------------------------------------------------------------------------


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _key_label(key: Any) -> tuple[str, str]:
    """(label, separator) of a child in a generic pytree node, from its key."""
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name, "="
    if isinstance(key, jax.tree_util.DictKey):
        return repr(key.key), ": "
    return "", ""


def node_children(obj: Any) -> list[tuple[Any, Any]] | None:
    """One level of a pytree node as (key, child) pairs; None if `obj` is a leaf."""
    flat, _ = jax.tree_util.tree_flatten_with_path(obj, is_leaf=lambda y: y is not obj)
    if len(flat) == 1 and flat[0][0] == () and flat[0][1] is obj:
        return None
    return [(path[0], child) for path, child in flat]


class _Stack:
    """A field declared `field(stack=...)`, for `_render`: shown as `Block x24(...)`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def stack_size(value: Any, axis: int) -> int | None:
    """The size of dimension `axis` that every leaf of `value` shares, or None."""
    n = None
    for x in jax.tree_util.tree_leaves(value):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) <= axis or (n is not None and shape[axis] != n):
            return None
        n = shape[axis]
    return n


def _items(obj: Any) -> tuple[str, str, str, list[tuple[str, Any]]] | None:
    """(open, close, separator, [(label, value)]) for containers we lay out; else None."""
    meta = getattr(type(obj), "__ptc_meta__", None)
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
    if isinstance(obj, list):
        return "[", "]", "", [("", v) for v in obj]
    if isinstance(obj, tuple):
        return "(", ",)" if len(obj) == 1 else ")", "", [("", v) for v in obj]
    if obj is None or is_array(obj) or isinstance(obj, (str, int, float, complex, type)):
        return None
    # Any other pytree node (an Equinox module, an nnx Variable, ...): its keyed children.
    children = node_children(obj)
    if children is None:
        return None
    labels = [_key_label(k) for k, _ in children]
    sep = next((s for _, s in labels if s), "")
    items = [(label, child) for (label, _), (_, child) in zip(labels, children)]
    return f"{type(obj).__name__}(", ")", sep, items


def _render(obj: Any, indent: int, seen: frozenset[int], strip: int = 0) -> str:
    # `strip`: how many leading (stacked) dimensions array shapes leave out.
    count = ""
    if type(obj) is _Stack:
        obj = obj.value
        n = stack_size(obj, strip)
        if n is not None:  # a broken stack shows as it is
            count = f" {TIMES}{n}"
            strip += 1
    parts = _items(obj)
    if parts is None:
        if strip and is_array(obj) and len(obj.shape) >= strip:
            return (
                count.lstrip() + (" " if count else "") + _array_repr(obj.dtype, obj.shape[strip:])
            )
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
    rendered = [
        (f"{k}{sep}" if k else "") + _render(v, indent + 2, seen, strip) for k, v in _elide(items)
    ]
    flat = open_ + ", ".join(rendered) + close
    if len(flat) + indent <= _WIDTH and "\n" not in flat:
        return flat
    pad = " " * (indent + 2)
    return open_ + "\n" + ",\n".join(pad + r for r in rendered) + "\n" + " " * indent + close


class Elided:
    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"...({self.n} more)"


def _elide(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    if len(items) <= MAX_ITEMS:
        return items
    head = MAX_ITEMS - 2
    return [*items[:head], ("", Elided(len(items) - head - 1)), items[-1]]


def treeclass_repr(obj: Any) -> str:
    """The `repr` of a treeclass: one line when short, else one field per line, indented.

    Arrays show as `f32[3,4]`; lists, tuples and dicts longer than 8 items show their first
    6 items, `...(n more)` and the last one.
    """
    return _render(obj, 0, frozenset())
