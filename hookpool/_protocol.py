"""Wire messages between the manager and a worker, and how they are framed. No logic.

Every message is a small NamedTuple (cheap to build, and to import: the worker imports
this module at start). Receivers dispatch on the type and raise on
anything they do not know. User data (callables, arguments, results) is pickled by
``_serialize`` in the thread that produced it and travels here as opaque ``bytes``, so a
message always unpickles even when the user data inside it will not.

Framing: one ``send_bytes`` frame holding a count byte, one flag byte per out-of-band
buffer (1: read-only) and the pickled batch of messages (each its type tag and field
values), then that many frames of raw out-of-band buffers (pickle protocol 5). Payloads
of at least ``OUT_OF_BAND_MIN`` bytes travel as such buffers, straight from the sender's
object to the pipe, never copied into a pickle: a pickled call or result that large, and
the large buffers inside the user's data itself (``_serialize.dumps_data``).

The worker reads a read-only buffer straight into a ``bytes`` object of its size, which
becomes the task's argument itself (no copy in user space); a writable one (a numpy array,
a bytearray) into a ``bytearray``, so that it arrives writable as it left.

::

    manager -> worker:  Call | Skip | Stop
    worker -> manager:  Ready | InitFailed | Done | Failed | Skipped | Retiring
                        | FinalizerFailed | Log
"""

from __future__ import annotations

import contextlib
import enum
import multiprocessing.reduction
import os
import pickle
import select
import socket
import struct

from ._records import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any, Protocol

    from _typeshed import ReadableBuffer as Buffer  # bytes, bytearray, memoryview...

    class Sender(Protocol):
        """What ``send`` writes to: a ``PipeEnd`` (or a ``Connection``)."""

        def send_bytes(self, buf: Buffer) -> None: ...

        def fileno(self) -> int: ...


__all__ = [
    "Blob",
    "Call",
    "CallKind",
    "Done",
    "ErrorReport",
    "Failed",
    "FinalizerFailed",
    "FrameReader",
    "FunctionDef",
    "Inbox",
    "InitFailed",
    "Interrupted",
    "Log",
    "Message",
    "PipeEnd",
    "Ready",
    "Retiring",
    "SharedFd",
    "Skip",
    "Skipped",
    "Stage",
    "Stop",
    "blob",
    "first_frame",
    "pipe",
    "scratch_buffer",
    "send",
]

#: Payloads at least this large travel as out-of-band frames instead of inside the pickle.
OUT_OF_BAND_MIN = 64 * 1024

Blob = bytes | pickle.PickleBuffer
"""Pickled user data: ``bytes`` on arrival; possibly a PickleBuffer on the way out."""


def blob(data: bytes) -> Blob:
    """Mark ``data`` for out-of-band transfer when it is large enough to be worth it."""
    return pickle.PickleBuffer(data) if len(data) >= OUT_OF_BAND_MIN else data


FunctionDef = tuple[int, bytes, bool]
"""A function for a worker to keep: ``(id, pickled function, forget the others first)``."""


class CallKind(enum.IntEnum):
    """What the worker does with a Call's function and arguments."""

    APPLY = 0  #: args is ``(args, kwargs)``; the result is ``fn(*args, **kwargs)``
    MAP = 1  #: args is a list of items; the result is ``[fn(x) for x in items]``
    STARMAP = 2  #: args is a list of tuples; the result is ``[fn(*x) for x in items]``


class ErrorReport(NamedTuple):
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
    context_is_cause: bool = False
    suppress_context: bool = False


class Call(NamedTuple):
    """Run one task. Sent to a worker only after it reported ``Ready``."""

    task_id: int
    kind: int  # a CallKind value (a plain int on the wire)
    #: The function: the id of one this worker was sent before, or, the first time,
    #: ``FunctionDef`` (a map sends its function to each worker once, not per chunk).
    fn: int | FunctionDef
    args: Blob
    #: The out-of-band buffers ``args`` refers to (``_serialize.dumps_data``).
    buffers: tuple[Any, ...] = ()


class Skip(NamedTuple):
    """Do not run this task, sent earlier: it was cancelled before it started."""

    task_id: int


class Stop(NamedTuple):
    """Leave in an orderly way: run the finalizer, then exit."""

    #: Why, for ``current_worker().leaving`` in the finalizer: ``"close"`` (the pool is
    #: closing and has no more work), ``"maxtasksperchild"``, ``"max_memory_per_child"``.
    reason: str


class Ready(NamedTuple):
    """The initializer succeeded and the finalizer is registered; send tasks."""

    pid: int


class InitFailed(NamedTuple):
    """The initializer raised, or the hooks would not unpickle (``unpickling``); the
    worker exits without running any task."""

    error: ErrorReport
    unpickling: bool = False


