"""Drop-in fidelity: a program written for the standard library's pools gets, from
hookpool, the errors it already catches, where it already catches them.

Where the standard library's pool stays usable, hookpool is checked against it side by
side; where the standard library breaks (its executor) or hangs (its Pool), hookpool fails
only the task, with an error the standard library's callers catch, and runs the next one.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import gc
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
import tasks
import tasks_stages as stages
from conftest import assert_gone, shared_pool

import hookpool

pytestmark = pytest.mark.usefixtures("collect_stopped_pools")

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def executor() -> Iterator[hookpool.ProcessPoolExecutor]:
    with hookpool.ProcessPoolExecutor(1) as executor:
        yield executor


@pytest.fixture(scope="module")
def pool() -> Iterator[hookpool.Pool]:
    yield from shared_pool(hookpool.Pool(1))


# -- 1. a task that will not pickle fails its result, not the call ---------------------------


def _collect(submit: Callable[[Any], Any], wait: Callable[[Any], Any]) -> list[str]:
    """The loop the issue describes: submit every item, then collect each outcome."""
    items: list[Any] = [1, stages.FailsToPickle("error"), 3, stages.FailsToPickle("error"), 5]
    handles = [submit(item) for item in items]  # none of these raise
    outcomes = []
    for handle in handles:
        try:
            outcomes.append(str(wait(handle)))
        except ValueError as exc:
            outcomes.append(f"ValueError: {exc}")
    return outcomes


def test_submit_loop_collects_pickling_errors_per_item_like_the_stdlib_executor(
    executor: hookpool.ProcessPoolExecutor,
) -> None:
    ours = _collect(lambda x: executor.submit(stages.take, x), lambda f: f.result(timeout=30))
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=SPAWN) as std:
        theirs = _collect(lambda x: std.submit(stages.take, x), lambda f: f.result(timeout=30))
    assert (
        ours
        == theirs
        == ["int", "ValueError: error on purpose", "int"] * 1
        + [
            "ValueError: error on purpose",
            "int",
        ]
    )


def test_apply_async_loop_collects_pickling_errors_like_the_stdlib_pool(
    pool: hookpool.Pool,
) -> None:
    errors: list[type[BaseException]] = []

    def run(target: Any) -> list[str]:
        return _collect(
            lambda x: target.apply_async(
                stages.take, (x,), error_callback=lambda e: errors.append(type(e))
            ),
            lambda r: r.get(timeout=30),
        )

    ours = run(pool)
    with SPAWN.Pool(1) as std:
        theirs = run(std)
    assert ours == theirs
    assert errors == [ValueError] * 4  # two from each pool's error_callback


def test_pool_submit_and_map_async_deliver_pickling_errors_through_the_result(
    pool: hookpool.Pool,
) -> None:
    future = pool.submit(stages.take, stages.FailsToPickle("error"))
    with pytest.raises(ValueError, match="on purpose"):
        future.result(timeout=30)
    result = pool.map_async(stages.take, [1, stages.FailsToPickle("error"), 3])
    with pytest.raises(ValueError, match="on purpose"):
        result.get(timeout=30)
    assert not result.successful()
    assert pool.apply(stages.square, (3,)) == 9


def test_a_pickling_errors_callback_runs_off_the_callers_thread(pool: hookpool.Pool) -> None:
    """As the standard library's result thread runs it: a caller that holds a lock while
    it submits, with an error callback taking the same lock, does not deadlock."""
    lock = threading.Lock()
    seen: list[tuple[type[BaseException], bool]] = []
    done = threading.Event()
    me = threading.get_ident()

    def on_error(error: BaseException) -> None:
        with lock:
            seen.append((type(error), threading.get_ident() == me))
        done.set()

    with lock:
        result = pool.apply_async(
            stages.take, (stages.FailsToPickle("error"),), error_callback=on_error
        )
    assert done.wait(20)
    assert seen == [(ValueError, False)]
    with pytest.raises(ValueError):
        result.get(timeout=10)


def test_a_reduce_that_exits_fails_the_task_not_the_program(
    executor: hookpool.ProcessPoolExecutor,
) -> None:
    future = executor.submit(stages.take, stages.FailsToPickle("exit"))
    with pytest.raises(SystemExit):
        future.result(timeout=30)
    assert executor.submit(stages.square, 4).result(timeout=30) == 16


# -- 2, 3. the crash matrix ---------------------------------------------------------------------

STAGES = ["task pickle", "task unpickle", "function run", "result pickle", "result unpickle"]


def _call(stage: str, how: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The function and arguments of a task that fails at ``stage`` in the way ``how``."""
    if stage == "task pickle":
        return stages.take, (stages.FailsToPickle(how),)
    if stage == "task unpickle":
        return stages.take, (stages.FailsToUnpickle(how, "worker"),)
    if stage == "function run":
        return stages.run, (how,)
    if stage == "result pickle":
        return stages.return_unpicklable, (how,)
    assert stage == "result unpickle"
    return stages.return_fails_in_parent, (how,)


