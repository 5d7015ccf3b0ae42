"""`Optimizer`: an optax transformation and its state, as one treeclass.

optax is imported only when an `Optimizer` is created or updated, so `import pytreeclass`
works without it. The transformation lives in a static field: it is a tuple of functions,
hashable, and the *same object* in every `Optimizer` that `update` returns, so `jax.jit`
sees an unchanged treedef and does not retrace.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import jax
import jax.numpy as jnp
from typing_extensions import Self

from ._class._field import field
from ._class._kinds import OptState
from ._class._meta import with_field
from ._class._treeclass import treeclass
from ._tree_util import has_shape_dtype, leaf_repr

if TYPE_CHECKING:
    import optax

__all__ = ["Optimizer"]

_GONE = object()

T = TypeVar("T")

OPTAX_MISSING = (
    "ptc.Optimizer needs optax, which is not installed. Install it with `pip install optax` "
    "(or, in a checkout of pytreeclass, `pip install '.[optax]'`)."
)

NOT_A_TRANSFORMATION = (
    "Optimizer.create(tx, params): tx must be an optax GradientTransformation (with `init` "
    "and `update`), such as optax.adam(1e-3); got {tx}. Did you pass optax.adam instead of "
    "optax.adam(learning_rate)?"
)


PRESENCE_CHANGED = (
    "Optimizer.update(): the {arg} have leaves that differ from those the optimizer state "
    "was made for (did the trainable set change?). {changes}. The state holds per-leaf "
    "entries (Adam's moments, ...) for exactly the old leaves. Carry it over with "
    "`opt = opt.reinit(params)`, which keeps the state of every leaf whose path and shape "
    "survive, or start afresh with `ptc.Optimizer.create(tx, params)`."
)


SHAPES_CHANGED = (
    "Optimizer.update(): {which} of the {arg} differ in shape or dtype from the params the "
    "optimizer state was made for (did surgery replace a layer?): {changes}. The state "
    "holds per-leaf entries (Adam's moments, ...) of the old shapes, which would broadcast "
    "or cast silently. Carry it over with `opt = opt.reinit(params)`, which starts the "
    "changed leaves' state afresh and keeps the rest, or start afresh with "
    "`ptc.Optimizer.create(tx, params)`."
)


def _aval(x: Any) -> Any:
    """What `update` checks of one params leaf: its shape and dtype (`None`: not an array)."""
    return (x.shape, x.dtype) if has_shape_dtype(x) else None


class _Structure:
    """The treedef of the params an optimizer state was made for, with the shape and dtype
    of each leaf, as a static value.

    `jax.jit` hashes and compares the static parts of its arguments on every call: the
    hash is computed once, and the `Optimizer`s that `update` returns share this object,
    so the comparison is an identity check. Under `jit` the check in `update` runs while
    tracing only: a compiled step costs the same as without it."""

    __slots__ = ("_hash", "avals", "treedef")

    def __init__(self, params: Any) -> None:
        leaves, self.treedef = jax.tree_util.tree_flatten(params)
        self.avals = tuple(map(_aval, leaves))
        try:
            self._hash = hash((self.treedef, self.avals))
        except TypeError:  # a node whose aux data is unhashable: still a usable key
            self._hash = hash(self.avals)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            type(other) is _Structure
            and self.avals == other.avals
            and self.treedef == other.treedef
        )

    def __repr__(self) -> str:
        return f"<params structure: {self.treedef.num_leaves} leaves>"


def _leaf_paths(treedef: Any) -> list[str]:
    leaves = treedef.unflatten([0] * treedef.num_leaves)
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(leaves)[0]]


def _show(paths: list[str]) -> str:
    more = f", ... ({len(paths) - 8} more)" if len(paths) > 8 else ""
    return ", ".join(paths[:8]) + more


def _check_leaves(arg: str, tree: Any, expected: _Structure) -> None:
    """Raise if `tree`'s leaves are not at the paths, or not of the shapes and dtypes, that
    the optimizer state was made for.

    Trees that differ only in other ways (static fields, node types) are left to optax."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if treedef != expected.treedef:
        _check_presence(arg, treedef, expected)
    avals = tuple(map(_aval, leaves))
    if avals == expected.avals:
        return
    paths = _leaf_paths(treedef)
    changes = [
        f"{p or '(root)'} is {_aval_repr(new)} but was {_aval_repr(old)}"
        for p, new, old in zip(paths, avals, expected.avals)
        if new != old
    ]
    which = "a leaf" if len(changes) == 1 else f"{len(changes)} leaves"
    raise ValueError(SHAPES_CHANGED.format(which=which, arg=arg, changes=_show(changes)))


