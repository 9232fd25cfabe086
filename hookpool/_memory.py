"""``max_memory_per_child``: the limit, read in the parent; the measurement, in a worker.

What is measured is the worker process's resident set size (RSS), as ``ps`` and ``top``
show it and ``/proc/<pid>/status`` calls it ``VmRSS``: the pages of its memory that are
in RAM, its own (heap, arrays) and those it maps from files and shares (libraries,
shared memory it touched). A worker reads its own from ``/proc/self/statm``, which it
opens once as it starts and re-reads with ``os.pread`` after each task: the second field
is the resident set in pages, times the page size. One system call and no dependency
(``psutil`` reads the same file, opened each time).

Without ``/proc`` (not Linux, or ``/proc`` not mounted) there is nothing cheap to read:
a pool given a limit refuses to start (``ValueError``) rather than silently not
enforcing it.

Light on purpose: the worker imports it as it starts, the facades with ``hookpool``.
"""

from __future__ import annotations

import os

__all__ = ["STATM", "ResidentMemory", "check_measurable", "describe", "parse_limit"]

#: Where a worker reads its resident set (a module constant: a test can point it elsewhere).
STATM = "/proc/self/statm"

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_HOW = (
    "give a number of bytes as an int (e.g. 2 * 1024**3), or a string of a number and a "
    "unit: B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), "
    "e.g. '2GiB' or '500MB'; or None for no limit"
)


def parse_limit(value: object, name: str) -> int | None:
    """The limit in bytes, from what the user passed as ``name``: None (no limit), a
    positive int, or a string such as ``"2GiB"``, ``"500 MB"``, ``"1.5GiB"``.

    Raises:
        TypeError: for anything but None, an int or a str (a bool too).
        ValueError: for a size that is not positive, or a string that is not a size.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{name} must be an int or a str, not {type(value).__name__}: {_HOW}")
    if isinstance(value, str):
        size = _parse_size(value)
        if size is None:
            raise ValueError(f"{name}={value!r} is not a size: {_HOW}")
    else:
        size = value
    if size <= 0:
        raise ValueError(f"{name}={value!r} is not a positive size: {_HOW}")
    return size


def _parse_size(text: str) -> int | None:
    import re  # here, not at import: a worker imports this module as it starts

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*", text, re.ASCII)
    if match is None:
        return None
    factor = _UNITS.get(match[2].lower())
    if factor is None:
        return None
    number, _, fraction = match[1].partition(".")
    # Exact for any number of digits (a float would round "0.1GB" to 99999999 bytes).
    scale: int = 10 ** len(fraction)
    return int(number + fraction) * factor // scale


def check_measurable(name: str) -> None:
    """In the parent, at pool creation: can a worker on this system measure itself?

    Raises:
        ValueError: ``/proc/self/statm`` cannot be read here.
    """
    try:
        ResidentMemory().close()
    except (OSError, ValueError, IndexError) as exc:
        raise ValueError(
            f"{name} needs {STATM} to measure a worker's resident memory after each task, "
            f"and it cannot be read here ({exc}): /proc is Linux's, and must be mounted. "
            f"Pass {name}=None, or recycle workers by count with maxtasksperchild instead"
        ) from exc


class ResidentMemory:
    """This process's resident set size, read from a ``statm`` file kept open."""

    def __init__(self) -> None:
        self._fd = os.open(STATM, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._page = os.sysconf("SC_PAGE_SIZE")
            self.read()  # fail here, at start, not after a task
        except BaseException:
            os.close(self._fd)
            raise

    def read(self) -> int:
        """Resident bytes now."""
        return int(os.pread(self._fd, 256, 0).split(None, 2)[1]) * self._page

    def close(self) -> None:
        os.close(self._fd)


def describe(size: int) -> str:
    """``size`` bytes for a person: ``'612.3 MiB'``, with the exact count for small ones."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"
