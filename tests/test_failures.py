"""Nothing hangs, nothing is lost: the crash table, timeouts, cancellation, Ctrl-C, leaks."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import itertools
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tasks
import tasks_crash
from conftest import assert_gone, run_script
from tasks_hooks import wait_ready

import hookpool
import hookpool._calls
import hookpool._manager
import hookpool._spawn
import hookpool._worker


@dataclass(frozen=True)
class Crash:
    """One row of the crash table: a task (or argument) and the error it must produce."""

    name: str
    fn: Callable[..., Any]
    arg: Any
    error: type[BaseException]
    message: str  # a fragment the error's text must contain


CRASHES = [
    Crash("sigkill", tasks_crash.sigkill_self, None, hookpool.WorkerLostError, "SIGKILL"),
    Crash("os._exit", tasks_crash.exit_abruptly, None, hookpool.WorkerLostError, "code 7"),
    Crash("segfault", tasks_crash.segfault, None, hookpool.WorkerLostError, "SIGSEGV"),
    Crash(
        "exception unpicklable in parent",
        tasks_crash.raise_two_arg_error,
        None,
        hookpool.RemoteError,
        "TwoArgError",
    ),
    Crash(
        "exception that will not pickle",
        tasks_crash.raise_lock_holding_error,
        None,
        hookpool.RemoteError,
        "holds a lock",
    ),
    Crash(
        "result that will not pickle",
        tasks_crash.return_lock,
        None,
        hookpool.ResultEncodingError,
        "lock",
    ),
    Crash(
        "result that will not unpickle",
        tasks_crash.return_unloadable,
        None,
        hookpool.ResultEncodingError,
        "cannot be unpickled",
    ),
    Crash(
        "argument that kills the worker as it unpickles",
        tasks_crash.take,
        tasks_crash.ExitAtUnpickle(),
        hookpool.WorkerLostError,
        "code 9",
    ),
    Crash(
        "argument that fails to unpickle in the worker",
        tasks_crash.take,
        tasks_crash.ErrorAtUnpickle(),
        ImportError,
        "cannot rebuild",
    ),
]


@pytest.mark.parametrize("crash", CRASHES, ids=lambda c: c.name)
def test_crash_fails_only_its_task(crash: Crash, make_pool: Callable[..., hookpool.Pool]) -> None:
    pool = make_pool(2)
    before = [pool.apply_async(tasks.square, (i,)) for i in range(4)]
    bad = pool.apply_async(crash.fn, (crash.arg,))
    after = [pool.apply_async(tasks.square, (i,)) for i in range(4, 8)]
    with pytest.raises(crash.error) as info:
        bad.get(timeout=30)
    assert crash.message.lower() in str(info.value).lower()
    assert [r.get(timeout=30) for r in before + after] == [i * i for i in range(8)]
    assert pool.map(tasks.square, range(20)) == [i * i for i in range(20)]


def test_worker_lost_error_names_pid_exit_and_task(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    pool = make_pool(1)
    with pytest.raises(hookpool.WorkerLostError) as info:
        pool.map(tasks_crash.exit_abruptly, range(3), chunksize=1)
    error = info.value
    assert error.pid is not None and str(error.pid) in str(error)
    assert error.exitcode == 7
    assert "item 0 of map(exit_abruptly" in str(error)
    assert isinstance(error, concurrent.futures.process.BrokenProcessPool)


def test_imap_raises_worker_loss_at_its_position(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    pool = make_pool(2)
    results = pool.imap(_maybe_exit, range(6))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(hookpool.WorkerLostError):
        next(results)
    assert list(results) == [4, 5]


def _maybe_exit(x: int) -> int:
    if x == 3:
        os._exit(1)
    return x


def test_unpicklable_argument_fails_its_result_not_the_call(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    """As in the standard library: the call returns, get() raises the pickling error,
    the error callback receives it, and the pool keeps working."""
    pool = make_pool(1)
    seen: list[BaseException] = []
    result = pool.apply_async(
        tasks_crash.take, (tasks_crash.ErrorAtPickle(),), error_callback=seen.append
    )
    result.wait(10)
    assert result.ready() and not result.successful()
    with pytest.raises(TypeError, match="refuses to be pickled"):
        result.get(timeout=10)
    assert [type(error) for error in seen] == [TypeError]
    with pytest.raises(TypeError, match="refuses to be pickled"):
        pool.map(tasks_crash.take, [1, tasks_crash.ErrorAtPickle()])
    assert pool.apply(tasks.square, (3,)) == 9


def test_a_late_chunk_that_will_not_pickle_fails_the_map(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    """The first chunks are queued while the rest is pickled: one that will not pickle
    fails the map (its error callback runs once, the progress is closed) and the chunks
    after it never run."""
    pool = make_pool(2)
    items = [1, 2, 3, 4, 5, tasks_crash.ErrorAtPickle(), 7, 8]
    called: list[object] = []
    reports: list[tuple[int, int | None]] = []
    result = pool.map_async(
        tasks_crash.take,
        items,
        1,
        callback=called.append,
        error_callback=called.append,
        progress=lambda done, total: reports.append((done, total)),
    )
    with pytest.raises(TypeError, match="refuses to be pickled"):
        result.get(timeout=30)
    assert pool.apply(tasks.square, (3,)) == 9  # the early chunks are out of the way
    assert [type(error) for error in called] == [TypeError]
    assert reports[-1][1] == len(items)


def test_imap_chunk_that_fails_to_pickle_fails_only_that_chunk(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    pool = make_pool(2)
    items = [1, 2, tasks_crash.ErrorAtPickle(), 4]
    results = pool.imap(tasks_crash.take, items)
    assert [next(results), next(results)] == ["int", "int"]
    with pytest.raises(TypeError, match="refuses to be pickled"):
        next(results)
    assert list(results) == ["int"]


def test_lock_as_task_argument_says_use_initargs(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    pool = make_pool(1)
    lock = hookpool.get_context().Lock()
    with pytest.raises(RuntimeError, match="initargs"):
        pool.apply_async(tasks.identity, (lock,)).get(timeout=10)
    assert pool.apply(tasks.square, (2,)) == 4


# -- timeouts and cancellation -------------------------------------------------------------


def test_task_timeout_stops_and_replaces_the_worker(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    pool = make_pool(2)
    slow = pool.apply_async(tasks.sleep_then, (60,), task_timeout=0.5)
    others = [pool.apply_async(tasks.square, (i,)) for i in range(6)]
    with pytest.raises(hookpool.TaskTimeoutError) as info:
        slow.get(timeout=30)
    assert isinstance(info.value, multiprocessing.TimeoutError)
    assert isinstance(info.value, concurrent.futures.TimeoutError)
    assert [r.get(timeout=30) for r in others] == [i * i for i in range(6)]
    assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]


def test_pool_wide_task_timeout_applies_to_map_chunks(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    pool = make_pool(2, task_timeout=0.5)
    with pytest.raises(hookpool.TaskTimeoutError, match="item 1 of map"):
        pool.map(_sleep_on_one, range(4), chunksize=1)
    assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]


def _sleep_on_one(x: int) -> int:
    if x == 1:
        time.sleep(60)
    return x


def test_get_timeout_only_stops_waiting(make_pool: Callable[..., hookpool.Pool]) -> None:
    pool = make_pool(1)
    result = pool.apply_async(tasks.sleep_then, (1.0, "done"))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    assert result.get(timeout=30) == "done"


def test_cancel_running_task_on_request(
    make_pool: Callable[..., hookpool.Pool], tmp_path: Path
) -> None:
    pool = make_pool(1)
    running = pool.submit(tasks_crash.record_run, str(tmp_path), "long", 60)
    _wait_for(lambda: (tmp_path / "long").exists(), "the long task to start")
    assert pool.cancel(running)
    with pytest.raises(concurrent.futures.CancelledError):
        running.result(timeout=30)
    assert pool.apply(tasks.square, (5,)) == 25
    assert (tmp_path / "long").read_text() == "x"  # it ran once, and was not re-run


@pytest.mark.parametrize("handle", ["result", "future"])
def test_cancel_running_apply_async_on_request(
    make_pool: Callable[..., hookpool.Pool], tmp_path: Path, handle: str
) -> None:
    """``Pool.cancel`` of an ``apply_async`` result, or of its ``.future`` (a mirror made
    on request), stops the running task."""
    pool = make_pool(1)
    running = pool.apply_async(tasks_crash.record_run, (str(tmp_path), "long", 60))
    _wait_for(lambda: (tmp_path / "long").exists(), "the long task to start")
    future = running.future
    assert future.running()
    assert pool.cancel(running if handle == "result" else future)
    with pytest.raises(concurrent.futures.CancelledError):
        running.get(timeout=30)
    assert isinstance(future.exception(timeout=30), concurrent.futures.CancelledError)
    assert pool.apply(tasks.square, (5,)) == 25
    assert (tmp_path / "long").read_text() == "x"  # it ran once, and was not re-run


def test_cancelled_queued_task_never_runs(
    make_pool: Callable[..., hookpool.Pool], tmp_path: Path
) -> None:
    pool = make_pool(1)
    blocker = pool.submit(tasks_crash.record_run, str(tmp_path), "blocker", 1.0)
    queued = [pool.submit(tasks_crash.record_run, str(tmp_path), f"q{i}") for i in range(3)]
    assert queued[1].cancel()
    assert blocker.result(timeout=30) == "blocker"
    assert queued[0].result(timeout=30) == "q0" and queued[2].result(timeout=30) == "q2"
    pool.close()
    pool.join()
    assert not (tmp_path / "q1").exists()


# -- Ctrl-C, parent death ----------------------------------------------------------------------

CTRL_C_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import hookpool, tasks

WAITS = {{
    "map": lambda pool: pool.map(tasks.sleep_then, [60] * 4, chunksize=1),
    "imap": lambda pool: list(pool.imap(tasks.sleep_then, [60] * 4)),
    "get": lambda pool: pool.apply_async(tasks.sleep_then, (60,)).get(),
    "result": lambda pool: pool.submit(tasks.sleep_then, 60).result(),
}}

if __name__ == "__main__":
    d, wait = sys.argv[1], sys.argv[2]
    with hookpool.Pool(2, initializer=tasks.init_record, initargs=(d,),
                       finalizer=tasks.fin_record, finalargs=(d,)) as pool:
        print("pids", *pool.worker_pids, flush=True)
        WAITS[wait](pool)
"""


