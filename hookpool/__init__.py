"""hookpool: a spawn-based drop-in for ``multiprocessing.Pool`` and
``concurrent.futures.ProcessPoolExecutor``, with real per-worker initializer and finalizer
hooks, remote tracebacks, and pools that neither hang nor lose tasks.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context

from ._errors import (
    HookpoolError,
    InitializerError,
    PoolBrokenError,
    PoolTerminatedError,
    RemoteError,
    RemoteTraceback,
    ResultEncodingError,
    TaskTimeoutError,
    WorkerLostError,
)
from ._executor import ProcessPoolExecutor
from ._pool import Pool
from ._results import AsyncResult, IMapIterator, MapResult

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
    "RemoteError",
    "RemoteTraceback",
    "ResultEncodingError",
    "TaskTimeoutError",
    "WorkerLostError",
    "get_context",
]

__version__ = "0.1.0"


def get_context() -> multiprocessing.context.BaseContext:
    """The spawn context hookpool starts workers from: make Locks, Queues and Values
    for ``initargs`` from it, e.g. ``hookpool.get_context().Lock()``."""
    return multiprocessing.get_context("spawn")
