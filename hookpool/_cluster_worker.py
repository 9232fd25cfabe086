"""What runs inside a dask worker for a pool on a cluster (``_cluster`` is the parent side).

Data flow, in one dask worker process::

    scheduler ──> PoolPlugin.setup: the pool's PoolOnWorker (on every worker, those that
                  (the pool's WorkerPlugin)    join later too)
    scheduler ──> run_task (a dask task) ──> PoolOnWorker.initialize: the initializer,
                  once, before the pool's first task here, in the task's thread; the
                  finalizer registered with multiprocessing.util.Finalize. Then it
                  unpickles the function (once per pool) and the arguments, runs them,
                  pickles the result: a wire.Done or wire.Failed, with the log records
                  the task emitted
    scheduler ──> PoolPlugin.teardown ──> the finalizer (pool closed or terminated, worker
                  retired or closing); the process's exit runs it too, if nothing did

Each pool has its own ``PoolOnWorker`` in every worker, under its own id: two pools on one
cluster never run each other's hooks. A task of a pool is stopped (cancel, timeout,
terminate) by an exception raised in the thread that runs it (``stop``): at its next
bytecode, so a task blocked in C code (a sleep, a read) stops when that call returns.

``NoRetries`` is the scheduler side: a task of a hookpool pool whose worker dies fails
(``KilledWorker``) instead of being run again elsewhere; tasks are not assumed idempotent,
unless their pool has ``max_retries``: then dask runs them again, that many times at most.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import ctypes
import functools
import logging
import multiprocessing.util
import os
import threading
import types
import uuid
from collections.abc import Callable

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from . import _protocol as wire
from ._records import TYPE_CHECKING, NamedTuple
from ._serialize import capture, describe, dumps_data, loads, loads_data
from ._worker import _run

if TYPE_CHECKING:
    from typing import Any

    from ._hooks import Hooks

__all__ = [
    "KEY_PREFIX",
    "Abandoned",
    "NoRetries",
    "PoolPlugin",
    "TaskStopped",
    "Unconfirmed",
    "initialized_pid",
    "new_pool_id",
    "retries_of",
    "run_task",
    "stop",
    "task_key",
]

logger = logging.getLogger("hookpool")

#: Every task of a hookpool pool has a key that starts with this (``NoRetries`` looks).
KEY_PREFIX = "hookpool-"
#: In a pool id, what its ``max_retries`` follows (none: 0). The rest of the id is hex.
_RETRIES_MARK = "r"
#: The annotation ``NoRetries`` puts on a task whose worker retired while it ran there.
ABANDONED = "hookpool-abandoned-on"
#: The topic of the event ``run_task`` sends as a task starts (``NoRetries`` reads it).
STARTED = "hookpool-started"
#: A task without a timeout says it started only if it still runs after this long.
STARTED_AFTER_SECONDS = 0.005
#: The scheduler handler ``NoRetries`` adds: a task that may have waited in its worker's
#: queue is marked as running there before it starts (``_confirm_start``).
CONFIRM_HANDLER = "hookpool_confirm_start"
#: How long a task waits for the scheduler to confirm its start.
CONFIRM_SECONDS = 30.0
#: How long a task waits for its pool's plugin to reach a worker that just joined.
SETUP_WAIT_SECONDS = 60.0
#: How long a finalizer waits for a task thread to run in (see ``_in_task_thread``).
FINALIZE_WAIT_SECONDS = 5.0
#: How many finished task ids a worker remembers per pool (see ``stop``).
FINISHED_KEPT = 4096
#: The names a function of the caller's main script has as its module.
_MAIN_NAMES = frozenset({"__main__", "__mp_main__"})
#: How many of a pool's functions a worker keeps unpickled.
FUNCTIONS_KEPT = 256
#: How many pools that left a worker it remembers (see ``_gone``).
GONE_KEPT = 4096
#: As in ``_worker``: the finalizer runs before multiprocessing's own exit handlers.
_FINALIZE_PRIORITY = 10


def new_pool_id(max_retries: int) -> str:
    """An id for a pool, unique on its cluster. It carries the pool's ``max_retries``, so
    that ``NoRetries`` reads them from each task's key (``retries_of``), with no record
    of the pool on the scheduler."""
    token = uuid.uuid4().hex[:12]
    return f"{token}{_RETRIES_MARK}{max_retries}" if max_retries else token


def task_key(pool_id: str, task_id: int) -> str:
    """The dask key of a pool's task."""
    return f"{KEY_PREFIX}{pool_id}-{task_id}"