@pytest.mark.parametrize("wait", ["map", "imap", "get", "result"])
def test_ctrl_c_interrupts_promptly_and_leaves_no_worker(tmp_path: Path, wait: str) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the
    parent raises KeyboardInterrupt, the workers ignore it (no traceback from each), and
    the `with` exit stops them, running their finalizers."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT.format(tests=str(Path(__file__).parent)))
    markers = tmp_path / "markers"
    markers.mkdir()
    with subprocess.Popen(
        [sys.executable, str(script), str(markers), wait],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal would give it
    ) as child:
        try:
            assert child.stdout is not None
            pids = [int(p) for p in child.stdout.readline().split()[1:]]
            _wait_for(lambda: len(tasks.counts(str(markers))[0]) == 2, "both workers to start")
            time.sleep(0.3)  # let the work reach the workers
            os.killpg(child.pid, signal.SIGINT)
            _, stderr = child.communicate(timeout=20)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
    assert "KeyboardInterrupt" in stderr
    assert stderr.count("Traceback") == 1, stderr  # the parent's only: workers stay quiet
    assert_gone(pids)
    inits, fins = tasks.counts(str(markers))
    assert fins == inits  # each worker ran its finalizer within the grace period


PARENT_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import hookpool, tasks

if __name__ == "__main__":
    d = sys.argv[1]
    pool = hookpool.Pool(3, initializer=tasks.init_record, initargs=(d,),
                         finalizer=tasks.fin_record, finalargs=(d,))
    pool.apply_async(tasks.sleep_then, (60,))  # one busy worker, two idle
    print("pids", *pool.worker_pids, flush=True)
    time.sleep(60)
