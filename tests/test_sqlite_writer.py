"""A per-worker sqlite writer: rows are buffered by the tasks and written by the finalizer.

The database must hold exactly every row after each orderly way out (pebble lost rows
in about a third of the runs of this pattern), so each scenario runs a few times.
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import assert_gone
from tasks_hooks import sqlite_add, sqlite_flush, sqlite_flush_slow, sqlite_open

import hookpool
import hookpool._events
import hookpool._manager

MakePool = Callable[..., hookpool.Pool]
N_ROWS = 200
REPEATS = 3


def make_db(tmp_path: Path) -> str:
    path = str(tmp_path / "rows.sqlite")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE rows (item INTEGER NOT NULL, pid INTEGER NOT NULL)")
    conn.close()
    return path


def stored_rows(path: str) -> list[tuple[int, int]]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT item, pid FROM rows ORDER BY item").fetchall()
    finally:
        conn.close()


def check(path: str, results: list[int], task_pids: set[int] | None = None) -> None:
    assert results == list(range(N_ROWS))
    rows = stored_rows(path)
    items = [item for item, _ in rows]
    missing = sorted(set(range(N_ROWS)) - set(items))
    assert not missing, f"{len(missing)} rows lost, e.g. {missing[:10]}"
    assert items == list(range(N_ROWS)), "rows written more than once"
    if task_pids is not None:
        assert {pid for _, pid in rows} <= task_pids


def writer_pool(make_pool: MakePool, path: str, **kwargs: object) -> hookpool.Pool:
    return make_pool(2, initializer=sqlite_open, initargs=(path,), finalizer=sqlite_flush, **kwargs)


@pytest.mark.parametrize("run", range(REPEATS))
def test_close_join(make_pool: MakePool, tmp_path: Path, run: int) -> None:
    path = make_db(tmp_path)
    pool = writer_pool(make_pool, path)
    results = pool.map(sqlite_add, range(N_ROWS), chunksize=5)
    pool.close()
    pool.join()
    check(path, results)


@pytest.mark.parametrize("run", range(REPEATS))
def test_recycling(make_pool: MakePool, tmp_path: Path, run: int) -> None:
    path = make_db(tmp_path)
    pool = writer_pool(make_pool, path, maxtasksperchild=4)
    results = pool.map(sqlite_add, range(N_ROWS), chunksize=10)
    pool.close()
    pool.join()
    check(path, results)
    # 20 chunks, at most 4 per worker: at least 5 workers wrote their rows.
    assert len({pid for _, pid in stored_rows(path)}) >= 5


@pytest.mark.parametrize("run", range(REPEATS))
def test_with_exit_after_results(make_pool: MakePool, tmp_path: Path, run: int) -> None:
    path = make_db(tmp_path)
    with writer_pool(make_pool, path) as pool:
        results = pool.map(sqlite_add, range(N_ROWS), chunksize=5)
    check(path, results)


@pytest.mark.parametrize("run", range(REPEATS))
def test_terminate_after_results(make_pool: MakePool, tmp_path: Path, run: int) -> None:
    path = make_db(tmp_path)
    pool = writer_pool(make_pool, path)
    results = [pool.apply_async(sqlite_add, (i,)) for i in range(N_ROWS)]
    values = [r.get(timeout=20) for r in results]
    pool.terminate()
    check(path, values)


@pytest.mark.parametrize("run", range(REPEATS))
def test_imap_then_with_exit(make_pool: MakePool, tmp_path: Path, run: int) -> None:
    path = make_db(tmp_path)
    with writer_pool(make_pool, path, maxtasksperchild=7) as pool:
        results = list(pool.imap(sqlite_add, range(N_ROWS), chunksize=3))
    check(path, results)


@pytest.mark.parametrize("run", range(REPEATS))
def test_garbage_collected_after_results(tmp_path: Path, run: int) -> None:
    path = make_db(tmp_path)
    pool = hookpool.Pool(2, initializer=sqlite_open, initargs=(path,), finalizer=sqlite_flush)
    manager = pool._manager
    try:
        results = pool.map(sqlite_add, range(N_ROWS), chunksize=5)
        pids = pool.worker_pids
        with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
            del pool
            gc.collect()
        assert manager.join(10), "the workers of a collected pool did not leave"
    finally:
        manager.terminate()
        manager.join(10)
    assert_gone(pids)
    check(path, results)


@pytest.mark.parametrize("run", range(REPEATS))
def test_terminate_mid_run_keeps_every_delivered_row(
    make_pool: MakePool, tmp_path: Path, run: int
) -> None:
    """terminate() while tasks are still queued: every task whose result was delivered
    has its row, and no row is written twice."""
    path = make_db(tmp_path)
    pool = writer_pool(make_pool, path)
    results = [pool.apply_async(sqlite_add, (i,)) for i in range(2000)]
    delivered = [r.get(timeout=20) for r in results[:N_ROWS]]
    pool.terminate()
    delivered += [r.get(timeout=0) for r in results[N_ROWS:] if r.ready() and r.successful()]
    items = [item for item, _ in stored_rows(path)]
    assert len(items) == len(set(items)), "rows written more than once"
    missing = sorted(set(delivered) - set(items))
    assert not missing, f"{len(missing)} delivered rows lost, e.g. {missing[:10]}"


def test_slow_flush_on_close_join(
    make_pool: MakePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush slower than terminate's grace period still completes on close()+join()."""
    monkeypatch.setattr(hookpool._events, "TERMINATE_GRACE_SECONDS", 0.5)
    path = make_db(tmp_path)
    pool = make_pool(
        2,
        initializer=sqlite_open,
        initargs=(path,),
        finalizer=sqlite_flush_slow,
        finalargs=(1.5,),
        maxtasksperchild=50,
    )
    results = pool.map(sqlite_add, range(N_ROWS), chunksize=10)
    pool.close()
    pool.join()
    check(path, results)
