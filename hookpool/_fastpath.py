"""The way past the manager thread on an idle pool: a ``submit`` writes its task to an
idle worker itself, and the thread that waits for it reads the answer itself.

Waking the manager thread to send a task, then again to read its answer, costs two thread
wake-ups on the critical path of every call on an idle pool; this path costs none::

    manager thread        parks its idle workers, sleeps (still watching their pipes)
    submit (caller)       takes a PARKED worker, writes the task: DIRECT      [send]
    get() (waiting)       borrows the DIRECT worker: its pipe is muted        [read]
                          polls the pipe; peeks at the answer; counts it, then
                          consumes it; parks the worker again               [_take_answer]
                          decodes the value and settles, outside the lock    [_settle]
    manager thread        on waking, for whatever reason, takes every parked and
                          direct worker back, whoever borrows it              [take_back]

One owner at a time: each hand-over is a method here, under the engine's lock, and a
worker in the fast path is the manager's again the moment it wakes. The manager never
waits for a borrower: it takes the worker back (the state, not the thread) and nudges the
borrower's poll, which then finds it gone and waits for its outcome as usual.

What a signal handler raising at any point leaves behind:

- in ``send``, the write may be cut: the worker is stopped and replaced, and the task is
  cancelled (``submit`` raised: the caller never got it);
- in ``read``, the worker stays borrowed, its pipe muted, until the manager takes it
  back (it sleeps at most ``TAKE_BACK_SECONDS`` while any worker is out);
- in ``_take_answer``: the answer is kept, then counted, then its bytes are consumed, so
  an interrupted consume leaves a frame the manager later drops as an answer to a task no
  longer at that worker, and the task is settled from what was kept;
- in ``_settle``: the answer is kept (``Task.answer``) and the manager settles the task.

Only answers that fit in ``PEEK_BYTES`` and carry no out-of-band buffer are read here;
a larger one is left to the manager (an interrupted read of a large frame could not be
resumed by another thread).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import select
import socket
import time
from concurrent.futures import CancelledError

from . import _protocol as wire
from ._answers import ANSWERS, DECODING_IN_CALLER, answer, resolve
from ._records import TYPE_CHECKING
from ._reentry import counts_itself, critical, depth
from ._state import PoolState
from ._workers import WorkerHandle, WorkerState

if TYPE_CHECKING:
    from typing import Any

    from ._engine import Task
    from ._manager import Manager

__all__ = ["FastPath"]

#: Only tasks this small are written from a caller's thread (the engine's lock is held
#: while it writes), and only answers this small are read there.
PEEK_BYTES = 64 * 1024
#: A borrower checks this often that the worker is still lent to it, should a nudge be
#: missed (its descriptor closed and reused).
BORROW_CHECK_SECONDS = 0.5

_NOT_YET = object()  # _take_answer: nothing whole to read yet
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # (an int: IntFlag's | costs a call)


class FastPath:
    """The parked and direct workers of one Manager, while its thread sleeps."""

    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._lock = manager.lock
        self._poller = manager.poller
        self.enabled = manager.poller.can_mute
        #: What a borrower peeks at (under the lock: one at a time).
        self._peeked = memoryview(bytearray(PEEK_BYTES))
        #: The manager thread sleeps with workers parked: the fast path is open.
        self.sleeping = False
        self._parked: list[WorkerHandle] = []
        #: Every worker parked for this sleep, parked or direct now.
        self._out: list[WorkerHandle] = []
        #: Answers a borrower read but did not settle (interrupted, or the outcome grew
        #: callbacks): ``(task, worker name, (value, error) if decoded)``. The manager
        #: settles them.
        self.unsettled: collections.deque[
            tuple[Task, str, tuple[Any, BaseException | None] | None]
        ] = collections.deque()

    # -- the manager thread, before and after it sleeps ----------------------------------

    def park(self, idle: list[WorkerHandle]) -> bool:
        """Open the fast path over ``idle`` workers, before sleeping. False if a task was
        queued meanwhile (dispatch it first)."""
        with self._lock:
            if self._manager.queued():
                return False
            for worker in idle:
                worker.move(WorkerState.PARKED)
            self._parked = list(idle)
            self._out = list(idle)
            self.sleeping = True
            return True

    def take_back(self) -> list[WorkerHandle]:
        """On waking: every worker parked for the sleep is the manager's again, whoever
        borrows it (a borrower polling is nudged). Returns them."""
        with self._lock:
            self.sleeping = False
            self._parked = []
            out, self._out = self._out, []
            for worker in out:
                if worker.borrower is not None:  # (a borrower unmutes before it lets go)
                    self._poller.unmute(worker.conn.fileno())
                    worker.borrower = None
                    _nudge(worker)
                if worker.state is WorkerState.PARKED or worker.state is WorkerState.DIRECT:
                    worker.move(WorkerState.BUSY if worker.inflight else WorkerState.IDLE)
        return out

    # -- a caller's thread: submit ------------------------------------------------------

    def send(self, task: Task) -> bool:
        """Under the lock, in ``submit``: write ``task`` to a parked worker. False if it
        must go through the queue (no parked worker; a timeout, which the manager must
        watch; too large to write under the lock; the worker is dying)."""
        if not self._parked or task.timeout is not None:
            return False
        if task.wire_size + len(task.fn) > PEEK_BYTES:
            return False
        if not task.future.set_running_or_notify_cancel():
            return True  # cancelled already: it never runs
        task.claimed = True
        worker = self._parked.pop()  # (still in _out: taken back whatever happens next)
        try:
            worker.move(WorkerState.DIRECT)
            worker.push(task)
            wire.send(worker.conn, [self._manager.call_for(worker, task)])
        except OSError:  # it is dying: the task goes to the queue, for another worker
            worker.pop_tail()
            self._manager.condemn(worker, None)
            return False
        except BaseException:
            # A signal handler raised on the way, possibly in the middle of the write: the
            # pipe may hold part of a frame, so the worker is stopped and replaced. The
            # exception goes on out of submit(): the caller never gets this task.
            if task in worker.inflight:
                worker.pop_tail()
            self._manager.condemn(worker, "a write to it was interrupted by a signal handler")
            resolve(task.future, error=CancelledError())
            raise
        if task.direct is not None and self.enabled:
            task.direct.offer_direct_read(functools.partial(self.read, worker, task))
        return True

    # -- a thread waiting for a task that ``send`` wrote --------------------------------

    def read(self, worker: WorkerHandle, task: Task, timeout: float | None) -> None:
        """Borrow ``worker`` and read the answer to ``task`` here. Returns once the task
        is settled, or once reading here ends (the timeout; the manager took the worker
        back; the answer is not one to read here): the caller then waits as usual."""
        message = task.answer
        if message is not None:  # taken by a read that a signal handler (this?) cut short
            if not task.future.done():
                self._settle(task, worker.name, message)
            return
        token = object()
        fds = self._lend(worker, task, token)
        if fds is None:
            return
        try:
            message = self._wait_for_answer(worker, task, token, fds, timeout)
        except BaseException:  # a signal handler raised: the manager carries on
            self._return(worker, token)
            if task.answer is not None:  # taken, not settled
                self._leave_to_manager(task, worker.name, None)
            raise
        if message is None:
            self._return(worker, token)
            return
        self._settle(task, worker.name, message)

    @counts_itself
    def _lend(self, worker: WorkerHandle, task: Task, token: object) -> tuple[int, int] | None:
        depth.value += 1
        try:
            with self._lock:
                return self._lend_locked(worker, task, token)
        finally:
            depth.value -= 1

    def _lend_locked(
        self, worker: WorkerHandle, task: Task, token: object
    ) -> tuple[int, int] | None:
        """Lend ``worker`` to this thread; its pipe's and its nudge's descriptors."""
        if (
            not self.sleeping
            or worker.state is not WorkerState.DIRECT
            or worker.borrower is not None
            or len(worker.inflight) != 1
            or worker.inflight[0] is not task
            or worker.conn_closed
            or worker.condemned
        ):
            return None
        worker.borrower = token
        # The manager may have been told the pipe was readable before this thread reads
        # it empty: it polls before its next read of this worker (_on_readable).
        worker.reclaimed = True
        self._poller.mute(worker.conn.fileno())
        if worker.nudged:  # drain the nudge of an earlier take-back
            with contextlib.suppress(OSError):
                os.eventfd_read(worker.nudge)
            worker.nudged = False
        return worker.conn.fileno(), worker.nudge

    @critical
    def _return(self, worker: WorkerHandle, token: object) -> None:
        """Give the worker back to the manager's watch, answer unread."""
        with self._lock:
            if worker.borrower is token:
                self._poller.unmute(worker.conn.fileno())
                worker.borrower = None

    def _wait_for_answer(
        self,
        worker: WorkerHandle,
        task: Task,
        token: object,
        fds: tuple[int, int],
        timeout: float | None,
    ) -> wire.Done | wire.Failed | None:
        # The descriptors are only read while the worker is lent to this thread (then
        # they are open); polling them after it was taken back ends at the next check.
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = BORROW_CHECK_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None
            poller.poll(math.ceil(wait * 1000))
            taken = self._take_answer(worker, task, token)
            if taken is not _NOT_YET:
                return taken  # type: ignore[return-value]
            time.sleep(0.00005)  # (only when part of a frame is there: the rest is coming)

    @counts_itself
    def _take_answer(self, worker: WorkerHandle, task: Task, token: object) -> object:
        """The answer to ``task``, if it is whole at the head of the pipe (counted,
        consumed, the worker parked again); ``_NOT_YET``; or None: reading here ends
        (taken back, or the manager must read what comes)."""
        depth.value += 1
        try:
            with self._lock:
                return self._take_answer_locked(worker, task, token)
        finally:
            depth.value -= 1

    def _take_answer_locked(self, worker: WorkerHandle, task: Task, token: object) -> object:
        sock = worker.socket
        if worker.borrower is not token or sock is None:
            return None
        peeked = self._peeked
        try:
            size = sock.recv_into(peeked, PEEK_BYTES, _PEEK)
        except BlockingIOError:
            return _NOT_YET
        except OSError:
            return None
        if not size:
            return None  # it is leaving: the manager sees to it
        try:
            length, messages = wire.first_frame(peeked[:size])
        except Exception:  # not a frame we can read: the manager's reader decides
            return None
        if messages is None:  # not whole yet, or too large, or with out-of-band buffers
            return _NOT_YET if length == 0 or size < length <= PEEK_BYTES else None
        if len(messages) != 1:
            return None
        message = messages[0]
        if type(message) not in ANSWERS or message.task_id != task.task_id:  # type: ignore[union-attr]
            return None  # a log record first, say: the manager handles them in order
        # Kept, then counted, then consumed (see the module docstring).
        task.answer = message  # type: ignore[assignment]
        worker.answered(time.monotonic())
        sock.recv(length, socket.MSG_WAITALL)
        self._poller.unmute(worker.conn.fileno())  # a Retiring, a log record, its death
        worker.borrower = None
        if self._may_park(worker):
            worker.move(WorkerState.PARKED)
            self._parked.append(worker)
        else:
            self._manager.wake()  # (leaving, recycling: the manager sees to it)
        return message

    def _may_park(self, worker: WorkerHandle) -> bool:
        maxtasks = self._manager.maxtasks
        return (
            self.sleeping
            and self._manager.state is PoolState.RUNNING
            and not worker.inflight
            and not worker.condemned
            and (maxtasks is None or worker.tasks_done < maxtasks)
        )

    def _settle(self, task: Task, worker_name: str, message: wire.Done | wire.Failed) -> None:
        """Settle ``task`` from its answer, in the thread that read it; what cannot be
        settled here, or is cut short, the manager settles (``unsettled``). Not
        ``@critical``: a signal handler may call the pool while the value is unpickled
        (user code); one that waits for this very task settles it itself (``read``)."""
        assert task.direct is not None
        decoded: tuple[Any, BaseException | None] | None = None
        try:
            dialect = self._manager.dialect
            decoded = answer(task, message, dialect, worker_name, catch=DECODING_IN_CALLER)
            if task.direct.settle_here(*decoded):
                return
        except BaseException:
            self._leave_to_manager(task, worker_name, decoded)
            raise
        self._leave_to_manager(task, worker_name, decoded)

    def _leave_to_manager(
        self, task: Task, worker_name: str, decoded: tuple[Any, BaseException | None] | None
    ) -> None:
        self.unsettled.append((task, worker_name, decoded))
        self._manager.wake()


def _nudge(worker: WorkerHandle) -> None:
    """Wake a thread that may be polling ``worker``'s pipe as a borrower."""
    worker.nudged = True
    with contextlib.suppress(OSError):
        os.eventfd_write(worker.nudge, 1)
