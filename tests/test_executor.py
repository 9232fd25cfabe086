"""``hookpool.ProcessPoolExecutor``'s own contract.

Where the standard library makes the same promise, the test runs against both
``hookpool.ProcessPoolExecutor`` and ``concurrent.futures.ProcessPoolExecutor`` (on the
spawn context), so a difference shows up as a failure on one side only. Tests of what
only hookpool does (hooks, an endless map input, surviving a dead worker, task timeouts,
cancelling a running task) run against hookpool alone.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_gone, run_script
from tasks import (
    add,
    counts,
    fin_record,
    init_record,
    pid,
    raise_value_error,
    sleep_then,
    sleep_then_pid,
    square,
)
from tasks_api import hold_until
from tasks_exec import join_manager, kill_self, mark_then_sleep, running_pids, write_marker

import hookpool
import hookpool._calls
import hookpool._manager

Executor = concurrent.futures.Executor
MakeExecutor = Callable[..., Any]
SPAWN = multiprocessing.get_context("spawn")


def pids_of(executor: Executor) -> list[int]:
    """The worker pids of either kind of executor (the stdlib's are private)."""
    if isinstance(executor, hookpool.ProcessPoolExecutor):
        return executor.worker_pids
    processes = getattr(executor, "_processes", None) or {}
    return list(processes)


def _stop(executor: Executor) -> bool:
    """Teardown: stop an executor even if a test left a long task running in it.
    False if hookpool's manager had to be poked awake (a lost wake-up)."""
    if isinstance(executor, hookpool.ProcessPoolExecutor):
        executor.shutdown(wait=False, cancel_futures=True)
        # A running task would make shutdown(wait=True) wait for it; stop the workers.
        executor._manager.terminate()
        return join_manager(executor._manager)
    executor.shutdown(wait=True, cancel_futures=True)
    return True


def _factory(kind: str) -> Iterator[MakeExecutor]:
    made: list[Executor] = []
    pids: list[int] = []

    def make(*args: Any, **kwargs: Any) -> Executor:
        executor: Executor
        if kind == "stdlib":
            kwargs.setdefault("mp_context", SPAWN)
            executor = concurrent.futures.ProcessPoolExecutor(*args, **kwargs)
        else:
            executor = hookpool.ProcessPoolExecutor(*args, **kwargs)
        made.append(executor)
        return executor

    yield make
    awake = True
    for executor in made:
        pids.extend(pids_of(executor))
        awake &= _stop(executor)
    assert_gone(pids)
    assert awake, "lost wake-up: the manager slept through shutdown until poked"


@pytest.fixture(params=["hookpool", "stdlib"])
def make_executor(request: pytest.FixtureRequest) -> Iterator[MakeExecutor]:
    """Build executors of the parametrized kind; stop them and check for leaks after."""
    yield from _factory(request.param)


@pytest.fixture
def make_hook() -> Iterator[MakeExecutor]:
    """Build ``hookpool.ProcessPoolExecutor``s only."""
    yield from _factory("hookpool")


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


# -- submit, map ---------------------------------------------------------------------------


def test_submit_result(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    assert ex.submit(add, 2, 3).result(timeout=30) == 5
    assert ex.submit(add, 1, b=2).result(timeout=30) == 3
    # ``fn`` is positional-only: a task may take a keyword argument called ``fn``.
    assert ex.submit(dict, fn=1, x=2).result(timeout=30) == {"fn": 1, "x": 2}
    failed = ex.submit(raise_value_error, "nope")
    with pytest.raises(ValueError, match="nope"):
        failed.result(timeout=30)
    assert isinstance(failed.exception(), ValueError)


def test_workers_start_as_tasks_need_them(make_hook: MakeExecutor, tmp_path: Path) -> None:
    """As the standard library's executor: one worker for one task at a time, another
    when tasks wait for one, never more than ``max_workers``; each runs its initializer
    once (and, at shutdown, its finalizer once)."""
    d = str(tmp_path)
    ex = make_hook(3, initializer=init_record, initargs=(d,), finalizer=fin_record, finalargs=(d,))
    for i in range(5):
        assert ex.submit(square, i).result(timeout=30) == i * i
    assert len(ex.worker_pids) == 1
    both = [ex.submit(sleep_then, 0.3, i) for i in range(2)]
    assert [f.result(timeout=30) for f in both] == [0, 1]
    assert len(ex.worker_pids) == 2
    assert sorted(ex.map(square, range(40), chunksize=1, timeout=30)) == [i * i for i in range(40)]
    assert len(ex.worker_pids) == 3
    pids = ex.worker_pids
    ex.shutdown(wait=True)
    assert_gone(pids)
    inits, fins = counts(d)
    assert sorted(int(p) for p in inits) == sorted(pids)
    assert fins == dict.fromkeys(inits, 1)


def test_a_burst_after_quick_tasks_spreads_over_new_workers(make_hook: MakeExecutor) -> None:
    """One warm worker that ran quick tasks one at a time would take a burst of slow
    ones queued behind its current one (prefetch, at its quick pace): while the executor
    may still start workers, nothing is queued behind a busy one, and the burst spreads."""
    ex = make_hook(4)
    for i in range(200):
        assert ex.submit(square, i).result(timeout=30) == i * i
    assert len(ex.worker_pids) == 1
    burst = [ex.submit(sleep_then_pid, 1.0) for _ in range(8)]
    ran_on = [f.result(timeout=30) for f in burst]
    assert len(set(ran_on)) >= 3, ran_on  # (4 when the new workers boot within 1 s)


def test_no_thread_of_a_pool_outlives_its_shutdown(tmp_path: Path) -> None:
    """Not even the timer that imports the standard-library error classes a moment after
    the start (``_manager._import_errors``), in a fresh interpreter that has not
    imported them yet."""
    script = (
        "import sys, threading\n"
        "import hookpool\n"
        'if __name__ == "__main__":\n'
        "    with hookpool.ProcessPoolExecutor(1) as ex:\n"
        "        assert ex.submit(abs, -3).result(30) == 3\n"
        "    pool = hookpool.Pool(1)\n"
        "    assert pool.apply(abs, (-3,)) == 3\n"
        "    pool.close()\n"
        "    pool.join()\n"
        '    print("hookpool._std_errors" in sys.modules)\n'
        "    names = [t.name for t in threading.enumerate()]\n"
        '    print(sorted(n for n in names if n.startswith("hookpool")))\n'
    )
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False", "[]"], result.stdout


def test_tasks_cancelled_while_queued_start_no_worker(
    make_hook: MakeExecutor, tmp_path: Path
) -> None:
    """The executor grows for the tasks that wait, not for those cancelled meanwhile
    (``shutdown(cancel_futures=True)`` after a burst, say): starting a worker, with its
    initializer and finalizer, only to drop them is waste."""
    d = str(tmp_path)
    ex = make_hook(4, initializer=init_record, initargs=(d,))
    go_long, go_first, go_next = (str(tmp_path / name) for name in ("long", "first", "next"))
    long_one = ex.submit(hold_until, go_long)
    first = ex.submit(hold_until, go_first)  # on a second worker, started for it
    wait_for(lambda: len(counts(d)[0]) == 2, 30, "two workers")
    queued: list[Future[Any]] = []

    def burst(_: Future[Any]) -> None:
        # On the manager thread, as the first ends: both workers are busy again once it
        # returns, and six cancelled tasks wait in the queue.
        queued.append(ex.submit(hold_until, go_next))
        queued.extend(ex.submit(square, i) for i in range(6))
        for future in queued[1:]:
            future.cancel()

    first.add_done_callback(burst)
    Path(go_first).touch()
    wait_for(lambda: len(queued) == 7, 30, "the burst")
    assert all(future.cancelled() for future in queued[1:])
    time.sleep(0.3)  # (a worker started for them would be starting by now)
    assert len(ex.worker_pids) == 2
    Path(go_next).touch()
    Path(go_long).touch()
    assert queued[0].result(timeout=30) == long_one.result(timeout=30) is None
    assert len(counts(d)[0]) == 2


def test_map_in_order_with_several_iterables_and_chunksize(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    expected = [a + b for a, b in zip(range(20), range(100, 115), strict=False)]
    for chunksize in (1, 3, 50):
        results = ex.map(add, range(20), range(100, 115), chunksize=chunksize, timeout=30)
        assert iter(results) is results
        assert list(results) == expected  # shortest iterable wins, as with builtin map
    assert list(ex.map(square, [], timeout=30)) == []
    # Later items finish first; results still come in input order.
    assert list(ex.map(sleep_then, [0.4, 0.0, 0.2, 0.0], "abcd", timeout=30)) == list("abcd")


def test_map_raises_a_task_error_at_its_position(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    results = ex.map(raise_value_error, ["first", "second"], timeout=30)
    with pytest.raises(ValueError, match="first"):
        next(results)


def test_map_timeout_counts_from_the_call(make_executor: MakeExecutor) -> None:
    ex = make_executor(1)
    ex.submit(square, 1).result(timeout=30)  # the worker is up: only the tasks take time
    results = ex.map(sleep_then, [0.0, 2.5], ["quick", "slow"], timeout=1.5)
    time.sleep(1.7)  # the deadline passes while the consumer is busy elsewhere
    assert next(results) == "quick"  # a result that is ready is returned even so
    # Counted from the call, the deadline has passed and "slow" (done at about 2.5 s) is
    # not ready: TimeoutError now. Counted from next(), it would return "slow" instead.
    with pytest.raises(concurrent.futures.TimeoutError) as info:
        next(results)
    assert not isinstance(info.value, hookpool.TaskTimeoutError)  # only the wait ran out
    assert next(results, "exhausted") == "exhausted"


def test_map_over_an_endless_generator_reads_a_bounded_amount_ahead(
    make_hook: MakeExecutor,
) -> None:
    ex = make_hook(2)
    for chunksize in (1, 4):
        produced = 0

        def numbers() -> Iterator[int]:
            nonlocal produced
            for i in itertools.count():
                produced += 1
                yield i

        ahead = hookpool._calls.imap_window(2, chunksize) * chunksize + chunksize
        results = ex.map(add, numbers(), itertools.count(), chunksize=chunksize, timeout=30)
        assert list(itertools.islice(results, 10)) == [2 * i for i in range(10)]
        assert 10 <= produced <= 10 + ahead, f"read {produced} items ahead of 10 consumed"
        assert list(itertools.islice(results, 10)) == [2 * i for i in range(10, 20)]
        assert 20 <= produced <= 20 + ahead
        results.close()  # cancels the chunks still queued
    ex.shutdown(wait=True)


# -- shutdown and cancellation ---------------------------------------------------------------


def test_submit_and_map_after_shutdown_raise_runtime_error(make_executor: MakeExecutor) -> None:
    ex = make_executor(1)
    assert ex.submit(square, 2).result(timeout=30) == 4
    ex.shutdown()
    ex.shutdown()  # idempotent
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)
    with pytest.raises(RuntimeError):
        ex.map(square, [1])


def test_context_manager_waits_and_shuts_down(make_executor: MakeExecutor) -> None:
    ex = make_executor(1)
    with ex as entered:
        assert entered is ex
        future = ex.submit(sleep_then, 0.3, "waited")
    assert future.done()
    assert future.result() == "waited"
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)


def test_cancelled_queued_future_never_runs(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(1)
    ex.submit(square, 1).result(timeout=30)
    busy = ex.submit(sleep_then, 1.0, "busy")
    # Both executors may hand a task or two to the worker ahead of time (the stdlib's call
    # queue, hookpool's prefetch): those can no longer be cancelled. The fillers take
    # those places; the marker task stays queued.
    fillers = [ex.submit(square, i) for i in range(3)]
    marker = tmp_path / "ran"
    queued = ex.submit(write_marker, str(marker), "ran")
    assert queued.cancel()
    assert queued.cancelled()
    ex.shutdown(wait=True)
    assert busy.result() == "busy"
    assert [f.result() for f in fillers] == [0, 1, 4]
    assert not marker.exists(), "a cancelled future's task ran"
    with pytest.raises(CancelledError):
        queued.result()


def test_shutdown_cancel_futures_cancels_queued_ones(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(1)
    running = tmp_path / "running"
    running.mkdir()
    busy = ex.submit(mark_then_sleep, str(running), 1.0)
    wait_for(lambda: running_pids(str(running)), what="the busy task to start")
    rest = [ex.submit(write_marker, str(tmp_path / f"m{i}"), i) for i in range(8)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert busy.result() == running_pids(str(running)).pop()
    assert all(f.done() for f in rest)
    cancelled = [i for i, f in enumerate(rest) if f.cancelled()]
    assert len(cancelled) >= 5, f"only {cancelled} were cancelled"
    for i, future in enumerate(rest):
        if i in cancelled:
            assert not (tmp_path / f"m{i}").exists(), f"cancelled task {i} ran"
        else:
            assert future.result() == i


def test_shutdown_without_wait_returns_and_the_work_completes(
    make_executor: MakeExecutor,
) -> None:
    ex = make_executor(1)
    future = ex.submit(sleep_then, 1.5, "finished")
    pids = pids_of(ex)
    start = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - start < 10
    assert not future.done(), "shutdown(wait=False) waited for the running task"
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    assert future.result(timeout=30) == "finished"
    assert_gone(pids, timeout=20)  # the workers leave once the work is done


# -- the concurrent.futures and asyncio toolbox ------------------------------------------------


def test_as_completed_and_wait(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    futures = [ex.submit(sleep_then, d, i) for i, d in enumerate([0.4, 0.0, 0.2, 0.0])]
    finished = [f.result() for f in concurrent.futures.as_completed(futures, timeout=30)]
    assert sorted(finished) == [0, 1, 2, 3]

    bad = ex.submit(raise_value_error, "first to fail")
    slow = ex.submit(sleep_then, 0.5, "slow")
    done, _ = concurrent.futures.wait(
        [bad, slow], timeout=30, return_when=concurrent.futures.FIRST_EXCEPTION
    )
    assert bad in done
    done, not_done = concurrent.futures.wait([bad, slow], timeout=30)
    assert not not_done
    assert slow.result() == "slow"


def test_asyncio_run_in_executor_and_wrap_future(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        a = loop.run_in_executor(ex, square, 7)
        b = asyncio.wrap_future(ex.submit(add, 1, 2))
        c = asyncio.wrap_future(ex.submit(raise_value_error, "async boom"))
        gathered = asyncio.gather(a, b, c, return_exceptions=True)
        return await asyncio.wait_for(gathered, 30)

    got = asyncio.run(main())
    assert got[:2] == [49, 3]
    assert isinstance(got[2], ValueError)
    assert str(got[2]) == "async boom"


# -- interpreter exit ---------------------------------------------------------------------------

EXIT_SCRIPT = """
import concurrent.futures
import multiprocessing
import sys

import hookpool
from tasks import fin_record, init_record, sleep_then, square


def report(future):
    print("callback", future.result(), flush=True)


if __name__ == "__main__":
    kind, directory = sys.argv[1], sys.argv[2]
    if kind == "hookpool":
        ex = hookpool.ProcessPoolExecutor(
            2,
            initializer=init_record,
            initargs=(directory,),
            finalizer=fin_record,
            finalargs=(directory,),
        )
    else:
        ex = concurrent.futures.ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("spawn")
        )
    print("result", ex.submit(square, 7).result(), flush=True)
    late = ex.submit(sleep_then, 0.5, "late")
    late.add_done_callback(report)
    if kind == "hookpool":  # (workers start as tasks need them: after the submits)
        print("pids", *ex.worker_pids, flush=True)
    print("main done", flush=True)
    # no shutdown(), no with: the interpreter exits with the executor still open
"""


@pytest.mark.parametrize("kind", ["hookpool", "stdlib"])
def test_interpreter_exits_cleanly_without_shutdown(kind: str, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    start = time.monotonic()
    proc = run_script(EXIT_SCRIPT, tmp_path, timeout=45, args=(kind, str(markers)))
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert "result 49" in lines
    assert "main done" in lines
    assert "callback late" in lines, proc.stdout
    assert elapsed < 30
    if kind == "hookpool":
        (pid_line,) = [line for line in lines if line.startswith("pids ")]
        pids = [int(p) for p in pid_line.split()[1:]]
        assert pids
        assert_gone(pids)
        inits, fins = counts(str(markers))
        assert inits, "no initializer ran"
        assert fins == dict.fromkeys(inits, 1), (inits, fins)


@pytest.mark.parametrize("kind", ["hookpool", "stdlib"])
def test_dropped_executor_releases_its_workers(kind: str) -> None:
    """An executor that is garbage collected without shutdown() does not keep its worker
    processes until interpreter exit (the standard library's workers leave once it is
    collected)."""
    ex: Any
    if kind == "hookpool":
        ex = hookpool.ProcessPoolExecutor(1)
    else:
        ex = concurrent.futures.ProcessPoolExecutor(1, mp_context=SPAWN)
    manager = getattr(ex, "_manager", None)  # for the cleanup only
    try:
        assert ex.submit(square, 3).result(timeout=30) == 9
        pids = pids_of(ex)
        assert pids
        del ex
        gc.collect()
        assert_gone(pids, timeout=8)
    finally:
        if manager is not None:
            manager.terminate()
            join_manager(manager)


# -- lifecycle hooks --------------------------------------------------------------------------


def hooks(directory: Path) -> dict[str, Any]:
    d = str(directory)
    return {
        "initializer": init_record,
        "initargs": (d,),
        "finalizer": fin_record,
        "finalargs": (d,),
    }


def test_finalizer_runs_once_per_worker_at_shutdown(
    make_hook: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_hook(2, **hooks(tmp_path))
    assert list(ex.map(square, range(10), timeout=30)) == [x * x for x in range(10)]
    pids = ex.worker_pids
    ex.shutdown(wait=True)
    inits, fins = counts(str(tmp_path))
    assert inits == {str(p): 1 for p in pids}
    assert fins == inits
    assert_gone(pids)


def test_finalizer_runs_when_a_worker_is_recycled(make_hook: MakeExecutor, tmp_path: Path) -> None:
    ex = make_hook(1, max_tasks_per_child=2, **hooks(tmp_path))
    used = [ex.submit(pid).result(timeout=30) for _ in range(6)]
    per_worker = collections.Counter(used)
    assert sorted(per_worker.values()) == [2, 2, 2], per_worker
    # The first worker was recycled while the executor still runs: its finalizer ran.
    fin_marker = tmp_path / f"fin-{used[0]}"
    wait_for(
        lambda: fin_marker.exists() and fin_marker.read_text() == "1",
        what="the recycled worker's finalizer",
    )
    ex.shutdown(wait=True)
    inits, fins = counts(str(tmp_path))
    assert {str(p) for p in per_worker} <= set(inits)
    assert fins == dict.fromkeys(inits, 1), (inits, fins)
    assert_gone(list(per_worker))


# -- failures: a dead worker, a timeout, a cancelled running task -----------------------------


def test_a_worker_killed_mid_task_fails_only_that_future(make_hook: MakeExecutor) -> None:
    ex = make_hook(2)
    others = [ex.submit(sleep_then, 0.1, i) for i in range(4)]
    doomed = ex.submit(kill_self)
    others += [ex.submit(sleep_then, 0.1, i) for i in range(4, 8)]
    try:
        doomed.result(timeout=30)
    except BrokenProcessPool as exc:  # what code written for the stdlib catches
        error = exc
    else:
        pytest.fail("the task that killed its worker did not fail")
    assert isinstance(error, hookpool.WorkerLostError)
    assert error.exitcode == -signal.SIGKILL
    assert [f.result(timeout=30) for f in others] == list(range(8))
    assert ex.submit(square, 9).result(timeout=30) == 81  # still accepting work
    assert error.pid not in ex.worker_pids
    assert_gone([error.pid])
    wait_for(lambda: len(ex.worker_pids) == 2, what="the replacement worker")


def test_task_timeout_fails_the_task_and_the_executor_keeps_working(
    make_hook: MakeExecutor,
) -> None:
    ex = make_hook(1, task_timeout=1.0)
    assert ex.submit(square, 1).result(timeout=30) == 1
    [first_worker] = ex.worker_pids
    slow = ex.submit(sleep_then, 30, "never")
    with pytest.raises(concurrent.futures.TimeoutError) as info:
        slow.result(timeout=20)
    assert isinstance(info.value, hookpool.TaskTimeoutError)
    assert slow.done(), "the wait ran out, not the task"
    assert ex.submit(square, 4).result(timeout=30) == 16
    assert_gone([first_worker])
    results = ex.map(sleep_then, [0.0, 30.0], ["quick", "never"], timeout=30)
    assert next(results) == "quick"
    with pytest.raises(hookpool.TaskTimeoutError):
        next(results)
    with pytest.raises(ValueError):
        hookpool.ProcessPoolExecutor(1, task_timeout=0)


def test_cancel_a_running_task(make_hook: MakeExecutor, tmp_path: Path) -> None:
    ex = make_hook(2)
    running = ex.submit(mark_then_sleep, str(tmp_path), 30)
    wait_for(lambda: running_pids(str(tmp_path)), what="the task to start")
    [victim] = running_pids(str(tmp_path))
    other = ex.submit(sleep_then, 0.3, "other")
    start = time.monotonic()
    assert ex.cancel(running) is True
    with pytest.raises(CancelledError):
        running.result(timeout=10)
    assert time.monotonic() - start < 10
    assert other.result(timeout=30) == "other"
    assert ex.submit(square, 6).result(timeout=30) == 36
    assert_gone([victim])
    assert ex.cancel(other) is False  # already finished


def test_cancel_a_task_waiting_behind_a_running_one_never_runs_it(
    make_hook: MakeExecutor, tmp_path: Path
) -> None:
    """With one worker busy, a short task submitted behind the running one has not
    started, but the worker may already hold it (prefetch; its future then says
    ``running()``). ``executor.cancel()`` on it returns True and the future fails with
    CancelledError, so the task must not run. (A race: three rounds to make it show.)"""
    ex = make_hook(1)
    for round_ in range(3):
        running = tmp_path / f"running{round_}"
        running.mkdir()
        busy = ex.submit(mark_then_sleep, str(running), 0.5)
        wait_for(lambda d=running: running_pids(str(d)), what="the busy task to start")
        marker = tmp_path / f"ran{round_}"
        waiting = ex.submit(write_marker, str(marker), "ran")
        # Either dispatched behind the busy task (prefetch) or still queued.
        time.sleep(0.1)
        assert ex.cancel(waiting) is True
        with pytest.raises(CancelledError):
            waiting.result(timeout=10)
        assert busy.result(timeout=30) == running_pids(str(running)).pop()
        time.sleep(0.2)  # a task that was not stopped in time writes its marker by now
        assert not marker.exists(), f"round {round_}: a cancelled task that had not started ran"
    ex.shutdown(wait=True)


def test_a_submit_racing_the_wakeup_drain_is_not_lost(
    make_hook: MakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Manager._drain_wakeups`` clears ``_wake_pending`` before it reads the wake-up
    pipe. A ``_wake()`` in between sets the flag and writes a byte, which that read then
    swallows: the flag stays set with an empty pipe, every later ``_wake()`` skips its
    write, and the manager sleeps through new work (a submit never runs; shutdown never
    finishes; interpreter exit hangs on the non-daemon workers). The race is natural
    (``os.read`` releases the GIL); a slower ``os.read`` in the manager makes it certain.
    """
    ex = make_hook(1)
    assert ex.submit(square, 1).result(timeout=30) == 1  # the manager is idle now
    real_read = os.read

    def slow_read(fd: int, n: int) -> bytes:
        time.sleep(0.5)
        return real_read(fd, n)

    slow_os = types.SimpleNamespace(**vars(os))
    slow_os.read = slow_read
    monkeypatch.setattr(hookpool._manager, "os", slow_os)
    first = ex.submit(square, 2)  # wakes the manager, which starts draining (slowly)
    time.sleep(0.2)
    second = ex.submit(square, 3)  # inside the drain
    assert first.result(timeout=30) == 4
    assert second.result(timeout=30) == 9
    time.sleep(1.2)  # the manager has gone back to sleep
    third = ex.submit(square, 4)
    try:
        third.result(timeout=5)
    except concurrent.futures.TimeoutError:
        os.write(ex._manager._wake_w, b"\0")  # unstick it, so that the teardown is clean
        pytest.fail("a task submitted to an idle executor never ran: lost wake-up")
    assert third.result() == 16


# -- construction --------------------------------------------------------------------------------


def _manager_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.endswith("-manager"))


def test_constructor_validation(
    make_executor: MakeExecutor, request: pytest.FixtureRequest
) -> None:
    threads = _manager_threads()
    with pytest.raises(ValueError):
        make_executor(max_workers=0)
    with pytest.raises(ValueError):
        make_executor(max_workers=-1)
    kind = request.node.callspec.params["make_executor"]
    if kind == "hookpool" or sys.version_info >= (3, 11):  # the stdlib's has it from 3.11
        with pytest.raises(ValueError):
            make_executor(1, max_tasks_per_child=0)
    assert _manager_threads() == threads


def test_hookpool_constructor_refuses_fork_and_is_an_executor(make_hook: MakeExecutor) -> None:
    threads = _manager_threads()
    with pytest.raises(ValueError, match="spawn"):
        make_hook(1, mp_context=multiprocessing.get_context("fork"))
    with pytest.raises(ValueError, match=r"Pass mp_context=None \(spawn\)"):
        make_hook(1, mp_context="fork")
    assert _manager_threads() == threads
    assert issubclass(hookpool.ProcessPoolExecutor, concurrent.futures.Executor)
    ex = make_hook(1)
    assert isinstance(ex, concurrent.futures.Executor)
    assert ex.submit(square, 5).result(timeout=30) == 25
