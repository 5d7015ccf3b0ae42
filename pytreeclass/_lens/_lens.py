"""Lenses: `model.at.layers[0].w.set(v)` returns an updated copy; the original never changes.

A `Lens` is a root plus an interned `_Path` of steps. It is immutable: every step returns
a new one. An update through a path of single steps runs a function compiled for that path
and the node types it met (`compile_put`), and falls back to the general walk otherwise.

* Single steps (`.name`, `["key"]`, `[i]`) walk to one subtree. A path made only of them
  is updated by rebuilding the nodes along it and nothing else: no flatten of the whole
  tree, no `__init__`, no converters, and every untouched subtree is shared by identity.
* A path with a multi step (`[...]`, a filter, `.nth`) is a *selection*, made by the one
  selection engine (`_select`) from the root: every step composes with every other, and
  a filter judges leaves as `tree_mask(root, filter)` does. The subtree reached before the
  first multi step is the *focus* that `get()` returns with holes. An update through a
  selection whose steps depend on structure alone runs a plan cached per treedef.
* A filter that names a node type (`ptc.OfType(Linear)`) selects whole nodes, and `apply`
  calls `fn` once per node (once per layer of a stacked field).

Errors name the path from the root, which is called `model` when it is a treeclass or
another dataclass-like module (Equinox, flax.struct) and `tree` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import jax
import numpy as np
from jax.core import Tracer

from .._filters import All, Not, OfKind, OfType, PathContains, as_filter
from .._filters import Any as Any_
from ._lens_compile import MISS, compile_put
from ._lens_steps import (
    ALL,
    FilterStep,
    PathStep,
    SliceKey,
    TracedIndex,
)
from ._lens_walk import (
    Mapped,
    StackView,
    path_text,
    put,
    walk,
)
from ._select import NthStep, select
from ._select_edit import (
    is_single_leaf,
    sel_apply,
    sel_get,
    sel_insert,
    sel_items,
    sel_remove,
    sel_set,
    sel_set_items,
)
from ._select_plans import planned_update

__all__ = ["Lens", "at", "lens_on"]

T = TypeVar("T")

# -- the lens itself ---------------------------------------------------------------------------


class _Path:
    """The steps of a lens, without its root. Paths are interned: the child of a path for a
    given `.name` or `[key]` is made once and reused, so a step costs one dict lookup and
    no tuple copy, and `model.at.layers[3].w` built twice shares one `_Path`."""

    __slots__ = ("attrs", "items", "memo", "plan", "plans", "split", "steps", "tries")

    def __init__(self, steps: tuple[Any, ...], split: int) -> None:
        # split: index of the first multi step (`[...]`, a filter, `.nth`), or -1
        self.steps, self.split = steps, split
        self.memo: list[Any] = [None, None]  # a selection's plan (`planned_update`)
        self.attrs: dict[str, _Path] = {}  # `.name` -> child path
        self.items: dict[Any, _Path] = {}  # `[str]`, `[int]`, `[...]` -> child path
        self.plans: dict[type, Any] = {}  # type of root -> compiled update (`compile_put`)
        self.plan: Any = None  # the one used last; it checks the root's type itself
        self.tries = 0  # compiled updates made for this path

    def put(self, root: Any, value: Any, fn: Any) -> Any:
        """`.set(value)` (fn None) or `.apply(fn)` through this path of single steps.

        `Lens.set` tries `self.plan` itself first; this tries the one for the root's type."""
        plan = self.plans.get(type(root))
        if plan is not None and plan is not self.plan:
            out = plan(root, value, fn)
            if out is not MISS:
                self.plan = plan
                return out
        trail: list[Any] = []
        out = put(root, self.steps, (root, self.steps, -1), value, fn, trail)
        if self.tries < 8 and _COMPILED[0] < _MAX_COMPILED:  # trees may vary; bound the code
            self.tries += 1
            _COMPILED[0] += 1
            plan = compile_put(self.steps, trail)
            if plan is not None:
                self.plans[type(root)] = self.plan = plan
        return out

    def extend(self, step: Any, table: dict[Any, _Path] | None, key: Any) -> _Path:
        """The child path for `step`, remembered in `table[key]` (None: not interned)."""
        split = self.split
        if split < 0 and step.multi:
            split = len(self.steps)
        child = _Path((*self.steps, step), split)
        if table is not None and _INTERNED[0] < _MAX_INTERNED:  # bound memory on odd keys
            _INTERNED[0] += 1
            table[key] = child
        return child


