"""A tree's structure as JSON, so that a checkpoint can be loaded without a template.

`tree_save` records, beside the leaves, everything a template would supply: the classes
of the nodes (by module and qualified name), static field values, containers and their
keys, and what kind of leaf sat where (a `jax.Array`, a NumPy array or scalar, a Python
number). `tree_load(path)` without `like=` rebuilds a template from it.

Safety is the point of the design, since a checkpoint may come from anyone:

* nothing is imported: a class or function is looked up in `sys.modules` and then
  through the module's and classes' own `__dict__` (no `getattr`, so no module-level
  `__getattr__` hook runs), and only treeclasses, namedtuples and enums qualify as
  classes of nodes and values;
* nothing is unpickled or evaluated: static values are JSON values (str, int, float,
  bool, None; lists, tuples, dicts, frozensets of them, tagged so a tuple comes back a
  tuple); a function, class or enum member is recorded by name and accepted only if that
  name, looked up the same way at save time, gave back the very same object;
* anything else is recorded as "needs a template", and loading it without one is a
  `ValueError` naming the field.

Encoding (`"structure"` in the file's manifest). Equal subtrees are recorded once (a
model of 48 equal blocks records one block), in a node table where children come before
their parents:

```
{"version": 1, "classes": [{"name": "mod:Qual", "fields": [...], "static": [...],
                            "stack": {field: axis}}, ...],
 "nodes": [node, ...], "root": ref}
ref   := "jax" | "numpy" | "scalar" | "python"     (a leaf, and what kind it was)
       | null                                      (None)
       | i                                         (nodes[i], i below the parent's id)
node  := {"list": [ref, ...]} | {"tuple": [ref, ...]}
       | {"dict": [[key, ref], ...]} | {"odict": [[key, ref], ...]}
       | {"namedtuple": "mod:Qual", "items": [ref, ...]}
       | {"class": i, "fields": [ref, ...], "static": [value, ...]}   (a treeclass)
       | {"template": "TypeName"}                  (cannot be rebuilt)
value := str | int | float | bool | null | {"float": "nan"} | {"list": [...]}
       | {"tuple": [...]} | {"dict": [[value, value], ...]} | {"frozenset": [...]}
       | {"complex": [re, im]} | {"bytes": "hex"} | {"ref": "mod:Qual"}
       | {"enum": "mod:Qual", "name": member} | {"namedtuple": "mod:Qual", "items": [...]}
       | {"needs": "why"}
```
"""

from __future__ import annotations

import collections
import enum
import json
import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .._class._meta import FLAT, meta_of, own_meta
from .._errors import reraise_if_too_deep
from ._io_leaves import NUMBERS, show

__all__ = ["STRUCTURE_VERSION", "LeafSlot", "encode_value", "rebuild", "record_structure"]

STRUCTURE_VERSION = 1
_LEAF_KINDS = ("jax", "numpy", "scalar", "python")


# -- names --------------------------------------------------------------------------------------


def _qualified(obj: Any) -> str | None:
    """`"module:Qual.name"` when looking that name up (as `_find` does) gives `obj` back."""
    module = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qual, str)):
        return None
    name = f"{module}:{qual}"
    return name if _find(name) is obj else None


def _find(name: str) -> Any:
    """The object `"module:Qual.name"` names, looked up without importing or running code;
    None when the module is not imported or the name is not there."""
    module_name, _, qual = name.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None or not qual:
        return None
    for part in qual.split("."):
        namespace = _namespace(obj)
        if namespace is None or part not in namespace:
            return None
        obj = namespace[part]
    return obj


def _namespace(obj: Any) -> Any:
    # A module's or class's own namespace: reading it runs no user code (no __getattr__).
    if isinstance(obj, type) or type(obj).__name__ == "module":
        return object.__getattribute__(obj, "__dict__")
    return None


def _is_namedtuple_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


# -- recording ----------------------------------------------------------------------------------