class Done(NamedTuple):
    """A task's result, pickled in the worker."""

    task_id: int
    value: Blob
    #: The out-of-band buffers ``value`` refers to (``_serialize.dumps_data``).
    buffers: tuple[Any, ...] = ()


class Stage(enum.IntEnum):
    """Where in the worker a task failed: the two pools of the standard library report a
    failure to unpickle a task, or to pickle its result, differently (``_dialect``)."""

    RUN = 0  #: the function raised
    ARGS = 1  #: the arguments could not be unpickled
    RESULT = 2  #: the result could not be pickled
    FUNCTION = 3  #: the function could not be unpickled


class Failed(NamedTuple):
    """A task raised, or its arguments or result could not be (un)pickled."""

    task_id: int
    error: ErrorReport
    #: The error was a SystemExit: the worker leaves after sending this.
    leaving: bool = False
    stage: Stage = Stage.RUN
    #: Stage.RESULT: a short repr of the result that would not pickle.
    value_repr: str = ""


class Retiring(NamedTuple):
    """The worker's resident memory is above ``max_memory_per_child``: measured after its
    last answer (or after its initializer, instead of ``Ready``). From then on it runs
    no task: it drops the Calls it gets, which the manager puts back in its queue, and
    waits for ``Stop`` (reading on, so that a send to it never blocks), then runs its
    finalizer and exits."""

    rss: int  # resident bytes, as measured


class Skipped(NamedTuple):
    """The answer, in order, for a task the worker did not run because of a Skip."""

    task_id: int


class Interrupted(NamedTuple):
    """A stop aimed at this task (cancel, timeout; see ``_workers.StopSlot``) interrupted
    it: the worker runs nothing more, and leaves through its finalizer."""

    task_id: int


class FinalizerFailed(NamedTuple):
    """The finalizer raised; reported in the parent through logging."""

    pid: int
    error: ErrorReport


class Log(NamedTuple):
    """A log record emitted in the worker (``hookpool._logs``), replayed in the parent.

    ``fields`` are the record's standard attributes, already made plain (the message
    formatted with its args, the exception formatted into ``exc_text``), so they always
    unpickle. ``extra`` holds the other attributes (``logging``'s ``extra=``), pickled in
    the worker, or ``None``.
    """

    fields: dict[str, Any]
    extra: bytes | None


Message = (
    Call
    | Skip
    | Stop
    | Ready
    | InitFailed
    | Done
    | Failed
    | Skipped
    | FinalizerFailed
    | Log
    | Retiring
    | Interrupted
)

#: On the wire a message is the tuple ``(tag, *fields)``: pickling a class reference
#: would cost more than the rest of a small message.
_MESSAGE_TYPES: tuple[type[Message], ...] = (
    Call,
    Skip,
    Stop,
    Ready,
    InitFailed,
    Done,
    Failed,
    Skipped,
    FinalizerFailed,
    Log,
    Retiring,
    Interrupted,
)
_TAGS: dict[type[Message], int] = {kind: tag for tag, kind in enumerate(_MESSAGE_TYPES)}

_COUNT = [bytes((n,)) for n in range(256)]
_HEADER = struct.Struct("!i")  # multiprocessing.connection's frame header
_LONG_HEADER = struct.Struct("!Q")  # after a -1 header, for frames of 2 GiB and more
_READ_SIZE = 256 * 1024
_MAX_SHORT_FRAME = 0x7FFFFFFF  # larger frames have the long header
_JOIN_HEADER_UP_TO = 16384  # smaller frames go out in one write, header and all


def scratch_buffer() -> bytearray:
    """A read buffer for the ``FrameReader``s of one thread."""
    return bytearray(_READ_SIZE)


