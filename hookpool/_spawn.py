"""The one place where hookpool chooses how, and whether, worker processes are started.

Workers always start from an explicit spawn (or, on request, forkserver) context, never
from the global default start method: a fresh interpreter per worker behaves the same on
every OS, inherits no threads or locks held mid-operation, and receives only what it is
handed (see the seeds: fork + threads deadlocks, fork-made primitives segfault in spawn
children). In inline mode there are none (``_inline``).

This module is light on purpose, as are the facade modules that import it: under spawn
every worker re-imports the user's main script, and with it ``from hookpool import
Pool``. The engine (the manager, ``concurrent.futures``, ``logging``) is imported by
``start_engine`` once a pool's first workers are on their way, not before.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import sys

from . import _memory, _worker
from . import _protocol as wire
from ._hooks import Hooks
from ._records import TYPE_CHECKING, NamedTuple
from ._serialize import SpawnedHooks

if TYPE_CHECKING:
    from ._dialect import Dialect
    from ._engine import Engine

__all__ = [
    "ALLOWED_START_METHODS",
    "CLUSTER_ENV_VAR",
    "ENV_VAR",
    "Spawner",
    "StartedWorker",
    "available_cpus",
    "check_memory_limit",
    "check_not_bootstrapping",
    "check_retries",
    "check_timeout",
    "inline_requested",
    "resolve",
    "start_engine",
]

ALLOWED_START_METHODS = ("spawn", "forkserver")

#: The environment variable that runs pools inline when they do not pass ``inline=``.
ENV_VAR = "HOOKPOOL_INLINE"
#: The environment variable that puts pools on a dask cluster when they do not pass
#: ``cluster=``: a scheduler address, such as ``tcp://10.0.0.5:8786`` (``_cluster``).
CLUSTER_ENV_VAR = "HOOKPOOL_CLUSTER"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_WARNING = 30  # logging.WARNING, the root logger's level until someone sets another

SpawnContext = multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext


def start_engine(
    *,
    inline: bool | None,
    processes: int,
    hooks: Hooks,
    context: SpawnContext,
    maxtasksperchild: int | None,
    dialect: Dialect,
    name: str,
    forward_logging: bool,
    max_memory: int | None = None,
    cluster: object = None,
    local_only: dict[str, object] | None = None,
    on_demand: bool = False,
    max_retries: int = 0,
) -> Engine:
    """The engine behind a facade: a ``ClusterEngine`` on a dask cluster if ``cluster``
    (or ``HOOKPOOL_CLUSTER``) names one, an ``InlineManager`` if inline mode is on (see
    ``inline_requested``), else a ``Manager`` with its worker processes.

    ``local_only``: the arguments a cluster cannot honour, as the caller gave them
    (``_cluster.start_cluster_engine`` refuses them).

    The workers are started first, the manager imported after: a worker takes tens of
    milliseconds to boot, and the parent imports the engine meanwhile instead of before.
    (With forkserver, while the fork server boots: a start waits for that.)
    ``max_memory`` (bytes, ``max_memory_per_child``) is ignored inline, as
    ``maxtasksperchild`` is: there is no worker to retire. ``on_demand`` (the executor):
    one worker now, the others as tasks need them (``Manager``). ``max_retries``: on a
    cluster only (refused here for local and inline pools).
    """
    if cluster is None and inline is not True:  # an explicit inline=True wins over it
        cluster = os.environ.get(CLUSTER_ENV_VAR) or None
    if cluster is not None:
        try:
            from ._cluster import start_cluster_engine
        except ImportError as exc:
            if not (exc.name or "").startswith(("distributed", "dask")):
                raise
            raise ImportError(
                'cluster= needs dask.distributed: pip install "hookpool[dask]"'
            ) from exc
        return start_cluster_engine(
            cluster,
            inline=inline_requested(inline),
            hooks=hooks,
            local_only=local_only or {},
            dialect=dialect,
            name=name,
            forward_logging=forward_logging,
            max_retries=max_retries,
        )
    if max_retries:
        raise ValueError(
            f"max_retries={max_retries} applies to a pool on a dask cluster (cluster=...): "
            f"a local worker that dies fails its task with WorkerLostError, which the "
            f"task's caller can catch to submit it again"
        )
    if inline_requested(inline):
        from ._inline import InlineManager

        return InlineManager(processes=processes, hooks=hooks, dialect=dialect, name=name)
    if max_memory is not None:
        _memory.check_measurable("max_memory_per_child")  # in the caller, before any spawn
    spawner = Spawner(
        context, hooks, pool_name=name, forward_logging=forward_logging, max_memory=max_memory
    )
    if context.get_start_method() == "forkserver":
        # There the first start waits for the fork server to boot (it forks the worker and
        # sends back its pid): start the server, and import the engine while it boots.
        spawner.start_server()
        from . import _manager  # noqa: F401
    started = spawner.start_many(1 if on_demand else processes)
    try:
        from ._manager import Manager

        return Manager(
            processes=processes,
            on_demand=on_demand,
            spawner=spawner,
            started=started,
            maxtasksperchild=maxtasksperchild,
            dialect=dialect,
            max_memory=max_memory,
        )
    except BaseException:
        _kill(started)  # the Manager kills what it adopted; this is for an earlier failure
        raise


class StartedWorker(NamedTuple):
    """A worker process just started, and the parent's end of its duplex pipe."""

    name: str
    process: multiprocessing.process.BaseProcess
    conn: wire.PipeEnd
    #: The parent's descriptor of the worker's ``_workers.StopSlot``.
    stop_fd: int


