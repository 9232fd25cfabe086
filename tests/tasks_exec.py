"""Module-level tasks and hooks for the executor, facade and export tests.

Workers import these by name (tests/ is on sys.path in the workers too). Side effects go
to marker files in a directory, so a test can see what ran, and where, even in workers
that are gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

#: Per-worker state that hooks (including closures and lambdas) may fill in.
STATE: dict[str, Any] = {}


def write_marker(path: str, value: Any = None) -> Any:
    """Task: create ``path`` (proof that the task ran), return ``value``."""
    Path(path).write_text(str(os.getpid()))
    return value


def mark_then_sleep(directory: str, seconds: float) -> int:
    """Task: write ``running-<pid>`` in ``directory``, then sleep (a busy worker)."""
    Path(directory, f"running-{os.getpid()}").write_text("1")
    time.sleep(seconds)
    return os.getpid()


def running_pids(directory: str) -> set[int]:
    """The pids that wrote a ``running-<pid>`` marker."""
    return {
        int(p.name.partition("-")[2])
        for p in Path(directory).iterdir()
        if p.name.startswith("running-")
    }


def kill_self(_: object = None) -> None:
    """Task: the worker dies by SIGKILL in the middle of the task."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)  # pragma: no cover - never reached


def fail_on(x: int) -> int:
    """Task: raise in a helper for item 3."""
    return _fail_on_inner(x)


def _fail_on_inner(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def init_gate_then_fail(directory: str) -> None:
    """Initializer: write ``attempt-<pid>``, wait (at most 20 s) for a ``go`` file, raise.

    The gate lets a test queue work before the initializer fails, deterministically.
    """
    Path(directory, f"attempt-{os.getpid()}").write_text("1")
    deadline = time.monotonic() + 20
    while not Path(directory, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    raise ValueError("initializer failed on purpose")


def attempts(directory: str) -> int:
    """How many initializers started (``attempt-<pid>`` markers)."""
    return sum(1 for p in Path(directory).iterdir() if p.name.startswith("attempt-"))


def get_state(key: str) -> Any:
    return STATE.get(key)


def loaded(names: list[str]) -> list[str]:
    """Task: which of ``names`` this worker has imported."""
    return [name for name in names if name in sys.modules]


# -- logging first used in the middle of a hook or a task (this module does not import it)


def log_after_importing(text: str) -> None:
    """Task or initializer: import logging only now, and log at once."""
    import logging

    logging.getLogger("tasks_exec.late").warning(text)


def warn_before_logging(text: str) -> list[str]:
    """Task: a warning in a worker that has not imported logging; returns which of the
    logging modules were imported before it."""
    import warnings

    before = loaded(["logging", "hookpool._logs"])
    warnings.warn(text, UserWarning, stacklevel=1)
    return before


def warn_after_catch_warnings(text: str) -> str:
    """Task: logging first imported inside ``warnings.catch_warnings()`` (which restores
    the warning hook it found on the way out), then a warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import logging  # noqa: F401
    warnings.warn(text, UserWarning, stacklevel=1)
    return "ok"


def find_spec_then_log(text: str) -> None:
    """Task: look up logging's spec without loading it, then import it and log."""
    import importlib.util

    importlib.util.find_spec("logging")
    import logging

    logging.getLogger("tasks_exec.late").warning(text)


# -- parent side: teardown ------------------------------------------------------------------


def join_manager(manager: Any, timeout: float = 10.0) -> bool:
    """Wait for a hookpool manager thread to finish after ``close()``/``terminate()``.

    If it has not finished within ``timeout``, poke its wake-up pipe (a lost wake-up
    leaves it asleep with nothing to wake it: see ``test_executor.py::
    test_a_submit_racing_the_wakeup_drain_is_not_lost``) and wait again, so that one bug
    does not hang the whole session. Returns True if no poke was needed.
    """
    if manager.join(timeout):
        return True
    with contextlib.suppress(OSError):
        os.write(manager._wake_w, b"\0")
    assert manager.join(30), "the hookpool manager thread is stuck even after a poke"
    return False


_kept: dict[str, Any] = {}


def keep_both(lock: Any, value: Any) -> None:
    """Initializer: keep a Lock and a Value handed over through initargs."""
    _kept["lock"], _kept["value"] = lock, value


def try_lock() -> bool:
    """Whether this worker can take the kept Lock right now (released at once)."""
    got = bool(_kept["lock"].acquire(timeout=0.2))
    if got:
        _kept["lock"].release()
    return got


def read_kept_value() -> int:
    return int(_kept["value"].value)
