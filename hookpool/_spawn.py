"""The one place where hookpool chooses how worker processes are started.

Workers always start from an explicit spawn (or, on request, forkserver) context, never
from the global default start method: a fresh interpreter per worker behaves the same on
every OS, inherits no threads or locks held mid-operation, and receives only what it is
handed (see the seeds: fork + threads deadlocks, fork-made primitives segfault in spawn
children).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os

__all__ = ["ALLOWED_START_METHODS", "available_cpus", "check_not_bootstrapping", "resolve"]

ALLOWED_START_METHODS = ("spawn", "forkserver")

SpawnContext = multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext


def resolve(context: object) -> SpawnContext:
    """Return the context workers start from: spawn unless a forkserver one is asked for.

    Raises:
        ValueError: for a fork context (or its name), or an unknown start method.
        TypeError: for something that is neither a context nor a start method name.
    """
    if context is None:
        return multiprocessing.get_context("spawn")
    if isinstance(context, str):
        method = context
    elif isinstance(context, multiprocessing.context.BaseContext):
        method = context.get_start_method()
    else:
        raise TypeError(
            f"context must be a multiprocessing context or a start method name, "
            f"not {type(context).__name__}"
        )
    if method not in ALLOWED_START_METHODS:
        raise ValueError(
            f"hookpool starts workers with 'spawn' (or 'forkserver'), not {method!r}: a "
            f"forked worker inherits the parent's threads and locks in whatever state they "
            f"were in, and primitives made for one start method crash in children of "
            f"another. Pass context=None (spawn) or 'forkserver'."
        )
    if method == "forkserver":
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def available_cpus() -> int:
    """The number of CPUs this process may use (the default number of workers)."""
    process_cpu_count = getattr(os, "process_cpu_count", None)  # 3.13+
    if process_cpu_count is not None:
        count = process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        count = os.cpu_count()
    return count or 1


def check_not_bootstrapping() -> None:
    """Refuse to start a pool while a spawned child is still importing its main module.

    Under spawn each child re-imports the parent's main script; a script that creates a
    pool at import time, without ``if __name__ == "__main__":``, would otherwise have
    every child start a pool of its own, forever.
    """
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        raise RuntimeError(
            "hookpool: a Pool is being created while this process is still starting up as "
            "a worker (it is re-importing the main module). Under the spawn start method "
            "every worker imports your main script, so code that creates a pool must sit "
            'under `if __name__ == "__main__":`.'
        )
