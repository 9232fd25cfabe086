"""Task functions and parent-side helpers for test_races.py and stress.py.

Workers import the tasks by name (tests/ is on sys.path in the workers too, as for
``tasks.py``). Everything here uses hookpool's public API only: these scenarios must keep
working across a rewrite of the engine.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

# -- tasks ------------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def big_answer(seconds: float, size: int) -> bytes:
    """Sleep, then answer with ``size`` bytes (more than a pipe holds: the answer is
    read in several pieces)."""
    time.sleep(seconds)
    return b"x" * size


def record(path: str, task_id: int, seconds: float = 0.0) -> int:
    """Append ``task_id`` to ``path`` as the task starts (one write with O_APPEND, so
    concurrent runs never interleave), sleep ``seconds``, return ``task_id * 7``.
    An id found twice in the file means the task ran twice."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task_id}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return task_id * 7


def recorded(path: str) -> dict[int, int]:
    """{task id: times recorded} from a ``record`` file."""
    counts: dict[int, int] = {}
    if not os.path.exists(path):
        return counts
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                counts[int(line)] = counts.get(int(line), 0) + 1
    return counts


def slow_rebuild(seconds: float, payload: bytes) -> SlowToUnpickle:
    """Unpickling a ``SlowToUnpickle``: slow in the parent only (never in a worker)."""
    if multiprocessing.parent_process() is None:
        time.sleep(seconds)
    return SlowToUnpickle(seconds, payload)


class SlowToUnpickle:
    """An answer that takes ``seconds`` to unpickle in the parent."""

    def __init__(self, seconds: float, payload: bytes = b"") -> None:
        self.seconds = seconds
        self.payload = payload

    def __reduce__(self) -> tuple[Any, ...]:
        return slow_rebuild, (self.seconds, self.payload)


def slow_answer(delay: float, seconds: float, size: int = 0) -> SlowToUnpickle:
    """Sleep ``delay``, then answer with an object that takes ``seconds`` to unpickle
    in the parent (with ``size`` bytes of payload)."""
    time.sleep(delay)
    return SlowToUnpickle(seconds, b"y" * size)


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


# -- hooks (stress.py): one marker file per worker pid -----------------------------------


def init_marker(directory: str) -> None:
    Path(directory, f"init-{os.getpid()}").write_text("1")


def fin_marker(directory: str) -> None:
    Path(directory, f"fin-{os.getpid()}").write_text("1")


# -- parent side ------------------------------------------------------------------------


def watchdog(seconds: float) -> None:
    """In a scenario script: if it is still running after ``seconds``, print every
    thread's stack to stderr and exit with code 1 (a hang fails, it never blocks)."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)


def jitter(low: float, high: float) -> None:
    time.sleep(random.uniform(low, high))


def touch(path: str) -> str:
    """After 50 ms, write ``path`` (the side effect a cancelled task must not have had);
    return "done". (The pause: a stop that comes while it runs lands before the write.)"""
    time.sleep(0.05)
    with open(path, "w") as file:
        file.write("ran")
    return "done"
