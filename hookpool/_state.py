"""The pool's lifecycle as one enum with its allowed transitions."""

from __future__ import annotations

import enum

__all__ = ["PoolState"]


class PoolState(enum.Enum):
    """Where a pool is in its life. Terminal states never change again."""

    #: Accepting and running tasks.
    RUNNING = "running"
    #: close() was called: queued work still runs, no new work is accepted; the workers
    #: leave (running their finalizers) once the queue is empty.
    CLOSING = "closing"
    #: terminate() was called (or the pool was collected, or the interpreter is exiting):
    #: queued tasks are cancelled, workers are asked to stop and, after a grace period for
    #: their finalizers, killed.
    TERMINATING = "terminating"
    #: An initializer failed, a worker could not start, or the manager hit an internal
    #: error. Pending tasks failed with that error; workers are being stopped. Terminal.
    BROKEN = "broken"
    #: Every worker has left and the manager thread has exited. Terminal.
    STOPPED = "stopped"

    @property
    def accepts_tasks(self) -> bool:
        return self is PoolState.RUNNING

    def accepts(self, *, while_closing: bool) -> bool:
        """Whether a task may be submitted now; ``while_closing``: a lazy map that
        ``close()`` is still feeding may go on submitting its input."""
        return self is PoolState.RUNNING or (while_closing and self is PoolState.CLOSING)

    @property
    def is_final(self) -> bool:
        return self in (PoolState.BROKEN, PoolState.STOPPED)

    def can_become(self, new: PoolState) -> bool:
        return new in _TRANSITIONS[self]


_TRANSITIONS: dict[PoolState, frozenset[PoolState]] = {
    PoolState.RUNNING: frozenset({PoolState.CLOSING, PoolState.TERMINATING, PoolState.BROKEN}),
    PoolState.CLOSING: frozenset({PoolState.TERMINATING, PoolState.BROKEN, PoolState.STOPPED}),
    PoolState.TERMINATING: frozenset({PoolState.BROKEN, PoolState.STOPPED}),
    PoolState.BROKEN: frozenset(),
    PoolState.STOPPED: frozenset(),
}
