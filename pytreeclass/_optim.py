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

from ._field import field
from ._kinds import OptState
from ._meta import with_field
from ._treeclass import treeclass

if TYPE_CHECKING:
    import optax

__all__ = ["Optimizer"]

_P = TypeVar("_P")

OPTAX_MISSING = (
    "ptc.Optimizer needs optax, which is not installed. Install it with `pip install optax` "
    "(or `pip install 'pytreeclass[optax]'`)."
)

NOT_A_TRANSFORMATION = (
    "Optimizer.create(tx, params): tx must be an optax GradientTransformation (with `init` "
    "and `update`), such as optax.adam(1e-3); got {tx}. Did you pass optax.adam instead of "
    "optax.adam(learning_rate)?"
)


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

    @classmethod
    def create(cls, tx: optax.GradientTransformation, params: Any) -> Self:
        """Initialise `tx` on `params` (a pytree; `None` holes are fine)."""
        _optax()  # fail here with the install hint, not deep inside tx.init
        if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
            raise TypeError(NOT_A_TRANSFORMATION.format(tx=getattr(tx, "__name__", repr(tx))))
        return cls(tx=tx, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))

    def update(self, grads: _P, params: _P, **extra_args: Any) -> tuple[_P, Self]:
        """Apply one step: returns `(new params, new optimizer)`; nothing is changed in place.

        `extra_args` go to the transformation's `update` (e.g. `value=loss` for
        `optax.contrib.reduce_on_plateau`).
        """
        optax = _optax()
        g, p = cast(Any, grads), cast(Any, params)  # any pytree: wider than optax's aliases
        updates, opt_state = self.tx.update(g, self.opt_state, p, **extra_args)
        new_params = optax.apply_updates(p, updates)  # keeps None holes as holes
        return new_params, with_field(
            with_field(self, "opt_state", opt_state), "step", self.step + 1
        )
