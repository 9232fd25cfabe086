"""``hookpool.ProcessPoolExecutor``: the ``concurrent.futures`` facade, thin over the manager."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from multiprocessing.process import BaseProcess

from . import _protocol as wire
from ._dialect import EXECUTOR
from ._hooks import Hooks
from ._records import TYPE_CHECKING
from ._spawn import (
    available_cpus,
    check_memory_limit,
    check_not_bootstrapping,
    check_retries,
    check_timeout,
    resolve,
    start_engine,
)

if TYPE_CHECKING:  # at run time, imported with the first executor: see _import_engine
    from typing import Any, ParamSpec, TypeVar

    from ._calls import feed_in_background, lazy_map, submit_call
    from ._engine import Engine
    from ._errors import TaskTimeoutError
    from ._imap import IMapIterator
    from ._progress import ProgressOption, total_of
    from ._reentry import GuardedFuture

    R = TypeVar("R")
    P = ParamSpec("P")

__all__ = ["ProcessPoolExecutor"]


class ProcessPoolExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures`` executor on hookpool's engine, always on spawn.

    Same signature as ``concurrent.futures.ProcessPoolExecutor``, plus the keyword-only
    ``finalizer`` and ``finalargs`` (see ``hookpool.Pool`` for the hook contract), and
    ``task_timeout``: seconds a task may run before its worker is stopped and replaced and
    the task fails with ``TaskTimeoutError`` (a ``concurrent.futures.TimeoutError``);
    ``max_memory_per_child``: a worker whose resident memory is above this (bytes, or a
    string such as ``"2GiB"``) after a task is replaced, as after ``max_tasks_per_child``
    tasks (see ``hookpool.Pool``);
    ``forward_logging``: the workers' log records and warnings reach this process's logging
    handlers (default ``True``; see ``hookpool.Pool``); and ``inline``: run every task in
    the calling thread, with no worker processes, for debugging and tests (see
    ``hookpool.Pool`` and ``docs/debugging.md``); None (the default) means inline if the
    environment variable ``HOOKPOOL_INLINE`` is ``1``; ``cluster``: run the tasks on a
    dask.distributed cluster (a ``Client``, a cluster object or a scheduler address; or
    the environment variable ``HOOKPOOL_CLUSTER``), see ``hookpool.Pool`` and
    ``docs/scaling-out.md``; ``max_retries``: on a cluster, how many more times a task may
    run when the worker running it dies (default 0: never twice; see ``hookpool.Pool``).

    Differences from the standard library, on purpose: a worker that dies fails only the
    task it was running, with ``WorkerLostError`` (a ``BrokenProcessPool``, so existing
    ``except`` clauses still catch it), and is replaced: the executor keeps serving other
    tasks instead of failing every pending future. ``map`` reads its input lazily, a
    bounded number of chunks ahead of the consumer, instead of all at once.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        finalizer: Callable[..., object] | None = None,
        finalargs: Iterable[Any] = (),
        task_timeout: float | None = None,
        max_memory_per_child: int | str | None = None,
        forward_logging: bool = True,
        inline: bool | None = None,
        cluster: object = None,
        max_retries: int = 0,
    ) -> None:
        check_not_bootstrapping()
        if max_workers is None:
            max_workers = available_cpus()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        ctx = resolve(mp_context, "mp_context")
        max_memory = check_memory_limit(max_memory_per_child)
        hooks = Hooks.validate(initializer, initargs, finalizer, finalargs)
        max_retries = check_retries(max_retries)
        self._max_workers = max_workers
        self._mp_context = ctx
        self._task_timeout = check_timeout(task_timeout)
        self._manager: Engine = start_engine(
            inline=inline,
            processes=max_workers,
            on_demand=True,
            hooks=hooks,
            context=ctx,
            maxtasksperchild=max_tasks_per_child,
            dialect=EXECUTOR,
            name="hookpool-executor",
            forward_logging=forward_logging,
            max_memory=max_memory,
            cluster=cluster,
            max_retries=max_retries,
            local_only={
                "max_tasks_per_child": max_tasks_per_child,
                "max_memory_per_child": max_memory_per_child,
                "mp_context": mp_context,
            },
        )
        # Dropped without shutdown(): let the queued work finish, then release the workers
        # (each runs its finalizer), as shutdown(wait=False) would.
        weakref.finalize(self, self._manager.close)
        self._maps: weakref.WeakSet[IMapIterator[Any]] = weakref.WeakSet()
        _import_engine()  # the facade's part of it; the manager's came with start_engine

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)``; return a ``concurrent.futures.Future``.

        Raises:
            RuntimeError: after ``shutdown()``.
            hookpool.PoolBrokenError: (a ``BrokenProcessPool``) if the initializer failed.
        """
        future: Future[R] = GuardedFuture(self._manager)
        submit_call(self._manager, fn, args, kwargs, future, timeout=self._task_timeout)
        return future

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: ProgressOption = None,
    ) -> Iterator[R]:
        """Like the builtin ``map``, run in the workers; results in order, lazily.

        The input is read a bounded number of chunks ahead of the consumer: at most
        ``buffersize`` chunks submitted whose results the consumer has not taken (as
        Python 3.14's ``Executor.map``, on every Python), or, with None, a read-ahead of
        several chunks per worker. ``timeout`` counts from this call: a result not ready
        by then raises ``concurrent.futures.TimeoutError``. Closing the iterator early
        cancels the chunks still queued.

        ``progress``: True for a tqdm bar, or a callable receiving ``(done, total)``
        (see [Progress](progress.md)); it advances as results are taken, in the
        consumer's thread, and ends when the iterator ends or is closed. Its total is the
        length of the shortest input when every input has a ``len()``, else None.
        """
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        deadline = None if timeout is None else time.monotonic() + timeout
        # One input: its items as they are (fn(x)), not as 1-tuples to unpack (fn(*x)),
        # which would cost a tuple per item to build, pickle and unpickle.
        single = len(iterables) == 1
        results: IMapIterator[R] = lazy_map(
            self._manager,
            fn,
            iter(iterables[0]) if single else zip(*iterables, strict=False),  # (not iterable: now)
            chunksize,
            kind=wire.CallKind.MAP if single else wire.CallKind.STARMAP,
            method="map",
            ordered=True,
            timeout=self._task_timeout,
            progress=progress,
            total=total_of(*iterables),
            owner=self,
            window=buffersize,
            # Not refused from a callback: the error would end the generator below, and
            # its end cancels the rest of the map.
            guarded=False,
        )
        # As Python 3.14's: with a buffersize, shutdown() submits no more of the input
        # (an endless one would never end); iterating on after it raises RuntimeError.
        results.fed_on_close = buffersize is None
        self._maps.add(results)
        return _yield_until(results, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more tasks; let the queued ones run (unless ``cancel_futures``).

        With ``wait``, return once every worker has left (each runs its finalizer);
        otherwise return at once: the work still completes in the background.
        """
        if cancel_futures:
            for results in list(self._maps):
                results.cancel()
            self._manager.cancel_queued()
        elif self._manager.state.accepts_tasks:
            # The standard library submits a map's whole input at once: a loop over its
            # results may come after the `with` block. Submit what ours has not read yet.
            feed_in_background(self._manager, self._maps)
        self._manager.close()
        if wait:
            self._manager.join()

    def terminate_workers(self) -> None:
        """Stop every worker now and shut down (Python 3.14's API, on every Python): queued
        tasks are cancelled, running ones fail with ``WorkersTerminatedError`` (a
        ``BrokenProcessPool``, as in the standard library). As ``Pool.terminate()``, each
        worker gets a grace period (``TERMINATE_GRACE_SECONDS``) to run its finalizer
        before it is killed. Returns at once; ``shutdown()`` waits for the workers."""
        self._force_shutdown(kill=False)

    def kill_workers(self) -> None:
        """As ``terminate_workers()``, but with SIGKILL at once: no finalizer runs."""
        self._force_shutdown(kill=True)

    def _force_shutdown(self, *, kill: bool) -> None:
        self.shutdown(wait=False, cancel_futures=True)
        self._manager.terminate(kill=kill)

    def cancel(self, future: Future[Any]) -> bool:
        """Cancel a task. A queued one never runs. A running one is stopped on request:
        its worker is interrupted (running its finalizer), replaced, and the future fails
        with ``concurrent.futures.CancelledError``. False if it finished first (its
        result stands): for a running task it waits, boundedly, to know which.
        """
        return self._manager.cancel(future)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (inline: this process, until the finalizer
        has run)."""
        return self._manager.worker_pids()

    @property
    def _processes(self) -> dict[int, BaseProcess]:
        """The current worker processes by pid (a copy; empty inline), as the standard
        library's private attribute that real code reads. A worker killed through it is
        lost as any other (``WorkerLostError`` for its task, then replaced)."""
        return {process.pid: process for process in self._manager.processes() if process.pid}


def _yield_until(results: IMapIterator[R], deadline: float | None) -> Iterator[R]:
    """The results of an executor's map, in order; a ``concurrent.futures.TimeoutError``
    when one is not there by ``deadline`` (``time.monotonic()``). Closing the generator
    cancels the chunks still queued."""
    try:
        yield from results.items_before(deadline)  # a pop per item: no lock, no clock
    except TaskTimeoutError:
        raise  # the task ran too long (task_timeout): not our deadline
    except multiprocessing.TimeoutError:
        raise concurrent.futures.TimeoutError from None
    finally:
        results.cancel()


def _import_engine() -> None:
    """Import what the methods run on when an executor is made, not with this module: as
    ``_pool._import_engine``, for the workers that re-import the user's main script."""
    global feed_in_background, lazy_map, submit_call, TaskTimeoutError, total_of, IMapIterator
    global GuardedFuture
    from ._calls import feed_in_background, lazy_map, submit_call
    from ._errors import TaskTimeoutError
    from ._imap import IMapIterator
    from ._progress import total_of
    from ._reentry import GuardedFuture