#: (stage, how) -> (what the executor's result() raises, the type of its __cause__).
#: A crash in the caller's own process (pickling the task, unpickling the result) would
#: end the test process, with either library: not in the matrix.
EXECUTOR_MATRIX: dict[tuple[str, str], tuple[type[BaseException], type[BaseException] | None]] = {
    ("task pickle", "error"): (ValueError, None),
    ("task pickle", "exit"): (SystemExit, None),
    ("task unpickle", "error"): (hookpool.TaskDecodingError, ValueError),
    ("task unpickle", "exit"): (hookpool.TaskDecodingError, SystemExit),
    ("task unpickle", "crash"): (hookpool.WorkerLostError, None),
    ("function run", "error"): (ValueError, concurrent.futures.process._RemoteTraceback),
    ("function run", "exit"): (SystemExit, concurrent.futures.process._RemoteTraceback),
    ("function run", "crash"): (hookpool.WorkerLostError, None),
    ("result pickle", "error"): (ValueError, concurrent.futures.process._RemoteTraceback),
    ("result pickle", "exit"): (SystemExit, concurrent.futures.process._RemoteTraceback),
    ("result pickle", "crash"): (hookpool.WorkerLostError, None),
    ("result unpickle", "error"): (hookpool.TaskDecodingError, ValueError),
    ("result unpickle", "exit"): (hookpool.TaskDecodingError, SystemExit),
}

#: The same for the Pool, in multiprocessing.Pool's words (whose own pool hangs, or loses
#: its worker, in most of these cases).
POOL_MATRIX: dict[tuple[str, str], tuple[type[BaseException], type[BaseException] | None]] = {
    **EXECUTOR_MATRIX,
    ("task unpickle", "error"): (ValueError, multiprocessing.pool.RemoteTraceback),
    ("task unpickle", "exit"): (SystemExit, multiprocessing.pool.RemoteTraceback),
    ("function run", "error"): (ValueError, multiprocessing.pool.RemoteTraceback),
    ("function run", "exit"): (SystemExit, multiprocessing.pool.RemoteTraceback),
    ("result pickle", "error"): (hookpool.ResultEncodingError, ValueError),
    ("result pickle", "exit"): (hookpool.ResultEncodingError, SystemExit),
    ("result unpickle", "error"): (hookpool.ResultEncodingError, ValueError),
    ("result unpickle", "exit"): (hookpool.ResultEncodingError, SystemExit),
}


def _outcome(future: Future[Any]) -> BaseException:
    error = future.exception(timeout=30)
    assert error is not None, future.result()
    return error


@pytest.mark.parametrize(("stage", "how"), list(EXECUTOR_MATRIX))
def test_executor_crash_matrix(
    executor: hookpool.ProcessPoolExecutor, stage: str, how: str
) -> None:
    expected, cause = EXECUTOR_MATRIX[stage, how]
    fn, args = _call(stage, how)
    error = _outcome(executor.submit(fn, *args))
    assert type(error) is expected, repr(error)
    if cause is not None:
        assert type(error.__cause__) is cause, repr(error.__cause__)
    if expected is hookpool.TaskDecodingError:
        assert "Only this task failed" in str(error)
        assert f"task {fn.__name__}()" in str(error)  # names the task...
        assert "worker hookpool-executor-worker-" in str(error)  # ...and the worker
    assert executor.submit(stages.square, 3).result(timeout=30) == 9  # it runs on


