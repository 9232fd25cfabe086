"""What the manager tells the caller: a worker's answer decoded into a value or an error,
and the words for a worker that left (how it exited, the likely cause)."""

from __future__ import annotations

import signal
import time
from concurrent.futures import InvalidStateError
from multiprocessing.process import BaseProcess

from . import _protocol as wire
from . import _worker
from ._errors import PoolTerminatedError
from ._records import TYPE_CHECKING
from ._serialize import loads_data, rebuild

if TYPE_CHECKING:
    from typing import Any

    from ._dialect import Dialect
    from ._engine import Outcome, Task

__all__ = ["answer", "exit_text", "internal_error", "likely_cause", "reap", "resolve"]

#: What unpickling a result in a caller's thread may raise that becomes the task's error:
#: not a KeyboardInterrupt, which is the caller's.
DECODING_IN_CALLER = (Exception, SystemExit)

ANSWERS = (wire.Done, wire.Failed)


def answer(
    task: Task,
    message: wire.Done | wire.Failed,
    dialect: Dialect,
    worker: str,
    *,
    catch: type[BaseException] | tuple[type[BaseException], ...] = BaseException,
) -> tuple[Any, BaseException | None]:
    """The value or the error a worker's answer to ``task`` settles it with, in the words
    of the facade (``dialect``). ``catch``: what unpickling may raise that becomes the
    task's error."""
    if type(message) is wire.Failed:
        error = rebuild(message.error, dialect.remote_traceback)
        return None, dialect.failed(message, error, task.describe(), worker)
    assert isinstance(message, wire.Done)
    try:
        return loads_data(message.value, message.buffers), None
    except catch as exc:
        return None, dialect.undecodable_result(exc, task.describe(), worker)


def resolve(future: Outcome, *, value: Any = None, error: BaseException | None = None) -> None:
    """Settle a future that may already be settled (terminate races a late result)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


def reap(process: BaseProcess, timeout: float) -> None:
    """Wait at most ``timeout`` for a worker that has exited, or was killed, to be reaped.

    Not ``process.join(timeout)``: with a timeout that waits in
    ``multiprocessing.connection.wait``, whose import costs some 5 ms. The process is on
    its way out (its sentinel fired, or it got SIGKILL), so a few non-blocking waitpid
    calls (``exitcode``), short sleeps between them, are enough.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0001
    while process.exitcode is None and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(2 * delay, 0.01)


def internal_error(exc: BaseException) -> BaseException:
    """What a pool breaks with when its manager thread fails: a PoolBrokenError, or a
    PoolTerminatedError if that can no longer be imported (see ``_std_errors``)."""
    message = (
        f"internal error in the hookpool manager thread: {exc!r}; "
        f"the pool cannot run tasks any more"
    )
    try:
        from ._std_errors import PoolBrokenError
    except Exception:  # the interpreter is exiting: concurrent.futures.process will not import
        error: BaseException = PoolTerminatedError(message)
    else:
        error = PoolBrokenError(message)
    error.__cause__ = exc
    return error


def exit_text(exitcode: int | None) -> str:
    if exitcode is None:
        return "disappeared"
    if exitcode == _worker.SIGTERM_EXIT_CODE:
        return "was stopped by SIGTERM"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


def likely_cause(exitcode: int | None) -> str:
    if exitcode is None:
        return ""
    if exitcode == -signal.SIGKILL:
        return (
            " (likely the kernel's out-of-memory killer, see `dmesg`, or a `kill -9` from outside)"
        )
    if exitcode in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGILL, -signal.SIGFPE):
        return " (a crash in native code: a C extension, ctypes, or the interpreter)"
    if exitcode == -signal.SIGABRT:
        return " (native code called abort(), e.g. a failed C assertion)"
    if exitcode in (-signal.SIGTERM, _worker.SIGTERM_EXIT_CODE):
        return " (someone outside hookpool sent it SIGTERM; it ran its finalizer and left)"
    if exitcode >= 0:
        return " (the task, or a library it called, ended the process with os._exit())"
    return ""
