"""Progress of one map: the ``progress=`` argument of both facades' maps.

``progress=None`` or ``False`` (the default) creates nothing here: the maps run exactly as
without this module. Otherwise ``start`` builds a ``Progress`` at the call site (so a
missing tqdm raises there, before any work is submitted), and the map reports to it:

    Pool.map / map_async / starmap / starmap_async       (every chunk submitted up front)
      chunk settlements (MapGather.watch) ──> report_map's thread ("hookpool-progress"):
                          Progress.advance(k) per chunk that succeeded, then Progress.end()
                          then it settles the map's result, so the final report comes first

    Pool.imap / imap_unordered, ProcessPoolExecutor.map        (lazy: IMapIterator)
      IMapIterator.next(), in the consumer's thread:
                          Progress.advance(k) as it takes a chunk that succeeded;
                          Progress.end() on exhaustion, the first task error raised,
                          cancel(), or garbage collection

Guarantees, for a callable ``progress(done, total)``:

- ``done`` is cumulative: the number of items, counted whole chunks at a time, whose chunk
  succeeded (for the lazy maps: and whose results the consumer has started taking). It
  never decreases; each chunk update increases it.
- ``total`` is the same in every call: the number of items when known, else None.
- Exactly one final call, with the last ``done`` again, when the map ends, including on a
  failed task, cancel or terminate. No call comes after it. It is the only call when no
  chunk succeeded.
- Calls never overlap, and one that raises is logged on the ``hookpool`` logger and
  disables the callback for the rest of that map; it never fails the map. The manager
  thread never runs it, so a slow callback never slows the pool.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sized
from concurrent.futures import Future

from ._records import TYPE_CHECKING
from ._reentry import GuardedFuture

if TYPE_CHECKING:
    from typing import Any, Protocol

    class _Sink(Protocol):
        """Where a Progress reports: a user's callable or a tqdm bar."""

        def update(self, done: int, total: int | None) -> None: ...
        def close(self, done: int, total: int | None) -> None: ...


__all__ = ["Progress", "ProgressOption", "report_map", "start", "total_of"]

logger = logging.getLogger("hookpool")


#: What ``progress=`` accepts: off (None, False), a tqdm bar (True), or a callable that
#: receives ``(done, total)``.
ProgressOption = bool | Callable[[int, int | None], object] | None

MISSING_TQDM = (
    'progress=True needs tqdm: pip install "hookpool[progress]", or pass a callable '
    "progress(done, total) instead"
)


class _CallableSink:
    def __init__(self, report: Callable[[int, int | None], object]) -> None:
        self.report = report

    def update(self, done: int, total: int | None) -> None:
        self.report(done, total)

    def close(self, done: int, total: int | None) -> None:
        self.report(done, total)

    def __repr__(self) -> str:
        return f"progress callable {self.report!r}"


class _TqdmSink:
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, done: int, total: int | None) -> None:
        self.bar.update(done - self.bar.n)

    def close(self, done: int, total: int | None) -> None:
        self.bar.close()

    def __repr__(self) -> str:
        return "tqdm progress bar"


class Progress:
    """The cumulative count of one map's items done, reported to its sink.

    Thread-safe. It reports in the thread that calls ``advance`` or ``end``; the
    callers in this package never do that from the manager thread.
    """

    def __init__(self, sink: _Sink, total: int | None) -> None:
        self.total = total
        self._sink = sink
        self._done = 0
        self._ended = False
        self._disabled = False
        # Reentrant: a garbage collection inside the sink may end an imap's progress.
        self._lock = threading.RLock()

    def advance(self, items: int) -> None:
        """Count ``items`` more as done and report the new total. Ignored after ``end``."""
        with self._lock:
            if self._ended or items <= 0:
                return
            self._done += items
            self._call(self._sink.update)

    def end(self) -> None:
        """The final report (the bar is closed); later calls do nothing."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._call(self._sink.close)

    def _call(self, method: Callable[[int, int | None], None]) -> None:
        if self._disabled:
            return
        try:
            method(self._done, self.total)
        except Exception:
            self._disabled = True
            logger.exception("hookpool: the %r raised; it is disabled for this map", self._sink)


def start(option: ProgressOption, total: int | None) -> Progress | None:
    """The Progress for ``progress=option``, or None when it is off.

    Raises:
        ImportError: ``option`` is True and tqdm is not installed.
        TypeError: ``option`` is neither a bool, None, nor a callable.
    """
    if option is None or option is False:
        return None
    if option is True:
        try:
            tqdm = importlib.import_module("tqdm.auto").tqdm
        except ImportError as exc:
            raise ImportError(MISSING_TQDM, name="tqdm") from exc
        return Progress(_TqdmSink(tqdm(total=total)), total)
    if not callable(option):
        raise TypeError(
            f"progress must be True, False, None or a callable(done, total), not {option!r}"
        )
    return Progress(_CallableSink(option), total)


def total_of(*iterables: Iterable[Any]) -> int | None:
    """The number of items a map over ``zip(*iterables)`` has, when all of them are sized."""
    if not iterables:
        return 0
    if not all(isinstance(iterable, Sized) for iterable in iterables):
        return None
    return min(len(iterable) for iterable in iterables)  # type: ignore[arg-type]


def report_map(
    progress: Progress,
    events: queue.SimpleQueue[tuple[int, bool]],
    sizes: list[int],
    result: Future[list[Any]],
) -> Future[list[Any]]:
    """Report a submitted map's progress from a thread of its own.

    ``events`` receives ``(chunk index, succeeded)`` as each chunk settles (see
    ``MapGather.watch``); ``sizes`` are the chunks' item counts; ``result`` is the
    future of the whole map. Returns a future that settles like ``result``, after the
    final report: a caller waiting on it sees the bar closed. A slow callback delays
    only this map's result, never the pool.
    """
    settled: Future[list[Any]] = GuardedFuture()
    settled.set_running_or_notify_cancel()

    def report() -> None:
        try:
            # Guarantee: every chunk settles (done, failed, or cancelled by terminate),
            # so this loop ends, and ``result`` settles right after.
            for _ in sizes:
                index, succeeded = events.get()
                if succeeded:
                    progress.advance(sizes[index])
        finally:
            progress.end()
            concurrent.futures.wait([result])
            _copy(result, settled)

    threading.Thread(target=report, name="hookpool-progress", daemon=True).start()
    return settled


def _copy(source: Future[list[Any]], target: Future[list[Any]]) -> None:
    """Settle ``target`` like the settled ``source`` (``gather``'s, never cancelled)."""
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