@pytest.mark.parametrize(("stage", "how"), list(POOL_MATRIX))
def test_pool_crash_matrix(pool: hookpool.Pool, stage: str, how: str) -> None:
    expected, cause = POOL_MATRIX[stage, how]
    fn, args = _call(stage, how)
    error = _outcome(pool.apply_async(fn, args).future)
    assert type(error) is expected, repr(error)
    if cause is not None:
        assert type(error.__cause__) is cause, repr(error.__cause__)
    assert pool.apply(stages.square, (3,)) == 9


def test_a_function_that_will_not_unpickle_is_told_from_its_arguments(
    pool: hookpool.Pool, executor: hookpool.ProcessPoolExecutor
) -> None:
    bad_function = stages.CallableFailsToUnpickle("error", "worker")
    bad_argument = stages.FailsToUnpickle("error", "worker")
    error = _outcome(pool.apply_async(bad_function, (1,)).future)
    assert type(error) is ValueError
    assert error.__notes__[0].startswith("hookpool: raised while unpickling the function of ")
    error = _outcome(pool.apply_async(stages.take, (bad_argument,)).future)
    assert error.__notes__[0].startswith("hookpool: raised while unpickling task take()")

    error = _outcome(executor.submit(bad_function, 1))
    assert type(error) is hookpool.TaskDecodingError
    assert str(error).startswith("the function of task ")
    error = _outcome(executor.submit(stages.take, bad_argument))
    assert str(error).startswith("task take() could not be unpickled")


#: The cells where the standard library's executor stays usable and gives the task's
#: own error, and those where it breaks (every pending future fails, BrokenProcessPool).
SAME_AS_STDLIB = [
    ("task pickle", "error"),
    ("function run", "error"),
    ("function run", "exit"),
    ("result pickle", "error"),
    ("result pickle", "exit"),
]
BREAKS_THE_STDLIB = [
    ("task unpickle", "error"),
    ("task unpickle", "exit"),
    ("task unpickle", "crash"),
    ("function run", "crash"),
    ("result pickle", "crash"),
    ("result unpickle", "error"),
    ("result unpickle", "exit"),
]


@pytest.mark.parametrize(("stage", "how"), SAME_AS_STDLIB + BREAKS_THE_STDLIB)
def test_executor_errors_are_caught_by_what_catches_the_stdlib_ones(
    executor: hookpool.ProcessPoolExecutor, stage: str, how: str
) -> None:
    fn, args = _call(stage, how)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=SPAWN) as std:
        theirs = _outcome(std.submit(fn, *args))
    ours = _outcome(executor.submit(fn, *args))
    if (stage, how) in BREAKS_THE_STDLIB:
        assert isinstance(theirs, BrokenProcessPool), repr(theirs)
        assert isinstance(ours, BrokenProcessPool), repr(ours)
    else:
        assert type(ours) is type(theirs)
        assert ours.args == theirs.args
        if stage != "task pickle":  # there, the stdlib formats its feeder thread's stack
            # as a "remote" traceback; hookpool's error has the caller's real frames
            assert type(ours.__cause__) is type(theirs.__cause__)


# -- 4. the remote traceback is the standard class, with the standard text ---------------------


def test_remote_traceback_text_matches_the_stdlib_executor(
    executor: hookpool.ProcessPoolExecutor,
) -> None:
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=SPAWN) as std:
        theirs = _outcome(std.submit(stages.run, "error"))
    ours = _outcome(executor.submit(stages.run, "error"))
    for error in (ours, theirs):
        cause = error.__cause__
        assert type(cause) is concurrent.futures.process._RemoteTraceback
        assert cause.tb.startswith('\n"""\nTraceback (most recent call last):\n')
        assert cause.tb.endswith('ValueError: error on purpose\n"""')
        assert 'in act\n    raise ValueError(f"{how} on purpose")' in cause.tb