def retries_of(key: str) -> int:
    """The ``max_retries`` of the pool whose task has ``key`` (``task_key``)."""
    return _retries(key[len(KEY_PREFIX) :].rpartition("-")[0])


def _retries(pool_id: str) -> int:
    _, mark, retries = pool_id.partition(_RETRIES_MARK)
    return int(retries) if mark and retries.isdigit() else 0


class Abandoned(NamedTuple):
    """``run_task``'s answer, instead of running the task, when it was running on a
    worker that retired: dask sent it again, to this worker; it may have run there."""

    task_id: int
    worker: str


class Unconfirmed(NamedTuple):
    """``run_task``'s answer, instead of running the task, when the scheduler did not
    confirm its start (``_confirm_start``): it did not run."""

    task_id: int
    worker: str


def _confirm_start() -> bool:
    """Before a task that may have waited in this worker's queue starts: have the
    scheduler (``NoRetries``) mark it as running here, so that if this worker dies from
    now on, the task fails instead of running again elsewhere. False: the scheduler no
    longer has it processing here (released, or sent elsewhere): it must not run."""
    from distributed import get_worker
    from distributed.utils import thread_state  # type: ignore[attr-defined]

    try:
        worker, key = get_worker(), thread_state.key
    except (ValueError, AttributeError):  # not in a worker's task (a test calling it)
        return True
    confirm = getattr(worker.scheduler, CONFIRM_HANDLER)
    # Straight onto the worker's event loop: distributed.utils.sync would add a loop
    # iteration and a timer task to every start (some 60 of 400 µs, measured).
    call = asyncio.run_coroutine_threadsafe(
        confirm(key=key, worker=worker.address),
        worker.loop.asyncio_loop,  # type: ignore[attr-defined]
    )
    try:
        confirmed: bool = call.result(CONFIRM_SECONDS)
    except BaseException as exc:
        call.cancel()  # (when it has not finished)
        if isinstance(exc, Exception):  # the scheduler is out of reach: it must not run
            return False
        raise  # TaskStopped: stopped while it waited
    return confirmed


def _say_started(pool: PoolOnWorker, task_id: int, *, at_once: bool) -> None:
    """Tell the scheduler (``NoRetries``) that this task runs: ``at_once``, or if it
    still runs STARTED_AFTER_SECONDS from now. Not always at once: the event would take
    the worker's next send to the scheduler, and the task's "finished" would wait for
    the one after (some 1.5 ms more per task, measured)."""
    from distributed import get_worker
    from distributed.utils import thread_state  # type: ignore[attr-defined]

    try:
        worker, key = get_worker(), thread_state.key
    except (ValueError, AttributeError):  # not in a worker's task (a test calling it)
        return
    if at_once:
        worker.log_event(STARTED, key)
        return

    def if_still_running() -> None:
        if task_id in pool.running:
            worker.log_event(STARTED, key)

    def later() -> None:  # on the worker's event loop
        asyncio.get_running_loop().call_later(STARTED_AFTER_SECONDS, if_still_running)

    worker.loop.add_callback(later)


def _abandoned_on() -> str | None:
    """The worker this task was processing on when that worker retired, if it was."""
    from distributed import get_worker
    from distributed.utils import thread_state  # type: ignore[attr-defined]

    try:
        task = get_worker().state.tasks.get(thread_state.key)
    except (ValueError, AttributeError):  # not in a worker's task (run_task in a test)
        return None
    annotations = getattr(task, "annotations", None) or {}
    where: str | None = annotations.get(ABANDONED)
    return where


class TaskStopped(BaseException):
    """Raised in a task's thread to stop it (cancel, timeout, terminate). A
    ``BaseException``, so that a task's ``except Exception`` does not swallow it."""


