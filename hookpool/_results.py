"""Result objects of the Pool facade, built on ``concurrent.futures.Future``.

``AsyncResult`` and ``MapResult`` keep the standard library's interface (``get``,
``wait``, ``ready``, ``successful``, callbacks); ``IMapIterator`` is the lazily fed
iterator of ``imap`` and ``imap_unordered``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import multiprocessing
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError

from ._errors import PoolTerminatedError
from ._records import TYPE_CHECKING, Generic, TypeVar
from ._reentry import check_may_block, critical

if TYPE_CHECKING:
    from typing import Any

    from ._progress import Progress

__all__ = [
    "ApplyOutcome",
    "AsyncResult",
    "ChunkSlot",
    "IMapIterator",
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
    result-handler thread: keep them short, and do not wait on the pool from them. As in
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
    ) -> None:
        self._owner = owner  # the pool: kept alive while its results are, as in the stdlib
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
        return future.future() if isinstance(future, ApplyOutcome) else future

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
            check_may_block("AsyncResult.wait()")
            self._settled.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """Return the result, or raise the task's exception (with the worker's frames).

        Raises:
            multiprocessing.TimeoutError: the result is not ready within ``timeout``.
            concurrent.futures.CancelledError: the task was cancelled before it ran
                (``terminate()`` cancels queued tasks).
        """
        if not self._settled.ready():
            check_may_block("AsyncResult.get()")
            if not self._settled.wait(timeout):
                raise multiprocessing.TimeoutError
        return self._settled.value()


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
            self._visible = Future()
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

    def __init__(self, sizes: list[int]) -> None:
        count = len(sizes)
        self.future: Future[list[Any]] = Future()
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
        self._lock = threading.Lock()
        self._waiters: threading.Event | None = None  # made by the first early waiter
        self._callback = callback
        self._error_callback = error_callback
        self._mirror: Future[T] | None = None
        self._direct_read: Callable[[float | None], None] | None = None

    # -- the engine's side (``_engine.DirectOutcome``) ------------------------------------

    def offer_direct_read(self, read: Callable[[float | None], None]) -> None:
        """The task went straight to an idle worker: ``read(timeout)`` lets a thread that
        waits for it read the answer from that worker itself (``_fastpath``). Only
        offered for outcomes without callbacks: those run in the manager's thread, as the
        standard library runs them in its result thread, never in the thread that waits."""
        self._direct_read = read

    @critical
    def settle_here(self, value: T | None, error: BaseException | None) -> bool:
        """Settle from the waiting thread that read the answer. False if a mirror Future
        exists (its callbacks must not run here): the manager settles."""
        with self._lock:
            if self._mirror is not None or self._state != _RUNNING:
                return False
            self._state = _FINISHED
            self._value, self._error = value, error
        self._finish()
        return True

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
            self._state = _FINISHED
            self._value, self._error = value, error
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
            with self._lock:
                waiters = self._waiters
            if waiters is not None:
                waiters.set()

    def done(self) -> bool:
        return self._state == _FINISHED or self._state == _CANCELLED

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

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
        self._waiting_event().wait(timeout)
        return self._ready

    @critical
    def _waiting_event(self) -> threading.Event:
        with self._lock:
            if self._waiters is None:
                self._waiters = threading.Event()
                if self._ready:
                    self._waiters.set()
            return self._waiters

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

    def future(self) -> Future[T]:
        """A ``concurrent.futures.Future`` that mirrors this task from now on."""
        with self._lock:
            if self._mirror is None:
                mirror: Future[T] = Future()
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


class IMapIterator(Iterator[T]):
    """The iterator of ``imap`` / ``imap_unordered``, fed lazily from the input.

    At most ``window`` chunks are submitted and not yet consumed at any time: the input is
    read, and pickled, in the consumer's thread as results are taken, so an endless
    generator works and memory stays flat. With ``window`` 0 (inline mode) nothing is
    read ahead: a chunk is submitted only when the consumer asks for its results.
    ``next(timeout)`` raises ``multiprocessing.TimeoutError`` when no result arrives in
    time.

    With ``progress=``, the progress advances in the consumer's thread, by a chunk's size
    as ``next()`` takes that chunk's results, and ends when the iterator is exhausted,
    raises a task's error, is cancelled, or is garbage-collected.

    A result handed out is no longer referenced here: the chunk being consumed is a
    reversed list whose items are popped, so a map over large results frees each one as
    the consumer moves on (as the standard library's executor does).
    """

    def __init__(
        self,
        chunks: Iterator[list[Any]],
        submit: Callable[[list[list[Any]]], list[Future[list[Any]]]],
        *,
        window: int,
        ordered: bool,
        progress: Progress | None = None,
        owner: object = None,
    ) -> None:
        self._owner = owner  # the pool: kept alive while the iterator is, as in the stdlib
        self._chunks = chunks
        self._submit = submit
        self._window = window
        self._ordered = ordered
        self._pending: collections.deque[Future[list[Any]]] = collections.deque()
        self._done: queue.SimpleQueue[Future[list[Any]]] = queue.SimpleQueue()
        self._unordered: set[Future[list[Any]]] = set()  # outstanding, when not ordered
        self._outstanding = 0
        self._pop: Callable[[], Any] = [].pop  # the current chunk's, reversed
        self._input_error: BaseException | None = None
        self._exhausted = False
        #: close()/shutdown() submit the rest of the input (feed_rest); not for a map
        #: whose read-ahead the caller bounded (executor.map(buffersize=)).
        self.fed_on_close = True
        self._lock = threading.RLock()
        self._progress = progress
        if progress is not None:
            # An iterator dropped before its end (a ``break``) still closes the bar.
            weakref.finalize(self, progress.end).atexit = False
        try:
            self._top_up()
        except BaseException:
            if progress is not None:
                progress.end()
            raise

    def __iter__(self) -> Iterator[T]:
        """A loop over this iterator runs in a generator that shares its position: per
        item, a pop from the current chunk instead of a call to ``__next__`` (a loop over
        a million results spends a third less time here). ``next()`` and other loops take
        up exactly where it stopped."""
        return self.items_before(None)

    def items_before(self, deadline: float | None) -> Iterator[T]:
        """Iterate, raising ``multiprocessing.TimeoutError`` when a result is not there by
        ``deadline`` (``time.monotonic()``, or None): the clock is read only when a
        chunk's results are waited for (``executor.map(timeout=)``)."""
        while True:
            pop = self._pop  # list.pop is atomic: no item twice, with several consumers
            try:
                while True:
                    yield pop()  # (never kept in a local while the generator waits)
            except IndexError:
                pass
            with self._lock:
                # (Bound methods of one list compare equal.) If another consumer moved on
                # to the next chunk meanwhile, take its items first.
                if self._pop != pop:
                    continue
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._advance(timeout):
                    return

    def __next__(self) -> T:
        return self.next()

    def next(self, timeout: float | None = None) -> T:
        """The next result; raises the task's exception at its position."""
        try:
            return self._pop()  # type: ignore[no-any-return]  # the fast path, lock-free
        except IndexError:
            pass
        with self._lock:
            while True:
                try:
                    return self._pop()  # type: ignore[no-any-return]
                except IndexError:
                    pass
                if not self._advance(timeout):
                    raise StopIteration

    def _advance(self, timeout: float | None) -> bool:
        """Make the next chunk's results (reversed) the current ones; False at the end.
        Raises a task's error, or the input's, at its position. Called with the lock."""
        self._top_up(on_demand=True)
        if not self._outstanding:
            if self._progress is not None:
                self._progress.end()
            if self._input_error is not None:
                error, self._input_error = self._input_error, None
                raise error
            return False
        future = self._take(timeout)
        self._outstanding -= 1
        try:
            chunk = future.result()
        except BaseException:
            # As a loop over a tqdm-wrapped iterator would: the bar closes at the first
            # error, even if the consumer goes on to take more results.
            if self._progress is not None:
                self._progress.end()
            raise
        if self._progress is not None:
            self._progress.advance(len(chunk))
        chunk.reverse()  # the Future's own list: popping frees each result as it is taken
        self._pop = chunk.pop
        return True

    def _take(self, timeout: float | None) -> Future[list[Any]]:
        if self._ordered:
            future = self._pending[0]
            if not future.done():  # (wait() costs more than the check, even when done)
                concurrent.futures.wait([future], timeout)
                if not future.done():
                    raise multiprocessing.TimeoutError
            return self._pending.popleft()
        try:
            future = self._done.get(timeout=timeout)
        except queue.Empty:
            raise multiprocessing.TimeoutError from None
        self._unordered.discard(future)
        return future

    def cancel(self) -> None:
        """Read no more input; cancel the chunks still queued (they will never run); end
        the progress, if any (the bar is closed)."""
        with self._lock:
            self._exhausted = True
            for future in [*self._pending, *self._unordered]:
                future.cancel()
            if self._progress is not None:
                self._progress.end()

    @property
    def exhausted(self) -> bool:
        """Whether all of the input has been read (or the iterator was cancelled)."""
        return self._exhausted

    def feed_rest(self) -> None:
        """Submit all the remaining input, a batch at a time, without waiting for the
        consumer (``close()`` and ``shutdown()`` do this in a background thread: the
        standard library would have submitted it all already)."""
        while True:
            with self._lock:
                if self._exhausted:
                    return
                self._window = self._outstanding + 64
                self._top_up()

    def _top_up(self, *, on_demand: bool = False) -> None:
        if self._exhausted:
            return
        wanted = self._window - self._outstanding
        if on_demand and not self._outstanding:
            wanted = max(wanted, 1)  # the consumer is waiting for a result
        if wanted <= 0:
            return
        batch: list[list[Any]] = []
        try:
            for _ in range(wanted):
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._exhausted = True
                    break
                batch.append(chunk)
        except Exception as exc:  # the input iterator raised: raise it in its position
            self._input_error = exc
            self._exhausted = True
        if not batch:
            return
        futures = self._submit(batch)
        self._outstanding += len(futures)
        for future in futures:
            if self._ordered:
                self._pending.append(future)
            else:
                self._unordered.add(future)
                future.add_done_callback(self._done.put)


def chunked(iterable: Iterable[T], size: int) -> Iterator[list[T]]:
    """Split ``iterable`` lazily into lists of ``size`` items."""
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
