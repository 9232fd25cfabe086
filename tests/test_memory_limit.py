"""``max_memory_per_child``: a worker whose resident memory is above the limit after a
task is retired as ``maxtasksperchild`` retires one (its task answered, its finalizer
run once, a replacement started, nothing queued lost); one above it right after its
initializer breaks the pool instead of being restarted in a loop.

Memory is measured by the tasks themselves (``VmRSS`` in ``/proc/self/status``), not
taken from hookpool's own reports.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, assert_gone
from hypothesis import given, settings
from hypothesis import strategies as st
from tasks import counts, init_record, square
from tasks_hooks import markers, wait_for, wait_ready
from tasks_memory import (
    MIB,
    fin_leaving,
    init_bloated,
    leak,
    leak_when,
    leaving,
    memory_seen,
    runs,
)

import hookpool
import hookpool._manager
import hookpool._memory

MakePool = Callable[..., hookpool.Pool]


@pytest.fixture(scope="module")
def baseline() -> Iterator[int]:
    """A worker's resident memory right after it started, as hookpool measures it."""
    with hookpool.Pool(1, max_memory_per_child="1TiB") as pool:
        measured = pool.apply_async(memory_seen).get(timeout=30)
    assert measured is not None and measured > 0
    yield measured


def hooks(directory: Path) -> dict[str, Any]:
    d = str(directory)
    return {
        "initializer": init_record,
        "initargs": (d,),
        "finalizer": fin_leaving,
        "finalargs": (d,),
    }


def assert_finalized_once(directory: Path) -> dict[str, int]:
    inits, fins = counts(str(directory))
    assert inits
    assert fins == dict.fromkeys(inits, 1), f"init markers {inits}, fin markers {fins}"
    return inits


def assert_each_ran_once(directory: Path, items: int) -> None:
    ran = runs(str(directory))
    assert sorted(ran) == list(range(items)), "a task was lost"
    twice = {item: pids for item, pids in ran.items() if len(pids) != 1}
    assert not twice, f"tasks run more than once: {twice}"


# -- the limit, as given ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2 * 1024**3, 2 * 1024**3),
        ("2GiB", 2 * 1024**3),
        ("500MB", 500 * 1000**2),
        (" 1.5 GiB ", 1536 * MIB),
        ("0.1GB", 100 * 1000**2),
        ("64kib", 64 * 1024),
        ("10B", 10),
        (None, None),
    ],
)
def test_the_limit_parses(value: object, expected: int | None) -> None:
    assert hookpool._memory.parse_limit(value, "max_memory_per_child") == expected


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("2G", ValueError, r"max_memory_per_child='2G' is not a size: .*'2GiB' or '500MB'"),
        ("1e9", ValueError, "is not a size"),
        ("1,5GB", ValueError, "is not a size"),
        ("", ValueError, "is not a size"),
        ("GiB", ValueError, "is not a size"),
        ("-1MB", ValueError, "is not a size"),
        ("0MB", ValueError, "is not a positive size"),
        (0, ValueError, "is not a positive size"),
        (-5, ValueError, "is not a positive size"),
        (True, TypeError, "must be an int or a str, not bool"),
        (2e9, TypeError, r"not float: give a number of bytes as an int \(e.g. 2 \* 1024\*\*3\)"),
    ],
)
@pytest.mark.parametrize("facade", [hookpool.Pool, hookpool.ProcessPoolExecutor])
def test_a_bad_limit_is_refused_before_any_worker_starts(
    facade: Callable[..., Any], value: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        facade(1, max_memory_per_child=value)


def test_without_proc_a_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hookpool._memory, "STATM", "/nonexistent/statm")
    with pytest.raises(ValueError, match=r"needs /nonexistent/statm .* Pass max_memory_per_child"):
        hookpool.Pool(1, max_memory_per_child="1GiB")
    # Inline there is no worker to measure, or to retire: the limit is ignored.
    with hookpool.Pool(1, max_memory_per_child="1B", inline=True) as pool:
        assert pool.map(square, range(3)) == [0, 1, 4]


# -- retiring leaky workers --------------------------------------------------------------------


