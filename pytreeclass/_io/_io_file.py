"""Bytes on disk for `tree_save` / `tree_load`: atomic replacement and chunked reads.

Both file formats (`.npz`, `.safetensors`) lay each leaf's bytes out back to back in a
few contiguous regions ("spans": one per zip entry, or the whole safetensors data
section). Reading goes span by span in file order, in chunks of a few MiB cut at leaf
boundaries: each chunk is one `readinto` into fresh memory that the leaves then view, so
there is one copy from the page cache, never a second, and a leaf larger than a chunk
gets memory of its own, which `jax.device_put` may then keep without copying.
"""

from __future__ import annotations

import contextlib
import gc
import math
import mmap
import os
import secrets
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, NamedTuple

import numpy as np

__all__ = [
    "CHUNK",
    "Slot",
    "Span",
    "aligned_empty",
    "atomic_write",
    "check_tiling",
    "corrupt",
    "crc32_combine",
    "gc_paused",
    "make_slot",
    "read_slots",
    "write_joined",
]

CHUNK = 8 << 20  # bytes per read of small leaves
_JOIN = 1 << 20  # small leaves are written in joined pieces of about this size
_ALIGN = 64  # what XLA wants to alias host memory without a copy
_OWN_MAPPING = 1 << 20  # bytes from which a read buffer is a mapping of its own
# (private anonymous memory, as malloc's; POSIX only: elsewhere malloc's as below)
_PRIVATE = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0) or None
# Where a file may be mapped while it is read: not on Windows, where a file that is
# mapped cannot be replaced (and jax may hold the last array it was given for a while).
_MAP_FILES = os.name == "posix"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a burst of allocations.

    Saving or loading allocates a few objects per leaf (views, arrays, names), none of
    them in reference cycles, and each automatic collection on the way scans every live
    object, the model's included: a third of the time of loading 10,000 small leaves.
    The collector is switched back on afterwards, unless it was off before.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def corrupt(path: str, why: str) -> ValueError:
    return ValueError(
        f"tree_load: cannot read {path!r}: {why}. The file is truncated, corrupt or not "
        "written by ptc.tree_save; restore it from a backup or save it again."
    )


# -- writing ------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(target: str) -> Iterator[IO[bytes]]:
    """A binary file object whose contents replace `target` only once all are on disk.

    Writes go to a temporary file in the target's directory, which is fsynced and then
    renamed over the target (`os.replace`): a crash at any point leaves the old file or
    the new one, never a mix (at worst a stray `.<name>.*.tmp` file remains).
    """
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = _create_temp(directory, os.path.basename(target))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def write_joined(out: Any, arrays: Sequence[np.ndarray]) -> None:
    """Write the C-contiguous arrays' bytes in order: big ones as they are (no copy),
    small ones joined into pieces of about a MiB (one write call per piece)."""
    pending: list[Any] = []  # (numpy arrays: the buffer protocol is all join needs)
    size = 0
    for a in arrays:
        if a.nbytes >= _JOIN:
            if pending:
                out.write(b"".join(pending))
                pending, size = [], 0
            out.write(a.reshape(-1).data.cast("B"))
            continue
        pending.append(a)
        size += a.nbytes
        if size >= _JOIN:
            out.write(b"".join(pending))
            pending, size = [], 0
    if pending:
        out.write(b"".join(pending))


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    # Not tempfile.mkstemp: it creates files with mode 0600, and the checkpoint would keep
    # that mode after the rename. O_CREAT | O_EXCL with 0666 honours the umask like open().
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_dir(directory: str) -> None:
    # Make the rename itself durable; not possible on every platform (e.g. Windows).
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# -- reading ------------------------------------------------------------------------------------


class Span(NamedTuple):
    """A contiguous region of the file holding leaves back to back."""

    start: int  # file offset of its first byte
    size: int
    label: str  # for messages: "float32.npy", "the data section", ...
    crc: tuple[int, int] | None = None  # (CRC-32 of the bytes just before it, expected)


class Slot(NamedTuple):
    """Where one leaf's stored array lies."""

    span: int  # index into the spans
    offset: int  # byte offset inside the span
    dtype: np.dtype  # the stored dtype
    shape: tuple[int, ...]  # the stored shape
    nbytes: int
    fortran: bool  # stored in Fortran order (only `.npy` entries written by others)


def make_slot(
    span: int, offset: int, dtype: np.dtype, shape: tuple[int, ...], fortran: bool = False
) -> Slot:
    return Slot(span, offset, dtype, shape, math.prod(shape) * dtype.itemsize, fortran)


