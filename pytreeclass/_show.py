"""Readable text for trees: short leaf forms (`f32[3,4]`), treeclass `repr`, HTML."""

from __future__ import annotations

import html
from typing import Any

import jax
import numpy as np

__all__ = ["html_repr", "leaf_repr", "treeclass_repr"]

_WIDTH = 88
_MAX_ITEMS = 8


def _dtype_short(dtype: Any) -> str:
    dtype = np.dtype(dtype)
    kind = {"f": "f", "i": "i", "u": "u", "b": "bool", "c": "c", "V": "V"}.get(dtype.kind, dtype.kind)
    if kind == "bool":
        return "bool"
    if dtype.name == "bfloat16":
        return "bf16"
    return f"{kind}{dtype.itemsize * 8}"


def leaf_repr(x: Any) -> str:
    """Short form of a leaf: arrays as `f32[3,4]`, kinds by name, others by `repr`."""
    if isinstance(x, (jax.Array, np.ndarray)) or (
        hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, np.generic)
    ):
        try:
            dt = _dtype_short(x.dtype)
        except TypeError:
            dt = str(x.dtype)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            dt = "key"
        return f"{dt}[{','.join(map(str, x.shape))}]"
    if isinstance(x, type):
        return x.__name__
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _items(obj: Any) -> tuple[str, str, str, list[tuple[str, Any]]] | None:
    """(open, close, separator, [(label, value)]) for containers we lay out; else None."""
    meta = getattr(type(obj), "__ptc_meta__", None)
    if meta is not None:
        d = obj.__dict__
        items = [(f.name, d.get(f.name, "<unset>")) for f in meta.fields if f.repr]
        return f"{type(obj).__name__}(", ")", "=", items
    if isinstance(obj, dict):
        return "{", "}", ": ", [(repr(k), v) for k, v in obj.items()]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return f"{type(obj).__name__}(", ")", "=", list(zip(obj._fields, obj))
    if isinstance(obj, list):
        return "[", "]", "", [("", v) for v in obj]
    if isinstance(obj, tuple):
        return "(", ",)" if len(obj) == 1 else ")", "", [("", v) for v in obj]
    return None


def _render(obj: Any, indent: int, seen: set[int]) -> str:
    parts = _items(obj)
    if parts is None:
        return leaf_repr(obj)
    if id(obj) in seen:
        return "<cycle>"
    seen = seen | {id(obj)}
    open_, close, sep, items = parts
    elided = 0
    if len(items) > _MAX_ITEMS and not hasattr(type(obj), "__ptc_meta__"):
        elided = len(items) - _MAX_ITEMS + 2
        items = [*items[: _MAX_ITEMS - 2], ("", ...), items[-1]]
    rendered = [
        ("..." if v is ... and not k else f"{k}{sep}" + _render(v, indent + 2, seen))
        for k, v in items
    ]
    if elided:
        rendered[_MAX_ITEMS - 2] = f"...({elided} more)"
    flat = open_ + ", ".join(rendered) + close
    if len(flat) + indent <= _WIDTH and "\n" not in flat:
        return flat
    pad = " " * (indent + 2)
    return open_ + "\n" + ",\n".join(pad + r for r in rendered) + "\n" + " " * indent + close


def treeclass_repr(obj: Any) -> str:
    """The `repr` of a treeclass: one line when short, else one field per line, indented."""
    return _render(obj, 0, set())


def html_repr(obj: Any) -> str:
    """Notebook display: treescope's rendering where installed, else escaped `repr`."""
    try:
        import treescope
    except ImportError:
        return f"<pre>{html.escape(treeclass_repr(obj))}</pre>"
    return treescope.render_to_html(obj, roundtrip_mode=False)
