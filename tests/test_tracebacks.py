"""Exceptions raised in a worker come back as themselves, with the worker's frames."""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import multiprocessing.pool
import os
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tasks
import tasks_api
from conftest import shared_pool

import hookpool

pytestmark = pytest.mark.usefixtures("collect_stopped_pools")


@pytest.fixture(scope="module")
def pool() -> Iterator[hookpool.Pool]:
    yield from shared_pool(hookpool.Pool(1))


def _line_of(function: Callable[..., Any], text: str) -> int:
    """The line number of the first line of ``function`` containing ``text``."""
    lines, first = inspect.getsourcelines(function)
    for offset, line in enumerate(lines):
        if text in line:
            return first + offset
    raise AssertionError(f"{text!r} not in {function.__name__}")


def _has_frame(exc: BaseException, function: Callable[..., Any], text: str) -> bool:
    line = _line_of(function, text)
    path = inspect.getsourcefile(function)
    assert path is not None
    return any(
        frame.name == function.__name__
        and os.path.samefile(frame.filename, path)
        and frame.lineno == line
        for frame in traceback.extract_tb(exc.__traceback__)
    )


# -- same type, same args, the worker's frames ------------------------------------------


@pytest.mark.parametrize("how", ["apply", "apply_async", "submit", "map", "imap", "starmap"])
def test_worker_exception_is_reraised_with_its_frames(pool: hookpool.Pool, how: str) -> None:
    with pytest.raises(ValueError) as info:
        if how == "apply":
            pool.apply(tasks.raise_value_error, ("boom 3",))
        elif how == "apply_async":
            pool.apply_async(tasks.raise_value_error, ("boom 3",)).get(timeout=10)
        elif how == "submit":
            pool.submit(tasks.raise_value_error, "boom 3").result(timeout=10)
        elif how == "map":
            pool.map(functools.partial(tasks.fail_at, bad=3), range(5))
        elif how == "imap":
            list(pool.imap(functools.partial(tasks.fail_at, bad=3), range(5)))
        else:
            pool.starmap(tasks.fail_at, [(1, 3), (3, 3)])
    exc = info.value
    assert type(exc) is ValueError
    if how in ("apply", "apply_async", "submit"):
        assert exc.args == ("boom 3",)
        function, text = tasks.raise_value_error, "raise ValueError(message)"
    else:
        assert exc.args == ("bad item 3",)
        function, text = tasks.fail_at, 'raise ValueError(f"bad item {x}")'
    assert _has_frame(exc, function, text), traceback.format_tb(exc.__traceback__)
    # The innermost frame is the worker's raise, not hookpool's plumbing.
    innermost = traceback.extract_tb(exc.__traceback__)[-1]
    assert innermost.name == function.__name__


def test_worker_frames_print_without_misplaced_carets(pool: hookpool.Pool) -> None:
    """Python 3.11+ underlines the failing part of each line with carets, from the code's
    column table. A worker frame has no such table here (the columns tblib's stubs gave
    it pointed at the wrong part of the line): it prints without carets, as a frame
    whose error spans its line, and with its own line number."""
    with pytest.raises(ValueError) as info:
        pool.apply(tasks.fail_at, (3, 3))
    printed = "".join(traceback.format_exception(info.value)).splitlines()
    line = _line_of(tasks.fail_at, 'raise ValueError(f"bad item {x}")')
    # (The first is in the quoted text of the cause, printed first.)
    at = [i for i, text in enumerate(printed) if f"line {line}, in fail_at" in text][-1]
    assert printed[at + 1].strip() == 'raise ValueError(f"bad item {x}")'
    assert not set(printed[at + 2].strip()) <= set("^~"), printed[at : at + 3]


def test_remote_traceback_is_the_cause(pool: hookpool.Pool) -> None:
    with pytest.raises(ValueError) as info:
        pool.apply(tasks.raise_value_error, ("with a cause",))
    cause = info.value.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback  # the standard class itself
    assert hookpool.RemoteTraceback is multiprocessing.pool.RemoteTraceback
    text = cause.tb
    assert text.startswith('\n"""\nTraceback (most recent call last)')  # quoted as the stdlib's
    assert "in raise_value_error" in text
    assert "raise ValueError(message)" in text
    assert text.rstrip().endswith('ValueError: with a cause\n"""')
    assert str(cause) == text
    # ... and it is printed with the exception, as the standard library's is.
    printed = "".join(traceback.format_exception(info.value))
    assert "in raise_value_error" in printed
    assert "The above exception was the direct cause" in printed


