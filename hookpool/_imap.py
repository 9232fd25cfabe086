"""The lazily fed iterator of ``imap``, ``imap_unordered`` and ``executor.map``."""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future

from ._records import TYPE_CHECKING, TypeVar
from ._reentry import check_may_block

if TYPE_CHECKING:
    from typing import Any

    from ._progress import Progress

__all__ = ["IMapIterator", "chunked"]

T = TypeVar("T")


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
        engine: object = None,
    ) -> None:
        self._owner = owner  # the pool: kept alive while the iterator is, as in the stdlib
        self._engine = engine  # the engine that settles its chunks (see check_may_block)
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
                check_may_block("next() on a lazy map", self._engine, timeout)
                concurrent.futures.wait([future], timeout)
                if not future.done():
                    raise multiprocessing.TimeoutError
            return self._pending.popleft()
        try:
            future = self._done.get(block=False)
        except queue.Empty:
            check_may_block("next() on a lazy map", self._engine, timeout)
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
