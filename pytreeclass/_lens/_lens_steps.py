"""The steps of a lens path.

A path is a tuple of steps: `PathStep` (`.name`, `[key]`, `[i]`, `[a:b]`, a traced `[i]`),
`ALL` (`[...]`) and `FilterStep` (a filter in brackets). `_lens_walk` follows a path of
single steps; `_select` follows any path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._filters import Filter

__all__ = [
    "ALL",
    "FilterStep",
    "LensKeyError",
    "PathStep",
    "SliceKey",
    "TracedIndex",
]


# -- steps ------------------------------------------------------------------------------------


class _Step:
    __slots__ = ()
    multi = False


class SliceKey:
    """The key of a `[a:b]` step: a hashable stand-in for a `slice` (unhashable before 3.12)."""

    __slots__ = ("slice",)

    def __init__(self, s: slice) -> None:
        self.slice = s

    def __eq__(self, other: object) -> bool:
        return type(other) is SliceKey and _parts(other.slice) == _parts(self.slice)

    def __hash__(self) -> int:
        return hash(_parts(self.slice))

    def __repr__(self) -> str:
        s = self.slice
        text = ("" if s.start is None else str(s.start)) + ":"
        text += "" if s.stop is None else str(s.stop)
        return text if s.step is None else f"{text}:{s.step}"


class TracedIndex:
    """The key of a `[i]` step whose `i` is a traced integer (inside `jit`, `scan`,
    `fori_loop`): it can only pick a layer of a stacked field. Compared by identity: a
    tracer is neither hashable nor known."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<traced {self.value.dtype}>"


def _parts(s: slice) -> tuple[Any, Any, Any]:
    return (s.start, s.stop, s.step)


class PathStep(_Step):
    """`.name` (attr=True) or `["key"]` / `[i]` / `[a:b]` (attr=False)."""

    __slots__ = ("attr", "key")

    def __init__(self, key: Any, attr: bool) -> None:
        self.key, self.attr = key, attr

    def __repr__(self) -> str:
        return f".{self.key}" if self.attr else f"[{self.key!r}]"

    def __eq__(self, other: object) -> bool:
        return type(other) is PathStep and other.key == self.key and other.attr == self.attr

    def __hash__(self) -> int:
        return hash((self.key, self.attr))

    def error(self, message: str, mapping: bool = False) -> Exception:
        """The exception for this step not existing: a missing attribute, key or index.

        `mapping`: the node is keyed (a dict, or a foreign node with `DictKey` children),
        so any missing `[key]`, an int one included, is a missing key (API.md section 4)."""
        if self.attr:
            return AttributeError(message)
        if mapping or type(self.key) is str:
            return LensKeyError(message)
        return IndexError(message)


class _Everything(_Step):
    __slots__ = ()
    multi = True

    def __repr__(self) -> str:
        return "[...]"


class FilterStep(_Step):
    __slots__ = ("filter",)
    multi = True

    def __init__(self, f: Filter) -> None:
        self.filter = f

    def __repr__(self) -> str:
        return f"[{self.filter!r}]"

    def __eq__(self, other: object) -> bool:
        return type(other) is FilterStep and other.filter == self.filter

    def __hash__(self) -> int:
        return hash(self.filter)


ALL = _Everything()


class LensKeyError(KeyError):
    """A `KeyError` whose message reads as a sentence (`KeyError` quotes its argument)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
