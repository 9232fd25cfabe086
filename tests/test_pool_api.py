"""The ``multiprocessing.Pool`` interface of ``hookpool.Pool``.

Where the standard library defines the behaviour, the same test runs against
``multiprocessing.get_context("spawn").Pool`` too (the ``stdlib`` parameter), so the
expected values, exception types and messages are the standard library's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import itertools
import multiprocessing
import multiprocessing.pool
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks
import tasks_api
from conftest import assert_gone, run_script, shared_pool

import hookpool
import hookpool._pool

FLAVOURS = ["hookpool", "stdlib"]


def _stdlib_pool(*args: Any, **kwargs: Any) -> multiprocessing.pool.Pool:
    return multiprocessing.get_context("spawn").Pool(*args, **kwargs)


def _pids(pool: Any) -> list[int]:
    if isinstance(pool, hookpool.Pool):
        return pool.worker_pids
    return [w.pid for w in pool._pool]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


pytestmark = pytest.mark.usefixtures("collect_stopped_pools")


@pytest.fixture(scope="module", params=FLAVOURS)
def pool(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One 2-worker pool per flavour, shared by the tests that leave it running."""
    yield from shared_pool(hookpool.Pool(2) if request.param == "hookpool" else _stdlib_pool(2))


@pytest.fixture(params=FLAVOURS)
def new_pool(
    request: pytest.FixtureRequest, make_pool: Callable[..., hookpool.Pool]
) -> Iterator[Callable[..., Any]]:
    """Make a fresh pool of the parametrized flavour (for tests that close or break it)."""
    stdlib_pools: list[multiprocessing.pool.Pool] = []

    def new(*args: Any, **kwargs: Any) -> Any:
        if request.param == "hookpool":
            return make_pool(*args, **kwargs)
        made = _stdlib_pool(*args, **kwargs)
        stdlib_pools.append(made)
        return made

    yield new
    pids = [pid for p in stdlib_pools for pid in _pids(p)]
    for made in stdlib_pools:
        made.terminate()
        made.join()
    assert_gone(pids)


# -- apply / apply_async -----------------------------------------------------------------


def test_apply(pool: Any) -> None:
    assert pool.apply(tasks.add, (2, 3)) == 5
    assert pool.apply(tasks.add, (2,), {"b": 40}) == 42
    assert pool.apply(tasks.pid) in _pids(pool)


def test_apply_raises_the_task_exception(pool: Any) -> None:
    with pytest.raises(ValueError, match=r"^boom$") as info:
        pool.apply(tasks.raise_value_error, ("boom",))
    assert type(info.value) is ValueError
    assert info.value.args == ("boom",)


def test_apply_async_callback_receives_the_result(pool: Any) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    result = pool.apply_async(tasks.square, (7,), callback=got.append, error_callback=errors.append)
    assert result.get(timeout=10) == 49
    _wait_for(lambda: bool(got))
    assert got == [49]
    assert errors == []
    assert result.ready()
    assert result.successful()


def test_apply_async_error_callback_receives_the_exception(pool: Any) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    result = pool.apply_async(
        tasks.raise_value_error, ("bad input",), callback=got.append, error_callback=errors.append
    )
    with pytest.raises(ValueError, match="bad input"):
        result.get(timeout=10)
    _wait_for(lambda: bool(errors))
    assert got == []
    assert len(errors) == 1
    assert type(errors[0]) is ValueError
    assert errors[0].args == ("bad input",)
    assert result.ready()
    assert not result.successful()


