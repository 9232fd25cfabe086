"""Shared fixtures: every pool a test makes is torn down, bounded, and checked for leaks."""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faces import Face, MakeFace
from tasks_api import LOST_WAKEUP, LostWakeupWatchdog

import hookpool
import hookpool._events
import hookpool._manager

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep terminate's finalizer grace period short in tests (it is a module constant)."""
    monkeypatch.setattr(hookpool._events, "TERMINATE_GRACE_SECONDS", 3.0)


@pytest.fixture
def make_pool() -> Iterator[Callable[..., hookpool.Pool]]:
    """Build pools; at teardown terminate them and check that no worker is left alive.

    Each pool is watched for a lost manager wake-up (a hookpool bug that would otherwise
    hang the test, and then its teardown, forever): the test fails instead.
    """
    pools: list[hookpool.Pool] = []
    dogs: list[LostWakeupWatchdog] = []

    def make(*args: Any, **kwargs: Any) -> hookpool.Pool:
        pool = hookpool.Pool(*args, **kwargs)
        pools.append(pool)
        dogs.append(LostWakeupWatchdog(pool))
        return pool

    yield make
    pokes = sum(dog.stop() for dog in dogs)
    pids = [pid for pool in pools for pid in pool.worker_pids]
    for pool in pools:
        pool.terminate()
    assert_gone(pids)
    assert pokes == 0, LOST_WAKEUP


def shared_pool(pool: Any) -> Iterator[Any]:
    """Yield ``pool`` (a hookpool or standard library pool) to the tests of a module;
    then terminate it and check that its workers are gone and no wake-up was lost."""
    dog = LostWakeupWatchdog(pool) if isinstance(pool, hookpool.Pool) else None
    yield pool
    pokes = dog.stop() if dog is not None else 0
    pids = pool.worker_pids if isinstance(pool, hookpool.Pool) else [p.pid for p in pool._pool]
    pool.terminate()
    pool.join()
    del pool
    assert_gone(pids)
    assert pokes == 0, LOST_WAKEUP


@pytest.fixture
def collect_stopped_pools() -> Iterator[None]:
    """Collect pools kept alive by reference cycles (a frame holding an ExceptionInfo)
    right after the test, so that their teardown happens there, not at a random later
    point of another test."""
    yield
    gc.collect()


def assert_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Every pid in ``pids`` has exited (and been reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        if alive:
            time.sleep(0.05)
    assert not alive, f"worker processes still alive: {alive}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone between listing and reading
        return False
    return state != "Z"


def run_script(
    source: str, tmp_path: Path, *, timeout: float = 60, args: tuple[str, ...] = ()
) -> Any:
    """Run ``source`` as a real ``__main__`` script with this interpreter."""
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(source)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=env,
    )


def no_hookpool_threads() -> bool:
    return not any(t.name.endswith("-manager") for t in threading.enumerate())


__all__ = ["assert_gone", "multiprocessing", "run_script"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``facade``: both faces on local workers; a test marked ``cluster`` runs on both
    faces on the session's dask LocalCluster too (``dask_client``)."""
    if "facade" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "facade" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return  # a test's own parameter of that name, not this fixture
    faces = ["Pool", "ProcessPoolExecutor"]
    if metafunc.definition.get_closest_marker("cluster") is not None:
        faces += ["Pool-on-cluster", "ProcessPoolExecutor-on-cluster"]
    metafunc.parametrize("facade", faces, indirect=True)


@pytest.fixture
def facade(request: pytest.FixtureRequest) -> Iterator[MakeFace]:
    """``facade(workers, initializer=..., initargs=..., finalizer=..., finalargs=...)``
    builds the parametrized face; at teardown every face is stopped and no worker of it
    may survive (on a cluster: the pool's settler thread has ended; the cluster's
    workers are not the pool's to stop)."""
    kind, _, where = request.param.partition("-on-")
    client = request.getfixturevalue("dask_client") if where else None
    faces: list[Face] = []

    def make(workers: int = 1, **hooks: Any) -> Face:
        face = Face(kind, workers, cluster=client, **hooks)
        faces.append(face)
        return face

    yield make
    pids = [p for face in faces for p in face.worker_pids] if client is None else []
    awake = [face.stop() for face in faces]
    assert_gone(pids)
    assert all(awake), "lost wake-up: the manager slept through the stop until poked"


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """One real ``distributed.LocalCluster`` per test module that needs one: 2 worker
    processes with one thread each, on 127.0.0.1. Not one per session: its connections
    and threads would count as leaks in the modules that check for them."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",  # any free port: never a clash with another cluster
    )
    try:
        yield cluster
    finally:
        cluster.close(timeout=30)


@pytest.fixture(scope="module")
def dask_client(dask_cluster: Any) -> Iterator[Any]:
    """A client of the module's cluster."""
    import distributed

    client = distributed.Client(dask_cluster, set_as_default=False, timeout=30)
    try:
        yield client
    finally:
        client.close(timeout=30)
