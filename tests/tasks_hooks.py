"""Module-level hooks and tasks for the lifecycle, sqlite and initargs tests.

Workers import these by name (tests/ is on sys.path in the workers too). Markers are
files in a directory, so a test can see what happened in every worker, even in workers
that are gone: ``running-<pid>`` (a task started), ``attempt-<pid>`` (an initializer
started), next to the ``init-<pid>``/``fin-<pid>`` markers of ``tasks.py``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks import fin_record, init_record

# -- lifecycle -------------------------------------------------------------------------


def mark_then_sleep(directory: str, seconds: float) -> int:
    """Task: write ``running-<pid>``, then sleep (a busy worker)."""
    Path(directory, f"running-{os.getpid()}").write_text("1")
    time.sleep(seconds)
    return os.getpid()


def init_slow(directory: str, seconds: float) -> None:
    """Initializer: ``attempt-<pid>`` at once, sleep, then the usual init marker."""
    Path(directory, f"attempt-{os.getpid()}").write_text("1")
    time.sleep(seconds)
    init_record(directory)


def init_fail(directory: str) -> None:
    """Initializer that records the attempt and raises."""
    Path(directory, f"attempt-{os.getpid()}").write_text("1")
    _init_fail_inner()


def _init_fail_inner() -> None:
    raise ValueError("init-boom from the worker")


def fin_raise(directory: str) -> None:
    """Finalizer: record the run like ``fin_record``, then raise."""
    fin_record(directory)
    _fin_raise_inner()


def _fin_raise_inner() -> None:
    raise RuntimeError("fin-boom from the worker")


def markers(directory: str, kind: str) -> set[int]:
    """The pids that wrote a ``<kind>-<pid>`` marker in ``directory``."""
    found = set()
    for path in Path(directory).iterdir():
        name, _, who = path.name.partition("-")
        if name == kind and who.isdigit():
            found.add(int(who))
    return found


# -- parent-side helpers ----------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def wait_ready(pool: Any, n: int) -> None:
    """Wait until the pool's manager knows ``n`` workers as ready (initialized).

    Tests that need ``n`` tasks running at the same time call this first: a task
    submitted while a worker is still starting may be queued behind another task on a
    worker that is already ready (hookpool's prefetch), even when that task is long.
    """

    def ready() -> bool:
        workers = list(pool._manager._workers)
        return sum(1 for w in workers if w.ready and not w.stopping) >= n

    wait_for(ready, what=f"{n} ready workers")


def parked(pool: Any) -> int:
    """How many of the pool's workers are parked: idle, the manager asleep, so that a
    task goes straight to one (``hookpool._fastpath``)."""
    from hookpool._workers import WorkerState

    return sum(1 for w in list(pool._manager._workers) if w.state is WorkerState.PARKED)


# -- a per-worker sqlite writer --------------------------------------------------------

_db: dict[str, Any] = {}


def sqlite_open(path: str) -> None:
    """Initializer: open a connection to the shared DB; rows are buffered until the end."""
    _db["conn"] = sqlite3.connect(path, timeout=30)
    _db["rows"] = []


def sqlite_add(item: int) -> int:
    """Task: buffer one row."""
    _db["rows"].append((item, os.getpid()))
    return item


def sqlite_flush() -> None:
    """Finalizer: write the buffered rows and commit."""
    conn = _db.pop("conn")
    rows = _db.pop("rows")
    with conn:
        conn.executemany("INSERT INTO rows (item, pid) VALUES (?, ?)", rows)
    conn.close()


# -- objects shared by inheritance through initargs -------------------------------------

_g: dict[str, Any] = {}


def store(*objs: Any) -> None:
    """Initializer: keep the initargs in a global."""
    _g["objs"] = objs


def get_global(key: str) -> Any:
    return _g[key]


def lock_try() -> bool:
    """Task: try to take the stored lock/semaphore without blocking; give it back."""
    (lock,) = _g["objs"]
    if lock.acquire(False):
        lock.release()
        return True
    return False


def event_set() -> bool:
    (event,) = _g["objs"]
    event.set()
    return True


def event_wait(timeout: float) -> bool:
    (event,) = _g["objs"]
    return bool(event.wait(timeout))


def condition_wait(timeout: float) -> bool:
    (cond,) = _g["objs"]
    with cond:
        return bool(cond.wait(timeout))


def barrier_wait(timeout: float) -> int:
    (barrier,) = _g["objs"]
    return int(barrier.wait(timeout))


def queue_put(item: Any) -> Any:
    (queue,) = _g["objs"]
    queue.put(item)
    return item


def joinable_get(timeout: float) -> Any:
    (queue,) = _g["objs"]
    item = queue.get(timeout=timeout)
    queue.task_done()
    return item


def value_increment(times: int) -> int:
    (value,) = _g["objs"]
    for _ in range(times):
        with value.get_lock():
            value.value += 1
    return times


def array_fill(index: int) -> int:
    (array,) = _g["objs"]
    array[index] = index * index
    return index


def pipe_send(item: Any) -> Any:
    (conn,) = _g["objs"]
    conn.send((os.getpid(), item))
    return item


def shm_write(offset: int, data: bytes) -> int:
    (shm,) = _g["objs"]
    shm.buf[offset : offset + len(data)] = data
    return len(data)


def call_stored(*args: Any) -> Any:
    """Task: call the callable that came through initargs."""
    (fn,) = _g["objs"]
    return fn(*args)


def fin_count(value: Any) -> None:
    """Finalizer: count this worker's finalizer run in a shared Value (from finalargs)."""
    with value.get_lock():
        value.value += 1


def fin_slow(directory: str, seconds: float) -> None:
    """Finalizer that takes a while (say, flushing a large buffer), then records itself."""
    time.sleep(seconds)
    fin_record(directory)


def sqlite_flush_slow(seconds: float) -> None:
    """Finalizer: a flush that takes a while before it writes."""
    time.sleep(seconds)
    sqlite_flush()
