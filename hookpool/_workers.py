"""The manager's view of one worker process: its pipe, the tasks sent to it, and whose it
is at the moment (``WorkerState``).

Ownership, one owner at a time:

- The manager thread owns every worker, except while it sleeps.
- Before it sleeps, it *parks* its idle workers (PARKED): a caller's ``submit`` may then
  take one and write a task to it itself (DIRECT), and a thread waiting for that task may
  *borrow* it to read the answer itself (``borrower`` set), then park it again.
- On waking, the manager takes every parked and direct worker back, whoever borrows it.

Every hand-over between threads happens under the engine's lock, in ``_fastpath``; the
manager thread never waits for a borrower (it only tells it, through ``nudge``).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import os
import socket
import time
from multiprocessing.process import BaseProcess

from . import _protocol as wire
from ._records import TYPE_CHECKING

if TYPE_CHECKING:
    from ._engine import Task

__all__ = ["StopSlot", "WorkerHandle", "WorkerState"]

#: Until its first task was timed, a worker's pace is taken to be this (seconds per task).
FIRST_PACE = 0.002


class WorkerState(enum.Enum):
    #: Spawned; the manager waits for its Ready (initializer done, finalizer registered).
    STARTING = "starting"
    #: Ready, with nothing to do.
    IDLE = "idle"
    #: Running tasks the manager sent it.
    BUSY = "busy"
    #: Idle while the manager sleeps: a ``submit`` may send it a task itself.
    PARKED = "parked"
    #: Sent one task by a ``submit`` while the manager slept; a thread waiting for that
    #: task may borrow it to read the answer (``WorkerHandle.borrower``).
    DIRECT = "direct"
    #: Asked to leave (Stop sent, or SIGTERM): it gets no more tasks.
    STOPPING = "stopping"
    #: Its process has ended and was reaped.
    EXITED = "exited"


_MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.IDLE, WorkerState.STOPPING, WorkerState.EXITED}),
    WorkerState.IDLE: frozenset(
        {WorkerState.BUSY, WorkerState.PARKED, WorkerState.STOPPING, WorkerState.EXITED}
    ),
    WorkerState.BUSY: frozenset({WorkerState.IDLE, WorkerState.STOPPING, WorkerState.EXITED}),
    WorkerState.PARKED: frozenset({WorkerState.IDLE, WorkerState.DIRECT, WorkerState.STOPPING}),
    WorkerState.DIRECT: frozenset(
        {WorkerState.PARKED, WorkerState.IDLE, WorkerState.BUSY, WorkerState.STOPPING}
    ),
    WorkerState.STOPPING: frozenset({WorkerState.EXITED}),
    WorkerState.EXITED: frozenset(),
}

#: The states in which a worker is out of the manager thread's hands (see ``_fastpath``).
OUT = frozenset({WorkerState.PARKED, WorkerState.DIRECT})


class WorkerHandle:
    """The manager's view of one worker process."""

    def __init__(
        self,
        name: str,
        process: BaseProcess,
        conn: wire.PipeEnd,
        pid: int,
        reader: wire.FrameReader,
        slot: StopSlot,
    ) -> None:
        self.name = name
        self.process = process
        self.conn = conn
        self.pid = pid
        self.reader = reader
        #: Which task a stop request is for (see StopSlot).
        self.slot = slot
        self.state = WorkerState.STARTING
        #: It said Ready: the initializer ran, the finalizer is registered.
        self.reported_ready = False
        #: The pipe hit EOF (or cannot be trusted); only the sentinel is watched from then on.
        self.conn_closed = False
        #: Tasks sent to this worker, in the order it runs them; [0] is running.
        self.inflight: collections.deque[Task] = collections.deque()
        #: Pickled bytes of the tasks in ``inflight``, and how many of them have a timeout.
        self.inflight_bytes = 0
        self.timeouts = 0
        #: When inflight[0] started (approximately: when it was sent or its predecessor
        #: ended).
        self.head_started = 0.0
        self.tasks_done = 0
        #: Moving average of task duration, to decide how many tasks to queue behind the
        #: running one. Until a task was measured, nothing is queued behind the first.
        self.avg_seconds = FIRST_PACE
        #: SIGKILL at this monotonic time if still alive (after a stop request).
        self.kill_at: float | None = None
        #: The task a targeted stop (cancel, timeout) was sent for, until it is known how
        #: that task ended: 0 for none.
        self.stop_target = 0
        #: Why it was killed, when hookpool killed it for something other than a stop.
        self.lost_reason: str | None = None
        #: The pickled functions sent to it, and the id it knows each by.
        self.functions: dict[bytes, int] = {}
        #: Its pipe cannot be trusted (a write to it was cut short): it gets nothing more
        #: and is stopped.
        self.condemned = False
        #: The pipe as a socket, for the fast path's peeking reads (None without one).
        self.socket: socket.socket | None = None
        #: The thread reading it (a token of that thread's read), while DIRECT: the
        #: manager's poller does not watch its pipe meanwhile.
        self.borrower: object | None = None
        #: Lent to a borrower since the manager last read it: a readiness event the
        #: manager got may be stale (the borrower read the pipe empty).
        self.reclaimed = False
        #: An eventfd the manager signals as it takes the worker back, so that a borrower
        #: polling the pipe wakes; -1 where workers are not lent (no epoll).
        self.nudge = -1
        #: The nudge was signalled and not drained since.
        self.nudged = False

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.name} pid={self.pid} {self.state.value}>"

    def move(self, state: WorkerState) -> None:
        """Change state; the allowed moves are ``_MOVES``."""
        if state is not self.state:
            if state not in _MOVES[self.state]:
                raise RuntimeError(f"{self!r} cannot become {state.value}")
            self.state = state

    @property
    def ready(self) -> bool:
        """Reported Ready, and may be sent tasks (not leaving, pipe trusted)."""
        return (
            self.reported_ready
            and not self.stopping
            and not self.condemned
            and not self.conn_closed
        )

    @property
    def stopping(self) -> bool:
        return self.state is WorkerState.STOPPING or self.state is WorkerState.EXITED

    @property
    def exited(self) -> bool:
        return self.state is WorkerState.EXITED

    def cost(self, task: Task) -> int:
        """Bytes sending ``task`` to this worker takes: with its function, the first time."""
        return task.wire_size + (0 if task.fn in self.functions else len(task.fn))

    def push(self, task: Task) -> None:
        """Record a task sent to this worker (before it is written: its answer may arrive
        before the write call returns)."""
        if not self.inflight:
            self.head_started = time.monotonic()
        self.inflight.append(task)
        task.charged = self.cost(task)
        self.inflight_bytes += task.charged
        self.timeouts += task.timeout is not None

    def pop_head(self) -> Task:
        """Take the task it is running (finished, failed or abandoned)."""
        return self._forget(self.inflight.popleft())

    def pop_tail(self) -> Task:
        """Take the last task queued behind the running one."""
        return self._forget(self.inflight.pop())

    def answered(self, now: float) -> Task:
        """Take the task it was running, which it answered at ``now``; count it."""
        task = self.pop_head()
        self.avg_seconds = 0.8 * self.avg_seconds + 0.2 * (now - self.head_started)
        self.tasks_done += 1
        self.head_started = now
        return task

    def _forget(self, task: Task) -> Task:
        self.inflight_bytes -= task.charged
        self.timeouts -= task.timeout is not None
        return task

    def close(self) -> None:
        """Close the parent's end of its pipe (once); the sentinel stays watched."""
        if not self.conn_closed:
            self.conn_closed = True
            self.conn.close()
            if self.socket is not None:
                self.socket.close()
            if self.nudge >= 0:
                os.close(self.nudge)
                self.nudge = -1
        self.slot.close()


class StopSlot:
    """Eight bytes shared with one worker: the id of the task a stop is aimed at.

    ``cancel()`` and ``task_timeout`` stop the task a worker runs. By the time a signal
    arrives, the worker may have finished that task and started the next one; the manager
    cannot know. So it writes the task's id here, then sends ``_worker.STOP_SIGNAL``, and
    the worker stops only a task with that id, or skips it if it has not started yet.
    (SIGTERM, from ``terminate`` or from outside, stops whatever runs.)
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @staticmethod
    def create() -> int:
        """A new slot's descriptor (to hand to a worker as it is spawned), set to 0."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("hookpool-stop-slot", os.MFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            import tempfile

            fd, path = tempfile.mkstemp(prefix="hookpool-stop-slot-")
            os.unlink(path)
        os.pwrite(fd, bytes(8), 0)
        return fd

    def aim(self, task_id: int) -> None:
        """The next aimed stop is for ``task_id``."""
        with contextlib.suppress(OSError):
            os.pwrite(self.fd, task_id.to_bytes(8, "little"), 0)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
