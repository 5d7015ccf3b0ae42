"""Timing helpers shared by the benchmark sections: timeit with repeats, min per call.

`timeit` turns the garbage collector off while it times (its default), so one collection
pause does not land on one library's row by chance; we collect before each measurement.
The minimum over repeats is the estimate least disturbed by everything else running.
"""

from __future__ import annotations

import gc
import math
import time
import timeit
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "Section",
    "Settings",
    "fmt_ratio",
    "fmt_us",
    "markdown_table",
    "measure",
    "measure_many",
    "text_table",
]


class Settings:
    """How long to time each function: `quick` is a smoke run, not a measurement.

    `clock` is `time.process_time` by default: the CPU time of this process, which does not
    count the time another process holds the CPU (this machine is shared and has 2 cores).
    Sections whose work runs on XLA's threads time with `wall_clock` instead.
    """

    def __init__(
        self,
        quick: bool,
        repeat: int | None = None,
        warmup: int | None = None,
        clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.quick = quick
        self.clock = clock
        self.target_s = 0.002 if quick else 0.02  # clock time of one repeat
        self.repeat = repeat or (2 if quick else 15)
        self.warmup = warmup or (2 if quick else 20)
        self.min_repeat = min(self.repeat, 5)
        self.budget_s = 0.1 if quick else 2.0  # per measure_many call, past min_repeat

    def fewer(self) -> Settings:
        """For the slow rows (100,000 leaves): a third of the repeats, little warm-up."""
        return Settings(self.quick, repeat=max(2, self.repeat // 3), warmup=2, clock=self.clock)

    def more(self, factor: int) -> Settings:
        """`factor` times the repeats (noisy rows: XLA's threads share the 2 cores)."""
        return Settings(self.quick, self.repeat * factor, self.warmup, self.clock)

    def wall_clock(self, repeat: int | None = None) -> Settings:
        """The same settings timed with `time.perf_counter` (elapsed time)."""
        return Settings(self.quick, repeat or self.repeat, self.warmup, time.perf_counter)


def _calibrate(timer: timeit.Timer, target_s: float) -> int:
    """How many calls fill about `target_s` seconds."""
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= target_s / 10 or number >= 1_000_000:
            break
        number *= 10
    return max(1, math.ceil(number * target_s / max(elapsed, 1e-9)))


def measure_many(fns: Sequence[Callable[[], Any]], settings: Settings) -> list[float]:
    """Min over repeats of the time of one call of each function, in microseconds.

    Repeats are interleaved (a repeat of every function, then the next round), so a burst of
    load from another process hits every row alike instead of one row by chance. Slow rows
    (tens of ms per call) stop after `min_repeat` rounds once `budget_s` is spent.
    """
    for fn in fns:
        start = time.perf_counter()
        for _ in range(settings.warmup):
            fn()
            if time.perf_counter() - start > 0.05:
                break
    timers = [timeit.Timer(fn, timer=settings.clock) for fn in fns]
    numbers = [_calibrate(t, settings.target_s) for t in timers]
    best = [math.inf] * len(fns)
    gc.collect()
    start = time.perf_counter()
    for r in range(settings.repeat):
        if r >= settings.min_repeat and time.perf_counter() - start > settings.budget_s:
            break
        for i, (timer, number) in enumerate(zip(timers, numbers)):
            best[i] = min(best[i], timer.timeit(number) / number)
    return [b * 1e6 for b in best]


def measure(fn: Callable[[], Any], settings: Settings) -> float:
    """Min over repeats of the time of one call of `fn`, in microseconds."""
    return measure_many([fn], settings)[0]


def fmt_us(us: float | None) -> str:
    if us is None:
        return "n/a"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    if us >= 100:
        return f"{us:.0f} µs"
    if us >= 10:
        return f"{us:.1f} µs"
    return f"{us:.2f} µs"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    w = _widths(header, rows)

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))

    return "\n".join([line(header), "  ".join("-" * x for x in w), *(line(r) for r in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(header))) + "|")
    out.extend("| " + " | ".join(str(c) for c in r) + " |" for r in rows)
    return "\n".join(out)


class Section:
    """One printed table: a title, rows of formatted cells, notes and target checks."""

    def __init__(self, title: str, header: Sequence[str]) -> None:
        self.title = title
        self.header = list(header)
        self.rows: list[list[str]] = []
        self.notes: list[str] = []
        self.checks: list[tuple[str, str, bool]] = []  # (target, measured, met)

    def add(self, *cells: Any) -> None:
        self.rows.append([str(c) for c in cells])

    def check(self, target: str, measured: str, met: bool) -> None:
        self.checks.append((target, measured, met))

    def text(self) -> str:
        parts = [f"== {self.title} ==", text_table(self.header, self.rows)]
        parts.extend(f"  note: {n}" for n in self.notes)
        parts.extend(
            f"  target {t}: {m} -> {'MET' if ok else 'MISSED'}" for t, m, ok in self.checks
        )
        return "\n".join(parts)

    def markdown(self) -> str:
        parts = [f"### {self.title}", "", markdown_table(self.header, self.rows), ""]
        parts.extend(f"- {n}" for n in self.notes)
        parts.extend(
            f"- target {t}: {m} — **{'met' if ok else 'missed'}**" for t, m, ok in self.checks
        )
        return "\n".join(parts) + "\n"