def encode_value(value: Any) -> Any:
    """A static value as JSON (see the module docstring); `{"needs": why}` if it cannot be."""
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, enum.Enum):
        cls = _qualified(t)
        if cls is not None:
            return {"enum": cls, "name": value.name}
        return {"needs": f"an enum member of {t.__qualname__}, a class defined in a function"}
    if t is list or t is tuple or t is frozenset:
        items = [encode_value(v) for v in value]
        if t is frozenset:
            items.sort(key=repr)
        return _first_need(items) or {t.__name__: items}
    if t is dict:
        pairs = [[encode_value(k), encode_value(v)] for k, v in value.items()]
        return _first_need([x for p in pairs for x in p]) or {"dict": pairs}
    if t is complex:
        return {"complex": [encode_value(value.real), encode_value(value.imag)]}
    if t is bytes:
        return {"bytes": value.hex()}
    if _is_namedtuple_class(t):
        cls = _qualified(t)
        if cls is None:
            return {"needs": f"a {t.__qualname__} (a namedtuple defined in a function)"}
        items = [encode_value(v) for v in value]
        return _first_need(items) or {"namedtuple": cls, "items": items}
    ref = _qualified(value) if callable(value) else None
    if ref is not None:
        return {"ref": ref}
    what = getattr(value, "__qualname__", None)
    if callable(value) and isinstance(what, str):
        where = "defined in a function" if "<" in what else "not found under its own name"
        return {"needs": f"{what} ({where})"}
    return {"needs": f"an instance of {t.__qualname__} (not a JSON value)"}


def _first_need(items: list[Any]) -> dict[str, str] | None:
    for item in items:
        if type(item) is dict and "needs" in item:
            return item
    return None


class _Recorder:
    def __init__(self) -> None:
        self.classes: list[dict[str, Any]] = []
        self.class_index: dict[type, int | str] = {}
        self.metas: dict[type, Any] = {}
        self.nodes: list[dict[str, Any]] = []
        self.ids: dict[Any, int] = {}

    def class_of(self, cls: type) -> int | str:
        """The class table index of treeclass `cls`; a str (why not) if it cannot be found."""
        found = self.class_index.get(cls)
        if found is None:
            name = _qualified(cls)
            if name is None:
                found = f"a {cls.__qualname__} (a class defined in a function)"
            else:
                meta = self.metas[cls] = meta_of(cls)
                assert meta is not None
                found = len(self.classes)
                self.classes.append(
                    {
                        "name": name,
                        "fields": list(meta.child_names),
                        "static": list(meta.static_names),
                        "stack": {f.name: f.stack for f in meta.fields if f.stack is not None},
                    }
                )
            self.class_index[cls] = found
        return found

    def intern(self, key: Any, node: dict[str, Any]) -> int:
        """The id of `node` in the node table: equal subtrees are recorded once."""
        found = self.ids.get(key)
        if found is None:
            found = self.ids[key] = len(self.nodes)
            self.nodes.append(node)
        return found

    def node(self, x: Any) -> Any:
        """A leaf kind, None, or the node table id of `x`'s (sub)tree."""
        t = type(x)
        kind = _KIND_OF.get(t)
        if kind is None:
            kind = _kind_of(t)
        if type(kind) is str:
            return kind  # a leaf
        if kind is _TREECLASS:
            index = self.class_of(t)
            if type(index) is str:
                return self.template(index)
            meta = self.metas[t]
            d = x.__dict__
            # Leaf children inline (no call per leaf): half the nodes of most models.
            children = [
                k if type(k := _KIND_OF.get(type(c))) is str else self.node(c)
                for c in [d[n] for n in meta.child_names]
            ]
            static = [encode_value(d[n]) for n in meta.static_names]
            key = (index, json.dumps(static) if static else "", *children)
            return self.intern(key, {"class": index, "fields": children, "static": static})
        if x is None:
            return None
        if kind is _SEQUENCE:
            items = [self.node(c) for c in x]
            return self.intern((t, *items), {t.__name__: items})
        if kind is _MAPPING:
            keys = [encode_value(k) for k in x]
            if _first_need(keys):
                return self.template(f"a {t.__name__} with keys that are not JSON values")
            tag = "dict" if t is dict else "odict"
            pairs = [[k, self.node(c)] for k, c in zip(keys, x.values())]
            key = (tag, json.dumps(keys), *[c for _, c in pairs])
            return self.intern(key, {tag: pairs})
        if kind is _NAMEDTUPLE:
            name = _qualified(t)
            if name is None:
                return self.template(f"a {t.__qualname__} (a namedtuple defined in a function)")
            items = [self.node(c) for c in x]
            return self.intern((name, *items), {"namedtuple": name, "items": items})
        return self.template(f"an instance of {t.__module__}.{t.__qualname__}")

    def template(self, what: str) -> int:
        return self.intern(("template", what), {"template": what})


