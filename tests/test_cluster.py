"""A pool on a dask.distributed cluster: ``Pool(..., cluster=...)``.

Every test runs against a real ``distributed.LocalCluster(processes=True)`` on 127.0.0.1,
2 workers with one thread each: the module's (``dask_client``), or one of its own when
it changes the cluster (a worker joining or retiring, the scheduler going away). The
facade tests marked ``cluster`` (tests/test_facades.py) run there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

import tasks_cluster  # noqa: E402
from conftest import run_script  # noqa: E402
from tasks import counts, fin_record, init_record, pid, square  # noqa: E402
from tasks_cluster import marks  # noqa: E402
from tasks_hooks import wait_for  # noqa: E402

import hookpool  # noqa: E402
from hookpool._cluster import TASKS_PER_THREAD  # noqa: E402


@contextlib.contextmanager
def own_cluster(workers: int = 1, threads: int = 1) -> Iterator[tuple[Any, Any]]:
    """A LocalCluster and a client of it, for one test that changes its cluster."""
    cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    )
    client = distributed.Client(cluster, set_as_default=False, timeout=30)
    try:
        yield cluster, client
    finally:
        client.close(timeout=30)
        cluster.close(timeout=30)


def hooks(directory: Path) -> dict[str, Any]:
    d = str(directory)
    return {
        "initializer": init_record,
        "initargs": (d,),
        "finalizer": fin_record,
        "finalargs": (d,),
    }


# -- one argument ---------------------------------------------------------------------------


def test_the_whole_pool_api_runs_on_a_cluster(dask_client: Any) -> None:
    """The same calls as locally, with the same results."""
    seen: list[Any] = []
    with hookpool.Pool(cluster=dask_client) as pool:
        assert pool.map(square, range(50)) == [x * x for x in range(50)]
        assert pool.map(square, range(50), chunksize=7) == [x * x for x in range(50)]
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert list(pool.imap(square, range(20))) == [x * x for x in range(20)]
        assert sorted(pool.imap_unordered(square, range(20), 3)) == [x * x for x in range(20)]
        result = pool.apply_async(square, (7,), callback=seen.append)
        assert result.get(timeout=30) == 49
        assert pool.submit(square, 8).result(timeout=30) == 64
        assert pool.map(square, range(30), progress=lambda done, total: None) == [
            x * x for x in range(30)
        ]
        pool.close()
        pool.join()
    assert seen == [49]
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(square, (1,))


def test_the_executor_runs_on_a_cluster(dask_client: Any) -> None:
    with hookpool.ProcessPoolExecutor(cluster=dask_client) as executor:
        futures = [executor.submit(square, i) for i in range(10)]
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(10)]
        assert list(executor.map(square, range(100), chunksize=9)) == [i * i for i in range(100)]
    with pytest.raises(RuntimeError):
        executor.submit(square, 1)


def test_a_scheduler_address_and_the_environment_variable(
    dask_cluster: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``cluster=`` takes an address (the pool makes and closes its own client), and
    ``HOOKPOOL_CLUSTER`` puts a pool there without touching its code: a real ``__main__``
    script, its function and lambda defined there."""
    address = dask_cluster.scheduler_address
    with hookpool.Pool(cluster=address) as pool:
        assert pool.apply(square, (5,)) == 25
    # The initializer sets a global of __main__ that the tasks (a function and a lambda
    # of __main__, which travel by value) read: as locally, they share one namespace.
    script = (
        "import os\n"
        "import hookpool\n"
        "def setup(k):\n"
        "    global FACTOR\n"
        "    FACTOR = k\n"
        "def scaled(x):\n"
        "    return helper(x) * FACTOR\n"
        "def helper(x):\n"
        "    return x + 1\n"
        "if __name__ == '__main__':\n"
        "    with hookpool.Pool(2, initializer=setup, initargs=(3,)) as pool:\n"
        "        elsewhere = pool.apply(lambda: os.getpid()) != os.getpid()\n"
        "        print(pool.map(scaled, range(4)), pool.apply(lambda: FACTOR), elsewhere)\n"
        "        print(type(pool._manager).__name__)\n"
    )
    monkeypatch.setenv("HOOKPOOL_CLUSTER", address)
    done = run_script(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[3, 6, 9, 12] 3 True", "ClusterEngine"]


# -- hooks ----------------------------------------------------------------------------------


def test_hooks_run_once_per_worker_and_the_finalizer_at_close(
    dask_client: Any, tmp_path: Path
) -> None:
    pool = hookpool.Pool(cluster=dask_client, **hooks(tmp_path))
    assert pool.map(square, range(40), chunksize=1) == [x * x for x in range(40)]
    workers = set(pool.worker_pids)
    inits, fins = counts(str(tmp_path))
    assert inits == {str(p): 1 for p in workers}  # every worker, once: not per task
    assert len(inits) == 2
    assert fins == {}
    pool.close()
    pool.join()
    inits, fins = counts(str(tmp_path))
    assert fins == inits  # each worker's finalizer ran once, at close + join


@pytest.mark.parametrize("how", ["terminate", "with"])
def test_the_finalizer_runs_at_terminate_and_with_exit(
    dask_client: Any, tmp_path: Path, how: str
) -> None:
    pool = hookpool.Pool(cluster=dask_client, **hooks(tmp_path))
    assert pool.map(square, range(8)) == [x * x for x in range(8)]
    if how == "terminate":
        pool.terminate()
        pool.join()
    else:
        with pool:
            pass
        pool.join()
    inits, fins = counts(str(tmp_path))
    assert len(inits) == 2
    assert fins == inits


@pytest.mark.slow
def test_closing_the_cluster_runs_the_finalizers(tmp_path: Path) -> None:
    """The cluster goes away under a running pool: each worker's finalizer runs as dask
    closes it, and the pool then breaks instead of waiting."""
    with own_cluster(2) as (cluster, client):
        pool = hookpool.Pool(cluster=client, **hooks(tmp_path))
        assert pool.map(tasks_cluster.nap_then_pid, [0.05] * 8, chunksize=1)
        inits = counts(str(tmp_path))[0]
        assert len(inits) == 2
        cluster.close(timeout=30)
        assert counts(str(tmp_path))[1] == inits
        wait_for(lambda: pool._manager.state.is_final, 30, "the pool to break")
        pool.terminate()
        assert pool._manager.join(30)


def test_two_pools_on_one_cluster_keep_their_hooks_apart(dask_client: Any, tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = hookpool.Pool(cluster=dask_client, **hooks(a_dir))
    b = hookpool.Pool(cluster=dask_client, **hooks(b_dir))
    assert a.map(square, range(6)) == b.map(square, range(6))
    a.close()
    a.join()
    a_inits, a_fins = counts(str(a_dir))
    b_inits, b_fins = counts(str(b_dir))
    assert a_fins == a_inits and len(a_inits) == 2
    assert b_fins == {}  # a's close ran a's finalizers only
    assert b.apply(square, (3,)) == 9  # and b's hooks are still in place
    b.close()
    b.join()
    assert counts(str(b_dir))[1] == b_inits
    assert counts(str(a_dir)) == (a_inits, a_fins)  # b's never ran in a's files


@pytest.mark.slow
def test_a_worker_that_joins_later_runs_the_initializer_and_a_retired_one_the_finalizer(
    tmp_path: Path,
) -> None:
    """The hooks reach a worker that joins after the pool started: its initializer runs
    there before the pool's first task there; retiring a worker gracefully runs its
    finalizer while the pool goes on."""
    with own_cluster(1) as (cluster, client):
        pool = hookpool.Pool(cluster=client, **hooks(tmp_path))
        first = pool.apply(pid)
        cluster.scale(2)
        client.wait_for_workers(2, timeout=30)
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.update(pool.map(tasks_cluster.nap_then_pid, [0.05] * 8, chunksize=1))
        assert len(pids) == 2 and first in pids
        inits, fins = counts(str(tmp_path))
        assert inits == {str(p): 1 for p in pids} and fins == {}
        joiner = next(p for p in pids if p != first)
        address = next(a for a, p in client.run(os.getpid).items() if p == joiner)
        client.retire_workers([address], close_workers=True)
        wait_for(lambda: str(joiner) in counts(str(tmp_path))[1], 30, "the finalizer")
        assert pool.map(square, range(5)) == [x * x for x in range(5)]
        pool.close()
        pool.join()
        inits, fins = counts(str(tmp_path))
        assert fins == inits and len(inits) == 2


def test_an_initializer_that_raises_breaks_the_pool_with_the_worker_frames(
    dask_client: Any,
) -> None:
    from tasks_hooks import init_fail

    pool = hookpool.Pool(cluster=dask_client, initializer=init_fail, initargs=("/nonexistent",))
    try:
        with pytest.raises(hookpool.InitializerError) as info:
            pool.apply_async(square, (1,)).get(timeout=30)
        cause = info.value.__cause__
        assert isinstance(cause, FileNotFoundError)
        assert "init_fail" in [f.name for f in traceback.extract_tb(cause.__traceback__)]
        with pytest.raises(hookpool.PoolBrokenError):
            pool.apply_async(square, (1,))
    finally:
        pool.terminate()
        assert pool._manager.join(30)


# -- failures -------------------------------------------------------------------------------


def test_a_killed_worker_fails_exactly_its_task_which_never_runs_twice(
    dask_client: Any, tmp_path: Path
) -> None:
    d = str(tmp_path)
    with hookpool.ProcessPoolExecutor(cluster=dask_client) as executor:
        doomed = executor.submit(tasks_cluster.mark_then_die, d, "doomed")
        others = [executor.submit(tasks_cluster.mark_then_square, d, i) for i in range(12)]
        with pytest.raises(hookpool.WorkerLostError, match="not run again") as info:
            doomed.result(timeout=60)
        assert "mark_then_die" in str(info.value)
        assert [f.result(timeout=60) for f in others] == [i * i for i in range(12)]
        dask_client.wait_for_workers(2, timeout=30)  # the nanny restarts it
        time.sleep(1.0)  # a second run would have marked by now
        assert len(marks(d, "doomed")) == 1
        assert all(len(marks(d, f"ran-{i}")) == 1 for i in range(12))


def test_a_task_that_waited_in_its_workers_queue_fails_if_that_worker_dies_under_it(
    dask_client: Any, tmp_path: Path
) -> None:
    """The cluster holds more of a pool's tasks than it has threads: one that waited
    behind another on its worker and then started there counts as run (``confirm``)."""
    d = str(tmp_path)
    with hookpool.ProcessPoolExecutor(cluster=dask_client) as executor:
        first = [executor.submit(tasks_cluster.nap, 0.5, d, f"first-{i}") for i in range(2)]
        # Both threads are busy: it waits on its worker, then runs, and the worker dies
        # (once the other task's result is fetched: a result lost with its worker fails).
        doomed = executor.submit(tasks_cluster.mark_then_die_later, d, "doomed", 1.0)
        with pytest.raises(hookpool.WorkerLostError, match="not run again"):
            doomed.result(timeout=60)
        assert [f.result(timeout=60) for f in first] == ["woke", "woke"]
        dask_client.wait_for_workers(2, timeout=30)  # the nanny restarts it
        time.sleep(1.0)  # a second run would have marked by now
        assert len(marks(d, "doomed")) == 1


def _confirm_handler(dask_scheduler: Any, *, on: bool) -> None:
    from hookpool._cluster_worker import CONFIRM_HANDLER

    if on:
        plugin = dask_scheduler.plugins["hookpool-no-retries"]
        dask_scheduler.handlers[CONFIRM_HANDLER] = plugin.confirm_start
    else:
        del dask_scheduler.handlers[CONFIRM_HANDLER]


def test_a_queued_task_whose_start_the_scheduler_cannot_confirm_does_not_run(
    dask_client: Any, tmp_path: Path
) -> None:
    d = str(tmp_path)
    with hookpool.ProcessPoolExecutor(cluster=dask_client) as executor:
        assert executor.submit(square, 2).result(timeout=30) == 4  # NoRetries is there
        wait_for(lambda: not executor._manager._flying, 10, "that task forgotten")
        dask_client.run_on_scheduler(_confirm_handler, on=False)
        try:
            first = [executor.submit(tasks_cluster.nap, 0.3, d, f"first-{i}") for i in range(2)]
            queued = executor.submit(tasks_cluster.mark_then_return, d, "queued", 1)
            with pytest.raises(hookpool.PoolBrokenError, match="could not confirm the start"):
                queued.result(timeout=30)
            assert [f.result(timeout=30) for f in first] == ["woke", "woke"]
        finally:
            dask_client.run_on_scheduler(_confirm_handler, on=True)
        assert marks(d, "queued") == []
        assert executor.submit(square, 3).result(timeout=30) == 9


def test_with_max_retries_a_task_whose_worker_dies_runs_again_elsewhere(
    dask_client: Any, tmp_path: Path
) -> None:
    d = str(tmp_path)
    with hookpool.ProcessPoolExecutor(cluster=dask_client, max_retries=1) as executor:
        again = executor.submit(tasks_cluster.die_the_first_time, d, "again", "second run")
        others = [executor.submit(tasks_cluster.mark_then_square, d, i) for i in range(12)]
        assert again.result(timeout=60) == "second run"
        assert [f.result(timeout=60) for f in others] == [i * i for i in range(12)]
    first, second = marks(d, "again")
    assert first != second  # another worker (or the nanny's new one)
    assert all(len(marks(d, f"ran-{i}")) == 1 for i in range(12))
    dask_client.wait_for_workers(2, timeout=30)


def test_max_retries_bounds_how_often_a_task_runs(dask_client: Any, tmp_path: Path) -> None:
    d = str(tmp_path)
    with hookpool.Pool(cluster=dask_client, max_retries=1) as pool:
        doomed = pool.apply_async(tasks_cluster.mark_then_die, (d, "doomed"))
        with pytest.raises(hookpool.WorkerLostError, match=r"max_retries=1\): it is not run"):
            doomed.get(timeout=60)
        dask_client.wait_for_workers(2, timeout=30)  # the nannies restart them
        time.sleep(1.0)  # a third run would have marked by now
        assert len(marks(d, "doomed")) == 2
        assert pool.apply(square, (5,)) == 25


def test_with_max_retries_each_run_has_its_own_task_timeout(
    dask_client: Any, tmp_path: Path
) -> None:
    d = str(tmp_path)
    with hookpool.Pool(cluster=dask_client, max_retries=1, task_timeout=3.0) as pool:
        # 2 s, then its worker dies; the second run takes 2 s too: 4 s since the first
        # start, within the timeout only if the second run's clock starts afresh.
        again = pool.apply_async(tasks_cluster.die_the_first_time, (d, "again", "ok", 2.0))
        assert again.get(timeout=60) == "ok"
        assert len(marks(d, "again")) == 2
    dask_client.wait_for_workers(2, timeout=30)


def test_tasks_of_a_pool_with_max_retries_ask_for_no_confirmation(
    dask_client: Any, tmp_path: Path
) -> None:
    """They may run again anyway: a task that waited in its worker's queue starts without
    the scheduler's word (the round trip costs some 15% of a tiny task)."""
    d = str(tmp_path)
    with hookpool.ProcessPoolExecutor(cluster=dask_client, max_retries=2) as executor:
        assert executor.submit(square, 2).result(timeout=30) == 4  # NoRetries is there
        dask_client.run_on_scheduler(_confirm_handler, on=False)
        try:
            first = [executor.submit(tasks_cluster.nap, 0.3, d, f"first-{i}") for i in range(2)]
            queued = executor.submit(tasks_cluster.mark_then_return, d, "queued", 1)
            assert queued.result(timeout=30) == 1
            assert [f.result(timeout=30) for f in first] == ["woke", "woke"]
        finally:
            dask_client.run_on_scheduler(_confirm_handler, on=True)


def test_max_retries_is_checked_and_refused_for_local_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOOKPOOL_CLUSTER", raising=False)
    with pytest.raises(ValueError, match=r"max_retries=2 applies to a pool on a dask cluster"):
        hookpool.Pool(2, max_retries=2)
    with pytest.raises(ValueError, match="catch to submit it again"):
        hookpool.ProcessPoolExecutor(2, max_retries=1)
    with pytest.raises(ValueError, match="0 or more"):
        hookpool.Pool(2, max_retries=-1)
    with pytest.raises(TypeError, match="must be an int, not bool"):
        hookpool.ProcessPoolExecutor(2, max_retries=True)  # type: ignore[arg-type]
    hookpool.Pool(1, max_retries=0).terminate()  # the default, said out loud


def _slow_confirm(dask_scheduler: Any) -> None:
    from hookpool._cluster_worker import CONFIRM_HANDLER

    plugin = dask_scheduler.plugins["hookpool-no-retries"]

    async def slow(key: str, worker: str) -> bool:
        await asyncio.sleep(3.0)
        confirmed: bool = plugin.confirm_start(key, worker)
        return confirmed

    dask_scheduler.handlers[CONFIRM_HANDLER] = slow


def test_a_task_cancelled_while_its_start_is_being_confirmed_does_not_run(
    dask_client: Any, tmp_path: Path
) -> None:
    """The stop lands in the wait for the scheduler: the task ends there, and its worker
    no longer counts it as running (a later stop would hit whatever that thread runs)."""
    d = str(tmp_path)
    with hookpool.ProcessPoolExecutor(cluster=dask_client) as executor:
        assert executor.submit(square, 2).result(timeout=30) == 4  # NoRetries is there
        wait_for(lambda: not executor._manager._flying, 10, "that task forgotten")
        dask_client.run_on_scheduler(_slow_confirm)
        try:
            first = [executor.submit(tasks_cluster.nap, 0.2, d, f"first-{i}") for i in range(2)]
            queued = executor.submit(tasks_cluster.mark_then_return, d, "queued", 1)
            assert [f.result(timeout=30) for f in first] == ["woke", "woke"]
            time.sleep(0.5)  # the queued task waits for its confirmation
            assert executor.cancel(queued)
            with pytest.raises(CancelledError):
                queued.result(timeout=30)
        finally:
            dask_client.run_on_scheduler(_confirm_handler, on=True)
        pool_id = executor._manager._id
        assert dask_client.run(tasks_cluster.running_here, pool_id) == {
            worker: [] for worker in dask_client.scheduler_info()["workers"]
        }
        assert marks(d, "queued") == []
        assert executor.submit(square, 3).result(timeout=30) == 9


def test_the_cluster_never_holds_more_than_its_share_of_a_pools_tasks(dask_client: Any) -> None:
    """Callbacks that submit more as each answer is settled: the pool still hands the
    cluster at most TASKS_PER_THREAD tasks per worker thread (counted here as those whose
    dask future has not finished), and its count of those being settled returns to 0."""
    most = 2 * TASKS_PER_THREAD
    with hookpool.Pool(cluster=dask_client) as pool:
        engine = pool._manager
        seen: list[int] = []
        more: list[Any] = []

        def submit_more(_: object) -> None:
            if len(more) < 200:
                more.append(pool.apply_async(square, (len(more),), callback=submit_more))
                with engine._lock:  # handed over, and not finished on the cluster
                    flying = list(engine._flying.values())
                seen.append(sum(1 for f in flying if f.future is None or not f.future.done()))

        first = [pool.apply_async(square, (i,), callback=submit_more) for i in range(most)]
        assert [r.get(timeout=60) for r in first] == [i * i for i in range(most)]
        wait_for(lambda: len(more) == 200 and all(r.ready() for r in more), 60, "all done")
        assert [r.get(timeout=5) for r in more] == [i * i for i in range(200)]
        assert max(seen) <= most
        assert engine._finishing == 0


def test_an_answer_is_not_held_back_while_other_tasks_run(tmp_path: Path) -> None:
    """Answers are fetched in batches (``BATCH_SHARE``), but one that finished does not
    wait for a task still running on the other thread: it comes within
    FETCH_WAIT_SECONDS (here, each map of 20 takes a tenth of a second or so; one that
    waited for the long task, or for the settler's CHECK_SECONDS, would take seconds).
    One worker with two threads: with two one-thread workers, dask may queue a task
    behind the long one, where it waits until dask steals it (one to two seconds)."""
    d = str(tmp_path)
    with own_cluster(workers=1, threads=2) as (_, client), hookpool.Pool(cluster=client) as pool:
        long = pool.apply_async(tasks_cluster.nap, (8.0, d, "long"))
        started = time.monotonic()
        for i in range(5):
            assert pool.apply_async(square, (i,)).get(timeout=4) == i * i
            assert pool.map(square, range(20), chunksize=1) == [x * x for x in range(20)]
        assert time.monotonic() - started < 4
        assert not long.ready()
        pool.terminate()


def test_a_finished_task_whose_answer_waits_to_be_fetched_does_not_time_out(
    dask_client: Any,
) -> None:
    """Its thread is free and its answer is on its way (``_unfetched``): its deadline
    has passed, but it is no longer running, so nothing stops it or fails it."""
    from concurrent.futures import Future

    from hookpool._cluster import _InFlight
    from hookpool._engine import Task
    from hookpool._protocol import CallKind

    with hookpool.Pool(cluster=dask_client) as pool:
        engine = pool._manager
        task = Task(CallKind.APPLY, b"", b"", Future(), "square", timeout=0.01)
        task.task_id = -1
        flying = _InFlight(task, None, time.monotonic() - 1.0)
        flying.finished = True
        with engine._lock:
            engine._flying[-1] = flying
            engine._finishing += 1
        try:
            engine._check_deadlines()
            time.sleep(0.1)  # the settler's own checks, too
            assert not flying.settled and flying.stopping is None
            assert not task.timed_out and not task.future.done()
        finally:
            with engine._lock:
                del engine._flying[-1]
                engine._finishing -= 1
        assert pool.apply(square, (3,)) == 9


def test_without_distributeds_done_callback_futures_are_watched_the_public_way(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_watch`` uses what ``Future.add_done_callback`` runs; a distributed without it
    gets ``add_done_callback`` itself."""
    from hookpool import _cluster

    monkeypatch.setattr(_cluster, "_done_callback", lambda: None)
    with hookpool.Pool(cluster=dask_client) as pool:
        assert pool.map(square, range(30), chunksize=1) == [x * x for x in range(30)]
        assert pool.apply(square, (5,)) == 25


def test_task_timeout_stops_the_task_and_the_worker_goes_on(
    dask_client: Any, tmp_path: Path
) -> None:
    d = str(tmp_path)
    with hookpool.Pool(cluster=dask_client, task_timeout=0.5) as pool:
        started = time.monotonic()
        result = pool.apply_async(tasks_cluster.nap, (30, d, "napped"))
        with pytest.raises(hookpool.TaskTimeoutError, match=r"timeout of 0\.5 s"):
            result.get(timeout=30)
        assert time.monotonic() - started < 10
        with pytest.raises(hookpool.TaskTimeoutError):
            pool.apply(tasks_cluster.spin, (30,))
        # Both workers are free again: the stopped tasks no longer hold them.
        assert pool.map(square, range(10), chunksize=1) == [x * x for x in range(10)]
        assert pool.apply(tasks_cluster.spin, (0.01,), task_timeout=20) > 0
    assert marks(d, "napped") == []


def test_cancel_stops_a_running_task_and_a_queued_one_never_runs(
    dask_client: Any, tmp_path: Path
) -> None:
    d = str(tmp_path)
    with hookpool.ProcessPoolExecutor(cluster=dask_client) as executor:
        running = [executor.submit(tasks_cluster.nap, 30, d, f"long-{i}") for i in range(2)]
        # The workers' queues fill (TASKS_PER_THREAD per thread), the last stays in the pool's.
        at_workers = 2 * (TASKS_PER_THREAD - 1)
        queued = [executor.submit(tasks_cluster.nap, 0, d, f"q{i}") for i in range(at_workers + 1)]
        wait_for(lambda: len(executor._manager._flying) == 2 + at_workers, 10, "handed over")
        time.sleep(0.3)
        assert executor.cancel(queued[-1])  # still in the pool's queue: never handed over
        assert queued[-1].cancelled()
        for future in queued[:-1]:
            assert executor.cancel(future)  # waiting on its worker: skipped there
            with pytest.raises(CancelledError):
                future.result(timeout=10)
        for future in running:
            assert executor.cancel(future)  # stopped on its worker
            with pytest.raises(CancelledError):
                future.result(timeout=10)
        done = executor.submit(square, 3)
        assert done.result(timeout=30) == 9
        assert executor.cancel(done) is False  # finished: its result stands
    assert [marks(d, f"q{i}") for i in range(at_workers + 1)] == [[]] * (at_workers + 1)
    assert marks(d, "long-0") == marks(d, "long-1") == []


@pytest.mark.parametrize("how", ["terminated", "torn down"])
def test_a_task_of_a_pool_that_left_the_worker_is_skipped_at_once(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dask may start a task of a pool after the pool left the worker: one handed over
    just before a terminate, whose cancel and the plugin's removal overtook it. It is
    skipped at once (without running the initializer): waiting for the plugin to arrive
    would hold the worker's thread, and every task queued behind it, for
    SETUP_WAIT_SECONDS. Run here in-process, as dask would run it on a worker."""
    from hookpool import _cluster_worker as remote
    from hookpool import _protocol as wire

    monkeypatch.setattr(remote, "SETUP_WAIT_SECONDS", 10.0)
    pool_id = f"left-{how.replace(' ', '-')}-{os.getpid()}"
    plugin = remote.PoolPlugin(pool_id, b"not hooks: loading them would fail", None)
    plugin.setup(worker=None)
    try:
        if how == "terminated":
            asyncio.run(remote.stop_all(pool_id))
        else:
            asyncio.run(plugin.teardown(worker=None))
        started = time.monotonic()
        answer, records, _ = remote.run_task(pool_id, 1, 0, 1, b"", b"", ())
        assert type(answer) is wire.Skipped, answer
        assert records == []
        assert time.monotonic() - started < 5
    finally:
        asyncio.run(plugin.teardown(worker=None))


@pytest.mark.slow
def test_terminate_with_tasks_on_their_way_leaves_no_worker_thread_behind(
    dask_client: Any,
) -> None:
    """A pool terminated right after handing tasks over: those that reach a worker after
    the pool left it do not hold its thread, so the next pool's tasks run at once."""
    for _ in range(10):
        pool = hookpool.Pool(cluster=dask_client)
        pool.map_async(square, range(200), chunksize=1)
        time.sleep(0.05)
        pool.terminate()
        assert pool._manager.join(30)
        time.sleep(0.3)
        waiting = dask_client.run(tasks_cluster.threads_waiting_for_a_pool)
        assert not any(waiting.values()), waiting
    with hookpool.Pool(cluster=dask_client) as pool:
        started = time.monotonic()
        assert pool.map(square, range(20), chunksize=1) == [x * x for x in range(20)]
        assert time.monotonic() - started < 10


def test_unpicklable_hooks_and_local_only_arguments_are_refused_at_once(
    dask_client: Any,
) -> None:
    ctx = hookpool.get_context()
    with pytest.raises(TypeError, match=r"distributed\.Lock"):
        hookpool.Pool(cluster=dask_client, initializer=print, initargs=(ctx.Lock(),))
    with pytest.raises(ValueError, match="maxtasksperchild=3 cannot apply on a cluster"):
        hookpool.Pool(cluster=dask_client, maxtasksperchild=3)
    with pytest.raises(ValueError, match="max_memory_per_child"):
        hookpool.ProcessPoolExecutor(cluster=dask_client, max_memory_per_child="1GiB")
    with pytest.raises(ValueError, match="context='forkserver' cannot apply"):
        hookpool.Pool(cluster=dask_client, context="forkserver")
    with pytest.raises(ValueError, match="choose one"):
        hookpool.Pool(cluster=dask_client, inline=True)
    with pytest.raises(TypeError, match="scheduler address"):
        hookpool.Pool(cluster=42)


def test_without_dask_installed_cluster_says_what_to_install(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['distributed'] = None  # as if not installed\n"
        "import hookpool\n"
        "if __name__ == '__main__':\n"
        "    try:\n"
        "        hookpool.Pool(cluster='tcp://127.0.0.1:1')\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
        "    print('distributed' in sys.modules and sys.modules['distributed'] is not None)\n"
    )
    done = run_script(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [
        'cluster= needs dask.distributed: pip install "hookpool[dask]"',
        "False",
    ]


@pytest.mark.slow
def test_nothing_hangs_when_the_scheduler_goes_away(tmp_path: Path) -> None:
    d = str(tmp_path)
    with own_cluster(1) as (cluster, client):
        pool = hookpool.Pool(cluster=client)
        assert pool.apply(square, (2,)) == 4
        running = pool.apply_async(tasks_cluster.nap, (60, d, "never"))
        time.sleep(0.5)
        started = time.monotonic()
        cluster.close(timeout=30)  # the scheduler and its worker go away
        with pytest.raises((hookpool.WorkerLostError, hookpool.PoolBrokenError)):
            running.get(timeout=60)
        wait_for(lambda: pool._manager.state.is_final, 30, "the pool to break")
        with pytest.raises(hookpool.PoolBrokenError, match="scheduler"):
            pool.apply_async(square, (1,))
        pool.terminate()
        assert pool._manager.join(60)
        assert time.monotonic() - started < 60


# -- what travels ---------------------------------------------------------------------------


def test_a_function_is_unpickled_once_per_worker_not_per_task(dask_client: Any) -> None:
    with hookpool.Pool(cluster=dask_client) as pool:
        before = dict(pool.map(tasks_cluster.unpickled, range(8), chunksize=1))
        fn = tasks_cluster.Counted(10)
        assert pool.map(fn, range(40), chunksize=1) == [x + 10 for x in range(40)]
        after = dict(pool.map(tasks_cluster.unpickled, range(8), chunksize=1))
    assert sum(after.values()) - sum(before.get(p, 0) for p in after) <= 2


def test_imap_reads_an_endless_input_a_bounded_window_ahead(dask_client: Any) -> None:
    counter = [0]
    with hookpool.Pool(cluster=dask_client) as pool:
        results = pool.imap(square, tasks_cluster.endless(counter))
        taken = list(itertools.islice(results, 50))
        assert taken == [x * x for x in range(50)]
        time.sleep(0.3)
        assert counter[0] < 50 + 500, counter[0]
        pool.terminate()


def test_log_records_from_tasks_reach_the_parents_handlers(
    dask_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with hookpool.Pool(cluster=dask_client) as pool:
        worker_pid = pool.apply(tasks_cluster.log_and_return, ("hi",))
    records = [r for r in caplog.records if r.name == "tasks_cluster"]
    assert [r.getMessage() for r in records] == ["from the task: hi"]
    assert records[0].process == worker_pid
    assert str(worker_pid) in records[0].hookpool_worker


def test_ctrl_c_while_waiting_stops_waiting_and_the_with_exit_stops_the_task(
    dask_cluster: Any, tmp_path: Path
) -> None:
    script = (
        "import os, signal, sys, threading, time\n"
        "import hookpool, tasks_cluster\n"
        "if __name__ == '__main__':\n"
        "    d = sys.argv[1]\n"
        "    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "    started = time.monotonic()\n"
        "    try:\n"
        "        with hookpool.Pool(cluster=sys.argv[2]) as pool:\n"
        "            pool.apply(tasks_cluster.nap, (20, d, 'finished'))\n"
        "    except KeyboardInterrupt:\n"
        "        print('interrupted after', round(time.monotonic() - started))\n"
    )
    done = run_script(
        script, tmp_path, timeout=60, args=(str(tmp_path), dask_cluster.scheduler_address)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("interrupted after"), done.stdout
    assert int(done.stdout.split()[-1]) < 10
    time.sleep(0.5)
    assert marks(str(tmp_path), "finished") == []


@pytest.mark.slow
def test_a_task_whose_worker_retires_while_it_runs_is_not_run_again(tmp_path: Path) -> None:
    """dask sends a task that was running on a worker it retires to another worker; the
    task is not assumed idempotent, so it fails with WorkerLostError instead."""
    d = str(tmp_path)
    with own_cluster(2) as (_, client), hookpool.Pool(cluster=client) as pool:
        running = pool.apply_async(tasks_cluster.nap, (3, d, "retired"))
        wait_for(lambda: bool(marks(d, "retired") or _running_on(client)), 10, "the start")
        address = _running_on(client)
        client.retire_workers([address], close_workers=True)
        with pytest.raises(hookpool.WorkerLostError, match="retired"):
            running.get(timeout=30)
        assert pool.apply(square, (3,)) == 9
        time.sleep(3.5)
        assert len(marks(d, "retired")) <= 1  # the first run may have ended; no second


def _running_on(client: Any) -> str:
    """The address of the worker processing a task, or ""."""
    busy = [address for address, keys in client.processing().items() if keys]
    return busy[0] if busy else ""


# -- found in review: each of these failed before its fix ------------------------------


def test_large_results_and_large_maps_come_back(dask_client: Any) -> None:
    """Results of 64 KiB and more travel out of band locally; dask cannot carry those
    buffers, so on a cluster they go as bytes."""
    with hookpool.ProcessPoolExecutor(cluster=dask_client) as executor:
        assert len(executor.submit(bytes, 1_000_000).result(timeout=60)) == 1_000_000
        assert executor.submit(len, b"x" * 2_000_000).result(timeout=60) == 2_000_000
    with hookpool.Pool(cluster=dask_client) as pool:
        assert pool.map(str, range(100_000)) == [str(x) for x in range(100_000)]


def test_main_globals_follow_the_caller_as_locally(
    dask_cluster: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each pickle of a __main__ function brings the caller's current globals (a loop
    variable, a reassigned constant); what the initializer assigned in the worker stays."""
    script = (
        "import hookpool\n"
        "K = 1\n"
        "def setup():\n"
        "    global STATE\n"
        "    STATE = 'set up'\n"
        "if __name__ == '__main__':\n"
        "    with hookpool.Pool(initializer=setup) as pool:\n"
        "        loop = [pool.apply(lambda: i * 10) for i in range(5)]\n"
        "        first = pool.map(lambda x: x * K, range(4))\n"
        "        K = 2\n"
        "        second = pool.map(lambda x: x * K, range(4))\n"
        "        print(loop, first, second, pool.apply(lambda: STATE))\n"
    )
    monkeypatch.setenv("HOOKPOOL_CLUSTER", dask_cluster.scheduler_address)
    done = run_script(script, tmp_path)
    assert done.returncode == 0, done.stderr
    expected = "[0, 10, 20, 30, 40] [0, 1, 2, 3] [0, 2, 4, 6] set up"
    assert done.stdout.strip() == expected


@pytest.mark.slow
def test_a_dying_worker_fails_only_the_task_it_ran_with_two_pools_on_it(tmp_path: Path) -> None:
    """Another pool's tasks that dask had queued on that worker never ran there: they
    run elsewhere, once, instead of failing."""
    d = str(tmp_path)
    with own_cluster(2) as (_, client):
        a = hookpool.Pool(cluster=client)
        b = hookpool.Pool(cluster=client)
        assert a.apply(pid) and b.apply(pid)
        doomed = [
            a.apply_async(tasks_cluster.mark_then_die_later, (d, f"d{i}", 1.0)) for i in range(2)
        ]
        wait_for(lambda: len(marks(d, "d0") + marks(d, "d1")) == 2, 10, "both started")
        innocent = [
            b.apply_async(tasks_cluster.mark_then_return, (d, f"i{i}", i)) for i in range(2)
        ]
        for result in doomed:
            with pytest.raises(hookpool.WorkerLostError):
                result.get(timeout=60)
        assert [r.get(timeout=60) for r in innocent] == [0, 1]
        assert [len(marks(d, f"i{i}")) for i in range(2)] == [1, 1]
        assert [len(marks(d, f"d{i}")) for i in range(2)] == [1, 1]
        a.terminate()
        b.terminate()


def test_a_result_lost_with_its_worker_is_not_computed_again(
    dask_client: Any, tmp_path: Path
) -> None:
    d = str(tmp_path)
    with hookpool.Pool(cluster=dask_client) as pool:
        pool.apply(pid)
        # A callback that holds the pool's settler thread: A's answer waits on its worker.
        pool.apply_async(abs, (-1,), callback=lambda _: time.sleep(3))
        time.sleep(0.3)
        a = pool.apply_async(tasks_cluster.mark_then_return, (d, "A", "A's result"))
        wait_for(lambda: bool(marks(d, "A")), 10, "A to run")
        time.sleep(0.3)
        os.kill(marks(d, "A")[0], 9)
        with pytest.raises(hookpool.WorkerLostError, match=r"worker tcp://127\.0\.0\.1:\d+ left"):
            a.get(timeout=60)
        time.sleep(1.0)
        assert len(marks(d, "A")) == 1
    dask_client.wait_for_workers(2, timeout=30)


@pytest.mark.parametrize("max_retries", [0, 1])
def test_a_result_lost_while_its_answer_waited_to_be_fetched(
    dask_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_retries: int
) -> None:
    """A's answer waits to be fetched with the other task's (a long fetch wait here), and
    is lost with its worker meanwhile: dask computes it again. The pool waits for that:
    by default the second run is declined (WorkerLostError), with max_retries it runs."""
    monkeypatch.setattr(hookpool._cluster, "FETCH_WAIT_SECONDS", 30.0)
    d = str(tmp_path)
    with hookpool.Pool(cluster=dask_client, max_retries=max_retries) as pool:
        pool.map(square, range(4))  # both workers are set up
        other = pool.apply_async(tasks_cluster.nap, (1.0, d, "other"))
        a = pool.apply_async(tasks_cluster.mark_then_return, (d, "A", "A's result"))
        wait_for(lambda: bool(marks(d, "A")), 10, "A to run")
        time.sleep(0.3)
        os.kill(marks(d, "A")[0], 9)  # while "other" runs: A's answer is not fetched yet
        if max_retries:
            assert a.get(timeout=60) == "A's result"
        else:
            with pytest.raises(hookpool.WorkerLostError, match=r"left"):
                a.get(timeout=60)
        assert other.get(timeout=60) == "woke"
        time.sleep(1.0)  # a run too many would have marked by now
        assert len(marks(d, "A")) == 1 + max_retries
    dask_client.wait_for_workers(2, timeout=30)


def test_task_timeout_runs_from_the_start_not_through_the_initializer(
    dask_client: Any,
) -> None:
    with hookpool.Pool(
        cluster=dask_client,
        initializer=tasks_cluster.slow_init,
        initargs=(2.0,),
        task_timeout=1.5,
    ) as pool:
        assert pool.map(abs, [-4, -3, -2, -1], chunksize=1) == [4, 3, 2, 1]


@pytest.mark.slow
def test_tasks_fail_when_the_cluster_is_left_without_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hookpool._cluster

    monkeypatch.setattr(hookpool._cluster, "NO_WORKERS_SECONDS", 2.0)
    with own_cluster(1) as (_, client), hookpool.Pool(cluster=client) as pool:
        running = pool.apply_async(tasks_cluster.nap, (3, str(tmp_path), "x"))
        wait_for(lambda: bool(_running_on(client)), 10, "the start")
        client.retire_workers([_running_on(client)], close_workers=True)
        with pytest.raises(hookpool.WorkerLostError):
            running.get(timeout=30)