def test_leaking_workers_stay_bounded(make_pool: MakePool, tmp_path: Path, baseline: int) -> None:
    """200 tasks each keep 10 MiB: without a limit each of the 2 workers would end near
    1 GiB. With it, no task ever ends in a worker bigger than the limit plus what that one
    task kept; every worker retired ran its finalizer once; every task ran once."""
    step, items = 10, 200
    limit = baseline + 60 * MIB
    pool = make_pool(2, max_memory_per_child=limit, **hooks(tmp_path))
    d = str(tmp_path)
    found = pool.map_async(functools.partial(leak, d, mib=step), range(items), 1).get(50)
    pool.close()
    pool.join()
    assert [item for _, _, item in found] == list(range(items))
    biggest = max(rss for _, rss, _ in found)
    assert biggest <= limit + (step + 4) * MIB, (biggest, limit)
    assert_each_ran_once(tmp_path, items)
    inits = assert_finalized_once(tmp_path)
    why = leaving(d)
    assert set(why) == {int(p) for p in inits}
    retired = {p for p, info in why.items() if info["leaving"] == "max_memory_per_child"}
    # Each worker keeps at most (limit - baseline) / step + 1 = 7 tasks' worth.
    assert len(retired) >= items // 7 - 2, why
    assert all(why[p]["memory"] > limit for p in retired)
    assert {info["leaving"] for p, info in why.items() if p not in retired} <= {"close"}
    task_pids = {p for p, _, _ in found}
    assert task_pids <= set(why)


def test_quick_tasks_are_measured_at_most_once_a_millisecond_and_stay_bounded(
    make_pool: MakePool, tmp_path: Path, baseline: int
) -> None:
    """Tasks of 1 MiB that take well under a millisecond are not each measured (the
    cost would show on trivial tasks): a worker goes past the limit by at most what it
    can touch between two measurements, a few MiB."""
    limit = baseline + 30 * MIB
    pool = make_pool(2, max_memory_per_child=limit, **hooks(tmp_path))
    d = str(tmp_path)
    items = 300
    found = pool.starmap_async(leak, [(d, i, 1, 0) for i in range(items)], 1).get(50)
    pool.close()
    pool.join()
    assert [item for _, _, item in found] == list(range(items))
    assert max(rss for _, rss, _ in found) <= limit + 40 * MIB
    assert len({p for p, _, _ in found}) >= items // 40
    assert_each_ran_once(tmp_path, items)
    assert_finalized_once(tmp_path)


