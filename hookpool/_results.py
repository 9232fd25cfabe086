"""Result objects of the Pool facade, built on ``concurrent.futures.Future``.

``AsyncResult`` and ``MapResult`` keep the standard library's interface (``get``,
``wait``, ``ready``, ``successful``, callbacks); ``IMapIterator`` is the lazily fed
iterator of ``imap`` and ``imap_unordered``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any, Generic, TypeVar

from ._errors import PoolTerminatedError

__all__ = ["AsyncResult", "IMapIterator", "MapResult", "gather"]

T = TypeVar("T")

logger = logging.getLogger("hookpool")


def _result(future: Future[T], timeout: float | None) -> T:
    """``future.result(timeout)``, with the Pool's TimeoutError when the wait runs out."""
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        if future.done():
            raise  # the task itself raised a TimeoutError
        raise multiprocessing.TimeoutError from None


class AsyncResult(Generic[T]):
    """The result of ``apply_async``: the standard library's interface over a Future.

    Callbacks run in hookpool's manager thread, as the standard library runs them in its
    result-handler thread: keep them short, and do not wait on the pool from them. As in
    the standard library, the result becomes ready only after its callback returned.
    """

    def __init__(
        self,
        future: Future[T],
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        tasks: list[Future[Any]] | None = None,
    ) -> None:
        self._future = future
        #: The futures of the tasks behind this result (what Pool.cancel cancels).
        self.tasks = [future] if tasks is None else tasks
        #: What ready(), wait() and get() look at: settled after the callbacks ran.
        self._settled = future
        if callback is not None or error_callback is not None:
            self._settled = Future()
            future.add_done_callback(_after_callbacks(self._settled, callback, error_callback))

    @property
    def future(self) -> Future[T]:
        """The task's ``concurrent.futures.Future`` (cancelling it cancels the task). It
        settles just before the callbacks run; ``get()`` returns just after."""
        return self._future

    def ready(self) -> bool:
        """Whether the task has finished (successfully or not)."""
        return self._settled.done()

    def successful(self) -> bool:
        """Whether the task finished without raising. ValueError if not ready yet."""
        if not self._settled.done():
            raise ValueError(f"{self!r} not ready")
        return not self._settled.cancelled() and self._settled.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass."""
        concurrent.futures.wait([self._settled], timeout)

    def get(self, timeout: float | None = None) -> T:
        """Return the result, or raise the task's exception (with the worker's frames).

        Raises:
            multiprocessing.TimeoutError: the result is not ready within ``timeout``.
            concurrent.futures.CancelledError: the task was cancelled before it ran
                (``terminate()`` cancels queued tasks).
        """
        return _result(self._settled, timeout)


class MapResult(AsyncResult[list[T]]):
    """The result of ``map_async`` / ``starmap_async``."""


def _after_callbacks(
    visible: Future[Any],
    callback: Callable[[Any], object] | None,
    error_callback: Callable[[BaseException], object] | None,
) -> Callable[[Future[Any]], None]:
    """Run the callback for a settled task, then settle the future the caller sees."""

    def done(future: Future[Any]) -> None:
        try:
            if future.cancelled():
                if error_callback is not None:
                    error_callback(CancelledError())
            elif future.exception() is None:
                if callback is not None:
                    callback(future.result())
            elif error_callback is not None:
                error_callback(future.exception())  # type: ignore[arg-type]
        except Exception:
            logger.exception("hookpool: a callback of apply_async/map_async raised")
        finally:
            if future.cancelled():
                visible.cancel()
            elif (error := future.exception()) is not None:
                visible.set_exception(error)
            else:
                visible.set_result(future.result())

    return done


def gather(chunks: list[Future[list[Any]]]) -> Future[list[Any]]:
    """One future for a whole map: the concatenated chunk results, in order.

    Like the standard library, it settles when every chunk has finished; if any failed,
    it fails with the error of the first failed chunk (in input order).
    """
    combined: Future[list[Any]] = Future()
    combined.set_running_or_notify_cancel()
    if not chunks:
        combined.set_result([])
        return combined
    remaining = [len(chunks)]
    lock = threading.Lock()

    def one_done(_: Future[list[Any]]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        for chunk in chunks:
            if chunk.cancelled():
                combined.set_exception(
                    PoolTerminatedError("the pool was terminated before this map finished")
                )
                return
            error = chunk.exception()
            if error is not None:
                combined.set_exception(error)
                return
        combined.set_result(list(itertools.chain.from_iterable(c.result() for c in chunks)))

    for chunk in chunks:
        chunk.add_done_callback(one_done)
    return combined


class IMapIterator(Iterator[T]):
    """The iterator of ``imap`` / ``imap_unordered``, fed lazily from the input.

    At most ``window`` chunks are submitted and not yet consumed at any time: the input is
    read, and pickled, in the consumer's thread as results are taken, so an endless
    generator works and memory stays flat. With ``window`` 0 (inline mode) nothing is
    read ahead: a chunk is submitted only when the consumer asks for its results.
    ``next(timeout)`` raises ``multiprocessing.TimeoutError`` when no result arrives in
    time.
    """

    def __init__(
        self,
        chunks: Iterator[list[Any]],
        submit: Callable[[list[list[Any]]], list[Future[list[Any]]]],
        *,
        window: int,
        ordered: bool,
    ) -> None:
        self._chunks = chunks
        self._submit = submit
        self._window = window
        self._ordered = ordered
        self._pending: collections.deque[Future[list[Any]]] = collections.deque()
        self._done: queue.SimpleQueue[Future[list[Any]]] = queue.SimpleQueue()
        self._unordered: set[Future[list[Any]]] = set()  # outstanding, when not ordered
        self._outstanding = 0
        self._current: Iterator[Any] = iter(())
        self._input_error: BaseException | None = None
        self._exhausted = False
        self._lock = threading.RLock()
        self._top_up()

    def __iter__(self) -> IMapIterator[T]:
        return self

    def __next__(self) -> T:
        return self.next()

    def next(self, timeout: float | None = None) -> T:
        """The next result; raises the task's exception at its position."""
        with self._lock:
            while True:
                for item in self._current:
                    return item  # type: ignore[no-any-return]
                self._top_up(on_demand=True)
                if not self._outstanding:
                    if self._input_error is not None:
                        error, self._input_error = self._input_error, None
                        raise error
                    raise StopIteration
                future = self._take(timeout)
                self._outstanding -= 1
                self._current = iter(future.result())

    def _take(self, timeout: float | None) -> Future[list[Any]]:
        if self._ordered:
            future = self._pending[0]
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
        """Read no more input; cancel the chunks still queued (they will never run)."""
        with self._lock:
            self._exhausted = True
            for future in [*self._pending, *self._unordered]:
                future.cancel()

    def feed_all(self) -> None:
        """Submit all remaining input now (``close()`` does this, as the stdlib would)."""
        with self._lock:
            self._window = 1 << 62
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