_ROOT = _Path((), -1)
_INTERNED, _COMPILED = [0], [0]
_MAX_INTERNED, _MAX_COMPILED = 1 << 16, 4096


_ARRAYS = (jax.Array, np.ndarray)


def _is_int_scalar(x: Any) -> bool:
    """A 0-d integer JAX or NumPy array (an index, concrete or traced)."""
    return isinstance(x, _ARRAYS) and x.ndim == 0 and np.issubdtype(x.dtype, np.integer)


# A lens keeps `(root, path)` in its one slot.
_OWN = frozenset(
    {"get", "set", "apply", "items", "paths", "remove", "insert_before", "insert_after", "nth"}
    | {"set_items", "_ptc"}
)
_getattribute = object.__getattribute__
_new = object.__new__


class Lens(Generic[T]):
    """An immutable path into a pytree; `.get()`, `.set(v)` and `.apply(fn)` end it.

    Build one with `obj.at` (treeclasses) or `ptc.at(tree)` (any pytree), then chain steps:
    `.name`, `["key"]`, `[i]` (negative too; on a stacked field `i` may be a traced
    integer), `[...]` (every child) or a filter in
    brackets (a kind, a type, a callable, a mask, `ptc.Any/All/Not`, `ptc.PathContains`;
    a bare `str` or `int` is always a key/index step). A filter naming a node type
    (`ptc.OfType(Linear)`) selects whole nodes: `apply(fn)` then calls `fn` once per
    node. `.items()` and `.paths()` list what a lens selects. A field called `get`,
    `set`, `apply`, `items` or `paths` is reached with brackets (`["get"]`); names of
    the form `__x__`, `_repr_*` and `_ipython_*` likewise need brackets.

    Raises:
        AttributeError: a `.name` step that does not exist, when the path is used; the
            message has the whole path (`model.layerz: no field 'layerz'; ...`).
        KeyError: a `["key"]` step that does not exist (likewise).
        IndexError: an `[i]` step out of range (likewise).

    Examples:
        >>> import pytreeclass as ptc
        >>> ptc.at({"a": [1, 2], "b": 3})["a"][-1].set(5)
        {'a': [1, 5], 'b': 3}
    """

    __slots__ = ("_ptc",)

    def __init__(self, tree: T, /) -> None:
        _SET(self, (tree, _ROOT))

    # -- steps --

    # __getattribute__ rather than __getattr__: on Python < 3.12 the failed normal lookup
    # that precedes __getattr__ builds an AttributeError, which costs more than the step.
    def __getattribute__(self, name: str) -> Lens[T]:
        if name in _OWN:
            return _getattribute(self, name)
        root, path = _GET(self)
        try:
            child = path.attrs[name]  # a step taken before from this path: no checks
        except KeyError:
            if name[:2] == "__" and name[-2:] == "__":
                return _getattribute(self, name)  # protocols (copy, pickle) probe dunders
            if name.startswith(("_repr_", "_ipython_")):
                raise AttributeError(name) from None  # IPython probes; they are not steps
            child = path.extend(PathStep(name, True), path.attrs, name)
        new = _new(Lens)
        _SET(new, (root, child))
        return new

    def __getitem__(self, key: Any) -> Lens[T]:
        root, path = _GET(self)
        t = type(key)
        if t is str or t is int or key is Ellipsis:
            try:
                child = path.items[key]
            except KeyError:
                step = ALL if key is Ellipsis else PathStep(key, False)
                child = path.extend(step, path.items, key)
        else:
            if t in _FILTER_TYPES or isinstance(key, type):
                # Filters that compare by value (kinds, types, names) are interned.
                try:
                    child = path.items[key]
                except KeyError:
                    step = FilterStep(as_filter(key))
                    child = path.extend(step, path.items if _internable(key) else None, key)
                except TypeError:  # unhashable
                    child = path.extend(FilterStep(as_filter(key)), None, None)
                new = _new(Lens)
                _SET(new, (root, child))
                return new
            elif isinstance(key, str):
                step = PathStep(str(key), False)
            elif isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
                step = PathStep(int(key), False)
            elif isinstance(key, slice):
                step = PathStep(SliceKey(key), False)
            elif _is_int_scalar(key):  # a JAX / NumPy 0-d integer array
                if isinstance(key, Tracer):
                    step = PathStep(TracedIndex(key), False)  # a layer of a stack only
                else:
                    step = PathStep(int(key), False)
            else:
                step = FilterStep(as_filter(key))
            child = path.extend(step, None, None)
        new = _new(Lens)
        _SET(new, (root, child))
        return new

    # -- terminals --

    def get(self) -> Any:
        """The value at the path; with `[...]` or a filter, the focus with holes (`None`).

        For a node selection the selected nodes stand whole in the focus (every leaf
        they hold is kept); `.items()` lists them one by one. A stacked field's arrays
        hold every layer, so a selection that holds some of its layers (and not others)
        cannot be shown with holes: `.items()` gives those layers one by one.

        Returns:
            The leaf or subtree at the path; for a selection, the subtree at its start
            with every unselected leaf replaced by `None` (as `ptc.tree_filter` does).

        Raises:
            AttributeError: a step names a missing field or attribute.
            KeyError: a step names a missing key.
            IndexError: a step's index is out of range.
            ValueError: the selection holds some layers of a stacked field, not all.
        """
        root, path = _GET(self)
        state = (root, path.steps, path.split)
        if path.split < 0:
            try:
                out = walk(root, path.steps, state, [])
            except Mapped:
                return _mapped_get(root, path)
            return out.value() if type(out) is StackView else out
        return sel_get(select(root, path.steps, state, path.split))

    def set(self, value: Any) -> T:
        """A copy of the root with `value` at the path (or at every selected leaf).

        A node selection puts `value` (any object) in place of every selected node.

        Only the nodes on the path are rebuilt; everything else is shared with the root.

        Args:
            value: for a single path, what to put there (a leaf or a subtree). For a
                selection, a single pytree leaf given to every selected leaf, or a tree with
                `get()`'s structure where `None` keeps what is there.

        Returns:
            A new root of the same type; the root itself is unchanged.

        Raises:
            AttributeError: a step names a missing field, or a selection is followed by a
                static field's name.
            KeyError: a step names a missing key.
            IndexError: a step's index is out of range.
            ValueError: for a selection, `value` has neither a leaf's nor `get()`'s
                structure.
            TypeError: a static field is given an array or an unhashable value.
        """
        root, path = _GET(self)
        plan = path.plan  # the hot case, inline: a compiled update (only single-step paths)
        if plan is not None:
            out = plan(root, value, None)
            if out is not MISS:
                return out
        if path.split < 0:
            try:
                return path.put(root, value, None)
            except Mapped:
                return _mapped_set(root, path, value, "set")
        state = (root, path.steps, path.split)
        if value is None or is_single_leaf(value):
            return planned_update(root, path.steps, state, path.split, lambda _: value, path.memo)
        return sel_set(select(root, path.steps, state, path.split), value)

    def apply(self, fn: Callable[..., Any], *, with_path: bool = False) -> T:
        """A copy of the root with `fn` applied at the path (or to every selected leaf).

        A node selection calls `fn` once per selected node and puts what it returns
        (any value or subtree) in the node's place.

        Args:
            fn: called on the value at the path (or on each selected leaf); its result
                takes the value's place.
            with_path: call `fn(key_path, value)` instead, with the key path from the
                root (a tuple of JAX keys), as `jax.tree_util.tree_map_with_path` does.

        Returns:
            A new root of the same type; the root itself is unchanged.

        Raises:
            AttributeError: a step names a missing field or attribute.
            KeyError: a step names a missing key.
            IndexError: a step's index is out of range.
        """
        root, path = _GET(self)
        if path.split < 0 and not with_path:
            plan = path.plan
            if plan is not None:
                out = plan(root, None, fn)
                if out is not MISS:
                    return out
            try:
                return path.put(root, None, fn)
            except Mapped:  # inside each item of a list's slice: fn per item
                return sel_apply(_selection(root, path), fn, False)
        if not with_path:
            state = (root, path.steps, path.split)
            return planned_update(root, path.steps, state, path.split, fn, path.memo)
        return sel_apply(_selection(root, path), fn, with_path)

    def items(self) -> list[tuple[tuple[Any, ...], Any]]:
        """`(key path, value)` of everything the lens selects, in tree order.

        Key paths are tuples of JAX keys from the root, as `jax.tree_util.keystr` and
        `tree_flatten_with_path` use them: one pair for a single path, one per selected
        leaf for a leaf selection, one per selected node (or leaf) for a node selection.

        Returns:
            A list of `(key path, value)` pairs; an empty list when the lens selects
            nothing.

        Raises:
            AttributeError: a step names a missing field or attribute.
            KeyError: a step names a missing key.
            IndexError: a step's index is out of range.

        Examples:
            >>> import pytreeclass as ptc
            >>> ptc.at({"a": [1, 2], "b": (3,)})[list].items()
            [((DictKey(key='a'),), [1, 2])]
        """
        root, path = _GET(self)
        return sel_items(_selection(root, path))

    def paths(self) -> list[str]:
        """The key paths of what the lens selects, as strings (`'.layers[0]'`).

        Returns:
            One string per selected value, its key path relative to the root as
            `jax.tree_util.keystr` writes it (the paths of `lens.items()`).

        Raises:
            AttributeError: a step names a missing field or attribute.
            KeyError: a step names a missing key.
            IndexError: a step's index is out of range.
            TreeTooDeepError: the tree is nested deeper than pytreeclass walks, or
                holds a reference cycle.

        Examples:
            >>> import pytreeclass as ptc
            >>> ptc.at({"a": [1, 2], "b": (3, [4])})[list].paths()
            ["['a']", "['b'][1]"]
        """
        return [jax.tree_util.keystr(p) for p, _ in self.items()]

    # -- verbs on the selected elements --

    def nth(self, n: int, /) -> Lens[T]:
        """Narrow the selection to its `n`-th element (negative from the end); out of range
        selects nothing. Steps may follow.

        Args:
            n: the position in the selection's order (`paths()` order).

        Returns:
            A lens selecting that one element.

        Raises:
            TypeError: `n` is not an int.

        Examples:
            >>> import pytreeclass as ptc
            >>> ptc.at({"a": [1, 2], "b": [3]})[...][...].nth(-1).set(0)
            {'a': [1, 2], 'b': [0]}
        """
        if type(n) is not int:
            raise TypeError(f"{_where_all(self)}.nth(n): n must be an int, got {n!r}")
        root, path = _GET(self)
        new = _new(Lens)
        _SET(new, (root, path.extend(NthStep(n), None, None)))
        return new

    def remove(self) -> T:
        """A copy of the root without the selected elements: list and tuple items drop out
        (no `None` hole), dict entries are deleted, layers leave a stacked field.

        Returns:
            A new root without them; the root itself is unchanged.

        Raises:
            TypeError: a selected element is a field or attribute (fields cannot be
                removed; set it instead), or the root itself.

        Examples:
            >>> import pytreeclass as ptc
            >>> ptc.at({"a": [1, 2, 3]})["a"][ptc.Predicate(lambda x: x > 1)].remove()
            {'a': [1]}
        """
        root, path = _GET(self)
        return sel_remove(_selection(root, path))

    def insert_before(self, x: Any) -> T:
        """A copy of the root with `x` inserted before each selected list, tuple or stack
        item (`x(item)` when `x` is a function).

        Args:
            x: the value to insert, or a function of the selected item that makes it.

        Returns:
            A new root with the items inserted; the root itself is unchanged.

        Raises:
            TypeError: a selected element is not an item of a list, tuple or stack.

        Examples:
            >>> import pytreeclass as ptc
            >>> ptc.at([1, 2])[1].insert_before(9)
            [1, 9, 2]
        """
        root, path = _GET(self)
        return sel_insert(_selection(root, path), x, after=False)

    def insert_after(self, x: Any) -> T:
        """As `insert_before`, after each selected item.

        Args:
            x: the value to insert, or a function of the selected item that makes it.

        Returns:
            A new root with the items inserted; the root itself is unchanged.

        Raises:
            TypeError: a selected element is not an item of a list, tuple or stack.

        Examples:
            >>> import pytreeclass as ptc
            >>> ptc.at([1, 2])[...].insert_after(lambda v: v * 10)
            [1, 10, 2, 20]
        """
        root, path = _GET(self)
        return sel_insert(_selection(root, path), x, after=True)

    def set_items(self, mapping: Any, /) -> T:
        """A copy of the root with each selected key path set to its value: the inverse of
        `items()`. Keys are key paths (tuples of JAX keys) or their `keystr` strings.

        Args:
            mapping: `{key path: value}` for some of the paths the lens selects.

        Returns:
            A new root with those values; the root itself is unchanged.

        Raises:
            KeyError: a key is not a path this lens selects (the message lists them).

        Examples:
            >>> import pytreeclass as ptc
            >>> ptc.at({"a": 1, "b": 2})[...].set_items({"['b']": 5})
            {'a': 1, 'b': 5}
        """
        root, path = _GET(self)
        return sel_set_items(_selection(root, path), mapping)

    # -- misuse --

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"cannot assign to a lens ({_where_all(self)}.{name} = ...). "
            f"Write `.at.{name}.set(value)`, which returns an updated copy."
        )

    def __iter__(self) -> Any:
        # Without this, Python would iterate a lens by calling __getitem__(0), (1), ... forever.
        raise TypeError("a Lens is not iterable; end the path with .get(), .set(v) or .apply(fn)")

    def __repr__(self) -> str:
        return f"Lens({_where_all(self)})"


