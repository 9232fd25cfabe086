"""The engine's own corner cases: wake-ups, prefetching and Skip, SystemExit, SIGTERM
from outside, pickling of shared ctypes after the pickler was first used, callbacks."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import itertools
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tasks_exec
from tasks import (
    append_to,
    exit_with,
    identity,
    keep,
    pid,
    raise_from_inside_except,
    read_array,
    read_value,
    send_through,
    sleep_then,
    sleep_then_die,
    sleep_then_pid,
    square,
)
from tasks_crash import exit_abruptly_once
from tasks_hooks import parked
from test_facades import wait_for

import hookpool

SPAWN = multiprocessing.get_context("spawn")
MakePool = Callable[..., hookpool.Pool]


def test_many_threads_submitting_never_lose_a_wakeup(make_pool: MakePool) -> None:
    """Submits from several threads, racing the manager's wake-up handling, all complete
    (a lost wake-up would leave some future pending forever)."""
    pool = make_pool(2)
    futures: list[concurrent.futures.Future[int]] = []
    lock = threading.Lock()

    def submit_many() -> None:
        for i in range(300):
            future = pool.submit(square, i)
            with lock:
                futures.append(future)
            if i % 50 == 0:
                time.sleep(0.001)

    threads = [threading.Thread(target=submit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    done, pending = concurrent.futures.wait(futures, timeout=30)
    assert not pending
    assert sorted(f.result() for f in done) == sorted([i * i for i in range(300)] * 4)


def test_long_tasks_spread_over_idle_workers(make_pool: MakePool) -> None:
    """A task is not queued behind a long one while another worker could take it, not
    even right after start-up, when the first worker is ready before the others."""
    pool = make_pool(2)
    pool.map(square, range(20))  # the first worker up is measured as fast
    results = [pool.apply_async(sleep_then_pid, (0.5,)) for _ in range(2)]
    pids = {result.get(timeout=20) for result in results}
    assert len(pids) == 2


def test_a_cancelled_task_queued_at_a_worker_is_skipped(
    make_pool: MakePool, tmp_path: Path
) -> None:
    """Cancel tasks already sent to a busy worker: none runs, and the worker is not
    stopped for them (it is told to skip them)."""
    pool = make_pool(1)
    pool.map(square, range(300), chunksize=1)  # measured fast: tasks queue behind the head
    log = tmp_path / "ran"
    first = pool.submit(sleep_then, 0.5, "first")
    behind = [pool.submit(append_to, str(log), i) for i in range(20)]
    time.sleep(0.1)  # let the manager send them to the worker
    workers_before = pool.worker_pids
    assert all(pool.cancel(f) for f in behind)
    assert first.result(timeout=20) == "first"
    concurrent.futures.wait(behind, timeout=20)
    # Those already at the worker were running in the futures' sense: they fail with
    # CancelledError instead of being cancelled() in place.
    at_worker = [f for f in behind if not f.cancelled()]
    assert at_worker, "no task was queued at the worker; the test did not test skipping"
    for future in at_worker:
        assert isinstance(future.exception(0), concurrent.futures.CancelledError)
    assert not log.exists()  # none of them ran
    assert pool.worker_pids == workers_before  # no worker was stopped for a Skip
    assert pool.apply(square, (3,)) == 9
    # The first skipped call carried append_to itself; later calls refer to it by id.
    assert pool.apply(append_to, (str(tmp_path / "after"), 7)) == 7


def test_a_worker_is_sent_each_function_once_and_forgets_old_ones(
    make_pool: MakePool,
) -> None:
    """Functions go to a worker once and are then referred to by id; past
    FUNCTIONS_PER_WORKER distinct ones it is told to forget them and start again."""
    from hookpool._manager import FUNCTIONS_PER_WORKER

    pool = make_pool(1)
    count = 2 * FUNCTIONS_PER_WORKER + 5
    adders = [_adder(n) for n in range(count)]  # closures: each pickles differently
    assert [pool.apply(adder, (1,)) for adder in adders] == [n + 1 for n in range(count)]
    assert pool.map(adders[1], range(5), chunksize=1) == [1, 2, 3, 4, 5]  # long forgotten
    assert pool.map(adders[-1], range(3), chunksize=1) == [count - 1 + i for i in range(3)]
    (worker,) = pool._manager._workers
    assert len(worker.functions) <= FUNCTIONS_PER_WORKER


def _adder(n: int) -> Callable[[int], int]:
    return lambda x: x + n


def test_system_exit_in_a_task_fails_only_that_task(make_pool: MakePool) -> None:
    pool = make_pool(1)
    pool.map(square, range(50))  # let it queue tasks behind the running one
    exiting = pool.submit(exit_with, 3)
    after = [pool.submit(square, i) for i in range(30)]
    with pytest.raises(SystemExit):
        exiting.result(timeout=20)
    assert [f.result(timeout=20) for f in after] == [i * i for i in range(30)]


def test_sigterm_from_outside_is_named_in_the_error(make_pool: MakePool) -> None:
    pool = make_pool(1)
    running = pool.apply_async(sleep_then, (30,))
    [worker] = pool.worker_pids
    time.sleep(0.5)  # let it start the task
    os.kill(worker, signal.SIGTERM)
    with pytest.raises(hookpool.WorkerLostError, match="SIGTERM") as info:
        running.get(timeout=20)
    assert "os._exit" not in str(info.value)
    assert pool.apply(square, (4,)) == 16  # replaced


def test_value_and_array_in_initargs_after_the_pickler_was_used(
    make_pool: MakePool,
) -> None:
    """Shared ctypes need reducers that multiprocessing registers only when they are
    first created; a pickler built before that must still find them."""
    warm = make_pool(1)
    warm.apply(square, (2,))  # pickles in this thread before any Value exists
    value = SPAWN.Value("i", 41)
    array = SPAWN.Array("d", [1.0, 2.0])
    pool = make_pool(1, initializer=keep, initargs=("v", value))
    assert pool.apply(read_value, ("v",)) == 41
    pool2 = make_pool(1, initializer=keep, initargs=("a", array))
    assert pool2.apply(read_array, ("a",)) == [1.0, 2.0]


def test_a_lambda_initializer_may_capture_a_queue(make_pool: MakePool) -> None:
    """A closure pickled by value (cloudpickle) still gets multiprocessing's reducers and
    passes inheritance-only objects at spawn time."""
    queue = SPAWN.Queue()
    pool = make_pool(1, initializer=lambda: queue.put(os.getpid()))
    [worker] = pool.worker_pids
    assert queue.get(timeout=20) == worker
    pool.terminate()
    queue.close()
    queue.join_thread()


def test_a_closure_capturing_a_lock_is_refused_as_a_task(make_pool: MakePool) -> None:
    lock = SPAWN.Lock()
    pool = make_pool(1)
    with pytest.raises(RuntimeError, match="initargs"):
        pool.submit(lambda: lock.acquire()).result(timeout=10)


def test_context_equal_to_cause_is_kept(make_pool: MakePool) -> None:
    pool = make_pool(1)
    with pytest.raises(ValueError) as info:
        pool.apply(raise_from_inside_except)
    error = info.value
    assert isinstance(error.__cause__, KeyError)
    assert error.__context__ is error.__cause__


def test_callbacks_run_before_the_result_is_ready(make_pool: MakePool) -> None:
    pool = make_pool(1)
    seen: list[Any] = []

    def slow_callback(value: Any) -> None:
        time.sleep(0.3)
        seen.append(value)

    result = pool.apply_async(square, (5,), callback=slow_callback)
    assert result.get(timeout=20) == 25
    assert seen == [25]  # get() returned only after the callback ran

    errors: list[BaseException] = []
    failing = pool.map_async(square, [1, "x"], error_callback=errors.append)
    failing.wait(20)
    assert failing.ready() and not failing.successful()
    assert len(errors) == 1 and isinstance(errors[0], TypeError)


def test_a_callback_that_raises_is_logged_and_the_result_still_settles(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(1)

    def bad_callback(value: Any) -> None:
        raise RuntimeError("callback bug")

    result = pool.apply_async(square, (3,), callback=bad_callback)
    assert result.get(timeout=20) == 9
    assert any("callback" in r.getMessage() for r in caplog.records)
    assert pool.apply(square, (4,)) == 16


def test_cancelling_a_map_result_cancels_its_chunks(make_pool: MakePool) -> None:
    pool = make_pool(1)
    blocker = pool.apply_async(sleep_then, (1.0,))
    result = pool.map_async(square, range(10), chunksize=1)
    assert pool.cancel(result)
    with pytest.raises((concurrent.futures.CancelledError, hookpool.PoolTerminatedError)):
        result.get(timeout=20)
    blocker.get(timeout=20)


def test_executor_map_keeps_task_timeout_errors(tmp_path: Path) -> None:
    with hookpool.ProcessPoolExecutor(1, task_timeout=0.5) as ex:
        results = ex.map(sleep_then, [5])
        with pytest.raises(hookpool.TaskTimeoutError):
            next(results)


def test_pid_helper_is_a_worker(make_pool: MakePool) -> None:
    pool = make_pool(1)
    assert pool.apply(pid) in pool.worker_pids


def test_executor_map_read_after_the_with_block() -> None:
    """The standard library submits a map's whole input at once, so code may loop over
    the results after the `with` block (after shutdown(wait=True))."""
    with hookpool.ProcessPoolExecutor(2) as ex:
        results = ex.map(square, range(300))
    assert list(results) == [i * i for i in range(300)]


def test_pool_imap_read_after_close_and_join(make_pool: MakePool) -> None:
    pool = make_pool(2)
    results = pool.imap(square, iter(range(300)))
    pool.close()
    pool.join()
    assert list(results) == [i * i for i in range(300)]


def test_close_with_an_endless_imap_open_returns(make_pool: MakePool) -> None:
    """close() feeds open imaps in the background: an endless input cannot hang it."""
    pool = make_pool(2)
    results = pool.imap(square, itertools.count())
    assert next(results) == 0
    pool.close()  # returns (a hang here fails the test by its timeout)
    pool.terminate()
    pool.join()


def test_cancel_a_task_put_back_after_its_worker_died(
    make_pool: MakePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks queued at a worker that died go back to the queue; cancelling one of them
    before a worker takes it means it never runs."""
    # Queue tasks behind a running one however long it has run (it waits for the test).
    monkeypatch.setattr(hookpool._manager, "PREFETCH_SECONDS", 60.0)
    pool = make_pool(1)
    pool.map(square, range(300), chunksize=1)  # measured fast: tasks queue at the worker
    log = tmp_path / "ran"
    gate = tmp_path / "gate"
    killer = pool.submit(exit_abruptly_once, str(gate))
    behind = [pool.submit(append_to, str(log), i) for i in range(10)]
    (worker,) = pool._manager._workers
    wait_for(lambda: len(worker.inflight) == 11, what="the tasks queued at the worker")
    gate.touch()
    with pytest.raises(hookpool.WorkerLostError):
        killer.result(timeout=20)
    cancelled = {i for i, f in enumerate(behind) if pool.cancel(f)}
    concurrent.futures.wait(behind, timeout=20)
    ran = {int(x) for x in log.read_text().split()} if log.exists() else set()
    assert not ran & cancelled
    assert ran | cancelled == set(range(10))
    # Some had been sent to the worker (claimed: "running" for their futures), so they
    # were cancelled from the queue they went back to, not by Future.cancel().
    assert any(not behind[i].cancelled() for i in cancelled), "no task was put back"


