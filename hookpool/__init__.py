"""hookpool: a spawn-based drop-in for ``multiprocessing.Pool`` and
``concurrent.futures.ProcessPoolExecutor``, with real per-worker initializer and finalizer
hooks, remote tracebacks, and pools that neither hang nor lose tasks.

The public names below are imported on first use (PEP 562), so that a spawned worker,
which imports this package to reach ``hookpool._worker``, does not import the manager,
the facades or ``concurrent.futures``.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.context

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing in every worker
if TYPE_CHECKING:
    from typing import Any

    from ._errors import (
        HookpoolError,
        PoolTerminatedError,
        ReentrantCallError,
        RemoteError,
        TaskTimeoutError,
    )
    from ._executor import ProcessPoolExecutor
    from ._identity import WorkerInfo, current_worker
    from ._imap import IMapIterator
    from ._pool import Pool
    from ._results import AsyncResult, MapResult
    from ._std_errors import (
        InitializerError,
        PoolBrokenError,
        RemoteTraceback,
        ResultEncodingError,
        TaskDecodingError,
        WorkerLostError,
    )

__all__ = [
    "AsyncResult",
    "HookpoolError",
    "IMapIterator",
    "InitializerError",
    "MapResult",
    "Pool",
    "PoolBrokenError",
    "PoolTerminatedError",
    "ProcessPoolExecutor",
    "ReentrantCallError",
    "RemoteError",
    "RemoteTraceback",
    "ResultEncodingError",
    "TaskDecodingError",
    "TaskTimeoutError",
    "WorkerInfo",
    "WorkerLostError",
    "current_worker",
    "get_context",
]

__version__ = "0.1.0"

_HOMES = {
    "AsyncResult": "._results",
    "IMapIterator": "._imap",
    "MapResult": "._results",
    "Pool": "._pool",
    "ProcessPoolExecutor": "._executor",
    "WorkerInfo": "._identity",
    "current_worker": "._identity",
    **dict.fromkeys(
        [
            "HookpoolError",
            "PoolTerminatedError",
            "ReentrantCallError",
            "RemoteError",
            "TaskTimeoutError",
        ],
        "._errors",
    ),
    **dict.fromkeys(
        [
            "InitializerError",
            "PoolBrokenError",
            "RemoteTraceback",
            "ResultEncodingError",
            "TaskDecodingError",
            "WorkerLostError",
        ],
        "._std_errors",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hookpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


def get_context() -> multiprocessing.context.SpawnContext:
    """The spawn context hookpool starts workers from: make Locks, Queues and Values
    for ``initargs`` from it, e.g. ``hookpool.get_context().Lock()``."""
    return multiprocessing.get_context("spawn")
