"""What runs inside a dask worker for a pool on a cluster (``_cluster`` is the parent side).

Data flow, in one dask worker process::

    scheduler ──> PoolPlugin.setup ──> PoolOnWorker.initialize: the initializer, in the
                  (the pool's WorkerPlugin,   thread tasks run in; the finalizer registered
                   on every worker, joiners    with multiprocessing.util.Finalize
                   too)
    scheduler ──> run_task (a dask task) ──> waits for the initializer, unpickles the
                  function (once per pool) and the arguments, runs them, pickles the
                  result: a wire.Done or wire.Failed, with the log records it emitted
    scheduler ──> PoolPlugin.teardown ──> the finalizer (pool closed or terminated, worker
                  retired or closing); the process's exit runs it too, if nothing did

Each pool has its own ``PoolOnWorker`` in every worker, under its own id: two pools on one
cluster never run each other's hooks. A task of a pool is stopped (cancel, timeout,
terminate) by an exception raised in the thread that runs it (``stop``): at its next
bytecode, so a task blocked in C code (a sleep, a read) stops when that call returns.

``NoRetries`` is the scheduler side: a task of a hookpool pool whose worker dies fails
(``KilledWorker``) instead of being run again elsewhere; tasks are not assumed idempotent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import logging
import multiprocessing.util
import os
import threading
from collections.abc import Callable

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from . import _protocol as wire
from ._records import TYPE_CHECKING
from ._serialize import capture, describe, dumps_data, loads, loads_data
from ._worker import _run

if TYPE_CHECKING:
    from typing import Any

    from ._hooks import Hooks

__all__ = [
    "KEY_PREFIX",
    "NoRetries",
    "PoolPlugin",
    "TaskStopped",
    "init_failures",
    "initialized_pid",
    "run_task",
    "stop",
]

logger = logging.getLogger("hookpool")

#: Every task of a hookpool pool has a key that starts with this (``NoRetries`` looks).
KEY_PREFIX = "hookpool-"
#: How long a task waits for its pool's plugin to reach a worker that just joined.
SETUP_WAIT_SECONDS = 60.0
#: How many finished task ids a worker remembers per pool (see ``stop``).
FINISHED_KEPT = 4096
#: As in ``_worker``: the finalizer runs before multiprocessing's own exit handlers.
_FINALIZE_PRIORITY = 10


class TaskStopped(BaseException):
    """Raised in a task's thread to stop it (cancel, timeout, terminate). A
    ``BaseException``, so that a task's ``except Exception`` does not swallow it."""


class PoolOnWorker:
    """One pool's hooks and tasks in one worker process."""

    def __init__(self, pool_id: str, hooks_data: bytes, log_level: int | None) -> None:
        self.pool_id = pool_id
        self.hooks_data = hooks_data
        self.log_level = log_level
        self.lock = threading.Lock()
        self.init_lock = threading.Lock()
        #: Set once the initializer has run (or failed).
        self.ready = threading.Event()
        self.init_error: wire.ErrorReport | None = None
        self.finalizer: multiprocessing.util.Finalize | None = None
        #: The pool's functions, unpickled once per worker, by the id the parent gave them.
        self.functions: dict[int, Callable[..., Any]] = {}
        #: Running tasks: task id -> the ident of the thread running it.
        self.running: dict[int, int] = {}
        #: Tasks the parent cancelled before they started here: skipped if they come.
        self.cancelled: set[int] = set()
        #: The last tasks that finished here (a stop that comes after one finished must
        #: not be taken for one that came before it started).
        self.finished: collections.deque[int] = collections.deque(maxlen=FINISHED_KEPT)
        self.started = 0

    def initialize(self) -> None:
        """Run the initializer, once: whichever comes first, the plugin's setup or a task
        that arrived before it, runs it; the other waits. Registers the finalizer if the
        initializer succeeds."""
        with self.init_lock:
            if self.ready.is_set():
                return
            try:
                hooks: Hooks = loads(self.hooks_data)
                hooks.initialize()
            except BaseException as exc:
                self.init_error = capture(exc, skip_frames=1)
                logger.error("hookpool: the initializer raised in pool %s", self.pool_id)
            else:
                self.finalizer = multiprocessing.util.Finalize(
                    None, _finalize, (hooks, self.pool_id), exitpriority=_FINALIZE_PRIORITY
                )
            finally:
                self.ready.set()

    def finalize(self) -> None:
        """Run the finalizer, if the initializer succeeded and it has not run yet."""
        finalizer, self.finalizer = self.finalizer, None
        if finalizer is not None:
            finalizer()  # a Finalize runs at most once, whoever calls it first


