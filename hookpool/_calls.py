"""Turning calls into Tasks, in the caller's thread: shared by both facades.

Everything here runs in the thread that called ``submit``/``map``/``imap``: a task is
pickled there, never on the manager thread. A pickling error goes where the standard
library puts it: into the task's result (``get()``/``result()`` raise it,
``error_callback`` receives it, on the manager thread), not out of the call, so that a
loop submitting many items collects each failure with its item.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, InvalidStateError

from . import _protocol as wire
from ._engine import Task
from ._imap import IMapIterator, chunked
from ._progress import report_map, start
from ._records import TYPE_CHECKING
from ._results import ChunkSlot, MapGather
from ._serialize import callable_name, dumps_callable, dumps_data

if TYPE_CHECKING:
    from typing import Any, TypeVar

    from ._engine import DirectOutcome, Engine, Outcome
    from ._progress import ProgressOption

    R = TypeVar("R")

__all__ = [
    "IMAP_CHUNKS_PER_WORKER",
    "IMAP_ITEMS_PER_WORKER",
    "feed_in_background",
    "imap_window",
    "lazy_map",
    "submit_call",
    "submit_map",
]

logger = logging.getLogger("hookpool")

#: What pickling a task may raise that fails the task instead of the call: anything but a
#: KeyboardInterrupt (the caller's own Ctrl-C). A ``__reduce__`` that calls ``sys.exit``
#: fails its task, as it would in the standard library's feeder thread, not the program.
PICKLING_ERRORS = (Exception, SystemExit)


#: A lazy map keeps this many chunks per worker submitted ahead of its consumer...
IMAP_CHUNKS_PER_WORKER = 4
#: ...and, for small chunks, enough of them to hold this many items per worker: with
#: ``chunksize=1`` (the executor's default) four tasks per worker would leave the
#: workers waiting on round trips.
IMAP_ITEMS_PER_WORKER = 64


def imap_window(workers: int, chunksize: int) -> int:
    """How many chunks a lazy map keeps submitted and not yet consumed."""
    chunks_for_items = -(-IMAP_ITEMS_PER_WORKER // chunksize)  # ceiling division
    return workers * max(IMAP_CHUNKS_PER_WORKER, chunks_for_items)


def submit_call(
    manager: Engine,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    outcome: Outcome,
    *,
    timeout: float | None = None,
    direct: DirectOutcome | None = None,
) -> None:
    """Queue ``fn(*args, **kwargs)``, to settle ``outcome`` (a Future, or the lighter
    ApplyOutcome; ``direct``: the same, if the thread waiting for it may read its answer
    itself): attach callbacks to it first, since the task may finish before this
    returns. If ``fn`` or an argument cannot be pickled, nothing is queued: ``outcome``
    fails with that error on the manager thread, where its callbacks run for any other
    outcome (a caller holding a lock its error callback takes must not deadlock)."""
    manager.check_running()
    try:
        fn_data = dumps_callable(fn, remote=manager.remote)
        args_data, buffers = dumps_data((args, kwargs), remote=manager.remote)
    except PICKLING_ERRORS as exc:
        manager.call_soon(functools.partial(_fail, outcome, exc))
        return
    name = callable_name(fn)
    task = Task(
        wire.CallKind.APPLY, fn_data, args_data, outcome, name, None, timeout, buffers, direct
    )
    manager.submit(task)


def submit_map(
    manager: Engine,
    fn: Callable[..., Any],
    kind: wire.CallKind,
    method: str,
    chunks: list[list[Any]],
    wrap: Callable[[Future[list[Any]], list[ChunkSlot]], R],
    *,
    timeout: float | None = None,
    progress: ProgressOption = None,
    total: int = 0,
) -> R:
    """Queue a map: one Task per chunk, all settling one MapGather, ``fn`` pickled once
    for all. ``wrap`` gets the future of the whole map, and the chunks' slots, before it
    can end (so callbacks it attaches never miss the end); its return value is returned.
    With ``progress``, that future settles after the progress's final report.

    With more chunks than workers, the first ones, one per worker, are queued as soon as
    they are pickled: the workers start on them while the rest is pickled, as the
    standard library's task handler overlaps the two. The map cannot end before the rest
    is queued, after ``wrap``. If the function or a chunk will not pickle, the map fails
    with that error (see ``_chunk_tasks``), as the standard library's does.
    """
    gather = MapGather([len(chunk) for chunk in chunks], manager)
    tasks = _chunk_tasks(manager, fn, kind, method, chunks, gather, timeout)
    tracker = start(progress, total)
    watched = None if tracker is None else (tracker, gather.watch())
    early = len(chunks) > manager.size
    held = False
    try:
        if early:
            # The pool keeps its workers, and takes the rest, if close() comes meanwhile
            # (the map was accepted: it runs whole, as the standard library's would).
            manager.hold()
            held = True
            manager.submit_many(list(itertools.islice(tasks, manager.size)))
        rest = list(tasks)
        if watched is None:
            outcome = gather.future
        else:
            outcome = report_map(*watched, [len(chunk) for chunk in chunks], gather.future)
        result = wrap(outcome, gather.slots)
        if rest:
            manager.submit_many(rest, while_closing=early)
    except BaseException:
        for slot in gather.slots:  # settle every chunk not started, so that a progress
            slot.cancel()  # thread waiting on them ends
        if tracker is not None:
            tracker.end()
        raise
    finally:
        if held:
            manager.release()
    return result


def _chunk_tasks(
    manager: Engine,
    fn: Callable[..., Any],
    kind: wire.CallKind,
    method: str,
    chunks: list[list[Any]],
    gather: MapGather,
    timeout: float | None,
) -> Iterator[Task]:
    """The Tasks of a map's chunks, each pickled as it is taken.

    If the function or a chunk will not pickle, that chunk fails with the error and the
    chunks after it are cancelled (never sent), so the map fails with it, on the manager
    thread (see ``submit_call``); chunks already queued run on, their results unseen.
    """
    try:
        fn_data = dumps_callable(fn, remote=manager.remote)
    except PICKLING_ERRORS as exc:
        manager.call_soon(functools.partial(_fail_from, gather, 0, exc))
        return
    name = callable_name(fn)
    first = 0
    for index, (chunk, slot) in enumerate(zip(chunks, gather.slots, strict=True)):
        try:
            args, buffers = dumps_data(chunk, remote=manager.remote)
        except PICKLING_ERRORS as exc:
            manager.call_soon(functools.partial(_fail_from, gather, index, exc))
            return
        yield Task(kind, fn_data, args, slot, name, (first, len(chunk), method), timeout, buffers)
        first += len(chunk)


def _fail(outcome: Outcome, error: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
        outcome.set_exception(error)


def _fail_from(gather: MapGather, index: int, error: BaseException) -> None:
    """Fail chunk ``index`` of a map with ``error``; cancel the chunks after it."""
    if index >= len(gather.slots):
        return  # an empty map: nothing to fail, as nothing would have been pickled
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
        gather.slots[index].set_exception(error)
    for slot in gather.slots[index + 1 :]:
        slot.cancel()


def lazy_map(
    manager: Engine,
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    chunksize: int,
    *,
    kind: wire.CallKind,
    method: str,
    ordered: bool,
    timeout: float | None = None,
    progress: ProgressOption = None,
    total: int | None = None,
    owner: object = None,
    window: int | None = None,
    guarded: bool = True,
) -> IMapIterator[Any]:
    """A map whose input is read, and pickled, as its results are consumed.

    ``total`` is the number of items the input has, when known (for ``progress``);
    ``owner``, the facade, is kept alive by the iterator, as the standard library's
    iterators keep their pool; ``window``, the chunks submitted ahead of the consumer
    (default ``imap_window``; inline, none); ``guarded``: a wait for its next result
    from a callback of the same pool raises ``ReentrantCallError`` (see
    ``check_may_block``).
    """
    manager.check_running()
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
    # A function that will not pickle fails every chunk's results, as the standard
    # library's do, not the call.
    fn_error: BaseException | None = None
    try:
        fn_data = dumps_callable(fn, remote=manager.remote)
    except PICKLING_ERRORS as exc:
        fn_data, fn_error = b"", exc
    name = callable_name(fn)
    position = 0

    def submit(chunks: list[list[Any]]) -> list[Future[list[Any]]]:
        nonlocal position
        tasks = []
        futures: list[Future[list[Any]]] = []
        for chunk in chunks:
            future: Future[list[Any]] = Future()
            futures.append(future)
            items = (position, len(chunk), method)
            position += len(chunk)
            if fn_error is not None:
                future.set_exception(fn_error)
                continue
            try:
                args, buffers = dumps_data(chunk, remote=manager.remote)
            except PICKLING_ERRORS as exc:  # fails this chunk's results, not the pool
                future.set_exception(exc)
                continue
            tasks.append(Task(kind, fn_data, args, future, name, items, timeout, buffers))
        if tasks:
            manager.submit_many(tasks, while_closing=True)
        return futures

    # Inline, nothing is read ahead: a chunk runs when the consumer asks for its results.
    if manager.inline:
        window = 0
    elif window is None:
        window = imap_window(manager.size, chunksize)
    return IMapIterator(
        chunked(iterable, chunksize),
        submit,
        window=window,
        ordered=ordered,
        progress=start(progress, total),
        owner=owner,
        engine=manager if guarded else None,
    )


def feed_in_background(manager: Engine, iterators: Iterable[IMapIterator[Any]]) -> None:
    """On close/shutdown, submit what open lazy maps have not read yet, each from its own
    thread, so that their results still come (``close()`` then ``join()`` before reading,
    or a ``with`` block that ends before the loop over ``executor.map``). The manager
    keeps its workers until every feeder is done. Call before ``manager.close()``."""
    for iterator in list(iterators):
        if iterator.exhausted or not iterator.fed_on_close:
            continue
        manager.hold()
        threading.Thread(
            target=_feed, args=(manager, iterator), name="hookpool-feeder", daemon=True
        ).start()


def _feed(manager: Engine, iterator: IMapIterator[Any]) -> None:
    try:
        iterator.feed_rest()
    except Exception:  # the pool was terminated meanwhile: nothing more to submit
        logger.debug("hookpool: a lazy map's input was not fully submitted", exc_info=True)
        iterator.cancel()
    finally:
        manager.release()
