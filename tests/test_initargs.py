"""Objects that may only be shared by inheritance reach the workers through initargs
(made from the spawn context); ones made for a fork context are refused in the parent."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import pytest
from tasks import counts, identity, init_record, pid, square
from tasks_hooks import (
    array_fill,
    barrier_wait,
    call_stored,
    condition_wait,
    event_set,
    event_wait,
    fin_count,
    get_global,
    joinable_get,
    lock_try,
    pipe_send,
    queue_put,
    shm_write,
    store,
    value_increment,
    wait_ready,
)

import hookpool

MakePool = Callable[..., hookpool.Pool]
ctx = hookpool.get_context()


def test_get_context_is_spawn() -> None:
    assert hookpool.get_context().get_start_method() == "spawn"
    assert hookpool.get_context() is multiprocessing.get_context("spawn")


def stored_pool(make_pool: MakePool, *objs: Any, processes: int = 1) -> hookpool.Pool:
    return make_pool(processes, initializer=store, initargs=objs)


# -- locks and semaphores: the parent holds it, the worker cannot take it -------------------


@pytest.mark.parametrize(
    "make",
    [ctx.Lock, ctx.RLock, ctx.Semaphore, ctx.BoundedSemaphore, lambda: ctx.Semaphore(1)],
    ids=["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Semaphore(1)"],
)
def test_lock_like(make_pool: MakePool, make: Callable[[], Any]) -> None:
    lock = make()
    pool = stored_pool(make_pool, lock)
    assert pool.apply(lock_try) is True
    assert lock.acquire(timeout=10)
    try:
        assert pool.apply(lock_try) is False  # the parent holds the very same lock
    finally:
        lock.release()
    assert pool.apply(lock_try) is True


def test_event(make_pool: MakePool) -> None:
    to_parent = ctx.Event()
    pool = stored_pool(make_pool, to_parent)
    assert not to_parent.is_set()
    assert pool.apply(event_set) is True
    assert to_parent.wait(10)


def test_event_from_parent(make_pool: MakePool) -> None:
    to_worker = ctx.Event()
    pool = stored_pool(make_pool, to_worker)
    assert pool.apply(event_wait, (0.01,)) is False
    to_worker.set()
    assert pool.apply(event_wait, (10,)) is True


def test_condition(make_pool: MakePool) -> None:
    cond = ctx.Condition()
    pool = stored_pool(make_pool, cond)
    result = pool.apply_async(condition_wait, (10,))
    deadline = time.monotonic() + 10
    while not result.ready() and time.monotonic() < deadline:
        with cond:
            cond.notify_all()  # a notify before the worker waits is lost: repeat it
        time.sleep(0.02)
    assert result.get(timeout=10) is True


def test_barrier(make_pool: MakePool) -> None:
    barrier = ctx.Barrier(3)
    pool = stored_pool(make_pool, barrier, processes=2)
    wait_ready(pool, 2)  # both tasks must run at once, one per worker
    results = [pool.apply_async(barrier_wait, (10,)) for _ in range(2)]
    index = barrier.wait(10)  # needs both workers and the parent
    indices = sorted([index] + [r.get(timeout=10) for r in results])
    assert indices == [0, 1, 2]


# -- queues ---------------------------------------------------------------------------------


def test_queue(make_pool: MakePool) -> None:
    queue = ctx.Queue()
    pool = stored_pool(make_pool, queue, processes=2)
    assert pool.map(queue_put, range(20), chunksize=1) == list(range(20))
    got = sorted(queue.get(timeout=10) for _ in range(20))
    assert got == list(range(20))


def test_simple_queue(make_pool: MakePool) -> None:
    queue = ctx.SimpleQueue()
    pool = stored_pool(make_pool, queue, processes=2)
    assert pool.map(queue_put, range(10), chunksize=1) == list(range(10))
    got = []
    for _ in range(10):
        assert not queue.empty()  # every put finished before its task returned
        got.append(queue.get())
    assert sorted(got) == list(range(10))
    queue.close()


def test_joinable_queue(make_pool: MakePool) -> None:
    queue = ctx.JoinableQueue()
    pool = stored_pool(make_pool, queue, processes=2)
    for item in range(6):
        queue.put(item)
    got = sorted(pool.map(joinable_get, [10] * 6, chunksize=1))
    assert got == list(range(6))
    joiner = threading.Thread(target=queue.join, daemon=True)
    joiner.start()
    joiner.join(10)
    assert not joiner.is_alive(), "task_done() in the workers did not reach the parent"


# -- shared ctypes --------------------------------------------------------------------------


def test_value(make_pool: MakePool) -> None:
    value = ctx.Value("i", 0)
    pool = stored_pool(make_pool, value, processes=2)
    assert pool.map(value_increment, [50] * 8, chunksize=1) == [50] * 8
    assert value.value == 400


def test_array(make_pool: MakePool) -> None:
    array = ctx.Array("q", 10)
    pool = stored_pool(make_pool, array, processes=2)
    pool.map(array_fill, range(10), chunksize=1)
    assert list(array) == [i * i for i in range(10)]


def test_shared_ctypes_made_after_another_pool(make_pool: MakePool) -> None:
    """The order of creation does not matter: a Value/Array of a ctypes type first made
    after hookpool already pickled something in this thread still passes."""
    assert make_pool(1).apply(square, (2,)) == 4  # hookpool has pickled in this thread
    value = ctx.Value("H", 0)  # c_ushort: a type no other test shares
    array = ctx.Array("b", 7)  # c_byte * 7: likewise
    pool = make_pool(1, initializer=store, initargs=(value,))
    assert pool.apply(value_increment, (3,)) == 3
    assert value.value == 3
    pool = make_pool(1, initializer=store, initargs=(array,))
    assert pool.apply(array_fill, (2,)) == 2
    assert list(array) == [0, 0, 4, 0, 0, 0, 0]


# -- pipes and shared memory ----------------------------------------------------------------


@pytest.mark.parametrize("duplex", [True, False])
def test_pipe_connection(make_pool: MakePool, duplex: bool) -> None:
    reader, writer = ctx.Pipe(duplex=duplex)
    pool = stored_pool(make_pool, writer, processes=2)
    assert pool.map(pipe_send, range(6), chunksize=1) == list(range(6))
    got = []
    for _ in range(6):
        assert reader.poll(10)
        got.append(reader.recv())
    assert sorted(item for _, item in got) == list(range(6))
    assert {pid for pid, _ in got} <= set(pool.worker_pids)
    reader.close()
    writer.close()


@pytest.fixture
def shm() -> Iterator[shared_memory.SharedMemory]:
    block = shared_memory.SharedMemory(create=True, size=64)
    try:
        yield block
    finally:
        block.close()
        block.unlink()


def test_shared_memory(make_pool: MakePool, shm: shared_memory.SharedMemory) -> None:
    pool = stored_pool(make_pool, shm, processes=2)
    assert pool.apply(shm_write, (0, b"hello")) == 5
    assert pool.apply(shm_write, (5, b" world")) == 6
    view = shm.buf[:11]
    try:
        assert bytes(view) == b"hello world"
    finally:
        view.release()


def test_shared_objects_reach_replacement_workers(make_pool: MakePool) -> None:
    """With recycling, every new worker gets the same object again."""
    value = ctx.Value("i", 0)
    pool = make_pool(2, initializer=store, initargs=(value,), maxtasksperchild=2)
    assert pool.map(value_increment, [5] * 10, chunksize=1) == [5] * 10
    assert value.value == 50


def test_shared_objects_in_finalargs(make_pool: MakePool, tmp_path: Path) -> None:
    """finalargs pass by inheritance too: each finalizer counts itself in a Value."""
    value = ctx.Value("i", 0)
    pool = make_pool(
        2,
        initializer=init_record,
        initargs=(str(tmp_path),),
        finalizer=fin_count,
        finalargs=(value,),
        maxtasksperchild=1,
    )
    pids = set(pool.map(pid, range(6), chunksize=1))
    pool.close()
    pool.join()
    inits, _ = counts(str(tmp_path))
    assert len(pids) == 6
    assert value.value == len(inits) >= 6


# -- lambdas and closures -------------------------------------------------------------------


def test_lambda_in_initargs(make_pool: MakePool) -> None:
    pool = stored_pool(make_pool, lambda x: x * 3)
    assert pool.apply(call_stored, (5,)) == 15


def test_closure_in_initargs(make_pool: MakePool) -> None:
    def make_adder(n: int) -> Callable[[int], int]:
        def add(x: int) -> int:
            return x + n

        return add

    pool = stored_pool(make_pool, make_adder(10), processes=2)
    assert pool.map(call_stored, range(4)) == [10, 11, 12, 13]


def test_lambda_initializer(make_pool: MakePool) -> None:
    import tasks_hooks

    pool = make_pool(2, initializer=lambda v: tasks_hooks._g.__setitem__("v", v), initargs=(7,))
    assert pool.map(get_global, ["v"] * 4) == [7] * 4


def test_closure_initializer(make_pool: MakePool, tmp_path: Path) -> None:
    import tasks_hooks

    directory = str(tmp_path)
    settings = {"factor": 6}

    def setup() -> None:
        tasks_hooks._g["factor"] = settings["factor"]
        init_record(directory)  # (the marker is written whole: the test reads it meanwhile)

    pool = make_pool(2, initializer=setup)
    assert pool.map(get_global, ["factor"] * 4) == [6] * 4
    assert counts(directory)[0]


@pytest.mark.parametrize("kind", ["Lock", "Queue", "Value", "Pipe", "SharedMemory"])
def test_closure_initializer_capturing_shared_object(
    make_pool: MakePool, kind: str, shm: shared_memory.SharedMemory
) -> None:
    """An inheritance-only object captured by a closure initializer (pickled while the
    worker is spawned, like initargs) reaches the worker as the same object."""
    import tasks_hooks

    obj: Any
    if kind == "Lock":
        obj = ctx.Lock()
    elif kind == "Queue":
        obj = ctx.Queue()
    elif kind == "Value":
        obj = ctx.Value("i", 0)
    elif kind == "Pipe":
        reader, obj = ctx.Pipe(duplex=False)
    else:
        obj = shm

    def setup() -> None:
        tasks_hooks._g["objs"] = (obj,)

    pool = make_pool(1, initializer=setup)
    if kind == "Lock":
        assert obj.acquire(timeout=10)
        try:
            assert pool.apply_async(lock_try).get(timeout=10) is False
        finally:
            obj.release()
    elif kind == "Queue":
        assert pool.apply_async(queue_put, ("x",)).get(timeout=10) == "x"
        assert obj.get(timeout=5) == "x"
    elif kind == "Value":
        assert pool.apply_async(value_increment, (3,)).get(timeout=10) == 3
        assert obj.value == 3
    elif kind == "Pipe":
        assert pool.apply_async(pipe_send, ("x",)).get(timeout=10) == "x"
        assert reader.poll(10)
        assert reader.recv()[1] == "x"
    else:
        assert pool.apply_async(shm_write, (0, b"abc")).get(timeout=10) == 3
        view = obj.buf[:3]
        try:
            assert bytes(view) == b"abc"
        finally:
            view.release()


# -- objects made for a fork context are refused in the parent ------------------------------

fork = multiprocessing.get_context("fork")

FORK_MAKERS: dict[str, Callable[[], Any]] = {
    "Lock": fork.Lock,
    "RLock": fork.RLock,
    "Semaphore": fork.Semaphore,
    "Event": fork.Event,
    "Condition": fork.Condition,
    "Barrier": lambda: fork.Barrier(2),
    "Queue": fork.Queue,
    "SimpleQueue": fork.SimpleQueue,
    "JoinableQueue": fork.JoinableQueue,
    "Value": lambda: fork.Value("i", 0),
    "Array": lambda: fork.Array("i", 4),
}


def child_pids() -> set[int]:
    """Live children of this process, except multiprocessing's helper processes."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        for word in text.split():
            try:
                cmdline = Path(f"/proc/{word}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" in cmdline or b"forkserver" in cmdline:
                continue
            found.add(int(word))
    return found


@pytest.mark.parametrize("where", ["initargs", "finalargs"])
@pytest.mark.parametrize("kind", sorted(FORK_MAKERS))
def test_fork_context_object_is_refused(kind: str, where: str) -> None:
    obj = FORK_MAKERS[kind]()
    before = child_pids()
    hooks: dict[str, Any] = (
        {"initializer": store, "initargs": (obj,)}
        if where == "initargs"
        else {"finalizer": identity, "finalargs": (obj,)}
    )
    with pytest.raises(ValueError) as info:
        pool = hookpool.Pool(2, **hooks)
        pool.terminate()  # not reached when hookpool refuses it
    message = str(info.value)
    assert "fork" in message and "spawn" in message, message
    assert "Create it from hookpool's context instead: hookpool.get_context()" in message
    assert child_pids() <= before, "a worker was started (or left behind)"


def test_fork_lock_inside_a_tuple_is_refused() -> None:
    with pytest.raises(ValueError, match="fork"):
        hookpool.Pool(1, initializer=store, initargs=({"locks": [fork.Lock()]},))


def test_fork_lock_captured_by_closure_is_refused() -> None:
    lock = fork.Lock()

    def setup() -> None:
        store(lock)

    with pytest.raises(ValueError) as info:
        pool = hookpool.Pool(1, initializer=setup)
        pool.terminate()
    message = str(info.value)
    assert "fork" in message and "spawn" in message, message


def test_pool_usable_after_a_refusal(make_pool: MakePool) -> None:
    with pytest.raises(ValueError):
        hookpool.Pool(1, initializer=store, initargs=(fork.Lock(),))
    lock = ctx.Lock()
    pool = stored_pool(make_pool, lock)
    assert pool.apply(lock_try) is True
    assert pool.apply(square, (4,)) == 16
