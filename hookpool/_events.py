"""What the manager thread does when a worker speaks or leaves: its messages (answers,
log records, Ready, Retiring, Interrupted), its exit, and the stops it is sent.

``Manager`` (``_manager``) is the loop and the entry points; this is its other half,
a base class, so that each reads top-down on its own. Everything here runs on the
manager thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from concurrent.futures import CancelledError

from . import _logs, _worker
from . import _protocol as wire
from ._answers import answer, exit_text, likely_cause, reap, resolve
from ._engine import CancelRequest, Task
from ._errors import PoolTerminatedError, TaskTimeoutError
from ._memory import describe as describe_size
from ._records import TYPE_CHECKING
from ._serialize import rebuild
from ._state import PoolState
from ._workers import StopSlot, WorkerHandle, WorkerState

if TYPE_CHECKING:
    import collections
    from collections.abc import Callable
    from typing import Any

    from ._dialect import Dialect
    from ._engine import Outcome
    from ._fastpath import FastPath
    from ._poller import Poller

__all__ = ["WorkerEvents"]

logger = logging.getLogger("hookpool")

#: Seconds a worker gets, after being asked to stop, to run its finalizer before SIGKILL.
TERMINATE_GRACE_SECONDS = 5.0
#: Workers in a row that die while starting before the pool gives up (PoolBrokenError).
STARTUP_FAILURES_TO_BREAK = 3
#: After a worker process could not be started, how long before the next try.
START_AGAIN_SECONDS = 0.5
#: How long to wait for a worker's exit status once its sentinel has fired.
REAP_SECONDS = 5.0


class WorkerEvents:
    """The manager thread's handling of its workers (see the module docstring)."""

    # The Manager's state this half uses.
    _workers: list[WorkerHandle]
    _queue: collections.deque[Task]
    _state: PoolState
    _spawner: Any
    _scratch: bytearray
    _max_memory: int | None
    _startup_failures: int
    _start_again_at: float | None
    _kill_on_stop: bool
    dialect: Dialect
    maxtasks: int | None
    fastpath: FastPath
    poller: Poller
    _become: Callable[..., bool]

    # -- messages from a worker ------------------------------------------------------------

    def _on_readable(self, worker: WorkerHandle) -> None:
        if worker.reclaimed:
            worker.reclaimed = False
            if not _poll(worker.conn):
                return  # its borrower read it all (the poller had reported it before)
        try:
            messages = worker.reader.read()
        except (EOFError, OSError):
            self._forget_conn(worker)
            return
        except Exception:  # garbage on the pipe (a process the task forked wrote to it?)
            logger.exception("hookpool: unreadable message from %s; killing it", worker.name)
            worker.lost_reason = "its pipe to the pool carried an unreadable message"
            with contextlib.suppress(OSError):
                worker.process.kill()
            self._forget_conn(worker)
            return
        for message in messages:
            self._handle(worker, message)

    def _handle(self, worker: WorkerHandle, message: wire.Message) -> None:
        kind = type(message)
        if kind is wire.Done or kind is wire.Failed or kind is wire.Skipped:
            self._on_result(worker, message)  # type: ignore[arg-type]
        elif kind is wire.Log:
            _logs.replay(worker.name, message)  # type: ignore[arg-type]
        elif kind is wire.Ready:
            worker.reported_ready = True
            if worker.state is WorkerState.STARTING:
                worker.move(WorkerState.IDLE)
            self._startup_failures = 0
        elif kind is wire.Interrupted:
            self._on_interrupted(worker, message.task_id)  # type: ignore[union-attr]
        elif kind is wire.InitFailed:
            self._on_init_failed(worker, message)  # type: ignore[arg-type]
        elif kind is wire.Retiring:
            self._on_retiring(worker, message.rss)  # type: ignore[union-attr]
        elif kind is wire.FinalizerFailed:
            assert isinstance(message, wire.FinalizerFailed)
            logger.error(
                "hookpool: the finalizer raised in worker %s (pid %s):\n%s",
                worker.name,
                message.pid,
                message.error.traceback_text,
            )
        else:
            raise TypeError(f"unrecognized wire message from {worker.name}: {message!r}")

    def _on_result(
        self, worker: WorkerHandle, message: wire.Done | wire.Failed | wire.Skipped
    ) -> None:
        if not worker.inflight or worker.inflight[0].task_id != message.task_id:
            if any(t.task_id == message.task_id for t in worker.inflight):
                raise RuntimeError(f"{worker.name} answered task {message.task_id} out of order")
            # A late answer for a task no longer at this worker: settled already (timed
            # out, terminated), counted by a borrower, or put back after a stop.
            return
        skipped = type(message) is wire.Skipped
        if skipped:
            task = worker.pop_head()
            worker.head_started = time.monotonic()
        else:
            task = worker.answered(time.monotonic())
        if worker.stop_target == task.task_id:  # the stop aimed at it came too late
            worker.stop_target = 0
            if not worker.stopping:
                worker.kill_at = None
        if skipped:  # a Skip, or a stop aimed at it before it started
            self._settle_stopped(worker, task)
        elif not task.future.done():
            value, error = answer(task, message, self.dialect, worker.name)  # type: ignore[arg-type]
            self._settle(task, value=value, error=error)
        elif task.cancel is not None:
            task.cancel.done.set()
        if not worker.inflight and worker.state is WorkerState.BUSY:
            worker.move(WorkerState.IDLE)
        elif (
            worker.inflight
            and worker.inflight[0].cancel is not None
            and not worker.inflight[0].future.done()
        ):
            self._stop_task(worker, worker.inflight[0])  # (see _cancel_running)
        if type(message) is wire.Failed and message.leaving:
            # SystemExit: it is on its way out; send it nothing more.
            worker.move(WorkerState.STOPPING)
            self._requeue_unstarted(worker)
        elif self.maxtasks is not None and worker.tasks_done >= self.maxtasks:
            logger.debug(
                "hookpool: worker %s (pid %s) leaves after %d tasks (maxtasksperchild)",
                worker.name,
                worker.pid,
                worker.tasks_done,
            )
            self._stop_worker(worker, signal_it=False, reason="maxtasksperchild")

    def _on_interrupted(self, worker: WorkerHandle, task_id: int) -> None:
        """A stop interrupted the task it runs; it leaves, running nothing more."""
        if not worker.stopping:
            worker.move(WorkerState.STOPPING)
            if worker.kill_at is None:
                worker.kill_at = time.monotonic() + TERMINATE_GRACE_SECONDS
        if not worker.inflight or worker.inflight[0].task_id != task_id:
            return  # settled already (terminate)
        if worker.stop_target == task_id:
            self._settle_stopped(worker, worker.pop_head())
            self._requeue_unstarted(worker)
            return
        # A stop not aimed at it (one from outside): its exit settles it, as a worker
        # lost; the tasks behind it never started.
        head = worker.pop_head()
        self._requeue_unstarted(worker)
        worker.push(head)

    def _on_init_failed(self, worker: WorkerHandle, message: wire.InitFailed) -> None:
        cause = rebuild(message.error, self.dialect.remote_traceback)
        from ._std_errors import InitializerError

        if message.unpickling:
            what = "the hooks (initializer, finalizer, their arguments) would not unpickle"
            advice = (
                "each hook must be importable by name in the workers, or travel by value "
                "(a lambda, a closure, a function of the script)"
            )
        else:
            what = "the initializer raised"
            advice = "fix the initializer, or catch the error inside it"
        error = InitializerError(
            f"{what} in worker {worker.name} (pid {worker.pid}): "
            f"{message.error.type_name}: {message.error.message}. hookpool does not "
            f"restart workers whose initializer fails; {advice}"
        )
        error.__cause__ = cause
        worker.move(WorkerState.STOPPING)
        self._become(PoolState.BROKEN, error)

    def _on_retiring(self, worker: WorkerHandle, rss: int) -> None:
        """The worker's resident memory is above ``max_memory_per_child`` (``rss`` bytes,
        measured by itself). It runs nothing more: what it was sent goes back to the
        queue, and it is stopped as maxtasksperchild stops a worker. Right after its
        initializer, every replacement would be as big: the pool breaks instead of
        restarting workers in a loop."""
        limit = self._max_memory
        assert limit is not None
        if not worker.reported_ready:
            from ._std_errors import PoolBrokenError

            worker.move(WorkerState.STOPPING)
            self._become(
                PoolState.BROKEN,
                PoolBrokenError(
                    f"worker {worker.name} (pid {worker.pid}) uses {describe_size(rss)} "
                    f"({rss} bytes) of resident memory right after its initializer, above "
                    f"max_memory_per_child={describe_size(limit)} ({limit} bytes): every "
                    f"worker would be retired before its first task, so hookpool does not "
                    f"start another. Set max_memory_per_child above what a worker needs "
                    f"once initialized, plus what its tasks may keep; or None"
                ),
            )
            return
        logger.info(
            "hookpool: worker %s (pid %s) leaves after %d tasks: its resident memory, %s, "
            "is above max_memory_per_child (%s); a new worker replaces it",
            worker.name,
            worker.pid,
            worker.tasks_done,
            describe_size(rss),
            describe_size(limit),
        )
        self._requeue_unstarted(worker)
        self._stop_worker(worker, signal_it=False, reason="max_memory_per_child")

    # -- settling --------------------------------------------------------------------------

    def _settle(
        self,
        task: Task,
        *,
        value: Any = None,
        error: BaseException | None = None,
        cancelled: bool = False,
    ) -> None:
        """Settle ``task`` (if it is not already), and tell a cancel() waiting on it how."""
        resolve(task.future, value=value, error=error)
        request = task.cancel
        if request is not None:
            request.cancelled = cancelled
            request.done.set()

    def _settle_stopped(self, worker: WorkerHandle, task: Task) -> None:
        """Settle a task that a stop aimed at it (or a Skip) ended: cancelled, or timed
        out."""
        if task.cancel is not None:
            self._settle(task, error=CancelledError(), cancelled=True)
        elif task.timed_out:
            self._settle(
                task,
                error=TaskTimeoutError(
                    f"{task.describe()} ran longer than its timeout of {task.timeout} s in "
                    f"worker {worker.name} (pid {worker.pid}); the worker was stopped and "
                    f"will be replaced"
                ),
            )
        else:  # skipped after a cancel settled it already
            self._settle(task, error=CancelledError(), cancelled=True)

    def _cancel_running(self, future: Outcome, request: CancelRequest) -> None:
        for task in self._queue:  # put back after its worker was lost: it never started
            if task.future is future:
                self._queue.remove(task)
                task.cancel = request
                self._settle(task, error=CancelledError(), cancelled=True)
                return
        for worker in self._workers:
            for position, task in enumerate(worker.inflight):
                if task.future is future:
                    task.cancel = request
                    if position == 0:
                        self._stop_task(worker, task)
                        return
                    # Queued behind the running task, in the worker's pipe: the worker
                    # reads what was sent to it before it starts each task, so it skips
                    # this one, unless it has already moved on to it. If nothing has come
                    # from it since the Skip was written, it has not: the Skip will be
                    # read in time, and the task is cancelled now. Else it is settled
                    # once the worker says (Skipped, Interrupted or its answer), and a
                    # stop is aimed at it as it comes to the head (_on_result).
                    try:
                        wire.send(worker.conn, [wire.Skip(task.task_id)])
                    except OSError:
                        return  # it is leaving: the task is settled with its exit
                    if worker.reader.between_frames and not _poll(worker.conn):
                        self._settle(task, error=CancelledError(), cancelled=True)
                    return
        request.done.set()  # it finished meanwhile: not cancelled

    # -- worker processes ------------------------------------------------------------------

    def _start_worker(self) -> WorkerHandle:
        started = self._spawner.start()
        try:
            return self._adopt(started)
        except BaseException:  # (no descriptor to spare for its nudge, say)
            started.process.kill()  # a worker nobody owns must not run on
            started.process.join(REAP_SECONDS)
            raise

    def _adopt(self, started: Any) -> WorkerHandle:
        """Own a started worker; if that fails, its descriptors are closed and nothing
        of it is kept (``_start_worker`` then kills it)."""
        name, process, conn, stop_fd = started
        assert process.pid is not None
        worker = WorkerHandle(
            name=name,
            process=process,
            conn=conn,
            pid=process.pid,
            reader=wire.FrameReader(conn, self._scratch),
            slot=StopSlot(stop_fd),
        )
        watched: list[int] = []
        try:
            if self.fastpath.enabled:
                worker.nudge = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                worker.socket = socket.socket(fileno=os.dup(conn.fileno()))
            self.poller.register(conn.fileno(), (self._on_readable, worker))
            watched.append(conn.fileno())
            self.poller.register(process.sentinel, (self._on_exit, worker))
        except BaseException:
            for fd in watched:
                self.poller.unregister(fd)
            worker.close()
            raise
        self._workers.append(worker)
        return worker

    def _stop_worker(self, worker: WorkerHandle, *, signal_it: bool, reason: str = "") -> None:
        """Ask a worker to leave: Stop when idle, SIGTERM when it must stop now. ``reason``:
        why, for a Stop (``WorkerInfo.leaving``: ``close``, ``maxtasksperchild``,
        ``max_memory_per_child``); a worker that gets SIGTERM knows it was ``stopped``."""
        if worker.exited or (worker.stopping and (not signal_it or worker.kill_at is not None)):
            return
        worker.move(WorkerState.STOPPING)
        if signal_it and self._kill_on_stop:
            with contextlib.suppress(OSError):
                worker.process.kill()
        elif signal_it:
            # Interrupted: it gets a bounded grace period for its finalizer. A worker asked
            # to leave in an orderly way (close, recycling) finishes its finalizer, however
            # long it takes, as the standard library's join() waits for its workers.
            if worker.kill_at is None:
                worker.kill_at = time.monotonic() + TERMINATE_GRACE_SECONDS
            with contextlib.suppress(OSError):
                worker.process.terminate()
        elif not worker.conn_closed:
            try:
                wire.send(worker.conn, [wire.Stop(reason)])
            except OSError:
                self._forget_conn(worker)

    def _stop_task(self, worker: WorkerHandle, task: Task) -> None:
        """Stop ``task``, which ``worker`` runs (or is about to, or has just finished),
        with a stop aimed at it (``_worker.STOP_SIGNAL``). The worker answers Interrupted
        (and leaves) or Skipped, or had finished it (its answer stands): the task is
        settled once that is known."""
        if worker.stop_target or worker.stopping:
            return  # a stop is on its way already
        worker.stop_target = task.task_id
        worker.slot.aim(task.task_id)
        worker.kill_at = time.monotonic() + TERMINATE_GRACE_SECONDS
        with contextlib.suppress(OSError):
            os.kill(worker.pid, _worker.STOP_SIGNAL)

    def _on_exit(self, worker: WorkerHandle) -> None:
        # Results it sent before leaving still count. (poll: a process it forked may hold
        # the other end open, so do not wait for EOF.)
        while not worker.conn_closed and _poll(worker.conn):
            self._on_readable(worker)
        self._forget_conn(worker)
        stopping = worker.stopping
        worker.move(WorkerState.EXITED)
        worker.slot.close()
        self.poller.unregister(worker.process.sentinel)
        reap(worker.process, REAP_SECONDS)
        exitcode = worker.process.exitcode
        # Not process.close(): the user may hold it (Pool._pool) and read its exitcode
        # or join() it; its fds are released with the object.
        self._workers.remove(worker)
        if worker.inflight:
            lost = worker.pop_head()
            if worker.stop_target == lost.task_id:
                self._settle_stopped(worker, lost)
            else:
                self._settle(lost, error=self._lost_error(worker, lost, exitcode))
        self._requeue_unstarted(worker)
        if worker.reported_ready or stopping or worker.condemned or self._state.is_final:
            return
        # It died while starting. Once may be bad luck (an OOM kill): start another. Again
        # and again is a bug in the set-up, and respawning forever would hide it.
        self._startup_failures += 1
        if self._startup_failures >= STARTUP_FAILURES_TO_BREAK:
            from ._std_errors import PoolBrokenError

            self._become(
                PoolState.BROKEN,
                PoolBrokenError(
                    f"{STARTUP_FAILURES_TO_BREAK} workers in a row died while starting; the "
                    f"last, {worker.name} (pid {worker.pid}), {exit_text(exitcode)} before "
                    f"its initializer finished. Their stderr says why. A "
                    f"common cause is a script that creates a pool at import time: put that "
                    f'code under `if __name__ == "__main__":`.'
                ),
            )

    def _lost_error(self, worker: WorkerHandle, task: Task, exitcode: int | None) -> BaseException:
        if self._state is PoolState.TERMINATING and (
            worker.kill_at is not None or self._kill_on_stop
        ):
            return self.dialect.terminated_error()
        cause = likely_cause(exitcode) if worker.lost_reason is None else f" ({worker.lost_reason})"
        what = (
            f"worker {worker.name} (pid {worker.pid}) {exit_text(exitcode)} while running "
            f"{task.describe()}{cause}."
        )
        try:
            from ._std_errors import WorkerLostError
        except Exception:  # the interpreter is exiting: too late to import (see _std_errors)
            return PoolTerminatedError(f"{what} The interpreter is exiting.")
        return WorkerLostError(
            f"{what} The worker was replaced; other tasks are not affected.",
            pid=worker.pid,
            exitcode=exitcode,
        )

    def _requeue_unstarted(self, worker: WorkerHandle) -> None:
        """Put back the tasks still queued at a worker that leaves (they never started).
        One cancelled while queued there never runs: it is settled as cancelled."""
        while worker.inflight:
            task = worker.pop_tail()
            if task.cancel is not None:
                self._settle(task, error=CancelledError(), cancelled=True)
            elif not task.future.done():
                self._queue.appendleft(task)

    def _forget_conn(self, worker: WorkerHandle) -> None:
        if not worker.conn_closed:
            self.poller.unregister(worker.conn.fileno())
            worker.close()

    # -- deadlines -----------------------------------------------------------------------

    def _seconds_to_next_deadline(self) -> float | None:
        deadline = self._start_again_at
        for worker in self._workers:
            for when in (worker.kill_at, _task_deadline(worker)):
                if when is not None and (deadline is None or when < deadline):
                    deadline = when
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if self._start_again_at is not None and now >= self._start_again_at:
            self._start_again_at = None  # _advance starts the workers still wanted
        for worker in self._workers:
            if worker.kill_at is not None and now >= worker.kill_at:
                with contextlib.suppress(OSError):
                    worker.process.kill()
                worker.kill_at = None  # its sentinel will fire
            deadline = _task_deadline(worker)
            if deadline is not None and now >= deadline:
                task = worker.inflight[0]
                task.timed_out = True
                self._stop_task(worker, task)


def _poll(conn: wire.PipeEnd) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False


def _task_deadline(worker: WorkerHandle) -> float | None:
    if worker.inflight and not worker.stopping and not worker.stop_target:
        timeout = worker.inflight[0].timeout
        if timeout is not None:
            return worker.head_started + timeout
    return None
