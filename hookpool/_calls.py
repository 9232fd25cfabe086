"""Turning calls into Tasks, in the caller's thread: shared by both facades.

Everything here runs in the thread that called ``submit``/``map``/``imap``, so a pickling
error is raised at the call site and never reaches the manager thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from . import _protocol as wire
from ._manager import Manager, Task
from ._progress import ProgressOption, report_map, start
from ._results import IMapIterator, chunked, gather
from ._serialize import callable_name, dumps, dumps_callable

__all__ = [
    "IMAP_CHUNKS_PER_WORKER",
    "check_timeout",
    "chunk_tasks",
    "lazy_map",
    "submit_call",
    "submit_map",
]

R = TypeVar("R")

#: How many chunks per worker a lazy map keeps submitted ahead of its consumer.
IMAP_CHUNKS_PER_WORKER = 4


def submit_call(
    manager: Manager,
    fn: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    timeout: float | None = None,
) -> Future[R]:
    """Queue ``fn(*args, **kwargs)``; return its Future."""
    manager.check_running()
    future: Future[R] = Future()
    fn_data = dumps_callable(fn)
    task = Task(wire.CallKind.APPLY, fn_data, dumps((args, kwargs)), future, callable_name(fn))
    task.timeout = timeout
    manager.submit(task)
    return future


def chunk_tasks(
    fn: Callable[..., Any],
    kind: wire.CallKind,
    method: str,
    chunks: Iterable[list[Any]],
    *,
    timeout: float | None = None,
) -> list[Task]:
    """One Task per chunk; the function is pickled once for all of them."""
    fn_data = dumps_callable(fn)
    name = callable_name(fn)
    tasks = []
    first = 0
    for chunk in chunks:
        task = Task(kind, fn_data, dumps(chunk), Future(), name, items=(first, len(chunk), method))
        task.timeout = timeout
        tasks.append(task)
        first += len(chunk)
    return tasks


def submit_map(
    manager: Manager, tasks: list[Task], *, progress: ProgressOption = None, total: int = 0
) -> Future[list[Any]]:
    """Queue a map's chunk tasks (``total`` items); return one future for the whole map
    (see ``gather``). With ``progress``, it settles after the progress's final report."""
    tracker = start(progress, total)
    try:
        if tasks:
            manager.submit_many(tasks)
    except BaseException:
        if tracker is not None:
            tracker.end()
        raise
    result = gather([task.future for task in tasks])
    if tracker is None:
        return result
    return report_map(tracker, [(task.future, _items(task)) for task in tasks], result)


def _items(task: Task) -> int:
    assert task.items is not None, "not a chunk of a map"
    return task.items[1]


def lazy_map(
    manager: Manager,
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
) -> IMapIterator[Any]:
    """A map whose input is read, and pickled, as its results are consumed.

    ``total`` is the number of items the input has, when known (for ``progress``).
    """
    manager.check_running()
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
    fn_data = dumps_callable(fn)
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
            try:
                args = dumps(chunk)
            except Exception as exc:  # fails this chunk's results, not the pool
                future.set_exception(exc)
                continue
            tasks.append(Task(kind, fn_data, args, future, name, items=items, timeout=timeout))
        if tasks:
            manager.submit_many(tasks, while_closing=True)
        return futures

    return IMapIterator(
        chunked(iterable, chunksize),
        submit,
        window=IMAP_CHUNKS_PER_WORKER * manager.size,
        ordered=ordered,
        progress=start(progress, total),
    )


def check_timeout(timeout: float | None) -> float | None:
    """Validate a ``task_timeout``: None, or a positive number of seconds."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"task_timeout must be a positive number of seconds, not {timeout!r}")
    return timeout
