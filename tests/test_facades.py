"""What ``hookpool.Pool`` and ``hookpool.ProcessPoolExecutor`` share, tested on both faces.

The tests marked ``cluster`` run on both faces on a dask LocalCluster too (``cluster=``):
same calls, same results, same errors.

One parametrized fixture, ``facade``, builds either face behind the same tiny adapter
(``Face``), each face spoken in its own words: ``apply_async``/``apply``/``map``/
``close``+``join`` for the Pool, ``submit``/``map``/``shutdown`` for the executor.
"""

from __future__ import annotations

import concurrent.futures.process
import multiprocessing.pool
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
import tasks_crash
import tasks_exec
from conftest import assert_gone
from faces import MakeFace
from tasks import counts, fin_record, identity, init_record, pid, raise_value_error, square
from tasks_exec import (
    attempts,
    fail_on,
    init_gate_then_fail,
    keep_both,
    kill_self,
    read_kept_value,
    try_lock,
)

import hookpool


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def frame_names(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


# -- lifecycle hooks --------------------------------------------------------------------------


@pytest.mark.cluster
def test_initializer_once_per_worker_and_finalizer_once_at_shutdown(
    facade: MakeFace, tmp_path: Path
) -> None:
    d = str(tmp_path)
    face = facade(2, initializer=init_record, initargs=(d,), finalizer=fin_record, finalargs=(d,))
    assert face.map(square, range(20)) == [x * x for x in range(20)]
    used = {face.apply(pid) for _ in range(4)}
    pids = face.worker_pids
    assert used <= set(pids)
    inits, fins = counts(d)
    assert set(inits) <= {str(p) for p in pids}
    assert all(n == 1 for n in inits.values()), inits
    assert fins == {}  # not before the workers leave
    face.shutdown()
    inits, fins = counts(d)
    assert inits == {str(p): 1 for p in pids}
    assert fins == inits
    if face.cluster is None:  # a cluster's workers are its own: they stay
        assert_gone(pids)


@pytest.mark.cluster
def test_closures_and_lambdas_as_tasks_and_hooks(facade: MakeFace, tmp_path: Path) -> None:
    d = str(tmp_path)
    tag = f"tag-{os.getpid()}"
    offset = 100

    def setup(prefix: str) -> None:  # a closure over d and tag
        tasks_exec.STATE["tag"] = prefix + tag
        Path(d, f"init-{os.getpid()}").write_text("1")

    face = facade(
        2,
        initializer=setup,
        initargs=("x-",),
        finalizer=lambda: Path(d, f"fin-{os.getpid()}").write_text("1"),
    )

    def scale(x: int) -> int:
        return x * offset

    assert face.map(lambda x: x + offset, range(5)) == [100, 101, 102, 103, 104]
    assert face.submit(scale, 3).result(timeout=30) == 300
    # What the closure initializer set up in the worker is what a lambda task sees there.
    assert face.apply(lambda: tasks_exec.STATE["tag"]) == f"x-{tag}"
    pids = face.worker_pids
    face.shutdown()
    inits, fins = counts(d)
    assert inits == {str(p): 1 for p in pids}
    assert fins == inits
    if face.cluster is None:  # a cluster's workers are its own: they stay
        assert_gone(pids)


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_remote_tracebacks_show_the_worker_frames(facade: MakeFace) -> None:
    face = facade(1)
    with pytest.raises(ValueError, match="boom") as info:
        face.apply(raise_value_error, "boom")
    assert "raise_value_error" in frame_names(info.value)
    # The standard library's own class for each face, as code that checks it expects.
    standard = (
        multiprocessing.pool.RemoteTraceback
        if face.kind == "Pool"
        else concurrent.futures.process._RemoteTraceback
    )
    assert type(info.value.__cause__) is standard
    assert "raise_value_error" in info.value.__cause__.tb

    with pytest.raises(ValueError, match="bad item 3") as info:
        face.map(fail_on, range(6))
    names = frame_names(info.value)
    assert "fail_on" in names
    assert "_fail_on_inner" in names
    assert names.index("fail_on") < names.index("_fail_on_inner")

    with pytest.raises(ZeroDivisionError) as info:
        face.apply(lambda: 1 / 0)
    assert "<lambda>" in frame_names(info.value)


@pytest.mark.cluster
def test_bad_arguments_fail_their_own_results(facade: MakeFace) -> None:
    """As in the standard library, an argument that cannot be pickled fails its task's
    result, not the call; hookpool's message says what to do instead."""
    face = facade(1)
    with pytest.raises(TypeError, match="pickle"):
        face.submit(identity, threading.Lock()).result(timeout=10)
    with pytest.raises(TypeError, match="pickle"):
        face.map(identity, [1, threading.Lock()])
    lock = hookpool.get_context().Lock()
    with pytest.raises(RuntimeError, match="initargs"):
        face.submit(identity, lock).result(timeout=10)
    with pytest.raises(RuntimeError, match="initargs"):
        face.map(identity, [lock])
    assert face.apply(square, 3) == 9  # the facade is not hurt
    assert face.map(square, range(3)) == [0, 1, 4]


@pytest.mark.cluster
def test_a_worker_killed_mid_task_fails_only_that_task(facade: MakeFace) -> None:
    face = facade(2)
    doomed = face.submit(kill_self)
    others = [face.submit(square, i) for i in range(6)]
    with pytest.raises(hookpool.WorkerLostError) as info:
        doomed.result(timeout=30)
    assert isinstance(info.value, BrokenProcessPool)
    assert [f.result(timeout=30) for f in others] == [i * i for i in range(6)]
    assert face.map(square, range(10)) == [i * i for i in range(10)]
    assert face.apply(square, 4) == 16
    if face.cluster is None:  # dask's nanny restarts its worker; the pid is not known
        assert info.value.pid is not None
        assert info.value.pid not in face.worker_pids
        assert_gone([info.value.pid])


def test_an_initializer_that_raises_breaks_the_facade_without_respawning(
    facade: MakeFace, tmp_path: Path
) -> None:
    d = str(tmp_path)
    face = facade(2, initializer=init_gate_then_fail, initargs=(d,))
    pids = face.worker_pids
    # Queued while the initializers wait at their gate: no worker is ready yet.
    future = face.submit(square, 2)
    Path(d, "go").write_text("")
    with pytest.raises(hookpool.InitializerError) as info:
        future.result(timeout=30)
    error = info.value
    assert isinstance(error, BrokenProcessPool)
    assert isinstance(error.__cause__, ValueError)
    assert "on purpose" in str(error.__cause__)
    assert "init_gate_then_fail" in frame_names(error.__cause__)
    # Later calls are refused at once with the pool's broken error.
    with pytest.raises(hookpool.PoolBrokenError):
        face.submit(square, 3)
    with pytest.raises(hookpool.PoolBrokenError):
        face.map(square, range(3))
    # No respawn loop: the workers leave, and no new one tries the initializer again.
    assert_gone(pids)
    wait_for(lambda: not face.worker_pids, what="the workers to leave")
    time.sleep(0.5)
    # One attempt per worker at most (a worker stopped while starting makes none).
    assert 1 <= attempts(d) <= 2
    assert face.worker_pids == []
    face.shutdown()  # still returns


def test_inheritance_only_objects_travel_in_initargs(facade: MakeFace) -> None:
    """A Lock and a Value made from the spawn context reach each worker through initargs
    (the parent holds the lock: the worker sees it taken), on both faces; passed as a
    task argument instead, they fail the task with the initargs advice."""
    ctx = hookpool.get_context()
    lock = ctx.Lock()
    value = ctx.Value("i", 7)
    face = facade(1, initializer=keep_both, initargs=(lock, value))
    with lock:
        assert face.apply(try_lock) is False
    assert face.apply(try_lock) is True
    assert face.apply(read_kept_value) == 7
    with pytest.raises(RuntimeError, match="initargs"):
        face.submit(identity, lock).result(timeout=10)


@pytest.mark.cluster
def test_unpicklable_results_and_exceptions_are_clear_errors(facade: MakeFace) -> None:
    """A result that will not pickle: a MaybeEncodingError from the Pool, the pickling
    error itself from the executor, as with the standard library's two pools."""
    face = facade(1)
    expected = hookpool.ResultEncodingError if face.kind == "Pool" else TypeError
    with pytest.raises(expected) as result_error:
        face.apply(tasks_crash.return_lock)
    assert "lock" in str(result_error.value).lower()
    with pytest.raises(hookpool.RemoteError) as remote:
        face.apply(tasks_crash.raise_lock_holding_error)
    assert "raise_lock_holding_error" in remote.value.remote_traceback
    assert face.apply(square, 4) == 16  # the face keeps working