_TREECLASS, _SEQUENCE, _MAPPING, _NAMEDTUPLE, _OTHER = (object() for _ in range(5))
# What each type is, worked out once per type (recording visits every node).
_KIND_OF: dict[type, Any] = {
    type(None): _OTHER,  # None: no kind of its own (checked by identity)
    list: _SEQUENCE,
    tuple: _SEQUENCE,
    dict: _MAPPING,
    collections.OrderedDict: _MAPPING,
    **{t: "python" for t in NUMBERS},
}


def _kind_of(t: type) -> Any:
    if issubclass(t, jax.Array):
        kind = "jax"
    elif issubclass(t, np.ndarray):
        kind = "numpy"
    elif issubclass(t, np.generic):
        kind = "scalar"
    elif meta_of(t) is not None:
        kind = _TREECLASS
    elif _is_namedtuple_class(t):
        kind = _NAMEDTUPLE
    else:
        kind = _OTHER
    if len(_KIND_OF) < 1024:
        _KIND_OF[t] = kind
    return kind


def record_structure(tree: Any) -> dict[str, Any]:
    """The JSON structure of `tree` (see the module docstring)."""
    rec = _Recorder()
    try:
        root = rec.node(tree)
    except RecursionError:
        # Saving must not fail where flattening did not: record that this tree needs
        # a template (a load without one then says so) instead.
        rec = _Recorder()
        root = rec.template("a tree nested deeper than Python's recursion limit")
    return {"version": STRUCTURE_VERSION, "classes": rec.classes, "nodes": rec.nodes, "root": root}


# -- rebuilding ---------------------------------------------------------------------------------


