"""Turning calls into Tasks, in the caller's thread: shared by both facades.

Everything here runs in the thread that called ``submit``/``map``/``imap``, so a pickling
error is raised at the call site and never reaches the manager thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from . import _protocol as wire
from ._manager import Engine, Task
from ._results import IMapIterator, chunked
from ._serialize import callable_name, dumps, dumps_callable

__all__ = ["IMAP_CHUNKS_PER_WORKER", "check_timeout", "chunk_tasks", "lazy_map", "submit_call"]

R = TypeVar("R")

#: How many chunks per worker a lazy map keeps submitted ahead of its consumer.
IMAP_CHUNKS_PER_WORKER = 4


def submit_call(
    manager: Engine,
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
) -> IMapIterator[Any]:
    """A map whose input is read, and pickled, as its results are consumed."""
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

    # Inline, nothing is read ahead: a chunk runs when the consumer asks for its results.
    window = 0 if manager.inline else IMAP_CHUNKS_PER_WORKER * manager.size
    return IMapIterator(chunked(iterable, chunksize), submit, window=window, ordered=ordered)


def check_timeout(timeout: float | None) -> float | None:
    """Validate a ``task_timeout``: None, or a positive number of seconds."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"task_timeout must be a positive number of seconds, not {timeout!r}")
    return timeout
