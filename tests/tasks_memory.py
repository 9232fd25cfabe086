"""Tasks and hooks for the max_memory_per_child tests (workers import them by name).

A task's memory is measured here, independently of hookpool: ``VmRSS`` from
``/proc/self/status``. Markers are files, as in ``tasks.py``: ``ran-<item>-<pid>`` per
run of a task, ``leaving-<pid>`` (``current_worker().leaving`` and ``.memory``, written by
the finalizer), next to the ``init-<pid>``/``fin-<pid>`` markers of ``tasks.py``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tasks import fin_record, init_record, write_whole

import hookpool
import hookpool._worker

MIB = 1024 * 1024

#: What the tasks keep: the leak.
KEPT: list[bytearray] = []


def vm_rss() -> int:
    """This process's resident set in bytes, as /proc/<pid>/status reports it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


#: A worker measures itself after a task only once ``MEMORY_CHECK_SECONDS`` (1 ms)
#: passed since it last did: a task that lasts longer is always measured right after.
MEASURED = 2 * hookpool._worker.MEMORY_CHECK_SECONDS


def leak(directory: str, item: int, mib: float, pause: float = MEASURED) -> tuple[int, int, int]:
    """Task: keep ``mib`` MiB (touched, so resident) for the life of the worker; record
    the run; last ``pause`` seconds at least. Returns (pid, resident bytes at the end of
    the task, item)."""
    Path(directory, f"ran-{item}-{os.getpid()}").write_text("1")
    KEPT.append(bytearray(int(mib * MIB)))
    time.sleep(pause)
    return os.getpid(), vm_rss(), item


def leak_when(directory: str, go: str, item: int, mib: float) -> tuple[int, int, int]:
    """Task: as ``leak``, once the file ``go`` exists (bounded wait)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    return leak(directory, item, mib)


def memory_seen() -> int | None:
    """Task: ``current_worker().memory``."""
    me = hookpool.current_worker()
    assert me is not None
    return me.memory


def init_bloated(directory: str, mib: float) -> None:
    """Initializer: the init marker, then keep ``mib`` MiB (say, a model loaded once)."""
    Path(directory, f"attempt-{os.getpid()}").write_text("1")
    init_record(directory)
    KEPT.append(bytearray(int(mib * MIB)))


def fin_leaving(directory: str) -> None:
    """Finalizer: the fin marker, and why this worker leaves."""
    me = hookpool.current_worker()
    assert me is not None
    write_whole(
        Path(directory, f"leaving-{os.getpid()}"),
        json.dumps({"leaving": me.leaving, "memory": me.memory, "tasks_done": me.tasks_done}),
    )
    fin_record(directory)


def leaving(directory: str) -> dict[int, dict[str, Any]]:
    """{pid: what its finalizer wrote} for every worker whose finalizer ran."""
    found = {}
    for path in Path(directory).glob("leaving-*"):
        found[int(path.name.partition("-")[2])] = json.loads(path.read_text())
    return found


def runs(directory: str) -> dict[int, list[int]]:
    """{item: [pid of each run]}."""
    found: dict[int, list[int]] = {}
    for path in Path(directory).glob("ran-*"):
        _, item, who = path.name.split("-")
        found.setdefault(int(item), []).append(int(who))
    return found


def fin_leaving_late(directory: str, seconds: float) -> None:
    """Finalizer: mark that it started, sleep, then ``fin_leaving`` (why it leaves, as it
    reads at the end)."""
    Path(directory, f"fin-started-{os.getpid()}").touch()
    time.sleep(seconds)
    fin_leaving(directory)