def _aval_repr(aval: Any) -> str:
    if aval is None:
        return "not an array"
    shape, dtype = aval
    return leaf_repr(jax.ShapeDtypeStruct(shape, dtype))


def _check_presence(arg: str, treedef: Any, expected: _Structure) -> None:
    """Raise if the leaves of `treedef` are not at the paths the state was made for."""
    old, new = _leaf_paths(expected.treedef), _leaf_paths(treedef)
    if old == new:
        return
    old_set, new_set = set(old), set(new)
    added = [p or "(root)" for p in new if p not in old_set]
    removed = [p or "(root)" for p in old if p not in new_set]
    changes = []
    if added:
        changes.append(f"Present now but not in the state: {_show(added)}")
    if removed:
        changes.append(f"In the state but absent now: {_show(removed)}")
    if not changes:  # same paths, another order
        changes.append("The same leaf paths come in a different order")
    raise ValueError(PRESENCE_CHANGED.format(arg=arg, changes="; ".join(changes)))


def _same_kind(a: Any, b: Any) -> bool:
    """Whether two state leaves have the same shape and dtype (or type, for non-arrays)."""
    if has_shape_dtype(a):
        return getattr(b, "shape", None) == a.shape and getattr(b, "dtype", None) == a.dtype
    return type(a) is type(b)


def _optax() -> ModuleType:
    try:
        return importlib.import_module("optax")
    except ImportError as e:
        raise ImportError(OPTAX_MISSING) from e


