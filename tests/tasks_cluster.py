"""Tasks for tests/test_cluster.py: they run in dask workers (importable there by name,
since the workers inherit the test session's sys.path)."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any


def mark(directory: str, name: str) -> None:
    """Add one line (this worker's pid) to ``directory/name``: a count of calls."""
    with open(Path(directory, name), "a") as file:
        file.write(f"{os.getpid()}\n")


def marks(directory: str, name: str) -> list[int]:
    path = Path(directory, name)
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def mark_then_die(directory: str, name: str) -> None:
    """Task: count the start, then the worker dies by SIGKILL in the middle of it."""
    mark(directory, name)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)  # pragma: no cover - never reached


def die_the_first_time(directory: str, name: str, value: Any, seconds: float = 0.0) -> Any:
    """Task: count the start and nap ``seconds``; the first time, the worker then dies by
    SIGKILL in the middle of it; after that, it returns ``value``."""
    mark(directory, name)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    if len(marks(directory, name)) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)  # pragma: no cover - never reached
    return value


def mark_then_square(directory: str, x: int) -> int:
    mark(directory, f"ran-{x}")
    return x * x


def nap(seconds: float, directory: str, name: str) -> str:
    """Task: sleep in short steps (Python code runs between them, so it can be stopped),
    then mark that it ran to the end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    mark(directory, name)
    return "woke"


def nap_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def spin(seconds: float) -> int:
    """Task: a pure-Python busy loop."""
    deadline = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < deadline:
        turns += 1
    return turns


def log_and_return(message: str) -> int:
    logging.getLogger("tasks_cluster").warning("from the task: %s", message)
    logging.getLogger("tasks_cluster").debug("below the parent's level: %s", message)
    return os.getpid()


#: How many times a Counted object was unpickled in this process.
UNPICKLED = {"count": 0}


class Counted:
    """A callable that counts, in the process that unpickles it, how often it was."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __call__(self, x: int) -> int:
        return x + self.offset

    def __getstate__(self) -> dict[str, Any]:
        return {"offset": self.offset}

    def __setstate__(self, state: dict[str, Any]) -> None:
        UNPICKLED["count"] += 1
        self.offset = state["offset"]


def unpickled(_: object = None) -> tuple[int, int]:
    """This worker's pid and how many Counted objects it unpickled."""
    return os.getpid(), UNPICKLED["count"]


def endless(counter: list[int]) -> Any:
    """An endless input that counts how far it was read."""
    n = 0
    while True:
        counter[0] = n + 1
        yield n
        n += 1


def threads_waiting_for_a_pool() -> int:
    """Run on a worker (client.run): how many of its threads wait in run_task for a pool's
    plugin to arrive."""
    import sys
    import traceback

    return sum(
        any(frame.name == "_pool" for frame in traceback.extract_stack(top))
        for top in sys._current_frames().values()
    )


def mark_then_die_later(directory: str, name: str, delay: float) -> None:
    """Task: count the start, run a while, then the worker dies by SIGKILL."""
    mark(directory, name)
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


def mark_then_return(directory: str, name: str, value: Any) -> Any:
    mark(directory, name)
    return value


def slow_init(seconds: float) -> None:
    """Initializer: a slow set-up (a model load)."""
    time.sleep(seconds)


def running_here(pool_id: str) -> list[int]:
    """The ids of the pool's tasks this worker counts as running (a stop aims at them)."""
    from hookpool import _cluster_worker

    pool = _cluster_worker._pools.get(pool_id)
    return sorted(pool.running) if pool is not None else []