def test_a_pipe_connection_as_a_task_argument_reaches_the_worker(make_pool: MakePool) -> None:
    """multiprocessing's reducers still apply on the fast pickling path: the worker gets
    a duplicate of the descriptor, not the parent's descriptor number."""
    pool = make_pool(1)
    reader, writer = SPAWN.Pipe(duplex=False)
    pool.apply(send_through, (writer, "hello"))
    assert reader.poll(20)
    assert reader.recv() == "hello"
    assert pool.apply(square, (3,)) == 9  # the worker's own pipe is intact


def test_tasks_cancelled_at_a_worker_that_then_dies_never_run(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = make_pool(1)
    pool.map(square, range(300), chunksize=1)  # measured fast: tasks queue at the worker
    log = tmp_path / "ran"
    killer = pool.submit(sleep_then_die, 0.5)
    behind = [pool.submit(append_to, str(log), i) for i in range(10)]
    time.sleep(0.1)  # let them reach the worker
    assert all(pool.cancel(f) for f in behind)
    with pytest.raises(hookpool.WorkerLostError):
        killer.result(timeout=20)
    concurrent.futures.wait(behind, timeout=20)
    assert pool.apply(square, (2,)) == 4  # the replacement worker ran what was left
    assert not log.exists()  # and none of the cancelled ones


def test_an_error_callback_may_cancel_its_own_map(make_pool: MakePool) -> None:
    """The map's result settles outside the lock its chunks share: a callback that
    calls back into the map does not deadlock the manager."""
    pool = make_pool(1)
    holder: list[Any] = []
    result = pool.map_async(
        square, [1, "x", 3], chunksize=1, error_callback=lambda e: pool.cancel(holder[0])
    )
    holder.append(result)
    result.wait(20)
    assert result.ready() and not result.successful()
    assert pool.apply(square, (5,)) == 25  # the manager is alive


def test_results_keep_their_pool_alive() -> None:
    """As with the standard library, a pool used only through its results stays alive
    until they are settled (then, dropped unclosed, each warns as the stdlib's does)."""
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool") as warned:
        assert hookpool.Pool(1).apply_async(sleep_then, (0.2, "kept")).get(timeout=30) == "kept"
        assert list(hookpool.Pool(1).imap(square, range(5))) == [0, 1, 4, 9, 16]
        assert hookpool.Pool(1).submit(sleep_then, 0.2, "kept").result(timeout=30) == "kept"
        assert hookpool.Pool(1).map_async(square, range(3)).get(timeout=30) == [0, 1, 4]
        assert list(hookpool.ProcessPoolExecutor(1).map(square, range(5))) == [0, 1, 4, 9, 16]
        gc.collect()
    assert len(warned) == 4  # the executor, as the standard library's, does not warn


@pytest.mark.parametrize("size", [0, 1, 64 * 1024 - 1, 64 * 1024, 256 * 1024, 5 * 1024 * 1024 + 3])
def test_payloads_of_every_size_cross_both_ways(make_pool: MakePool, size: int) -> None:
    """Arguments and results around the out-of-band and large-frame thresholds, several
    of them in one task, arrive whole."""
    pool = make_pool(1)
    blob = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    other = bytearray(blob[::-1])
    assert pool.apply(identity, ((blob, other),)) == (blob, other)
    assert pool.map(len, [blob, other, blob], chunksize=1) == [size] * 3


def test_a_task_sent_straight_to_an_idle_worker_that_just_died_runs_elsewhere(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task submitted to an idle pool is written to a parked worker from the caller's
    thread. If that worker died a moment before (the manager has not seen it yet), the
    write fails and the task goes through the queue to the replacement instead."""
    from hookpool import _protocol as wire

    pool = make_pool(1)
    assert pool.apply(square, (2,)) == 4  # the worker is idle: parked
    (victim,) = pool.worker_pids
    real_send = wire.send
    killed: list[int] = []

    def send(conn: Any, messages: list[Any]) -> None:
        calls = [m for m in messages if isinstance(m, wire.Call)]
        if calls and threading.current_thread() is threading.main_thread() and not killed:
            killed.append(victim)
            os.kill(victim, signal.SIGKILL)
            # Its end of the pipe is closed once ours reads as EOF (the manager, which
            # would read it, waits for the lock this thread holds).
            assert select.select([conn], [], [], 10)[0]
        real_send(conn, messages)

    monkeypatch.setattr(wire, "send", send)
    assert pool.apply(square, (3,)) == 9
    assert killed == [victim]
    assert victim not in pool.worker_pids


def _interrupt_writes_from_the_main_thread(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make every write to a worker from the main thread raise KeyboardInterrupt, as a
    Ctrl-C arriving mid-write would; returns what puts the real write back."""
    from hookpool import _protocol as wire

    real_send = wire.send

    def interrupted(conn: Any, messages: list[Any]) -> None:
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        real_send(conn, messages)

    monkeypatch.setattr(wire, "send", interrupted)
    return lambda: monkeypatch.setattr(wire, "send", real_send)


def test_a_signal_handler_raising_mid_submit_leaves_the_pool_working(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or any handler that raises) while submit() writes to a parked worker: the
    exception reaches the caller; that worker, whose pipe may hold half a frame, is
    replaced; later tasks run, and close() + join() finish."""

    pool = make_pool(1)
    assert pool.apply(square, (2,)) == 4
    (victim,) = pool.worker_pids
    restore = _interrupt_writes_from_the_main_thread(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        pool.apply_async(square, (3,))
    restore()
    assert pool.apply(square, (4,), task_timeout=30) == 16  # through the queue
    assert pool.apply(square, (5,)) == 25
    assert victim not in pool.worker_pids
    pool.close()
    pool.join()


def test_a_signal_handler_may_terminate_the_pool_in_the_middle_of_a_submit(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM handler calling terminate() runs in the main thread, possibly while
    that thread is inside submit(), holding the lock the manager needs: terminate() must
    not wait for the manager then (it would wait forever); the pool stops right after."""
    from hookpool import _protocol as wire

    pool = make_pool(1)
    assert pool.apply(square, (2,)) == 4
    real_send = wire.send
    handled: list[float] = []

    def send_interrupted_by_handler(conn: Any, messages: list[Any]) -> None:
        if threading.current_thread() is threading.main_thread() and not handled:
            started = time.monotonic()
            pool.terminate()  # what the handler does
            handled.append(time.monotonic() - started)
        real_send(conn, messages)

    monkeypatch.setattr(wire, "send", send_interrupted_by_handler)
    result = pool.apply_async(square, (3,))
    assert handled and handled[0] < 5
    with contextlib.suppress(hookpool.PoolTerminatedError):
        assert result.get(timeout=30) == 9
    pool.join()
    assert pool._manager.state is hookpool._manager.PoolState.STOPPED


def test_a_maps_first_chunks_go_straight_to_the_idle_workers(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One chunk per parked worker is written from the caller's thread, while the rest
    is still being pickled; the rest goes through the manager."""
    from hookpool import _protocol as wire

    pool = make_pool(2)
    pool.map(square, range(4), 1)  # both workers up, then idle: parked
    wait_for(lambda: parked(pool) == 2, what="both workers parked")
    real_send = wire.send
    writers: list[tuple[str, int]] = []

    def send(conn: Any, messages: list[Any]) -> None:
        calls = sum(isinstance(m, wire.Call) for m in messages)
        if calls:
            writers.append((threading.current_thread().name, calls))
        real_send(conn, messages)

    monkeypatch.setattr(wire, "send", send)
    assert pool.map(square, range(40), 1) == [i * i for i in range(40)]
    from_caller = [calls for name, calls in writers if name == "MainThread"]
    # (Later chunks may go straight to workers that were done and parked again.)
    assert from_caller[:2] == [1, 1] and set(from_caller) == {1}
    assert sum(calls for _, calls in writers) == 40


class _SlowToPickle:
    def __reduce__(self) -> tuple[Any, ...]:
        time.sleep(0.05)
        return int, (1,)


def test_close_while_a_map_pickles_its_chunks_lets_it_finish(make_pool: MakePool) -> None:
    """A map already running when close() comes, with chunks still being pickled: it
    runs whole and returns (as the standard library's map does)."""
    pool = make_pool(2)
    pool.map(square, range(4), 1)
    threading.Timer(0.15, pool.close).start()
    assert pool.map(identity, [_SlowToPickle() for _ in range(8)], 1) == [1] * 8
    pool.join()


def test_ctrl_c_while_a_map_writes_its_first_chunk(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Interrupted while writing a map's first chunk to a parked worker: the map raises
    and queues nothing more (no chunk of it runs later), and the pool keeps working."""

    pool = make_pool(2)
    pool.map(square, range(4), 1)
    wait_for(lambda: parked(pool) == 2, what="both workers parked")
    restore = _interrupt_writes_from_the_main_thread(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        pool.map(tasks_exec.write_marker, [str(tmp_path / f"m{i}") for i in range(10)], 1)
    restore()
    assert pool.map(square, range(6), 1) == [i * i for i in range(6)]
    pool.close()
    pool.join()
    assert list(tmp_path.iterdir()) == []


def test_many_threads_submitting_to_an_idle_pool(make_pool: MakePool) -> None:
    """Callers racing each other, and the manager, for the parked workers: every task
    runs exactly once, with its own result."""
    pool = make_pool(2)
    results: dict[int, list[int]] = {}

    def caller(n: int) -> None:
        results[n] = [pool.apply(square, (n * 1000 + i,)) for i in range(100)]

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {n: [(n * 1000 + i) ** 2 for i in range(100)] for n in range(6)}
    pool.close()
    pool.join()
