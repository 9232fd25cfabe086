"""The engine's surface: what the facades hand to it (``Task``) and what they may call on
it (``Engine``), apart from how it runs.

Data flow::

    caller → facade (Pool / ProcessPoolExecutor) → _calls: pickle, make a Task
           → Engine.submit ──> _manager.Manager: the manager thread and its workers
                               (_fastpath: straight to an idle worker and back)
                          ──> _inline.InlineManager: in the caller's thread
                          ──> _cluster.ClusterEngine: a dask cluster's workers
           ← Outcome settled (a Future, an ApplyOutcome, a map chunk's slot)

Three engines provide ``Engine``: ``_manager.Manager`` (worker processes),
``_inline.InlineManager`` (no processes; for debugging) and ``_cluster.ClusterEngine``
(a dask.distributed cluster's workers). This module imports none of them.
"""

from __future__ import annotations

from . import _protocol as wire
from ._records import TYPE_CHECKING
from ._state import PoolState

if TYPE_CHECKING:  # for type checkers only: typing is not imported at run time
    from collections.abc import Callable
    from multiprocessing.process import BaseProcess
    from typing import Any, Protocol

    from ._dialect import Dialect

    class Outcome(Protocol):
        """What the engine needs of a task's future: a ``concurrent.futures.Future`` is
        one; ``_results.ApplyOutcome`` and a map chunk's ``_results.ChunkSlot`` too."""

        def set_running_or_notify_cancel(self) -> bool: ...
        def set_result(self, result: Any) -> None: ...
        def set_exception(self, exception: BaseException | None) -> None: ...
        def cancel(self) -> bool: ...
        def done(self) -> bool: ...

    class DirectOutcome(Outcome, Protocol):
        """An outcome whose waiting thread may read the answer from the worker itself
        (``_fastpath``): ``_results.ApplyOutcome`` without callbacks."""

        def offer_direct_read(self, read: Callable[[float | None], None]) -> None:
            """The task went straight to an idle worker: a thread waiting for it may
            call ``read(timeout)``, which returns once the task is settled or once
            reading there ends (the manager took the worker back)."""
            ...

        def settle_here(self, value: Any, error: BaseException | None) -> bool:
            """Settle from the thread that read the answer; False if it must be settled
            on the manager thread after all (a Future made for it since has callbacks)."""
            ...

        def complete_settling(self) -> None:
            """Finish a ``settle_here`` that a signal handler cut short."""
            ...

    class Engine(Protocol):
        """What the facades and ``_calls`` may use."""

        @property
        def state(self) -> PoolState: ...

        @property
        def size(self) -> int: ...

        @property
        def inline(self) -> bool:
            """True for ``InlineManager``: tasks run in the caller's thread, in ``submit``."""
            ...

        @property
        def remote(self) -> bool:
            """True for ``ClusterEngine``: the workers never import the caller's
            ``__main__``, so what it defines is pickled by value."""
            ...

        def submit(self, task: Task, *, while_closing: bool = False) -> None: ...

        def submit_many(self, tasks: list[Task], *, while_closing: bool = False) -> None: ...

        def check_running(self) -> None: ...

        def close(self) -> None: ...

        def hold(self) -> None:
            """While closing, keep serving until ``release()``: more tasks are coming."""
            ...

        def release(self) -> None: ...

        def cancel(self, future: Outcome) -> bool:
            """Cancel a task: one that has not started never runs (True); a running one
            is interrupted, its worker replaced (True); one that finished first keeps its
            result (False). Waits until it knows which."""
            ...

        def cancel_queued(self) -> None: ...

        def terminate(self, *, kill: bool = False) -> None:
            """Stop: queued tasks are cancelled, running ones fail. ``kill``: SIGKILL the
            workers at once (no finalizer), instead of giving each a grace period."""
            ...

        def join(self, timeout: float | None = None) -> bool: ...

        def worker_pids(self) -> list[int]: ...

        def processes(self) -> list[BaseProcess]:
            """The current workers' process objects (none inline)."""
            ...

        def call_soon(self, callback: Callable[[], None]) -> None:
            """Run ``callback`` on the manager thread, where the standard library's result
            thread would run it (a task's callbacks); at once if that thread has ended."""
            ...


__all__ = ["Task", "refusal"]


class Task:
    """One unit of work, parent side: owns the Future and the pickled call.

    A plain class (as ``WorkerHandle``), not a dataclass: a user's script that imports
    hookpool is re-imported by every spawned worker, and dataclasses imports inspect.
    """

    __slots__ = (
        "answer",
        "args",
        "buffers",
        "cancel",
        "charged",
        "claimed",
        "direct",
        "fn",
        "fn_name",
        "future",
        "items",
        "kind",
        "task_id",
        "timed_out",
        "timeout",
        "wire_size",
    )

    def __init__(
        self,
        kind: wire.CallKind,
        fn: bytes,
        args: bytes,
        future: Outcome,
        fn_name: str,
        items: tuple[int, int, str] | None = None,
        timeout: float | None = None,
        buffers: tuple[Any, ...] = (),
        direct: DirectOutcome | None = None,
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.args = args
        self.future = future
        self.fn_name = fn_name
        #: For a chunk of a map: (index of its first item, number of items, method name).
        self.items = items
        #: Seconds the task may run before its worker is stopped (None: no limit).
        self.timeout = timeout
        #: The large buffers ``args`` refers to, sent out of band (``_serialize.dumps_data``).
        self.buffers = buffers
        #: ``future`` again, if a thread waiting for it may read its answer itself.
        self.direct = direct
        self.task_id = 0
        #: set_running_or_notify_cancel() has been called (the task cannot be cancelled).
        self.claimed = False
        #: A cancel() of it while it runs, waiting to learn how it ended (see Manager).
        self.cancel: CancelRequest | None = None
        #: It ran past ``timeout``: its worker was asked to stop it.
        self.timed_out = False
        #: Its answer, once read by a thread waiting for it (``_fastpath``): whoever
        #: settles the task next settles it from this.
        self.answer: wire.Done | wire.Failed | None = None
        #: Bytes its arguments take on the way to a worker (its function goes to each
        #: worker once: see WorkerHandle.cost).
        self.wire_size = len(args)
        if buffers:
            self.wire_size += sum(buffer.raw().nbytes for buffer in buffers)
        #: What ``WorkerHandle.push`` counted in ``inflight_bytes`` for it.
        self.charged = 0

    def __repr__(self) -> str:
        return f"<Task {self.task_id}: {self.describe()}>"

    def describe(self) -> str:
        if self.items is None:
            return f"task {self.fn_name}()"
        first, count, method = self.items
        where = f"item {first}" if count == 1 else f"items {first}-{first + count - 1}"
        return f"{where} of {method}({self.fn_name}, ...)"


class CancelRequest:
    """A ``cancel()`` of a task that a worker may be running: the manager settles it once
    it knows whether the task was stopped in time (``cancelled``) or had finished."""

    __slots__ = ("cancelled", "done")

    def __init__(self, done: Any) -> None:
        #: A ``threading.Event``, set once the outcome is known.
        self.done = done
        self.cancelled = False


def refusal(
    state: PoolState,
    name: str,
    broken_error: BaseException | None,
    dialect: Dialect,
) -> Exception:
    """What submitting to an engine in ``state`` (not RUNNING) raises."""
    if state is PoolState.BROKEN:
        from ._std_errors import PoolBrokenError

        error = PoolBrokenError(f"the pool ({name}) is broken and cannot run tasks: {broken_error}")
        error.__cause__ = broken_error
        return error
    return dialect.closed_error()
