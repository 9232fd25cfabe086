"""Property tests: the pool's maps agree with the builtins, for any input, chunksize and
number of workers; errors surface at their item; no task is lost or run twice."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import gc
import itertools
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tasks
import tasks_api
from conftest import assert_gone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hookpool

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

ints = st.integers(min_value=-(10**6), max_value=10**6)
int_lists = st.lists(ints, max_size=40)
workers = st.integers(min_value=1, max_value=3)
chunksizes = st.integers(min_value=1, max_value=8)
map_chunksizes = st.none() | chunksizes

GetPool = Callable[[int], hookpool.Pool]


@pytest.fixture(autouse=True)
def _collect_stopped_pools() -> Iterator[None]:
    """See test_pool_api: collect pools held by reference cycles right away."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def pools() -> Iterator[GetPool]:
    """One pool per worker count, made on first use, shared by the whole module."""
    made: dict[int, hookpool.Pool] = {}
    dogs: list[tasks_api.LostWakeupWatchdog] = []

    def get(processes: int) -> hookpool.Pool:
        if processes not in made:
            made[processes] = hookpool.Pool(processes)
            dogs.append(tasks_api.LostWakeupWatchdog(made[processes]))
        return made[processes]

    yield get
    pokes = sum(dog.stop() for dog in dogs)
    pids = [pid for pool in made.values() for pid in pool.worker_pids]
    for pool in made.values():
        pool.terminate()
    made.clear()
    assert_gone(pids)
    # A lost wake-up would have hung a test (and the teardown) forever; the watchdog
    # un-hung it, and it is reported here.
    assert pokes == 0, tasks_api.LOST_WAKEUP


# -- agreement with the builtins ---------------------------------------------------------


@SETTINGS
@given(items=int_lists, processes=workers, chunksize=map_chunksizes)
def test_map_equals_builtin_map(
    pools: GetPool, items: list[int], processes: int, chunksize: int | None
) -> None:
    pool = pools(processes)
    expected = list(map(tasks.square, items))
    assert pool.map(tasks.square, items, chunksize) == expected
    assert pool.map(tasks.square, iter(items), chunksize) == expected
    assert pool.map_async(tasks.square, items, chunksize).get(timeout=30) == expected


@SETTINGS
@given(
    pairs=st.lists(st.tuples(ints, ints), max_size=40),
    processes=workers,
    chunksize=map_chunksizes,
)
def test_starmap_equals_itertools_starmap(
    pools: GetPool, pairs: list[tuple[int, int]], processes: int, chunksize: int | None
) -> None:
    pool = pools(processes)
    expected = list(itertools.starmap(tasks.add, pairs))
    assert pool.starmap(tasks.add, pairs, chunksize) == expected
    assert pool.starmap_async(tasks.add, iter(pairs), chunksize).get(timeout=30) == expected


@SETTINGS
@given(items=int_lists, processes=workers, chunksize=chunksizes)
def test_imap_equals_builtin_map(
    pools: GetPool, items: list[int], processes: int, chunksize: int
) -> None:
    pool = pools(processes)
    expected = list(map(tasks.square, items))
    assert list(pool.imap(tasks.square, items, chunksize)) == expected
    assert list(pool.imap(tasks.square, iter(items), chunksize)) == expected


@SETTINGS
@given(
    items=int_lists,
    chunksize=chunksizes,
    takes=st.lists(st.tuples(st.sampled_from(["next", "loop", "islice"]), st.integers(1, 7))),
)
def test_imap_taken_every_which_way_equals_builtin_map(
    pools: GetPool, items: list[int], chunksize: int, takes: list[tuple[str, int]]
) -> None:
    """``next()`` calls, ``for`` loops left with ``break`` and ``islice`` slices, mixed on
    one imap iterator (loops run in a generator of their own that shares its position),
    take every result once, in order."""
    iterator = pools(2).imap(tasks.square, iter(items), chunksize)
    taken: list[int] = []
    for how, count in [*takes, ("loop", len(items) + 1)]:
        if how == "next":
            taken.extend(itertools.islice(_nexts(iterator), count))
        elif how == "islice":
            taken.extend(itertools.islice(iterator, count))
        else:
            for value in iterator:
                taken.append(value)
                if len(taken) % count == 0:
                    break
    assert taken == list(map(tasks.square, items))


def _nexts(iterator: Iterator[int]) -> Iterator[int]:
    """``next(iterator)`` until it is exhausted, one call per item."""
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return


@SETTINGS
@given(items=int_lists, processes=workers, chunksize=chunksizes)
def test_imap_unordered_yields_a_permutation(
    pools: GetPool, items: list[int], processes: int, chunksize: int
) -> None:
    pool = pools(processes)
    out = list(pool.imap_unordered(tasks.square, iter(items), chunksize))
    assert collections.Counter(out) == collections.Counter(map(tasks.square, items))


# -- errors at their position ------------------------------------------------------------


@st.composite
def lists_with_bad_items(draw: st.DrawFn) -> tuple[list[int], frozenset[int]]:
    """Distinct items, and a non-empty subset of them that make the task raise."""
    items = draw(st.lists(ints, min_size=1, max_size=40, unique=True))
    bad = draw(st.sets(st.sampled_from(items), min_size=1, max_size=3))
    return items, frozenset(bad)


