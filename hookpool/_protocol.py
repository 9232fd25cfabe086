"""Wire messages between the manager and a worker, and how they are framed. No logic.

Every message is a small frozen dataclass. Receivers dispatch on the type and raise on
anything they do not know. User data (callables, arguments, results) is pickled by
``_serialize`` in the thread that produced it and travels here as opaque ``bytes``, so a
message always unpickles even when the user data inside it will not.

Framing: one ``send_bytes`` frame holding a count byte and the pickled message (its type
tag and field values), then that many frames of raw out-of-band buffers (pickle protocol
5). Payloads larger than
``OUT_OF_BAND_MIN`` are sent as such buffers, straight from the caller's bytes object to
the pipe, without being copied into the message pickle.

::

    manager -> worker:  Call | Stop
    worker -> manager:  Ready | InitFailed | Done | Failed | FinalizerFailed
"""

from __future__ import annotations

import enum
import pickle
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, ClassVar

__all__ = [
    "Blob",
    "Call",
    "CallKind",
    "Done",
    "ErrorReport",
    "Failed",
    "FinalizerFailed",
    "InitFailed",
    "Message",
    "Ready",
    "Stop",
    "blob",
    "recv",
    "send",
]

#: Payloads at least this large travel as out-of-band frames instead of inside the pickle.
OUT_OF_BAND_MIN = 64 * 1024

Blob = bytes | pickle.PickleBuffer
"""Pickled user data: ``bytes`` on arrival; possibly a PickleBuffer on the way out."""


def blob(data: bytes) -> Blob:
    """Mark ``data`` for out-of-band transfer when it is large enough to be worth it."""
    return pickle.PickleBuffer(data) if len(data) >= OUT_OF_BAND_MIN else data


class Message:
    """Base of all wire messages. On the wire a message is the tuple ``(tag, *fields)``:
    pickling a class reference costs more than the rest of a small message."""

    _tag: ClassVar[int]

    def __init_subclass__(cls) -> None:
        cls._tag = len(_MESSAGE_TYPES)
        _MESSAGE_TYPES.append(cls)


_MESSAGE_TYPES: list[type[Message]] = []


class CallKind(enum.IntEnum):
    """What the worker does with a Call's function and arguments."""

    APPLY = 0  #: args is ``(args, kwargs)``; the result is ``fn(*args, **kwargs)``
    MAP = 1  #: args is a list of items; the result is ``[fn(x) for x in items]``
    STARMAP = 2  #: args is a list of tuples; the result is ``[fn(*x) for x in items]``


@dataclass(frozen=True)
class ErrorReport:
    """An exception captured in a worker, in a form that always crosses the pipe.

    ``exception`` is the pickled exception object (without its traceback), or ``None`` if
    it would not pickle; ``frames`` is tblib's dict form of the worker's frames. The text
    fields let the caller build a readable substitute when the object itself is lost.
    """

    type_name: str
    message: str
    traceback_text: str
    exception: bytes | None
    frames: dict[str, Any] | None
    cause: ErrorReport | None = None
    context: ErrorReport | None = None
    suppress_context: bool = False


@dataclass(frozen=True)
class Call(Message):
    """Run one task. Sent to a worker only after it reported ``Ready``."""

    task_id: int
    kind: int  # a CallKind value (a plain int on the wire)
    fn: Blob
    args: Blob


@dataclass(frozen=True)
class Stop(Message):
    """Leave in an orderly way: run the finalizer, then exit."""


@dataclass(frozen=True)
class Ready(Message):
    """The initializer succeeded and the finalizer is registered; send tasks."""

    pid: int


@dataclass(frozen=True)
class InitFailed(Message):
    """The initializer raised; the worker exits without running any task."""

    error: ErrorReport


@dataclass(frozen=True)
class Done(Message):
    """A task's result, pickled in the worker."""

    task_id: int
    value: Blob


@dataclass(frozen=True)
class Failed(Message):
    """A task raised, or its arguments or result could not be (un)pickled."""

    task_id: int
    error: ErrorReport


@dataclass(frozen=True)
class FinalizerFailed(Message):
    """The finalizer raised; reported in the parent through logging."""

    pid: int
    error: ErrorReport


_COUNT = [bytes((n,)) for n in range(256)]


def send(conn: Connection, message: Message) -> None:
    """Write one message (and its out-of-band buffers) to ``conn``."""
    buffers: list[pickle.PickleBuffer] = []
    # A frozen dataclass's __init__ stores the fields in __dict__, in order.
    fields = (message._tag, *message.__dict__.values())
    head = pickle.dumps(fields, protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(_COUNT[len(buffers)] + head)
    for buffer in buffers:
        conn.send_bytes(buffer.raw())


def recv(conn: Connection) -> Message:
    """Read one message. Raises EOFError or OSError when the other end is gone."""
    head = conn.recv_bytes()
    buffers = [conn.recv_bytes() for _ in range(head[0])]
    tag, *fields = pickle.loads(memoryview(head)[1:], buffers=buffers)
    if not 0 <= tag < len(_MESSAGE_TYPES):
        raise TypeError(f"unrecognized wire message tag: {tag!r}")
    message: Message = _MESSAGE_TYPES[tag](*fields)
    return message