class PoolOnWorker:
    """One pool's hooks and tasks in one worker process."""

    def __init__(self, pool_id: str, hooks_data: bytes, log_level: int | None) -> None:
        self.pool_id = pool_id
        #: Its tasks may run again (``new_pool_id``): they say nothing as they start.
        self.may_rerun = _retries(pool_id) > 0
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
        #: What the pool's ``__main__`` functions see as their module globals here: one
        #: namespace, as a worker that imported the caller's ``__main__`` has one module
        #: (see ``adopt``). Only this pool's functions share it.
        self.main: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.main_lock = threading.Lock()
        #: The value of each name of ``main`` as the last pickle brought it.
        self.sent: dict[str, Any] = {}
        #: The last tasks that finished here (a stop that comes after one finished must
        #: not be taken for one that came before it started).
        self.finished: collections.deque[int] = collections.deque(maxlen=FINISHED_KEPT)

    def initialize(self) -> None:
        """Run the initializer, once (the first of the pool's tasks here does; others
        that start meanwhile, in other threads, wait for it). Registers the finalizer if
        the initializer succeeds."""
        with self.init_lock:
            if self.ready.is_set():
                return
            try:
                hooks: Hooks = loads(self.hooks_data)
                hooks = hooks._replace(
                    initializer=self.adopt(hooks.initializer),
                    finalizer=self.adopt(hooks.finalizer),
                )
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

    def adopt(self, fn: Any) -> Any:
        """``fn``, a function of the caller's ``__main__`` (unpickled by value), made to
        share the pool's one ``__main__`` namespace here, with the functions it calls.

        cloudpickle gives each function it unpickles a globals dict of its own: an
        initializer that sets ``global conn`` would set it where no task looks. Locally
        every function of ``__main__`` shares the module's globals, because the worker
        imports the script; this gives a pool's hooks and tasks on a cluster the same.
        Each pickle brings the values its functions' globals had in the caller when it
        was made: they replace the ones an earlier pickle brought (a loop variable, a
        reassigned constant, a redefined function), as each by-value pickle sees its
        own locally; a value that code here assigned since (the initializer's
        ``global conn``) is kept, as a worker's own module keeps it locally.
        """
        if type(fn) is not types.FunctionType or fn.__module__ not in _MAIN_NAMES:
            return fn
        captured = fn.__globals__
        if captured is self.main:
            return fn
        with self.main_lock:
            rebound: dict[int, types.FunctionType] = {}
            top = self._rebind(fn, captured, rebound)
            for name, value in captured.items():
                if type(value) is types.FunctionType and value.__globals__ is captured:
                    value = self._rebind(value, captured, rebound)
                if name not in self.main or self.main[name] is self.sent.get(name, _NOTHING):
                    self.main[name] = self.sent[name] = value
            return top

    def _rebind(
        self, fn: types.FunctionType, captured: dict[str, Any], rebound: dict[int, Any]
    ) -> types.FunctionType:
        known = rebound.get(id(fn))
        if known is None:
            known = types.FunctionType(
                fn.__code__, self.main, fn.__name__, fn.__defaults__, fn.__closure__
            )
            known.__kwdefaults__ = fn.__kwdefaults__
            known.__qualname__ = fn.__qualname__
            known.__module__ = fn.__module__
            known.__doc__ = fn.__doc__
            known.__dict__.update(fn.__dict__)
            rebound[id(fn)] = known
        return known

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
#: The pools that left this worker process (terminated: ``stop_all``; their plugin torn
#: down), oldest first. dask may still start a task of one: one handed over just before
#: its pool was terminated reaches the worker after the pool's plugin left, its dask
#: future cancelled on the way. It is skipped at once: waiting for a plugin that never
#: comes would hold the worker's thread (and the next pools' tasks queued behind it) for
#: SETUP_WAIT_SECONDS.
_gone: dict[str, None] = {}
_pools_changed = threading.Condition()
#: (pool, task) cancelled on a worker that had not set the pool up yet (see ``stop``).
_early_cancels: set[tuple[str, int]] = set()
#: A marker: no value.
_NOTHING = object()


