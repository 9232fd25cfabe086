"""A thread waiting for a task sent straight to an idle worker reads the answer from that
worker itself (``Manager._read_directly``): the manager lends it the worker while it
sleeps and takes it back when it wakes. These tests check that nothing is lost, run
twice, reordered or left unwatched, whatever interrupts the waiting thread."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import tasks
import tasks_logging
from tasks_hooks import wait_for

import hookpool
from hookpool import _manager, _protocol, _results

MakePool = Callable[..., hookpool.Pool]


def _idle_pool(make_pool: MakePool, processes: int = 1, **kwargs: Any) -> hookpool.Pool:
    """A pool whose workers are all up, idle and parked (so a task goes straight to one)."""
    pool = make_pool(processes, **kwargs)
    assert pool.map(tasks.square, range(2 * processes), 1) == [i * i for i in range(2 * processes)]
    wait_for(lambda: len(pool._manager._parked) == processes, what="the workers parked")
    return pool


def _settled_here(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Record each ``settle_here`` call: (thread name, whether it settled)."""
    calls: list[tuple[str, bool]] = []
    real = _results.ApplyOutcome.settle_here

    def settle_here(self: Any, value: Any, error: BaseException | None) -> bool:
        settled = real(self, value, error)
        calls.append((threading.current_thread().name, settled))
        return settled

    monkeypatch.setattr(_results.ApplyOutcome, "settle_here", settle_here)
    return calls


def _asleep_with_parked(manager: Any, count: int) -> bool:
    """The manager sleeps with ``count`` workers parked, no wake-up on its way."""
    return not manager._wake_pending and len(manager._parked) == count


def _taken_back(pool: hookpool.Pool) -> bool:
    manager = pool._manager
    return not manager._lent and not any(w.lent for w in manager._workers)


