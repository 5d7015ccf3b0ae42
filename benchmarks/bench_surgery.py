"""Section 6: model surgery, every layer replaced by what `f` returns, three ways.

`model.at[ptc.OfType(Layer)].apply(f)` against `eqx.tree_at` with a `where` that lists
every layer (on the same pytreeclass model, and on the Equinox model with an Equinox `f`)
and against the by-hand rebuild, `dataclasses.replace(model, layers=[f(l) for l in
model.layers])`. `f` wraps a layer in a new one-field node, as a LoRA injection does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import peers
from timing import Section, Settings, fmt_ratio, fmt_us, measure_many

import pytreeclass as ptc

__all__ = ["bench_surgery"]


@ptc.treeclass
class Wrapped:
    """What `f` makes of a layer on the pytreeclass model."""

    inner: Any


class EqxWrapped(eqx.Module):
    """The same on the Equinox model."""

    inner: Any


def _rows(n: int) -> dict[str, Callable[[], Any]]:
    m, em = peers.build("pytreeclass", n), peers.build("equinox", n)
    layer = ptc.OfType(peers.PtcLayer)

    def ours() -> Any:
        return m.at[layer].apply(Wrapped)

    def tree_at() -> Any:
        return eqx.tree_at(lambda t: list(t.layers), m, replace_fn=Wrapped)

    def tree_at_eqx() -> Any:
        return eqx.tree_at(lambda t: list(t.layers), em, replace_fn=EqxWrapped)

    def by_hand() -> Any:
        return dataclasses.replace(m, layers=[Wrapped(x) for x in m.layers])

    first = ours()  # the same result three ways (checked, not only timed)
    assert all(type(x) is Wrapped and x.inner is y for x, y in zip(first.layers, m.layers))
    assert ptc.tree_equal(first, tree_at()) and ptc.tree_equal(first, by_hand())
    return {OURS: ours, TREE_AT: tree_at_eqx, TREE_AT_PTC: tree_at, BY_HAND: by_hand}


@ptc.treeclass
class StackBlock:
    w: jax.Array = ptc.field(kind=ptc.Parameter)
    b: jax.Array = ptc.field(kind=ptc.Parameter)


@ptc.treeclass
class StackNet:
    blocks: StackBlock = ptc.field(stack="layers")


def _halve(block: StackBlock) -> StackBlock:
    return block.at.w.apply(lambda w: w * 0.5)


def _stack_rows(n: int) -> dict[str, Callable[[], Any]]:
    layers = [StackBlock(jnp.full((16, 16), float(i)), jnp.zeros(16)) for i in range(n)]
    net = StackNet(ptc.tree_stack(layers))

    def ours() -> Any:
        return net.at[ptc.OfType(StackBlock)].apply(_halve)

    def by_hand() -> Any:
        blocks = ptc.tree_stack([_halve(x) for x in ptc.tree_unstack(net.blocks)])
        return dataclasses.replace(net, blocks=blocks)

    assert ptc.tree_equal(ours(), by_hand())  # the same result (checked, not only timed)
    return {STACK_OURS: ours, STACK_HAND: by_hand}


STACK_OURS = "stacked field, L=64: model.at[ptc.OfType(Block)].apply(f)"
STACK_HAND = "stacked field, L=64, by hand: tree_unstack, [f(l) ...], tree_stack"
OURS = "pytreeclass model.at[ptc.OfType(Layer)].apply(f)"
TREE_AT = "equinox eqx.tree_at(lambda m: list(m.layers), m, replace_fn=f)"
TREE_AT_PTC = "eqx.tree_at on the pytreeclass model (the same f)"
BY_HAND = "by hand: dataclasses.replace(m, layers=[f(l) for l in m.layers])"


def bench_surgery(settings: Settings, sizes: Sequence[int]) -> Section:
    """Section 6: replace every layer (node selection) against eqx.tree_at and by hand."""
    header = ["library"]
    for n in sizes:
        header += [f"L={n}", "x ours"]
    sec = Section("6. model surgery: every layer -> f(layer)", header)
    times: dict[str, list[float]] = {}
    for n in sizes:
        rows = _rows(n)
        for name, t in zip(rows, measure_many(list(rows.values()), settings)):
            times.setdefault(name, []).append(t)
    for name, ts in times.items():
        cells = [name]
        for t, o in zip(ts, times[OURS]):
            cells += [fmt_us(t), fmt_ratio(t / o)]
        sec.add(*cells)
    speedup = times[TREE_AT][-1] / times[OURS][-1]
    same = times[TREE_AT_PTC][-1] / times[OURS][-1]
    sec.check(
        f"node selection >= 20x faster than eqx.tree_at at L={sizes[-1]}",
        f"{speedup:.1f}x (on the same pytreeclass model: {same:.1f}x)",
        speedup >= 20,
    )
    stacked = _stack_rows(64)
    st = dict(zip(stacked, measure_many(list(stacked.values()), settings)))
    pad = [""] * (len(header) - 3)
    sec.add(STACK_OURS, fmt_us(st[STACK_OURS]), "1.00x", *pad)
    sec.add(STACK_HAND, fmt_us(st[STACK_HAND]), fmt_ratio(st[STACK_HAND] / st[STACK_OURS]), *pad)
    ratio = st[STACK_OURS] / st[STACK_HAND]
    sec.check(
        "surgery by type on a 64-layer stack <= 2x by hand (unstack, list surgery, restack)",
        f"{ratio:.2f}x",
        ratio <= 2,
    )
    worst = max(o / h for o, h in zip(times[OURS], times[BY_HAND]))
    sec.check(
        "node selection <= 2x the by-hand rebuild at every L", f"worst {worst:.2f}x", worst <= 2
    )
    sec.notes.append(
        "x ours: this row's time / the pytreeclass row's time (higher: ours is faster)"
    )
    sec.notes.append(
        "eqx.tree_at is timed as Equinox users run it (on the Equinox model, like section 3) "
        "and on our model, whose flatten is faster; ours flattens the model once per call "
        "to look its cached selection up by treedef"
    )
    sec.notes.append(
        "f wraps a layer in a new one-field node (Wrapped(layer)), the shape of a LoRA injection"
    )
    return sec