class _BlockingCallback:
    """A callback that blocks (in the pool's result thread) until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[Any] = []

    def __call__(self, value: Any) -> None:
        self.entered.set()
        self.release.wait(30)
        self.seen.append(value)


def _state_while_callback_runs(result: Any, callback: _BlockingCallback) -> tuple[bool, Any]:
    """(ready(), what get(timeout=0.1) gave) while the callback is still running."""
    try:
        assert callback.entered.wait(30), "the callback was never called"
        ready = result.ready()
        try:
            early: Any = ("returned", result.get(timeout=0.1))
        except multiprocessing.TimeoutError:
            early = "not ready"
        except Exception as exc:
            early = ("raised", type(exc).__name__)
        return ready, early
    finally:
        callback.release.set()


def test_result_is_not_ready_before_its_callback_has_run(pool: Any) -> None:
    """The standard library runs the callback before the result becomes ready, so code
    that collects results with callbacks can read them as soon as get()/wait() return."""
    callback = _BlockingCallback()
    result = pool.apply_async(tasks.square, (4,), callback=callback)
    ready, early = _state_while_callback_runs(result, callback)
    assert (ready, early) == (False, "not ready")
    assert result.get(timeout=10) == 16
    assert callback.seen == [16]


def test_result_is_not_ready_before_its_error_callback_has_run(pool: Any) -> None:
    callback = _BlockingCallback()
    result = pool.apply_async(tasks.raise_value_error, ("late",), error_callback=callback)
    ready, early = _state_while_callback_runs(result, callback)
    assert (ready, early) == (False, "not ready")
    result.wait(timeout=10)
    assert [type(e) for e in callback.seen] == [ValueError]


def test_map_result_is_not_ready_before_its_callback_has_run(pool: Any) -> None:
    callback = _BlockingCallback()
    result = pool.map_async(tasks.square, range(5), callback=callback)
    ready, early = _state_while_callback_runs(result, callback)
    assert (ready, early) == (False, "not ready")
    assert result.get(timeout=10) == [0, 1, 4, 9, 16]
    assert callback.seen == [[0, 1, 4, 9, 16]]


def test_get_timeout_raises_multiprocessing_timeout_error(new_pool: Callable[..., Any]) -> None:
    pool = new_pool(1)
    result = pool.apply_async(tasks.sleep_then, (0.5, "late"))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    assert not result.ready()
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    result.wait(0.05)  # returns after the timeout, without raising
    assert not result.ready()
    result.wait()
    assert result.ready()
    assert result.successful()
    assert result.get(timeout=0) == "late"


def test_wait_ready_successful_on_a_failed_task(pool: Any) -> None:
    result = pool.apply_async(tasks.raise_value_error, ("x",))
    assert result.wait(timeout=10) is None
    assert result.ready()
    assert result.successful() is False


def test_task_raising_builtin_timeout_error_is_not_converted(pool: Any) -> None:
    """A TimeoutError raised by the task is the task's, not a get() timeout."""
    for timeout in (None, 30):
        result = pool.apply_async(tasks_api.raise_builtin_timeout, ("own",))
        with pytest.raises(TimeoutError) as info:
            result.get(timeout=timeout)
        assert type(info.value) is TimeoutError
        assert not isinstance(info.value, multiprocessing.TimeoutError)
        assert info.value.args == ("own",)
        assert result.ready()