# -- 5. a lazy map frees each result as the consumer moves on -----------------------------------


def _alive_after_each(results: Iterator[Any], loop: bool) -> list[int]:
    """How many of the results handed out so far are still alive, after each one is
    taken and dropped by the consumer."""
    refs: list[weakref.ref[Any]] = []
    alive = []
    if loop:
        for item in results:
            refs.append(weakref.ref(item))
            del item
            gc.collect()
            alive.append(sum(ref() is not None for ref in refs))
    else:
        while True:
            try:
                refs.append(weakref.ref(next(results)))
            except StopIteration:
                break
            gc.collect()
            alive.append(sum(ref() is not None for ref in refs))
    return alive


@pytest.mark.parametrize("chunksize", [1, 4])
@pytest.mark.parametrize("loop", [True, False], ids=["for-loop", "next"])
@pytest.mark.parametrize("method", ["imap", "imap_unordered", "executor.map"])
def test_lazy_maps_do_not_hold_results_already_handed_out(
    pool: hookpool.Pool,
    executor: hookpool.ProcessPoolExecutor,
    method: str,
    loop: bool,
    chunksize: int,
) -> None:
    if method == "executor.map":
        results = executor.map(stages.Payload, range(20), chunksize=chunksize)
    else:
        results = getattr(pool, method)(stages.Payload, range(20), chunksize)
    assert _alive_after_each(results, loop) == [0] * 20


# -- 6. a running Pool dropped without close() warns as the standard library's does -------------


@pytest.mark.parametrize("library", ["hookpool", "stdlib"])
def test_a_running_pool_dropped_unclosed_gets_a_resource_warning(library: str) -> None:
    pool: Any = hookpool.Pool(1) if library == "hookpool" else SPAWN.Pool(1)
    assert pool.apply(stages.square, (2,)) == 4
    manager = pool._manager if library == "hookpool" else None
    with pytest.warns(ResourceWarning, match="^unclosed running multiprocessing pool <") as got:
        del pool
        gc.collect()
    assert len(got) == 1
    del got  # its record holds the pool (the warning's source), as the stdlib's does
    gc.collect()
    if manager is not None:
        assert manager.join(20), "the dropped pool was not terminated after the warning"


@pytest.mark.parametrize("ending", ["close", "terminate", "with"])
def test_a_pool_closed_or_terminated_does_not_warn_when_dropped(ending: str) -> None:
    pool = hookpool.Pool(1)
    if ending == "with":
        with pool:
            assert pool.apply(stages.square, (2,)) == 4
    else:
        getattr(pool, ending)()
    pool.join()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        del pool
        gc.collect()
    assert [w for w in got if issubclass(w.category, ResourceWarning)] == []


# -- 7. the private attributes real code reads ---------------------------------------------------


def test_pool_private_attributes_have_the_stdlib_shapes(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2)
    std = SPAWN.Pool(2)
    try:
        for target in (pool, std):
            assert target._processes == 2
            assert isinstance(target._pool, list) and len(target._pool) == 2
            for process in target._pool:
                assert isinstance(process.pid, int) and process.is_alive()
                assert process.exitcode is None
                for method in ("terminate", "kill", "join"):
                    assert callable(getattr(process, method))
        assert sorted(p.pid for p in pool._pool) == sorted(pool.worker_pids)
        pool._pool.clear()  # a copy: the pool's own list is not touched
        assert len(pool._pool) == 2
    finally:
        std.terminate()
        std.join()


def test_killing_a_worker_through_pool_underscore_pool_is_a_worker_loss(
    make_pool: Callable[..., Any],
) -> None:
    pool = make_pool(1)
    busy = pool.apply_async(stages.record_then_sleep, (os.devnull, 1, 60))
    victim = pool._pool[0]
    victim_pid = victim.pid
    _wait_for(lambda: busy.future.running())
    victim.kill()
    with pytest.raises(hookpool.WorkerLostError):
        busy.get(timeout=30)
    assert pool.apply(stages.square, (5,)) == 25  # replaced
    assert [p.pid for p in pool._pool] != [victim_pid]


