"""Worker logging reaches the parent: records and warnings from workers arrive in the
parent's handlers (here pytest's ``caplog``, on the root logger), tagged with the worker's
name, in order, with nothing configured in the workers; ``forward_logging=False`` opts out.

No waiting is needed to see a record: it travels on the worker's pipe ahead of the result
of the task that logged it, and the manager hands it to the handlers before it settles
that result. Finalizer records are in once the pool has been joined.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tasks_exec
import tasks_logging
from conftest import run_script
from faces import Face, MakeFace
from tasks_exec import loaded
from test_facades import wait_for

import hookpool

LOGGER = "tasks_logging"


def from_workers(caplog: pytest.LogCaptureFixture, name: str = LOGGER) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name or r.name.startswith(name + ".")]


def messages(caplog: pytest.LogCaptureFixture, name: str = LOGGER) -> list[str]:
    return [r.getMessage() for r in from_workers(caplog, name)]


@pytest.fixture
def info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog with the parent's root logger at INFO, before any pool is made."""
    caplog.set_level(logging.INFO)
    return caplog


# -- delivery ---------------------------------------------------------------------------


def test_records_arrive_in_order_with_the_worker_name(
    facade: MakeFace, info: pytest.LogCaptureFixture
) -> None:
    face = facade(2)
    pid = face.apply(tasks_logging.log_many, 200)
    records = from_workers(info)
    assert [r.getMessage() for r in records] == [f"record {i}" for i in range(200)]
    (name,) = {r.processName for r in records}
    assert name.startswith("hookpool-") and "-worker-" in name
    assert {r.hookpool_worker for r in records} == {name}  # type: ignore[attr-defined]
    assert {r.process for r in records} == {pid}
    assert {r.levelno for r in records} == {logging.INFO}
    assert all(r.funcName == "log_many" for r in records)


def test_records_from_several_workers_keep_each_workers_order(
    facade: MakeFace, info: pytest.LogCaptureFixture
) -> None:
    face = facade(2)
    futures = [face.submit(tasks_logging.log_many, 50) for _ in range(4)]
    pids = [f.result(timeout=30) for f in futures]
    records = from_workers(info)
    assert len(records) == 200
    for pid in set(pids):
        mine = [r.getMessage() for r in records if r.process == pid]
        runs = len(mine) // 50
        assert mine == [f"record {i}" for i in range(50)] * runs
        assert runs == pids.count(pid)
    # Each worker's records carry that worker's own name.
    names = {r.process: r.processName for r in records}
    assert len(set(names.values())) == len(names)


def test_initializer_and_finalizer_records_arrive(
    facade: MakeFace, info: pytest.LogCaptureFixture
) -> None:
    face = facade(
        1,
        initializer=tasks_logging.init_log,
        initargs=("hello",),
        finalizer=tasks_logging.fin_log,
        finalargs=("goodbye",),
    )
    face.apply(tasks_logging.log_many, 1)
    face.apply(tasks_logging.log_many, 1)
    face.shutdown()
    assert messages(info) == [
        "initializer says hello",
        "record 0",
        "record 0",
        "finalizer says goodbye after 2 tasks",
    ]
    assert len({r.processName for r in from_workers(info)}) == 1


def test_a_worker_threads_records_arrive(facade: MakeFace, info: pytest.LogCaptureFixture) -> None:
    face = facade(1)
    assert face.apply(tasks_logging.log_from_thread, 20) == "task-helper"
    records = from_workers(info)
    assert [r.getMessage() for r in records] == [f"record {i}" for i in range(20)]
    assert {r.threadName for r in records} == {"task-helper"}
    assert records[0].processName.endswith("-worker-1")


