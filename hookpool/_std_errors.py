"""hookpool's errors that are also the standard library's pool errors (see ``_errors``).

Their bases live in ``concurrent.futures.process`` and ``multiprocessing.pool``, which
import ``multiprocessing.connection`` and with it ``tempfile``, ``shutil``, ``random``...:
some 7 ms. The manager imports this module where it raises one of these, and once its
pool is a moment old (``_manager._import_errors``);
``hookpool.WorkerLostError`` and the like import it too.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

# hookpool.RemoteTraceback is the standard library's own class: the ``__cause__`` a Pool
# task's exception gets (when the worker gave it none of its own), its ``tb`` the worker's
# formatted traceback. An executor task's is ``concurrent.futures.process._RemoteTraceback``,
# as with the standard library's executor (see ``_dialect``).
from multiprocessing.pool import (  # type: ignore[attr-defined]  # missing from typeshed
    MaybeEncodingError,
    RemoteTraceback,
)

from ._errors import HookpoolError, PoolTerminatedError

__all__ = [
    "InitializerError",
    "PoolBrokenError",
    "RemoteTraceback",
    "ResultEncodingError",
    "TaskDecodingError",
    "WorkerLostError",
    "WorkersTerminatedError",
]


class WorkerLostError(HookpoolError, BrokenProcessPool):
    """The worker running this task died before it could report a result.

    Only the task that worker was running fails; the worker is replaced and the pool keeps
    serving other tasks. Code written against ``ProcessPoolExecutor`` that catches
    ``BrokenProcessPool`` still catches it.
    """

    def __init__(
        self, message: str, *, pid: int | None = None, exitcode: int | None = None
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


class PoolBrokenError(HookpoolError, BrokenProcessPool):
    """The pool cannot run tasks any more (a worker could not start, or an internal error).

    Every pending task fails with this error, and so does every later submission.
    """


class InitializerError(PoolBrokenError):
    """The initializer raised in a worker; its exception is the ``__cause__``.

    hookpool does not respawn workers in a loop with an initializer that fails: the pool
    is broken and the error reaches the callers of every pending task.
    """


class ResultEncodingError(HookpoolError, MaybeEncodingError):  # type: ignore[misc]
    """The task's result could not be pickled in the worker or unpickled in the caller.

    A subclass of ``multiprocessing.pool.MaybeEncodingError``, as the standard library's
    pool raises for the same problem.
    """

    def __init__(self, reason: str, value_repr: str, detail: str = "") -> None:
        # MaybeEncodingError.__init__ repr()s its arguments; keep the plain strings.
        Exception.__init__(self, reason, value_repr, detail)
        self.exc = reason
        self.value = value_repr
        self.detail = detail

    def __str__(self) -> str:
        text = f"Error sending result: {self.value}. Reason: {self.exc}"
        return f"{text}\n\n{self.detail}" if self.detail else text


class WorkersTerminatedError(PoolTerminatedError, BrokenProcessPool):
    """(``ProcessPoolExecutor``) The task was running when ``terminate_workers()`` or
    ``kill_workers()`` stopped the workers: a ``PoolTerminatedError`` that is also the
    ``BrokenProcessPool`` the standard library's executor raises then."""


class TaskDecodingError(HookpoolError, BrokenProcessPool):
    """(``ProcessPoolExecutor``) A task could not be unpickled in its worker, or its result
    in the caller; the unpickling error is the ``__cause__``.

    The standard library's executor is broken by either; hookpool's fails only this task
    and keeps running. It is a ``BrokenProcessPool``, so the ``except`` clauses written for
    the standard library catch it. (The ``Pool`` raises the unpickling error itself, or a
    ``ResultEncodingError`` for a result, as ``multiprocessing.Pool`` would.)
    """
