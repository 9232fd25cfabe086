"""Large arguments and results: they travel out of band, arrive whole, with their type,
and with the writability they left with; the caller's later changes do not leak in."""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tasks import Frame, frame_writable, identity, scribble, sleep_then_first_byte

import hookpool
from hookpool import _protocol as wire
from hookpool import _serialize
from hookpool._serialize import dumps_data, loads_data

MakePool = Callable[..., hookpool.Pool]
BIG = wire.OUT_OF_BAND_MIN


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (b"x" == bytearray(b"x") is True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def test_large_bytes_argument_and_result_keep_their_types(make_pool: MakePool) -> None:
    pool = make_pool(1)
    data = bytes(range(256)) * (BIG // 64)
    mutable = bytearray(data[::-1])
    value = (data, mutable, [data], {"k": mutable}, 1)
    assert same(pool.apply(identity, (value,)), value)
    assert same(pool.submit(identity, x=mutable).result(timeout=30), mutable)


def test_a_writable_buffer_arrives_writable_and_a_copy(make_pool: MakePool) -> None:
    pool = make_pool(1)
    mutable = bytearray(b"a" * (2 * BIG))
    back = pool.apply(scribble, (mutable,))
    assert type(back) is bytearray and back[:1] == b"!" and mutable[:1] == b"a"
    frame = Frame(bytearray(2 * BIG))
    assert pool.apply(frame_writable, (frame,)) is True
    assert pool.apply(frame_writable, (Frame(bytes(2 * BIG)),)) is False
    back_frame = pool.apply(scribble, (frame,))
    assert bytes(back_frame.data[:1]) == b"!" and frame.data[:1] == b"\0"


def test_changing_a_bytearray_after_submitting_does_not_change_the_task(
    make_pool: MakePool,
) -> None:
    """What was submitted is what runs, as if it had been pickled at submit."""
    pool = make_pool(1)
    mutable = bytearray(b"a" * (2 * BIG))
    result = pool.apply_async(sleep_then_first_byte, (0.3, mutable))
    mutable[0] = ord("z")
    mutable.extend(b"more")  # not locked by an export either
    assert result.get(timeout=30) == ord("a")


def test_out_of_band_in_maps_and_in_the_executor(make_pool: MakePool) -> None:
    blobs = [bytes([n]) * (BIG + n) for n in range(4)]
    assert make_pool(2).map(len, blobs, chunksize=1) == [len(b) for b in blobs]
    with hookpool.ProcessPoolExecutor(1) as executor:
        assert same(list(executor.map(identity, blobs)), blobs)


sizes = st.sampled_from([0, 1, BIG - 1, BIG, BIG + 1, 3 * BIG])
leaves = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.sampled_from([None, True, False, 1j]),
    # Not plain: pickled by reference, or through a reducer (an IntEnum, a Path).
    st.sampled_from([signal.SIGTERM, pathlib.PurePosixPath("/tmp"), identity]),
    st.builds(lambda n, b: bytes([b]) * n, sizes, st.integers(0, 255)),
    st.builds(lambda n, b: bytearray([b]) * n, sizes, st.integers(0, 255)),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=20),
        st.lists(inner, max_size=20).map(tuple),
        st.dictionaries(st.text(max_size=3), inner, max_size=20),
    ),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None)
@given(values)
def test_dumps_data_round_trips_any_nesting(value: Any) -> None:
    """Whatever is lifted out of band and wherever: it comes back equal and same-typed,
    and the caller's object is untouched."""
    before = pickle.dumps(value)
    data, buffers = dumps_data(value)
    assert same(loads_data(data, tuple(b.raw() for b in buffers)), value)
    assert pickle.dumps(value) == before