def send(conn: Sender, messages: list[Message]) -> None:
    """Write a batch of messages as one frame (plus one frame per out-of-band buffer)."""
    buffers: list[pickle.PickleBuffer] = []
    tags = _TAGS
    batch = [(tags[type(message)], *message) for message in messages]
    head = pickle.dumps(batch, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        conn.send_bytes(_COUNT[0] + head)
        return
    views = [buffer.raw() for buffer in buffers]
    flags = bytes(view.readonly for view in views)
    conn.send_bytes(_COUNT[len(views)] + flags + head)
    for view in views:
        conn.send_bytes(view)


def first_frame(data: memoryview) -> tuple[int, list[Message] | None]:
    """The frame at the start of ``data`` (bytes peeked at on a pipe): its length with
    its header, and its messages if it is all there and carries no out-of-band buffer
    (else None). A length of 0: not even its header is there."""
    if len(data) < 4:
        return 0, None
    (size,) = _HEADER.unpack_from(data, 0)
    if size == -1:
        if len(data) < 12:
            return 0, None
        (size,) = _LONG_HEADER.unpack_from(data, 4)
        return 12 + size, None
    end = 4 + size
    if end > len(data) or size == 0 or data[4] != 0:
        return end, None
    return end, _decode(data[4:end], [])


def pipe() -> tuple[PipeEnd, PipeEnd]:
    """A duplex pipe between the manager and one worker: the manager's end, the worker's.

    What ``multiprocessing.Pipe(duplex=True)`` makes on POSIX (a blocking socketpair),
    without its ``Connection`` objects.
    """
    left, right = socket.socketpair()
    left.setblocking(True)  # whatever socket.setdefaulttimeout() says, as Pipe() does
    right.setblocking(True)
    return PipeEnd(left.detach()), PipeEnd(right.detach())


class PipeEnd:
    """One end of a worker's pipe: a ``multiprocessing.connection.Connection`` without the
    import.

    Importing that module imports ``tempfile``, ``shutil``, ``random``, ``bz2``...: some
    5 ms in the parent as its first workers boot, and in each worker that unpickled a
    Connection. A PipeEnd holds the descriptor and writes frames in a Connection's format
    (a ``!i`` size header; -1 then a ``!Q`` size from 2 GiB up); the manager reads them
    with a ``FrameReader``, a worker with an ``Inbox``. It is handed to the worker as a
    Connection is (``reduction.DupFd``) and, closed, refuses use as a Connection does:
    a closed descriptor's number may already belong to another file.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise OSError("handle is closed")
        return self._fd

    def send_bytes(self, buf: Buffer) -> None:
        with memoryview(buf) as view:
            size = view.nbytes
            if size > _MAX_SHORT_FRAME:
                header = _HEADER.pack(-1) + _LONG_HEADER.pack(size)
            else:
                header = _HEADER.pack(size)
            if size <= _JOIN_HEADER_UP_TO:
                self._write(b"".join((header, view)))
            else:  # large: straight from the caller's buffer, no copy
                self._write(header)
                self._write(view)

    def poll(self) -> bool:
        """Whether a read would not block (data, or the other end closed)."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _write(self, data: Buffer) -> None:
        fd = self.fileno()
        with memoryview(data) as view:
            written = os.write(fd, view)
            while written < len(view):
                written += os.write(fd, view[written:])

    def __reduce__(self) -> tuple[object, ...]:
        # Only while a worker is spawned, like a Connection: the fd is handed to the child.
        return PipeEnd._rebuild, (multiprocessing.reduction.DupFd(self.fileno()),)

    @staticmethod
    def _rebuild(dup: Any) -> PipeEnd:
        return PipeEnd(dup.detach())


class SharedFd:
    """A descriptor handed to a worker as it is spawned, as a Connection's is (the worker
    gets its own copy); in the worker, ``fd`` is that copy."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[object, ...]:
        return SharedFd._rebuild, (multiprocessing.reduction.DupFd(self.fd),)

    @staticmethod
    def _rebuild(dup: Any) -> SharedFd:
        return SharedFd(dup.detach())


class Inbox:
    """The worker's side of its pipe: blocking reads of whole batches.

    Each frame is read straight into an object of its size, never chunk by chunk into a
    growing buffer as ``Connection.recv_bytes`` does; a large read-only buffer with one
    ``recv(MSG_WAITALL)`` into the ``bytes`` object that the task will get.
    """

    def __init__(self, conn: Sender) -> None:
        self._fd = conn.fileno()
        self._socket: socket.socket | None = None
        with contextlib.suppress(OSError):  # a duplex Pipe is a socketpair; else os.read
            self._socket = socket.socket(fileno=os.dup(self._fd))

    def recv(self) -> list[Message]:
        """Read one batch. Raises EOFError or OSError when the other end is gone."""
        head = self._read_frame(readonly=True)
        count = head[0]
        frames = [self._read_frame(readonly=bool(flag)) for flag in head[1 : 1 + count]]
        return _decode(head, frames)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()

    def _read_frame(self, *, readonly: bool) -> bytes | bytearray:
        fd = self._fd
        (size,) = _HEADER.unpack(_read_exactly(fd, 4))
        if size == -1:
            (size,) = _LONG_HEADER.unpack(_read_exactly(fd, 8))
        if size < _READ_SIZE:
            data = _read_exactly(fd, size)
            return data if readonly else bytearray(data)
        if readonly and self._socket is not None:
            return self._recv_bytes(self._socket, size)
        frame = bytearray(size)
        with memoryview(frame) as view:
            filled = 0
            while filled < size:
                count = os.readv(fd, [view[filled:]])
                if not count:
                    raise EOFError
                filled += count
        return frame

    @staticmethod
    def _recv_bytes(sock: socket.socket, size: int) -> bytes:
        data = sock.recv(size, socket.MSG_WAITALL)
        if len(data) == size:
            return data
        parts = [data]  # cut short by a signal: rare, and then a copy is fine
        got = len(data)
        while got < size:
            if not parts[-1]:
                raise EOFError
            parts.append(sock.recv(size - got, socket.MSG_WAITALL))
            got += len(parts[-1])
        return b"".join(parts)


def _read_exactly(fd: int, size: int) -> bytes:
    data = os.read(fd, size)
    if len(data) == size:
        return data
    parts = [data]
    while (got := sum(map(len, parts))) < size:
        if not parts[-1]:
            raise EOFError
        parts.append(os.read(fd, size - got))
    return b"".join(parts)


def _decode(
    head: bytes | bytearray | memoryview, buffers: list[bytes | bytearray]
) -> list[Message]:
    messages = []
    start = 1 + head[0]  # after the count and flag bytes
    new = tuple.__new__  # every field is on the wire: no need for the NamedTuple's __new__
    for tag, *fields in pickle.loads(memoryview(head)[start:], buffers=buffers):
        if not 0 <= tag < len(_MESSAGE_TYPES):
            raise TypeError(f"unrecognized wire message tag: {tag!r}")
        kind = _MESSAGE_TYPES[tag]
        if len(fields) != len(kind._fields):
            raise TypeError(f"malformed {kind.__name__} message: {fields!r}")
        messages.append(new(kind, fields))
    return messages


class FrameReader:
    """Reads whatever a pipe has ready, without blocking, and returns the complete
    batches in it: the manager reads many results with one system call, and is never
    stuck mid-frame waiting for a slow writer.

    Reads go into ``scratch``, a buffer shared by the readers of one thread: a fresh
    256 KiB ``os.read`` buffer per read costs more than the read itself. Whole batches
    are decoded where they lie; only a frame cut off at the end of a read is kept.
    """

    def __init__(self, conn: PipeEnd, scratch: bytearray) -> None:
        self._fd = conn.fileno()
        self._scratch = memoryview(scratch)
        self._buffer = bytearray()  # the start of a frame that has not fully arrived
        self._big: bytearray | None = None  # a large frame being read in place
        self._big_filled = 0
        self._frames: list[bytes | bytearray] = []  # complete frames of a partial batch

    @property
    def between_frames(self) -> bool:
        """Nothing of a frame is held back: the pipe's next byte starts a frame."""
        return not self._buffer and self._big is None and not self._frames

    def read(self) -> list[Message]:
        """Call when the connection is readable. Raises EOFError when it is closed."""
        if self._big is not None:
            self._fill_big()
            return self._complete_batch() if self._big is None else []
        scratch = self._scratch
        count = os.readv(self._fd, [scratch])
        if not count:
            raise EOFError
        messages: list[Message] = []
        if self._buffer:
            self._buffer += scratch[:count]
            with memoryview(self._buffer) as view:
                used = self._parse(view, messages)
            del self._buffer[:used]
        else:
            used = self._parse(scratch[:count], messages)
            self._buffer += scratch[used:count]
        return messages

    def _parse(self, data: memoryview, messages: list[Message]) -> int:
        """Decode the complete frames at the start of ``data``; return the bytes used."""
        position, end = 0, len(data)
        while end - position >= 4:
            (size,) = _HEADER.unpack_from(data, position)
            start = position + 4
            if size == -1:
                if end - position < 12:
                    break
                (size,) = _LONG_HEADER.unpack_from(data, start)
                start += 8
            stop = start + size
            if stop > end:
                if size >= _READ_SIZE:  # read the rest straight into a buffer of its size
                    self._big = bytearray(size)
                    self._big_filled = end - start
                    self._big[: self._big_filled] = data[start:end]
                    return end
                break
            if not self._frames and data[start] == 0:  # a batch with no buffers: in place
                messages.extend(_decode(data[start:stop], []))
            else:
                self._frames.append(bytes(data[start:stop]))
                messages.extend(self._complete_batch())
            position = stop
        return position

    def _complete_batch(self) -> list[Message]:
        if not self._frames:
            return []
        head = self._frames[0]
        if len(self._frames) < 1 + head[0]:
            return []
        frames, self._frames = self._frames, []
        buffers = frames[1:]
        for index, readonly in enumerate(head[1 : 1 + len(buffers)]):
            if not readonly and type(buffers[index]) is bytes:
                buffers[index] = bytearray(buffers[index])  # arrives writable, as it left
        return _decode(head, buffers)

    def _fill_big(self) -> None:
        assert self._big is not None
        view = memoryview(self._big)[self._big_filled :]
        count = os.readv(self._fd, [view])
        if not count:
            raise EOFError
        self._big_filled += count
        if self._big_filled == len(self._big):
            self._frames.append(self._big)
            self._big = None