def test_executor_private_attributes_have_the_stdlib_shapes(
    executor: hookpool.ProcessPoolExecutor,
) -> None:
    assert executor._max_workers == 1
    assert executor._mp_context.get_start_method() == "spawn"
    processes = executor._processes
    assert isinstance(processes, dict) and len(processes) == 1
    [(pid, process)] = processes.items()
    assert process.pid == pid and process.is_alive()
    busy = executor.submit(stages.record_then_sleep, os.devnull, 1, 60)
    _wait_for(busy.running)
    process.terminate()
    with pytest.raises(BrokenProcessPool):  # a WorkerLostError, as any other loss
        busy.result(timeout=30)
    assert executor.submit(stages.square, 6).result(timeout=30) == 36


def _wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- 8. Python 3.14's executor API, on every Python ------------------------------------------------


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers(tmp_path: Path, how: str) -> None:
    executor = hookpool.ProcessPoolExecutor(
        2,
        initializer=tasks.init_record,
        initargs=(str(tmp_path),),
        finalizer=tasks.fin_record,
        finalargs=(str(tmp_path),),
    )
    record = str(tmp_path / "ran")
    running = [executor.submit(stages.record_then_sleep, record, i, 60) for i in range(2)]
    queued = [executor.submit(stages.record_then_sleep, record, 9, 0) for _ in range(3)]
    _wait_for(lambda: all(f.running() for f in running))
    pids = executor.worker_pids
    getattr(executor, how)()
    for future in running:
        error = future.exception(timeout=30)
        assert isinstance(error, BrokenProcessPool), repr(error)  # as the stdlib's
        assert isinstance(error, hookpool.PoolTerminatedError)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(stages.square, 1)
    executor.shutdown(wait=True)
    assert_gone(pids)
    inits, fins = tasks.counts(str(tmp_path))
    assert len(inits) == 2
    if how == "terminate_workers":
        assert fins == dict.fromkeys(inits, 1)  # as terminate(): finalizers run
    else:
        assert fins == {}  # SIGKILL: no finalizer can run
    ran = Path(record).read_text().split() if Path(record).exists() else []
    assert "9" not in ran  # (the running ones may have been killed before writing)