def check_tiling(path: str, spans: Sequence[Span], slots: Sequence[Slot]) -> None:
    """Each span must hold its slots back to back, without gaps, overlaps or spare bytes."""
    by_span: list[list[tuple[int, int]]] = [[] for _ in spans]
    for s in slots:
        by_span[s.span].append((s.offset, s.nbytes))
    for span, members in zip(spans, by_span):
        members.sort()
        end = 0
        for offset, nbytes in members:
            if offset != end:
                raise corrupt(path, f"the leaves in {span.label} overlap or leave gaps")
            end += nbytes
        if end != span.size:
            raise corrupt(path, f"{span.label} holds {span.size} bytes but its leaves need {end}")


def aligned_empty(nbytes: int) -> np.ndarray:
    """`nbytes` of new memory, aligned as XLA wants to alias host memory without a copy."""
    if nbytes >= _OWN_MAPPING and _PRIVATE is not None:
        # Memory of its own, given back to the system as soon as the last array that
        # views it is gone. From malloc, a large buffer freed after jax.device_put
        # copied it may stay in the process's heap (seen: ~10% of a 1 GiB load).
        return np.frombuffer(mmap.mmap(-1, nbytes, flags=_PRIVATE), np.uint8)
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start : start + nbytes]


def _read_exactly(f: Any, offset: int, buf: np.ndarray, path: str, label: str) -> None:
    f.seek(offset)
    view = buf.data
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise corrupt(path, f"it ends inside {label}")
        got += n


def read_slots(
    f: Any,
    path: str,
    spans: Sequence[Span],
    slots: Sequence[Slot],
    into: Sequence[np.ndarray | None] | None = None,
    mapped: Sequence[bool] | None = None,
    defer: list[Callable[[], None]] | None = None,
) -> list[Any]:
    """Read every slot; returns per slot (its stored array, whether it owns its memory).

    `into[k]`, where given, is a C-contiguous array of slot k's dtype and shape to read
    its bytes straight into (the row of a stacked array): it is then the slot's array.
    A slot flagged in `mapped` is not read but viewed in a read-only mapping of the
    file (not owned), for a caller that copies it anyway (onto several devices): one
    copy from the page cache, and no memory of its own (its CRC is still checked).
    With `defer` (a list), the CRC check of the spans such slots lie in is not waited
    for: a function that waits and raises on a mismatch is appended to `defer`, for the
    caller to run once it has copied the data (so the check overlaps the copies).

    The slots must tile their spans (`check_tiling`). A span with a CRC is checked once
    all of it has been read; a mismatch is a `ValueError`. For large files each chunk's
    CRC is computed on worker threads while the next chunks are read (both release the
    GIL), and the chunks' CRCs are then combined, so the check adds little to the read.
    """
    out: list[Any] = [None] * len(slots)
    order = sorted(range(len(slots)), key=lambda i: (slots[i].span, slots[i].offset))
    size = os.fstat(f.fileno()).st_size
    for span in spans:
        if span.start + span.size > size:
            raise corrupt(path, f"it ends inside {span.label}")
    # Per checked span: (CRC, length) of each chunk in file order, or a pending future.
    parts: dict[int, list[Any]] = {n: [] for n, s in enumerate(spans) if s.crc is not None}
    checked = sum(spans[n].size for n in parts)
    dest = list(into) if into is not None else [None] * len(slots)
    on_map = list(mapped) if mapped is not None and _MAP_FILES else [False] * len(slots)
    file_map: mmap.mmap | None = None
    background: ThreadPoolExecutor | None = None  # CRCs of mapped slots, checked later
    late: set[int] = set()  # spans whose check is deferred
    # Large reads run on worker threads (positional reads release the GIL): filling
    # fresh memory costs the kernel as much as the copy, and several cores share it.
    parallel = _PREADV and sum(s.nbytes for s in slots) >= _READ_THREAD
    threads = parallel or checked >= _CRC_THREAD
    fd = f.fileno()

    def read(offset: int, buf: np.ndarray, label: str, crc: bool) -> int | None:
        if parallel:
            _pread_exactly(fd, offset, buf, path, label)
        return zlib.crc32(buf.data) if crc else None

    pending = []
    workers = _READ_WORKERS if parallel else _CRC_WORKERS
    with ThreadPoolExecutor(workers) if threads else _Inline() as pool:
        i = 0
        while i < len(order):
            first = slots[order[i]]
            span = spans[first.span]
            target = dest[order[i]]
            if on_map[order[i]]:  # a view of the file's pages, copied where it goes
                if file_map is None:
                    file_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                s = first
                view = np.frombuffer(file_map, np.uint8, s.nbytes, span.start + s.offset)
                layout = "F" if s.fortran else "C"
                out[order[i]] = (np.ndarray(s.shape, s.dtype, view, 0, order=layout), False)
                if first.span in parts:
                    if defer is not None:
                        if background is None:
                            background = ThreadPoolExecutor(_CRC_WORKERS)
                        job = background.submit(zlib.crc32, view.data)
                        late.add(first.span)
                    else:
                        job = pool.submit(zlib.crc32, view.data)
                        pending.append(job)
                    parts[first.span].append((job, s.nbytes))
                i += 1
                continue
            if target is not None:
                j, nbytes = i + 1, first.nbytes
                buf = target.reshape(-1).view(np.uint8)
                out[order[i]] = (target, True)
            else:
                j, nbytes = i, 0
                while j < len(order):
                    s = slots[order[j]]
                    if s.span != first.span or (j > i and nbytes + s.nbytes > CHUNK):
                        break
                    if (
                        dest[order[j]] is not None
                        or on_map[order[j]]
                        or s.offset != first.offset + nbytes
                    ):
                        break  # read in place, or not adjacent (a slot between is not read)
                    nbytes += s.nbytes
                    j += 1
                buf = aligned_empty(nbytes)
                owned = j - i == 1
                for k in order[i:j]:
                    s = slots[k]
                    layout = "F" if s.fortran else "C"
                    arr = np.ndarray(s.shape, s.dtype, buf, s.offset - first.offset, order=layout)
                    out[k] = (arr, owned)
            if not parallel:
                _read_exactly(f, span.start + first.offset, buf, path, span.label)
            # In pieces, so that one large leaf keeps every worker busy to the end.
            step = CHUNK if parallel else max(nbytes, 1)
            for at in range(0, max(nbytes, 1), step):
                piece = buf[at : at + step]
                offset = span.start + first.offset + at
                job = pool.submit(read, offset, piece, span.label, first.span in parts)
                pending.append(job)
                if first.span in parts:
                    parts[first.span].append((job, len(piece)))
            i = j
        for job in pending:
            job.result()  # a short read is raised here

    def check(which: Sequence[int]) -> None:
        for n in which:
            crc = spans[n].crc[0]  # type: ignore[index]
            for chunk_crc, nbytes in parts[n]:
                crc = crc32_combine(crc, chunk_crc.result(), nbytes)
            if crc != spans[n].crc[1]:  # type: ignore[index]
                raise corrupt(path, f"the data in {spans[n].label} is damaged (bad CRC-32)")

    check([n for n in parts if n not in late])
    if late and defer is not None:
        assert background is not None
        background.shutdown(wait=False)  # its jobs run on; `check` waits for them
        defer.append(lambda: check(sorted(late)))
    return out


