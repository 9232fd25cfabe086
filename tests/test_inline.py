"""Inline mode (issue 6, feature 3): the same API with no processes, for debugging and tests.

Hooks and tasks run in this process, so the hooks are counted here, in plain lists. The
parity tests run the same calls on real workers and inline, and compare.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_gone, run_script
from tasks import add, identity, pid, raise_value_error, square

import hookpool
import hookpool._inline
import hookpool._worker
from hookpool._spawn import ENV_VAR

#: What the hooks and tasks of this module saw, in this process.
EVENTS: list[Any] = []
RAISED: list[BaseException] = []


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_VAR, raising=False)
    EVENTS.clear()
    RAISED.clear()
    for gate in GATES.values():
        gate.clear()
    yield
    EVENTS.clear()
    RAISED.clear()


def init(tag: str) -> None:
    EVENTS.append(("init", tag, os.getpid(), threading.get_ident()))


def fin(tag: str) -> None:
    EVENTS.append(("fin", tag, os.getpid(), threading.get_ident()))


def hooks_seen() -> list[tuple[str, str]]:
    return [(kind, tag) for kind, tag, *_ in EVENTS]


def where(_: object = None) -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


def task_that_raises(x: int) -> None:
    marker = f"local of the task {x}"  # post-mortem must see this frame's locals
    error = KeyError(marker)
    RAISED.append(error)
    raise error


def call_helper_that_raises() -> None:
    _helper_that_raises()


def _helper_that_raises() -> None:
    raise ZeroDivisionError("deep")


class LockHoldingError(Exception):
    """An exception that cannot be pickled (it holds a thread lock)."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise LockHoldingError


def return_lock() -> Any:
    return threading.Lock()


def mutate(items: list[int]) -> list[int]:
    items.append(99)
    return items


GATES = {"started": threading.Event(), "release": threading.Event()}


def blocked() -> str:
    GATES["started"].set()
    assert GATES["release"].wait(30)
    EVENTS.append(("task", "done", os.getpid(), threading.get_ident()))
    return "ok"


def interrupt_at_one(x: int) -> int:
    EVENTS.append(x)
    if x == 1:
        raise KeyboardInterrupt
    return x