def test_logger_exception_arrives_with_the_traceback_text(
    facade: MakeFace, info: pytest.LogCaptureFixture
) -> None:
    face = facade(1)
    face.apply(tasks_logging.log_exception)
    (record,) = from_workers(info)
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "it failed with style"
    assert record.exc_info is None  # the traceback object stayed in the worker...
    assert record.exc_text is not None  # ...its text came along
    assert record.exc_text.startswith("Traceback (most recent call last):")
    assert "_divide" in record.exc_text
    assert "ZeroDivisionError: division by zero" in record.exc_text
    assert "ZeroDivisionError" in info.text  # and the parent's formatters print it


def test_extra_attributes_arrive_and_unpicklable_ones_as_their_repr(
    facade: MakeFace, info: pytest.LogCaptureFixture
) -> None:
    face = facade(1)
    face.apply(tasks_logging.log_with_extra)
    (record,) = from_workers(info)
    assert record.user_id == 7  # type: ignore[attr-defined]
    assert "lock" in record.lock  # type: ignore[attr-defined]


def test_warnings_from_workers_arrive_as_py_warnings_records(
    facade: MakeFace, caplog: pytest.LogCaptureFixture
) -> None:
    """The parent's warning filters (``error``, in this suite) do not apply: the warning
    is shown by the worker's filters and arrives as a log record, not as a warning."""
    face = facade(1)
    pid = face.apply(tasks_logging.warn, "mind the gap")
    (record,) = from_workers(caplog, "py.warnings")
    assert record.levelno == logging.WARNING
    assert "UserWarning: mind the gap" in record.getMessage()
    assert "tasks_logging.py" in record.getMessage()
    assert record.process == pid
    assert record.processName.endswith("-worker-1")


# -- what is sent, and what is not -------------------------------------------------------


def test_opting_out_sends_nothing(facade: MakeFace, info: pytest.LogCaptureFixture) -> None:
    face = facade(1, forward_logging=False)
    face.apply(tasks_logging.log_many, 5)
    face.apply(tasks_logging.warn, "not forwarded")
    assert face.apply(tasks_logging.root_handlers) == []
    assert from_workers(info) == []
    assert from_workers(info, "py.warnings") == []


def test_forwarding_installs_one_handler(facade: MakeFace) -> None:
    face = facade(1)
    assert face.apply(tasks_logging.root_handlers) == ["ForwardHandler"]