def test_submit_task_raising_builtin_timeout_error(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(1)
    future = pool.submit(tasks_api.raise_builtin_timeout, "own")
    with pytest.raises(TimeoutError) as info:
        future.result(timeout=30)
    assert type(info.value) is TimeoutError
    assert not isinstance(info.value, multiprocessing.TimeoutError)
    assert future.done()


# -- map / starmap -----------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
def test_map(pool: Any, chunksize: int | None) -> None:
    assert pool.map(tasks.square, range(20), chunksize) == [x * x for x in range(20)]


def test_map_empty_input(pool: Any) -> None:
    assert pool.map(tasks.square, []) == []
    assert pool.map(tasks.square, iter([])) == []
    assert pool.map_async(tasks.square, []).get(timeout=10) == []
    assert pool.starmap(tasks.add, []) == []


def test_map_generator_input(pool: Any) -> None:
    items = (x for x in range(13))
    assert pool.map(tasks.square, items, 2) == [x * x for x in range(13)]


def test_map_raises_the_failing_items_error(pool: Any) -> None:
    with pytest.raises(ValueError, match=r"^bad item 6$"):
        pool.map(functools.partial(tasks.fail_at, bad=6), range(10), 3)


def test_map_async(pool: Any) -> None:
    got: list[Any] = []
    result = pool.map_async(tasks.square, range(6), 2, callback=got.append)
    assert result.get(timeout=10) == [0, 1, 4, 9, 16, 25]
    _wait_for(lambda: bool(got))
    assert got == [[0, 1, 4, 9, 16, 25]]
    assert result.successful()


def test_map_async_error_callback(pool: Any) -> None:
    errors: list[BaseException] = []
    result = pool.map_async(
        functools.partial(tasks.fail_at, bad=2), range(4), 1, error_callback=errors.append
    )
    with pytest.raises(ValueError, match="bad item 2"):
        result.get(timeout=10)
    _wait_for(lambda: bool(errors))
    assert [e.args for e in errors] == [("bad item 2",)]
    assert not result.successful()


@pytest.mark.parametrize("size", [1, 7, 8, 9, 33, 100])
def test_default_map_chunksize_is_the_standard_librarys(
    pool: Any, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default chunksize of map is computed as the standard library computes it."""
    sizes: list[int] = []
    if isinstance(pool, hookpool.Pool):
        real = hookpool._pool.chunked

        def spy(iterable: Any, chunksize: int) -> Any:
            sizes.append(chunksize)
            return real(iterable, chunksize)

        monkeypatch.setattr(hookpool._pool, "chunked", spy)
    else:
        real_get_tasks = multiprocessing.pool.Pool._get_tasks

        def spy_get_tasks(func: Any, it: Any, chunksize: int) -> Any:
            sizes.append(chunksize)
            return real_get_tasks(func, it, chunksize)

        monkeypatch.setattr(multiprocessing.pool.Pool, "_get_tasks", staticmethod(spy_get_tasks))
    assert pool.map(tasks.square, list(range(size))) == [x * x for x in range(size)]
    chunksize, extra = divmod(size, 2 * 4)  # 2 workers
    assert sizes == [chunksize + bool(extra)]


def test_map_chunksize_below_one_is_refused(make_pool: Callable[..., Any]) -> None:
    """The standard library's imap message; its map silently returns Nones for 0."""
    pool = make_pool(1)
    for method in (pool.map, pool.map_async, pool.imap, pool.imap_unordered):
        with pytest.raises(ValueError, match=r"^Chunksize must be 1\+, not 0$"):
            method(tasks.square, [1, 2], 0)
    with pytest.raises(ValueError, match="Chunksize"):
        pool.starmap(tasks.add, [(1, 2)], -1)
    assert pool.map(tasks.square, [3]) == [9]


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_starmap(pool: Any, chunksize: int | None) -> None:
    pairs = [(i, 10 * i) for i in range(11)]
    assert pool.starmap(tasks.add, pairs, chunksize) == [a + b for a, b in pairs]
    got: list[Any] = []
    result = pool.starmap_async(tasks.add, iter(pairs), chunksize, callback=got.append)
    assert result.get(timeout=10) == [a + b for a, b in pairs]
    _wait_for(lambda: bool(got))
    assert got == [[a + b for a, b in pairs]]


def test_starmap_async_error(pool: Any) -> None:
    result = pool.starmap_async(tasks.fail_at, [(1, 0), (2, 2), (3, 0)])
    with pytest.raises(ValueError, match="bad item 2"):
        result.get(timeout=10)


# -- imap / imap_unordered ---------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 2, 5, 50])
def test_imap(pool: Any, chunksize: int) -> None:
    assert list(pool.imap(tasks.square, range(17), chunksize)) == [x * x for x in range(17)]
    assert list(pool.imap(tasks.square, iter(range(5)), chunksize)) == [0, 1, 4, 9, 16]
    assert list(pool.imap(tasks.square, [], chunksize)) == []


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_unordered(pool: Any, chunksize: int) -> None:
    out = list(pool.imap_unordered(tasks.square, range(17), chunksize))
    assert sorted(out) == [x * x for x in range(17)]
    assert len(out) == 17


def test_imap_unordered_yields_in_completion_order(pool: Any) -> None:
    items = [(0.5, "slow"), (0.0, "fast")]
    out = list(pool.imap_unordered(tasks_api.sleep_pair, items))
    assert out == ["fast", "slow"]


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_next_timeout(new_pool: Callable[..., Any], method: str) -> None:
    pool = new_pool(1)
    iterator = getattr(pool, method)(functools.partial(tasks.sleep_then, 0.5), ["v"])
    with pytest.raises(multiprocessing.TimeoutError):
        iterator.next(timeout=0.05)
    assert iterator.next(timeout=30) == "v"  # sleep_then(0.5, "v")
    with pytest.raises(StopIteration):
        iterator.next(timeout=30)


def test_imap_continues_after_an_item_raised(pool: Any) -> None:
    iterator = pool.imap(functools.partial(tasks.fail_at, bad=2), range(6))
    assert next(iterator) == 0
    assert next(iterator) == 1
    with pytest.raises(ValueError, match=r"^bad item 2$"):
        next(iterator)
    assert list(iterator) == [3, 4, 5]


def test_imap_unordered_continues_after_an_item_raised(pool: Any) -> None:
    iterator = pool.imap_unordered(functools.partial(tasks.fail_at, bad=2), range(6))
    values: list[int] = []
    errors: list[BaseException] = []
    for _ in range(6):
        try:
            values.append(next(iterator))
        except ValueError as exc:
            errors.append(exc)
    with pytest.raises(StopIteration):
        next(iterator)
    assert sorted(values) == [0, 1, 3, 4, 5]
    assert [e.args for e in errors] == [("bad item 2",)]


def test_imap_reads_an_endless_input_lazily(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2)
    iterator = pool.imap(tasks.square, itertools.count())
    assert list(itertools.islice(iterator, 6)) == [0, 1, 4, 9, 16, 25]


# -- misuse --------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"processes": 0}, ValueError, "Number of processes must be at least 1"),
        ({"processes": -3}, ValueError, "Number of processes must be at least 1"),
        ({"maxtasksperchild": 0}, ValueError, "maxtasksperchild must be a positive int or None"),
        ({"maxtasksperchild": -1}, ValueError, "maxtasksperchild must be a positive int or None"),
        ({"maxtasksperchild": 1.5}, ValueError, "maxtasksperchild must be a positive int or None"),
        ({"initializer": 42}, TypeError, "initializer must be a callable"),
    ],
)
def test_invalid_arguments(flavour: str, kwargs: dict[str, Any], error: type, message: str) -> None:
    factory = hookpool.Pool if flavour == "hookpool" else _stdlib_pool
    kwargs = {"processes": 1, **kwargs}
    with pytest.raises(error) as info:
        factory(**kwargs)
    assert type(info.value) is error
    assert str(info.value) == message


