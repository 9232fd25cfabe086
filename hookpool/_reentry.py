"""Signal handlers that call back into the pool: allowed, or refused with a clear error;
never a deadlock.

Python runs a signal handler in the main thread, between two bytecodes of whatever that
thread was running: possibly hookpool's own bookkeeping, holding the engine's lock or in
the middle of reading a worker's answer. A handler that then waited for the pool (``get``,
``apply``, ``join``, a ``cancel`` that waits for its outcome) would wait for something only
the interrupted frame can finish.

So the functions that hold such state in a caller's thread are marked ``@critical`` (or
``@counts_itself`` on a hot path), and a call that could wait checks first
(``check_may_block``) whether one of them is on the thread's stack: from a handler that
interrupted one, it raises ``ReentrantCallError`` instead. Each such function counts
itself in a per-thread ``depth`` while it runs, so the usual answer, 0, costs a lookup;
only otherwise is the stack walked, which also repairs a count left behind by an
exception raised at the wrong moment (a handler raising KeyboardInterrupt). Only the
main thread runs signal handlers, so only there is anything refused.

``close()`` and ``terminate()`` never wait for the interrupted frame, and are always
allowed: the engine's lock is re-entrant, and they only change the state and wake the
manager thread. Everywhere else (a handler that interrupted user code, or a wait for a
result) every call works.

The same holds for callbacks: they run on the pool's manager thread (``engine_thread``),
which is the thread that settles the pool's results. A callback that waits for a result of
its own pool that is not ready would wait for itself: forever, or until its timeout. That
wait raises ``ReentrantCallError`` too; waiting for another pool's result works.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import CodeType, FrameType

from ._errors import ReentrantCallError
from ._records import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "GuardedFuture",
    "check_may_block",
    "check_not_from_callback",
    "counts_itself",
    "critical",
    "depth",
    "engine_thread",
    "reentered",
]

F = TypeVar("F", bound=Callable[..., object])
T = TypeVar("T")

_CRITICAL: set[CodeType] = set()
_MAIN_THREAD = threading.main_thread().ident


class _Depth(threading.local):
    #: How many ``@critical`` functions this thread is inside, as counted by their own
    #: ``depth.value += 1`` (before the work) and ``-= 1`` (in a ``finally``). A signal
    #: handler raising between the two may leave it too high: so 0 (or less, after a
    #: repair) is trusted at once, and anything else is checked against the stack.
    value = 0


depth = _Depth()


class _EngineThread(threading.local):
    #: The engine whose own thread this is: set by its manager (or settler) thread, where
    #: the callbacks of its results run.
    engine: object = None


engine_thread = _EngineThread()


def critical(function: F) -> F:
    """Mark ``function`` as holding engine state that a signal handler must not wait on.
    It counts itself in ``depth`` while it runs."""
    _CRITICAL.add(function.__code__)

    @functools.wraps(function)
    def counted(*args: Any, **kwargs: Any) -> Any:
        depth.value += 1
        try:
            return function(*args, **kwargs)
        finally:
            depth.value -= 1

    return counted  # type: ignore[return-value]


def counts_itself(function: F) -> F:
    """Mark ``function`` as ``@critical`` without the wrapper: on a hot path it counts
    itself, ``depth.value += 1`` first and ``depth.value -= 1`` in a ``finally``."""
    _CRITICAL.add(function.__code__)
    return function


def reentered() -> bool:
    """Whether the function calling this was called from a signal handler that
    interrupted a ``@critical`` function: one is on the main thread's stack below it."""
    if depth.value <= 0 or threading.get_ident() != _MAIN_THREAD:
        return False
    # sys._getframe is what inspect.currentframe() returns; importing inspect here, in a
    # signal handler, could meet its own import half done in the interrupted frame.
    frame: FrameType | None = sys._getframe(2)  # the caller's caller
    critical_code = _CRITICAL
    while frame is not None:
        if frame.f_code in critical_code:
            return True
        frame = frame.f_back
    depth.value = 0  # left behind by an interrupted count: there is none below
    return False


def check_not_from_callback(what: str, engine: object, timeout: float | None = None) -> None:
    """Raise ``ReentrantCallError`` if ``what``, a wait of up to ``timeout`` seconds for a
    result that ``engine`` settles, comes from that engine's own thread (a callback),
    which would wait for itself. (A callback may poll, with a timeout of 0.)"""
    if engine is not None and engine_thread.engine is engine and (timeout is None or timeout > 0):
        raise ReentrantCallError(
            f"{what} was called from a callback of the same pool, on its manager thread: "
            f"the thread that would deliver that result, so it would wait for itself. In "
            f"a callback, act on the result it receives, chain another callback "
            f"(callback=, add_done_callback), or hand the wait to a thread of your own"
        )


def check_may_block(what: str, engine: object = None, timeout: float | None = None) -> None:
    """Raise ``ReentrantCallError`` if ``what``, a wait of up to ``timeout`` seconds for a
    result that ``engine`` settles, would wait for itself: from that engine's own thread
    (``check_not_from_callback``), or from a signal handler that interrupted the pool's
    bookkeeping."""
    check_not_from_callback(what, engine, timeout)
    if reentered():
        raise ReentrantCallError(
            f"{what} was called from a signal handler that interrupted this thread inside "
            f"hookpool's own bookkeeping, which it would wait for: a deadlock. In a signal "
            f"handler, set a flag (or call close() or terminate(), which are always "
            f"allowed) and call the pool after the handler has returned"
        )


class GuardedFuture(Future[T]):
    """The ``concurrent.futures.Future`` hookpool hands out: ``result()`` and
    ``exception()`` refuse to wait (``ReentrantCallError``) when called from a signal
    handler that interrupted the pool's bookkeeping, or from a callback on the manager
    thread of the engine that settles it (``engine``, where the facade sets it), instead
    of deadlocking."""

    def __init__(self, engine: object = None) -> None:
        super().__init__()
        #: The engine that settles this future, if the facade said so.
        self.engine = engine

    def result(self, timeout: float | None = None) -> T:
        if not self.done():
            check_may_block("Future.result()", self.engine, timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            check_may_block("Future.exception()", self.engine, timeout)
        return super().exception(timeout)