def _finalize(hooks: Hooks, pool_id: str) -> None:
    try:
        hooks.finalize()
    except Exception:
        # No pipe to the parent here: the worker's own log has it (client.get_worker_logs).
        logger.exception("hookpool: the finalizer raised in pool %s (pid %d)", pool_id, os.getpid())


#: The pools with hooks in this worker process, by id.
_pools: dict[str, PoolOnWorker] = {}
_pools_changed = threading.Condition()


class PoolPlugin(WorkerPlugin):
    """A pool's hooks on every worker of the cluster, those that join later included."""

    def __init__(self, pool_id: str, hooks_data: bytes, log_level: int | None) -> None:
        self.pool_id = pool_id
        self.hooks_data = hooks_data
        self.log_level = log_level

    async def setup(self, worker: Any) -> None:
        pool = PoolOnWorker(self.pool_id, self.hooks_data, self.log_level)
        with _pools_changed:
            _pools[self.pool_id] = pool
            _pools_changed.notify_all()
        # In the thread tasks run in (one, with one thread per worker): what the
        # initializer makes for this thread (a sqlite3 connection) is there for the tasks.
        await _in_task_thread(worker, pool.initialize)

    async def teardown(self, worker: Any) -> None:
        with _pools_changed:
            pool = _pools.pop(self.pool_id, None)
        if pool is not None:
            await _in_task_thread(worker, pool.finalize)


async def _in_task_thread(worker: Any, fn: Callable[[], None]) -> None:
    """Run ``fn`` in the worker's task thread pool; here if that is shut down already."""
    executor = worker.executors.get("default")
    try:
        await asyncio.get_running_loop().run_in_executor(executor, fn)
    except RuntimeError:  # "cannot schedule new futures after shutdown": the worker closes
        fn()


def _pool(pool_id: str) -> PoolOnWorker | None:
    """This worker's state of the pool, waiting (bounded) for its plugin to arrive."""
    with _pools_changed:
        _pools_changed.wait_for(lambda: pool_id in _pools, SETUP_WAIT_SECONDS)
        return _pools.get(pool_id)


def run_task(
    pool_id: str,
    task_id: int,
    kind: int,
    fn_id: int,
    fn_data: bytes,
    args: bytes,
    buffers: tuple[Any, ...],
) -> tuple[wire.Message, list[wire.Log], str]:
    """The dask task of one hookpool task: its answer, the log records it emitted, and
    the worker's name for messages."""
    answer, records = _run_task(pool_id, task_id, kind, fn_id, fn_data, args, buffers)
    return answer, records, _worker_name()


def _run_task(
    pool_id: str,
    task_id: int,
    kind: int,
    fn_id: int,
    fn_data: bytes,
    args: bytes,
    buffers: tuple[Any, ...],
) -> tuple[wire.Message, list[wire.Log]]:
    pool = _pool(pool_id)
    if pool is None:
        return wire.Failed(task_id, capture(_not_set_up(pool_id))), []
    pool.initialize()  # done already, unless this task came before the plugin's setup did
    if pool.init_error is not None:
        return wire.InitFailed(pool.init_error), []
    records: list[wire.Log] = []
    try:
        with pool.lock:
            if task_id in pool.cancelled:
                pool.cancelled.discard(task_id)
                return wire.Skipped(task_id), []
            pool.running[task_id] = threading.get_ident()
            pool.started += 1
        try:
            with _capturing(records, pool.log_level):
                answer = _answer(pool, task_id, kind, fn_id, fn_data, args, buffers)
        finally:
            with pool.lock:
                del pool.running[task_id]  # from here on, no stop is aimed at it
                pool.finished.append(task_id)
    except TaskStopped:
        return wire.Interrupted(task_id), records
    return answer, records


def _answer(
    pool: PoolOnWorker,
    task_id: int,
    kind: int,
    fn_id: int,
    fn_data: bytes,
    args_data: bytes,
    buffers: tuple[Any, ...],
) -> wire.Done | wire.Failed:
    """Run one task: as ``_worker._Worker._call`` does, without a pipe."""
    stage = wire.Stage.ARGS
    try:
        fn = pool.functions.get(fn_id)
        if fn is None:
            fn = pool.functions[fn_id] = loads(fn_data)
        args = loads_data(args_data, buffers)
        stage = wire.Stage.RUN
        result = _run(kind, fn, args)
        del fn, args
    except TaskStopped:
        raise
    except BaseException as exc:  # SystemExit too: it fails this task; the worker stays
        skip = 2 if stage is wire.Stage.RUN else 1  # from the function's own frame
        return wire.Failed(task_id, capture(exc, skip_frames=skip), False, stage)
    try:
        data, out_of_band = dumps_data(result, snapshot=False)
    except TaskStopped:
        raise
    except BaseException as exc:
        return wire.Failed(task_id, capture(exc), False, wire.Stage.RESULT, describe(result))
    return wire.Done(task_id, wire.blob(data), out_of_band)


