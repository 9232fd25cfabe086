"""The direct read: on an idle pool, ``apply_async`` writes the task to a parked worker
from the caller's thread, and the thread that then waits in ``get()`` reads the answer
from that worker itself (``hookpool._fastpath``), while the manager thread sleeps on.

These tests check, through the public API and with real signals, threads and processes,
that nothing is lost, run twice, reordered or left unwatched, whatever interrupts the
waiting thread. The one internal they read is ``tasks_hooks.parked`` (the workers are
idle and parked, so that a task goes straight to one); ``tasks_direct`` results note
which thread decoded them, which shows whether the waiting thread read the answer.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import random
import select
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks
import tasks_direct
import tasks_logging
from tasks_hooks import parked, wait_for

import hookpool

MakePool = Callable[..., hookpool.Pool]


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    """Fresh ``tasks_direct`` notes, and SIGINT raising KeyboardInterrupt (as it does by
    default), put back as it was after the test."""
    tasks_direct.reset()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _idle_pool(make_pool: MakePool, processes: int = 1, **kwargs: Any) -> hookpool.Pool:
    """A pool whose workers are all up, idle and parked (so a task goes straight to one)."""
    pool = make_pool(processes, **kwargs)
    assert pool.map(tasks.square, range(2 * processes), 1) == [i * i for i in range(2 * processes)]
    _wait_parked(pool, processes)
    return pool


def _wait_parked(pool: hookpool.Pool, count: int) -> None:
    wait_for(lambda: parked(pool) == count, what=f"{count} parked workers")


def _ctrl_c_at(*seconds: float) -> threading.Thread:
    """A real Ctrl-C: SIGINT to this process, ``seconds`` from now (each). Join the
    thread returned before the test ends, so that no SIGINT lands in the next one."""
    started = time.monotonic()

    def send() -> None:
        for at in seconds:
            time.sleep(max(0.0, started + at - time.monotonic()))
            os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=send, name="ctrl-c", daemon=True)
    sender.start()
    return sender


def _is_manager(thread_name: str) -> bool:
    return thread_name.endswith("-manager")


# -- the answer read by the waiting thread ---------------------------------------------


def test_the_waiting_thread_reads_its_answer_and_the_worker_is_parked_again(
    make_pool: MakePool,
) -> None:
    """Also: the same worker keeps serving (nothing is stopped or replaced), and a task
    through the queue (a timeout: the manager must watch it) still works after."""
    pool = _idle_pool(make_pool)
    (worker,) = pool.worker_pids
    for i in range(20):
        # (get() waits before the answer comes: the main thread reads it.)
        assert pool.apply_async(tasks_direct.sleep_then_traced, (0.02, i)).get(timeout=30) == i
        _wait_parked(pool, 1)
    assert tasks_direct.decoded_by == ["MainThread"] * 20
    assert pool.worker_pids == [worker]
    assert pool.apply(tasks.square, (5,), task_timeout=30) == 25


def test_maxtasksperchild_counts_the_answers_read_directly(make_pool: MakePool) -> None:
    """A worker that reached maxtasksperchild is not parked again: the manager replaces
    it, and no worker runs one task more or less than its allowance."""
    pool = _idle_pool(make_pool, maxtasksperchild=3)  # its first worker ran 2 tasks
    pids = [pool.apply_async(tasks.sleep_then_pid, (0.01,)).get(timeout=30) for _ in range(10)]
    runs = [len(list(group)) for group in _runs(pids)]
    assert runs == [1, 3, 3, 3], pids
    assert len(set(pids)) == 4


def _runs(items: list[int]) -> Iterator[list[int]]:
    """Consecutive equal items, grouped."""
    group: list[int] = []
    for item in items:
        if group and group[-1] != item:
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def test_an_error_read_directly_keeps_the_workers_frames(make_pool: MakePool) -> None:
    pool = _idle_pool(make_pool)
    with pytest.raises(ValueError, match="boom") as info:
        pool.apply_async(tasks.sleep_then_raise, (0.2, "boom")).get(timeout=30)
    frames = [entry.name for entry in info.traceback]
    assert frames[-2:] == ["sleep_then_raise", "raise_value_error"]
    _wait_parked(pool, 1)
    assert pool.apply(tasks.square, (3,)) == 9


def test_log_records_sent_before_the_answer_reach_the_handlers_first(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    """The waiting thread reads an answer only if it is the first thing in the pipe;
    records before it go through the manager, in order, and the task is ready only once
    every one of them has been handled."""
    caplog.set_level(logging.INFO)  # before the pool: its workers log at INFO too
    pool = _idle_pool(make_pool)
    seen: list[tuple[str, bool]] = []
    pending: list[hookpool.AsyncResult[int]] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), pending[-1].ready()))

    handler = Handler()
    tasks_logging.log.addHandler(handler)
    try:
        for round_ in range(10):
            seen.clear()
            pending.append(pool.apply_async(tasks_logging.sleep_then_log, (0.05, 3)))
            assert pending[-1].get(timeout=30) in pool.worker_pids
            assert seen == [("record 0", False), ("record 1", False), ("record 2", False)], round_
    finally:
        tasks_logging.log.removeHandler(handler)
    _wait_parked(pool, 1)


def test_callbacks_run_in_the_managers_thread(make_pool: MakePool) -> None:
    """As the standard library runs them in its result thread: never in the thread that
    waits (it may hold a lock the callback takes). The answer is decoded there too."""
    pool = _idle_pool(make_pool)
    threads: list[str] = []
    result = pool.apply_async(
        tasks_direct.sleep_then_traced,
        (0.2, 3),
        callback=lambda _: threads.append(threading.current_thread().name),
    )
    assert result.get(timeout=30) == 3
    failed = pool.apply_async(
        tasks.sleep_then_raise,
        (0.2, "boom"),
        error_callback=lambda _: threads.append(threading.current_thread().name),
    )
    with pytest.raises(ValueError, match="boom"):
        failed.get(timeout=30)
    assert len(threads) == 2 and all(map(_is_manager, threads)), threads
    assert len(tasks_direct.decoded_by) == 1 and _is_manager(tasks_direct.decoded_by[0])


def test_a_future_asked_for_early_is_settled_by_the_manager(make_pool: MakePool) -> None:
    """Its done-callbacks must not run in the waiting thread either (whichever thread
    decodes the answer, once)."""
    pool = _idle_pool(make_pool)
    result = pool.apply_async(tasks_direct.sleep_then_traced, (0.2, "v"))
    threads: list[str] = []
    result.future.add_done_callback(lambda _: threads.append(threading.current_thread().name))
    assert result.get(timeout=30) == "v"
    assert result.future.result(timeout=30) == "v"
    wait_for(lambda: bool(threads), what="the done-callback")
    assert len(threads) == 1 and _is_manager(threads[0]), threads
    assert len(tasks_direct.decoded_by) == 1


def test_a_timeout_while_reading_then_the_answer(make_pool: MakePool) -> None:
    pool = _idle_pool(make_pool)
    result = pool.apply_async(tasks.sleep_then, (0.5, "late"))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    assert not result.ready()
    assert result.get(timeout=30) == "late"
    _wait_parked(pool, 1)
    assert pool.apply(tasks.square, (4,)) == 16
    assert pool.apply(tasks.square, (5,), task_timeout=30) == 25


def test_a_worker_killed_while_a_thread_waits_fails_its_task_at_once(
    make_pool: MakePool,
) -> None:
    pool = _idle_pool(make_pool)
    (victim,) = pool.worker_pids
    result = pool.apply_async(tasks.sleep_then, (60,))
    killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
    killer.start()
    started = time.monotonic()
    with pytest.raises(hookpool.WorkerLostError, match="SIGKILL"):
        result.get(timeout=30)
    assert time.monotonic() - started < 10  # not the task's 60 s, nor get()'s 30
    killer.join()
    assert pool.apply(tasks.square, (3,), task_timeout=30) == 9
    assert victim not in pool.worker_pids
    _wait_parked(pool, 1)
    assert pool.apply(tasks.square, (4,)) == 16


# -- Ctrl-C while waiting ----------------------------------------------------------------


def test_ctrl_c_while_waiting_then_waiting_again(make_pool: MakePool, tmp_path: Path) -> None:
    """Real SIGINTs while the main thread waits in the worker's pipe: KeyboardInterrupt
    each time, and the task goes on; waiting for it again gives its answer, and it ran
    once. The worker is not replaced."""
    pool = _idle_pool(make_pool)
    (worker,) = pool.worker_pids
    runs = tmp_path / "runs"
    result = pool.apply_async(tasks_direct.sleep_then_record, (str(runs), 1.5, "done"))
    sender = _ctrl_c_at(0.2, 0.5)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            result.get(timeout=30)
    sender.join()
    assert result.get(timeout=30) == "done"
    assert runs.read_text() == "done\n"
    assert pool.worker_pids == [worker]
    _wait_parked(pool, 1)
    assert pool.apply(tasks.square, (6,)) == 36


def test_after_ctrl_c_nobody_waits_and_the_task_still_settles(make_pool: MakePool) -> None:
    """The interrupted thread never waits again: the task is settled all the same (the
    manager watches the worker again), so polling ready() ends."""
    pool = _idle_pool(make_pool)
    result = pool.apply_async(tasks.sleep_then, (0.8, "answer"))
    sender = _ctrl_c_at(0.2)
    with pytest.raises(KeyboardInterrupt):
        result.get(timeout=30)
    sender.join()
    wait_for(result.ready, what="the task settled")
    assert result.successful()
    assert result.get(timeout=1) == "answer"
    _wait_parked(pool, 1)
    assert pool.apply(tasks.square, (9,)) == 81


def test_ctrl_c_while_the_waiting_thread_decodes_the_answer(make_pool: MakePool) -> None:
    """The SIGINT arrives while the main thread unpickles the answer it read: the
    KeyboardInterrupt is the caller's, not turned into the task's error; the answer is
    not lost (the manager decodes it), and a second get() has it."""
    pool = _idle_pool(make_pool)
    tasks_direct.interrupt_next.set()
    result = pool.apply_async(tasks_direct.sleep_then_interrupted, (0.2, "value"))
    with pytest.raises(KeyboardInterrupt):
        result.get(timeout=30)
    assert not tasks_direct.interrupt_next.is_set()  # it was interrupted while decoding
    assert result.get(timeout=30) == "value"
    assert result.successful()
    _wait_parked(pool, 1)
    assert pool.apply(tasks.square, (7,)) == 49


def test_ctrl_c_storm_while_two_threads_apply_and_get(make_pool: MakePool) -> None:
    """SIGINT every few milliseconds while the main thread and another one call
    apply_async()/get() on an idle pool, some tasks waited for by a second thread too;
    the handler raises KeyboardInterrupt inside get() (at any point of the read, the
    counting, the parking, the decoding, the settling), and the loop waits again.

    Every task's answer reaches its own result, once (a lost answer hangs, one read
    twice or left in the pipe goes to the wrong task); each worker is counted exactly
    its maxtasksperchild tasks; and the manager still watches every worker's pipe
    after (callbacks and queued tasks are answered)."""
    maxtasks = 40
    pool = make_pool(2, maxtasksperchild=maxtasks)
    ran: list[tuple[Any, int]] = pool.starmap(tasks_direct.value_and_pid, [(0, -1)] * 4, 1)
    _wait_parked(pool, 2)

    armed = threading.Event()
    interrupts: list[int] = []

    def on_sigint(signum: int, frame: object) -> None:
        if armed.is_set():  # only inside get(): the loop's own lines are not cut
            armed.clear()
            interrupts.append(1)
            raise KeyboardInterrupt

    stop = threading.Event()

    def storm() -> None:
        rng = random.Random(1234)
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(rng.uniform(0.0005, 0.004))

    other_results: list[tuple[int, tuple[Any, int]]] = []
    helper_results: list[tuple[int, Any]] = []
    errors: list[BaseException] = []

    def other() -> None:
        try:
            for i in range(150):
                value = ("other", i)
                got = pool.apply_async(tasks_direct.value_and_pid, (0.001 * (i % 2), value)).get(
                    timeout=20
                )
                other_results.append((i, got))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def second_waiter(i: int, result: hookpool.AsyncResult[tuple[Any, int]]) -> None:
        try:
            helper_results.append((i, result.get(timeout=20)[0]))
        except BaseException as exc:
            errors.append(exc)

    results: list[tuple[int, hookpool.AsyncResult[tuple[Any, int]]]] = []
    helpers: list[threading.Thread] = []
    # A pool of an earlier test collected during get() would take the Ctrl-C in its
    # __del__ (an unraisable exception, not what this test is about): collect it now
    # and keep the collector off while the storm lasts.
    gc.collect()
    gc.disable()
    previous = signal.signal(signal.SIGINT, on_sigint)
    threads = [threading.Thread(target=f, daemon=True) for f in (storm, other)]
    for thread in threads:
        thread.start()
    try:
        for i in range(300):
            result = pool.apply_async(tasks_direct.value_and_pid, (0.001 * (i % 3 == 0), i))
            results.append((i, result))
            if i % 11 == 0:
                helper = threading.Thread(target=second_waiter, args=(i, result), daemon=True)
                helper.start()
                helpers.append(helper)
            deadline = time.monotonic() + 20  # (each retry waits less: a lost answer fails)
            while True:
                try:
                    armed.set()
                    got = result.get(timeout=max(0.0, deadline - time.monotonic()))
                    armed.clear()
                    break
                except KeyboardInterrupt:
                    pass
            ran.append(got)
            assert got[0] == i
    finally:
        armed.clear()
        stop.set()
        for thread in [*threads, *helpers]:
            thread.join(30)
        signal.signal(signal.SIGINT, previous)
        gc.enable()
    assert not errors, errors
    assert len(interrupts) > 20  # (typically a few hundred)
    assert [got[0] for got in (result.get(timeout=10) for _, result in results)] == list(range(300))
    assert [(i, got[0]) for i, got in other_results] == [(i, ("other", i)) for i in range(150)]
    assert sorted(helper_results) == [(i, i) for i in range(0, 300, 11)]
    ran += [got for _, got in other_results]
    per_worker = Counter(pid for _, pid in ran)
    assert all(count <= maxtasks for count in per_worker.values()), per_worker
    gone = [pid for pid in per_worker if pid not in pool.worker_pids]
    assert [per_worker[pid] for pid in gone] == [maxtasks] * len(gone), per_worker

    _wait_parked(pool, 2)
    called: list[int] = []
    with_callbacks = [
        pool.apply_async(tasks.square, (i,), callback=called.append) for i in range(6)
    ]
    assert [r.get(timeout=10) for r in with_callbacks] == [i * i for i in range(6)]
    assert pool.map(tasks.square, range(20), 1) == [i * i for i in range(20)]
    assert pool.apply(tasks.square, (7,), task_timeout=10) == 49


# -- many waiters ------------------------------------------------------------------------


def test_many_threads_waiting_at_once(make_pool: MakePool) -> None:
    """Threads racing for two idle workers, each waiting for its own task, some from
    two threads at once: every task runs once and every waiter gets its own answer."""
    pool = _idle_pool(make_pool, 2)
    results: dict[int, list[Any]] = {}
    others: list[tuple[Any, Any]] = []

    def caller(n: int) -> None:
        got = []
        for i in range(60):
            value = n * 1000 + i
            result = pool.apply_async(tasks.sleep_then, (0.001 * (i % 3), value))
            if i % 7 == 0:  # a second thread waits for the same task
                helper = threading.Thread(
                    target=lambda r=result, v=value: others.append((v, r.get(timeout=30)))
                )
                helper.start()
                got.append(result.get(timeout=30))
                helper.join(30)
            else:
                got.append(result.get(timeout=30))
        results[n] = got

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {n: [n * 1000 + i for i in range(60)] for n in range(4)}
    assert sorted(others) == sorted(
        (v, v) for n in range(4) for v in range(n * 1000, n * 1000 + 60, 7)
    )
    _wait_parked(pool, 2)


def test_two_waiters_for_each_task_in_a_loop_never_stall(make_pool: MakePool) -> None:
    """One of two threads waiting for a task reads its answer; the other must be let
    through at once, not after some poll of its own runs out."""
    pool = _idle_pool(make_pool)
    slow: list[float] = []
    for i in range(40):
        result = pool.apply_async(tasks.sleep_then, (0.001, i))
        other = threading.Thread(target=result.get, args=(30,))
        started = time.monotonic()
        other.start()
        assert result.get(timeout=30) == i
        other.join(30)
        if time.monotonic() - started > 0.4:
            slow.append(time.monotonic() - started)
    assert len(slow) <= 2, slow


def test_a_waiter_whose_worker_the_manager_takes_back_is_not_left_polling(
    make_pool: MakePool,
) -> None:
    """Another thread keeps waking the manager (tasks with a timeout go through it),
    which takes back the worker a thread is waiting on, and may read its answer itself:
    that thread must be let go at once, not sit out a poll of the emptied pipe."""
    pool = _idle_pool(make_pool, 2)
    stop = threading.Event()

    def wake_the_manager() -> None:
        while not stop.is_set():
            assert pool.apply(tasks.square, (3,), task_timeout=30) == 9

    waker = threading.Thread(target=wake_the_manager, daemon=True)
    waker.start()
    slow: list[float] = []
    try:
        for i in range(300):
            started = time.monotonic()
            assert pool.apply_async(tasks.square, (i,)).get(timeout=30) == i * i
            if time.monotonic() - started > 0.4:
                slow.append(time.monotonic() - started)
    finally:
        stop.set()
        waker.join(30)
    assert len(slow) <= 3, slow


# -- answers the manager reads -------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "read_by_the_waiting_thread"),
    [(1, True), (60_000, True), (65_500, None), (64 * 1024, False), (1024 * 1024, False)],
)
def test_answers_around_and_beyond_64_kib(
    make_pool: MakePool, size: int, read_by_the_waiting_thread: bool | None
) -> None:
    """An answer too large for the waiting thread to read (more than 64 KiB, or with an
    out-of-band buffer) is left to the manager; the worker goes on, parked again. (65,500
    bytes make a frame just over 64 KiB, or not: either reader will do.)"""
    pool = _idle_pool(make_pool)
    expected = tasks_direct.sleep_then_bytes(0, size)
    for _ in range(3):
        result = pool.apply_async(tasks_direct.sleep_then_traced_bytes, (0.05, size))
        assert result.get(timeout=30)[1] == expected
        _wait_parked(pool, 1)
    if read_by_the_waiting_thread is not None:
        main = read_by_the_waiting_thread
        assert [
            name == "MainThread" if main else _is_manager(name) for name in tasks_direct.decoded_by
        ] == [True] * 3
    tasks_direct.decoded_by.clear()
    assert pool.apply_async(tasks_direct.sleep_then_traced, (0.05, "small")).get(30) == "small"
    assert tasks_direct.decoded_by == ["MainThread"]


def test_a_result_slow_to_decode_does_not_stall_other_threads(make_pool: MakePool) -> None:
    """The waiting thread decodes its answer outside the engine's lock and off the
    manager thread: while it spends seconds on it, other threads' tasks (read directly,
    through the queue, with a callback) are answered at their usual pace."""
    decode_seconds = 4.0
    pool = _idle_pool(make_pool, 2)
    got: list[Any] = []
    slow = threading.Thread(
        target=lambda: got.append(
            pool.apply_async(tasks_direct.sleep_then_slow, (0.05, "slow", decode_seconds)).get(
                timeout=30
            )
        ),
        daemon=True,
    )
    slow.start()
    assert tasks_direct.decoding.wait(10)
    calls: list[Callable[[], int]] = [
        lambda: pool.apply(tasks.square, (2,)),
        lambda: pool.apply(tasks.square, (2,), task_timeout=30),
        lambda: pool.apply_async(tasks.square, (2,), callback=lambda _: None).get(timeout=30),
        lambda: pool.map(tasks.square, [2, 2, 2], 1)[0],
    ]
    for call in calls:
        started = time.monotonic()
        assert call() == 4
        assert time.monotonic() - started < 0.9  # vs the 4 s decoding
    assert slow.is_alive() and not got  # all that while it decoded
    slow.join(30)
    assert got == ["slow"]


def test_without_epoll_the_manager_reads_every_answer(make_pool: MakePool) -> None:
    """Where there is no epoll, nothing is parked: every task goes through the manager,
    which reads and decodes every answer; Ctrl-C while waiting works the same."""
    mp = pytest.MonkeyPatch()
    mp.delattr(select, "epoll")
    try:
        pool = make_pool(1)
    finally:
        mp.undo()
    assert pool.map(tasks.square, range(4), 1) == [0, 1, 4, 9]
    for i in range(5):
        assert pool.apply_async(tasks_direct.sleep_then_traced, (0.02, i)).get(timeout=30) == i
    assert len(tasks_direct.decoded_by) == 5 and all(map(_is_manager, tasks_direct.decoded_by))
    assert parked(pool) == 0
    result = pool.apply_async(tasks.sleep_then, (1.0, "done"))
    sender = _ctrl_c_at(0.2)
    with pytest.raises(KeyboardInterrupt):
        result.get(timeout=30)
    sender.join()
    assert result.get(timeout=30) == "done"
