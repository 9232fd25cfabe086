"""Tasks for tests/test_joblib.py, importable by name in the workers.

Markers are files in a directory, as in ``tasks_hooks``: ``ran-<i>`` (task ``i`` started).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import joblib

import hookpool
import hookpool.joblib  # registers "hookpool" in the workers too, for the nested calls

GATE_SECONDS = 30.0  # how long a gated task waits for its gate before it fails


def square(x: int) -> int:
    return x * x


def power(x: int, *, exponent: int = 2) -> int:
    return int(x**exponent)


def pid_of(_: object) -> int:
    return os.getpid()


def fail_at(x: int, at: int) -> int:
    if x == at:
        _fail_inner(x)
    return x


def _fail_inner(x: int) -> None:
    raise ValueError(f"task {x} failed in the worker")


def die_at(x: int, at: int) -> int:
    """Task ``at`` kills its own worker with a real SIGKILL."""
    if x == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def fail_first_then_wait(x: int, directory: str) -> int:
    """Task 0 raises; every other task writes ``ran-<x>``, then waits for ``gate``."""
    if x == 0:
        raise ValueError("the first task failed")
    Path(directory, f"ran-{x}").write_text("1")
    deadline = time.monotonic() + GATE_SECONDS
    while not Path(directory, "gate").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.01)
    return x


def worker_and_thread(x: int) -> tuple[int, bool, int]:
    """(pid, in a hookpool worker, x)."""
    return os.getpid(), hookpool.current_worker() is not None, x


def nested(x: int, backend: str | None) -> tuple[int, str, list[tuple[int, bool, int]]]:
    """A task that runs a joblib call of its own: (pid, the backend joblib gives a nested
    call, what the inner tasks saw)."""
    active, _ = joblib.parallel.get_active_backend()
    inner = joblib.Parallel(n_jobs=2, backend=backend)(
        joblib.delayed(worker_and_thread)(i) for i in range(3)
    )
    return os.getpid(), type(active).__name__, list(inner)


def describe(x: Any) -> str:
    return f"{type(x).__name__}:{x!r}"
