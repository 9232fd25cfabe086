"""More module-level task functions for the API, property, traceback and serialization
tests (workers import them by name: tests/ is on sys.path in workers)."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_file(path: str, text: str = "ran") -> str:
    """Leave a trace that the task ran."""
    Path(path).write_text(text)
    return path


def record(directory: str, x: int) -> tuple[int, int]:
    """Append this worker's pid to the file named after ``x``: one line per run."""
    fd = os.open(os.path.join(directory, str(x)), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return os.getpid(), x


def touch_then_sleep(path: str, seconds: float, value: Any = None) -> Any:
    """Signal that the task has started (the file appears), then sleep."""
    Path(path).write_text("started")
    time.sleep(seconds)
    return value


def sleep_pair(pair: tuple[float, Any]) -> Any:
    """``sleep_then(*pair)`` for imap: sleep ``pair[0]`` seconds, return ``pair[1]``."""
    time.sleep(pair[0])
    return pair[1]


def fail_if_in(x: int, bad: frozenset[int]) -> int:
    if x in bad:
        raise ValueError(f"bad item {x}")
    return x


def pid_and(x: Any) -> tuple[int, Any]:
    return os.getpid(), x


def put_pid(queue: Any) -> None:
    """Initializer: report this worker's pid through a Queue handed over in initargs."""
    queue.put(os.getpid())


def raise_builtin_timeout(message: str = "the task's own timeout") -> None:
    raise TimeoutError(message)


def sleep_or_fail(x: int, bad: int, seconds: float) -> int:
    """Fail for ``bad``; sleep for every other item (imap timeout/continuation tests)."""
    if x == bad:
        raise ValueError(f"bad item {x}")
    time.sleep(seconds)
    return x


# -- exceptions and their chains ------------------------------------------------------


def raise_from() -> None:
    """``raise X from Y``: the cause is a KeyError, the raised one a RuntimeError."""
    try:
        {}["missing-key"]
    except KeyError as inner:
        raise RuntimeError("outer failure") from inner


def raise_from_unrelated() -> None:
    """``raise X from Y`` outside any ``except``: ``__context__`` is None."""
    raise LookupError("looked") from OSError(5, "the real cause")


def raise_during_handling() -> None:
    """An exception raised while handling another: only ``__context__`` is set."""
    try:
        raise ZeroDivisionError("first problem")
    except ZeroDivisionError:
        raise IndexError("second problem")  # noqa: B904 - the implicit chain is the point


def raise_from_none() -> None:
    try:
        raise ZeroDivisionError("hidden")
    except ZeroDivisionError:
        raise IndexError("shown") from None


class TwoArgError(Exception):
    """Pickles in the worker, but cannot be unpickled: ``args`` holds one string."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


def raise_two_arg_error() -> None:
    raise TwoArgError(42, "needs two arguments")


def two_arg_error_at(x: int, bad: int) -> int:
    if x == bad:
        raise TwoArgError(x, "in a map")
    return x


class LockHoldingError(Exception):
    """Cannot be pickled in the worker: it holds a threading.Lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_lock_holding_error() -> None:
    raise LockHoldingError("holding a lock")


# -- results that cannot be sent back ---------------------------------------------------


def return_lock() -> Any:
    return threading.Lock()


def _numbers() -> Iterator[int]:
    yield 1
    yield 2


def return_generator() -> Any:
    return _numbers()


def return_two_arg_error_instance() -> Any:
    """A result that pickles in the worker but cannot be unpickled in the caller."""
    return TwoArgError(7, "returned, not raised")


def return_lock_at(x: int, bad: int) -> Any:
    return threading.Lock() if x == bad else x


# -- test-side guard (not a task) ----------------------------------------------------------

LOST_WAKEUP = (
    "hookpool bug: the manager thread missed a wake-up (Manager._drain_wakeups clears "
    "_wake_pending before reading the pipe, so a _wake() that lands in between leaves the "
    "flag set with the pipe empty, and every later _wake() is skipped): submitted tasks "
    "stayed queued beside idle workers until this test's watchdog poked the manager"
)


class LostWakeupWatchdog:
    """Keeps a hookpool pool from hanging forever on a lost manager wake-up.

    Runs in the test process. When tasks sit in the queue beside an idle, ready worker,
    with the wake-up flag set and nothing in the wake-up pipe, for a second, it writes
    the byte the manager missed, and counts it. ``stop()`` returns the count (doing the
    same check once more, since the lost wake-up would hang ``terminate()``), so that the
    fixture using it can fail with ``LOST_WAKEUP`` instead of the suite hanging.
    """

    INTERVAL = 0.25
    PATIENCE = 4

    def __init__(self, pool: Any, *, active: bool = True) -> None:
        self.manager = pool._manager
        self.pokes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lost-wakeup-watchdog", daemon=True)
        if active:
            self._thread.start()

    def _flag_stuck(self) -> bool:
        manager = self.manager
        if not manager._thread.is_alive() or not manager._wake_pending:
            return False
        return not select.select([manager._wake_r], [], [], 0)[0]

    def _stays_stuck(self) -> bool:
        """The flag stays set with the pipe empty. (For a moment that is normal: while
        ``_wake()`` is between setting the flag and writing the byte, or the manager
        between emptying the pipe and clearing the flag.)"""
        for _ in range(self.PATIENCE):
            if not self._flag_stuck():
                return False
            time.sleep(0.05)
        return True

    def _wedged(self) -> bool:
        try:
            if not self._flag_stuck() or not self.manager._queue:
                return False
            return any(
                w.ready and not w.stopping and not w.inflight for w in list(self.manager._workers)
            )
        except (OSError, ValueError, RuntimeError):
            return False

    def _run(self) -> None:
        streak = 0
        while not self._stop.wait(self.INTERVAL):
            streak = streak + 1 if self._wedged() else 0
            if streak >= self.PATIENCE:
                self._poke()
                streak = 0

    def _poke(self) -> None:
        self.pokes += 1
        os.write(self.manager._wake_w, b"\0")

    def unwedge(self) -> None:
        """Write the wake-up byte the manager missed (if it is still running)."""
        if self.manager._thread.is_alive():
            self._poke()

    def stop(self) -> int:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        try:
            if self._stays_stuck():
                self._poke()
        except (OSError, ValueError):
            pass
        return self.pokes


def hold_until(path: str, value: Any = None) -> Any:
    """Task: return ``value`` once the file ``path`` exists (bounded: 30 s)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value
