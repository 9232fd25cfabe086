"""Inline mode: the facades' engine with no worker processes, for debugging and tests.

``Pool(..., inline=True)``, ``ProcessPoolExecutor(..., inline=True)``, or the environment
variable ``HOOKPOOL_INLINE=1`` (for pools that do not say ``inline=``) put an
``InlineManager`` behind the facade instead of a ``Manager``. Data flow::

    caller thread (the only thread involved)
    ────────────────────────────────────────
    Pool / ProcessPoolExecutor
      │ serialize fn + args (_serialize.dumps), as in process mode
      │ Task(future) ──> InlineManager.submit ──> _run: loads fn + args
      │                                                │ fn(*args) right here
      │                                                │ result: dumps + loads (as process mode)
      │                                                │ exception: the original object
      │ <── AsyncResult / Future / IMapIterator ───────┘ (already settled)
      ▼
    result, or the task's own exception with the task's own frames

Guarantees:

* The initializer runs once, in the constructor; the finalizer runs once, when the pool
  is closed (``close()``, ``shutdown()``), terminated (``terminate()``, the ``with`` exit),
  garbage collected, or at interpreter exit. ``maxtasksperchild`` is validated and then
  ignored: there is no worker to recycle.
* A task runs in the thread that submitted it, before ``submit`` returns; a lazily fed
  map (``imap``, the executor's ``map``) runs each chunk when the consumer asks for it.
* What process mode pickles is pickled here too (the function, the arguments, the
  result), so a program that works inline does not fail on pickling with processes.
  The exception is not: the caller gets the very object the task raised, its traceback
  starting at the task function, so ``pdb.post_mortem`` lands in the task's frame.
* ``KeyboardInterrupt`` in a task settles its future and propagates at once; tasks after
  it in the same call are cancelled. Every other exception, ``SystemExit`` included, goes
  to the task's future, as in process mode.
* ``task_timeout`` cannot be enforced without a process to stop: the first task that
  carries one raises a ``RuntimeWarning`` (once per pool), then runs to completion.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

from . import _worker
from ._answers import resolve as _resolve
from ._engine import Task, refusal
from ._hooks import Hooks
from ._records import TYPE_CHECKING
from ._serialize import describe, dumps, loads, loads_data
from ._state import PoolState
from ._std_errors import InitializerError

if TYPE_CHECKING:
    from typing import Any

    from ._dialect import Dialect
    from ._engine import Outcome

__all__ = ["InlineManager"]

logger = logging.getLogger("hookpool")

#: Modules whose frames are dropped from the head of a task's traceback.
_OWN_MODULES = frozenset({__name__, _worker.__name__})


class InlineManager:
    """The engine of an inline pool: the ``Engine`` surface of ``Manager``, no processes.

    Thread-safe like ``Manager``: a task runs in whichever thread submits it, outside the
    lock. The one "worker" is the calling process: it leaves (the finalizer runs) once the
    pool is closed or terminated and no task is running in any thread, in the thread that
    made it so. A task running in another thread cannot be interrupted: ``terminate()``
    does not stop it, and ``join()`` waits for it.
    """

    def __init__(
        self,
        *,
        processes: int,
        hooks: Hooks,
        dialect: Dialect,
        name: str = "hookpool",
    ) -> None:
        self._size = processes
        self._hooks = hooks
        self._dialect = dialect
        self._name = name
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # the state or _running changed
        self._state = PoolState.RUNNING
        self._broken_error: BaseException | None = None
        #: Tasks running now, per thread (a task may submit to its own pool).
        self._running: dict[int, int] = {}
        #: Lazy maps still being fed after close() (see Manager.hold).
        self._holds = 0
        #: Invariant: True exactly between a successful initializer and the finalizer.
        self._initialized = False
        self._warned_timeout = False
        try:
            hooks.initialize()
        except Exception as exc:  # as in a worker: the pool breaks, the caller does not
            error = InitializerError(
                f"the initializer raised (inline, in process {os.getpid()}): "
                f"{type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc  # the original object, with the initializer's frames
            self._broken_error = error
            self._state = PoolState.BROKEN
        else:
            self._initialized = True

    # -- the Engine surface --------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        return self._state

    @property
    def size(self) -> int:
        return self._size

    @property
    def inline(self) -> bool:
        return True

    @property
    def remote(self) -> bool:
        return False

    def submit(self, task: Task, *, while_closing: bool = False) -> None:
        """Run ``task`` now, in this thread. Raises if the pool does not accept tasks."""
        self.submit_many([task], while_closing=while_closing)

    def submit_many(self, tasks: list[Task], *, while_closing: bool = False) -> None:
        """Run ``tasks`` now, in order, in this thread; each settles its own future.

        Raises:
            KeyboardInterrupt: from a task; the tasks after it are cancelled.
        """
        me = threading.get_ident()
        with self._lock:
            state = self._state
            if not state.accepts(while_closing=while_closing):
                raise self._refusal(state)
            self._running[me] = self._running.get(me, 0) + 1
        try:
            if not self._warned_timeout and any(t.timeout is not None for t in tasks):
                self._warned_timeout = True
                warnings.warn(
                    "hookpool inline mode cannot enforce task_timeout: there is no worker "
                    "process to stop, so tasks run to completion in the calling thread",
                    RuntimeWarning,
                    stacklevel=_caller_stacklevel(),
                )
            for position, task in enumerate(tasks):
                try:
                    _run(task, self._dialect)
                except KeyboardInterrupt:
                    for later in tasks[position + 1 :]:
                        later.future.cancel()
                    raise
        finally:
            with self._lock:
                if self._running[me] == 1:
                    del self._running[me]
                else:
                    self._running[me] -= 1
                leave = not self._running and not self._holds and self._state in _LEAVING
            if leave:
                self._leave()

    def check_running(self) -> None:
        state = self._state
        if state is not PoolState.RUNNING:
            raise self._refusal(state)

    def close(self) -> None:
        """No new tasks. Nothing is ever queued, so the "worker" leaves (the finalizer
        runs) now, or when the tasks running in other threads finish."""
        self._stop(PoolState.CLOSING)

    def terminate(self, *, kill: bool = False) -> None:
        """As ``close()``: a task running in another thread cannot be interrupted (so
        ``kill`` changes nothing either)."""
        self._stop(PoolState.TERMINATING)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the finalizer has run (after ``close()`` or ``terminate()``); True
        if it has."""
        with self._lock:
            if threading.get_ident() in self._running:
                raise RuntimeError("cannot join an inline pool from one of its own tasks")
            return self._changed.wait_for(lambda: self._state.is_final, timeout)

    def hold(self) -> None:
        """While closing, do not leave until ``release()``: more tasks are coming."""
        with self._lock:
            self._holds += 1

    def release(self) -> None:
        with self._lock:
            self._holds -= 1
            leave = not self._running and not self._holds and self._state in _LEAVING
        if leave:
            self._leave()

    def cancel(self, future: Outcome) -> bool:
        """A task has finished by the time its future is handed out, or runs in another
        thread, where it cannot be stopped: False, unless it never started."""
        return future.cancel()

    def cancel_queued(self) -> None:
        """Nothing is ever queued."""

    def worker_pids(self) -> list[int]:
        """This process, while the initializer has run and the finalizer has not."""
        return [os.getpid()] if self._initialized else []

    def processes(self) -> list[BaseProcess]:
        """No worker processes."""
        return []

    def call_soon(self, callback: Callable[[], None]) -> None:
        """At once: inline, callbacks run in the caller's thread."""
        callback()

    # -- internals -----------------------------------------------------------------------

    def _stop(self, via: PoolState) -> None:
        with self._lock:
            if not self._state.can_become(via):
                return  # already stopping, or stopped, or broken
            self._state = via
            leave = not self._running and not self._holds
        if leave:
            self._leave()

    def _leave(self) -> None:
        """The "worker" leaves: run the finalizer (exactly once), then STOPPED."""
        with self._lock:
            finalize, self._initialized = self._initialized, False
        if not finalize:
            return  # another thread is running the finalizer; it sets STOPPED
        try:
            self._hooks.finalize()
        except Exception:
            # As from a worker: logged, not raised; close() and terminate() still succeed.
            logger.exception("hookpool: the finalizer raised (inline, in %s)", self._name)
        finally:
            with self._lock:
                if not self._state.is_final:
                    self._state = PoolState.STOPPED
                self._changed.notify_all()

    def _refusal(self, state: PoolState) -> Exception:
        return refusal(state, self._name, self._broken_error, self._dialect)