def _mark_gone(pool_id: str) -> None:
    """The pool's tasks that still come here are skipped (see ``_gone``)."""
    with _pools_changed:
        _gone[pool_id] = None
        while len(_gone) > GONE_KEPT:
            del _gone[next(iter(_gone))]
        _pools_changed.notify_all()


class PoolPlugin(WorkerPlugin):
    """A pool's hooks on every worker of the cluster, those that join later included."""

    def __init__(self, pool_id: str, hooks_data: bytes, log_level: int | None) -> None:
        self.pool_id = pool_id
        self.hooks_data = hooks_data
        self.log_level = log_level

    def setup(self, worker: Any) -> None:
        """The pool is known here from now on. Its initializer runs just before its first
        task here, in that task's thread (``run_task``): never on the event loop, and
        never waiting behind another pool's task."""
        with _pools_changed:
            _pools[self.pool_id] = PoolOnWorker(self.pool_id, self.hooks_data, self.log_level)
            _gone.pop(self.pool_id, None)  # set up again (dask re-adds a plugin by name)
            _pools_changed.notify_all()

    async def teardown(self, worker: Any) -> None:
        """The pool leaves this worker (closed, terminated, or the worker retires): its
        finalizer runs, if its initializer ran here."""
        with _pools_changed:
            pool = _pools.pop(self.pool_id, None)
            _mark_gone(self.pool_id)
        if pool is not None and pool.finalizer is not None:
            await _in_task_thread(worker, pool.finalize)


async def _in_task_thread(worker: Any, fn: Callable[[], None]) -> None:
    """Run ``fn`` in the worker's task threads, where the initializer ran: what it made
    for its thread (a sqlite3 connection) is closed there. If none is free within
    FINALIZE_WAIT_SECONDS (another pool's long task), or the worker is closing, it runs
    here instead; a ``Finalize`` runs once, whichever thread calls it first."""
    executor = worker.executors.get("default")
    try:
        job = asyncio.get_running_loop().run_in_executor(executor, fn)
    except RuntimeError:  # "cannot schedule new futures after shutdown": the worker closes
        fn()
        return
    try:
        await asyncio.wait_for(asyncio.shield(job), FINALIZE_WAIT_SECONDS)
    except asyncio.TimeoutError:
        fn()


def _pool(pool_id: str) -> PoolOnWorker | None:
    """This worker's state of the pool, waiting (bounded) for its plugin to arrive; None
    at once if the pool has left (``_gone``)."""
    with _pools_changed:
        _pools_changed.wait_for(lambda: pool_id in _pools or pool_id in _gone, SETUP_WAIT_SECONDS)
        return None if pool_id in _gone else _pools.get(pool_id)


def run_task(
    pool_id: str,
    task_id: int,
    kind: int,
    fn_id: int,
    fn_data: bytes,
    args: bytes,
    buffers: tuple[Any, ...],
    timed: bool = False,
    confirm: bool = False,
) -> tuple[wire.Message | Abandoned | Unconfirmed, list[wire.Log], str]:
    """The dask task of one hookpool task: its answer, the log records it emitted, and
    the worker's name for messages. ``timed``: it has a ``task_timeout``, which runs
    from its start: say at once that it started. ``confirm``: it may have waited in this
    worker's queue: the scheduler confirms its start first (``_confirm_start``)."""
    answer, records = _run_task(
        pool_id, task_id, kind, fn_id, fn_data, args, buffers, timed, confirm
    )
    return answer, records, _worker_name()