@pytest.mark.parametrize("flavour", ["hookpool", "stdlib"])
def test_remote_traceback_parity(flavour: str, make_pool: Callable[..., Any]) -> None:
    """What the standard library gives: same type and args, a RemoteTraceback cause
    whose text has the worker's frame."""
    spawn = multiprocessing.get_context("spawn")
    pool = make_pool(1) if flavour == "hookpool" else spawn.Pool(1)
    try:
        with pytest.raises(ValueError) as info:
            pool.apply(tasks.raise_value_error, ("parity",))
    finally:
        if flavour == "stdlib":
            pool.terminate()
            pool.join()
    assert type(info.value) is ValueError
    assert info.value.args == ("parity",)
    cause = info.value.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    assert cause.tb.startswith('\n"""\nTraceback (most recent call last):\n')
    assert cause.tb.endswith('ValueError: parity\n"""')
    assert "raise ValueError(message)" in str(cause)


# -- chains --------------------------------------------------------------------------------


def test_raise_from_chain_survives(pool: hookpool.Pool) -> None:
    with pytest.raises(RuntimeError) as info:
        pool.apply(tasks_api.raise_from)
    exc = info.value
    assert exc.args == ("outer failure",)
    cause = exc.__cause__
    assert type(cause) is KeyError
    assert cause.args == ("missing-key",)
    assert exc.__suppress_context__ is True
    assert _has_frame(cause, tasks_api.raise_from, '{}["missing-key"]')
    assert _has_frame(exc, tasks_api.raise_from, "raise RuntimeError")
    # The cause is the worker's own exception: no RemoteTraceback replaces it.
    assert not isinstance(cause, multiprocessing.pool.RemoteTraceback)


def test_raise_from_inside_except_keeps_the_context(pool: hookpool.Pool) -> None:
    """In the worker, ``raise X from e`` inside ``except ... as e`` leaves
    ``X.__context__ is e`` as well as ``X.__cause__ is e``."""
    with pytest.raises(RuntimeError) as info:
        pool.apply(tasks_api.raise_from)
    exc = info.value
    assert type(exc.__cause__) is KeyError
    assert exc.__context__ is exc.__cause__


def test_raise_from_an_unrelated_exception(pool: hookpool.Pool) -> None:
    with pytest.raises(LookupError) as info:
        pool.apply(tasks_api.raise_from_unrelated)
    exc = info.value
    assert type(exc) is LookupError
    assert exc.args == ("looked",)
    cause = exc.__cause__
    assert type(cause) is OSError
    assert (cause.errno, cause.strerror) == (5, "the real cause")
    assert exc.__context__ is None


def test_context_survives(pool: hookpool.Pool) -> None:
    with pytest.raises(IndexError) as info:
        pool.apply(tasks_api.raise_during_handling)
    exc = info.value
    assert exc.args == ("second problem",)
    context = exc.__context__
    assert type(context) is ZeroDivisionError
    assert context.args == ("first problem",)
    assert exc.__suppress_context__ is False
    assert _has_frame(context, tasks_api.raise_during_handling, "first problem")
    # No cause of its own: the worker's traceback is attached as the cause.
    assert isinstance(exc.__cause__, hookpool.RemoteTraceback)
    assert "During handling of the above exception" in exc.__cause__.tb
    assert "ZeroDivisionError: first problem" in exc.__cause__.tb


def test_raise_from_none_keeps_the_context_suppressed(pool: hookpool.Pool) -> None:
    with pytest.raises(IndexError) as info:
        pool.apply(tasks_api.raise_from_none)
    exc = info.value
    assert exc.__suppress_context__ is True
    assert type(exc.__context__) is ZeroDivisionError
    assert "ZeroDivisionError" not in exc.__cause__.tb  # type: ignore[union-attr]


