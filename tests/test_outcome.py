"""``ApplyOutcome``: what the manager settles for one ``apply_async`` task, and the
Future that mirrors it on request. Threads only: the pool's side is in test_pool_api."""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import weakref
from concurrent.futures import CancelledError, InvalidStateError
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookpool._results import ApplyOutcome, AsyncResult, outcome_of


def test_result_and_callbacks_run_before_ready() -> None:
    seen: list[Any] = []
    outcome: ApplyOutcome[int] = ApplyOutcome(lambda value: seen.append((value, outcome.ready())))
    assert outcome.set_running_or_notify_cancel()
    assert not outcome.wait(0)
    outcome.set_result(7)
    assert seen == [(7, False)]  # the callback ran before the result became ready
    assert outcome.ready() and outcome.wait(0) and outcome.value() == 7
    with pytest.raises(InvalidStateError):
        outcome.set_exception(ValueError("late"))


def test_cancel_only_while_pending() -> None:
    errors: list[BaseException] = []
    queued: ApplyOutcome[int] = ApplyOutcome(error_callback=errors.append)
    assert queued.cancel() and queued.cancel()  # as a Future: True again once cancelled
    assert queued.cancelled() and queued.done() and queued.ready()
    assert not queued.set_running_or_notify_cancel()
    with pytest.raises(CancelledError):
        queued.value()
    assert [type(e) for e in errors] == [CancelledError]  # once

    running: ApplyOutcome[int] = ApplyOutcome()
    assert running.set_running_or_notify_cancel()
    assert not running.cancel()
    running.set_exception(KeyError("k"))  # the manager's way of failing a running task
    assert running.done() and not running.cancelled() and not running.succeeded()
    with pytest.raises(KeyError):
        running.value()


def test_a_raising_callback_is_logged_and_the_result_still_becomes_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(value: int) -> None:
        raise RuntimeError("callback")

    outcome: ApplyOutcome[int] = ApplyOutcome(boom)
    outcome.set_running_or_notify_cancel()
    outcome.set_result(1)
    assert outcome.ready() and outcome.value() == 1
    assert "a callback of apply_async/map_async raised" in caplog.text


def test_every_waiter_is_let_through() -> None:
    outcome: ApplyOutcome[str] = ApplyOutcome()
    result = AsyncResult(outcome)
    got: list[str] = []
    waiters = [threading.Thread(target=lambda: got.append(result.get(30))) for _ in range(8)]
    for waiter in waiters:
        waiter.start()
    outcome.set_running_or_notify_cancel()
    outcome.set_result("x")
    for waiter in waiters:
        waiter.join(30)
    assert got == ["x"] * 8
    assert result.ready() and result.successful()


def test_get_times_out_with_the_pool_error_while_pending() -> None:
    import multiprocessing

    result = AsyncResult(ApplyOutcome[int]())
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(0.01)
    with pytest.raises(ValueError, match="not ready"):
        result.successful()


def test_mirror_made_late_has_the_outcome() -> None:
    done: ApplyOutcome[int] = ApplyOutcome()
    done.set_running_or_notify_cancel()
    done.set_result(3)
    assert done.future().result(0) == 3
    assert done.future() is done.future()

    failed: ApplyOutcome[int] = ApplyOutcome()
    failed.set_running_or_notify_cancel()
    failed.set_exception(OSError("disk"))
    assert isinstance(failed.future().exception(0), OSError)

    cancelled: ApplyOutcome[int] = ApplyOutcome()
    cancelled.cancel()
    assert cancelled.future().cancelled()


def test_mirror_follows_the_task_and_cancels_it() -> None:
    outcome: ApplyOutcome[int] = ApplyOutcome()
    mirror = outcome.future()
    assert outcome_of(mirror) is outcome
    assert mirror.cancel()  # queued: cancelling the mirror cancels the task
    assert outcome.cancelled() and not outcome.set_running_or_notify_cancel()

    running: ApplyOutcome[int] = ApplyOutcome()
    mirror = running.future()
    running.set_running_or_notify_cancel()
    assert mirror.running() and not mirror.cancel()
    running.set_result(5)
    assert concurrent.futures.wait([mirror], 0).done == {mirror}
    assert mirror.result() == 5
    plain: concurrent.futures.Future[int] = concurrent.futures.Future()
    assert outcome_of(plain) is plain


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.booleans())
def test_mirror_cancel_racing_the_start_agrees_with_the_outcome(
    mirror_first: bool, with_callback: bool
) -> None:
    """The user cancels the mirror in one thread while the manager starts the task in
    another: whichever wins, the two agree, and the error callback runs at most once."""
    errors: list[BaseException] = []
    outcome: ApplyOutcome[int] = ApplyOutcome(
        error_callback=errors.append if with_callback else None
    )
    mirror = outcome.future()
    go = threading.Barrier(2)
    started: list[bool] = []

    def cancel() -> None:
        go.wait()
        mirror.cancel()

    def start() -> None:
        go.wait()
        started.append(outcome.set_running_or_notify_cancel())

    threads = [
        threading.Thread(target=f) for f in ((cancel, start) if mirror_first else (start, cancel))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if started[0]:
        assert not mirror.cancelled() and mirror.running() and not outcome.cancelled()
        outcome.set_result(1)
        assert mirror.result(0) == 1 and outcome.value() == 1
        assert errors == []
    else:
        assert mirror.cancelled() and outcome.cancelled() and outcome.ready()
        assert len(errors) == (1 if with_callback else 0)


def test_a_mirror_does_not_keep_its_task_alive() -> None:
    outcome: ApplyOutcome[list[int]] = ApplyOutcome()
    mirror = outcome.future()
    outcome.set_running_or_notify_cancel()
    outcome.set_result([1, 2])
    gone = weakref.ref(mirror)
    del outcome, mirror
    gc.collect()
    assert gone() is None


def test_a_waiter_that_gives_up_does_not_hold_up_the_others() -> None:
    outcome: ApplyOutcome[str] = ApplyOutcome()
    assert not outcome.wait(0.01)  # gave up: nothing of it stays in the others' way
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(outcome.wait(30)))
    waiter.start()
    outcome.set_running_or_notify_cancel()
    outcome.set_result("x")
    waiter.join(30)
    assert got == [True]