"""


def test_parent_sigkill_leaves_no_orphans(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT.format(tests=str(Path(__file__).parent)))
    markers = tmp_path / "markers"
    markers.mkdir()
    with subprocess.Popen(
        [sys.executable, str(script), str(markers)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            pids = [int(p) for p in child.stdout.readline().split()[1:]]
            _wait_for(lambda: len(tasks.counts(str(markers))[0]) == 3, "all workers to start")
        finally:
            child.kill()
            child.wait(timeout=30)
    assert_gone(pids, timeout=15)
    inits, fins = tasks.counts(str(markers))
    assert fins == inits


BLOCKED_INIT_SCRIPT = """
import time
import hookpool

if __name__ == "__main__":
    pool = hookpool.Pool(2, initializer=time.sleep, initargs=(3600,))  # never finishes
    print("pids", *pool.worker_pids, flush=True)
    time.sleep(60)
"""


def test_parent_sigkill_while_the_initializer_blocks_leaves_no_orphans(tmp_path: Path) -> None:
    """A worker that cannot honour the stop (its initializer blocks, say on a Lock the
    dead parent held) still exits, after the grace period."""
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED_INIT_SCRIPT)
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            pids = [int(p) for p in child.stdout.readline().split()[1:]]
            time.sleep(1.0)  # let the workers reach their initializer
        finally:
            child.kill()
            child.wait(timeout=30)
    assert len(pids) == 2
    assert_gone(pids, timeout=hookpool._worker.ORPHAN_GRACE_SECONDS + 10)


# -- backpressure, leaks, the manager itself ---------------------------------------------------


def test_imap_reads_an_endless_generator_a_bounded_amount_ahead(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    pool = make_pool(2)
    produced = itertools.count()
    read = [0]

    def numbers() -> Any:
        for n in produced:
            read[0] = n + 1
            yield n

    results = pool.imap(tasks.square, numbers(), chunksize=10)
    ahead = hookpool._calls.imap_window(2, 10) * 10 + 10  # the window, and one chunk
    assert ahead < 500
    for expected in range(500):
        assert next(results) == expected * expected
        assert read[0] - expected <= ahead


def test_no_leaks_across_many_pools() -> None:
    def snapshot() -> tuple[int, int, int]:
        # A worker's process object (its sentinel fd) is released with it, not closed by
        # the pool (the user may hold it: Pool._pool): active_children() lets
        # multiprocessing drop the ones that ended, and gc the cycles holding some.
        children = len(multiprocessing.active_children())
        gc.collect()
        return (threading.active_count(), len(os.listdir("/proc/self/fd")), children)

    def cycle(i: int) -> None:
        """One pool or executor, ended one of the ways a user ends them, some of them
        after a worker was killed or a task timed out."""
        kind = i % 5
        if kind == 0:
            hookpool.Pool(1).terminate()
        elif kind == 1:
            pool = hookpool.Pool(1)
            assert pool.apply(tasks.square, (i,)) == i * i
            pool.close()
            pool.join()
        elif kind == 2:
            with hookpool.ProcessPoolExecutor(1) as ex:
                assert ex.submit(tasks.square, i).result(timeout=30) == i * i
        elif kind == 3:
            with hookpool.Pool(1) as pool:
                with pytest.raises(hookpool.WorkerLostError):
                    pool.apply(tasks_crash.sigkill_self)
                assert pool.apply(tasks.square, (i,)) == i * i
        else:
            with (
                hookpool.ProcessPoolExecutor(1, task_timeout=0.2) as ex,
                pytest.raises(hookpool.TaskTimeoutError),
            ):
                ex.submit(tasks.sleep_then, 30).result(timeout=30)

    for i in range(5):  # warm up lazily created module state
        cycle(i)
    baseline = snapshot()
    for i in range(100):
        cycle(i)
    deadline = time.monotonic() + 10  # children reaped, threads ended
    while snapshot() != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert snapshot() == baseline


def test_resource_tracker_stays_quiet(tmp_path: Path) -> None:
    result = run_script(
        "import hookpool, tasks\n"
        "if __name__ == '__main__':\n"
        "    for i in range(20):\n"
        "        with hookpool.Pool(2) as pool:\n"
        "            assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]\n"
        "        pool = hookpool.Pool(1, initargs=(hookpool.get_context().Lock(),),\n"
        "                             initializer=tasks.identity)\n"
        "        pool.close(); pool.join()\n"
        "    print('ok')\n",
        tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "resource_tracker" not in result.stderr and "leaked" not in result.stderr


@pytest.mark.parametrize(
    ("broken", "task_timeout"),
    [
        # A task sent straight to the idle worker: the bug is met when its answer arrives
        # (a Future: an AsyncResult's waiter could read that answer itself).
        ("_on_result", None),
        # A task with a timeout goes through the queue, and so through _dispatch.
        ("_dispatch", 30.0),
    ],
)
def test_manager_internal_error_breaks_pool_loudly(
    make_pool: Callable[..., hookpool.Pool],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    broken: str,
    task_timeout: float | None,
) -> None:
    pool = make_pool(1)
    assert pool.apply(tasks.square, (2,)) == 4

    def bug(*args: Any) -> None:
        raise RuntimeError("simulated manager bug")

    monkeypatch.setattr(hookpool._manager.Manager, broken, bug)
    with caplog.at_level(logging.ERROR, logger="hookpool"):
        if task_timeout is None:
            pending = pool.submit(tasks.square, 3)
        else:
            pending = pool.apply_async(tasks.square, (3,), task_timeout=task_timeout).future
        with pytest.raises(hookpool.PoolBrokenError) as info:
            pending.result(timeout=30)
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(hookpool.PoolBrokenError):
            pool.submit(tasks.square, 4)
    assert "simulated manager bug" in caplog.text


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_manager_internal_error_fails_running_and_queued_tasks(
    make_pool: Callable[..., hookpool.Pool],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Requirement 9: every pending task, running or queued, fails with the error chained;
    the workers are gone."""
    pool = make_pool(1)
    running = pool.submit(tasks.sleep_then, 30)
    queued = [pool.submit(tasks.square, i) for i in range(3)]
    pids = pool.worker_pids
    time.sleep(0.3)  # let the long task start

    def broken_result(self: Any, worker: Any, message: Any) -> None:
        raise RuntimeError("simulated manager bug")

    monkeypatch.setattr(hookpool._manager.Manager, "_on_result", broken_result)
    with caplog.at_level(logging.ERROR, logger="hookpool"):
        trigger = pool.submit(tasks.square, 0)  # queued behind: wakes the manager
        pool._manager._commands.append(lambda: broken_result(None, None, None))
        pool._manager.wake()
        for future in [running, *queued, trigger]:
            with pytest.raises(hookpool.PoolBrokenError) as info:
                future.result(timeout=30)
            assert isinstance(info.value.__cause__, RuntimeError)
    assert "simulated manager bug" in caplog.text
    assert_gone(pids)


