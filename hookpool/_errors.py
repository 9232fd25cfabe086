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
     |    +-- TaskDecodingError ...... also BrokenProcessPool (executor: a task or result
     |    |                            that would not unpickle)
     |    +-- TaskTimeoutError ....... also multiprocessing.TimeoutError and TimeoutError
     +-- multiprocessing.pool.RemoteTraceback (hookpool.RemoteTraceback): the worker's
                                     formatted traceback, as ``__cause__`` (executor:
                                     concurrent.futures.process._RemoteTraceback)

An exception raised by the task itself is re-raised in the caller as itself (same type,
same arguments), with the worker's frames in its traceback; see ``_serialize``.

The ones whose standard-library base lives in ``multiprocessing.pool`` or
``concurrent.futures.process`` (both import ``multiprocessing.connection``: some 7 ms)
are defined in ``_std_errors``: imported when first raised or looked up, and by a pool's
manager thread once the pool is idle, not while its first workers boot. The ones here are
always importable, even as the interpreter exits, when ``concurrent.futures.process`` no
longer is (a task lost then fails with ``PoolTerminatedError``).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing

__all__ = [
    "HookpoolError",
    "PoolTerminatedError",
    "ReentrantCallError",
    "RemoteError",
    "TaskTimeoutError",
]


class HookpoolError(Exception):
    """Base class of every error hookpool itself raises."""


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


class ReentrantCallError(HookpoolError, RuntimeError):
    """A call that would wait for itself: a wait for a result from a callback of the same
    pool (callbacks run on the pool's manager thread, which delivers its results), or a
    call from a signal handler that interrupted the pool's own bookkeeping, in a way that
    would wait for that bookkeeping to end. ``close()`` and ``terminate()`` are always
    allowed there."""