_FILTER_TYPES = frozenset({OfType, OfKind, PathContains, All, Any_, Not})


def _internable(key: Any) -> bool:
    """Is `key` a filter that compares by value, so a path through it can be shared?"""
    t = type(key)
    if t is OfType or t is OfKind or t is PathContains:
        return True
    if t is All or t is Any_:
        return all(map(_internable, key.filters))
    if t is Not:
        return _internable(key.filter)
    return isinstance(key, type)


_GET = Lens._ptc.__get__  # type: ignore[attr-defined]
_SET = Lens._ptc.__set__  # type: ignore[attr-defined]


def _selection(root: Any, path: _Path) -> Any:
    split = len(path.steps) if path.split < 0 else path.split
    return select(root, path.steps, (root, path.steps, path.split), split)


def _mapped_get(root: Any, path: _Path) -> Any:
    """A path that continues inside each item of a list's slice (`layers[::2].w`): the
    items' values, as a list (a tuple for a tuple's slice), as a stack's slice gives
    the sub-stack."""
    sel = _selection(root, path)
    values = [v for _, v in sel_items(sel)]
    if not _has_slice(path):  # one position (an NNX attribute)
        return values[0]
    return tuple(values) if _sliced_type(root, path) is tuple else values


def _has_slice(path: _Path) -> bool:
    return any(type(s) is PathStep and type(s.key) is SliceKey for s in path.steps)


