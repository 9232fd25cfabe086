"""Module-level tasks and hooks for the worker logging and worker identity tests.

Workers import these by name (tests/ is on sys.path in the workers too). Log records go
to loggers under ``tasks_logging`` so a test can pick them out of everything else the
parent's root logger sees.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import hookpool
import hookpool._protocol

log = logging.getLogger("tasks_logging")

# -- logging ---------------------------------------------------------------------------


def log_many(count: int) -> int:
    """Task: ``count`` INFO records ``record <i>``, in order; returns the worker's pid."""
    for i in range(count):
        log.info("record %d", i)
    return os.getpid()


def sleep_then_log(seconds: float, count: int) -> int:
    """Task: sleep, then ``log_many(count)``."""
    time.sleep(seconds)
    return log_many(count)


def log_at_every_level() -> dict[str, Any]:
    """Task: one record per level; returns what the worker's logging would let through."""
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        log.log(level, "at %s", logging.getLevelName(level))
    return {
        "root_level": logging.getLogger().level,
        "info_enabled": log.isEnabledFor(logging.INFO),
    }


def log_quiet_warning() -> None:
    """Task: a WARNING on ``tasks_logging.quiet`` (a logger the parent may silence)."""
    logging.getLogger("tasks_logging.quiet").warning("quiet one")
    log.warning("loud one")


def log_exception() -> None:
    """Task: ``logger.exception`` inside an ``except`` block."""
    try:
        _divide(1, 0)
    except ZeroDivisionError:
        log.exception("it failed with %s", "style")


def _divide(a: int, b: int) -> float:
    return a / b


def log_from_thread(count: int) -> str:
    """Task: a thread it starts logs ``count`` records; returns that thread's name."""
    thread = threading.Thread(target=log_many, args=(count,), name="task-helper")
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return thread.name


def log_with_extra() -> None:
    """Task: ``extra=`` attributes, one plain and one that will not pickle."""
    log.warning("with extras", extra={"user_id": 7, "lock": threading.Lock()})


def warn(text: str) -> int:
    """Task: ``warnings.warn`` in the worker; returns the worker's pid."""
    warnings.warn(text, UserWarning, stacklevel=1)
    return os.getpid()


def root_handlers() -> list[str]:
    """Task: the type names of the worker's root handlers."""
    return [type(handler).__name__ for handler in logging.getLogger().handlers]


def init_log(text: str) -> None:
    """Initializer: log ``text``."""
    log.warning("initializer says %s", text)


def fin_log(text: str) -> None:
    """Finalizer: log ``text`` and how many tasks this worker answered."""
    me = hookpool.current_worker()
    log.warning("finalizer says %s after %s tasks", text, me.tasks_done if me else None)


def fin_log_then_mark(directory: str) -> None:
    """Finalizer: log a few records, then write ``finalized`` in ``directory``."""
    for i in range(20):
        log.warning("finalizer record %d", i)
    Path(directory, "finalized").write_text("done")


def log_while_sending(count: int) -> int:
    """Task: every write of a message logs once more, as a signal handler that logs
    might in the middle of a write. Returns how many writes were made (after which the
    original send is restored)."""
    original = hookpool._protocol.send
    writes = 0

    def send(conn: Any, messages: list[hookpool._protocol.Message]) -> None:
        nonlocal writes
        writes += 1
        if writes <= count:
            log.info("logged mid-write %d", writes)  # re-enters the worker's _send
        original(conn, messages)

    hookpool._protocol.send = send  # type: ignore[assignment, unused-ignore]
    try:
        log.info("first")
    finally:
        hookpool._protocol.send = original
    return writes


def log_with_signals(count: int) -> int:
    """Task: log ``count`` records while a thread signals the main thread, whose handler
    logs too. Returns how many times the handler ran."""
    handled = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal handled
        handled += 1
        log.info("from the signal handler")

    previous = signal.signal(signal.SIGUSR1, on_signal)
    done = threading.Event()

    def pester() -> None:
        while not done.is_set():
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
            time.sleep(0.0005)

    thread = threading.Thread(target=pester)
    thread.start()
    try:
        for i in range(count):
            log.info("main %d", i)
    finally:
        done.set()
        thread.join(30)
        signal.signal(signal.SIGUSR1, previous)
    return handled


def log_until_stopped(marker: str, seconds: float, size: int = 200) -> None:
    """Task: create ``marker``, then log records of ``size`` characters on
    ``tasks_logging.busy`` without pause (bounded by ``seconds``). Past 16 KiB a record
    is written in two system calls (``Connection.send_bytes``), with room for a signal
    in between."""
    Path(marker).write_text("1")
    busy = logging.getLogger("tasks_logging.busy")
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        busy.info("busy %d %s", i, "x" * size)
        i += 1


# -- identity --------------------------------------------------------------------------


def _as_dict(info: hookpool.WorkerInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in ("index", "name", "pid", "tasks_done")}


def whoami() -> dict[str, Any] | None:
    """Task: ``current_worker()`` as a dict (or None), and the process name and pid."""
    import multiprocessing

    me = hookpool.current_worker()
    return {
        "info": None if me is None else _as_dict(me),
        "process_name": multiprocessing.current_process().name,
        "pid": os.getpid(),
    }


def whoami_in_thread() -> dict[str, Any] | None:
    """Task: ``current_worker()`` from a thread the task starts."""
    found: list[hookpool.WorkerInfo | None] = []
    thread = threading.Thread(target=lambda: found.append(hookpool.current_worker()))
    thread.start()
    thread.join(30)
    return None if found[0] is None else _as_dict(found[0])


def whoami_in_fork() -> Any:
    """Task: ``current_worker()`` in a child the task forks: not a worker."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        os.write(write, json.dumps(hookpool.current_worker() is None).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as f:
        return json.loads(f.read())


def record_identity(directory: str, what: str) -> None:
    """Hook: write ``current_worker()`` to ``<what>-<pid>.json`` in ``directory``."""
    me = hookpool.current_worker()
    Path(directory, f"{what}-{os.getpid()}.json").write_text(
        json.dumps(None if me is None else _as_dict(me))
    )