@pytest.mark.parametrize("bad", ["2", 2.0])
def test_map_buffersize_type_is_checked_as_in_the_stdlib(
    executor: hookpool.ProcessPoolExecutor, bad: Any
) -> None:
    with pytest.raises(TypeError, match=r"^buffersize must be an integer or None$"):
        executor.map(str, range(4), buffersize=bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_map_buffersize_value_is_checked_as_in_the_stdlib(
    executor: hookpool.ProcessPoolExecutor, bad: int
) -> None:
    with pytest.raises(ValueError, match=r"^buffersize must be None or > 0$"):
        executor.map(str, range(4), buffersize=bad)


@pytest.mark.parametrize("buffersize", [1, 3])
@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_buffersize_bounds_what_runs_ahead_of_the_consumer(
    executor: hookpool.ProcessPoolExecutor, buffersize: int, chunksize: int
) -> None:
    """At most ``buffersize`` chunks are submitted and not yet taken: an endless input
    works, and the input is read only that far ahead of the consumer."""
    read: list[int] = []
    results = executor.map(
        stages.square, _endless(read), chunksize=chunksize, buffersize=buffersize
    )
    for taken in range(1, 8):
        assert next(results) == (taken - 1) ** 2
        # Items of the chunks taken, plus at most `buffersize` chunks more.
        limit = (-(-taken // chunksize) + buffersize) * chunksize
        assert len(read) <= limit, (taken, len(read), limit)
    results.close()  # type: ignore[attr-defined]


def _endless(read: list[int]) -> Iterator[int]:
    """0, 1, 2, ... for ever, appending each number to ``read`` as it is taken."""
    n = 0
    while True:
        read.append(n)
        yield n
        n += 1


# -- 9. shutdown(cancel_futures=True) right after a burst ----------------------------------------


def test_cancel_futures_after_a_burst_cancels_exactly_what_had_not_started(
    tmp_path: Path,
) -> None:
    """hookpool's rule (docs/migrating.md): what is already running (``running()``:
    sent to a worker) completes; every other future is cancelled and never runs."""
    record = tmp_path / "ran"
    with hookpool.ProcessPoolExecutor(2) as executor:
        executor.submit(stages.square, 1).result(timeout=30)
        futures = [
            executor.submit(stages.record_then_sleep, str(record), i, 0.1) for i in range(20)
        ]
        executor.shutdown(wait=True, cancel_futures=True)
    ran = sorted(int(line) for line in record.read_text().split())
    completed = [i for i, f in enumerate(futures) if not f.cancelled()]
    assert ran == completed  # each ran once, and only those not cancelled
    assert all(futures[i].result(timeout=0) == i for i in completed)
    assert 1 <= len(completed) < len(futures)


def test_executor_map_over_a_non_iterable_raises_at_the_call(
    executor: hookpool.ProcessPoolExecutor,
) -> None:
    for target in (executor, concurrent.futures.ThreadPoolExecutor(1)):
        with pytest.raises(TypeError, match="not iterable"):
            target.map(stages.square, 5)  # type: ignore[call-overload]


def test_a_buffersize_map_left_unfinished_does_not_make_shutdown_read_the_rest() -> None:
    """As Python 3.14's: an endless input with a buffersize, abandoned inside the
    ``with`` block, does not keep the exit reading it; iterating on raises."""
    read: list[int] = []
    with hookpool.ProcessPoolExecutor(1) as executor:
        results = executor.map(stages.square, _endless(read), buffersize=2)
        assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert len(read) <= 10
    with pytest.raises((RuntimeError, concurrent.futures.CancelledError)):
        for _ in range(5):
            next(results)


@pytest.mark.parametrize("how", ["kill", "terminate"])
def test_a_process_from_the_view_stays_usable_after_it_exits(
    make_pool: Callable[..., Any], how: str
) -> None:
    pool = make_pool(1)
    [process] = pool._pool
    getattr(process, how)()
    process.join(20)
    # The manager thread reaps its workers too: when it wins the race for waitpid,
    # multiprocessing's join() here reads no exit code, and the next read has it.
    _wait_for(lambda: process.exitcode is not None)
    expected = -signal.SIGKILL if how == "kill" else -signal.SIGTERM
    assert process.exitcode in (expected, 128 + signal.SIGTERM)
    assert not process.is_alive()
    _wait_for(lambda: bool(pool._pool) and pool._pool[0].pid != process.pid)
    assert process.exitcode is not None  # still readable after the pool let it go
    assert pool.apply(stages.square, (2,)) == 4


def test_terminate_while_a_task_is_being_unpickled_still_runs_the_finalizer(
    tmp_path: Path,
) -> None:
    """A SIGTERM that arrives while the worker unpickles a task (not yet running it) is
    honoured before the task runs: the finalizer runs within the grace period, instead of
    the worker being killed at its end (found by CI: terminate_workers, once in 8 runs)."""
    pool = hookpool.Pool(
        1,
        initializer=tasks.init_record,
        initargs=(str(tmp_path),),
        finalizer=tasks.fin_record,
        finalargs=(str(tmp_path),),
    )
    assert pool.apply(stages.square, (2,)) == 4
    pids = pool.worker_pids
    pool.apply_async(stages.sleep_after, (stages.SlowToUnpickle(1.5), 60))
    time.sleep(0.5)  # the worker is unpickling the argument
    pool.terminate()
    assert_gone(pids)
    inits, fins = tasks.counts(str(tmp_path))
    assert fins == dict.fromkeys(inits, 1)