@treeclass
class Optimizer:
    """An optax `GradientTransformation` with its state and step count, as one pytree.

    `tx` is static (it goes into the treedef), `opt_state` and `step` are leaves of kind
    `OptState`. Pass an `Optimizer` to `jax.jit` like any other argument; the one `update`
    returns has the same treedef, so the jitted function is not traced again.

    `params` may be any pytree, including a partition with `None` holes
    (`ptc.tree_partition(model, ptc.Parameter)[0]`); `optax.masked`,
    `optax.multi_transform`, `optax.chain` and schedules work as in optax.

    Attributes:
        tx: the optax transformation (static).
        opt_state: its state (leaves of kind `OptState`).
        step: the number of updates applied so far (an `int32` array).
        params_structure: the structure, leaf shapes and dtypes of the params the state
            was made for (static; `None`: not checked).

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> import pytreeclass as ptc
        >>> params = {"w": jnp.ones(3)}
        >>> opt = ptc.Optimizer.create(optax.sgd(0.1), params)
        >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        >>> params, opt = opt.update(grads, params)
        >>> params["w"], opt.step
        (Array([0.8, 0.8, 0.8], dtype=float32), Array(1, dtype=int32))
    """

    # repr=False: a transformation prints as two opaque closures, which says nothing useful.
    tx: optax.GradientTransformation = field(
        static=True, repr=False, doc="the optax transformation"
    )
    opt_state: Any = field(kind=OptState, doc="the transformation's state")
    step: jax.Array = field(kind=OptState, doc="number of updates applied so far")
    params_structure: Any = field(
        static=True,
        default=None,
        repr=False,
        doc="the structure of the params the state was made for (None: not checked)",
    )

    @classmethod
    def create(cls, tx: optax.GradientTransformation, params: Any) -> Self:
        """Initialise `tx` on `params` (a pytree; `None` holes are fine).

        Args:
            tx: an optax `GradientTransformation`.
            params: the parameters the optimizer will update.

        Returns:
            An `Optimizer` holding `tx`, `tx.init(params)` and a step count of 0.

        Raises:
            ImportError: optax is not installed.
            TypeError: `tx` is not an optax `GradientTransformation`.
        """
        _optax()  # fail here with the install hint, not deep inside tx.init
        if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
            raise TypeError(NOT_A_TRANSFORMATION.format(tx=getattr(tx, "__name__", repr(tx))))
        return cls(
            tx=tx,
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            params_structure=_Structure(params),
        )

    def reinit(self, params: Any) -> Self:
        """This optimizer for a new set of params, keeping the state that still applies.

        For when the trainable set changes mid-training (layers unfrozen or frozen, a
        partition with other `None` holes): `tx.init(params)` makes a fresh state, and
        every leaf of it whose key path in the state and whose shape and dtype match a leaf
        of the old state takes the old value. optax states mirror the params inside
        (Adam's `mu` and `nu` are trees shaped like them), so the moments of every
        parameter still trained are kept, as are counters outside the mirrors (Adam's
        `count`, a schedule's step); leaves new to the state start as `tx.init` makes
        them. `step` is kept. See the Optax page of the docs for what that means for Adam.

        Args:
            params: the new parameters (a pytree; `None` holes are fine).

        Returns:
            An `Optimizer` with the same `tx` and `step`, a state for `params`, and
            `params`' structure to check later updates against.

        Raises:
            TypeError: from `tx.init`, when a leaf of `params` is not an array it can
                make a state for (optax's own message).

        Examples:
            >>> import jax.numpy as jnp, optax
            >>> import pytreeclass as ptc
            >>> old = {"a": jnp.ones(2), "b": None}  # "b" frozen
            >>> opt = ptc.Optimizer.create(optax.adam(0.1), old)
            >>> _, opt = opt.update(old, old)
            >>> opt = opt.reinit({"a": jnp.ones(2), "b": jnp.ones(3)})  # unfrozen
            >>> mu = opt.opt_state[0].mu
            >>> mu["a"].tolist(), mu["b"].tolist()
            ([0.10000000149011612, 0.10000000149011612], [0.0, 0.0, 0.0])
        """
        fresh = self.tx.init(params)
        old = dict(jax.tree_util.tree_flatten_with_path(self.opt_state)[0])
        pairs, treedef = jax.tree_util.tree_flatten_with_path(fresh)
        kept = []
        for path, leaf in pairs:
            before = old.get(path, _GONE)
            kept.append(before if before is not _GONE and _same_kind(leaf, before) else leaf)
        structure = _Structure(params)
        new = with_field(self, "opt_state", treedef.unflatten(kept))
        return with_field(new, "params_structure", structure)

    def update(self, grads: T, params: T, **extra_args: Any) -> tuple[T, Self]:
        """Apply one step: returns `(new params, new optimizer)`; nothing is changed in place.

        Args:
            grads: gradients with `params`' structure (holes included).
            params: the current parameters.
            **extra_args: passed to the transformation's `update` (e.g. `value=loss` for
                `optax.contrib.reduce_on_plateau`).

        Returns:
            The new parameters (`optax.apply_updates` of the updates) and a new
            optimizer, with the new state and the step count plus one.

        Raises:
            ImportError: optax is not installed.
            ValueError: `params` or `grads` have leaves at other paths, or of other
                shapes or dtypes, than the params the state was made for (use `reinit`
                when the trainable set or a layer's shape changes).
        """
        optax = _optax()
        g, p = cast(Any, grads), cast(Any, params)  # any pytree: wider than optax's aliases
        expected = self.params_structure
        if expected is not None:
            _check_leaves("params", p, expected)
            _check_leaves("grads", g, expected)
        updates, opt_state = self.tx.update(g, self.opt_state, p, **extra_args)
        new_params = optax.apply_updates(p, updates)  # keeps None holes as holes
        return new_params, with_field(
            with_field(self, "opt_state", opt_state), "step", self.step + 1
        )