def _run_task(
    pool_id: str,
    task_id: int,
    kind: int,
    fn_id: int,
    fn_data: bytes,
    args: bytes,
    buffers: tuple[Any, ...],
    timed: bool,
    confirm: bool,
) -> tuple[wire.Message | Abandoned | Unconfirmed, list[wire.Log]]:
    abandoned_on = _abandoned_on()
    if abandoned_on is not None:
        return Abandoned(task_id, abandoned_on), []
    pool = _pool(pool_id)
    if pool is None and pool_id in _gone:  # terminated: its task came too late
        return wire.Skipped(task_id), []
    if pool is None:
        return wire.Failed(task_id, capture(_not_set_up(pool_id))), []
    pool.initialize()  # once per worker: before the pool's first task here
    if pool.init_error is not None:
        return wire.InitFailed(pool.init_error), []
    records: list[wire.Log] = []
    with pool.lock:
        if task_id in pool.cancelled:
            pool.cancelled.discard(task_id)
            return wire.Skipped(task_id), []
        if pool_id in _gone:  # terminated while this task waited for the initializer
            return wire.Skipped(task_id), []
        if _early_cancels and (pool_id, task_id) in _early_cancels:
            _early_cancels.discard((pool_id, task_id))
            return wire.Skipped(task_id), []
        pool.running[task_id] = threading.get_ident()
    answer: wire.Message | Unconfirmed
    try:  # a stop may land from here on: while it waits for its confirmation, too
        if confirm and not _confirm_start():
            answer = Unconfirmed(task_id, _worker_name())
        else:
            # (A confirmed start needs no event, nor does a task that may run again.)
            if timed or not (confirm or pool.may_rerun):
                _say_started(pool, task_id, at_once=timed)
            with _capturing(records, pool.log_level):
                answer = _answer(pool, task_id, kind, fn_id, fn_data, args, buffers)
    except TaskStopped:
        answer = wire.Interrupted(task_id)
    if _leave(pool, task_id):
        answer = wire.Interrupted(task_id)
    return answer, records


def _leave(pool: PoolOnWorker, task_id: int) -> bool:
    """The task is no longer running: no stop is aimed at it from now on, and one aimed
    at it that has not been raised yet never is. True if one was raised here."""
    stopped = False
    while True:
        try:
            with pool.lock:
                if pool.running.pop(task_id, None) is not None:
                    pool.finished.append(task_id)
                _raise_in(threading.get_ident(), None)  # drop a pending TaskStopped
            return stopped
        except TaskStopped:  # it landed before it could be dropped
            stopped = True


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
    stage = wire.Stage.FUNCTION
    try:
        fn = pool.functions.get(fn_id)
        if fn is None:
            if len(pool.functions) >= FUNCTIONS_KEPT:
                pool.functions.clear()
            fn = pool.functions[fn_id] = pool.adopt(loads(fn_data))
        stage = wire.Stage.ARGS
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
    # dask sends results with pickle protocol 4, which cannot carry a PickleBuffer: the
    # large buffers go as bytes (one copy; locally they go to the pipe as they are).
    buffers = tuple(bytes(buffer.raw()) for buffer in out_of_band)
    return wire.Done(task_id, bytes(data), buffers)


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
        if cancel:  # its plugin has not arrived yet: the task is skipped if it comes
            with _pools_changed:
                _early_cancels.add((pool_id, task_id))
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


async def stop_all(pool_id: str) -> int:
    """Stop every running task of a pool in this worker (terminate); how many. Its tasks
    that start here from now on are skipped. A coroutine function, so that
    ``client.run(..., wait=False)`` takes it."""
    _mark_gone(pool_id)
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


def _raise_in(ident: int, kind: type[BaseException] | None) -> None:
    """Raise ``kind`` in thread ``ident`` at its next bytecode (None: cancel that)."""
    exception = ctypes.py_object(kind) if kind is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), exception)


# -- asked by the parent (client.run) ------------------------------------------------------