def frame_names(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def inline_pool(*args: Any, **kwargs: Any) -> hookpool.Pool:
    return hookpool.Pool(*args, inline=True, **kwargs)


# -- the hooks run once each, whatever ends the pool -------------------------------------

ENDINGS: dict[str, Callable[[Any], None]] = {
    "close+join": lambda pool: (pool.close(), pool.join()),
    "terminate": lambda pool: pool.terminate(),
    "with-exit": lambda pool: pool.__exit__(None, None, None),
    "close only": lambda pool: pool.close(),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_pool_hooks_run_once_each(ending: str) -> None:
    pool = inline_pool(
        4, initializer=init, initargs=("p",), finalizer=fin, finalargs=("p",), maxtasksperchild=1
    )
    assert hooks_seen() == [("init", "p")]  # at construction, before any task
    assert pool.map(square, range(20), chunksize=1) == [x * x for x in range(20)]
    assert pool.apply(square, (3,)) == 9
    assert list(pool.imap_unordered(square, range(5))) == [0, 1, 4, 9, 16]
    assert hooks_seen() == [("init", "p")]  # maxtasksperchild is ignored: no recycling
    assert pool.worker_pids == [os.getpid()]
    ENDINGS[ending](pool)
    assert hooks_seen() == [("init", "p"), ("fin", "p")]
    assert pool.worker_pids == []
    # Ending it again, any way, runs nothing more.
    pool.terminate()
    pool.close()
    pool.join()
    assert hooks_seen() == [("init", "p"), ("fin", "p")]
    # Both hooks ran in this process, in this thread.
    assert {tuple(e[2:]) for e in EVENTS} == {(os.getpid(), threading.get_ident())}


@pytest.mark.parametrize("wait", [True, False])
def test_executor_hooks_run_once_each(wait: bool) -> None:
    executor = hookpool.ProcessPoolExecutor(
        2,
        initializer=init,
        initargs=("e",),
        finalizer=fin,
        finalargs=("e",),
        max_tasks_per_child=1,
        inline=True,
    )
    assert hooks_seen() == [("init", "e")]
    assert [executor.submit(square, i).result() for i in range(5)] == [0, 1, 4, 9, 16]
    assert list(executor.map(add, range(3), range(3))) == [0, 2, 4]
    executor.shutdown(wait=wait)
    assert hooks_seen() == [("init", "e"), ("fin", "e")]
    executor.shutdown()
    assert hooks_seen() == [("init", "e"), ("fin", "e")]


def test_executor_with_exit_runs_the_finalizer_once() -> None:
    with hookpool.ProcessPoolExecutor(
        initializer=init, initargs=("x",), finalizer=fin, finalargs=("x",), inline=True
    ) as executor:
        assert executor.submit(square, 5).result() == 25
    assert hooks_seen() == [("init", "x"), ("fin", "x")]


def test_garbage_collection_runs_the_finalizer_once() -> None:
    pool = inline_pool(initializer=init, initargs=("g",), finalizer=fin, finalargs=("g",))
    assert pool.apply(square, (2,)) == 4
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool
        gc.collect()
    assert hooks_seen() == [("init", "g"), ("fin", "g")]


def test_close_waits_for_a_task_running_in_another_thread() -> None:
    """The 'worker' leaves when idle: the finalizer runs after the other thread's task."""
    pool = inline_pool(initializer=init, initargs=("t",), finalizer=fin, finalargs=("t",))
    started, release = GATES["started"], GATES["release"]  # module globals: they do
    # not pickle, and a task's arguments and closures are pickled inline too.
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(pool.apply(blocked)))
    thread.start()
    assert started.wait(30)
    pool.close()
    assert hooks_seen() == [("init", "t")]  # not while the task runs
    assert pool.worker_pids == [os.getpid()]
    assert pool._manager.join(timeout=0) is False
    release.set()
    pool.join()
    thread.join(30)
    assert results == ["ok"]
    assert hooks_seen() == [("init", "t"), ("task", "done"), ("fin", "t")]


def test_a_finalizer_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def bad_finalizer() -> None:
        raise RuntimeError("finalizer failed")

    pool = inline_pool(finalizer=bad_finalizer)
    with caplog.at_level(logging.ERROR, logger="hookpool"):
        pool.close()
        pool.join()
    (record,) = [r for r in caplog.records if "finalizer raised" in r.getMessage()]
    assert record.exc_info is not None
    assert "finalizer failed" in str(record.exc_info[1])


def test_an_initializer_error_breaks_the_pool_with_the_original_as_cause() -> None:
    def bad_initializer() -> None:
        raise ValueError("no database")

    pool = inline_pool(initializer=bad_initializer, finalizer=fin, finalargs=("b",))
    with pytest.raises(hookpool.PoolBrokenError) as info:
        pool.apply(square, (1,))
    initializer_error = info.value.__cause__
    assert isinstance(initializer_error, hookpool.InitializerError)
    original = initializer_error.__cause__
    assert isinstance(original, ValueError)
    assert "bad_initializer" in frame_names(original)
    with pytest.raises(hookpool.PoolBrokenError):
        pool.map(square, range(3))
    assert pool.worker_pids == []
    pool.terminate()
    assert hooks_seen() == []  # no finalizer where the initializer did not succeed


# -- tasks run here, and raise their own exceptions -----------------------------------------


def test_tasks_and_callbacks_run_in_the_calling_thread() -> None:
    here = (os.getpid(), threading.get_ident())
    with inline_pool(3) as pool:
        assert pool.apply(where) == here
        assert set(pool.map(where, range(10))) == {here}
        assert set(pool.imap(where, range(3))) == {here}
        assert pool.submit(where).result() == here
        seen: list[tuple[int, int]] = []
        pool.apply_async(where, callback=lambda _: seen.append(where())).get()
        assert seen == [here]
    with hookpool.ProcessPoolExecutor(2, inline=True) as executor:
        assert executor.submit(where).result() == here
        assert set(executor.map(where, range(5))) == {here}

    # ... and from another thread, in that thread.
    def from_a_thread() -> None:
        with inline_pool(1) as pool:
            seen.append(pool.apply(where))

    seen.clear()
    thread = threading.Thread(target=from_a_thread)
    thread.start()
    thread.join(30)
    assert seen == [(os.getpid(), thread.ident)]


def _assert_the_original(exc: BaseException) -> None:
    assert any(exc is raised for raised in RAISED), "not an object the task raised"
    names = frame_names(exc)
    assert "task_that_raises" in names
    # A debugger's post-mortem lands in the innermost frame: the task's, with its locals.
    tb = exc.__traceback__
    assert tb is not None
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_code.co_name == "task_that_raises"
    assert tb.tb_frame.f_locals["marker"] == f"local of the task {tb.tb_frame.f_locals['x']}"
    # Only the task's frames and the caller's: hookpool's inline machinery is cut out.
    machinery = {hookpool._inline.__file__, hookpool._worker.__file__}
    assert not machinery & {frame.filename for frame in traceback.extract_tb(exc.__traceback__)}
    assert exc.__cause__ is None  # no RemoteTraceback: the frames are real


def test_exceptions_are_the_original_objects_with_the_task_frames() -> None:
    with inline_pool(2) as pool:
        with pytest.raises(KeyError) as info:
            pool.apply(task_that_raises, (1,))
        _assert_the_original(info.value)
        with pytest.raises(KeyError) as info:
            pool.map(task_that_raises, [2, 3])
        _assert_the_original(info.value)
        assert info.value is RAISED[-2]  # both chunks ran; the first failed one's error
        with pytest.raises(KeyError) as info:
            next(pool.imap(task_that_raises, [4]))
        _assert_the_original(info.value)
        with pytest.raises(KeyError) as info:
            pool.submit(task_that_raises, 5).result()
        _assert_the_original(info.value)
        result = pool.apply_async(task_that_raises, (6,))
        assert result.ready()
        assert not result.successful()
        with pytest.raises(KeyError) as info:
            result.get()
        _assert_the_original(info.value)
        # Helpers called by the task are there too, in order.
        with pytest.raises(ZeroDivisionError) as info:
            pool.apply(call_helper_that_raises)
        names = frame_names(info.value)
        assert names.index("call_helper_that_raises") < names.index("_helper_that_raises")
        # An exception that could not travel from a worker is still itself here.
        with pytest.raises(LockHoldingError):
            pool.apply(raise_unpicklable)
    with hookpool.ProcessPoolExecutor(1, inline=True) as executor:
        with pytest.raises(KeyError) as info:
            executor.submit(task_that_raises, 7).result()
        _assert_the_original(info.value)
        with pytest.raises(KeyError) as info:
            list(executor.map(task_that_raises, [8]))
        _assert_the_original(info.value)


def test_keyboard_interrupt_stops_at_once_and_nothing_hangs() -> None:
    """Ctrl-C in a task is the user's: it propagates now, and the rest of the call is
    cancelled instead of running."""
    with inline_pool(1) as pool:
        with pytest.raises(KeyboardInterrupt):
            pool.map(interrupt_at_one, range(4), chunksize=1)
        assert EVENTS == [0, 1]
        with pytest.raises(KeyboardInterrupt):
            list(pool.imap(interrupt_at_one, range(4)))
        assert EVENTS == [0, 1, 0, 1]
        assert pool.apply(square, (4,)) == 16  # the pool still works


def test_arguments_and_results_are_pickled_as_with_processes() -> None:
    """Inline pickles what a worker would: unpicklable data fails the same way, and a
    task works on copies, not on the caller's objects."""
    with inline_pool(1) as pool:
        with pytest.raises(TypeError, match="pickle"):
            pool.apply(identity, (threading.Lock(),))
        with pytest.raises(RuntimeError, match="initargs"):
            pool.apply(identity, (hookpool.get_context().Lock(),))
        with pytest.raises(hookpool.ResultEncodingError):
            pool.apply(return_lock)
        items = [1, 2]
        assert pool.apply(mutate, (items,)) == [1, 2, 99]
        assert items == [1, 2]
        # Lambdas and closures, as with processes.
        offset = 10
        assert pool.map(lambda x: x + offset, [1, 2]) == [11, 12]


def test_imap_and_executor_map_read_their_input_as_the_consumer_pulls() -> None:
    read: list[int] = []

    def numbers() -> Iterator[int]:
        for i in range(5):
            read.append(i)
            yield i

    with inline_pool(2) as pool:
        for lazy in (pool.imap, pool.imap_unordered):
            read.clear()
            results = lazy(square, numbers())
            assert read == []  # nothing ran yet
            assert next(results) == 0
            assert read == [0]
            assert next(results) == 1
            assert read == [0, 1]
            assert list(results) == [4, 9, 16]
    with hookpool.ProcessPoolExecutor(2, inline=True) as executor:
        read.clear()
        mapped = executor.map(square, numbers())
        assert read == []
        assert next(mapped) == 0
        assert read == [0]
        assert list(mapped) == [1, 4, 9, 16]


def test_close_runs_the_rest_of_an_open_imap() -> None:
    """As with processes: after close() and join() an imap's results are all there."""
    with inline_pool(1) as pool:
        results = pool.imap(square, iter(range(4)))
        assert next(results) == 0
        pool.close()
        pool.join()
        assert list(results) == [1, 4, 9]


def test_task_timeouts_cannot_be_enforced_and_say_so() -> None:
    pool = inline_pool(1, task_timeout=0.001)
    with pytest.warns(RuntimeWarning, match="cannot enforce task_timeout") as record:
        assert pool.apply(square, (3,)) == 9  # ran to completion
    assert record[0].filename == __file__  # points at the caller's line
    assert pool.apply(square, (4,)) == 16  # once per pool
    pool.terminate()
    with inline_pool(1) as pool, pytest.warns(RuntimeWarning, match="task_timeout"):
        assert pool.map(square, [1, 2], task_timeout=0.001) == [1, 4]


def test_cancel_after_the_fact_is_false() -> None:
    with inline_pool(1) as pool:
        result = pool.apply_async(square, (2,))
        assert pool.cancel(result) is False
        assert result.get() == 4
    with hookpool.ProcessPoolExecutor(1, inline=True) as executor:
        future = executor.submit(square, 2)
        assert executor.cancel(future) is False
        executor.shutdown(cancel_futures=True)
        assert future.result() == 4


def test_repr_says_inline() -> None:
    pool = inline_pool(3)
    assert repr(pool) == "<hookpool.Pool state=RUNNING pool_size=3 inline>"
    pool.terminate()
    assert repr(pool) == "<hookpool.Pool state=STOPPED pool_size=3 inline>"


def test_constructor_checks_are_the_same_inline() -> None:
    with pytest.raises(ValueError):
        inline_pool(0)
    with pytest.raises(ValueError):
        inline_pool(1, maxtasksperchild=0)
    with pytest.raises(ValueError, match="fork"):
        inline_pool(1, context="fork")
    with pytest.raises(TypeError):
        inline_pool(1, initializer=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hookpool.ProcessPoolExecutor(0, inline=True)
    with pytest.raises(ValueError, match="fork"):
        hookpool.ProcessPoolExecutor(1, mp_context="fork", inline=True)


# -- the same calls, with processes and inline ------------------------------------------


@pytest.fixture(params=[False, True], ids=["processes", "inline"])
def inline(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def pools(inline: bool) -> Iterator[Callable[..., hookpool.Pool]]:
    made: list[hookpool.Pool] = []

    def make(*args: Any, **kwargs: Any) -> hookpool.Pool:
        made.append(hookpool.Pool(*args, inline=inline, **kwargs))
        return made[-1]

    yield make
    pids = [p for pool in made for p in pool.worker_pids if p != os.getpid()]
    for pool in made:
        pool.terminate()
    assert_gone(pids)


@pytest.fixture
def executors(inline: bool) -> Iterator[Callable[..., hookpool.ProcessPoolExecutor]]:
    made: list[hookpool.ProcessPoolExecutor] = []

    def make(*args: Any, **kwargs: Any) -> hookpool.ProcessPoolExecutor:
        made.append(hookpool.ProcessPoolExecutor(*args, inline=inline, **kwargs))
        return made[-1]

    yield make
    pids = [p for ex in made for p in ex.worker_pids if p != os.getpid()]
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)
    assert_gone(pids)


def test_every_pool_method_gives_the_same_results(
    pools: Callable[..., hookpool.Pool], inline: bool
) -> None:
    pool = pools(2)
    assert pool.apply(add, (2, 3)) == 5
    assert pool.apply(add, (), {"a": 1, "b": 2}) == 3
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
    assert pool.map(square, range(10), chunksize=3) == [x * x for x in range(10)]
    assert pool.map(square, []) == []
    assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
    assert list(pool.imap(square, range(6), chunksize=2)) == [0, 1, 4, 9, 16, 25]
    assert sorted(pool.imap_unordered(square, range(6))) == [0, 1, 4, 9, 16, 25]
    assert pool.submit(add, 4, b=5).result(timeout=30) == 9

    got: list[Any] = []
    result = pool.apply_async(square, (7,), callback=got.append)
    assert result.get(timeout=30) == 49
    assert result.ready() and result.successful()
    assert got == [49]
    mapped = pool.map_async(square, range(4), callback=got.append)
    assert mapped.get(timeout=30) == [0, 1, 4, 9]
    assert got[-1] == [0, 1, 4, 9]
    starred = pool.starmap_async(add, [(1, 1)], callback=got.append)
    assert starred.get(timeout=30) == [2]
    assert got[-1] == [2]

    errors: list[BaseException] = []
    failing = pool.apply_async(raise_value_error, ("x",), error_callback=errors.append)
    failing.wait(timeout=30)
    assert failing.ready() and not failing.successful()
    with pytest.raises(ValueError, match="x"):
        failing.get(timeout=30)
    assert [type(e) for e in errors] == [ValueError]
    with pytest.raises(ValueError, match="boom"):
        pool.map(raise_value_error, ["boom"])

    # The pid a task sees is one of the pool's workers, either way.
    assert pool.apply(pid) in pool.worker_pids
    assert (pool.apply(pid) == os.getpid()) is inline


def test_closed_pool_errors_are_the_same(pools: Callable[..., hookpool.Pool]) -> None:
    pool = pools(1)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    iterator = pool.imap(square, range(3))
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(square, (1,))
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        pool.imap(square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        pool.submit(square, 1)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.__enter__()
    pool.join()
    assert list(iterator) == [0, 1, 4]
    assert pool.worker_pids == []

    terminated = pools(1)
    terminated.terminate()
    with pytest.raises(ValueError, match="Pool not running"):
        terminated.apply_async(square, (1,))
    terminated.join()


def test_every_executor_method_gives_the_same_results(
    executors: Callable[..., hookpool.ProcessPoolExecutor], inline: bool
) -> None:
    executor = executors(2)
    future = executor.submit(add, 1, b=2)
    assert isinstance(future, Future)
    assert future.result(timeout=30) == 3
    assert list(executor.map(square, range(5), timeout=30)) == [0, 1, 4, 9, 16]
    assert list(executor.map(add, range(3), range(10), chunksize=2)) == [0, 2, 4]
    with pytest.raises(ValueError, match="boom"):
        executor.submit(raise_value_error).result(timeout=30)
    done = executor.submit(pid)
    assert done.result(timeout=30) in executor.worker_pids
    assert (done.result() == os.getpid()) is inline
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(square, 1)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(square, [1])
    assert executor.worker_pids == []


# -- switching with the environment ------------------------------------------------------

SCRIPT = """
import os, sys, threading
import hookpool

EVENTS = []

def init():
    EVENTS.append("init")

def fin():
    EVENTS.append("fin")

def where(_):
    return os.getpid(), threading.get_ident()

def boom(_):
    raise ValueError("from the task")

if __name__ == "__main__":
    here = (os.getpid(), threading.get_ident())
    with hookpool.Pool(2, initializer=init, finalizer=fin) as pool:
        inline = set(pool.map(where, range(4))) == {here}
        try:
            pool.apply(boom, (1,))
        except ValueError as error:
            remote = error.__cause__ is not None
    with hookpool.ProcessPoolExecutor(1) as executor:
        inline_executor = executor.submit(where, 0).result() == here
    forced = hookpool.Pool(1, inline=False)
    forced_inline = forced.apply(where, (0,)) == here
    forced.terminate()
    print(f"inline={inline} executor={inline_executor} remote={remote} "
          f"hooks={','.join(EVENTS)} forced={forced_inline}")
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", "inline=True executor=True remote=False hooks=init,fin forced=False"),
        ("0", "inline=False executor=False remote=True hooks= forced=False"),
    ],
)
def test_the_environment_variable_switches_a_real_script(
    value: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    result = run_script(SCRIPT, tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_the_environment_variable_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "yes")
    with hookpool.Pool(1) as pool:
        assert pool.apply(pid) == os.getpid()
        assert pool._manager.inline
    with hookpool.ProcessPoolExecutor(1) as executor:
        assert executor.submit(pid).result() == os.getpid()
    monkeypatch.setenv(ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=ENV_VAR):
        hookpool.Pool(1)
    with pytest.raises(ValueError, match=ENV_VAR):
        hookpool.ProcessPoolExecutor(1)
    # An explicit inline= wins over the environment, whatever it says.
    with hookpool.Pool(1, inline=True) as pool:
        assert pool.apply(pid) == os.getpid()


def test_inline_imap_read_after_close_and_join() -> None:
    """As with processes: close() feeds an open imap's rest (here, by running it), and
    the finalizer waits for that."""
    pool = hookpool.Pool(2, inline=True)
    results = pool.imap(square, iter(range(50)))
    pool.close()
    pool.join()
    assert list(results) == [i * i for i in range(50)]
