"""What a caller receives when something fails: the words of ``multiprocessing.Pool`` or
of ``concurrent.futures.ProcessPoolExecutor``, one ``Dialect`` per facade.

The engine serves both facades. For most events the two standard pools agree; where they
give their callers different errors for the same event, the engine asks its facade's
dialect, so that a program written for either keeps catching what it caught:

============================  ================================  ================================
event                         ``Pool`` (``POOL``)               executor (``EXECUTOR``)
============================  ================================  ================================
the task raised               the exception; its ``__cause__``  the exception; its ``__cause__``
                              a ``multiprocessing.pool``        a ``concurrent.futures.process``
                              ``.RemoteTraceback``              ``._RemoteTraceback``
its result will not pickle    ``ResultEncodingError``           the pickling error itself
in the worker                 (a ``MaybeEncodingError``)
the task will not unpickle    the unpickling error              ``TaskDecodingError``
in the worker                                                   (a ``BrokenProcessPool``)
its result will not unpickle  ``ResultEncodingError``           ``TaskDecodingError``
in the caller
submitting after close        ``ValueError``                    ``RuntimeError``
the interpreter exits         terminate                         drain: queued tasks still run
============================  ================================  ================================

In every case only that task fails and the pool runs on, and the original exception stays
in the chain. The standard library's modules holding these classes are imported on first
use (see ``_std_errors``).
"""

from __future__ import annotations

import sys

from . import _protocol as wire

__all__ = ["EXECUTOR", "POOL", "Dialect"]


class Dialect:
    """The errors of one facade (see the module docstring); the ``Pool``'s by default."""

    #: "terminate" (the Pool, as ``multiprocessing.Pool``'s atexit) or "drain" (the
    #: executor: queued tasks still run, as ``concurrent.futures`` joins its workers).
    exit_mode = "terminate"

    def closed_error(self) -> Exception:
        """What submitting to a closed pool raises."""
        return ValueError("Pool not running")

    def terminated_error(self) -> BaseException:
        """What a task running when the pool is terminated fails with."""
        from ._errors import PoolTerminatedError

        return PoolTerminatedError("the pool was terminated while this task was running")

    def remote_traceback(self, text: str) -> BaseException:
        """The ``__cause__`` holding a worker's formatted traceback, as the standard
        library builds it: same class, same ``tb`` text."""
        from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]

        return RemoteTraceback(_quoted(text))  # type: ignore[no-any-return]

    def failed(
        self, message: wire.Failed, error: BaseException, task: str, worker: str
    ) -> BaseException:
        """What a task whose worker answered ``message`` fails with; ``error`` is the
        worker's exception, rebuilt."""
        if message.stage is wire.Stage.RESULT:
            reason = f"{message.error.type_name}: {message.error.message}"
            return self.unpicklable_result(error, reason, message.value_repr, task, worker)
        if message.stage is wire.Stage.ARGS or message.stage is wire.Stage.FUNCTION:
            what = "the function of " if message.stage is wire.Stage.FUNCTION else ""
            _add_note(error, f"hookpool: raised while unpickling {what}{task} in worker {worker}")
        return error

    def unpicklable_result(
        self, error: BaseException, reason: str, value_repr: str, task: str, worker: str
    ) -> BaseException:
        """What a task fails with when its result (``value_repr``) will not pickle in its
        worker (``error``; ``reason``, its type and message)."""
        from ._std_errors import ResultEncodingError

        encoding = ResultEncodingError(reason, value_repr)
        encoding.__cause__ = error
        return encoding

    def undecodable_result(self, error: BaseException, task: str, worker: str) -> BaseException:
        """What a task fails with when its result, from ``worker``, will not unpickle here
        (``error``)."""
        from ._std_errors import ResultEncodingError

        encoding = ResultEncodingError(
            f"the result could not be unpickled in the caller: {error!r}", f"<result of {task}>"
        )
        encoding.__cause__ = error
        return encoding


class _ExecutorDialect(Dialect):
    """``concurrent.futures.ProcessPoolExecutor``'s errors."""

    exit_mode = "drain"

    def closed_error(self) -> Exception:
        return RuntimeError("cannot schedule new futures after shutdown")

    def terminated_error(self) -> BaseException:
        from ._std_errors import WorkersTerminatedError

        return WorkersTerminatedError(
            "the executor's workers were terminated (terminate_workers() or kill_workers()) "
            "while this task was running"
        )

    def remote_traceback(self, text: str) -> BaseException:
        from concurrent.futures.process import _RemoteTraceback

        return _RemoteTraceback(_quoted(text))  # type: ignore[arg-type]  # typeshed: a str

    def failed(
        self, message: wire.Failed, error: BaseException, task: str, worker: str
    ) -> BaseException:
        if message.stage is wire.Stage.ARGS or message.stage is wire.Stage.FUNCTION:
            what = "the function of " if message.stage is wire.Stage.FUNCTION else ""
            return _decoding_error(
                f"{what}{task} could not be unpickled in worker {worker}: "
                f"{message.error.type_name}: {message.error.message}",
                error,
            )
        return super().failed(message, error, task, worker)  # RESULT: unpicklable_result

    def unpicklable_result(
        self, error: BaseException, reason: str, value_repr: str, task: str, worker: str
    ) -> BaseException:
        _add_note(
            error,
            f"hookpool: raised while pickling the result of {task} in worker {worker} "
            f"(the result: {value_repr}); only this task failed",
        )
        return error

    def undecodable_result(self, error: BaseException, task: str, worker: str) -> BaseException:
        return _decoding_error(
            f"the result of {task} from worker {worker} could not be unpickled: {error!r}", error
        )


POOL: Dialect = Dialect()
EXECUTOR: Dialect = _ExecutorDialect()


def _decoding_error(what: str, cause: BaseException) -> BaseException:
    from ._std_errors import TaskDecodingError

    error = TaskDecodingError(
        f"{what}. Only this task failed; the executor keeps running (the standard "
        f"library's would be broken)."
    )
    error.__cause__ = cause
    return error


def _quoted(text: str) -> str:
    """A worker's traceback text, quoted as the standard library's pools quote it."""
    return f'\n"""\n{text}"""'


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)``; on Python 3.10, where tracebacks do not show notes, the
    note is still kept in ``__notes__``."""
    if sys.version_info >= (3, 11):
        error.add_note(note)
    else:  # pragma: no cover - 3.10
        notes = getattr(error, "__notes__", None)
        if not isinstance(notes, list):
            notes = []
            try:
                error.__notes__ = notes  # type: ignore[attr-defined]
            except AttributeError:
                return
        notes.append(note)