def test_the_waiting_thread_reads_its_answer_and_the_worker_returns(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = _idle_pool(make_pool)
    calls = _settled_here(monkeypatch)
    for i in range(20):
        # (A task that answers before get() waits is read by the manager, as before.)
        assert pool.apply_async(tasks.sleep_then, (0.03, i)).get(timeout=30) == i
        # The manager takes the worker back and parks it again: the next one goes straight.
        wait_for(lambda: len(pool._manager._parked) == 1, what="the worker parked again")
    assert calls == [("MainThread", True)] * 20
    assert _taken_back(pool)
    assert pool.apply(tasks.square, (5,), task_timeout=30) == 25  # through the queue too


def test_the_waiting_thread_gives_the_worker_back_without_waking_the_manager(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer read directly, and nothing else: the reading thread parks the worker
    again itself, and the manager sleeps through a run of calls on an idle pool."""
    pool = _idle_pool(make_pool)
    wakes: list[int] = []
    real = _manager.Manager._unpark_all

    def unpark_all(self: Any) -> None:
        wakes.append(1)
        real(self)

    monkeypatch.setattr(_manager.Manager, "_unpark_all", unpark_all)
    calls = _settled_here(monkeypatch)
    worker_pid = pool._manager.worker_pids()[0]
    for i in range(20):
        assert pool.apply_async(tasks.sleep_then, (0.01, i)).get(timeout=30) == i
    assert calls == [("MainThread", True)] * 20
    assert _taken_back(pool)
    # Without the give-back the manager wakes once per call; here only for its
    # once-a-second take-back (TAKE_BACK_SECONDS), if the calls took that long.
    assert len(wakes) <= 3
    worker = pool._manager._workers[0]
    assert (worker.pid, worker.tasks_done, len(worker.inflight)) == (worker_pid, 22, 0)
    assert pool.apply(tasks.square, (5,), task_timeout=30) == 25  # through the queue too


def test_maxtasksperchild_counts_the_answers_read_directly(make_pool: MakePool) -> None:
    """A worker due for replacement is not given back: the manager replaces it."""
    pool = _idle_pool(make_pool, maxtasksperchild=3)  # (its first worker ran 2 tasks)
    pids = [pool.apply_async(tasks.sleep_then_pid, (0.01,)).get(timeout=30) for _ in range(10)]
    assert len(set(pids)) >= 4
    assert all(pids.count(pid) <= 3 for pid in pids)


def test_an_error_read_directly_keeps_the_workers_frames(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = _idle_pool(make_pool)
    calls = _settled_here(monkeypatch)
    with pytest.raises(ValueError, match="boom") as info:
        pool.apply_async(tasks.sleep_then_raise, (0.2, "boom")).get(timeout=30)
    assert calls == [("MainThread", True)]
    frames = [entry.name for entry in info.traceback]
    assert frames[-2:] == ["sleep_then_raise", "raise_value_error"]


def test_log_records_sent_before_the_answer_are_handled_before_it(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiting thread settles the task itself only if its answer is the first thing
    it reads; else the manager replays the records, then settles the task."""
    caplog.set_level(logging.INFO)  # before the pool: its workers log at INFO too
    pool = _idle_pool(make_pool)
    calls = _settled_here(monkeypatch)
    for round_ in range(10):
        caplog.clear()
        pool.apply_async(tasks_logging.sleep_then_log, (0.05, 3)).get(timeout=30)
        seen = [r.getMessage() for r in caplog.records if r.name == tasks_logging.log.name]
        assert seen == ["record 0", "record 1", "record 2"], round_
    assert calls == []  # the records came first: never settled by the waiting thread


def test_callbacks_still_run_in_the_managers_thread(make_pool: MakePool) -> None:
    """As the standard library runs them in its result thread: never in the thread that
    waits (it may hold a lock the callback takes)."""
    pool = _idle_pool(make_pool)
    threads: list[str] = []
    result = pool.apply_async(
        tasks.square, (3,), callback=lambda _: threads.append(threading.current_thread().name)
    )
    assert result.get(timeout=30) == 9
    assert threads and threads[0] != "MainThread"


def test_a_future_asked_for_early_is_settled_by_the_manager(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its done-callbacks must not run in the waiting thread either; the answer is
    unpickled once, by the manager."""
    pool = _idle_pool(make_pool)
    calls = _settled_here(monkeypatch)
    real_loads = _manager.loads_data
    decoded: list[str] = []

    def loads(*args: Any) -> Any:
        decoded.append(threading.current_thread().name)
        return real_loads(*args)

    monkeypatch.setattr(_manager, "loads_data", loads)
    result = pool.apply_async(tasks.sleep_then, (0.2, "v"))
    threads: list[str] = []
    result.future.add_done_callback(lambda _: threads.append(threading.current_thread().name))
    assert result.get(timeout=30) == "v"
    assert calls == []
    assert len(decoded) == 1 and decoded[0] != "MainThread"
    wait_for(lambda: bool(threads), what="the done-callback")
    assert threads[0] != "MainThread"


def test_a_timeout_while_reading_then_the_answer(make_pool: MakePool) -> None:
    pool = _idle_pool(make_pool)
    result = pool.apply_async(tasks.sleep_then, (0.5, "late"))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    assert result.get(timeout=30) == "late"
    wait_for(lambda: _taken_back(pool), what="the worker taken back")
    assert pool.apply(tasks.square, (4,)) == 16


def test_a_worker_killed_while_lent_fails_its_task_at_once(make_pool: MakePool) -> None:
    pool = _idle_pool(make_pool)
    (victim,) = pool.worker_pids
    result = pool.apply_async(tasks.sleep_then, (60,))
    threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
    started = time.monotonic()
    with pytest.raises(hookpool.WorkerLostError, match="SIGKILL"):
        result.get(timeout=30)
    assert time.monotonic() - started < 10
    assert pool.apply(tasks.square, (3,), task_timeout=30) == 9
    assert victim not in pool.worker_pids


def test_ctrl_c_while_waiting_then_waiting_again(make_pool: MakePool) -> None:
    """A real SIGINT while the main thread waits in the worker's pipe: KeyboardInterrupt,
    and the task goes on; waiting for it again gives its answer, once."""
    pool = _idle_pool(make_pool)
    result = pool.apply_async(tasks.sleep_then, (0.6, "done"))
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        result.get(timeout=30)
    assert result.get(timeout=30) == "done"
    assert pool.apply(tasks.square, (6,)) == 36


def test_a_read_cut_short_fails_the_task_clearly_and_replaces_the_worker(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler raising just after the waiting thread read the answer (it is
    gone from the pipe, not yet handed over): the task fails with WorkerLostError saying
    so, it is not run again, and the worker is replaced."""
    pool = _idle_pool(make_pool)
    (victim,) = pool.worker_pids
    real_read = _protocol.FrameReader.read

    def read_then_interrupted(self: Any, scratch: Any = None) -> list[Any]:
        messages = real_read(self, scratch)
        if scratch is not None and messages:  # the waiting thread's read
            raise KeyboardInterrupt
        return messages

    monkeypatch.setattr(_protocol.FrameReader, "read", read_then_interrupted)
    result = pool.apply_async(tasks.sleep_then, (0.3, 7))  # answers once get() waits
    with pytest.raises(KeyboardInterrupt):
        result.get(timeout=30)
    monkeypatch.setattr(_protocol.FrameReader, "read", real_read)
    with pytest.raises(hookpool.WorkerLostError, match="interrupted by a signal handler"):
        result.get(timeout=30)
    assert pool.apply(tasks.square, (8,)) == 64
    wait_for(lambda: victim not in pool.worker_pids, what="the worker replaced")


def _interrupted_twice(pool: hookpool.Pool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Wait for a new task, interrupted as the wait starts and again in its clean-up
    (which then never wakes the manager); returns the task's AsyncResult. The manager
    sleeps on, not watching the lent worker."""
    manager = pool._manager
    real_read_lent, real_wake = manager._read_lent, manager._wake
    monkeypatch.setattr(manager, "_read_lent", lambda *args: _raise(KeyboardInterrupt))
    monkeypatch.setattr(manager, "_wake", lambda: _raise(KeyboardInterrupt))
    result = pool.apply_async(tasks.sleep_then, (0.2, "answer"))
    with pytest.raises(KeyboardInterrupt):
        result.get(timeout=30)
    monkeypatch.setattr(manager, "_read_lent", real_read_lent)
    monkeypatch.setattr(manager, "_wake", real_wake)
    assert manager._lent  # still lent, the manager asleep
    return result


def test_an_interrupted_reader_that_never_woke_the_manager(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody waits for the task again: the manager takes the worker back on its own
    (within TAKE_BACK_SECONDS) and settles the task, so polling ready() ends."""
    pool = _idle_pool(make_pool)
    result = _interrupted_twice(pool, monkeypatch)
    wait_for(result.ready, timeout=3 * _manager.TAKE_BACK_SECONDS, what="the task settled")
    assert _taken_back(pool)
    assert result.get(timeout=30) == "answer"
    assert pool.apply(tasks.square, (9,)) == 81


def test_a_waiter_interrupted_again_reads_on(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task is waited for again before the manager wakes: that thread carries on
    with the lent worker (nothing hangs)."""
    monkeypatch.setattr(_manager, "TAKE_BACK_SECONDS", 60.0)
    pool = _idle_pool(make_pool)
    result = _interrupted_twice(pool, monkeypatch)
    assert result.get(timeout=30) == "answer"
    wait_for(lambda: _taken_back(pool), what="the worker taken back")


def test_ctrl_c_while_the_waiting_thread_unpickles_the_answer(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt is the caller's, not the task's: it is not turned into the
    task's error; the manager decodes the answer instead, and a second get() has it."""
    pool = _idle_pool(make_pool)
    real_loads = _manager.loads_data
    interrupted: list[bool] = []

    def loads_interrupted(*args: Any) -> Any:
        if threading.current_thread() is threading.main_thread() and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real_loads(*args)

    monkeypatch.setattr(_manager, "loads_data", loads_interrupted)
    result = pool.apply_async(tasks.sleep_then, (0.2, "value"))
    with pytest.raises(KeyboardInterrupt):
        result.get(timeout=30)
    assert interrupted
    assert result.get(timeout=30) == "value"


def test_ctrl_c_half_way_through_settling_the_task(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settled but not yet marked ready when the signal handler raised: the manager
    completes it on taking the worker back, so waiting and polling both end."""
    pool = _idle_pool(make_pool)
    real_finish = _results.ApplyOutcome._finish
    interrupted: list[bool] = []

    def finish(self: Any) -> None:
        if threading.current_thread() is threading.main_thread() and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        real_finish(self)

    monkeypatch.setattr(_results.ApplyOutcome, "_finish", finish)
    result = pool.apply_async(tasks.sleep_then, (0.2, "value"))
    with pytest.raises(KeyboardInterrupt):
        result.get(timeout=30)
    assert interrupted
    wait_for(result.ready, what="the task marked ready")
    assert result.get(timeout=30) == "value"


def test_a_settling_cut_short_is_completed_with_another_thread_waiting_too(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, with a second thread waiting for the same task that ends its read
    before the manager wakes: it must not give the worker back (the manager would then
    never complete the settling, and both threads would wait forever)."""
    pool = _idle_pool(make_pool)
    manager = pool._manager
    real_finish = _results.ApplyOutcome._finish
    real_read = _manager.Manager._read_directly
    real_unpark = _manager.Manager._unpark_all
    other_read = threading.Event()
    interrupted: list[bool] = []
    got: list[Any] = []

    def finish(self: Any) -> None:
        if threading.current_thread() is threading.main_thread() and not interrupted:
            interrupted.append(True)
            threading.Thread(target=lambda: got.append(result.get(timeout=30))).start()
            raise KeyboardInterrupt
        real_finish(self)

    def read_directly(self: Any, *args: Any) -> None:
        try:
            real_read(self, *args)
        finally:
            if threading.current_thread() is not threading.main_thread():
                other_read.set()

    def unpark_all(self: Any) -> None:
        if interrupted:  # the manager wakes only once the other thread's read ended
            other_read.wait(20)
        real_unpark(self)

    monkeypatch.setattr(_results.ApplyOutcome, "_finish", finish)
    monkeypatch.setattr(_manager.Manager, "_read_directly", read_directly)
    monkeypatch.setattr(_manager.Manager, "_unpark_all", unpark_all)
    result = pool.apply_async(tasks.sleep_then, (0.2, "value"))
    with pytest.raises(KeyboardInterrupt):
        result.get(timeout=30)
    assert other_read.wait(20)
    wait_for(result.ready, what="the task marked ready")
    assert result.get(timeout=30) == "value"
    wait_for(lambda: got == ["value"], what="the other thread's answer")
    wait_for(lambda: len(manager._parked) == 1, what="the worker parked again")


def test_ctrl_c_at_any_line_of_giving_the_worker_back(make_pool: MakePool) -> None:
    """A signal handler raising at each line, in turn, of a give-back (and of what it
    calls): the task is settled and counted once, and the worker is parked again, as
    when the give-back completes (maxtasksperchild and prefetching rely on the counts)."""
    pool = _idle_pool(make_pool)
    manager = pool._manager
    worker = manager._workers[0]
    code = _manager.Manager._give_back.__code__
    line = seen = 0
    hit = True

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal seen, hit
        if event == "line":
            seen += 1
            if seen == line:
                hit = True
                raise KeyboardInterrupt
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        caller = frame
        while caller is not None and caller.f_code is not code:
            caller = caller.f_back
        return None if caller is None else local

    while hit:
        line += 1
        seen = 0
        hit = False
        # (Parked by the manager, after the wake-up an interrupted get() sends it.)
        wait_for(lambda: _asleep_with_parked(manager, 1), what="the worker parked")
        done_before = worker.tasks_done
        result = pool.apply_async(tasks.sleep_then, (0.05, line))
        sys.settrace(tracer)
        try:
            value = result.get(timeout=30)
        except KeyboardInterrupt:
            value = None
        finally:
            sys.settrace(None)
        assert seen  # it went through the give-back
        assert value == (None if hit else line)
        assert result.get(timeout=30) == line
        wait_for(lambda: len(manager._parked) == 1, what="the worker parked again")
        assert (worker.tasks_done, list(worker.inflight)) == (done_before + 1, [])
        assert (worker.inflight_bytes, worker.lent, manager._lent) == (0, False, [])
    assert line > 20  # every line of it was cut short once
    assert pool.map(tasks.square, range(10), 1) == [i * i for i in range(10)]


def test_a_manager_bug_after_an_answer_read_directly_still_breaks_the_pool(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The waiting thread has its answer; the manager meets the bug as it handles that
    answer (taking the worker back), and the pool breaks loudly from then on."""
    pool = _idle_pool(make_pool)

    def bug(*args: Any) -> None:
        raise RuntimeError("simulated manager bug")

    monkeypatch.setattr(_manager.Manager, "_on_result", bug)
    # (As when the waiting thread read more than its answer: it wakes the manager.)
    monkeypatch.setattr(_manager.Manager, "_give_back", lambda *args: False)
    with caplog.at_level(logging.ERROR, logger="hookpool"):
        assert pool.apply_async(tasks.sleep_then, (0.2, "read here")).get(timeout=30) == (
            "read here"
        )
        wait_for(lambda: "simulated manager bug" in caplog.text, what="the error logged")
    with pytest.raises(hookpool.PoolBrokenError):
        pool.submit(tasks.square, 4)


def _raise(error: type[BaseException]) -> None:
    raise error


def test_many_threads_waiting_at_once(make_pool: MakePool) -> None:
    """Threads racing for two idle workers, each waiting for its own task, some from
    two threads at once: every task runs once and every waiter gets its own answer."""
    pool = _idle_pool(make_pool, 2)
    results: dict[int, list[Any]] = {}

    def caller(n: int) -> None:
        got = []
        for i in range(60):
            value = n * 1000 + i
            result = pool.apply_async(tasks.sleep_then, (0.001 * (i % 3), value))
            if i % 7 == 0:  # a second thread waits for the same task
                other: list[Any] = []
                helper = threading.Thread(
                    target=lambda r=result, o=other: o.append(r.get(timeout=30))
                )
                helper.start()
                got.append(result.get(timeout=30))
                helper.join(30)
                assert other == [value]
            else:
                got.append(result.get(timeout=30))
        results[n] = got

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {n: [n * 1000 + i for i in range(60)] for n in range(4)}
    wait_for(lambda: _taken_back(pool), what="every worker taken back")


def test_no_lending_without_epoll(make_pool: MakePool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the selector is not epoll-based, waiting threads wait for the manager."""
    monkeypatch.setattr(_manager, "_epoll_of", lambda selector: None)
    pool = _idle_pool(make_pool)
    calls = _settled_here(monkeypatch)
    assert pool.apply_async(tasks.square, (3,)).get(timeout=30) == 9
    assert calls == []


def test_a_waiter_wakes_when_the_manager_takes_its_worker_back(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiting thread is held up between borrowing the worker and polling its pipe;
    meanwhile the manager wakes (a submit from another thread, a worker's message, the
    previous waiter done), takes the worker back and reads the answer. The pipe is empty
    by the time the thread polls it: the manager's nudge must wake it, or it sits out its
    poll (seen as 0.5 s stalls in a loop of apply() calls)."""
    monkeypatch.setattr(_manager, "LENT_CHECK_SECONDS", 60.0)
    pool = _idle_pool(make_pool)
    manager = pool._manager
    result = pool.apply_async(tasks.square, (7,))
    real_read_lent = manager._read_lent

    def read_lent_late(*args: Any) -> None:
        manager._wake()
        wait_for(result.ready, what="the manager settled the task")
        real_read_lent(*args)

    monkeypatch.setattr(manager, "_read_lent", read_lent_late)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(result.get(timeout=50)), daemon=True)
    waiter.start()
    waiter.join(timeout=20)
    assert got == [49]
    wait_for(lambda: _taken_back(pool), what="the worker taken back")


def test_apply_in_a_loop_never_waits_out_a_poll(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back to back, each waiter borrows a worker while the manager is still waking from
    the previous one: the manager takes it back, and must nudge the waiter."""
    monkeypatch.setattr(_manager, "LENT_CHECK_SECONDS", 60.0)
    pool = _idle_pool(make_pool, processes=2)
    done = threading.Event()

    def loop() -> None:
        for i in range(300):
            assert pool.apply_async(tasks.square, (i,)).get(timeout=100) == i * i
        done.set()

    threading.Thread(target=loop, daemon=True).start()
    assert done.wait(timeout=40), "a waiter sat out its poll after its worker was taken back"


def test_two_waiters_never_wait_out_a_poll_after_a_give_back(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads wait for each task: the one that reads the answer gives the worker
    back, and must nudge the other, still polling the worker's pipe."""
    monkeypatch.setattr(_manager, "LENT_CHECK_SECONDS", 60.0)
    pool = _idle_pool(make_pool)
    done = threading.Event()

    def loop() -> None:
        for i in range(30):
            result = pool.apply_async(tasks.sleep_then, (0.001, i))
            other = threading.Thread(target=result.get, args=(100,))
            other.start()
            assert result.get(timeout=100) == i
            other.join(100)
        done.set()

    threading.Thread(target=loop, daemon=True).start()
    assert done.wait(timeout=40), "a second waiter sat out its poll after a give-back"
