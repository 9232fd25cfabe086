"""``progress=`` on every map of both facades: what a callable sees, when the bar closes.

The contract (``hookpool/_progress.py``): ``progress(done, total)`` is called once per
chunk that succeeded, with the cumulative ``done``, then exactly once more, with the same
``done``, when the map ends. The map family reports from a thread of its own, before the
result is ready; the lazy maps report in the consumer's thread, as it takes the results.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import pytest
from conftest import assert_gone
from tasks import add, fail_at, square

import hookpool
import hookpool._progress

WAIT = 30  # seconds: the bound on every wait for a result
N = 10
_fail_at_4 = functools.partial(fail_at, bad=4)


class Recorder:
    """A progress callable that records every call and the thread it came in."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, done: int, total: int | None) -> None:
        with self.lock:
            self.calls.append((done, total))
            self.threads.add(threading.current_thread().name)

    @property
    def ended(self) -> bool:
        """The final call repeats the last ``done`` (or is the only call)."""
        return len(self.calls) == 1 or (len(self.calls) >= 2 and self.calls[-1] == self.calls[-2])

    def increments(self) -> list[int]:
        """How much each chunk update advanced ``done`` (the final call left out)."""
        dones = [0] + [done for done, _ in self.calls[:-1]]
        return [b - a for a, b in itertools.pairwise(dones)]


@pytest.fixture(scope="module")
def pool() -> Iterator[hookpool.Pool]:
    with hookpool.Pool(2) as pool:
        pids = pool.worker_pids
        yield pool
    assert_gone(pids)


@pytest.fixture(scope="module")
def executor() -> Iterator[hookpool.ProcessPoolExecutor]:
    with hookpool.ProcessPoolExecutor(2) as executor:
        pids = executor.worker_pids
        yield executor
    assert_gone(pids)


# Each method as ``run(pool, executor, items, chunksize, progress) -> list of results``,
# computing ``x * x`` for each ``x`` of ``items``.
Run = Callable[[hookpool.Pool, hookpool.ProcessPoolExecutor, Iterable[int], int, Any], list[Any]]

METHODS: dict[str, Run] = {
    "Pool.map": lambda p, e, xs, c, pr: p.map(square, xs, c, progress=pr),
    "Pool.map_async": lambda p, e, xs, c, pr: p.map_async(square, xs, c, progress=pr).get(WAIT),
    "Pool.starmap": lambda p, e, xs, c, pr: p.starmap(pow, ((x, 2) for x in xs), c, progress=pr),
    "Pool.starmap_async": lambda p, e, xs, c, pr: p.starmap_async(
        pow, [(x, 2) for x in xs], c, progress=pr
    ).get(WAIT),
    "Pool.imap": lambda p, e, xs, c, pr: _drain(p.imap(square, xs, c, progress=pr)),
    "Pool.imap_unordered": lambda p, e, xs, c, pr: sorted(
        _drain(p.imap_unordered(square, xs, c, progress=pr))
    ),
    "Executor.map": lambda p, e, xs, c, pr: list(
        e.map(square, xs, timeout=WAIT, chunksize=c, progress=pr)
    ),
}
LAZY = {"Pool.imap", "Pool.imap_unordered", "Executor.map"}


def _drain(iterator: hookpool.IMapIterator[Any]) -> list[Any]:
    results = []
    while True:
        try:
            results.append(iterator.next(WAIT))
        except StopIteration:
            return results


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("method", list(METHODS))
def test_a_callable_sees_every_update(
    method: str,
    chunksize: int,
    pool: hookpool.Pool,
    executor: hookpool.ProcessPoolExecutor,
) -> None:
    recorder = Recorder()
    results = METHODS[method](pool, executor, list(range(N)), chunksize, recorder)
    assert results == [x * x for x in range(N)]
    # Cumulative and monotonic: one update per chunk, by that chunk's size...
    chunk_sizes = [len(range(N)[i : i + chunksize]) for i in range(0, N, chunksize)]
    assert Counter(recorder.increments()) == Counter(chunk_sizes), recorder.calls
    # ... and the final call, made before the results were handed back, ends at N.
    assert recorder.calls[-2:] == [(N, N), (N, N)]
    assert {total for _, total in recorder.calls} == {N}
    assert not any(name.endswith("-manager") for name in recorder.threads)
    if method in LAZY:
        assert recorder.threads == {threading.current_thread().name}
    else:
        assert recorder.threads == {"hookpool-progress"}


