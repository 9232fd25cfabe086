"""Module-level tasks for the direct read tests (``test_direct_read.py``).

Workers import these by name (tests/ is on sys.path in the workers too). The results
some of them return do something as they are unpickled *in the parent* (where
``multiprocessing.parent_process()`` is None): note the thread that decoded them, take a
while, or be interrupted by a real SIGINT. In a worker they are plain values.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

#: Parent side: the names of the threads that decoded a ``Traced`` result, in order.
decoded_by: list[str] = []
#: Parent side: set as a ``SlowInParent`` result starts decoding.
decoding = threading.Event()
#: Parent side: the next ``InterruptedInParent`` decoded by the main thread sends SIGINT
#: to this process while it decodes (then this is cleared).
interrupt_next = threading.Event()


def _in_parent() -> bool:
    return multiprocessing.parent_process() is None


def reset() -> None:
    """Forget what earlier tests left (parent side)."""
    decoded_by.clear()
    decoding.clear()
    interrupt_next.clear()


def _traced(value: Any) -> Any:
    if _in_parent():
        decoded_by.append(threading.current_thread().name)
    return value


class Traced:
    """Decodes to ``value``, noting which thread decoded it."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return _traced, (self.value,)


def _slow(value: Any, seconds: float) -> Any:
    if _in_parent():
        decoding.set()
        time.sleep(seconds)
    return value


class SlowInParent:
    """Decodes to ``value``, after ``seconds`` when decoded in the parent."""

    def __init__(self, value: Any, seconds: float) -> None:
        self.value = value
        self.seconds = seconds

    def __reduce__(self) -> tuple[Any, ...]:
        return _slow, (self.value, self.seconds)


def _interrupted(value: Any) -> Any:
    if (
        _in_parent()
        and threading.current_thread() is threading.main_thread()
        and interrupt_next.is_set()
    ):
        interrupt_next.clear()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises here, in the middle of the decoding
    return value


class InterruptedInParent:
    """Decodes to ``value``; see ``interrupt_next``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return _interrupted, (self.value,)


def sleep_then_traced(seconds: float, value: Any) -> Any:  # decodes to value
    time.sleep(seconds)
    return Traced(value)


def sleep_then_slow(seconds: float, value: Any, decode_seconds: float) -> Any:
    time.sleep(seconds)
    return SlowInParent(value, decode_seconds)


def sleep_then_interrupted(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return InterruptedInParent(value)


def sleep_then_bytes(seconds: float, size: int) -> bytes:
    """``size`` bytes, not all alike (so a mix-up shows)."""
    time.sleep(seconds)
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


def sleep_then_traced_bytes(seconds: float, size: int) -> tuple[Any, bytes]:
    """``sleep_then_bytes``, with a ``Traced`` before them in the same answer."""
    return Traced(size), sleep_then_bytes(seconds, size)


def sleep_then_record(path: str, seconds: float, value: Any) -> Any:
    """Sleep, then note the run in ``path`` (one line per run); returns ``value``."""
    time.sleep(seconds)
    with Path(path).open("a") as f:
        f.write(f"{value}\n")
    return value


def value_and_pid(seconds: float, value: Any) -> tuple[Any, int]:
    if seconds:
        time.sleep(seconds)
    return value, os.getpid()
