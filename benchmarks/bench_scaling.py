"""Section 5: how flatten, tree_filter and tree_merge grow with the number of leaves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import peers
from timing import Section, Settings, fmt_us, measure_many

import pytreeclass as ptc

__all__ = ["bench_scaling"]


def _ops(n_leaves: int) -> dict[str, Callable[[], Any]]:
    model = peers.build("pytreeclass", n_leaves // 2)  # two leaves (w, b) per layer
    plain = peers.build("dict", n_leaves // 2)
    params, rest = ptc.tree_partition(model, ptc.Parameter)
    flatten = jax.tree_util.tree_flatten
    return {
        "flatten (dict of lists, reference)": lambda: flatten(plain),
        "flatten": lambda: flatten(model),
        "tree_filter(m, Parameter)": lambda: ptc.tree_filter(model, ptc.Parameter),
        "tree_merge(params, rest)": lambda: ptc.tree_merge(params, rest),
    }


def bench_scaling(settings: Settings, sizes: Sequence[int]) -> Section:
    """Total time and time per leaf for each size; flat per-leaf columns mean linear cost."""
    header = ["operation"]
    for n in sizes:
        header += [f"{n:,} leaves", "per leaf"]
    sec = Section(
        "5. scaling with the number of leaves (pytreeclass model, L = leaves / 2)", header
    )
    results: dict[str, list[tuple[float, float]]] = {}
    for n in sizes:
        ops = _ops(n)
        for name, us in zip(ops, measure_many(list(ops.values()), settings.fewer())):
            results.setdefault(name, []).append((us, us * 1000 / n))
    for name, cells in results.items():
        row: list[str] = [name]
        for us, ns in cells:
            row += [fmt_us(us), f"{ns:.0f} ns"]
        sec.add(*row)
    growth = ", ".join(f"{k} {v[-1][1] / v[0][1]:.2f}x" for k, v in results.items())
    sec.notes.append(f"per-leaf cost, largest size / smallest: {growth} (1.00x = linear)")
    return sec