@pytest.mark.parametrize("method", sorted(LAZY))
def test_a_generator_has_an_unknown_total_in_lazy_maps(
    method: str, pool: hookpool.Pool, executor: hookpool.ProcessPoolExecutor
) -> None:
    recorder = Recorder()
    results = METHODS[method](pool, executor, (x for x in range(N)), 2, recorder)
    assert results == [x * x for x in range(N)]
    assert recorder.calls[-2:] == [(N, None), (N, None)]
    assert {total for _, total in recorder.calls} == {None}
    assert recorder.increments() == [2] * (N // 2)


@pytest.mark.parametrize("method", sorted(set(METHODS) - LAZY))
def test_the_map_family_reads_a_generator_first_so_its_total_is_known(
    method: str, pool: hookpool.Pool, executor: hookpool.ProcessPoolExecutor
) -> None:
    recorder = Recorder()
    METHODS[method](pool, executor, (x for x in range(N)), 2, recorder)
    assert recorder.calls[-1] == (N, N)
    assert {total for _, total in recorder.calls} == {N}


def test_executor_map_total_is_the_shortest_sized_input(
    executor: hookpool.ProcessPoolExecutor,
) -> None:
    recorder = Recorder()
    assert list(executor.map(add, range(5), [1] * 7, timeout=WAIT, progress=recorder)) == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert recorder.calls[-1] == (5, 5)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_failed_task_still_ends_the_progress(
    method: str, pool: hookpool.Pool, executor: hookpool.ProcessPoolExecutor
) -> None:
    recorder = Recorder()
    items = list(range(N))
    with pytest.raises(ValueError, match="bad item 4"):
        if method.startswith("Pool.starmap"):
            call = pool.starmap if method == "Pool.starmap" else pool.starmap_async
            result = call(fail_at, [(x, 4) for x in items], 1, progress=recorder)
            if isinstance(result, hookpool.MapResult):
                result.get(WAIT)
        elif method in ("Pool.map", "Pool.map_async"):
            result = pool.map_async(_fail_at_4, items, 1, progress=recorder)
            result.get(WAIT)
        elif method == "Executor.map":
            for _ in executor.map(fail_at, items, [4] * N, timeout=WAIT, progress=recorder):
                pass
        else:
            imap = pool.imap if method == "Pool.imap" else pool.imap_unordered
            # The iterator is dropped when the exception leaves the loop: that ends it.
            for _ in imap(_fail_at_4, items, progress=recorder):
                pass
    assert recorder.ended, recorder.calls
    done, total = recorder.calls[-1]
    assert total == N
    assert done < N
    if method not in LAZY:  # every other chunk ran, and counted
        assert done == N - 1


def test_an_imap_that_goes_on_after_an_error_reports_nothing_more(pool: hookpool.Pool) -> None:
    recorder = Recorder()
    iterator = pool.imap(_fail_at_4, range(N), progress=recorder)
    assert [iterator.next(WAIT) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="bad item 4"):
        iterator.next(WAIT)
    assert recorder.calls[-2:] == [(4, N), (4, N)]
    assert _drain(iterator) == [5, 6, 7, 8, 9]  # the standard library's imap goes on too
    assert recorder.calls[-2:] == [(4, N), (4, N)]
    assert len(recorder.calls) == 5


def test_a_cancelled_imap_ends_its_progress(pool: hookpool.Pool) -> None:
    recorder = Recorder()
    iterator = pool.imap(square, range(1000), progress=recorder)
    assert iterator.next(WAIT) == 0
    iterator.cancel()
    assert recorder.ended
    assert recorder.calls[-1] == (1, 1000)
    calls = len(recorder.calls)
    iterator.feed_rest()  # nothing more is read, and nothing more reported
    assert len(recorder.calls) == calls


def test_breaking_out_of_an_imap_loop_ends_its_progress(pool: hookpool.Pool) -> None:
    recorder = Recorder()
    for _ in pool.imap_unordered(square, range(1000), progress=recorder):
        break
    assert recorder.ended
    assert recorder.calls[-1] == (1, 1000)


def test_closing_an_executor_map_early_ends_its_progress(
    executor: hookpool.ProcessPoolExecutor,
) -> None:
    recorder = Recorder()
    results = executor.map(square, range(1000), timeout=WAIT, progress=recorder)
    assert next(results) == 0
    results.close()  # type: ignore[attr-defined]
    assert recorder.ended
    assert recorder.calls[-1] == (1, 1000)


@pytest.mark.parametrize("method", ["Pool.map", "Pool.imap"])
def test_a_raising_callback_is_logged_and_disabled(
    method: str,
    pool: hookpool.Pool,
    executor: hookpool.ProcessPoolExecutor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[tuple[int, int | None]] = []

    def broken(done: int, total: int | None) -> None:
        calls.append((done, total))
        raise RuntimeError("progress callback bug")

    with caplog.at_level(logging.ERROR, logger="hookpool"):
        results = METHODS[method](pool, executor, range(N), 1, broken)
    assert results == [x * x for x in range(N)]
    assert len(calls) == 1, "the callback was not disabled after it raised"
    assert "progress callback bug" in caplog.text
    assert pool.apply(square, (3,)) == 9


def test_a_stuck_callback_does_not_stop_the_pool(pool: hookpool.Pool) -> None:
    """A progress callable that blocks holds back only its own map's result."""
    entered = threading.Event()
    release = threading.Event()

    def stuck(done: int, total: int | None) -> None:
        entered.set()
        release.wait(WAIT)

    try:
        result = pool.map_async(square, range(N), 1, progress=stuck)
        assert entered.wait(WAIT)
        assert pool.map_async(square, range(N), 2).get(WAIT) == [x * x for x in range(N)]
        assert pool.apply_async(square, (2,)).get(WAIT) == 4
        assert not result.ready()
    finally:
        release.set()
    assert result.get(WAIT) == [x * x for x in range(N)]


def test_map_async_callback_runs_after_the_final_report(pool: hookpool.Pool) -> None:
    recorder = Recorder()
    seen: list[list[tuple[int, int | None]]] = []
    result = pool.map_async(
        square, range(N), 2, callback=lambda _: seen.append(list(recorder.calls)), progress=recorder
    )
    assert result.get(WAIT) == [x * x for x in range(N)]
    assert seen == [recorder.calls]
    assert recorder.ended


def test_an_empty_map_still_ends_its_progress(
    pool: hookpool.Pool, executor: hookpool.ProcessPoolExecutor
) -> None:
    for method in METHODS:
        recorder = Recorder()
        assert METHODS[method](pool, executor, [], 1, recorder) == []
        assert recorder.calls == [(0, 0)], method


class FakeBar:
    """Stands in for ``tqdm.auto.tqdm``: records what hookpool does with a bar."""

    bars: ClassVar[list[FakeBar]] = []

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self.n = 0
        self.closed = False
        FakeBar.bars.append(self)

    def update(self, n: int) -> None:
        assert not self.closed
        self.n += n

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_tqdm(monkeypatch: pytest.MonkeyPatch) -> type[FakeBar]:
    module = types.ModuleType("tqdm.auto")
    module.tqdm = FakeBar  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tqdm.auto", module)
    FakeBar.bars = []
    return FakeBar


@pytest.mark.parametrize("method", list(METHODS))
def test_progress_true_drives_a_bar_and_closes_it(
    method: str,
    pool: hookpool.Pool,
    executor: hookpool.ProcessPoolExecutor,
    fake_tqdm: type[FakeBar],
) -> None:
    METHODS[method](pool, executor, list(range(N)), 3, True)
    (bar,) = fake_tqdm.bars
    assert (bar.total, bar.n, bar.closed) == (N, N, True)


def test_the_bar_is_closed_when_a_task_fails(pool: hookpool.Pool, fake_tqdm: type[FakeBar]) -> None:
    with pytest.raises(ValueError, match="bad item 4"):
        pool.map(_fail_at_4, range(N), 1, progress=True)
    (bar,) = fake_tqdm.bars
    assert (bar.total, bar.n, bar.closed) == (N, N - 1, True)


def test_progress_true_with_real_tqdm(
    pool: hookpool.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    assert pool.map(square, range(N), progress=True) == [x * x for x in range(N)]
    assert f"{N}/{N}" in capsys.readouterr().err


def test_progress_true_without_tqdm_says_what_to_install(
    pool: hookpool.Pool, executor: hookpool.ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    for method in METHODS:
        with pytest.raises(ImportError, match=r'pip install "hookpool\[progress\]"'):
            METHODS[method](pool, executor, range(N), 1, True)
    assert pool.map(square, range(N)) == [x * x for x in range(N)]


def test_a_wrong_progress_value_is_refused(pool: hookpool.Pool) -> None:
    with pytest.raises(TypeError, match="progress must be"):
        pool.map(square, range(N), progress="yes")  # type: ignore[arg-type]


PROGRESS_METHODS = [
    hookpool.Pool.map,
    hookpool.Pool.map_async,
    hookpool.Pool.starmap,
    hookpool.Pool.starmap_async,
    hookpool.Pool.imap,
    hookpool.Pool.imap_unordered,
    hookpool.ProcessPoolExecutor.map,
]


@pytest.mark.parametrize("function", PROGRESS_METHODS, ids=lambda f: f.__qualname__)
def test_progress_is_keyword_only_and_off_by_default(function: Callable[..., Any]) -> None:
    parameter = inspect.signature(function).parameters["progress"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
    assert parameter.default is None


@pytest.mark.parametrize("off", [None, False])
def test_off_builds_nothing(
    off: bool | None,
    pool: hookpool.Pool,
    executor: hookpool.ProcessPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("a Progress was built with progress off")

    monkeypatch.setattr(hookpool._progress.Progress, "__init__", refuse)
    for method in METHODS:
        assert METHODS[method](pool, executor, range(N), 2, off) == [x * x for x in range(N)]
    assert pool.map(square, range(N)) == [x * x for x in range(N)]
    assert list(pool.imap(square, range(N))) == [x * x for x in range(N)]
    assert list(executor.map(square, range(N), timeout=WAIT)) == [x * x for x in range(N)]
