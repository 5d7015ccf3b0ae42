"""Generate straight-line source for `__init__`, flatten and unflatten, once per class.

Generated functions are registered in `linecache`, so tracebacks and pdb show their source
(the attrs trick). Straight-line code with no loops is what makes flatten and unflatten fast.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable
from typing import Any

__all__ = ["compile_function", "flatten_sources", "unflatten_source"]

_counter = itertools.count()


def compile_function(
    name: str,
    source: str,
    namespace: dict[str, Any],
    owner: str,
    *,
    module_globals: dict[str, Any] | None = None,
) -> Callable:
    """Compile `source` (one `def name(...)`) in `namespace`; show it in tracebacks.

    With `module_globals` (the dataclasses way, for `__init__`), the function's globals are
    that module's, so `typing.get_type_hints` resolves string annotations there, and the
    names in `namespace` reach it as closure variables of a factory instead.
    """
    filename = f"<pytreeclass generated {name} of {owner} #{next(_counter)}>"
    if module_globals is None:
        exec(compile(source, filename, "exec"), namespace)  # source we generated ourselves
        fn = namespace[name]
    else:
        body = "".join(f"    {line}\n" for line in source.splitlines())
        source = f"def __ptc_make__({', '.join(namespace)}):\n{body}    return {name}\n"
        local: dict[str, Any] = {}
        exec(compile(source, filename, "exec"), module_globals, local)
        fn = local["__ptc_make__"](**namespace)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return fn


def flatten_sources(child_names: tuple[str, ...], static_names: tuple[str, ...]) -> tuple[str, str]:
    """Sources of `flatten(self)` and `flatten_with_keys(self)`.

    Children come out as a tuple in field order; the aux data is `None` without static
    fields, else the type tag of every static value followed by the values:
    `(tag_a, tag_b, a, b)`. JAX compares aux data with `==`, under which `1`, `1.0` and
    `True` are equal; with the tags, treedefs (and so `jax.jit`'s cache and ours) tell
    such values apart, and nobody is handed another tree's static value. The namespace
    must bind `_tag` (`_cache.type_tag`), `_type`, `_isinstance` and `_tuple` (the
    builtins, under names no field can shadow).
    """
    if not static_names:
        aux, head = "None", ""
    else:
        head = "".join(f"    s{i} = self.{n}\n" for i, n in enumerate(static_names))
        # A tuple's items get tags too; anything else is tagged by its type, inline.
        tags = "".join(
            f"_tag(s{i}) if _isinstance(s{i}, _tuple) else _type(s{i}), "
            for i in range(len(static_names))
        )
        aux = "(" + tags + "".join(f"s{i}, " for i in range(len(static_names))) + ")"
    children = "".join(f"self.{n}, " for n in child_names)
    keyed = "".join(f"(_k{i}, self.{n}), " for i, n in enumerate(child_names))
    flatten = f"def flatten(self):\n{head}    return ({children}), {aux}\n"
    flatten_keys = f"def flatten_with_keys(self):\n{head}    return ({keyed}), {aux}\n"
    return flatten, flatten_keys


def unflatten_source(
    field_order: tuple[str, ...], child_names: tuple[str, ...], static_names: tuple[str, ...]
) -> str:
    """Source of `unflatten(aux, children)`: `object.__new__` and direct `__dict__` writes.

    It never calls `__init__` or converters: JAX unflattens with tracers, `None` and
    `object()` sentinels, which a user's `__init__` may reject.
    """
    lines = ["def unflatten(aux, children):", "    self = _new(_cls)", "    d = self.__dict__"]
    # Keys go in in field order, as `__init__` puts them: instance dicts then share one key
    # table (PEP 412). When the static fields come last, unpacking straight into `d[...]`
    # targets keeps that order and saves a local store and load per field.
    direct = field_order == child_names + static_names
    target = (lambda n: f"d[{n!r}]") if direct else (lambda n: f"_c_{n}")
    if child_names:
        lines.append("    " + "".join(f"{target(n)}, " for n in child_names) + "= children")
    if static_names:  # aux is the tags, then the values (see `flatten_sources`)
        tags = "_, " * len(static_names)
        lines.append("    " + tags + "".join(f"{target(n)}, " for n in static_names) + "= aux")
    if not direct:
        lines.extend(f"    d[{n!r}] = _c_{n}" for n in field_order)
    lines.append("    d['__ptc_flat__'] = (children, aux)")
    lines.append("    return self")
    return "\n".join(lines) + "\n"