_LEAVING = (PoolState.CLOSING, PoolState.TERMINATING)


def _run(task: Task, dialect: Dialect) -> None:
    """Run one task here and settle its future, as a worker and the manager would."""
    if not task.future.set_running_or_notify_cancel():
        return  # cancelled before it ran
    try:
        value = _worker._run(task.kind, loads(task.fn), loads_data(task.args, task.buffers))
    except KeyboardInterrupt as exc:
        _resolve(task.future, error=exc)
        raise
    except BaseException as exc:  # SystemExit too: it fails this task, as in a worker
        _resolve(task.future, error=_from_task_frames(exc))
        return
    value, error = _as_received(value, task, dialect)
    _resolve(task.future, value=value, error=error)


def _from_task_frames(exc: BaseException) -> BaseException:
    """``exc`` itself, its traceback starting at the first frame that is not hookpool's
    (the task function), as a worker's traceback starts there."""
    tb = exc.__traceback__
    while (
        tb is not None
        and tb.tb_next is not None
        and tb.tb_frame.f_globals.get("__name__") in _OWN_MODULES
    ):
        tb = tb.tb_next
    return exc.with_traceback(tb)


def _as_received(value: Any, task: Task, dialect: Dialect) -> tuple[Any, BaseException | None]:
    """The result as the caller would get it from a worker, pickled, then unpickled; or
    the error either step fails with, as it would with a worker."""
    try:
        data = dumps(value)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        return None, dialect.unpicklable_result(
            exc, reason, describe(value), task.describe(), "(inline: this process)"
        )
    try:
        return loads(data), None
    except Exception as exc:
        return None, dialect.undecodable_result(exc, task.describe(), "(inline: this process)")


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside hookpool, for ``warnings.warn``
    called by this function's caller."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and _is_ours(frame):
        frame = frame.f_back
        level += 1
    return level


def _is_ours(frame: FrameType) -> bool:
    module = frame.f_globals.get("__name__", "")
    return isinstance(module, str) and (module == "hookpool" or module.startswith("hookpool."))
