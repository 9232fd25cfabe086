"""The finalizer runs exactly once in every worker whose initializer ran, on every orderly
way out; an initializer that raises breaks the pool without a respawn loop."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import tasks_stages
from conftest import HERE, assert_gone, run_script
from hypothesis import given, settings
from hypothesis import strategies as st
from tasks import counts, fin_record, init_record, pid, sleep_then, square
from tasks_hooks import (
    fin_raise,
    fin_slow,
    init_fail,
    init_slow,
    mark_then_sleep,
    markers,
    wait_for,
    wait_ready,
)

import hookpool
import hookpool._events
import hookpool._manager

MakePool = Callable[..., hookpool.Pool]


def hooks(directory: Path) -> dict[str, object]:
    d = str(directory)
    return {
        "initializer": init_record,
        "initargs": (d,),
        "finalizer": fin_record,
        "finalargs": (d,),
    }


def assert_finalized_once(directory: Path, *, workers: int | None = None) -> dict[str, int]:
    """Every worker that ran the initializer ran the finalizer exactly once, and no other
    process ran it. Returns the init markers."""
    inits, fins = counts(str(directory))
    assert inits, "no initializer ran: the test did not exercise anything"
    assert fins == dict.fromkeys(inits, 1), f"init markers {inits}, fin markers {fins}"
    if workers is not None:
        assert len(inits) == workers, inits
    return inits


def wait_initialized(directory: Path, n: int) -> None:
    """Wait until ``n`` workers have run the initializer (a worker stopped while it is
    still starting up, before its initializer, legitimately runs neither hook)."""
    wait_for(lambda: len(markers(str(directory), "init")) >= n, what=f"{n} initializers")


def start_busy(directory: Path, pool: hookpool.Pool, n: int) -> tuple[list[object], set[int]]:
    """Put ``n`` idle workers into a long ``mark_then_sleep``; return results and pids."""
    wait_ready(pool, n)
    results = [pool.apply_async(mark_then_sleep, (str(directory), 60)) for _ in range(n)]
    return results, wait_busy(directory, pool, n)


def wait_busy(directory: Path, pool: hookpool.Pool, n: int, timeout: float = 10.0) -> set[int]:
    """Wait until ``n`` workers are inside ``mark_then_sleep``; return their pids."""
    wait_for(
        lambda: len(markers(str(directory), "running")) >= n,
        timeout=timeout,
        what=f"{n} busy workers",
    )
    busy = markers(str(directory), "running")
    assert busy <= set(pool.worker_pids)
    return busy


# -- close() + join() --------------------------------------------------------------------


def test_close_join_runs_each_finalizer_once(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(2, **hooks(tmp_path))
    assert pool.map(square, range(40), chunksize=1) == [x * x for x in range(40)]
    pids = pool.worker_pids
    pool.close()
    pool.join()
    inits = assert_finalized_once(tmp_path, workers=2)
    assert {int(p) for p in inits} == set(pids)
    assert_gone(pids)


def test_close_join_without_any_task(make_pool: MakePool, tmp_path: Path) -> None:
    """Workers that never ran a task still ran the initializer, so the finalizer too."""
    pool = make_pool(2, **hooks(tmp_path))
    pids = pool.worker_pids
    pool.close()
    pool.join()
    inits, fins = counts(str(tmp_path))
    assert fins == dict.fromkeys(inits, 1)
    assert_gone(pids)


def test_close_join_waits_for_queued_work(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(2, **hooks(tmp_path))
    results = [pool.apply_async(sleep_then, (0.05, i)) for i in range(10)]
    pool.close()
    pool.join()
    assert [r.get(timeout=0) for r in results] == list(range(10))
    assert_finalized_once(tmp_path, workers=2)


# -- recycling ------------------------------------------------------------------------------


@pytest.mark.parametrize("maxtasks", [1, 3])
def test_recycled_workers_each_finalized_once(
    make_pool: MakePool, tmp_path: Path, maxtasks: int
) -> None:
    pool = make_pool(2, maxtasksperchild=maxtasks, **hooks(tmp_path))
    task_pids = pool.map(pid, range(12), chunksize=1)
    pool.close()
    pool.join()
    inits = assert_finalized_once(tmp_path)
    assert len(set(task_pids)) > 2, "workers were not replaced"
    assert {str(p) for p in task_pids} <= set(inits)
    # No worker ran more tasks than allowed.
    for p in set(task_pids):
        assert task_pids.count(p) <= maxtasks


def test_recycling_then_terminate(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(2, maxtasksperchild=2, **hooks(tmp_path))
    assert len(set(pool.map(pid, range(10), chunksize=1))) > 2
    pool.terminate()
    assert_finalized_once(tmp_path)


# -- a finalizer slower than the terminate grace period -------------------------------------


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(hookpool._events, "TERMINATE_GRACE_SECONDS", 0.5)
    return 0.5


def test_slow_finalizer_completes_on_close_join(
    make_pool: MakePool, tmp_path: Path, short_grace: float
) -> None:
    """The grace period bounds terminate(); close()+join() is the orderly way out and
    lets a finalizer finish, as the standard library's join() does. (docs/lifecycle.md
    currently applies the grace period to close() and recycling too; this test holds
    hookpool to the stricter contract: only terminate() may cut a finalizer short.)"""
    d = str(tmp_path)
    pool = make_pool(
        2,
        initializer=init_record,
        initargs=(d,),
        finalizer=fin_slow,
        finalargs=(d, short_grace + 1.0),
    )
    pool.map(square, range(10))
    wait_initialized(tmp_path, 2)
    pool.close()
    pool.join()
    assert_finalized_once(tmp_path, workers=2)


def test_slow_finalizer_completes_on_recycling(
    make_pool: MakePool, tmp_path: Path, short_grace: float
) -> None:
    d = str(tmp_path)
    pool = make_pool(
        1,
        maxtasksperchild=1,
        initializer=init_record,
        initargs=(d,),
        finalizer=fin_slow,
        finalargs=(d, short_grace + 1.0),
    )
    assert len(set(pool.map(pid, range(2), chunksize=1))) == 2
    pool.close()
    pool.join()
    assert_finalized_once(tmp_path)


def test_terminate_is_bounded_by_the_grace_period(
    make_pool: MakePool, tmp_path: Path, short_grace: float
) -> None:
    """A finalizer that never ends does not make terminate() hang: it is killed."""
    d = str(tmp_path)
    pool = make_pool(
        2, initializer=init_record, initargs=(d,), finalizer=fin_slow, finalargs=(d, 120)
    )
    pool.map(square, range(10))
    wait_initialized(tmp_path, 2)
    pids = pool.worker_pids
    pool.terminate()  # would take 120 s (past the test timeout) without the kill
    assert_gone(pids)
    assert counts(d)[1] == {}


# -- terminate() and the with exit ---------------------------------------------------------


def test_terminate_idle_workers(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(3, **hooks(tmp_path))
    pool.map(square, range(30), chunksize=1)
    wait_initialized(tmp_path, 3)
    pids = pool.worker_pids
    pool.terminate()
    assert_finalized_once(tmp_path, workers=3)
    assert_gone(pids)


def test_terminate_busy_workers_interrupts_and_finalizes(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = make_pool(2, **hooks(tmp_path))
    long, busy = start_busy(tmp_path, pool, 2)
    queued = [pool.apply_async(square, (i,)) for i in range(5)]
    pool.terminate()
    inits = assert_finalized_once(tmp_path, workers=2)
    assert {int(p) for p in inits} == busy
    for result in long:
        with pytest.raises(hookpool.PoolTerminatedError):
            result.get(timeout=5)  # type: ignore[attr-defined]
    for result in queued:
        assert result.ready()
        with pytest.raises(BaseException):  # noqa: B017 - cancelled or terminated
            result.get(timeout=0)
    assert_gone(list(busy))


def test_fresh_pool_runs_long_tasks_on_separate_workers(
    make_pool: MakePool, tmp_path: Path
) -> None:
    """Two long tasks submitted right after creation, to a pool of two, both start: the
    second is not queued behind the first on one worker while the other sits idle."""
    pool = make_pool(2, **hooks(tmp_path))
    for _ in range(2):
        pool.apply_async(mark_then_sleep, (str(tmp_path), 30))
    wait_busy(tmp_path, pool, 2, timeout=5)
    pool.terminate()
    assert_finalized_once(tmp_path, workers=2)


def test_terminate_while_initializer_runs(make_pool: MakePool, tmp_path: Path) -> None:
    """SIGTERM during the initializer waits for it; then the finalizer runs."""
    d = str(tmp_path)
    pool = make_pool(
        2, initializer=init_slow, initargs=(d, 1.0), finalizer=fin_record, finalargs=(d,)
    )
    wait_for(lambda: len(markers(d, "attempt")) == 2, what="both initializers to start")
    pool.terminate()
    assert_finalized_once(tmp_path, workers=2)


def test_terminate_right_after_creation(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(2, **hooks(tmp_path))
    pool.terminate()
    inits, fins = counts(str(tmp_path))
    assert fins == dict.fromkeys(inits, 1)


def test_with_exit_idle(make_pool: MakePool, tmp_path: Path) -> None:
    with make_pool(2, **hooks(tmp_path)) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        wait_initialized(tmp_path, 2)
        pids = pool.worker_pids
    assert_finalized_once(tmp_path, workers=2)
    assert_gone(pids)


def test_with_exit_busy(make_pool: MakePool, tmp_path: Path) -> None:
    with make_pool(2, **hooks(tmp_path)) as pool:
        _, busy = start_busy(tmp_path, pool, 2)
    inits = assert_finalized_once(tmp_path, workers=2)
    assert {int(p) for p in inits} == busy
    assert_gone(list(busy))


def test_with_exit_on_exception(make_pool: MakePool, tmp_path: Path) -> None:
    with pytest.raises(KeyError), make_pool(2, **hooks(tmp_path)) as pool:
        pool.map(square, range(10))
        wait_initialized(tmp_path, 2)
        raise KeyError("leave the block")
    assert_finalized_once(tmp_path, workers=2)


# -- garbage collection ------------------------------------------------------------------------


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_garbage_collected_pool(tmp_path: Path, busy: bool) -> None:
    pool = hookpool.Pool(2, **hooks(tmp_path))
    manager = pool._manager
    try:
        pool.map(square, range(10))
        wait_initialized(tmp_path, 2)
        if busy:
            start_busy(tmp_path, pool, 2)
        pids = pool.worker_pids
        with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
            del pool
            gc.collect()
        assert manager.join(10), "the workers of a collected pool did not leave"
    finally:
        manager.terminate()
        manager.join(10)
    assert_gone(pids)
    assert_finalized_once(tmp_path, workers=2)


# -- the parent leaves -----------------------------------------------------------------------

EXIT_SCRIPT = """
import sys, time
import hookpool
import hookpool._events
import tasks, tasks_hooks