def test_using_a_closed_pool(new_pool: Callable[..., Any]) -> None:
    pool = new_pool(1)
    assert pool.apply(tasks.square, (2,)) == 4
    pool.close()
    calls: list[Callable[[], Any]] = [
        lambda: pool.apply(tasks.square, (1,)),
        lambda: pool.apply_async(tasks.square, (1,)),
        lambda: pool.map(tasks.square, [1]),
        lambda: pool.map_async(tasks.square, [1]),
        lambda: pool.starmap(tasks.add, [(1, 2)]),
        lambda: pool.starmap_async(tasks.add, [(1, 2)]),
        lambda: pool.imap(tasks.square, [1]),
        lambda: pool.imap_unordered(tasks.square, [1]),
    ]
    if isinstance(pool, hookpool.Pool):
        calls.append(lambda: pool.submit(tasks.square, 1))
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        assert type(info.value) is ValueError
        assert str(info.value) == "Pool not running"
    pool.join()


def test_using_a_terminated_pool(new_pool: Callable[..., Any]) -> None:
    pool = new_pool(1)
    pool.terminate()
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        pool.apply(tasks.square, (1,))
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        pool.map(tasks.square, [1])
    pool.join()


def test_join_before_close(new_pool: Callable[..., Any]) -> None:
    pool = new_pool(1)
    with pytest.raises(ValueError) as info:
        pool.join()
    assert type(info.value) is ValueError
    assert str(info.value) == "Pool is still running"
    assert pool.apply(tasks.square, (3,)) == 9  # still usable


def test_successful_before_ready(new_pool: Callable[..., Any]) -> None:
    pool = new_pool(1)
    result = pool.apply_async(tasks.sleep_then, (2.0,))
    with pytest.raises(ValueError, match="not ready"):
        result.successful()


