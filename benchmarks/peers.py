"""The same model, a list of L layers of (w, b, static int), in every library we compare.

Each `build_*` returns a model whose `.layers` (or `["layers"]`) holds L layers; each
`make_*_layer` builds one layer. Arrays are shared between layers: flatten, unflatten and
dispatch never look at array contents, and sharing keeps setup cheap at L = 512.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx, struct

import pytreeclass as ptc

__all__ = ["LIBS", "arrays", "build", "make_layer"]

N = 4  # the static int every layer carries


# -- pytreeclass --------------------------------------------------------------------------------


@ptc.treeclass
class PtcLayer:
    w: jax.Array = ptc.field(kind=ptc.Parameter)
    b: jax.Array = ptc.field(kind=ptc.Parameter)
    n: int = ptc.field(static=True, default=N)


@ptc.treeclass
class PtcModel:
    layers: list[PtcLayer]


# -- jax.tree_util.register_dataclass -----------------------------------------------------------


@functools.partial(jax.tree_util.register_dataclass, data_fields=["w", "b"], meta_fields=["n"])
@dataclasses.dataclass(frozen=True)
class RdLayer:
    w: jax.Array
    b: jax.Array
    n: int = N


@functools.partial(jax.tree_util.register_dataclass, data_fields=["layers"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class RdModel:
    layers: list[RdLayer]


# -- equinox ------------------------------------------------------------------------------------


class EqxLayer(eqx.Module):
    w: jax.Array
    b: jax.Array
    n: int = eqx.field(static=True, default=N)


class EqxModel(eqx.Module):
    layers: list[EqxLayer]


# -- flax.struct --------------------------------------------------------------------------------


@struct.dataclass
class StructLayer:
    w: jax.Array
    b: jax.Array
    n: int = struct.field(pytree_node=False, default=N)


@struct.dataclass
class StructModel:
    layers: list[StructLayer]


# -- flax nnx -----------------------------------------------------------------------------------


class NnxLayer(nnx.Module):
    def __init__(self, w: jax.Array, b: jax.Array, n: int = N) -> None:
        self.w = nnx.Param(w)
        self.b = nnx.Param(b)
        self.n = n


class NnxModel(nnx.Module):
    def __init__(self, layers: list[NnxLayer]) -> None:
        self.layers = nnx.List(layers)


# -- plain Python -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FrozenLayer:
    """Not a pytree: the construction baseline."""

    w: Any
    b: Any
    n: int = N


def _dict_layer(w: Any, b: Any, n: int = N) -> dict[str, Any]:
    # A dict has no static part: `n` would be a leaf (and a traced jit argument), so the
    # dict model carries only (w, b); construction still builds the 3-entry dict.
    return {"w": w, "b": b, "n": n}


_LAYERS = {
    "pytreeclass": PtcLayer,
    "register_dataclass": RdLayer,
    "equinox": EqxLayer,
    "flax.struct": StructLayer,
    "nnx": NnxLayer,
    "dict": _dict_layer,
    "frozen dataclass": FrozenLayer,
}

# Libraries whose models are pytrees, in table order.
LIBS = ("pytreeclass", "register_dataclass", "equinox", "flax.struct", "nnx", "dict")


def arrays() -> tuple[jax.Array, jax.Array]:
    return jnp.ones((8, 8)), jnp.zeros((8,))


def make_layer(lib: str) -> Any:
    """A zero-argument function that builds one layer of `lib` (for the construction row)."""
    cls = _LAYERS[lib]
    w, b = arrays()
    return lambda: cls(w, b, N)


def build(lib: str, n_layers: int) -> Any:
    """A model of `lib` with `n_layers` layers."""
    w, b = arrays()
    if lib == "dict":
        return {"layers": [{"w": w, "b": b} for _ in range(n_layers)]}
    layers = [_LAYERS[lib](w, b, N) for _ in range(n_layers)]
    model_cls = {
        "pytreeclass": PtcModel,
        "register_dataclass": RdModel,
        "equinox": EqxModel,
        "flax.struct": StructModel,
        "nnx": NnxModel,
    }[lib]
    return model_cls(layers)