if __name__ == "__main__":
    d = sys.argv[1]
    pool = hookpool.Pool(2, initializer=tasks.init_record, initargs=(d,),
                         finalizer=tasks.fin_record, finalargs=(d,))
    print(sum(pool.map(tasks.square, range(10))))
    print(*pool.worker_pids, flush=True)
    while sum(w.ready for w in pool._manager._workers) < 2:
        time.sleep(0.02)
    if sys.argv[2] == "busy":
        for _ in range(2):
            pool.apply_async(tasks_hooks.mark_then_sleep, (d, 60))
        while len(tasks_hooks.markers(d, "running")) < 2:
            time.sleep(0.02)
    # no close(), no terminate(): the interpreter just exits
"""


@pytest.mark.parametrize("busy", ["idle", "busy"])
def test_parent_exits_without_closing(tmp_path: Path, busy: str) -> None:
    markers_dir = tmp_path / "markers"
    markers_dir.mkdir()
    proc = run_script(EXIT_SCRIPT, tmp_path, timeout=30, args=(str(markers_dir), busy))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[0] == str(sum(x * x for x in range(10)))
    pids = [int(p) for p in lines[1].split()]
    assert_gone(pids)
    inits = assert_finalized_once(markers_dir, workers=2)
    assert {int(p) for p in inits} == set(pids)
    assert "Traceback" not in proc.stderr, proc.stderr


DRAIN_DEATH_SCRIPT = """
import os, time
import hookpool
import hookpool._events