def test_close_then_join_runs_queued_work(new_pool: Callable[..., Any]) -> None:
    pool = new_pool(2)
    result = pool.map_async(tasks.square, range(10), 1)
    pool.close()
    pool.join()
    assert result.ready()
    assert result.get(timeout=0) == [x * x for x in range(10)]


def test_pool_cannot_be_pickled(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(1)
    with pytest.raises(NotImplementedError, match="cannot be passed between processes"):
        pool.apply(tasks.identity, (pool,))


# -- the with block ----------------------------------------------------------------------


def test_with_exit_terminates(make_pool: Callable[..., Any], tmp_path: Path) -> None:
    """Unlike the standard library, whose results hang forever after terminate():
    queued tasks are cancelled, the running one fails with PoolTerminatedError."""
    pool = make_pool(1)
    # A first task that takes a moment, so that the worker does not prefetch the
    # queued tasks (it only does so behind tasks known to be short).
    assert pool.apply(tasks.sleep_then, (0.1, "warm")) == "warm"
    started = tmp_path / "started"
    with pool as entered:
        assert entered is pool
        running = pool.apply_async(tasks_api.touch_then_sleep, (str(started), 60, "never"))
        queued = [pool.apply_async(tasks.square, (i,)) for i in range(3)]
        queued_future = pool.submit(tasks.square, 9)
        _wait_for(started.exists)
        pids = pool.worker_pids
    assert_gone(pids)
    with pytest.raises(hookpool.PoolTerminatedError):
        running.get(timeout=10)
    assert running.ready()
    assert not running.successful()
    for result in queued:
        with pytest.raises(concurrent.futures.CancelledError):
            result.get(timeout=10)
        assert result.ready()
        assert not result.successful()
    assert queued_future.cancelled()
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        pool.apply(tasks.square, (1,))


def test_with_exit_fails_a_running_map(make_pool: Callable[..., Any], tmp_path: Path) -> None:
    pool = make_pool(2)
    started = tmp_path / "started"
    with pool:
        result = pool.map_async(
            functools.partial(tasks_api.touch_then_sleep, str(started)), [60, 60], 1
        )
        _wait_for(started.exists)
    with pytest.raises(hookpool.PoolTerminatedError):
        result.get(timeout=10)


def test_with_exit_on_an_exception_inside(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(1)
    with pytest.raises(KeyError), pool:
        assert pool.apply(tasks.square, (2,)) == 4
        raise KeyError("inside")
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        pool.apply(tasks.square, (1,))


def _unread_bytes(sockets: list[socket.socket]) -> bytes:
    readable, _, _ = select.select(sockets, [], [], 0)
    return b"".join(s.recv(100) for s in readable)


def test_with_exit_after_close_and_join_writes_to_no_other_file(
    make_pool: Callable[..., Any],
) -> None:
    """`with Pool() as p: ...; p.close(); p.join()` is the usual idiom: the exit's
    terminate() comes after the pool has stopped and closed its own descriptors, whose
    numbers the OS may have handed to other files since. It must not write to them."""
    pool = make_pool(1)
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        with pool:
            assert pool.apply(tasks.square, (3,)) == 9
            pool.close()
            pool.join()
            # Someone else opens files: they get the lowest free descriptor numbers,
            # among them those the pool has just closed.
            pairs = [socket.socketpair() for _ in range(16)]
        stray = _unread_bytes([s for pair in pairs for s in pair])
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert stray == b"", f"terminate() of a stopped pool wrote {stray!r} into another file"


def test_collecting_a_terminated_pool_writes_to_no_other_file(tmp_path: Path) -> None:
    """Garbage collection terminates a pool; if that pool had already stopped, the
    descriptors it closed may belong to other files by now: it must not write to them."""
    pool = hookpool.Pool(1)
    pids = pool.worker_pids
    pool.terminate()
    paths = [tmp_path / f"file-{i}" for i in range(8)]
    files = [path.open("wb") for path in paths]  # reuse the freed descriptor numbers
    try:
        del pool
        gc.collect()
    finally:
        for file in files:
            file.close()
    assert_gone(pids)
    contents = {path.name: path.read_bytes() for path in paths}
    assert all(data == b"" for data in contents.values()), contents


# -- context= ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    ["spawn", "forkserver", multiprocessing.get_context("spawn")],
    ids=["spawn-name", "forkserver-name", "spawn-context"],
)
def test_accepted_contexts(make_pool: Callable[..., Any], context: Any) -> None:
    pool = make_pool(1, context=context)
    assert pool.apply(tasks.square, (6,)) == 36
    assert pool.apply(tasks.pid) in pool.worker_pids


FORKSERVER_PRELOAD_SCRIPT = """
import multiprocessing
import multiprocessing.forkserver
import os
import sys

import hookpool


MARKER = '''
import os
import sys

LOADED_IN = os.getpid()
IMPORTS = []  # (module, pid of the process that imported it), from here on


class Watch:
    def find_spec(self, name, path=None, target=None):
        IMPORTS.append((name, os.getpid()))


sys.meta_path.insert(0, Watch())
'''


def where_loaded(_):
    import marker

    server = os.getppid()
    return marker.LOADED_IN == server, ("hookpool._worker", server) in marker.IMPORTS


if __name__ == "__main__":
    with open("marker.py", "w") as f:
        f.write(MARKER)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["marker"])  # the program's own
    with hookpool.Pool(1, context="forkserver", maxtasksperchild=1) as pool:
        answers = pool.map(where_loaded, range(3), chunksize=1)
    print(multiprocessing.forkserver._forkserver._preload_modules)
    for preloaded in answers:
        print(*preloaded)
"""


def test_forkserver_preloads_the_worker_modules_and_keeps_the_programs(
    tmp_path: Path,
) -> None:
    # The server (each worker's parent) imports hookpool's worker module once, so that
    # a worker it forks (a replacement, with maxtasksperchild) does not import it again;
    # what the program asked it to preload stays, and is preloaded. The program's own
    # preloaded module watches the imports: hookpool._worker's, in the server's pid.
    proc = run_script(FORKSERVER_PRELOAD_SCRIPT, tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "['marker', 'hookpool._worker']"
    assert lines[1:] == ["True True"] * 3


def _manager_threads() -> int:
    return sum(t.name.endswith("-manager") for t in threading.enumerate())


@pytest.mark.parametrize(
    "context", ["fork", multiprocessing.get_context("fork")], ids=["name", "context"]
)
def test_fork_is_refused(context: Any) -> None:
    before = _manager_threads()
    with pytest.raises(ValueError) as info:
        hookpool.Pool(1, context=context)
    message = str(info.value)
    assert "'fork'" in message
    assert "spawn" in message
    assert "threads" in message  # why: a forked worker inherits threads and locks
    assert _manager_threads() <= before  # no pool was started


def test_unknown_context_is_refused() -> None:
    with pytest.raises(ValueError, match="'nonsense'"):
        hookpool.Pool(1, context="nonsense")
    with pytest.raises(TypeError, match="context must be"):
        hookpool.Pool(1, context=42)


# -- submit: concurrent.futures and asyncio -----------------------------------------------


def test_submit_returns_a_future(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2)
    future = pool.submit(tasks.add, 1, b=2)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=10) == 3
    failing = pool.submit(tasks.raise_value_error, "nope")
    assert isinstance(failing.exception(timeout=10), ValueError)
    with pytest.raises(ValueError, match="nope"):
        failing.result()


def test_submit_with_as_completed(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2)
    futures = {pool.submit(tasks.sleep_then, 0.01 * (i % 3), i): i for i in range(8)}
    seen = []
    for future in concurrent.futures.as_completed(futures, timeout=30):
        assert future.result() == futures[future]
        seen.append(futures[future])
    assert sorted(seen) == list(range(8))


def test_submit_with_wait(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2)
    futures = [pool.submit(tasks.square, i) for i in range(5)]
    done, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done
    assert done == set(futures)
    assert sorted(f.result() for f in done) == [0, 1, 4, 9, 16]

    failing = pool.submit(tasks.raise_value_error, "first")
    slow = pool.submit(tasks.sleep_then, 30)
    done, not_done = concurrent.futures.wait(
        [failing, slow], timeout=20, return_when=concurrent.futures.FIRST_EXCEPTION
    )
    assert done == {failing}
    assert not_done == {slow}


def test_submit_with_asyncio(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2)

    async def main() -> list[int]:
        values = await asyncio.wait_for(
            asyncio.gather(*(asyncio.wrap_future(pool.submit(tasks.square, i)) for i in range(6))),
            timeout=30,
        )
        with pytest.raises(ValueError, match="from asyncio"):
            await asyncio.wait_for(
                asyncio.wrap_future(pool.submit(tasks.raise_value_error, "from asyncio")), 30
            )
        return list(values)

    assert asyncio.run(main()) == [0, 1, 4, 9, 16, 25]


def test_cancelled_queued_future_never_runs(make_pool: Callable[..., Any], tmp_path: Path) -> None:
    """A future still queued behind a busy worker can be cancelled, and then never runs.

    The worker's first task is the long one (a fresh worker, as in most real uses)."""
    pool = make_pool(1)
    started = tmp_path / "busy"
    busy = pool.submit(tasks_api.touch_then_sleep, str(started), 1.0, "done")
    _wait_for(started.exists)
    marker = tmp_path / "must-not-exist"
    queued = pool.submit(tasks_api.write_file, str(marker))
    time.sleep(0.1)  # the user changes their mind a moment later, the worker still busy
    assert not busy.done()
    cancelled = queued.cancel()
    assert busy.result(timeout=10) == "done"
    assert pool.apply(tasks.square, (3,)) == 9  # anything queued before this has run
    state = repr(queued)
    del pool  # keep no pool alive in the frame of a failure report
    assert cancelled, f"cancel() refused on a future that had not started: {state}"
    assert queued.cancelled()
    assert not marker.exists()


def test_cancelled_queued_future_never_runs_behind_a_slow_worker(
    make_pool: Callable[..., Any], tmp_path: Path
) -> None:
    """The same, with a worker whose earlier task was slow (so none is queued into it)."""
    pool = make_pool(1)
    assert pool.apply(tasks.sleep_then, (0.1, "warm")) == "warm"
    started = tmp_path / "busy"
    busy = pool.submit(tasks_api.touch_then_sleep, str(started), 1.0, "done")
    _wait_for(started.exists)
    marker = tmp_path / "must-not-exist"
    queued = pool.submit(tasks_api.write_file, str(marker))
    time.sleep(0.1)
    assert not busy.done()
    assert queued.cancel()
    assert busy.result(timeout=10) == "done"
    assert pool.apply(tasks.square, (3,)) == 9
    assert queued.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result()
    assert not marker.exists()


def test_pool_cancel_of_a_queued_task_means_it_never_runs(
    make_pool: Callable[..., Any], tmp_path: Path
) -> None:
    """``Pool.cancel``: "A queued one never runs" (the worker's first task is a long one)."""
    pool = make_pool(1)
    started = tmp_path / "busy"
    busy = pool.submit(tasks_api.touch_then_sleep, str(started), 1.0, "done")
    _wait_for(started.exists)
    marker = tmp_path / "must-not-exist"
    queued = pool.apply_async(tasks_api.write_file, (str(marker),))
    time.sleep(0.1)
    assert not busy.done()
    assert pool.cancel(queued)
    with pytest.raises(concurrent.futures.CancelledError):
        queued.get(timeout=10)
    assert busy.result(timeout=10) == "done"  # the task ahead of it is not affected
    assert pool.apply(tasks.square, (3,)) == 9  # anything queued before this has run
    del pool
    assert not marker.exists(), "a task cancelled while queued ran anyway"


def test_async_result_of_a_cancelled_future(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(1)
    assert pool.apply(tasks.sleep_then, (0.1, "warm")) == "warm"
    busy = pool.apply_async(tasks.sleep_then, (0.5,))
    errors: list[BaseException] = []
    queued = pool.apply_async(tasks.square, (5,), error_callback=errors.append)
    assert queued.future.cancel()
    assert queued.ready()
    assert not queued.successful()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.get(timeout=10)
    assert [type(e) for e in errors] == [concurrent.futures.CancelledError]
    busy.get(timeout=10)


def test_repr(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(3)
    assert repr(pool) == "<hookpool.Pool state=RUNNING pool_size=3>"
    assert os.getpid() not in pool.worker_pids