@functools.cache
def _worker_name() -> str:
    """This worker, as messages name it: its address and pid."""
    from distributed import get_worker

    try:
        address = get_worker().address
    except ValueError:  # not in a worker (a test calling run_task directly)
        address = "a dask worker"
    return f"{address} (pid {os.getpid()})"


def _not_set_up(pool_id: str) -> RuntimeError:
    return RuntimeError(
        f"hookpool pool {pool_id} was never set up on this worker (its plugin did not "
        f"arrive within {SETUP_WAIT_SECONDS:.0f} s); is hookpool installed on the workers?"
    )


# -- stopping a task (run on the worker's event loop, through client.run) -----------------


def stop(pool_id: str, task_id: int, *, cancel: bool) -> str:
    """Stop one task of a pool in this worker. Returns what it found: "stopping" (it was
    running: ``TaskStopped`` is raised in its thread), "finished" (its answer is on its
    way), or "absent" (not run here; with ``cancel``, it is skipped if it comes)."""
    pool = _pools.get(pool_id)
    if pool is None:
        return "absent"
    with pool.lock:
        ident = pool.running.get(task_id)
        if ident is None and task_id in pool.finished:
            return "finished"
        if ident is None:
            if cancel:
                pool.cancelled.add(task_id)
            return "absent"
        _raise_in(ident, TaskStopped)
        return "stopping"


def stop_all(pool_id: str) -> int:
    """Stop every running task of a pool in this worker (terminate); how many."""
    pool = _pools.get(pool_id)
    if pool is None:
        return 0
    with pool.lock:
        for ident in pool.running.values():
            _raise_in(ident, TaskStopped)
        return len(pool.running)


def forget_cancelled(pool_id: str, task_ids: list[int]) -> None:
    """The parent learnt these cancelled tasks will never come: drop their marks."""
    pool = _pools.get(pool_id)
    if pool is not None:
        with pool.lock:
            pool.cancelled.difference_update(task_ids)


def _raise_in(ident: int, kind: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(kind))


# -- asked by the parent (client.run) ------------------------------------------------------


def initialized_pid(pool_id: str) -> int | None:
    """This worker's pid, if the pool's initializer has run here and succeeded."""
    pool = _pools.get(pool_id)
    if pool is None or not pool.ready.is_set() or pool.init_error is not None:
        return None
    return os.getpid()


def init_failures(pool_id: str) -> wire.ErrorReport | None:
    """The initializer's error in this worker, if it has run here and failed."""
    pool = _pools.get(pool_id)
    return None if pool is None else pool.init_error


# -- log records emitted by a task ---------------------------------------------------------


class _Capture(threading.local):
    records: list[wire.Log] | None = None
    level = logging.WARNING


_capture = _Capture()
_handler_lock = threading.Lock()
_handler: logging.Handler | None = None


class _TaskRecords(logging.Handler):
    """Keeps the records a task emits in its own thread, to travel with its answer."""

    def emit(self, record: logging.LogRecord) -> None:
        records = _capture.records
        if records is None or record.levelno < _capture.level:
            return
        from ._logs import _prepare

        try:
            records.append(_prepare(record))
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _capturing(records: list[wire.Log], level: int | None) -> Any:
    """While a task runs, the records it logs at ``level`` or above go to ``records``
    (the parent replays them into its handlers), not to the worker's own log."""
    if level is None:
        yield
        return
    _install_handler(level)
    _capture.records, _capture.level = records, level
    try:
        yield
    finally:
        _capture.records = None


def _install_handler(level: int) -> None:
    global _handler
    root = logging.getLogger()
    with _handler_lock:
        if _handler is None:
            _handler = _TaskRecords()
            root.addHandler(_handler)
        if root.level > level:
            root.setLevel(level)


# -- the scheduler side --------------------------------------------------------------------


class NoRetries(SchedulerPlugin):
    """On the scheduler: a hookpool task whose worker dies while running it fails with
    ``KilledWorker`` at once, instead of running again elsewhere (dask's default, up to
    ``distributed.scheduler.allowed-failures`` times). Only keys of hookpool pools."""

    name = "hookpool-no-retries"

    def __init__(self) -> None:
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish != "processing" or not isinstance(key, str) or not key.startswith(KEY_PREFIX):
            return
        task = self.scheduler.tasks.get(key) if self.scheduler is not None else None
        if task is not None:
            # The scheduler fails a task once more workers died running it than this.
            task.suspicious = max(task.suspicious, self.scheduler.allowed_failures)
