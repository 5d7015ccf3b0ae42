"""`capture`: the outputs of selected nodes during one call of a model, without editing it.

How it works: the selected nodes are replaced, in a private copy of the model, by `_Tap`
stand-ins. A tap is a pytree node whose one child is the node it holds (under a key that
writes as nothing, so key path strings are unchanged), forwards attribute access to it,
and records the output of each call in the innermost `_record` frame of this thread.
The original model, its nodes and their classes are never touched, so there is nothing
to undo when the call raises, and two threads capturing at once do not interfere.
`scan_layers` lifts what layers record out of its scan body, stacked along the layer axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.tree_util import DictKey, SequenceKey

from ._lens._lens import at
from ._record import record, recording
from ._stack import find_stacks
from ._tree_util import leaf_repr, one_level

__all__ = ["capture"]


class _Tap:
    """Stands in for a selected node while `capture` runs: calls it and records the output."""

    __slots__ = ("_edit", "_name", "_node")

    def __init__(self, node: Any, name: str, edit: Callable[[str, Any], Any] | None) -> None:
        self._node, self._name, self._edit = node, name, edit

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._node(*args, **kwargs)
        if self._edit is not None:
            out = self._edit(self._name, out)
        record(self._name, out)
        return out

    def __getattr__(self, name: str) -> Any:  # only for names the tap does not define
        return getattr(self._node, name)

    # Dunder methods skip `__getattr__`; forward those a parent may use on a container.
    def __iter__(self) -> Any:
        return iter(self._node)

    def __len__(self) -> int:
        return len(self._node)

    def __getitem__(self, key: Any) -> Any:
        return self._node[key]

    def __repr__(self) -> str:
        return f"<capturing {self._name}: {type(self._node).__name__}>"


class _Inside:
    """The key of a tap's one child, the node: it writes as nothing, so key path strings
    through a tap read as without it (`.blocks.attn.qkv`)."""

    __slots__ = ()

    def __str__(self) -> str:
        return ""

    def __repr__(self) -> str:
        return "<tapped>"

    def __eq__(self, other: object) -> bool:
        return type(other) is _Inside

    def __hash__(self) -> int:
        return hash(_Inside)


_INSIDE = _Inside()


# The tap holds its node as its one child (not the node's children): the node stays a node
# of the tree, so its fields' kinds and axes still apply to its leaves inside the call.
def _flatten(tap: _Tap) -> tuple[Any, Any]:
    return [(_INSIDE, tap._node)], (tap._name, tap._edit)


def _unflatten(aux: Any, children: Any) -> _Tap:
    tap = object.__new__(_Tap)
    tap._node, (tap._name, tap._edit) = children[0], aux
    return tap


jax.tree_util.register_pytree_with_keys(
    _Tap, _flatten, _unflatten, lambda tap: ((tap._node,), (tap._name, tap._edit))
)


def _untap(tree: Any) -> Any:
    """`tree` with every tap replaced by the node it stands for (taps never leak out)."""
    is_tap = lambda x: type(x) is _Tap  # noqa: E731
    if not any(map(is_tap, jax.tree_util.tree_leaves(tree, is_leaf=is_tap))):
        return tree
    return jax.tree_util.tree_map(lambda x: x._node if is_tap(x) else x, tree, is_leaf=is_tap)


def _without_layers(path: tuple[Any, ...], sites: set[tuple[Any, ...]]) -> tuple[Any, ...]:
    """`path` minus the layer index after each stacked field on it."""
    out: list[Any] = []
    skip = False
    for key in path:
        if skip and type(key) is SequenceKey:
            skip = False
            continue
        out.append(key)
        skip = tuple(out) in sites
    return tuple(out)


def _node_at(tree: Any, path: tuple[Any, ...]) -> Any:
    node = tree
    for key in path:
        if type(key) is SequenceKey:
            node = node[key.idx]
        elif type(key) is DictKey:
            node = node[key.key]
        else:
            node = getattr(node, key.name)
    return node


def _tapped(model: Any, where: Any, edit: Callable[[str, Any], Any] | None) -> Any:
    """A copy of `model` whose nodes selected by `where` are taps; the model is unchanged."""
    items = at(model)[where].items()
    if not items:
        raise ValueError(
            f"capture: `where` ({where!r}) selects nothing in {type(model).__name__}. "
            "Pass a filter that selects the nodes to record, e.g. ptc.OfType(Attention); "
            "ptc.at(model)[where].paths() lists what it selects."
        )
    # A layer of a stacked field runs inside `scan_layers` as the stacked node: record
    # that node once, under its path without the layer index.
    sites = {site.path for site in find_stacks(model, "capture")}
    found: dict[tuple[Any, ...], Any] = {}
    for path, _ in items:
        path = _without_layers(tuple(path), sites)
        found.setdefault(path, _node_at(model, path))
    items = list(found.items())
    names: dict[tuple[Any, ...], str] = {}
    for path, node in items:
        name = jax.tree_util.keystr(path)
        if not path:
            raise ValueError(
                "capture: `where` selects the model itself; select nodes inside it "
                "(the model's own output is the first item capture returns)."
            )
        if one_level(node) is None or not callable(node):
            raise TypeError(
                f"capture: `where` selects {name} = {leaf_repr(node)}, which is not a "
                "callable node; select nodes whose calls to record (modules, layers), "
                "e.g. ptc.OfType(Attention)."
            )
        names[tuple(path)] = name
    selected = {id(node) for _, node in items}
    pairs, treedef = jax.tree_util.tree_flatten_with_path(
        model, is_leaf=lambda x: id(x) in selected
    )
    return treedef.unflatten(
        [_Tap(x, names[tuple(p)], edit) if tuple(p) in names else x for p, x in pairs]
    )


def capture(
    model: Any,
    where: Any,
    call: str | Callable[..., Any] | None = None,
    edit: Callable[[str, Any], Any] | None = None,
) -> Callable[..., tuple[Any, dict[str, Any]]]:
    """Call a model and record the output of every call of the nodes `where` selects.

    `ptc.capture(model, where)(*args)` returns `(model(*args), acts)`. `acts` maps the
    key path string of each selected node that ran (as `ptc.at(model)[where].paths()`
    writes it, e.g. `'.blocks[0].attn'`) to its output, or to a tuple of outputs in
    call order when it ran several times. A node inside a stack run by
    `ptc.scan_layers` gives one entry whose leaves are stacked along the layer axis.
    Nodes that did not run have no entry. The model is not edited: the selected nodes
    are wrapped in a private copy while the call runs, so the model, its nodes and
    their classes are unchanged afterwards (also when the call raises), and captures in
    several threads at once do not interfere. It works under `jax.jit`, `jax.grad`
    (return `acts` as aux) and `jax.vmap`, like Flax's `sow` or penzai's interceptors.

    Inside the call the selected nodes are stand-ins that forward calls and attribute
    access to the real node, so code that checks `isinstance` on them, or calls them
    inside a `jax.lax.scan`, `jax.vmap` or `jax.checkpoint` written in the model itself
    (rather than `ptc.scan_layers`), is not supported.

    Args:
        model: the tree to call (any pytree whose root is callable, or has `call`).
        where: what to record: anything a lens takes in brackets, usually a filter
            such as `ptc.OfType(Attention)`; it must select nodes, not leaves.
        call: what to run: `None` calls `model(*args)`, a method name such as
            `"encode"` calls `model.encode(*args)`, a function `f` calls
            `f(model, *args)` (e.g. a loss function).
        edit: `edit(path, output) -> output` replaces each output before the model
            uses it (ablations, interventions, activation patching); `acts` then holds
            the replaced outputs. Inside a scanned stack it sees one layer's output.

    Returns:
        A function of the call's arguments returning `(output, acts)`.

    Raises:
        ValueError: `where` selects nothing, or the model itself.
        TypeError: `where` selects a leaf or a node that is not callable.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Scale:
        ...     k: jnp.ndarray
        ...     def __call__(self, x):
        ...         return self.k * x
        >>> @ptc.treeclass
        ... class Net:
        ...     layers: list
        ...     def __call__(self, x):
        ...         for layer in self.layers:
        ...             x = layer(x)
        ...         return x
        >>> net = Net([Scale(jnp.float32(2)), Scale(jnp.float32(3))])
        >>> y, acts = ptc.capture(net, ptc.OfType(Scale))(jnp.float32(1))
        >>> y
        Array(6., dtype=float32)
        >>> {path: float(out) for path, out in acts.items()}
        {'.layers[0]': 2.0, '.layers[1]': 6.0}
        >>> def zero_first(path, out):
        ...     return out * 0 if path == ".layers[0]" else out
        >>> scales = ptc.OfType(Scale)
        >>> ptc.capture(net, scales, edit=zero_first)(jnp.float32(1))[0]
        Array(0., dtype=float32)
    """
    if edit is not None and not callable(edit):
        raise TypeError(f"capture: edit must be a function edit(path, output), got {edit!r}.")
    if call is not None and not callable(call) and not isinstance(call, str):
        raise TypeError(
            "capture: call must be None (call the model), a method name or a function "
            f"f(model, *args), got {call!r}."
        )
    if isinstance(call, str) and not callable(getattr(model, call, None)):
        raise AttributeError(
            f"capture: {type(model).__name__} has no method {call!r} to call; pass the "
            "name of one of its methods, or a function f(model, *args)."
        )
    tapped = _tapped(model, where, edit)

    def run(*args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        with recording() as frame:
            if call is None:
                y = tapped(*args, **kwargs)
            elif isinstance(call, str):
                y = getattr(tapped, call)(*args, **kwargs)
            else:
                y = call(tapped, *args, **kwargs)
        grouped: dict[str, list[Any]] = {}
        for name, value in frame:
            grouped.setdefault(name, []).append(value)
        acts = {k: v[0] if len(v) == 1 else tuple(v) for k, v in grouped.items()}
        return _untap(y), _untap(acts)

    return run