class LeafSlot:
    """A placeholder leaf of a rebuilt template: what kind of leaf the saved tree held."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


_SLOTS = {k: LeafSlot(k) for k in _LEAF_KINDS}


def _bad(path: str, why: str) -> ValueError:
    return ValueError(f"its recorded structure is invalid at {show(path)}: {why}")


class _Builder:
    def __init__(self, fn: str, file: str, classes: Any, nodes: Any) -> None:
        self.fn, self.file = fn, file
        if not (isinstance(classes, list) and isinstance(nodes, list)):
            raise _bad("", "no class or node list")
        self.entries = classes
        self.nodes = nodes
        self.built: dict[int, Any] = {}
        self.classes: dict[int, tuple[type, Any]] = {}

    def need_template(self, path: str, why: str) -> ValueError:
        return ValueError(
            f"{self.fn}: {self.file} cannot be loaded without a template: {show(path)} "
            f"holds {why}, which a file cannot describe (it records JSON values, "
            "treeclasses, containers, and functions, classes and enums defined at the top "
            "of a module). Pass like= (a template of the saved model, e.g. "
            "jax.eval_shape(init, key)), or use ptc.tree_read(path) for the arrays alone."
        )

    def treeclass(self, path: str, i: Any) -> tuple[type, Any]:
        got = self.classes.get(i) if type(i) is int else None
        if got is not None:
            return got
        if not (type(i) is int and 0 <= i < len(self.entries)):
            raise _bad(path, "an unknown class index")
        entry = self.entries[i]
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
            raise _bad(path, "a class entry without a name")
        name = entry["name"]
        cls = _find(name)
        module = name.partition(":")[0]
        if cls is None:
            imported = module in sys.modules
            raise ValueError(
                f"{self.fn}: {self.file} holds a {name.replace(':', '.')} at {show(path)}, "
                + (
                    f"which module {module!r} does not define (any more)."
                    if imported
                    else f"and module {module!r} is not imported; loading never imports."
                )
                + f" Import the module that defines the class first (import {module}), "
                "or pass like= (a template of the saved model)."
            )
        if not (isinstance(cls, type) and meta_of(cls) is not None):
            raise ValueError(
                f"{self.fn}: {self.file} names {name.replace(':', '.')} as the class at "
                f"{show(path)}, but that is not a treeclass; only treeclasses are rebuilt "
                "by name. Pass like= (a template of the saved model)."
            )
        if own_meta(cls) is None:
            cls.__new__(cls)  # type: ignore[call-overload]  # registers an undecorated subclass
        meta = own_meta(cls)
        assert meta is not None
        self._check_fields(path, cls, meta, entry)
        self.classes[i] = (cls, meta)
        return cls, meta

    def _check_fields(self, path: str, cls: type, meta: Any, entry: dict[str, Any]) -> None:
        fields, static = entry.get("fields"), entry.get("static")
        stack = entry.get("stack", {})
        if not (
            isinstance(fields, list)
            and isinstance(static, list)
            and all(isinstance(n, str) for n in fields + static)
            and isinstance(stack, dict)
        ):
            raise _bad(path, "a class entry without valid field lists")
        saved = {n: "child" for n in fields} | {n: "static" for n in static}
        now = {n: "child" for n in meta.child_names} | {n: "static" for n in meta.static_names}
        diffs = []
        gone = [n for n in saved if n not in now]
        new = [n for n in now if n not in saved]
        if gone:
            diffs.append("fields in the file but not in the class: " + ", ".join(gone))
        if new:
            diffs.append("fields in the class but not in the file: " + ", ".join(new))
        for n in saved:
            if n in now and saved[n] != now[n]:
                was = "static" if saved[n] == "static" else "not static"
                diffs.append(f"{n!r} was {was} when saved")
        stacks = {f.name: f.stack for f in meta.fields if f.stack is not None}
        for n in sorted(set(stack) | set(stacks)):
            if n in saved and n in now and stack.get(n) != stacks.get(n):
                diffs.append(f"{n!r} had stack={stack.get(n)!r}, now stack={stacks.get(n)!r}")
        if diffs:
            raise ValueError(
                f"{self.fn}: the class {cls.__qualname__} at {show(path)} changed since "
                f"{self.file} was saved (" + "; ".join(diffs) + "). Load it with like= (a "
                "template of the class as it was, then convert), or restore the old fields."
            )

    def value(self, path: str, v: Any) -> Any:
        t = type(v)
        if v is None or t in (bool, int, float, str):
            return v
        if t is not dict or len(v) not in (1, 2):
            raise _bad(path, f"an invalid static value {v!r}")
        if "needs" in v:
            raise self.need_template(path, str(v["needs"]))
        if "list" in v or "tuple" in v or "frozenset" in v:
            (tag, items), *_ = v.items()
            items = [self.value(path, x) for x in _list(path, items)]
            return {"list": list, "tuple": tuple, "frozenset": frozenset}[tag](items)
        if "dict" in v:
            pairs = _list(path, v["dict"])
            return {self.value(path, k): self.value(path, x) for k, x in map(_pair(path), pairs)}
        if "float" in v and v["float"] in ("nan", "inf", "-inf"):
            return float(v["float"])
        if "complex" in v:
            re_, im = _pair(path)(v["complex"])
            return complex(self.value(path, re_), self.value(path, im))
        if "bytes" in v and isinstance(v["bytes"], str):
            try:
                return bytes.fromhex(v["bytes"])
            except ValueError:
                raise _bad(path, "invalid bytes") from None
        if "ref" in v:
            return self._named(path, v["ref"], lambda obj: True, "function or class")
        if "enum" in v:
            cls = self._named(path, v["enum"], _is_enum, "enum")
            member = cls.__members__.get(v.get("name"))
            if member is None:
                raise ValueError(
                    f"{self.fn}: {self.file} holds {v['enum']}.{v.get('name')} at "
                    f"{show(path)}, a member the enum no longer has. Pass like= (a template)."
                )
            return member
        if "namedtuple" in v:
            cls = self._named(path, v["namedtuple"], _is_namedtuple_class, "namedtuple")
            return cls(*[self.value(path, x) for x in _list(path, v.get("items"))])
        raise _bad(path, f"an invalid static value {v!r}")

    def _named(self, path: str, name: Any, ok: Callable[[Any], bool], what: str) -> Any:
        if not isinstance(name, str):
            raise _bad(path, f"an invalid {what} name")
        obj = _find(name)
        if obj is None or not ok(obj):
            module = name.partition(":")[0]
            raise ValueError(
                f"{self.fn}: {self.file} holds the {what} {name.replace(':', '.')} at "
                f"{show(path)}, which is not defined in the modules imported now (loading "
                f"never imports). Import {module} first, or pass like= (a template)."
            )
        return obj

    def node(self, path: str, ref: Any, below: int | None = None) -> Any:
        """The template (sub)tree a reference stands for: a leaf kind, None, or a node id
        (built once, then shared: a template's nodes are never mutated)."""
        if ref is None:
            return None
        if type(ref) is str:
            slot = _SLOTS.get(ref)
            if slot is None:
                raise _bad(path, f"an unknown leaf kind {ref!r}")
            return slot
        if type(ref) is not int or not 0 <= ref < (len(self.nodes) if below is None else below):
            # Children come before their parents: no node can contain itself.
            raise _bad(path, "an invalid node reference")
        built = self.built.get(ref, _MISSING)
        if built is _MISSING:
            built = self.built[ref] = self._build(path, ref, self.nodes[ref])
        return built

    def _build(self, path: str, i: int, x: Any) -> Any:
        if type(x) is not dict:
            raise _bad(path, "an invalid node")
        if "class" in x:
            cls, meta = self.treeclass(path, x["class"])
            children, static = _list(path, x.get("fields")), _list(path, x.get("static"))
            if len(children) != len(meta.child_names) or len(static) != len(meta.static_names):
                raise _bad(path, "a node whose field count differs from its class entry")
            obj = object.__new__(cls)
            d = obj.__dict__
            for n, c in zip(meta.child_names, children):
                d[n] = self.node(f"{path}.{n}", c, i)
            for n, v in zip(meta.static_names, static):
                d[n] = self.value(f"{path}.{n}", v)
            d[FLAT] = meta.flatten(obj)
            return obj
        if "list" in x or "tuple" in x:
            (tag, items), *_ = x.items()
            built = [self.node(f"{path}[{j}]", c, i) for j, c in enumerate(_list(path, items))]
            return built if tag == "list" else tuple(built)
        if "dict" in x or "odict" in x:
            (tag, pairs), *_ = x.items()
            out = {} if tag == "dict" else collections.OrderedDict()
            for k, c in map(_pair(path), _list(path, pairs)):
                key = self.value(path, k)
                out[key] = self.node(f"{path}[{key!r}]", c, i)
            return out
        if "namedtuple" in x:
            cls = self._named(path, x["namedtuple"], _is_namedtuple_class, "namedtuple")
            items = _list(path, x.get("items"))
            return cls(*[self.node(f"{path}.{f}", c, i) for f, c in zip(cls._fields, items)])
        if "template" in x:
            raise self.need_template(path, str(x["template"]))
        raise _bad(path, "an invalid node")


_MISSING = object()


def _is_enum(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, enum.Enum)


def _list(path: str, x: Any) -> list[Any]:
    if not isinstance(x, list):
        raise _bad(path, "a list was expected")
    return x


def _pair(path: str) -> Callable[[Any], tuple[Any, Any]]:
    def pair(p: Any) -> tuple[Any, Any]:
        if not (isinstance(p, list) and len(p) == 2):
            raise _bad(path, "a pair was expected")
        return p[0], p[1]

    return pair


def rebuild(fn: str, file: str, structure: Any) -> Any:
    """A template tree from a recorded structure, its leaves `LeafSlot`s.

    Raises `ValueError` when a class cannot be found or has changed, when a node or
    value was recorded as needing a template, or when the structure is malformed (the
    message then starts "its recorded structure is invalid": callers add the file).
    """
    if not isinstance(structure, dict):
        raise _bad("", "not an object")
    if structure.get("version") != STRUCTURE_VERSION:
        raise _bad("", f"unknown version {structure.get('version')!r}")
    builder = _Builder(fn, file, structure.get("classes"), structure.get("nodes"))
    try:
        return builder.node("", structure.get("root"))
    except RecursionError as e:
        reraise_if_too_deep(fn, e)
        raise