def initialized_pid(pool_id: str) -> int | None:
    """This worker's pid, if the pool's initializer has run here and succeeded."""
    pool = _pools.get(pool_id)
    if pool is None or not pool.ready.is_set() or pool.init_error is not None:
        return None
    return os.getpid()


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
    """On the scheduler: a hookpool task is never run twice behind its pool's back.

    * Its worker dies while running it: it fails with ``KilledWorker`` at once, instead
      of running again elsewhere (dask's default, up to
      ``distributed.scheduler.allowed-failures`` times). A task that dask had only queued
      on that worker, behind others (another pool's, another client's), has not run: it
      is retried, as dask does. A task counts as running once the worker has a thread
      for it when dask sends it there, once ``run_task`` asks ``confirm_start`` (a task
      the pool sent while every thread had one of its tasks), or once ``run_task`` says
      it started (``STARTED``, an event on the worker's stream, which reaches the
      scheduler before the worker's death does unless the worker dies within
      milliseconds of the start).
    * Its worker leaves in an orderly way (retired) while it runs there, or leaves with
      its result before the pool fetched it: dask would run it again elsewhere; it is
      annotated ``ABANDONED`` instead, and ``run_task`` declines it.
    * Unless its pool has ``max_retries`` (``retries_of``): then dask runs it again, as
      it does its own tasks, but fails it once more than ``max_retries`` workers died
      holding it (dask counts those where it only waited, too), whatever
      ``allowed-failures`` says. Its worker does not ask ``confirm_start``.

    Only keys of hookpool pools are touched."""

    name = "hookpool-no-retries"
    #: Registered once per scheduler, by its first pool: the others find it there.
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Any = None
        #: Where each hookpool task is processing, or its result is: its worker, by key.
        self._on: dict[str, str | None] = {}
        #: Hookpool tasks known to have started (see ``_running``).
        self._started: set[str] = set()
        #: Tasks of pools with ``max_retries`` that have been processing: their count of
        #: dead workers has been set to fail them past that many (``_allow_retries``).
        self._counted: set[str] = set()

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        scheduler.handlers[CONFIRM_HANDLER] = self.confirm_start

    def confirm_start(self, key: str, worker: str) -> bool:
        """``_confirm_start``: the task is about to start on ``worker``; True if it is
        processing there, and from now on counts as running there."""
        task = self.scheduler.tasks.get(key)
        where = task.processing_on if task is not None else None
        if where is None or where.address != worker:
            return False
        self._on[key] = worker  # (work stealing moves a task without a transition)
        self._running(task)
        return True

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or self.scheduler is None:
            return
        task = self.scheduler.tasks.get(key)
        retries = retries_of(key)
        if retries:
            self._allow_retries(key, task, finish, retries)
            return
        if finish == "processing" and task is not None:
            where = task.processing_on
            self._on[key] = where.address if where is not None else None
            if where is None or len(where.processing) <= where.nthreads:
                self._running(task)  # a thread is free for it there: it starts now
        elif start == "processing" and finish != "memory":
            worker = self._on.pop(key, None)
            gone = worker is not None and worker not in self.scheduler.workers
            if task is not None and gone and key in self._started:
                # Its worker left in an orderly way (retired) while it ran there: dask
                # sends it to another worker, where run_task declines it. (One that was
                # only queued there never ran: dask runs it elsewhere, as it should.)
                self._abandon(task, worker or "?")
        elif start == "memory" and finish != "forgotten" and task is not None:
            # Its result was lost with its worker before the pool fetched it: dask would
            # compute it again; where it sends it, run_task declines it.
            self._abandon(task, self._on.get(key) or "?")
        if finish == "memory" and task is not None and task.who_has:
            self._on[key] = next(iter(task.who_has)).address  # where its result is
        if finish in ("forgotten", "erred"):
            self._on.pop(key, None)
        if finish in ("forgotten", "memory", "erred"):
            self._started.discard(key)

    def _allow_retries(self, key: str, task: Any, finish: str, retries: int) -> None:
        """A task of a pool with ``max_retries``: dask fails it (``KilledWorker``) once
        more workers died holding it than ``allowed-failures``; the count starts lower
        or higher, so that this happens past ``retries`` instead."""
        if finish == "processing" and task is not None and key not in self._counted:
            self._counted.add(key)  # (kept while its result may still be recomputed)
            task.suspicious = self.scheduler.allowed_failures - retries
        elif finish in ("forgotten", "erred"):
            self._counted.discard(key)

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == STARTED and self.scheduler is not None and not retries_of(msg):
            task = self.scheduler.tasks.get(msg)
            if task is not None and task.state == "processing":
                if task.processing_on is not None:
                    self._on[msg] = task.processing_on.address
                self._running(task)

    def _running(self, task: Any) -> None:
        # The scheduler fails a task once more workers died running it than this.
        task.suspicious = max(task.suspicious, self.scheduler.allowed_failures)
        self._started.add(task.key)

    def _abandon(self, task: Any, worker: str) -> None:
        task.annotations = {**(task.annotations or {}), ABANDONED: worker}
