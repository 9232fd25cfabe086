"""Which worker is this? ``current_worker()``, and the worker's OS process title.

Imported by the worker (``_worker`` sets the identity before the initializer runs) and,
through ``hookpool.current_worker``, by user code anywhere: in the parent it answers
``None``. Light on purpose: a worker imports it on every start.
"""

from __future__ import annotations

import contextlib
import os

__all__ = [
    "LEAVING_REASONS",
    "Identity",
    "WorkerInfo",
    "current_worker",
    "enter",
    "set_process_title",
]


class WorkerInfo:
    """The worker a task (or the initializer, or the finalizer) is running in.

    Attributes:
        index: the worker's number in its pool, from 1; a replacement worker gets the
            next number, so indexes are never reused within a pool.
        name: the worker's name, e.g. ``hookpool-worker-3`` (``hookpool-executor-worker-3``
            for a ``ProcessPoolExecutor``): its ``multiprocessing`` process name, the
            ``processName`` of its log records, and its OS process title when
            ``setproctitle`` is installed.
        pid: the worker's process id.
        tasks_done: tasks this worker answered before now: ``0`` in the initializer and in
            the first task. A chunk of a map counts as one task, as for
            ``maxtasksperchild``; a task cancelled before it started does not count.
        memory: the worker's resident memory in bytes as it last measured it, with a
            ``max_memory_per_child`` limit (after its initializer, then after each task);
            ``None`` without a limit, and in the initializer.
        leaving: why the worker is leaving, once it is (in the finalizer); ``None``
            while it serves. One of ``LEAVING_REASONS``: ``"close"`` (the pool closed
            or shut down and has no more work), ``"maxtasksperchild"``,
            ``"max_memory_per_child"`` (its memory was above the limit after a task),
            ``"stopped"`` (SIGTERM: ``terminate()``, the ``with`` exit of a ``Pool``, a
            task timeout or cancel, or a signal from outside), ``"system_exit"`` (a task
            raised ``SystemExit``), ``"parent_exited"`` (the parent process is gone).
    """

    __slots__ = ("index", "leaving", "memory", "name", "pid", "tasks_done")
    _FIELDS = ("index", "name", "pid", "tasks_done", "memory", "leaving")  # in order

    index: int
    name: str
    pid: int
    tasks_done: int
    memory: int | None
    leaving: str | None

    def __init__(
        self,
        index: int,
        name: str,
        pid: int,
        tasks_done: int,
        memory: int | None = None,
        leaving: str | None = None,
    ) -> None:
        # A plain class, not a dataclass: a worker imports this module at start, and
        # dataclasses imports inspect and ast.
        values = (index, name, pid, tasks_done, memory, leaving)
        for field, value in zip(self._FIELDS, values, strict=True):
            object.__setattr__(self, field, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"WorkerInfo is read-only: cannot set {name!r}")

    def _values(self) -> tuple[int, str, int, int, int | None, str | None]:
        return (self.index, self.name, self.pid, self.tasks_done, self.memory, self.leaving)

    def __reduce__(
        self,
    ) -> tuple[type[WorkerInfo], tuple[int, str, int, int, int | None, str | None]]:
        return (WorkerInfo, self._values())

    def __eq__(self, other: object) -> bool:
        if type(other) is not WorkerInfo:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return (
            f"WorkerInfo(index={self.index}, name={self.name!r}, pid={self.pid}, "
            f"tasks_done={self.tasks_done}, memory={self.memory}, leaving={self.leaving!r})"
        )


#: The values of ``WorkerInfo.leaving``.
LEAVING_REASONS = (
    "close",
    "maxtasksperchild",
    "max_memory_per_child",
    "stopped",
    "system_exit",
    "parent_exited",
)


class Identity:
    """The worker's own record of who it is (mutable: the worker counts its tasks)."""

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.pid = os.getpid()
        self.tasks_done = 0
        self.memory: int | None = None
        self.leaving: str | None = None

    def leave(self, reason: str) -> None:
        """Record why the worker leaves: the first reason it learns stays (a worker over
        its memory limit that then gets a Stop, or SIGTERM, still left for its memory)."""
        if self.leaving is None:
            self.leaving = reason


_current: Identity | None = None


def enter(index: int, name: str) -> Identity:
    """Called once by the worker, before the initializer: this process is that worker."""
    global _current
    _current = Identity(index, name)
    return _current


def current_worker() -> WorkerInfo | None:
    """The hookpool worker this code runs in, or ``None`` outside one.

    Works in a task, in the initializer and finalizer, and in threads they start. Outside
    a worker — in the parent, or in a process that a task itself starts — it returns
    ``None`` rather than raising, so code shared between the parent and the workers can
    branch on it (as ``multiprocessing.parent_process()`` returns ``None`` in the main
    process).

    Returns:
        A snapshot: ``tasks_done``, ``memory`` and ``leaving`` do not change in a
        ``WorkerInfo`` already returned.
    """
    me = _current
    if me is None or me.pid != os.getpid():  # a process forked by a task is not the worker
        return None
    return WorkerInfo(me.index, me.name, me.pid, me.tasks_done, me.memory, me.leaving)


def set_process_title(title: str) -> None:
    """Set the OS process title (``ps``, ``top``) when ``setproctitle`` is installed.

    ``setproctitle`` is optional and never a dependency: without it, only the
    ``multiprocessing`` process name is set (by the parent, when it spawns the worker).
    """
    try:
        import setproctitle  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    with contextlib.suppress(Exception):  # a broken install must not stop the worker
        setproctitle.setproctitle(title)
