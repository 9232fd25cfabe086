"""Worker logging and warnings, delivered to the parent's handlers.

Worker side (``install``, as the worker first imports ``logging`` or shows a warning: see
``_worker._ForwardLogging``): a ``ForwardHandler`` on the root
logger turns each record into a ``wire.Log`` and sends it on the worker's own pipe, the
one its results travel on, so the parent sees a worker's records in the order they were
emitted, and before the result of the task that emitted them. The worker's root level is
the parent root logger's effective level at spawn time: a record the parent would drop is
not even sent. ``logging.captureWarnings(True)`` turns warnings shown in the worker into
``py.warnings`` records, which travel the same way.

Parent side (``replay``, on the manager thread): the record is rebuilt, tagged with the
worker's name (``processName`` and ``hookpool_worker``), and handed to
``logging.getLogger(record.name).handle(record)`` if that logger is enabled for its level.

Imported by a worker only when forwarding is on and its code uses logging or shows a
warning: ``logging`` is not free to import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import traceback
from collections.abc import Callable

from . import _protocol as wire
from ._records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

__all__ = ["ForwardHandler", "install", "replay"]

#: The attributes every LogRecord has; anything else came from ``extra=`` (or a filter).
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class ForwardHandler(logging.Handler):
    """Sends each record to the parent through ``send`` (the worker's ``_send``).

    Guarantees: ``emit`` never blocks on a lock its own thread holds. A record emitted
    while this thread is in the middle of writing a message (a signal handler, or a
    ``__del__``, that logs) is queued by ``send`` and written right after the message being
    written, never into the middle of it (see ``_Worker._send``). A record that cannot be
    sent because the parent is gone, or its pool stopped, is dropped silently.
    """

    def __init__(self, send: Callable[[wire.Message], None]) -> None:
        super().__init__()
        self._send = send
        self._pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self._pid:
            return  # a process a task forked: the worker's pipe is not its to write to
        try:
            message = _prepare(record)
        except Exception:
            self.handleError(record)  # what logging does for any broken record
            return
        try:
            self._send(message)
        except (OSError, EOFError, ValueError):
            pass  # the parent is gone, or has stopped reading: nobody to deliver to
        except Exception:
            self.handleError(record)


def install(send: Callable[[wire.Message], None], level: int) -> None:
    """Route this worker's logging and warnings to the parent (called in the worker)."""
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(ForwardHandler(send))
    logging.captureWarnings(True)


def _prepare(record: logging.LogRecord) -> wire.Log:
    """The record as a wire message, made plain as ``QueueHandler.prepare`` does: the
    message formatted with its args, the exception formatted into ``exc_text``."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        (fields if key in _STANDARD else extra)[key] = value
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info:
        if not record.exc_text:
            fields["exc_text"] = _formatter.formatException(record.exc_info)
        fields["exc_info"] = None
    fields.pop("message", None)  # the parent's formatters set these again
    fields.pop("asctime", None)
    return wire.Log(fields, _pickle_extra(extra) if extra else None)


_formatter = logging.Formatter()


def _pickle_extra(extra: dict[str, Any]) -> bytes:
    """Pickle the ``extra=`` attributes; a value that will not pickle travels as its repr."""
    try:
        return pickle.dumps(extra, protocol=5)
    except Exception:
        plain = {}
        for key, value in extra.items():
            try:
                pickle.dumps(value, protocol=5)
            except Exception:
                value = _safe_repr(value)
            plain[key] = value
        return pickle.dumps(plain, protocol=5)


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object (repr failed)>"


def replay(worker_name: str, message: wire.Log) -> None:
    """Hand a worker's record to the parent's handlers (called on the manager thread).

    Never raises: a handler or filter that fails is reported on stderr, as ``logging``
    reports a failing ``emit``, and must not break the pool.
    """
    try:
        record = logging.makeLogRecord(message.fields)
        if message.extra is not None:
            # An ``extra=`` value the parent cannot import is lost; the record is kept.
            with contextlib.suppress(Exception):
                record.__dict__.update(pickle.loads(message.extra))
        record.processName = worker_name
        record.hookpool_worker = worker_name
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    except Exception:
        if logging.raiseExceptions:
            sys.stderr.write(f"hookpool: could not handle a log record from {worker_name}:\n")
            traceback.print_exc(file=sys.stderr)
