"""Side outputs recorded while a function runs: what `ptc.capture` collects.

A *frame* is a list of `(name, value)` records, in the order they were made. `recording()`
opens one for the duration of a `with` block; `record(name, value)` appends to the
innermost open frame. Frames are per thread, so two threads capturing at once never see
each other's records, and nothing global is ever patched.

Values recorded inside a `jax.lax.scan` body are tracers of that body: they may not leave
it as they are. `scan_layers` therefore opens its own frame inside the body, returns the
records as extra scan outputs, and records them again, stacked along the layer axis, in
the frame outside.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Frame", "is_recording", "record", "recording"]

Frame = list[tuple[str, Any]]


class _Frames(threading.local):
    def __init__(self) -> None:
        self.stack: list[Frame] = []


_FRAMES = _Frames()


def is_recording() -> bool:
    """Is a frame open in this thread (is anyone collecting records)?"""
    return bool(_FRAMES.stack)


@contextmanager
def recording() -> Iterator[Frame]:
    """Open a fresh frame for the `with` block and yield it; it is closed however the
    block ends (an exception included), so a failed call leaves nothing open."""
    frame: Frame = []
    stack = _FRAMES.stack
    stack.append(frame)
    try:
        yield frame
    finally:
        # the frame opened here is the innermost one: a `with` block closes in LIFO order
        stack.pop()


def record(name: str, value: Any) -> None:
    """Append `(name, value)` to the innermost open frame of this thread (if any)."""
    stack = _FRAMES.stack
    if stack:
        stack[-1].append((name, value))
