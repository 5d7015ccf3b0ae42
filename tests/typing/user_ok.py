"""A typed user file: pyright must accept it and infer field types through field()."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from typing_extensions import assert_type

import pytreeclass as ptc


@ptc.treeclass
class Linear:
    w: jax.Array = ptc.field(kind=ptc.Parameter)
    b: jax.Array = ptc.field(kind=ptc.Parameter)
    features: int = ptc.field(static=True, default=4)
    scale: float = ptc.field(default_factory=lambda: 1.0)


@ptc.treeclass(kw_only=True)
class Config:
    name: str
    depth: int = 2


layer = Linear(jnp.ones((2, 2)), jnp.zeros(2))
assert_type(layer.w, jax.Array)
assert_type(layer.features, int)
assert_type(layer.scale, float)
cfg = Config(name="x")
assert_type(cfg.depth, int)
layer2 = Linear(w=jnp.ones(2), b=jnp.ones(2), features=3, scale=2.0)
assert_type(ptc.is_treeclass(layer2), bool)

# `obj.at` is typed on `ptc.TreeClass` subclasses; `ptc.at(obj)` is typed for any class.
assert_type(ptc.at(layer).w.set(jnp.zeros((2, 2))), Linear)


class TypedLinear(ptc.TreeClass):
    w: jax.Array = ptc.field(kind=ptc.Parameter)
    b: jax.Array = ptc.field(kind=ptc.Parameter)
    features: int = ptc.field(static=True, default=4)


class TypedConfig(ptc.TreeClass, kw_only=True):
    name: str
    depth: int = 2


class Scaled(TypedLinear):  # a subclass adding a field: no decorator
    scale: float = 1.0


typed = TypedLinear(jnp.ones((2, 2)), jnp.zeros(2))
assert_type(typed.w, jax.Array)
assert_type(typed.at.w.set(jnp.zeros((2, 2))), TypedLinear)
assert_type(typed.at.b.apply(lambda b: b + 1), TypedLinear)
assert_type(TypedConfig(name="x").depth, int)
scaled = Scaled(jnp.ones((2, 2)), jnp.zeros(2), 4, 2.0)
assert_type(scaled.at.scale.set(3.0), Scaled)
assert_type(isinstance(typed, ptc.TreeClass), bool)
