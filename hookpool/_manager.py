"""The manager: one thread in the parent that owns the workers and every task in flight.

Data flow (docs/design.md draws it whole)::

    caller thread                      manager thread                     worker process
    Pool / ProcessPoolExecutor
      │ pickle fn + args (_calls)
      │ Task(future) ──> Manager.submit ──> queue ──┐ (wake-up pipe)
      │                                             ▼
      │                                 Poller over: wake-up pipe, each
      │                                 worker's pipe and process sentinel
      │                                             │ _dispatch: Call ─────────> _worker
      │                                             │ <──────────── Log ────────┤ runs fn
      │                                             │ <─── Done / Failed ───────┘
      │                                             │ _logs.replay; settle the future
      │ <── AsyncResult / Future / IMapIterator ────┘
    result (or the worker's exception, with the worker's frames)

Thread-safe entry points (``submit``, ``close``, ``terminate``, ``cancel``) change the
queue or the state under ``lock``, then write one byte to the wake-up pipe; everything
else happens on the manager thread. Deadlines (task timeouts, grace periods) become the
Poller's timeout. While the manager sleeps with idle workers, ``_fastpath`` lets a caller
send a task to one and read its answer itself; the manager takes them back on waking.

A worker runs its tasks one at a time, in order, so ``WorkerHandle.inflight[0]`` is the
one it runs. Short tasks are queued behind a busy worker's running one, within small
bounds of time, bytes and count (``_pick_worker``), so the pipe never fills both ways. A
stop aimed at one task (cancel, timeout) names it in the worker's ``StopSlot`` first: the
worker never stops a task it was not meant to, and the manager settles the task once it
knows how it ended (``Interrupted``, ``Skipped``, its answer, or its worker's exit).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError
from multiprocessing.process import BaseProcess

from . import _protocol as wire
from ._answers import answer, internal_error, reap
from ._engine import CancelRequest, Task, refusal
from ._errors import PoolTerminatedError
from ._events import (
    REAP_SECONDS,
    START_AGAIN_SECONDS,
    STARTUP_FAILURES_TO_BREAK,
    TERMINATE_GRACE_SECONDS,
    WorkerEvents,
)
from ._fastpath import FastPath
from ._poller import Poller
from ._records import TYPE_CHECKING
from ._reentry import counts_itself, critical, depth, engine_thread, reentered
from ._state import PoolState
from ._workers import WorkerHandle, WorkerState

if TYPE_CHECKING:
    from typing import Any, Protocol

    from ._dialect import Dialect
    from ._engine import Outcome

    class WorkerSource(Protocol):
        """Starts worker processes (``_spawn.Spawner``)."""

        pool_name: str

        def start(self) -> Any: ...


__all__ = ["Manager"]

logger = logging.getLogger("hookpool")

#: A busy worker gets more tasks queued behind its current one while they amount to less
#: than this much work at its recent pace (see Manager._pick_worker)...
PREFETCH_SECONDS = 0.002
#: ...and while the bytes and messages it has not read yet stay under these (far below
#: what a socket buffer holds, so that a send to a busy worker never blocks).
PREFETCH_BYTES = 64 * 1024
PREFETCH_TASKS = 256
#: Functions a worker keeps (sent once each, then referred to by id) before it is told to
#: forget them all and start again.
FUNCTIONS_PER_WORKER = 64
#: While workers are out in the fast path, the manager sleeps at most this long before
#: taking them back (a borrower cut short by a signal handler may not have woken it).
TAKE_BACK_SECONDS = 1.0
#: ``_std_errors`` is imported once a pool is this old and still open (``_import_errors``):
#: not while the first workers boot, nor in a short script's last moments (a pool closed
#: just after its result), on the cores its workers exit on.
IMPORT_ERRORS_AFTER_SECONDS = 0.25


class Manager(WorkerEvents):
    """Owns the worker processes and the task table; see the module docstring."""

    def __init__(
        self,
        *,
        processes: int,
        spawner: WorkerSource,
        started: list[Any],
        on_demand: bool = False,
        maxtasksperchild: int | None,
        dialect: Dialect,
        max_memory: int | None = None,
    ) -> None:
        self._size = processes
        #: How many workers the pool keeps: its size, or with ``on_demand`` (the executor,
        #: as the standard library's) as many as its tasks have needed so far, up to it.
        self._wanted = len(started) if on_demand else processes
        self._spawner = spawner
        self.maxtasks = maxtasksperchild
        self.dialect = dialect  # the errors of the facade (Pool or executor)
        self._max_memory = max_memory  # bytes (max_memory_per_child): the workers measure
        self._name = spawner.pool_name

        # Re-entrant: a signal handler in the main thread may call close() or terminate()
        # while that thread is inside submit() (see _reentry).
        self.lock = threading.RLock()
        self._state = PoolState.RUNNING
        self._broken_error: BaseException | None = None
        self._queue: collections.deque[Task] = collections.deque()
        self._task_ids = itertools.count(1)
        self._function_ids = itertools.count(1)
        self._workers: list[WorkerHandle] = []
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self._startup_failures = 0  # workers in a row that died before reporting Ready
        self._start_again_at: float | None = None  # after a start failed (see _grow)
        self._start_failing = False  # since the last start that worked (logged once)
        self._holds = 0  # lazy maps still submitting while closing (see hold())
        self._winding_down = False
        self._kill_on_stop = False  # terminate(kill=True): no grace period, no finalizers
        self._soon: collections.deque[Callable[[], None]] = collections.deque()  # call_soon
        self._thread_ended = False  # from then on, call_soon runs its callback at once

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._wake_lock = threading.RLock()  # _close_fds vs a late wake
        self.poller = Poller()
        self.poller.register(self._wake_r, None)
        self.fastpath = FastPath(self)
        self._scratch = wire.scratch_buffer()  # every worker's FrameReader reads into it

        # The first workers, started by start_engine; any missing are started here, in
        # the caller's thread.
        try:
            for worker in started:
                self._adopt(worker)
            for _ in range(self._wanted - len(started)):
                self._start_worker()
        except BaseException:
            self._kill_all()
            self._close_fds()
            raise
        self._errors_timer: threading.Timer | None = None  # see _import_errors
        self._thread = threading.Thread(target=self._run, name=f"{self._name}-manager", daemon=True)
        self._thread.start()
        _live.add(self)
        if f"{__package__}._std_errors" not in sys.modules:
            timer = threading.Timer(
                IMPORT_ERRORS_AFTER_SECONDS, _import_errors, (weakref.ref(self),)
            )
            timer.name, timer.daemon = f"{self._name}-errors", True
            with contextlib.suppress(RuntimeError):  # no thread to spare: it is optional
                timer.start()
                self._errors_timer = timer

    # -- thread-safe entry points (any thread) -------------------------------------------

    @property
    def state(self) -> PoolState:
        return self._state

    @property
    def size(self) -> int:
        return self._size

    @property
    def inline(self) -> bool:
        return False

    @property
    def remote(self) -> bool:
        return False

    def queued(self) -> bool:
        return bool(self._queue)

    @counts_itself
    def submit(self, task: Task, *, while_closing: bool = False) -> None:
        """Queue ``task``, or send it to a parked worker. Raises if the pool does not
        accept tasks.

        From a signal handler that interrupted this thread in the middle of a submit
        (or another ``@critical`` function), it queues the task: the lock is re-entrant,
        and every step here leaves the state whole. What a handler must not do there is
        wait for the result (``_reentry``)."""
        depth.value += 1
        try:
            with self.lock:
                state = self._state
                if not state.accepts(while_closing=while_closing):
                    raise self._refusal(state)
                task.task_id = next(self._task_ids)
                if not self._queue and self.fastpath.send(task):
                    return
                self._queue.append(task)
            self._wake()
        finally:
            depth.value -= 1

    @critical
    def submit_many(self, tasks: list[Task], *, while_closing: bool = False) -> None:
        """Queue several tasks at once (one lock, one wake-up); the first ones go straight
        to the parked workers, as with ``submit``."""
        with self.lock:
            state = self._state
            if not state.accepts(while_closing=while_closing):
                raise self._refusal(state)
            for task in tasks:
                task.task_id = next(self._task_ids)
            sent = 0
            while sent < len(tasks) and not self._queue and self.fastpath.send(tasks[sent]):
                sent += 1
            if sent == len(tasks):
                return
            self._queue.extend(tasks[sent:] if sent else tasks)
        self._wake()

    def check_running(self) -> None:
        state = self._state
        if state is not PoolState.RUNNING:
            raise self._refusal(state)

    @critical
    def close(self) -> None:
        """No new tasks; queued ones still run; then the workers leave."""
        self._become(PoolState.CLOSING)
        self.wake()

    @critical
    def hold(self) -> None:
        """Keep the workers while closing, until ``release()``: more tasks are coming."""
        with self.lock:
            self._holds += 1

    @critical
    def release(self) -> None:
        with self.lock:
            self._holds -= 1
        self.wake()

    def cancel(self, future: Outcome) -> bool:
        """Cancel a task. Not started: it never runs (True). Running: its worker is
        stopped, the task fails with CancelledError (True). Finished first: its result
        stands (False). Waits (boundedly) until it knows which; from the manager thread
        or a signal handler that interrupted the pool, it cannot: True means asked."""
        if future.cancel():
            return True
        if future.done():
            return False
        request = CancelRequest(threading.Event())
        self._commands.append(functools.partial(self._cancel_running, future, request))
        self.wake()
        if threading.current_thread() is self._thread or reentered():
            return True
        request.done.wait(TERMINATE_GRACE_SECONDS + REAP_SECONDS + 1.0)
        return request.cancelled

    def cancel_queued(self) -> None:
        """Cancel every task still waiting in the queue: they will never run."""
        for task in list(self._queue):
            task.future.cancel()

    @critical
    def terminate(self, *, kill: bool = False) -> None:
        """Cancel queued tasks, fail running ones, stop the workers (``kill``: with
        SIGKILL at once, no finalizer). Does not wait."""
        if kill:
            self._kill_on_stop = True  # read by the manager thread, once it wakes
        self._become(PoolState.TERMINATING)
        self.wake()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the manager thread to finish; True if it did.

        From a signal handler that interrupted this thread inside the pool's bookkeeping
        (a SIGTERM handler calling ``terminate()`` in the middle of a ``submit``), it
        returns False at once: the manager may need what the interrupted frame holds.
        The pool still stops once the handler has returned.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("cannot join the pool from one of its own callbacks")
        if reentered():
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in list(self._workers)]

    def processes(self) -> list[BaseProcess]:
        return [w.process for w in list(self._workers)]

    @critical
    def call_soon(self, callback: Callable[[], None]) -> None:
        with self.lock:
            queued = not self._thread_ended
            if queued:
                self._soon.append(callback)
        if queued:
            self.wake()
        else:
            callback()

    @critical
    def wake(self) -> None:
        """Make the manager thread look at the queue, the commands and the state.

        Callers change those first, then call this. The flag saves a system call per
        submit while a wake-up is already on its way; the manager clears it only after
        emptying the pipe, and acts on the queue after that (see _drain_wakeups).
        """
        self._wake()

    def _wake(self) -> None:
        """``wake``, for callers that count themselves in ``_reentry.depth``."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                with self._wake_lock:
                    if self._wake_w >= 0:  # not after _close_fds: the number may be reused
                        with contextlib.suppress(BlockingIOError, OSError):
                            os.write(self._wake_w, b"\0")
            except BaseException:  # a signal handler raised before the byte was written
                self._wake_pending = False
                raise

    @critical
    def condemn(self, worker: WorkerHandle, reason: str | None) -> None:
        """From any thread: send ``worker`` nothing more and have the manager stop it
        (it is dying, or its pipe cannot be trusted)."""
        worker.condemned = True
        worker.lost_reason = worker.lost_reason or reason
        self._commands.append(lambda: self._stop_worker(worker, signal_it=True))
        self.wake()

    def call_for(self, worker: WorkerHandle, task: Task) -> wire.Call:
        """The Call for ``task``, to be written to ``worker`` now (by whichever thread
        owns it): its function by id if the worker has it already."""
        fn: int | wire.FunctionDef | None = worker.functions.get(task.fn)
        if fn is None:
            forget_others = len(worker.functions) >= FUNCTIONS_PER_WORKER
            if forget_others:
                worker.functions.clear()
            fn_id = worker.functions[task.fn] = next(self._function_ids)
            fn = (fn_id, task.fn, forget_others)
        return wire.Call(task.task_id, int(task.kind), fn, wire.blob(task.args), task.buffers)

    @critical
    def _become(self, state: PoolState, error: BaseException | None = None) -> bool:
        """The one way the pool's state changes: if ``PoolState`` allows the move."""
        with self.lock:
            if not self._state.can_become(state):
                return False
            self._state = state
            if error is not None:
                self._broken_error = error
            return True

    def _refusal(self, state: PoolState) -> Exception:
        return refusal(state, self._name, self._broken_error, self.dialect)

    # -- the manager thread ----------------------------------------------------------------

    def _run(self) -> None:
        engine_thread.engine = self  # callbacks run here: they must not wait for the pool
        try:
            self._loop()
        except BaseException as exc:
            logger.exception("hookpool: internal error in the manager thread of %s", self._name)
            self._become(PoolState.BROKEN, internal_error(exc))
            self.fastpath.take_back()  # before any pipe is closed
            self._kill_all()
        finally:
            self.fastpath.take_back()
            if self._errors_timer is not None:  # no thread of the pool outlives its join()
                self._errors_timer.cancel()
                self._errors_timer.join(REAP_SECONDS)
            self._become(PoolState.STOPPED)
            self._fail_everything(self._broken_error or PoolTerminatedError("the pool stopped"))
            self._settle_unsettled()
            self._close_fds()
            with self.lock:
                self._thread_ended = True
            self._run_soon()

    def _loop(self) -> None:
        while True:
            self._advance()
            if not self._workers and self._state is not PoolState.RUNNING:
                return
            timeout = self._seconds_to_next_deadline()
            parked = self._park_idle()
            if parked:  # taken back by then at the latest (see TAKE_BACK_SECONDS)
                timeout = TAKE_BACK_SECONDS if timeout is None else min(timeout, TAKE_BACK_SECONDS)
            events = self.poller.wait(timeout)
            if parked:
                self._after_sleep()
            for data in events:
                if data is None:
                    self._drain_wakeups()
                    while self._commands:
                        self._commands.popleft()()
                    self._run_soon()
                    self._settle_unsettled()
                    continue
                handler: Callable[[WorkerHandle], None]
                worker: WorkerHandle
                handler, worker = data  # type: ignore[misc]
                if not worker.exited:  # it may have left earlier in this same batch
                    handler(worker)
            self._check_deadlines()

    def _advance(self) -> None:
        """Act on the state: dispatch, replace workers, or wind down."""
        state = self._state
        if state is PoolState.TERMINATING or state is PoolState.BROKEN:
            if not self._winding_down:
                self._winding_down = True
                reason = self._broken_error or self.dialect.terminated_error()
                self._fail_everything(reason)
                for worker in self._workers:
                    self._stop_worker(worker, signal_it=True)
            return
        # RUNNING or CLOSING
        self._dispatch()
        alive = sum(1 for w in self._workers if not w.stopping and not w.condemned)
        if state is PoolState.RUNNING or self._queue:
            if self._wanted < self._size:
                self._wanted = min(self._size, max(self._wanted, self._outstanding()))
            if alive < self._wanted:
                self._grow(alive)
        elif not self._queue and not self._holds and not any(w.inflight for w in self._workers):
            for worker in self._workers:
                if not worker.stopping:
                    self._stop_worker(worker, signal_it=False, reason="close")

    def _outstanding(self) -> int:
        """The tasks out and queued, up to the pool's size; not one cancelled while
        queued (it needs no worker: a worker that frees drops it)."""
        count = sum(len(w.inflight) for w in self._workers)
        for task in self._queue:
            if count >= self._size:
                break
            if not task.future.done():
                count += 1
        return count

    def _grow(self, alive: int) -> None:
        """Start workers until ``alive`` reaches ``_wanted`` (a replacement, or the
        executor's next worker). A start that fails (no file descriptor or memory to
        spare, say) is tried again ``START_AGAIN_SECONDS`` later while other workers run
        the tasks; with none left, the pool breaks after ``STARTUP_FAILURES_TO_BREAK``
        failures in a row, as when workers die while starting."""
        if self._start_again_at is not None:  # (cleared by _check_deadlines)
            return
        while alive < self._wanted:
            try:
                self._start_worker()
            except Exception as exc:
                self._could_not_start(exc, alive)
                return
            self._start_failing = False
            alive += 1

    def _could_not_start(self, exc: Exception, alive: int) -> None:
        if not alive:  # (counted with the workers that die while starting)
            self._startup_failures += 1
            if self._startup_failures >= STARTUP_FAILURES_TO_BREAK:
                from ._std_errors import PoolBrokenError

                error = PoolBrokenError(
                    f"the pool ({self._name}) has no worker left to run its tasks and could "
                    f"not start one: {exc!r} ({self._startup_failures} workers in a row "
                    f"failed to start)"
                )
                error.__cause__ = exc
                self._become(PoolState.BROKEN, error)
                return
        if not self._start_failing:  # (not again at every try)
            self._start_failing = True
            logger.warning(
                "hookpool: the pool %s could not start a worker process (%r); it tries again "
                "every %s s%s",
                self._name,
                exc,
                START_AGAIN_SECONDS,
                f", its {alive} other worker(s) run the tasks meanwhile" if alive else "",
            )
        self._start_again_at = time.monotonic() + START_AGAIN_SECONDS

    def _park_idle(self) -> bool:
        """Before sleeping: open the fast path over the idle workers. True if it did:
        then ``_after_sleep`` must run on waking."""
        if self._state is not PoolState.RUNNING or self._queue or not self.fastpath.enabled:
            return False
        idle = [
            w
            for w in self._workers
            if w.state is WorkerState.IDLE and w.ready and w.reader.between_frames
        ]
        return bool(idle) and self.fastpath.park(idle)

    def _after_sleep(self) -> None:
        """Take back the workers of the fast path; retire one that reached
        maxtasksperchild there; settle what a borrower left unsettled."""
        for worker in self.fastpath.take_back():
            if (
                self.maxtasks is not None
                and not worker.inflight
                and worker.tasks_done >= self.maxtasks
            ):
                self._stop_worker(worker, signal_it=False, reason="maxtasksperchild")
        self._settle_unsettled()

    def _settle_unsettled(self) -> None:
        unsettled = self.fastpath.unsettled
        while unsettled:
            task, worker_name, decoded = unsettled.popleft()
            if task.direct is not None and task.future.done():
                task.direct.complete_settling()  # a settling cut short
                continue
            assert task.answer is not None
            value, error = decoded or answer(task, task.answer, self.dialect, worker_name)
            self._settle(task, value=value, error=error)

    def _dispatch(self) -> None:
        """Move queued tasks to workers with room; one frame per worker per pass."""
        queue = self._queue
        if not queue:
            return
        outbox: dict[WorkerHandle, list[Task]] = {}
        now = time.monotonic()
        # While a worker is still starting, queue nothing behind a busy one: it will be
        # ready in a moment, and the first worker up would otherwise take everything.
        # Nor while the pool may still start workers for what is queued (an executor's,
        # see _wanted): the tasks wait for them instead of piling up behind a warm one.
        prefetch = self._wanted >= self._size and all(
            w.reported_ready or w.stopping for w in self._workers
        )
        while queue:
            worker = self._pick_worker(queue[0], now, prefetch)
            if worker is None:
                break
            task = queue.popleft()
            if not task.claimed:
                if not task.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued: it never runs
                task.claimed = True
            worker.push(task)
            worker.move(WorkerState.BUSY)
            outbox.setdefault(worker, []).append(task)
        for worker, tasks in outbox.items():
            try:
                wire.send(worker.conn, [self.call_for(worker, task) for task in tasks])
            except OSError:
                # The worker is dying and never got these tasks. Its sentinel will fire.
                for task in reversed(tasks):
                    worker.pop_tail()
                    queue.appendleft(task)
                self._stop_worker(worker, signal_it=True)

    def _pick_worker(self, task: Task, now: float, prefetch: bool) -> WorkerHandle | None:
        """The least loaded ready worker with room for ``task``, if any.

        An idle worker always has room. A busy one takes more tasks behind its current
        one (hiding the round trip, which dominates short tasks) only while: the queued
        work is worth about PREFETCH_SECONDS at its recent pace, and its current task has
        not already run longer than that (bounding how unevenly work can end up spread);
        the bytes it has not read yet stay under PREFETCH_BYTES (so a send to it can
        never block, whatever it is sending back); no task involved has a timeout (a
        timeout must only stop the task it belongs to); no stop is on its way to it; and
        it will not reach maxtasksperchild first.
        """
        best: WorkerHandle | None = None
        best_load = 0
        prefetch = prefetch and task.timeout is None
        for worker in self._workers:
            if not worker.ready:
                continue
            load = len(worker.inflight)
            if load == 0:
                return worker
            if best is not None and load >= best_load:
                continue
            if (
                prefetch
                and worker.timeouts == 0
                and not worker.stop_target
                and load < PREFETCH_TASKS
                and worker.inflight_bytes + worker.cost(task) <= PREFETCH_BYTES
                and load * worker.avg_seconds < PREFETCH_SECONDS
                and now - worker.head_started < PREFETCH_SECONDS  # not stuck on a long one
                and (self.maxtasks is None or worker.tasks_done + load < self.maxtasks)
            ):
                best, best_load = worker, load
        return best

    # -- breaking down ---------------------------------------------------------------------

    def _fail_everything(self, error: BaseException) -> None:
        """Settle every pending task: on a broken pool all fail with its error; on
        terminate the queued ones are cancelled (they never ran) and running ones fail."""
        broken = self._state is PoolState.BROKEN
        while self._queue:
            task = self._queue.popleft()
            if broken or not task.future.cancel():
                self._settle(task, error=error)
            else:
                self._settle(task, error=CancelledError(), cancelled=True)
        for worker in self._workers:
            while worker.inflight:
                self._settle(worker.pop_head(), error=error)

    def _run_soon(self) -> None:
        while self._soon:
            try:
                self._soon.popleft()()
            except Exception:  # a callback's own errors are its caller's to report
                logger.exception("hookpool: a callback raised")

    def _drain_wakeups(self) -> None:
        # Empty the pipe, then clear the flag: in the other order, a wake() between the
        # two would leave the flag set with no byte in the pipe, and every later wake()
        # would skip its write while the manager sleeps: a lost wake-up, a hang.
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass
        self._wake_pending = False

    def _kill_all(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                worker.process.kill()
            with contextlib.suppress(OSError, ValueError):
                reap(worker.process, REAP_SECONDS)
            self._forget_conn(worker)
            worker.slot.close()

    def _close_fds(self) -> None:
        self.poller.close()
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    # -- interpreter exit ------------------------------------------------------------------

    def _at_exit(self) -> None:
        if self.dialect.exit_mode == "drain":
            self.close()
        else:
            self.terminate()


# -- interpreter exit: stop every live pool, giving finalizers their grace period ---------

_live: weakref.WeakSet[Manager] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    managers = list(_live)
    for manager in managers:
        manager._at_exit()
    deadline = time.monotonic() + TERMINATE_GRACE_SECONDS + REAP_SECONDS
    for manager in managers:
        manager.join(max(0.0, deadline - time.monotonic()))


# Registered after multiprocessing.util's own exit hook, so it runs before it (LIFO).
atexit.register(_stop_all_at_exit)


def _import_errors(manager: weakref.ref[Manager]) -> None:
    """Import ``_std_errors`` (some 7 ms of CPU) if the pool is still open, so that its
    errors can still be raised as the interpreter exits: a task out then, whose worker
    dies, fails with ``WorkerLostError`` (see ``_std_errors``). From a timer thread, not
    the manager's: waking that one would take parked workers back from their callers,
    and a slow answer one of them was about to read would be unpickled there instead."""
    alive = manager()
    if alive is not None and alive.state is PoolState.RUNNING:
        with contextlib.suppress(Exception):  # too late: the interpreter is exiting
            from . import _std_errors  # noqa: F401
