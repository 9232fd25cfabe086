"""Result objects of the Pool facade, built on ``concurrent.futures.Future``.

``AsyncResult`` and ``MapResult`` keep the standard library's interface (``get``,
``wait``, ``ready``, ``successful``, callbacks). ``_imap.IMapIterator`` is the lazily fed
iterator of ``imap`` and ``imap_unordered``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError

from ._errors import PoolTerminatedError
from ._records import TYPE_CHECKING, Generic, TypeVar
from ._reentry import (
    GuardedFuture,
    check_may_block,
    counts_itself,
    critical,
    depth,
    engine_thread,
)

if TYPE_CHECKING:
    from typing import Any


__all__ = [
    "ApplyOutcome",
    "AsyncResult",
    "ChunkSlot",
    "MapGather",
    "MapResult",
    "outcome_of",
]

T = TypeVar("T")

logger = logging.getLogger("hookpool")


class AsyncResult(Generic[T]):
    """The result of ``apply_async`` (over its ``ApplyOutcome``) and of ``map_async`` (over
    the map's Future): the standard library's interface.

    Callbacks run in hookpool's manager thread, as the standard library runs them in its
    result-handler thread: keep them short. A wait there for a result of the same pool
    that is not ready would wait for itself: it raises ``ReentrantCallError``. As in
    the standard library, the result becomes ready only after its callback returned. (With
    ``progress=``, a map's callbacks run in its progress thread, after the final report.)
    """

    def __init__(
        self,
        future: Future[T] | ApplyOutcome[T],
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        tasks: Sequence[Future[Any] | ChunkSlot] | None = None,
        owner: object = None,
        engine: object = None,
    ) -> None:
        self._owner = owner  # the pool: kept alive while its results are, as in the stdlib
        self._engine = engine  # the engine that settles it (see check_may_block)
        self._tasks = tasks
        self._future = future
        self._settled: ApplyOutcome[T] | _AfterCallbacks[T]
        if isinstance(future, ApplyOutcome):
            assert callback is None and error_callback is None, "the outcome runs them"
            self._settled = future
        else:
            self._settled = _AfterCallbacks(future, callback, error_callback)

    @property
    def future(self) -> Future[T]:
        """The task's ``concurrent.futures.Future`` (cancelling it cancels the task). It
        settles just before the callbacks run; ``get()`` returns just after."""
        future = self._future
        return future.future(self._engine) if isinstance(future, ApplyOutcome) else future

    @property
    def tasks(self) -> Sequence[Future[Any] | ChunkSlot | ApplyOutcome[Any]]:
        """What the manager settles for the tasks behind this result (what
        ``Pool.cancel`` cancels)."""
        return [self._future] if self._tasks is None else self._tasks

    def ready(self) -> bool:
        """Whether the task has finished (successfully or not)."""
        return self._settled.ready()

    def successful(self) -> bool:
        """Whether the task finished without raising. ValueError if not ready yet."""
        if not self._settled.ready():
            raise ValueError(f"{self!r} not ready")
        return self._settled.succeeded()

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass."""
        if not self._settled.ready():
            check_may_block("AsyncResult.wait()", self._settler(), timeout)
            self._settled.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """Return the result, or raise the task's exception (with the worker's frames).

        Raises:
            multiprocessing.TimeoutError: the result is not ready within ``timeout``.
            concurrent.futures.CancelledError: the task was cancelled before it ran
                (``terminate()`` cancels queued tasks).
        """
        if not self._settled.ready():
            check_may_block("AsyncResult.get()", self._settler(), timeout)
            if not self._settled.wait(timeout):
                raise multiprocessing.TimeoutError
        return self._settled.value()

    def _settler(self) -> object:
        """The engine this result still waits for, if this is its thread (see
        ``check_may_block``); None elsewhere, and where another thread ends it from here:
        a map whose chunks are all in (with ``progress=``, its progress thread), an
        answer a waiting thread read itself."""
        if engine_thread.engine is not self._engine:  # (a caller's thread: no more to do)
            return None
        settled = self._settled
        if isinstance(settled, ApplyOutcome):
            return None if settled.settled_elsewhere() else self._engine
        if self._tasks is not None and all(task.done() for task in self._tasks):
            return None
        return self._engine


class MapResult(AsyncResult[list[T]]):
    """The result of ``map_async`` / ``starmap_async``."""


class _AfterCallbacks(Generic[T]):
    """A map's result as its AsyncResult sees it: ready once the callbacks have run on
    the map's settled Future."""

    def __init__(
        self,
        future: Future[T],
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._visible = future
        if callback is not None or error_callback is not None:
            self._visible = GuardedFuture()
            future.add_done_callback(self._run_callbacks(callback, error_callback))

    def _run_callbacks(
        self,
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> Callable[[Future[T]], None]:
        visible = self._visible

        def done(future: Future[T]) -> None:
            try:
                _run_callback(future.cancelled(), future, callback, error_callback)
            finally:
                if future.cancelled():
                    visible.cancel()
                elif (error := future.exception()) is not None:
                    visible.set_exception(error)
                else:
                    visible.set_result(future.result())

        return done

    def ready(self) -> bool:
        return self._visible.done()

    def succeeded(self) -> bool:
        return not self._visible.cancelled() and self._visible.exception() is None

    def wait(self, timeout: float | None) -> bool:
        concurrent.futures.wait([self._visible], timeout)
        return self._visible.done()

    def value(self) -> T:
        return self._visible.result()


def _run_callback(
    cancelled: bool,
    future: Future[T] | ApplyOutcome[T],
    callback: Callable[[T], object] | None,
    error_callback: Callable[[BaseException], object] | None,
) -> None:
    """The callback for a settled task (the error callback gets CancelledError if it
    was cancelled); an error it raises is logged, as the standard library would lose it."""
    try:
        if cancelled:
            if error_callback is not None:
                error_callback(CancelledError())
        elif (error := future.exception()) is None:
            if callback is not None:
                callback(future.result())
        elif error_callback is not None:
            error_callback(error)
    except Exception:
        logger.exception("hookpool: a callback of apply_async/map_async raised")


class MapGather:
    """The outcome of a whole ``map_async``: one Future, fed by a light slot per chunk.

    A map with ``chunksize=1`` has a chunk per item: a ``Future`` for each (a Condition,
    an RLock and two lists) would cost more than the rest of the work, mostly in the
    garbage collector. A slot has only what the manager uses of a Future.

    Like the standard library, the Future settles when every chunk has finished; if any
    failed, it fails with the error of the first failed chunk (in input order). Each
    chunk's results go into their place in the map's list as the chunk finishes (as the
    standard library's do), not all at once at the end.
    """

    def __init__(self, sizes: list[int], engine: object = None) -> None:
        count = len(sizes)
        self.future: Future[list[Any]] = GuardedFuture(engine)  # map_async().future
        self.future.set_running_or_notify_cancel()
        self.slots = [ChunkSlot(self, index) for index in range(count)]
        self._starts = list(itertools.accumulate(sizes, initial=0))  # chunk i: [i, i + 1)
        self._results: list[Any] = [None] * self._starts[-1]
        self._errors: dict[int, BaseException] = {}
        self._remaining = count
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[tuple[int, bool]] | None = None
        if not count:
            self.future.set_result([])

    def watch(self) -> queue.SimpleQueue[tuple[int, bool]]:
        """A queue that receives ``(chunk index, succeeded)`` as each chunk settles
        (for progress reports, read in a thread of their own)."""
        self._events = queue.SimpleQueue()
        return self._events

    def _record(self, index: int, value: Any, error: BaseException | None) -> bool:
        """Record one settled chunk (with the lock held); True if it was the last."""
        if error is None:
            start, end = self._starts[index], self._starts[index + 1]
            if len(value) == end - start:
                self._results[start:end] = value
            else:  # never, from a worker (one result per item); it would shift the rest
                error = RuntimeError(f"chunk {index} of a map has {len(value)} results")
        if error is not None:
            self._errors[index] = error
        if self._events is not None:
            self._events.put((index, error is None))
        self._remaining -= 1
        return not self._remaining

    def _finish(self) -> None:
        """Settle the map's Future: outside the lock, since its callbacks may call back
        into this map (an error_callback that cancels it)."""
        if self._errors:
            self.future.set_exception(self._errors[min(self._errors)])
        else:
            self.future.set_result(self._results)


_PENDING, _RUNNING, _FINISHED, _CANCELLED = range(4)


class ChunkSlot:
    """One chunk of a ``map_async``: the part of the Future interface the manager uses."""

    __slots__ = ("_gather", "_index", "_state")

    def __init__(self, gather: MapGather, index: int) -> None:
        self._gather = gather
        self._index = index
        self._state = _PENDING

    def set_running_or_notify_cancel(self) -> bool:
        with self._gather._lock:
            if self._state == _CANCELLED:
                return False
            self._state = _RUNNING
            return True

    def cancel(self) -> bool:
        gather = self._gather
        with gather._lock:
            if self._state == _CANCELLED:
                return True
            if self._state != _PENDING:
                return False
            self._state = _CANCELLED
            error = PoolTerminatedError(
                "this map was cancelled or its pool terminated before it ran"
            )
            last = gather._record(self._index, None, error)
        if last:
            gather._finish()
        return True

    def set_result(self, value: Any) -> None:
        self._settle(value, None)

    def set_exception(self, error: BaseException | None) -> None:
        self._settle(None, error)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        gather = self._gather
        with gather._lock:
            if self._state == _FINISHED or self._state == _CANCELLED:
                raise InvalidStateError(f"chunk {self._index} of a map is already settled")
            self._state = _FINISHED
            last = gather._record(self._index, value, error)
        if last:
            gather._finish()

    def done(self) -> bool:
        return self._state == _FINISHED or self._state == _CANCELLED

    def cancelled(self) -> bool:
        return self._state == _CANCELLED


class ApplyOutcome(Generic[T]):
    """The outcome of one ``apply_async`` task: what the manager settles (the part of
    the Future interface it uses) and what the task's AsyncResult waits on.

    A ``Future`` per task costs more than the rest of a small task: a Condition, an
    RLock, three lists, the garbage collector's time for them, and the same again for
    a second Future when there are callbacks. This has a lock for its state, and a
    ``threading.Event`` only once a thread waits before the result is ready (after the
    callbacks). A real Future (``future()``, ``AsyncResult.future``) is made only when
    asked for, and mirrors the task from then on: cancelling it cancels the task.
    """

    __slots__ = (
        "_callback",
        "_direct",
        "_direct_read",
        "_error",
        "_error_callback",
        "_lock",
        "_mirror",
        "_ready",
        "_state",
        "_value",
        "_waiters",
    )

    def __init__(
        self,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> None:
        self._state = _PENDING
        self._value: T | None = None
        self._error: BaseException | None = None
        self._ready = False
        # Re-entrant: a signal handler may cancel() or ask for future() while this thread
        # is inside one of these methods, holding it.
        self._lock = threading.RLock()
        self._waiters: threading.Event | None = None  # made by the first early waiter
        self._callback = callback
        self._error_callback = error_callback
        self._mirror: Future[T] | None = None
        self._direct_read: Callable[[float | None], None] | None = None
        self._direct = False  # offered a direct read once: it never has callbacks

    # -- the engine's side (``_engine.DirectOutcome``) ------------------------------------

    def offer_direct_read(self, read: Callable[[float | None], None]) -> None:
        """The task went straight to an idle worker: ``read(timeout)`` lets a thread that
        waits for it read the answer from that worker itself (``_fastpath``). Only
        offered for outcomes without callbacks: those run in the manager's thread, as the
        standard library runs them in its result thread, never in the thread that waits."""
        self._direct_read = read
        self._direct = True

    @counts_itself
    def settle_here(self, value: T | None, error: BaseException | None) -> bool:
        """Settle from the waiting thread that read the answer. False if a mirror Future
        exists (its callbacks must not run here): the manager settles."""
        depth.value += 1
        try:
            with self._lock:
                if self._mirror is not None or self._state != _RUNNING:
                    return False
                self._value, self._error = value, error  # first: the state says so
                self._state = _FINISHED
            self._finish()
            return True
        finally:
            depth.value -= 1

    def complete_settling(self) -> None:
        """From the manager: finish what a ``settle_here`` that a signal handler cut short
        left half done (settled, but not ready: its waiters would wait forever)."""
        if self.done() and not self._ready:
            self._finish()

    def set_running_or_notify_cancel(self) -> bool:
        with self._lock:
            if self._state == _CANCELLED:
                return False
            if self._state != _PENDING:
                raise RuntimeError(f"task outcome in unexpected state {self._state}")
            mirror = self._mirror
            if mirror is None or mirror.set_running_or_notify_cancel():
                self._state = _RUNNING
                return True
            # The mirror was cancelled a moment ago; its callback has not cancelled
            # this yet: do it here, once.
            self._state = _CANCELLED
        self._finish()
        return False

    @critical
    def cancel(self) -> bool:
        with self._lock:
            if self._state == _CANCELLED:
                return True
            if self._state != _PENDING:
                return False
            self._state = _CANCELLED
            mirror = self._mirror
        if mirror is not None:
            mirror.cancel()
        self._finish()
        return True

    def set_result(self, value: T) -> None:
        self._settle(value, None)

    def set_exception(self, error: BaseException | None) -> None:
        self._settle(None, error)

    def _settle(self, value: T | None, error: BaseException | None) -> None:
        with self._lock:
            if self._state == _FINISHED or self._state == _CANCELLED:
                raise InvalidStateError("this task's outcome is already settled")
            self._value, self._error = value, error  # first: the state says they are set
            self._state = _FINISHED
            mirror = self._mirror
        if mirror is not None:
            with contextlib.suppress(InvalidStateError):  # cancelled by its user just now
                if error is None:
                    mirror.set_result(value)  # type: ignore[arg-type]
                else:
                    mirror.set_exception(error)
        self._finish()

    def _finish(self) -> None:
        """Once settled: run the callback, then let the waiters through."""
        callback, error_callback = self._callback, self._error_callback
        self._callback = self._error_callback = None
        self._direct_read = None
        try:
            if callback is not None or error_callback is not None:
                _run_callback(self._state == _CANCELLED, self, callback, error_callback)
        finally:
            self._ready = True
            # (No lock: _waiting_event makes the Event, then looks at _ready.)
            waiters = self._waiters
            if waiters is not None:
                waiters.set()

    def done(self) -> bool:
        return self._state == _FINISHED or self._state == _CANCELLED

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def settled_elsewhere(self) -> bool:
        """Settled, not yet ready, by a thread that read the answer itself: no callbacks
        to run there, only ``_finish``."""
        return self._direct and self.done()

    # -- the caller's side (what AsyncResult uses) -----------------------------------------

    def ready(self) -> bool:
        return self._ready

    def wait(self, timeout: float | None) -> bool:
        """Wait until ready (True) or ``timeout`` seconds pass (False)."""
        if self._ready:
            return True
        read = self._direct_read
        if read is not None and (timeout is None or timeout > 0):
            started = time.monotonic()
            read(timeout)  # returns once settled, or once it may not read any more
            if self._ready:
                return True
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - started))
        if self._direct and self.done():
            # Settled, not yet ready: in this thread, by the frame a signal handler (this
            # call) interrupted. That frame cannot go on until this returns: finish here.
            self._finish()
            return True
        self._waiting_event().wait(timeout)
        return self._ready

    @counts_itself
    def _waiting_event(self) -> threading.Event:
        depth.value += 1
        try:
            with self._lock:
                if self._waiters is None:
                    self._waiters = threading.Event()
                    if self._ready:
                        self._waiters.set()
                return self._waiters
        finally:
            depth.value -= 1

    def exception(self) -> BaseException | None:
        return self._error

    def result(self) -> T:
        return self.value()

    def succeeded(self) -> bool:
        return self._state == _FINISHED and self._error is None

    def value(self) -> T:
        """The result, once ready; raises the task's exception."""
        if self._state == _CANCELLED:
            raise CancelledError
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    @critical
    def future(self, engine: object = None) -> Future[T]:
        """A ``concurrent.futures.Future`` that mirrors this task from now on (settled by
        ``engine``: see ``check_may_block``)."""
        with self._lock:
            if self._mirror is None:
                mirror: Future[T] = GuardedFuture(engine)
                state = self._state
                if state == _CANCELLED:
                    mirror.cancel()
                else:
                    if state != _PENDING:
                        mirror.set_running_or_notify_cancel()
                    if state == _FINISHED:
                        if self._error is None:
                            mirror.set_result(self._value)  # type: ignore[arg-type]
                        else:
                            mirror.set_exception(self._error)
                    else:
                        mirror.add_done_callback(self._mirror_done)
                mirror._hookpool_outcome = self  # type: ignore[attr-defined]  # outcome_of
                self._mirror = mirror
            return self._mirror

    def _mirror_done(self, mirror: Future[T]) -> None:
        if mirror.cancelled():  # its user cancelled it: cancel the task
            self.cancel()


def outcome_of(future: Future[Any]) -> Future[Any] | ApplyOutcome[Any]:
    """What the manager settles for ``future``: the ApplyOutcome it mirrors, or itself."""
    outcome: ApplyOutcome[Any] | None = getattr(future, "_hookpool_outcome", None)
    return future if outcome is None else outcome
