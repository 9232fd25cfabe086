"""A callback runs on its pool's manager thread, the thread that delivers the pool's
results. A callback that waits for a result of the same pool that is not ready would wait
for itself (forever, or until its timeout, with every other result of the pool held up
behind it): it raises ``ReentrantCallError`` at once instead. A result that is ready, or
one of another pool, it may wait for.

Each test holds one worker busy with a task that ends only once the test creates a file,
and waits for that task from a callback of a second task (the test then waits for the
callback itself, not for a third task, which the pool may queue behind the held one):
without the guard the wait times out after ``WAIT`` seconds (and the test fails), the
held task still pending.

The executor's ``map`` is not guarded: its results come from a generator, which the error
would end (cancelling the rest of the map).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from faces import Face
from tasks import square
from tasks_api import hold_until, write_file
from tasks_hooks import wait_for, wait_ready

import hookpool

MakeFace = Callable[..., Face]

#: How long a callback waits, should it wait at all (a test without the guard fails then).
WAIT = 5.0


def attempt(wait: Callable[[], Any]) -> Any:
    """What ``wait()`` returned, or the exception it raised."""
    try:
        return wait()
    except Exception as exc:
        return exc


def refused(seen: list[Any], what: str) -> None:
    (error,) = seen
    assert isinstance(error, hookpool.ReentrantCallError), error
    assert str(error).startswith(f"{what} was called from a callback of the same pool")
    assert "chain another callback" in str(error)


@pytest.fixture
def go(tmp_path: Path) -> Iterator[str]:
    """The file that lets the held task end; created at teardown too, so that no worker
    is left holding."""
    path = tmp_path / "go"
    yield str(path)
    path.touch()


def test_apply_async_callback_waiting_for_the_same_pool(make_pool: Any, go: str) -> None:
    pool = make_pool(2)
    wait_ready(pool, 2)  # (else a task may be queued behind the held one)
    held = pool.apply_async(hold_until, (go, "held"))
    seen: list[Any] = []
    pool.apply_async(square, (3,), callback=lambda _: seen.append(attempt(lambda: held.get(WAIT))))
    wait_for(lambda: bool(seen), 30, "the callback")
    refused(seen, "AsyncResult.get()")
    Path(go).touch()
    assert held.get(timeout=30) == "held"  # the pool carries on


@pytest.mark.parametrize(
    ("what", "call"),
    [
        ("Pool.apply()", lambda pool, path: pool.apply(write_file, (path,))),
        ("Pool.map()", lambda pool, path: pool.map(write_file, [path])),
        ("Pool.starmap()", lambda pool, path: pool.starmap(write_file, [(path,)])),
    ],
)
def test_blocking_calls_from_a_callback_are_refused_before_their_tasks_go(
    make_pool: Any, tmp_path: Path, what: str, call: Callable[[Any, str], Any]
) -> None:
    pool = make_pool(1)
    marker = tmp_path / "ran"
    seen: list[Any] = []
    pool.apply_async(
        square, (3,), callback=lambda _: seen.append(attempt(lambda: call(pool, str(marker))))
    ).get(timeout=30)
    refused(seen, what)
    assert pool.apply_async(square, (4,)).get(timeout=30) == 16  # after any task it sent
    assert not marker.exists()


def test_an_empty_map_from_a_callback_waits_for_nothing(make_pool: Any) -> None:
    pool = make_pool(1)
    seen: list[Any] = []

    def callback(_: int) -> None:
        seen.append(attempt(lambda: pool.map(square, [])))
        seen.append(attempt(lambda: pool.starmap(square, iter([]))))

    pool.apply_async(square, (3,), callback=callback).get(timeout=30)
    assert seen == [[], []]


def test_map_and_imap_waited_for_from_a_callback(make_pool: Any, go: str) -> None:
    pool = make_pool(2)
    wait_ready(pool, 2)  # (else a task may be queued behind the held one)
    mapped = pool.map_async(hold_until, [go])
    seen: list[Any] = []
    pool.apply_async(
        square, (3,), callback=lambda _: seen.append(attempt(lambda: mapped.get(WAIT)))
    )
    wait_for(lambda: bool(seen), 30, "the callback")
    refused(seen, "AsyncResult.get()")
    Path(go).touch()
    assert mapped.get(timeout=30) == [None]

    Path(go).unlink()
    lazy = pool.imap(hold_until, [go])
    seen.clear()
    pool.apply_async(square, (3,), callback=lambda _: seen.append(attempt(lambda: lazy.next(WAIT))))
    wait_for(lambda: bool(seen), 30, "the callback")
    refused(seen, "next() on a lazy map")
    Path(go).touch()
    assert list(lazy) == [None]


@pytest.mark.cluster
def test_future_waited_for_from_a_done_callback(facade: MakeFace, go: str) -> None:
    face = facade(2)
    if face.pool is not None and face.cluster is None:
        wait_ready(face.pool, 2)  # (else a task may be queued behind the held one)
    held = face.submit(hold_until, go, "held")
    release = str(Path(go).with_name("release"))
    seen: list[Any] = []

    def wait_for_held(_: Future[Any]) -> None:
        seen.append(attempt(lambda: held.result(WAIT)))

    # (The callback is attached before its task can end: it runs on the manager thread.)
    face.submit(hold_until, release, 3).add_done_callback(wait_for_held)
    Path(release).touch()
    wait_for(lambda: bool(seen), 30, "the callback")
    refused(seen, "Future.result()")
    Path(go).touch()
    assert held.result(timeout=30) == "held"


def test_map_async_future_waited_for_from_a_callback(make_pool: Any, go: str) -> None:
    pool = make_pool(2)
    wait_ready(pool, 2)  # (else a task may be queued behind the held one)
    mapped = pool.map_async(hold_until, [go])
    seen: list[Any] = []
    pool.apply_async(
        square, (3,), callback=lambda _: seen.append(attempt(lambda: mapped.future.result(WAIT)))
    )
    wait_for(lambda: bool(seen), 30, "the callback")
    refused(seen, "Future.result()")
    Path(go).touch()
    assert mapped.get(timeout=30) == [None]


def test_a_progress_map_whose_chunks_are_in_may_be_waited_for(make_pool: Any, go: str) -> None:
    """With ``progress=``, the map ends on its progress thread once every chunk is in: a
    callback on the manager thread may wait for that."""
    pool = make_pool(2)
    wait_ready(pool, 2)  # (else a task may be queued behind the held one)
    reports: list[tuple[int, int | None]] = []

    def slow_report(done: int, total: int | None) -> None:
        reports.append((done, total))
        if done == total:
            time.sleep(0.5)  # the final report: the chunks are all in

    mapped = pool.map_async(square, [1, 2], chunksize=1, progress=slow_report)
    seen: list[Any] = []
    pool.apply_async(
        hold_until, (go, 0), callback=lambda _: seen.append(attempt(lambda: mapped.get(30)))
    )
    wait_for(lambda: all(task.done() for task in mapped.tasks), 30, "the chunks")
    Path(go).touch()
    wait_for(lambda: bool(seen), 30, "the callback")
    assert seen == [[1, 4]]


def test_waits_that_cannot_wait_for_themselves_still_work(make_pool: Any, go: str) -> None:
    """A result of another pool; one that is ready already; a poll with no wait."""
    pool, other = make_pool(2), make_pool(1)
    wait_ready(pool, 2)  # (else a task may be queued behind the held one)
    ready = pool.apply_async(square, (2,))
    assert ready.get(timeout=30) == 4
    later = str(Path(go).with_name("later"))
    pending = pool.apply_async(hold_until, (later, "later"))
    elsewhere = other.apply_async(hold_until, (go, "elsewhere"))
    seen: list[Any] = []

    def callback(_: int) -> None:
        seen.append(attempt(lambda: ready.get(0)))
        seen.append(attempt(lambda: pending.wait(0)))
        seen.append(type(attempt(lambda: pending.get(0))))
        seen.append(attempt(lambda: pending.future.result(0)))
        Path(go).touch()  # (the other pool's task ends while this callback waits for it)
        seen.append(attempt(lambda: elsewhere.get(30)))

    try:
        pool.apply_async(square, (3,), callback=callback).get(timeout=60)
    finally:
        Path(later).touch()
    assert seen[:3] == [4, None, multiprocessing.TimeoutError]
    assert isinstance(seen[3], concurrent.futures.TimeoutError)
    assert seen[4] == "elsewhere"
    assert pending.get(timeout=30) == "later"