def test_a_worker_that_dies_while_idle_is_replaced(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    pool = make_pool(2)
    assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
    victim = pool.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: victim not in pool.worker_pids and len(pool.worker_pids) == 2, "a new one")
    assert pool.map(tasks.square, range(10)) == [i * i for i in range(10)]
    assert pool._manager.state is hookpool._manager.PoolState.RUNNING


def _starts_fail(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """While the returned event is set, starting a worker process fails as with no file
    descriptor to spare."""
    failing = threading.Event()
    real_start = hookpool._spawn.Spawner.start

    def start(self: hookpool._spawn.Spawner) -> Any:
        if failing.is_set():
            raise OSError(24, "Too many open files (injected)")
        return real_start(self)

    monkeypatch.setattr(hookpool._spawn.Spawner, "start", start)
    return failing


def test_a_replacement_that_cannot_start_is_tried_again_while_others_work(
    make_pool: Callable[..., hookpool.Pool],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = make_pool(2)
    wait_ready(pool, 2)  # (a worker dying while it starts counts towards breaking)
    failing = _starts_fail(monkeypatch)
    failing.set()
    victim = pool.worker_pids[0]
    with caplog.at_level(logging.WARNING, logger="hookpool"):
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: victim not in pool.worker_pids, "the victim's exit")
        # Tried more than once meanwhile: the pool carries on with its other worker.
        assert pool.map(tasks.sleep_then, [0.3] * 6, chunksize=1) == [None] * 6
    assert caplog.text.count("could not start a worker process") == 1  # (logged once)
    assert "Too many open files (injected)" in caplog.text
    assert len(pool.worker_pids) == 1
    # Failed starts while another worker runs do not count towards breaking the pool
    # (as workers dying while starting do): it never broke, and never will from these.
    assert pool._manager._startup_failures == 0
    failing.clear()
    _wait_for(lambda: len(pool.worker_pids) == 2, "the replacement, once starts work again")
    assert pool.map(tasks.square, range(10)) == [i * i for i in range(10)]
    assert pool._manager.state is hookpool._manager.PoolState.RUNNING


def test_a_pool_whose_last_worker_cannot_be_replaced_breaks_clearly(
    make_pool: Callable[..., hookpool.Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(1)
    wait_ready(pool, 1)
    failing = _starts_fail(monkeypatch)
    failing.set()
    os.kill(pool.worker_pids[0], signal.SIGKILL)
    _wait_for(lambda: not pool.worker_pids, "the worker's exit")  # (else the task is its)
    pending = pool.apply_async(tasks.square, (3,))
    with pytest.raises(hookpool.PoolBrokenError) as info:
        pending.get(timeout=30)  # after STARTUP_FAILURES_TO_BREAK tries, about 1 s
    message = str(info.value)
    assert "has no worker left to run its tasks and could not start one" in message
    assert "(3 workers in a row failed to start)" in message
    assert "Too many open files (injected)" in message
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(hookpool.PoolBrokenError):
        pool.apply_async(tasks.square, (4,))


def test_executor_keeps_running_when_it_cannot_grow(tmp_path: Path) -> None:
    """With no file descriptor to spare (a real RLIMIT_NOFILE), the executor cannot start
    its next worker: the tasks run on the one it has, and it grows once it can."""
    result = run_script(
        "import os, resource, time, hookpool, tasks\n"
        "if __name__ == '__main__':\n"
        "    with hookpool.ProcessPoolExecutor(4) as ex:\n"
        "        assert ex.submit(tasks.square, 3).result(timeout=30) == 9\n"
        "        assert len(ex.worker_pids) == 1\n"
        "        running = ex.submit(tasks.sleep_then, 1.0, 'running')\n"
        "        time.sleep(0.3)\n"
        "        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "        resource.setrlimit(resource.RLIMIT_NOFILE,\n"
        "                           (len(os.listdir('/proc/self/fd')) + 1, hard))\n"
        "        more = [ex.submit(tasks.square, i) for i in range(3)]\n"
        "        time.sleep(0.5)\n"
        "        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))\n"
        "        print(running.result(timeout=30), [f.result(timeout=30) for f in more])\n"
        "        later = [ex.submit(tasks.sleep_then, 0.5) for _ in range(4)]\n"
        "        [f.result(timeout=30) for f in later]\n"
        "        print(len(ex.worker_pids) > 1)\n",
        tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["running [0, 1, 4]", "True"]
    assert "could not start a worker process (OSError(24, 'Too many open files'))" in (
        result.stderr
    )


def test_future_cancel_never_stops_a_running_task(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    """Only Pool.cancel()/executor.cancel() stop a running task; Future.cancel() keeps
    its standard meaning (False once running)."""
    pool = make_pool(1)
    future = pool.submit(tasks.sleep_then, 0.5, "done")
    _wait_for(future.running, "the task to start")
    workers = pool.worker_pids
    assert future.cancel() is False
    assert future.result(timeout=30) == "done"
    assert pool.worker_pids == workers