def die_later(seconds):
    time.sleep(seconds)
    os._exit(3)

def report(future):
    print(type(future.exception()).__name__, flush=True)

if __name__ == "__main__":
    executor = hookpool.ProcessPoolExecutor(1)
    executor.submit(die_later, 0.5).add_done_callback(report)
    # no shutdown(): at exit the executor waits for the task, and its worker dies then
"""


def test_a_worker_that_dies_as_the_parent_exits_fails_its_task(tmp_path: Path) -> None:
    """The task was out from the pool's start to the interpreter's exit, so the errors
    with standard-library bases were never imported (``_std_errors``), and cannot be as
    the interpreter exits: the task still fails, the parent still exits, nothing hangs."""
    proc = run_script(DRAIN_DEATH_SCRIPT, tmp_path, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() in (["WorkerLostError"], ["PoolTerminatedError"]), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


SETTLED_DRAIN_DEATH_SCRIPT = DRAIN_DEATH_SCRIPT.replace(
    "    executor.submit(die_later",
    "    executor.submit(abs, -1).result(30)\n    time.sleep(0.6)\n    executor.submit(die_later",
)


def test_a_worker_that_dies_as_the_parent_exits_fails_with_worker_lost(tmp_path: Path) -> None:
    """The same, from a pool a moment old, idle in between (its workers parked): the
    pool has imported those errors by then (``_manager._import_errors``), so the
    task fails with the right one, not the fallback."""
    assert "time.sleep(0.6)" in SETTLED_DRAIN_DEATH_SCRIPT
    proc = run_script(SETTLED_DRAIN_DEATH_SCRIPT, tmp_path, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["WorkerLostError"], proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def kill_if_worker(p: int) -> None:
    """SIGKILL ``p`` if it is still a multiprocessing child (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
    except OSError:
        return
    if b"spawn_main" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


KILLED_SCRIPT = """
import os, sys, time
import hookpool
import hookpool._events
import tasks, tasks_hooks

if __name__ == "__main__":
    d = sys.argv[1]
    pool = hookpool.Pool(2, initializer=tasks.init_record, initargs=(d,),
                         finalizer=tasks.fin_record, finalargs=(d,))
    while sum(w.ready for w in pool._manager._workers) < 2:
        time.sleep(0.02)
    results = [pool.apply_async(tasks_hooks.mark_then_sleep, (d, 60)) for _ in range(2)]
    while len(tasks_hooks.markers(d, "running")) < 2:
        time.sleep(0.02)
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(" ".join(map(str, pool.worker_pids)))
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    time.sleep(60)
"""


def test_parent_killed_with_sigkill(tmp_path: Path) -> None:
    markers_dir = tmp_path / "markers"
    markers_dir.mkdir()
    pids_file = tmp_path / "pids"
    script = tmp_path / "script.py"
    script.write_text(KILLED_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(markers_dir), str(pids_file)],
            stdout=out,
            stderr=err,
            cwd=tmp_path,
            env=env,
        )
    worker_pids: list[int] = []
    try:
        wait_for(
            lambda: pids_file.exists() or proc.poll() is not None,
            timeout=20,
            what="the script to start its workers",
        )
        assert pids_file.exists(), (tmp_path / "err").read_text()
        worker_pids = [int(p) for p in pids_file.read_text().split()]
        assert len(worker_pids) == 2
        assert markers(str(markers_dir), "running") == set(worker_pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        assert_gone(worker_pids, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for p in worker_pids:  # never leave orphans behind, even when the test fails
            kill_if_worker(p)
    inits = assert_finalized_once(markers_dir, workers=2)
    assert {int(p) for p in inits} == set(worker_pids)


# -- hooks that raise ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "terminate"])
def test_finalizer_error_is_logged_with_worker_traceback(
    make_pool: MakePool, tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.ERROR, logger="hookpool")
    d = str(tmp_path)
    pool = make_pool(2, initializer=init_record, initargs=(d,), finalizer=fin_raise, finalargs=(d,))
    pool.map(square, range(10))
    wait_initialized(tmp_path, 2)
    pids = pool.worker_pids
    if how == "close":
        pool.close()
        pool.join()
    else:
        pool.terminate()
    assert_finalized_once(tmp_path, workers=2)
    records = [r for r in caplog.records if r.name == "hookpool" and r.levelno == logging.ERROR]
    assert len(records) == 2, [r.getMessage() for r in records]
    logged_pids = set()
    for record in records:
        text = record.getMessage()
        assert "RuntimeError" in text
        assert "fin-boom from the worker" in text
        # The worker's traceback: the frames of the finalizer, in the worker.
        assert "_fin_raise_inner" in text
        assert "fin_raise" in text
        assert "tasks_hooks.py" in text
        logged_pids |= {p for p in pids if str(p) in text}
    assert logged_pids == set(pids)


def test_finalizer_error_does_not_break_recycling(
    make_pool: MakePool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="hookpool")
    d = str(tmp_path)
    pool = make_pool(
        1,
        maxtasksperchild=1,
        initializer=init_record,
        initargs=(d,),
        finalizer=fin_raise,
        finalargs=(d,),
    )
    assert pool.map(square, range(4), chunksize=1) == [0, 1, 4, 9]
    pool.close()
    pool.join()
    inits = assert_finalized_once(tmp_path)
    assert len(inits) >= 4
    records = [r for r in caplog.records if r.name == "hookpool"]
    assert len(records) == len(inits)


def test_hooks_that_will_not_unpickle_are_not_called_an_initializer_error(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    pool = make_pool(1, initializer=tasks_stages.CallableFailsToUnpickle("error", "worker"))
    with pytest.raises(hookpool.InitializerError) as info:
        pool.apply(square, (2,))
    message = str(info.value)
    assert message.startswith("the hooks (initializer, finalizer, their arguments) would not")
    assert "ValueError: error on purpose" in message
    assert "importable by name in the workers" in message
    assert isinstance(info.value.__cause__, ValueError)


def check_initializer_error(error: BaseException) -> None:
    assert isinstance(error, hookpool.InitializerError), repr(error)
    assert "init-boom from the worker" in str(error)
    cause = error.__cause__
    assert isinstance(cause, ValueError), repr(cause)
    assert "init-boom from the worker" in str(cause)
    # The original exception, with the worker's frames.
    names = [frame.name for frame in traceback.extract_tb(cause.__traceback__)]
    assert "init_fail" in names and "_init_fail_inner" in names, names


@pytest.mark.parametrize("processes", [1, 2])
def test_initializer_error_fails_pending_tasks(
    make_pool: MakePool, tmp_path: Path, processes: int
) -> None:
    """Tasks submitted before the initializer failed fail with InitializerError (not
    cancelled, not 'terminated')."""
    d = str(tmp_path)
    pool = make_pool(processes, initializer=init_fail, initargs=(d,))
    mapped = pool.map_async(square, range(10), chunksize=1)
    single = pool.apply_async(square, (3,))
    future = pool.submit(square, 4)
    errors: dict[str, BaseException | None] = {}
    for name, get in [
        ("map_async", lambda: mapped.get(timeout=20)),
        ("apply_async", lambda: single.get(timeout=20)),
        ("submit", lambda: future.result(timeout=20)),
    ]:
        try:
            get()
        except BaseException as exc:
            errors[name] = exc
        else:
            errors[name] = None
    got = {name: type(exc).__name__ for name, exc in errors.items()}
    assert got == dict.fromkeys(errors, "InitializerError"), got
    for exc in errors.values():
        assert exc is not None
        check_initializer_error(exc)


@pytest.mark.parametrize("processes", [1, 2])
def test_initializer_error_breaks_pool_without_respawn(
    make_pool: MakePool, tmp_path: Path, processes: int
) -> None:
    d = str(tmp_path)
    pool = make_pool(
        processes, initializer=init_fail, initargs=(d,), finalizer=fin_record, finalargs=(d,)
    )
    # No respawn loop: every worker leaves, and only the first ones ever tried.
    assert pool._manager.join(15), "the workers of a broken pool did not leave"
    attempts = markers(d, "attempt")
    assert 1 <= len(attempts) <= processes, attempts
    assert_gone(list(attempts))
    # The initializer never succeeded, so no finalizer ran.
    assert counts(d) == ({}, {})
    # The pool is broken: later submissions are refused at once, pointing at the cause.
    for submit in (
        lambda: pool.apply_async(square, (1,)),
        lambda: pool.map(square, range(3)),
        lambda: pool.submit(square, 1),
    ):
        with pytest.raises(hookpool.PoolBrokenError) as info:
            submit()
        error = info.value
        if not isinstance(error, hookpool.InitializerError):
            error = error.__cause__  # type: ignore[assignment]
        check_initializer_error(error)
    assert len(markers(d, "attempt")) == len(attempts)


def test_initializer_error_no_respawn_over_time(make_pool: MakePool, tmp_path: Path) -> None:
    """Even with recycling on and nobody asking for results, attempts stay bounded."""
    d = str(tmp_path)
    pool = make_pool(2, maxtasksperchild=1, initializer=init_fail, initargs=(d,))
    assert pool._manager.join(15)
    assert 1 <= len(markers(d, "attempt")) <= 2
    with pytest.raises(hookpool.PoolBrokenError):
        pool.apply(square, (2,))


# -- hooks may be lambdas and closures ----------------------------------------------------------


def test_lambda_and_closure_hooks(make_pool: MakePool, tmp_path: Path) -> None:
    directory = str(tmp_path)

    def make_finalizer(where: str) -> Callable[[], None]:
        def finalize() -> None:
            path = Path(where, f"fin-{os.getpid()}")
            count = int(path.read_text()) if path.exists() else 0
            path.write_text(str(count + 1))

        return finalize

    pool = make_pool(
        2,
        initializer=lambda: Path(directory, f"init-{os.getpid()}").write_text("1"),
        finalizer=make_finalizer(directory),
        maxtasksperchild=3,
    )
    assert pool.map(square, range(12), chunksize=1) == [x * x for x in range(12)]
    pool.close()
    pool.join()
    inits = assert_finalized_once(tmp_path)
    assert len(inits) >= 4


def test_lambda_finalizer_on_terminate(make_pool: MakePool, tmp_path: Path) -> None:
    directory = str(tmp_path)
    pool = make_pool(
        2,
        initializer=lambda d: init_record(d),
        initargs=(directory,),
        finalizer=lambda: fin_record(directory),
    )
    pool.map(square, range(10))
    wait_initialized(tmp_path, 2)
    pool.terminate()
    assert_finalized_once(tmp_path, workers=2)


# -- property: finalizer runs == initializer runs, per pid ----------------------------------------


@settings(max_examples=10, deadline=None)
@given(
    n_tasks=st.integers(0, 60),
    processes=st.integers(1, 3),
    maxtasks=st.none() | st.integers(1, 5),
)
def test_property_finalizers_match_initializers(
    n_tasks: int, processes: int, maxtasks: int | None
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        pool = hookpool.Pool(processes, maxtasksperchild=maxtasks, **hooks(Path(directory)))
        seen: set[int] = set()
        try:
            task_pids = pool.map(pid, range(n_tasks), chunksize=1)
            seen = set(task_pids) | set(pool.worker_pids)
            pool.close()
            pool.join()
        finally:
            seen |= set(pool.worker_pids)
            pool.terminate()
        inits, fins = counts(directory)
        assert fins == dict.fromkeys(inits, 1), (inits, fins)
        assert {str(p) for p in task_pids} <= set(inits)
        if maxtasks is not None:
            for p in set(task_pids):
                assert task_pids.count(p) <= maxtasks
        assert_gone(sorted(seen))
