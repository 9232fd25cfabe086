"""The two ends of the machine-limit round trips (internal).

``_child`` measures what this machine allows, in the same run as the pools: a pickled
round trip of a tiny object and a raw round trip of a large buffer, each through two
``os.pipe`` pipes between this process and a spawned child that echoes. The child's
target is here, not in ``_child``, so that it imports this small module and nothing of
the harness. A frame is an 8-byte length, then the bytes; everything else is
``os.read``/``os.readv``/``os.write`` on the pipes' file descriptors.
"""

from __future__ import annotations

import os
import pickle
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from multiprocessing.connection import Connection

_HEADER = struct.Struct("!Q")


def read_into(fd: int, view: memoryview) -> None:
    """Fill ``view`` from ``fd``; ``EOFError`` if the writer goes away first."""
    pos = 0
    while pos < len(view):
        got = os.readv(fd, [view[pos:]])
        if not got:
            raise EOFError(f"pipe closed after {pos} of {len(view)} bytes")
        pos += got


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_frame(fd: int, payload: bytes) -> None:
    write_all(fd, _HEADER.pack(len(payload)) + payload)


def read_frame(fd: int) -> bytearray:
    header = bytearray(_HEADER.size)
    read_into(fd, memoryview(header))
    (size,) = _HEADER.unpack(header)
    body = bytearray(size)
    read_into(fd, memoryview(body))
    return body


def echo_pickled(inbox: Connection, outbox: Connection) -> None:
    """Read and unpickle each object, pickle and write it back; stop at ``None``."""
    rfd, wfd = inbox.fileno(), outbox.fileno()
    while True:
        obj = pickle.loads(read_frame(rfd))
        if obj is None:
            return
        write_frame(wfd, pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def echo_raw(inbox: Connection, outbox: Connection, nbytes: int, rounds: int) -> None:
    """Read ``nbytes`` into a new buffer and write them back, ``rounds`` times."""
    rfd, wfd = inbox.fileno(), outbox.fileno()
    for _ in range(rounds):
        buf = bytearray(nbytes)
        read_into(rfd, memoryview(buf))
        write_all(wfd, buf)
        del buf
