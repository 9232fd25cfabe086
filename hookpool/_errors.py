"""The exceptions hookpool raises, each a subclass of what users already catch.

::

    Exception
     +-- HookpoolError
     |    +-- WorkerLostError ........ also concurrent.futures.process.BrokenProcessPool
     |    +-- PoolBrokenError ........ also BrokenProcessPool
     |    |    +-- InitializerError .. the initializer raised in a worker
     |    +-- PoolTerminatedError .... the pool was terminated while the task ran
     |    +-- RemoteError ............ a worker exception that could not be sent back
     |    +-- ResultEncodingError .... also multiprocessing.pool.MaybeEncodingError
     |    +-- TaskTimeoutError ....... also multiprocessing.TimeoutError and TimeoutError
     +-- multiprocessing.pool.RemoteTraceback
          +-- RemoteTraceback ........ the worker's formatted traceback, as ``__cause__``

An exception raised by the task itself is re-raised in the caller as itself (same type,
same arguments), with the worker's frames in its traceback; see ``_serialize``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.pool import (  # type: ignore[attr-defined]  # missing from typeshed
    MaybeEncodingError,
)
from multiprocessing.pool import (  # type: ignore[attr-defined]
    RemoteTraceback as _StdRemoteTraceback,
)

__all__ = [
    "HookpoolError",
    "InitializerError",
    "PoolBrokenError",
    "PoolTerminatedError",
    "RemoteError",
    "RemoteTraceback",
    "ResultEncodingError",
    "TaskTimeoutError",
    "WorkerLostError",
]


class HookpoolError(Exception):
    """Base class of every error hookpool itself raises."""


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


class PoolTerminatedError(HookpoolError):
    """The pool was terminated (or garbage collected) while this task was running."""


class RemoteError(HookpoolError):
    """An exception raised in a worker that could not be pickled or unpickled.

    Attributes:
        type_name: the qualified name of the original exception's type.
        remote_message: ``str()`` of the original exception.
        remote_traceback: the worker's formatted traceback.
    """

    def __init__(self, type_name: str, remote_message: str, remote_traceback: str) -> None:
        super().__init__(type_name, remote_message, remote_traceback)
        self.type_name = type_name
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return (
            f"{self.type_name}: {self.remote_message} (the worker's exception could not be "
            f"sent back as itself, so its type and message travel as text)\n\n"
            f'"""\n{self.remote_traceback}"""'
        )


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


class TaskTimeoutError(HookpoolError, multiprocessing.TimeoutError, TimeoutError):
    """A task ran longer than its timeout: its worker was stopped and replaced."""


# On 3.10 concurrent.futures.TimeoutError is not the builtin TimeoutError.
if not issubclass(TaskTimeoutError, concurrent.futures.TimeoutError):  # pragma: no cover

    class TaskTimeoutError(  # type: ignore[no-redef]
        HookpoolError,
        multiprocessing.TimeoutError,
        concurrent.futures.TimeoutError,
    ):
        """A task ran longer than its timeout: its worker was stopped and replaced."""


class RemoteTraceback(_StdRemoteTraceback):  # type: ignore[misc]
    """The worker's formatted traceback, attached as ``__cause__`` like the standard library.

    hookpool attaches it only where the worker's exception had no ``__cause__`` of its
    own: a real ``raise ... from`` chain is kept as it was.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb
