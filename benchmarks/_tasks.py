"""Module-level task functions executed inside the pool workers.

Spawned workers import this module by name (``_tasks``). The harness puts this
directory on ``sys.path`` and on ``PYTHONPATH`` for every process it starts, so
the import works with ``multiprocessing``'s spawn start method as well as with
libraries that launch workers their own way.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def nothing() -> None:
    """The target of a bare ``Process`` (the machine limits' process start-up)."""


def identity(x: object) -> object:
    """Return the argument unchanged (startup, latency and round-trip workloads)."""
    return x


def inc(x: int) -> int:
    """Trivial task: the per-task cost is almost entirely the pool's own overhead."""
    return x + 1


def affine(x: int) -> int:
    """Module-level twin of the closure built by :func:`make_closure`."""
    return x * 3 + 1


def make_closure(k: int) -> Callable[[int], int]:
    """Return a lambda closing over ``k``; plain pickle cannot serialise it."""
    return lambda x: x * k + 1


def nap(seconds: float) -> float:
    """Sleep; used during warm-up so that every worker is started and busy once."""
    time.sleep(seconds)
    return seconds


def spin(loops: int) -> int:
    """Pure-Python CPU burner; deterministic result so callers can check it."""
    acc = 0
    for i in range(loops):
        acc = (acc + i * i) % 1_000_003
    return acc