# -- exceptions that cannot travel as themselves ----------------------------------------


def test_exception_that_cannot_be_unpickled_becomes_remote_error(pool: hookpool.Pool) -> None:
    with pytest.raises(hookpool.RemoteError) as info:
        pool.apply(tasks_api.raise_two_arg_error)
    exc = info.value
    assert isinstance(exc, hookpool.HookpoolError)
    assert exc.type_name == "tasks_api.TwoArgError"
    assert exc.remote_message == "code 42: needs two arguments"
    assert "in raise_two_arg_error" in exc.remote_traceback
    assert 'raise TwoArgError(42, "needs two arguments")' in exc.remote_traceback
    assert "tasks_api.TwoArgError: code 42: needs two arguments" in str(exc)
    assert _has_frame(exc, tasks_api.raise_two_arg_error, "raise TwoArgError")
    # The pool is not affected.
    assert pool.apply(tasks.square, (5,)) == 25
    assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]


def test_exception_that_cannot_be_pickled_becomes_remote_error(pool: hookpool.Pool) -> None:
    with pytest.raises(hookpool.RemoteError) as info:
        pool.submit(tasks_api.raise_lock_holding_error).result(timeout=10)
    exc = info.value
    assert exc.type_name == "tasks_api.LockHoldingError"
    assert exc.remote_message == "holding a lock"
    assert "in raise_lock_holding_error" in exc.remote_traceback
    assert "holding a lock" in str(exc)
    assert pool.apply(tasks.square, (6,)) == 36


def test_remote_error_in_a_map(pool: hookpool.Pool) -> None:
    with pytest.raises(hookpool.RemoteError) as info:
        pool.map(functools.partial(tasks_api.two_arg_error_at, bad=2), range(4))
    assert info.value.type_name == "tasks_api.TwoArgError"
    assert pool.map(tasks.square, [7]) == [49]


# -- results that cannot travel ---------------------------------------------------------


@pytest.mark.parametrize(
    "function", [tasks_api.return_lock, tasks_api.return_generator], ids=["lock", "generator"]
)
def test_unpicklable_result_raises_result_encoding_error(
    pool: hookpool.Pool, function: Callable[[], Any]
) -> None:
    with pytest.raises(hookpool.ResultEncodingError) as info:
        pool.apply(function)
    exc = info.value
    assert isinstance(exc, multiprocessing.pool.MaybeEncodingError)
    assert isinstance(exc, hookpool.HookpoolError)
    assert "cannot pickle" in str(exc)
    assert "Error sending result" in str(exc)
    assert pool.apply(tasks.square, (8,)) == 64


def test_unpicklable_result_in_a_map(pool: hookpool.Pool) -> None:
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.map(functools.partial(tasks_api.return_lock_at, bad=2), range(4))
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        list(pool.imap(functools.partial(tasks_api.return_lock_at, bad=2), range(4)))
    assert pool.map(tasks.square, range(3)) == [0, 1, 4]


def test_result_that_cannot_be_unpickled_in_the_caller(pool: hookpool.Pool) -> None:
    with pytest.raises(hookpool.ResultEncodingError) as info:
        pool.apply(tasks_api.return_two_arg_error_instance)
    assert isinstance(info.value, multiprocessing.pool.MaybeEncodingError)
    assert "unpickled" in str(info.value)
    assert pool.apply(tasks.square, (9,)) == 81


@pytest.mark.parametrize("flavour", ["hookpool", "stdlib"])
def test_unpicklable_result_parity(flavour: str, make_pool: Callable[..., Any]) -> None:
    """The standard library raises MaybeEncodingError for the same result."""
    spawn = multiprocessing.get_context("spawn")
    pool = make_pool(1) if flavour == "hookpool" else spawn.Pool(1)
    try:
        with pytest.raises(multiprocessing.pool.MaybeEncodingError) as info:
            pool.apply(tasks_api.return_lock)
        assert "cannot pickle" in str(info.value)
        assert pool.apply(tasks.square, (2,)) == 4
    finally:
        if flavour == "stdlib":
            pool.terminate()
            pool.join()
