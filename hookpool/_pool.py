"""``hookpool.Pool``: the ``multiprocessing.Pool`` facade, thin over the manager."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping

from . import _protocol as wire
from ._dialect import POOL
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
from ._state import PoolState

if TYPE_CHECKING:  # at run time, imported with the first pool: see _import_engine
    from concurrent.futures import Future
    from multiprocessing.process import BaseProcess
    from typing import Any, ParamSpec, TypeVar

    from ._calls import feed_in_background, lazy_map, submit_call, submit_map
    from ._engine import Engine
    from ._imap import IMapIterator, chunked
    from ._progress import ProgressOption, total_of
    from ._reentry import GuardedFuture, check_not_from_callback
    from ._results import ApplyOutcome, AsyncResult, MapResult, outcome_of

    T = TypeVar("T")
    R = TypeVar("R")
    P = ParamSpec("P")

__all__ = ["Pool"]


class Pool:
    """A process pool with the interface of ``multiprocessing.Pool``, always on spawn.

    Args:
        processes: number of workers; default: the CPUs this process may use.
        initializer: called as ``initializer(*initargs)`` once in each worker, before its
            first task. May be a lambda or a closure.
        initargs: handed to each worker when it is spawned, so multiprocessing Locks,
            Queues, Values, Arrays, pipe connections and shared memory made from a spawn
            context pass by inheritance.
        maxtasksperchild: a worker leaves (running its finalizer) after this many tasks and
            is replaced.
        context: a spawn or forkserver context, or its name. Fork is refused.
        finalizer: called as ``finalizer(*finalargs)`` exactly once in every worker whose
            initializer ran, whenever the worker leaves in an orderly way: ``close()`` and
            ``join()``, recycling, ``terminate()`` and the ``with`` exit (within a grace
            period), garbage collection of the pool, the parent exiting or dying.
        finalargs: arguments for the finalizer, handed over like ``initargs``.
        task_timeout: seconds a task (for maps: a chunk) may run; past that its worker is
            stopped and replaced and the task fails with ``TaskTimeoutError`` (a
            ``multiprocessing.TimeoutError``). Each call can set its own ``task_timeout``.
            Unlike ``AsyncResult.get(timeout)``, which only stops waiting, this stops the
            work. Not enforced inline (a ``RuntimeWarning`` says so).
        max_memory_per_child: a worker whose resident memory is above this after a task
            leaves (running its finalizer) and is replaced, as after ``maxtasksperchild``
            tasks (whichever comes first). Bytes as an int, or a string such as
            ``"2GiB"`` or ``"500MB"``. A worker above it right after its initializer
            breaks the pool (``PoolBrokenError``). Linux only (``/proc``); ignored inline.
            See ``docs/lifecycle.md``.
        forward_logging: deliver the workers' log records and warnings to this process's
            logging handlers, tagged with the worker's name (default). Records below the
            root logger's level (when a worker starts) are not sent. ``False`` leaves
            logging in the workers as the standard library does: unconfigured. See
            ``docs/logging.md``.
        inline: run every task in the calling thread, with no worker processes, for
            debugging and tests (see ``docs/debugging.md``). The initializer runs once,
            here; the finalizer once, when the pool is closed or terminated;
            ``maxtasksperchild`` is ignored; a task's exception is the original object,
            with the task's frames. None (the default): inline if the environment
            variable ``HOOKPOOL_INLINE`` is ``1``.
        cluster: run the tasks on a dask.distributed cluster instead of local worker
            processes: a ``distributed.Client``, a cluster object (``LocalCluster``...),
            or a scheduler address (``"tcp://10.0.0.5:8786"``). None (the default): the
            environment variable ``HOOKPOOL_CLUSTER``, if set, else local workers. Needs
            ``pip install "hookpool[dask]"``. The hooks run once in every worker of the
            cluster, those that join later too. ``maxtasksperchild``,
            ``max_memory_per_child`` and ``context`` are refused there. See
            ``docs/scaling-out.md``.
        max_retries: on a cluster, how many more times a task may run when the worker
            running it dies: for tasks that are safe to run twice. 0 (the default): it
            fails with ``WorkerLostError`` and never runs twice. Above 0: dask runs it
            again on another worker, up to that many times; after that, the next
            worker death fails it. As dask counts, a worker where the task only waited
            counts too; a retired worker and a lost result do not. Refused for local
            workers. See ``docs/scaling-out.md``.

    Differences from the standard library, on purpose: workers always start with spawn;
    ``terminate()`` gives each worker a grace period to run its finalizer before killing
    it; a worker that dies fails only the task it was running (``WorkerLostError``) and is
    replaced, instead of hanging the pool; an initializer that raises breaks the pool
    (``InitializerError``) instead of respawning workers forever; ``imap`` reads its input
    lazily, a bounded number of chunks ahead of the consumer.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
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
        ctx = resolve(context)
        if processes is None:
            processes = available_cpus()
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        max_memory = check_memory_limit(max_memory_per_child)
        hooks = Hooks.validate(initializer, initargs, finalizer, finalargs)
        max_retries = check_retries(max_retries)
        self._processes = processes
        self._ctx = ctx  # the standard library's name for it, which code reads
        self._task_timeout = check_timeout(task_timeout)
        self._manager: Engine = start_engine(
            inline=inline,
            processes=processes,
            hooks=hooks,
            context=ctx,
            maxtasksperchild=maxtasksperchild,
            dialect=POOL,
            name="hookpool",
            forward_logging=forward_logging,
            max_memory=max_memory,
            cluster=cluster,
            max_retries=max_retries,
            local_only={
                "maxtasksperchild": maxtasksperchild,
                "max_memory_per_child": max_memory_per_child,
                "context": context,
            },
        )
        self._iterators: weakref.WeakSet[IMapIterator[Any]] = weakref.WeakSet()
        # Garbage collection of the pool terminates it (with the finalizer grace period),
        # as the standard library's does.
        weakref.finalize(self, self._manager.terminate)
        _import_engine()  # the facade's part of it; the manager's came with start_engine

    # -- single calls ----------------------------------------------------------------------

    def apply(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        *,
        task_timeout: float | None = None,
    ) -> R:
        """Call ``func(*args, **kwds)`` in a worker and wait for the result."""
        check_not_from_callback("Pool.apply()", self._manager)  # before its task goes
        return self.apply_async(func, args, kwds, task_timeout=task_timeout).get()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
    ) -> AsyncResult[R]:
        """Call ``func(*args, **kwds)`` in a worker; return an ``AsyncResult``.

        The function and arguments are pickled here, in the calling thread: one that
        cannot be pickled raises now, and the pool keeps working.
        """
        timeout = self._timeout(task_timeout)
        # Callbacks are attached before the task can end; the result keeps the pool alive,
        # as the standard library's does.
        outcome: ApplyOutcome[R] = ApplyOutcome(callback, error_callback)
        result = AsyncResult(outcome, owner=self, engine=self._manager)
        # Without callbacks, the thread that waits for it may read its answer itself.
        direct = outcome if callback is None and error_callback is None else None
        submit_call(
            self._manager, func, tuple(args), dict(kwds), outcome, timeout=timeout, direct=direct
        )
        return result

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Call ``fn(*args, **kwargs)`` in a worker; return a ``concurrent.futures.Future``.

        Usable with ``concurrent.futures.as_completed`` and ``wait``, and with
        ``asyncio.wrap_future``. Cancelling it while it is still queued means it never runs.
        """
        future: Future[R] = GuardedFuture(self._manager)
        submit_call(self._manager, fn, args, kwargs, future, timeout=self._task_timeout)
        future._hookpool_pool = self  # type: ignore[attr-defined]  # keeps the pool alive
        return future

    # -- maps ------------------------------------------------------------------------------

    def map(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressOption = None,
    ) -> list[R]:
        """Like the builtin ``map``, run in the workers; returns a list, in order.

        ``progress``: True for a tqdm bar, or a callable receiving ``(done, total)``
        (see [Progress](progress.md)). It has reported its end when this returns.
        """
        return self._map_async(
            func,
            iterable,
            chunksize,
            None,
            None,
            wire.CallKind.MAP,
            task_timeout,
            progress,
            waits=True,
        ).get()

    def map_async(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressOption = None,
    ) -> MapResult[R]:
        """Asynchronous ``map``: every chunk is pickled now, in the calling thread.

        With ``progress``, the result is ready (and ``callback`` runs) after the progress
        reported its end, in the map's progress thread.
        """
        return self._map_async(
            func,
            iterable,
            chunksize,
            callback,
            error_callback,
            wire.CallKind.MAP,
            task_timeout,
            progress,
        )

    def starmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressOption = None,
    ) -> list[R]:
        """Like ``map``, but each item is unpacked as the arguments: ``func(*item)``."""
        return self._map_async(
            func,
            iterable,
            chunksize,
            None,
            None,
            wire.CallKind.STARMAP,
            task_timeout,
            progress,
            waits=True,
        ).get()

    def starmap_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressOption = None,
    ) -> MapResult[R]:
        """Asynchronous ``starmap``."""
        return self._map_async(
            func,
            iterable,
            chunksize,
            callback,
            error_callback,
            wire.CallKind.STARMAP,
            task_timeout,
            progress,
        )

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        callback: Callable[[list[Any]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        kind: wire.CallKind,
        task_timeout: float | None,
        progress: ProgressOption,
        *,
        waits: bool = False,
    ) -> MapResult[Any]:
        """``waits``: for ``map`` and ``starmap``, which wait for the result: refused from
        a callback of this pool before the tasks go, unless there are none to wait for."""
        self._manager.check_running()
        items = iterable if isinstance(iterable, list | tuple) else list(iterable)
        method = "map" if kind is wire.CallKind.MAP else "starmap"
        if waits and items:
            check_not_from_callback(f"Pool.{method}()", self._manager)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            if extra:
                chunksize += 1
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        timeout = self._timeout(task_timeout)
        return submit_map(
            self._manager,
            func,
            kind,
            method,
            list(chunked(items, chunksize)),
            lambda outcome, chunks: MapResult(
                outcome, callback, error_callback, tasks=chunks, owner=self, engine=self._manager
            ),
            timeout=timeout,
            progress=progress,
            total=len(items),
        )

    def imap(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int = 1,
        *,
        task_timeout: float | None = None,
        progress: ProgressOption = None,
    ) -> IMapIterator[R]:
        """Lazy ``map``: results in order, input read a bounded number of chunks ahead.

        ``progress`` advances as the results are taken, in the consumer's thread; its
        total is ``len(iterable)`` when the input has one, else None.
        """
        return self._imap(func, iterable, chunksize, task_timeout, progress, ordered=True)

    def imap_unordered(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int = 1,
        *,
        task_timeout: float | None = None,
        progress: ProgressOption = None,
    ) -> IMapIterator[R]:
        """Like ``imap``, but results come in the order they finish."""
        return self._imap(func, iterable, chunksize, task_timeout, progress, ordered=False)

    def _imap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Any],
        chunksize: int,
        task_timeout: float | None,
        progress: ProgressOption,
        *,
        ordered: bool,
    ) -> IMapIterator[R]:
        method = "imap" if ordered else "imap_unordered"
        iterator = lazy_map(
            self._manager,
            func,
            iterable,
            chunksize,
            kind=wire.CallKind.MAP,
            method=method,
            ordered=ordered,
            timeout=self._timeout(task_timeout),
            progress=progress,
            total=total_of(iterable),
            owner=self,
        )
        self._iterators.add(iterator)
        return iterator

    def cancel(self, task: AsyncResult[Any] | Future[Any]) -> bool:
        """Cancel a task. A queued one never runs. A running one is stopped on request:
        its worker is interrupted (running its finalizer), replaced, and the task fails
        with ``concurrent.futures.CancelledError``. Returns False if it finished first
        (its result stands): for a running task it waits, boundedly, to know which.
        """
        futures = task.tasks if isinstance(task, AsyncResult) else [outcome_of(task)]
        return any([self._manager.cancel(future) for future in futures])

    def _timeout(self, task_timeout: float | None) -> float | None:
        if task_timeout is None:
            return self._task_timeout
        return check_timeout(task_timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more tasks; the workers leave (finalizers run) when the work is done.

        Open ``imap`` iterators have their remaining input submitted (from a background
        thread, as the standard library's task handler does), so that their results are
        still there after ``join()``.
        """
        if self._manager.state.accepts_tasks:
            feed_in_background(self._manager, self._iterators)
        self._manager.close()

    def terminate(self) -> None:
        """Stop now: queued tasks are cancelled, running ones fail with
        ``PoolTerminatedError``. Each worker gets a grace period
        (``TERMINATE_GRACE_SECONDS``) to run its finalizer before it is killed.
        Returns when every worker is gone (from a signal handler that interrupted this
        thread inside ``apply_async``/``submit``: at once, and the pool stops just after).
        """
        self._manager.terminate()
        self._manager.join()

    def join(self) -> None:
        """Wait for the workers to leave. Call ``close()`` or ``terminate()`` first."""
        if self._manager.state.accepts_tasks:
            raise ValueError("Pool is still running")
        self._manager.join()

    def __enter__(self) -> Pool:
        self._manager.check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Terminate the pool, as the standard library's ``Pool.__exit__`` does."""
        self.terminate()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__.split('.')[0]}.{type(self).__qualname__} "
            f"state={self._manager.state.name} pool_size={self._processes}"
            f"{' inline' if self._manager.inline else ''}>"
        )

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn: Callable[..., object] = warnings.warn) -> None:
        """A pool dropped while still running (no ``close()``/``terminate()``, no ``with``)
        gets the standard library's ``ResourceWarning``; then it is terminated, finalizers
        and all (the ``weakref.finalize`` of ``__init__``)."""
        manager: Engine | None = self.__dict__.get("_manager")  # None: __init__ failed
        if manager is not None and manager.state is PoolState.RUNNING:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    # -- introspection -----------------------------------------------------------------------

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (inline: this process, until the finalizer
        has run)."""
        return self._manager.worker_pids()

    # The standard library's private attributes that real code reads: ``_processes`` (the
    # size) and ``_ctx``, set in __init__, and this view, rebuilt at each read. A worker killed
    # through one is lost as any other (WorkerLostError for its task, then replaced).

    @property
    def _pool(self) -> list[BaseProcess]:
        """The current worker processes (a copy; none inline), as
        ``multiprocessing.Pool._pool``."""
        return self._manager.processes()


def _import_engine() -> None:
    """Import what the methods run on (the results, ``concurrent.futures``) when a pool
    is made, not with this module.

    Under spawn every worker re-imports the parent's main script, and with it the
    script's ``from hookpool import Pool``: the engine imported there (``logging`` comes
    with ``concurrent.futures``) would cost each worker some 10 ms of start-up, for code
    that only ever runs in the parent. See ``_spawn`` for the manager's part.
    """
    global GuardedFuture, check_not_from_callback, feed_in_background, lazy_map, submit_call
    global submit_map, total_of
    global ApplyOutcome, AsyncResult, IMapIterator, MapResult, chunked, outcome_of
    from ._calls import feed_in_background, lazy_map, submit_call, submit_map
    from ._imap import IMapIterator, chunked
    from ._progress import total_of
    from ._reentry import GuardedFuture, check_not_from_callback
    from ._results import ApplyOutcome, AsyncResult, MapResult, outcome_of