class Spawner:
    """Starts the worker processes of one pool: the first ones (``start_engine``) and,
    through the manager, every one after.

    The hooks are pickled once, here, in the thread that makes the pool: one that will not
    pickle (say, a Lock made for a fork context in ``initargs``) raises at pool creation.
    """

    def __init__(
        self,
        context: SpawnContext,
        hooks: Hooks,
        *,
        pool_name: str,
        forward_logging: bool,
        max_memory: int | None = None,
    ) -> None:
        self.context = context
        if context.get_start_method() == "forkserver":
            _preload_in_forkserver(context)
        self.hooks = SpawnedHooks(hooks)
        self.pool_name = pool_name
        self.forward_logging = forward_logging
        self.max_memory = max_memory
        self._numbers = itertools.count(1)

    def start(self) -> StartedWorker:
        number = next(self._numbers)
        name = f"{self.pool_name}-worker-{number}"
        # Read at each spawn: a worker's records at levels the parent's root logger would
        # drop are not even sent.
        level = _root_level() if self.forward_logging else None
        from ._workers import StopSlot

        stop_fd = StopSlot.create()
        config = _worker.WorkerConfig(
            number=number,
            name=name,
            log_level=level,
            max_memory=self.max_memory,
            stop_slot=wire.SharedFd(stop_fd),
        )
        try:
            parent_end, child_end = wire.pipe()
        except BaseException:
            os.close(stop_fd)
            raise
        process = self.context.Process(
            target=_worker.main,
            args=(child_end, self.hooks, config),
            name=name,
            daemon=False,
        )
        try:
            process.start()
        except BaseException:
            parent_end.close()
            os.close(stop_fd)
            raise
        finally:
            child_end.close()
        return StartedWorker(name, process, parent_end, stop_fd)

    def start_server(self) -> None:
        """With forkserver: start the fork server if it is not running, without waiting
        for it to boot (``start`` does, the first time)."""
        if self.context.get_start_method() == "forkserver":
            import multiprocessing.forkserver

            multiprocessing.forkserver.ensure_running()

    def start_many(self, count: int) -> list[StartedWorker]:
        """Start ``count`` workers; if one fails to start, kill those already started."""
        started: list[StartedWorker] = []
        try:
            for _ in range(count):
                started.append(self.start())
        except BaseException:
            _kill(started)
            raise
        return started


def inline_requested(inline: bool | None) -> bool:
    """The constructor's ``inline=`` if given, else what ``HOOKPOOL_INLINE`` says.

    Raises:
        ValueError: ``HOOKPOOL_INLINE`` is set to something that is not a yes or a no
            (a typo should not silently spawn processes, or silently not).
    """
    if inline is not None:
        return bool(inline)
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{ENV_VAR}={os.environ[ENV_VAR]!r}: use 1 (run pools inline, in the calling "
        f"thread) or 0 (use worker processes)"
    )


def resolve(context: object, parameter: str = "context") -> SpawnContext:
    """Return the context workers start from: spawn unless a forkserver one is asked for.
    ``parameter``: its name, for the error messages.

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
            f"{parameter} must be a multiprocessing context or a start method name, "
            f"not {type(context).__name__}"
        )
    if method not in ALLOWED_START_METHODS:
        raise ValueError(
            f"hookpool starts workers with 'spawn' (or 'forkserver'), not {method!r}: a "
            f"forked worker inherits the parent's threads and locks in whatever state they "
            f"were in, and primitives made for one start method crash in children of "
            f"another. Pass {parameter}=None (spawn) or 'forkserver'."
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


def check_memory_limit(value: object) -> int | None:
    """``max_memory_per_child`` in bytes: see ``_memory.parse_limit``."""
    return _memory.parse_limit(value, "max_memory_per_child")


def check_retries(max_retries: int) -> int:
    """Validate ``max_retries``: an int, 0 or more."""
    if isinstance(max_retries, bool) or not isinstance(max_retries, int):
        raise TypeError(f"max_retries must be an int, not {type(max_retries).__name__}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be 0 or more, not {max_retries}")
    return max_retries


def check_timeout(timeout: float | None) -> float | None:
    """Validate a ``task_timeout``: None, or a positive number of seconds."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"task_timeout must be a positive number of seconds, not {timeout!r}")
    return timeout


def _preload_in_forkserver(context: SpawnContext) -> None:
    """Have the fork server import the worker's modules once, so that a worker it forks
    has them already instead of importing them at each start (some 3 ms of every worker's
    start, on the critical path of each replacement with ``maxtasksperchild``). Added to
    what the program asked the server to preload (``__main__`` unless it said otherwise);
    a server already running keeps what it preloaded."""
    import multiprocessing.forkserver

    server = multiprocessing.forkserver._forkserver
    preload = list(getattr(server, "_preload_modules", ["__main__"]))
    if _worker.__name__ not in preload:
        context.set_forkserver_preload([*preload, _worker.__name__])


def _root_level() -> int:
    """The effective level of this process's root logger."""
    if "logging" not in sys.modules:  # never imported: nobody set a level yet
        return _WARNING
    import logging

    return logging.getLogger().getEffectiveLevel()


def _kill(started: list[StartedWorker]) -> None:
    for worker in started:
        worker.conn.close()
        with contextlib.suppress(OSError):
            os.close(worker.stop_fd)
        worker.process.kill()
        worker.process.join(5.0)