def _sliced_type(root: Any, path: _Path) -> type:
    steps = path.steps
    for i, step in enumerate(steps):
        if type(step) is PathStep and type(step.key) is SliceKey:
            node = walk(root, steps[:i], (root, steps, -1), [])
            return type(node)
    return list  # pragma: no cover - only paths with a slice get here


def _mapped_set(root: Any, path: _Path, value: Any, verb: str) -> Any:
    sel = _selection(root, path)
    if not _has_slice(path):  # one position (an NNX attribute)
        return sel_set_items(sel, {sel.positions[0].keys: value})
    n = len(sel.positions)
    here = path_text((root, path.steps, -1), len(path.steps))
    fix = f"Set it to (or return from apply) a list or tuple of {n} item(s), one per item."
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{here}.{verb}(): the path continues inside each item of a slice, so the value "
            f"must be a list or tuple; got {type(value).__name__}. {fix}"
        )
    if len(value) != n:
        raise ValueError(
            f"{here}.{verb}(): the path selects {n} item(s), but the value has {len(value)}. {fix}"
        )
    return sel_set_items(sel, {keys: v for (keys, _), v in zip(sel_items(sel), value)})


def _where_all(lens: Lens[Any]) -> str:
    root, path = _GET(lens)
    return path_text((root, path.steps, path.split), len(path.steps))


def lens_on(tree: T) -> Lens[T]:
    """`obj.at`: `Lens(tree)` without the `__init__` call (it runs on every update)."""
    new = _new(Lens)
    _SET(new, (tree, _ROOT))
    return new


def at(tree: T, /) -> Lens[T]:
    """A lens on any pytree (dict, list, tuple, Equinox module, treeclass, ...).

    `obj.at` is the same thing for a treeclass instance.

    Args:
        tree: the root the lens starts from; it is never changed.

    Returns:
        A `Lens` on `tree`, to extend with steps and end with `.get()`, `.set(v)` or
        `.apply(fn)`.

    Examples:
        >>> import pytreeclass as ptc
        >>> params = {"dense": {"bias": 0.0, "kernel": 1.0}}
        >>> ptc.at(params)["dense"]["bias"].set(0.5)
        {'dense': {'bias': 0.5, 'kernel': 1.0}}
        >>> ptc.at(params)["dense"]["kernel"].apply(lambda x: x * 2)
        {'dense': {'bias': 0.0, 'kernel': 2.0}}
    """
    return Lens(tree)