@settings(max_examples=100, deadline=None)
@given(values)
def test_plain_data_is_pickled_as_the_full_path_would(value: Any) -> None:
    """The short path for numbers, strings and small bytes in containers gives the same
    pickle as the full one, and anything else (large bytes, objects pickled by
    reference or by a reducer) takes the full path."""
    data, buffers = dumps_data(value)
    if _serialize._is_plain(value, _serialize._LIFT_DEPTH):
        assert not buffers
        full = io.BytesIO()
        _serialize._Pickler(full, 5).dump(value)  # the pickler of the full path
        assert data == full.getvalue()
    assert not _serialize._is_plain((value, identity), _serialize._LIFT_DEPTH)
    assert not _serialize._is_plain([signal.SIGTERM], _serialize._LIFT_DEPTH)
    assert not _serialize._is_plain({"k": b"x" * BIG}, _serialize._LIFT_DEPTH)


def test_a_snapshot_does_not_follow_later_changes() -> None:
    mutable = bytearray(b"a" * BIG)
    data, buffers = dumps_data((mutable,))
    mutable[0] = ord("z")
    assert loads_data(data, buffers)[0][:1] == b"a"
    data, buffers = dumps_data((mutable,), snapshot=False)  # a worker's own result
    assert buffers and buffers[0].raw().obj is mutable


def test_a_large_frame_cut_short_by_a_signal_is_read_whole() -> None:
    """recv(MSG_WAITALL) returns early when a signal arrives mid-frame: the rest is read."""
    left, right = socket.socketpair()
    payload = bytes(range(256)) * 4096  # 1 MiB: a "large" frame

    class Interrupted:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock
            self.calls = 0

        def recv(self, size: int, flags: int = 0) -> bytes:
            self.calls += 1
            if self.calls == 1:
                return self.sock.recv(min(size, 1000), flags & ~socket.MSG_WAITALL)
            return self.sock.recv(size, flags)

    writer = threading.Thread(target=left.sendall, args=(payload,))
    writer.start()
    try:
        got = wire.Inbox._recv_bytes(Interrupted(right), len(payload))  # type: ignore[arg-type]
    finally:
        writer.join(10)
        left.close()
        right.close()
    assert got == payload


def test_inbox_reads_flags_and_types_from_a_real_pipe() -> None:
    """Read-only buffers arrive as bytes, writable ones as bytearray, small and large."""
    import multiprocessing

    ours, theirs = multiprocessing.Pipe(duplex=True)
    inbox = wire.Inbox(theirs)
    try:
        for size in (BIG, 5 * BIG):
            buffers = (pickle.PickleBuffer(bytes(size)), pickle.PickleBuffer(bytearray(size)))
            sent = wire.Call(1, 0, (1, b"fn", False), pickle.dumps(0), buffers)
            writer = threading.Thread(target=wire.send, args=(ours, [sent]))
            writer.start()
            (call,) = inbox.recv()
            writer.join(10)
            assert isinstance(call, wire.Call)
            assert [type(b) for b in call.buffers] == [bytes, bytearray]
            assert [len(b) for b in call.buffers] == [size, size]
    finally:
        inbox.close()
        ours.close()
        theirs.close()


@pytest.mark.parametrize("size", [0, 1, 16383, 16384, 16385, 3 * 1024 * 1024 + 7])
def test_a_worker_end_writes_frames_a_connection_reads(size: int) -> None:
    """``PipeEnd`` (a worker's pipe, without multiprocessing.connection) frames
    exactly as ``Connection.send_bytes`` does, around the size where it stops joining
    the header to the payload, and for large payloads."""
    import multiprocessing

    ours, theirs = multiprocessing.Pipe(duplex=True)
    end = wire.PipeEnd(os.dup(theirs.fileno()))
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    writer = threading.Thread(target=end.send_bytes, args=(memoryview(payload),))
    try:
        writer.start()
        assert ours.recv_bytes() == payload
        writer.join(10)
        end.send_bytes(b"next")  # the stream is still in step
        assert ours.recv_bytes() == b"next"
    finally:
        end.close()
        ours.close()
        theirs.close()