def test_tasks_queued_behind_a_retiring_worker_run_elsewhere(
    make_pool: MakePool,
    tmp_path: Path,
    baseline: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tasks sent to a worker before it reported its memory (queued behind its running
    task) are not run there: the manager puts them back and a replacement runs them."""
    seen: list[int] = []
    original = hookpool._manager.Manager._on_retiring

    def spy(self: Any, worker: Any, rss: int) -> None:
        seen.append(len(worker.inflight))
        original(self, worker, rss)

    monkeypatch.setattr(hookpool._manager.Manager, "_on_retiring", spy)
    d = str(tmp_path / "runs")
    os.mkdir(d)
    go = str(tmp_path / "go")
    pool = make_pool(1, max_memory_per_child=baseline + 30 * MIB)
    wait_ready(pool, 1)
    # Queue every task behind the running one (a worker's first pace is this constant).
    monkeypatch.setattr(hookpool._manager, "PREFETCH_SECONDS", 60.0)
    first = pool.apply_async(leak_when, (d, go, 0, 40))
    rest = [pool.apply_async(leak, (d, item, 0)) for item in range(1, 20)]
    worker = pool._manager._workers[0]
    wait_for(lambda: len(worker.inflight) == 20, what="20 tasks sent to the worker")
    Path(go).write_text("1")
    first_pid = first.get(timeout=30)[0]
    others = [r.get(timeout=30) for r in rest]
    assert seen[0] == 19, seen  # all of them were behind the first when it retired
    assert first_pid not in {p for p, _, _ in others}
    assert_each_ran_once(Path(d), 20)


def test_retiring_through_direct_reads(make_pool: MakePool, tmp_path: Path, baseline: int) -> None:
    """Back-to-back ``apply`` on an idle pool: the caller reads the answer from the
    worker itself and gives the worker back (the manager sleeping on); the worker's
    Retiring arrives just after, and still retires it."""
    pool = make_pool(1, max_memory_per_child=baseline + 25 * MIB, **hooks(tmp_path))
    d = str(tmp_path)
    found = [pool.apply_async(leak, (d, item, 10)).get(timeout=30) for item in range(30)]
    pool.close()
    pool.join()
    assert [item for _, _, item in found] == list(range(30))
    assert max(rss for _, rss, _ in found) <= baseline + (25 + 10 + 4) * MIB
    assert len({p for p, _, _ in found}) >= 30 // 4
    assert_each_ran_once(tmp_path, 30)
    assert_finalized_once(tmp_path)


@pytest.mark.parametrize("first", ["maxtasksperchild", "max_memory_per_child"])
def test_whichever_limit_comes_first_retires(
    tmp_path: Path, baseline: int, first: str, make_pool: MakePool
) -> None:
    """Limit 3 tasks and the baseline plus 50 MiB: 1 MiB per task reaches the count
    first; 40 MiB per task, the memory (after 2 tasks)."""
    mib = 1 if first == "maxtasksperchild" else 40
    face = hookpool.ProcessPoolExecutor(
        1, max_tasks_per_child=3, max_memory_per_child=baseline + 50 * MIB, **hooks(tmp_path)
    )
    d = str(tmp_path)
    try:
        found = [face.submit(leak, d, item, mib).result(timeout=30) for item in range(12)]
    finally:
        face.shutdown(wait=True)
    per_worker = 3 if first == "maxtasksperchild" else 2
    pids = [p for p, _, _ in found]
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [per_worker] * (12 // per_worker)
    why = leaving(d)
    assert {why[p]["leaving"] for p in pids[:-1]} == {first}
    assert why[pids[-1]]["leaving"] in (first, "close")
    assert all(why[p]["tasks_done"] == per_worker for p in pids)
    assert_each_ran_once(tmp_path, 12)
    assert_finalized_once(tmp_path)


# -- over the limit right after the initializer ----------------------------------------------


def test_over_the_limit_after_the_initializer_breaks_the_pool(
    make_pool: MakePool, tmp_path: Path, baseline: int
) -> None:
    """A worker too big before its first task would be retired after every task, each
    replacement paying for the initializer again: the pool breaks with an error that
    names the limit and the size, its finalizer runs, and no worker is started again."""
    d = str(tmp_path)
    limit = baseline + 20 * MIB
    pool = make_pool(
        2,
        initializer=init_bloated,
        initargs=(d, 60),
        finalizer=fin_leaving,
        finalargs=(d,),
        max_memory_per_child=limit,
    )
    with pytest.raises(hookpool.PoolBrokenError) as info:
        pool.apply_async(square, (3,)).get(timeout=30)
    message = str(info.value)
    assert "right after its initializer" in message
    assert f"max_memory_per_child={hookpool._memory.describe(limit)} ({limit} bytes)" in message
    assert "Set max_memory_per_child above what a worker needs once initialized" in message
    assert pool._manager.join(15)
    assert 1 <= len(markers(d, "attempt")) <= 2  # the two first workers, no more
    assert_finalized_once(tmp_path)
    # (The second worker may get the pool's SIGTERM before it measured itself.)
    reasons = [info["leaving"] for info in leaving(d).values()]
    assert "max_memory_per_child" in reasons and set(reasons) <= {"max_memory_per_child", "stopped"}
    with pytest.raises(hookpool.PoolBrokenError, match="right after its initializer"):
        pool.apply(square, (2,))


def test_memory_is_visible_to_the_task_and_logged(
    make_pool: MakePool, tmp_path: Path, baseline: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="hookpool")
    limit = baseline + 15 * MIB
    pool = make_pool(1, max_memory_per_child=limit)
    before = pool.apply_async(memory_seen).get(timeout=30)
    assert before is not None and before <= limit
    d = str(tmp_path)
    victim, _, _ = pool.apply_async(leak, (d, 0, 30)).get(timeout=30)
    assert pool.apply_async(memory_seen).get(timeout=30) <= limit  # a new worker
    wait_for(lambda: any("leaves after" in r.getMessage() for r in caplog.records))
    (record,) = [r for r in caplog.records if "leaves after" in r.getMessage()]
    assert record.levelname == "INFO"
    assert f"(pid {victim}) leaves after 2 tasks: its resident memory" in record.getMessage()
    assert f"above max_memory_per_child ({hookpool._memory.describe(limit)})" in (
        record.getMessage()
    )
    with hookpool.Pool(1) as unlimited:
        assert unlimited.apply_async(memory_seen).get(timeout=30) is None


# -- why a worker leaves, in its finalizer ---------------------------------------------------------


def test_why_a_worker_leaves(make_pool: MakePool, tmp_path: Path) -> None:
    from tasks import exit_with

    d = str(tmp_path)
    closed = make_pool(1, **hooks(tmp_path))
    (closed_pid,) = closed.worker_pids
    closed.apply_async(square, (2,)).get(timeout=30)
    closed.close()
    closed.join()
    stopped = make_pool(1, **hooks(tmp_path))
    (stopped_pid,) = stopped.worker_pids
    stopped.apply_async(square, (2,)).get(timeout=30)
    stopped.terminate()
    exiting = make_pool(1, **hooks(tmp_path))
    (exiting_pid,) = exiting.worker_pids
    with pytest.raises(SystemExit):
        exiting.apply_async(exit_with, (3,)).get(timeout=30)
    wait_for(lambda: exiting_pid in leaving(d), what="the finalizer after SystemExit")
    why = leaving(d)
    assert why[closed_pid]["leaving"] == "close"
    assert why[stopped_pid]["leaving"] == "stopped"
    assert why[exiting_pid]["leaving"] == "system_exit"
    assert all(why[p]["memory"] is None for p in why)  # no limit: not measured


KILLED_PARENT = """
import os, sys, time
import hookpool
import tasks, tasks_memory

if __name__ == "__main__":
    d = sys.argv[1]
    pool = hookpool.Pool(1, initializer=tasks.init_record, initargs=(d,),
                         finalizer=tasks_memory.fin_leaving, finalargs=(d,))
    pool.apply(tasks.square, (2,))
    print(*pool.worker_pids, flush=True)
    os.kill(os.getpid(), 9)
"""


def test_a_worker_whose_parent_died_says_so(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(KILLED_PARENT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    markers_dir = tmp_path / "markers"
    markers_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script), str(markers_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (worker,) = (int(p) for p in proc.stdout.split())
    assert_gone([worker])
    assert leaving(str(markers_dir))[worker]["leaving"] == "parent_exited"


# -- property: no task lost or run twice, whatever the limit ------------------------------------


@settings(max_examples=5, deadline=None)
@given(
    headroom=st.integers(10, 40),
    leaks=st.lists(st.sampled_from([0, 0, 1, 5, 15]), min_size=1, max_size=24),
    processes=st.integers(1, 2),
    chunksize=st.integers(1, 3),
    maxtasks=st.none() | st.integers(1, 6),
)
def test_property_no_task_lost_or_run_twice(
    baseline: int,
    headroom: int,
    leaks: list[int],
    processes: int,
    chunksize: int,
    maxtasks: int | None,
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        d = Path(directory)
        pool = hookpool.Pool(
            processes,
            maxtasksperchild=maxtasks,
            max_memory_per_child=baseline + headroom * MIB,
            **hooks(d),
        )
        seen: set[int] = set()
        try:
            found = pool.starmap_async(
                leak, [(directory, item, mib) for item, mib in enumerate(leaks)], chunksize
            ).get(timeout=50)
            seen = {p for p, _, _ in found} | set(pool.worker_pids)
            pool.close()
            pool.join()
        finally:
            seen |= set(pool.worker_pids)
            pool.terminate()
        assert [item for _, _, item in found] == list(range(len(leaks)))
        assert_each_ran_once(d, len(leaks))
        assert_finalized_once(d)
        assert_gone(sorted(seen))
