"""Module-level tasks and hooks for the worker logging and worker identity tests.

Workers import these by name (tests/ is on sys.path in the workers too).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import hookpool

# -- identity --------------------------------------------------------------------------


def whoami() -> dict[str, Any] | None:
    """Task: ``current_worker()`` as a dict (or None), and the process name and pid."""
    import multiprocessing

    me = hookpool.current_worker()
    return {
        "info": None if me is None else vars(me),
        "process_name": multiprocessing.current_process().name,
        "pid": os.getpid(),
    }


def whoami_in_thread() -> dict[str, Any] | None:
    """Task: ``current_worker()`` from a thread the task starts."""
    found: list[hookpool.WorkerInfo | None] = []
    thread = threading.Thread(target=lambda: found.append(hookpool.current_worker()))
    thread.start()
    thread.join(30)
    return None if found[0] is None else vars(found[0])


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
        json.dumps(None if me is None else vars(me))
    )