@SETTINGS
@given(case=lists_with_bad_items(), processes=workers, chunksize=map_chunksizes)
def test_map_raises_the_error_of_the_first_bad_item(
    pools: GetPool,
    case: tuple[list[int], frozenset[int]],
    processes: int,
    chunksize: int | None,
) -> None:
    items, bad = case
    first_bad = next(x for x in items if x in bad)
    pool = pools(processes)
    task = functools.partial(tasks_api.fail_if_in, bad=bad)
    with pytest.raises(ValueError) as info:
        pool.map(task, items, chunksize)
    assert info.value.args == (f"bad item {first_bad}",)
    with pytest.raises(ValueError) as info:
        pool.map_async(task, items, chunksize).get(timeout=30)
    assert info.value.args == (f"bad item {first_bad}",)


@SETTINGS
@given(case=lists_with_bad_items(), processes=workers, chunksize=chunksizes)
def test_imap_raises_at_the_bad_items_position(
    pools: GetPool, case: tuple[list[int], frozenset[int]], processes: int, chunksize: int
) -> None:
    """Everything before the failing chunk is yielded, then its error is raised."""
    items, bad = case
    position = next(i for i, x in enumerate(items) if x in bad)
    pool = pools(processes)
    iterator = pool.imap(functools.partial(tasks_api.fail_if_in, bad=bad), items, chunksize)
    yielded = []
    with pytest.raises(ValueError) as info:
        for value in iterator:
            yielded.append(value)
    assert info.value.args == (f"bad item {items[position]}",)
    first_of_chunk = position - position % chunksize
    assert yielded == items[:first_of_chunk]


@SETTINGS
@given(case=lists_with_bad_items(), processes=workers)
def test_imap_with_chunksize_1_continues_after_each_error(
    pools: GetPool, case: tuple[list[int], frozenset[int]], processes: int
) -> None:
    """As with the standard library: each failing item raises in its place, and the
    iteration goes on."""
    items, bad = case
    pool = pools(processes)
    iterator = pool.imap(functools.partial(tasks_api.fail_if_in, bad=bad), items)
    outcome: list[object] = []
    for _ in items:
        try:
            outcome.append(next(iterator))
        except ValueError as exc:
            outcome.append(exc.args)
    with pytest.raises(StopIteration):
        next(iterator)
    assert outcome == [(f"bad item {x}",) if x in bad else x for x in items]


# -- nothing lost, nothing run twice -----------------------------------------------------


def _runs(directory: str) -> dict[int, list[str]]:
    """{item: pids of each run} from the files tasks_api.record wrote."""
    return {int(path.name): path.read_text().split() for path in Path(directory).iterdir()}


@SETTINGS
@given(
    count=st.integers(min_value=0, max_value=60),
    processes=workers,
    chunksize=map_chunksizes,
    method=st.sampled_from(["map", "imap", "imap_unordered", "apply_async", "submit"]),
)
def test_every_task_runs_exactly_once(
    pools: GetPool, count: int, processes: int, chunksize: int | None, method: str
) -> None:
    pool = pools(processes)
    items = list(range(count))
    with tempfile.TemporaryDirectory() as directory:
        task = functools.partial(tasks_api.record, directory)
        if method == "map":
            results = pool.map(task, items, chunksize)
        elif method in ("imap", "imap_unordered"):
            results = list(getattr(pool, method)(task, items, chunksize or 1))
        elif method == "apply_async":
            pending = [pool.apply_async(tasks_api.record, (directory, x)) for x in items]
            results = [r.get(timeout=30) for r in pending]
        else:
            futures = [pool.submit(tasks_api.record, directory, x) for x in items]
            results = [f.result(timeout=30) for f in futures]
        runs = _runs(directory)
    assert sorted(x for _, x in results) == items
    if method != "imap_unordered":
        assert [x for _, x in results] == items
    assert sorted(runs) == items
    assert all(len(pids) == 1 for pids in runs.values()), runs
    assert {pid for pid, _ in results} <= set(pool.worker_pids)
    assert {int(pids[0]) for pids in runs.values()} <= set(pool.worker_pids)


def test_no_task_lost_when_threads_submit_concurrently(
    make_pool: Callable[..., hookpool.Pool],
) -> None:
    """Several threads submitting at once: every task still runs, exactly once.

    Each round waits a bounded time. If tasks stay queued beside idle workers (the
    manager missed a wake-up), the test writes the missed wake-up byte itself, so that
    the pool can still be torn down, and fails."""
    pool = make_pool(2)
    dog = tasks_api.LostWakeupWatchdog(pool, active=False)
    failure = ""
    for round_number in range(100):
        futures: list[concurrent.futures.Future[tuple[int, int]]] = []
        lock = threading.Lock()

        def submitter(
            start: int,
            futures: list[concurrent.futures.Future[tuple[int, int]]],
            lock: threading.Lock,
        ) -> None:
            for x in range(start, start + 25):
                future = pool.submit(tasks_api.pid_and, x)
                with lock:
                    futures.append(future)

        threads = [
            threading.Thread(target=submitter, args=(25 * i, futures, lock)) for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        done, not_done = concurrent.futures.wait(futures, timeout=4)
        if not_done:
            dog.unwedge()
            concurrent.futures.wait(futures, timeout=3)
            failure = (
                f"round {round_number}: {len(not_done)} of {len(futures)} submitted tasks "
                f"did not run within 4 s, though the workers were idle"
            )
            break
        assert sorted(f.result()[1] for f in done) == list(range(100))
    if dog.stop():  # the flag is stuck: terminate() at teardown would hang
        failure = failure or "the next submission (or terminate()) would hang"
    assert not failure, f"{failure}. {tasks_api.LOST_WAKEUP}"