def test_records_below_the_parents_root_level_are_not_even_sent(
    facade: MakeFace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    face = facade(1)
    seen = face.apply(tasks_logging.log_at_every_level)
    assert seen == {"root_level": logging.WARNING, "info_enabled": False}
    assert messages(caplog) == ["at WARNING", "at ERROR"]


def test_the_level_is_read_when_each_worker_starts(
    facade: MakeFace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    face = facade(1)
    seen = face.apply(tasks_logging.log_at_every_level)
    assert seen == {"root_level": logging.DEBUG, "info_enabled": True}
    assert messages(caplog) == ["at DEBUG", "at INFO", "at WARNING", "at ERROR"]


def test_a_logger_the_parent_silenced_stays_silent(
    facade: MakeFace, info: pytest.LogCaptureFixture
) -> None:
    quiet = logging.getLogger("tasks_logging.quiet")
    quiet.setLevel(logging.ERROR)
    try:
        face = facade(1)
        face.apply(tasks_logging.log_quiet_warning)
    finally:
        quiet.setLevel(logging.NOTSET)
    assert messages(info) == ["loud one"]


# -- re-entrancy and stopping ------------------------------------------------------------


def test_a_record_logged_in_the_middle_of_a_write_follows_it(
    info: pytest.LogCaptureFixture,
) -> None:
    """As a signal handler that logs might: the worker neither deadlocks on its own send
    lock nor splits the frame being written; the record is sent right after it."""
    with hookpool.Pool(1) as pool:
        writes = pool.apply_async(tasks_logging.log_while_sending, (3,)).get(timeout=30)
        assert writes == 4
        assert messages(info) == ["first"] + [f"logged mid-write {i}" for i in (1, 2, 3)]
        assert pool.apply_async(tasks_logging.log_many, (2,)).get(timeout=30)


def test_a_signal_handler_that_logs_during_sends(info: pytest.LogCaptureFixture) -> None:
    with hookpool.Pool(1) as pool:
        handled = pool.apply_async(tasks_logging.log_with_signals, (2000,)).get(timeout=50)
        got = messages(info)
        assert [m for m in got if m.startswith("main ")] == [f"main {i}" for i in range(2000)]
        assert got.count("from the signal handler") == handled
        assert pool.apply_async(tasks_logging.log_many, (1,)).get(timeout=30)


class _CountAndDrop(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        return False


@pytest.fixture
def busy() -> Iterator[_CountAndDrop]:
    """Counts the records of ``tasks_logging.busy`` and drops them (a logger filter): they
    are big and many, and would only fill caplog."""
    counter = _CountAndDrop()
    logger = logging.getLogger("tasks_logging.busy")
    logger.addFilter(counter)
    try:
        yield counter
    finally:
        logger.removeFilter(counter)


@pytest.mark.parametrize("how", ["terminate", "task_timeout"])
@pytest.mark.parametrize("size", [200, 20_000])
def test_stopping_a_worker_that_logs_nonstop_keeps_the_stream_whole(
    how: str, size: int, info: pytest.LogCaptureFixture, busy: _CountAndDrop, tmp_path: Path
) -> None:
    """SIGTERM lands while the task is writing a record: the stop waits for the write to
    end (a half-written frame would garble the pipe), then the finalizer's records arrive."""
    marker = tmp_path / "started"
    timeout = 1.0 if how == "task_timeout" else None
    pool = hookpool.Pool(1, finalizer=tasks_logging.fin_log, finalargs=("bye",))
    try:
        result = pool.apply_async(
            tasks_logging.log_until_stopped, (str(marker), 40.0, size), task_timeout=timeout
        )
        wait_for(marker.exists, what="the task to start")
        wait_for(lambda: busy.count > 20, what="records to flow")
        if how == "terminate":
            pool.terminate()
        with pytest.raises((hookpool.PoolTerminatedError, hookpool.TaskTimeoutError)):
            result.get(timeout=30)
        if how == "task_timeout":
            assert pool.apply_async(tasks_logging.log_many, (1,)).get(timeout=30)
    finally:
        pool.terminate()
        pool.join()
    finalizers = [m for m in messages(info) if m.startswith("finalizer")]
    expected = ["finalizer says bye after 0 tasks"]
    if how == "task_timeout":  # and the replacement's, which answered one task
        expected.append("finalizer says bye after 1 tasks")
    assert finalizers == expected
    assert not [r for r in info.records if r.name == "hookpool"], "the manager complained"


ORPHAN_SCRIPT = """
import logging, os, sys, time
import hookpool, tasks_logging

if __name__ == "__main__":
    directory = sys.argv[1]
    logging.basicConfig(level=logging.INFO)
    pool = hookpool.Pool(1, finalizer=tasks_logging.fin_log_then_mark, finalargs=(directory,))
    pool.apply_async(tasks_logging.log_until_stopped, (os.path.join(directory, "started"), 40))
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(directory, "started")):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)
    os._exit(0)  # the parent dies: nobody reads the worker's pipe any more
"""


def test_records_after_the_parent_is_gone_are_dropped_silently(tmp_path: Path) -> None:
    """The orphaned worker runs its finalizer, whose records have nowhere to go: they are
    dropped, without a "Logging error" on stderr, and the finalizer runs to its end."""
    result = run_script(ORPHAN_SCRIPT, tmp_path, args=(str(tmp_path),))
    assert result.returncode == 0, result.stderr
    # run_script waited for the worker too: it holds the same stderr pipe.
    assert (tmp_path / "finalized").read_text() == "done"
    assert "Logging error" not in result.stderr
    assert "Traceback" not in result.stderr


# -- the parent's side -------------------------------------------------------------------


class _Raising(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("a broken handler")

    def handle(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("a broken handler")


def test_a_broken_parent_handler_does_not_break_the_pool(
    info: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    handler = _Raising()
    logger = logging.getLogger("tasks_logging")
    logger.addHandler(handler)
    try:
        with hookpool.Pool(1) as pool:
            assert pool.apply_async(tasks_logging.log_many, (2,)).get(timeout=30)
            assert pool.apply_async(tasks_logging.log_many, (1,)).get(timeout=30)
    finally:
        logger.removeHandler(handler)
    assert "could not handle a log record from hookpool-worker-1" in capfd.readouterr().err


def test_handlers_run_on_the_manager_thread(facade: MakeFace) -> None:
    seen: list[str] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(threading.current_thread().name)

    handler = Record(logging.INFO)
    logger = logging.getLogger("tasks_logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # the worker's root stays at WARNING: INFO is not sent
    try:
        face: Face = facade(1)
        face.apply(tasks_logging.log_at_every_level)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert len(seen) == 2 and all(name.endswith("-manager") for name in seen)


def test_logging_is_imported_only_once_used(facade: MakeFace) -> None:
    """A worker imports ``logging`` (and the forwarding) only when its code does, or on
    its first warning; opted out, never by hookpool."""
    off = facade(1, forward_logging=False)
    off.apply(tasks_exec.warn_before_logging, "not forwarded")
    assert off.apply(loaded, ["logging", "hookpool._logs"]) == []
    on = facade(1)
    assert on.apply(loaded, ["logging", "hookpool._logs"]) == []
    on.apply(tasks_exec.log_after_importing, "late")
    assert on.apply(loaded, ["logging", "hookpool._logs"]) == ["logging", "hookpool._logs"]


def test_records_right_after_the_first_import_of_logging_arrive(
    facade: MakeFace, caplog: pytest.LogCaptureFixture
) -> None:
    """Forwarding is installed as ``logging`` is imported: a record logged at once, from
    the initializer or a task, is not lost."""
    face = facade(1, initializer=tasks_exec.log_after_importing, initargs=("from init",))
    face.apply(tasks_exec.log_after_importing, "from a task")
    assert messages(caplog, "tasks_exec.late") == ["from init", "from a task"]
    assert face.apply(tasks_logging.root_handlers) == ["ForwardHandler"]


def test_a_warning_after_catch_warnings_arrives(
    facade: MakeFace, caplog: pytest.LogCaptureFixture
) -> None:
    """``catch_warnings()`` puts back the warning hook it found: one that was still
    waiting for logging to be used must then show warnings through logging's."""
    face = facade(1)
    assert face.apply(tasks_exec.warn_after_catch_warnings, "after") == "ok"
    assert face.apply(tasks_exec.warn_after_catch_warnings, "again") == "ok"
    records = from_workers(caplog, "py.warnings")
    assert [("UserWarning: after" in r.getMessage()) for r in records] == [True, False]


def test_finding_loggings_spec_does_not_stop_forwarding(
    facade: MakeFace, caplog: pytest.LogCaptureFixture
) -> None:
    face = facade(1)
    face.apply(tasks_exec.find_spec_then_log, "found")
    assert messages(caplog, "tasks_exec.late") == ["found"]
    assert face.apply(tasks_logging.root_handlers) == ["ForwardHandler"]


def test_a_warning_before_logging_is_imported_arrives(
    facade: MakeFace, caplog: pytest.LogCaptureFixture
) -> None:
    face = facade(1)
    assert face.apply(tasks_exec.warn_before_logging, "early") == []
    (record,) = from_workers(caplog, "py.warnings")
    assert "UserWarning: early" in record.getMessage()
    face.apply(tasks_exec.warn_before_logging, "again")  # shown by logging from now on
    assert len(from_workers(caplog, "py.warnings")) == 2