def _pread_exactly(fd: int, offset: int, buf: np.ndarray, path: str, label: str) -> None:
    view = buf.data
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            raise corrupt(path, f"it ends inside {label}")
        got += n


_PREADV = hasattr(os, "preadv")
_READ_THREAD = 64 << 20  # bytes to read from which reading threads pay
_READ_WORKERS = max(2, min(8, os.cpu_count() or 1))
_CRC_THREAD = 64 << 20  # bytes to check from which worker threads pay
_CRC_WORKERS = 2


class _Done:
    """A finished result, shaped like a `Future`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class _Inline:
    """`ThreadPoolExecutor`'s `submit`, run at once (small files)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Any, *args: Any) -> _Done:
        return _Done(fn(*args))


# -- CRC-32 of a concatenation ---------------------------------------------------------------
# zlib's crc32_combine, which Python's zlib does not expose: the CRC of A + B from the CRCs
# of A and B and the length of B. Appending n zero bytes to a message is a linear map on
# its CRC (a 32 x 32 matrix over GF(2), kept as 32 column words); the maps for 2^k bytes
# are made once by squaring, and n's bits pick which to apply.


def _gf2_times(matrix: Sequence[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _zeros_operators() -> list[list[int]]:
    one_bit = [0xEDB88320] + [1 << k for k in range(31)]  # one zero bit appended
    op = one_bit
    for _ in range(3):  # 2, 4, 8 bits: one zero byte
        op = [_gf2_times(op, column) for column in op]
    ops = [op]
    for _ in range(63):  # 2^k zero bytes, k = 1 .. 63
        op = [_gf2_times(op, column) for column in op]
        ops.append(op)
    return ops


_ZEROS: list[list[int]] = []


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of `a + b` given `crc1 = crc32(a)`, `crc2 = crc32(b)`, `len2 = len(b)`."""
    if not _ZEROS:
        _ZEROS.extend(_zeros_operators())
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_ZEROS[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2
