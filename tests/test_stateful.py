"""A hypothesis state machine that mixes work with failures: every future resolves, no
task runs twice, no task is lost."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import tasks_crash
from conftest import assert_gone
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import hookpool
import hookpool._events
import hookpool._manager

#: What a settled future may be, and how many times its task may have started.
ALLOWED_STARTS = {
    "result": {1},
    "cancelled": {0},  # cancelled while queued: it never ran
    "stopped": {0, 1},  # cancelled while running, timed out, or its worker was killed
}


class PoolUnderFire(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="hookpool-stateful-")
        self.pool = hookpool.Pool(2)
        self.futures: dict[str, Future[Any]] = {}
        self.keys = (f"t{i}" for i in range(10**9))
        self.pids_seen: set[int] = set()
        self.maps: set[str] = set()

    def _track(self, key: str, future: Future[Any]) -> None:
        self.futures[key] = future
        self.pids_seen.update(self.pool.worker_pids)

    @rule(seconds=st.sampled_from([0.0, 0.0, 0.02, 0.2]))
    def submit(self, seconds: float) -> None:
        key = next(self.keys)
        self._track(key, self.pool.submit(tasks_crash.record_run, self.directory, key, seconds))

    @rule(count=st.integers(1, 12), chunksize=st.integers(1, 4))
    def map_async(self, count: int, chunksize: int) -> None:
        keys = [next(self.keys) for _ in range(count)]
        result = self.pool.starmap_async(
            tasks_crash.record_run, [(self.directory, k) for k in keys], chunksize
        )
        future: Future[Any] = result.future
        self._track("+".join(keys), future)
        self.maps.add("+".join(keys))

    @rule()
    def submit_with_timeout(self) -> None:
        key = next(self.keys)
        result = self.pool.apply_async(
            tasks_crash.record_run, (self.directory, key, 5.0), task_timeout=0.1
        )
        self._track(key, result.future)

    @precondition(lambda self: bool(self.futures))
    @rule(choice=st.integers(0, 100))
    def cancel(self, choice: int) -> None:
        keys = list(self.futures)
        self.pool.cancel(self.futures[keys[choice % len(keys)]])

    @rule(choice=st.integers(0, 100))
    def kill_a_worker(self, choice: int) -> None:
        # Only workers that are up: killing every newborn worker is a different story
        # (the pool gives up after STARTUP_FAILURES_TO_BREAK of those in a row).
        ready = [w.pid for w in self.pool._manager._workers if w.ready and not w.stopping]
        if ready:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ready[choice % len(ready)], signal.SIGKILL)

    @invariant()
    def pool_is_running(self) -> None:
        assert self.pool._manager.state is hookpool._manager.PoolState.RUNNING

    def teardown(self) -> None:
        try:
            for key, future in self.futures.items():
                outcome = _settle(future)
                for part in key.split("+"):
                    starts = _starts(self.directory, part)
                    assert starts in ALLOWED_STARTS[outcome], (key, outcome, starts)
                if outcome == "result":
                    expected = key.split("+") if key in self.maps else key
                    assert future.result() == expected
        finally:
            self.pids_seen.update(self.pool.worker_pids)
            self.pool.terminate()
            assert_gone(list(self.pids_seen))


def _settle(future: Future[Any]) -> str:
    """Wait (bounded) for a future; classify how it ended."""
    try:
        future.result(timeout=60)
    except concurrent.futures.CancelledError:
        return "cancelled" if future.cancelled() else "stopped"
    except (hookpool.WorkerLostError, hookpool.TaskTimeoutError):
        return "stopped"
    return "result"


def _starts(directory: str, key: str) -> int:
    path = Path(directory, key)
    return len(path.read_text()) if path.exists() else 0


TestPoolUnderFire = PoolUnderFire.TestCase
TestPoolUnderFire.settings = settings(
    max_examples=8,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _quick_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hookpool._events, "TERMINATE_GRACE_SECONDS", 2.0)
