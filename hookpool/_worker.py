"""The worker process: its entry point and its loop.

A worker imports only this module, ``_protocol``, ``_serialize``, ``_hooks``,
``_identity`` and ``_errors``: never the manager or the facades.

Life of a worker::

    spawn ──> identity ──> load hooks ──> initializer ──> register Finalize ──> send Ready
                               │              │
                               └── raises ────┴──> send InitFailed, exit
                                                   (no finalizer: none ran)

    loop:  recv Call ──> run ──> send Done | Failed
           recv Stop, pipe closed, or SIGTERM ──> leave the loop

    leave: finalizer (exactly once; errors sent as FinalizerFailed) ──> exit

Signals: SIGINT is ignored (Ctrl-C is the parent's business; workers do not print a
traceback each). SIGTERM (``terminate()``, or the parent-watch thread when the parent
dies) raises ``_StopWorker`` in the main thread, but only while the worker waits for work
or runs a task. Anywhere else (initializer, sending a result, the finalizer) it is
remembered and honoured at the next safe point, so a finalizer is never cut short by it.
"""

from __future__ import annotations

import collections
import enum
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from . import _identity
from . import _protocol as wire
from ._hooks import Hooks
from ._serialize import SpawnedHooks, capture, describe, dumps, loads

__all__ = ["SIGTERM_EXIT_CODE", "WorkerConfig", "main"]

_FUNCTION_CACHE_SIZE = 64
_FINALIZE_PRIORITY = 100  # before multiprocessing's own exit-time finalizers


#: The exit code of a worker that SIGTERM stopped (after running its finalizer), as a
#: shell reports a process killed by that signal: the parent can tell why it left.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


@dataclass(frozen=True)
class WorkerConfig:
    """What the parent tells one worker about itself, at spawn time."""

    index: int
    name: str


class _StopWorker(SystemExit):
    """Raised in the main thread by SIGTERM: leave now, running the finalizer."""


class _Phase(enum.Enum):
    STARTING = "starting"  # not yet initialized: SIGTERM is deferred
    IDLE = "idle"  # waiting for a message: SIGTERM interrupts
    RUNNING = "running"  # inside user task code: SIGTERM interrupts
    BUSY = "busy"  # our own bookkeeping, sending a result: SIGTERM is deferred
    LEAVING = "leaving"  # finalizer: SIGTERM is ignored


def main(conn: Connection, hooks: SpawnedHooks, config: WorkerConfig) -> None:
    """Entry point of a worker process (the target of its ``Process``)."""
    _Worker(conn, config).run(hooks)


class _Worker:
    def __init__(self, conn: Connection, config: WorkerConfig) -> None:
        self.conn = conn
        self.config = config
        self.phase = _Phase.STARTING
        self.stop_requested = False
        self.interrupted = False
        self.functions: dict[bytes, Callable[..., Any]] = {}
        self.skipped: set[int] = set()  # ids of queued tasks cancelled before they started
        self.identity = _identity.enter(config.index, config.name)
        self.send_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def run(self, spawned: SpawnedHooks) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._watch_parent()
        _identity.set_process_title(self.config.name)
        finalizer = self._initialize(spawned)
        if finalizer is None:
            return
        try:
            self._serve()
        except (EOFError, OSError):
            pass  # the parent is gone: leave in an orderly way
        finally:
            self.phase = _Phase.LEAVING
            finalizer()

    def _initialize(self, spawned: SpawnedHooks) -> multiprocessing.util.Finalize | None:
        """Run the initializer; register the finalizer; report Ready or InitFailed."""
        try:
            hooks: Hooks = spawned.load()
            hooks.initialize()
        except BaseException as exc:
            self.phase = _Phase.LEAVING
            self._send(wire.InitFailed(capture(exc, skip_frames=2)))
            return None
        finalizer = multiprocessing.util.Finalize(
            None, self._finalize, (hooks,), exitpriority=_FINALIZE_PRIORITY
        )
        self._send(wire.Ready(os.getpid()))
        return finalizer

    def _finalize(self, hooks: Hooks) -> None:
        """Run the user's finalizer; report an error it raises to the parent."""
        self.phase = _Phase.LEAVING
        try:
            hooks.finalize()
        except BaseException as exc:
            report = capture(exc, skip_frames=2)
            try:
                self._send(wire.FinalizerFailed(os.getpid(), report))
            except Exception:  # the parent is gone: stderr is all that is left
                sys.stderr.write(
                    f"hookpool: the finalizer raised in {multiprocessing.current_process().name}"
                    f" (pid {os.getpid()}):\n{report.traceback_text}"
                )

    # -- the loop ----------------------------------------------------------------------

    def _serve(self) -> None:
        conn = self.conn
        queued: collections.deque[wire.Message] = collections.deque()
        while True:
            if not queued:
                self.phase = _Phase.IDLE
                if self.stop_requested:
                    return
                self._take(wire.recv(conn), queued)
                continue
            if conn.poll():  # read everything sent so far: a Skip may follow its Call
                self._take(wire.recv(conn), queued)
                continue
            self.phase = _Phase.BUSY
            if self.stop_requested:
                return
            message = queued.popleft()
            if type(message) is wire.Call:
                if message.task_id in self.skipped:
                    self.skipped.discard(message.task_id)
                    self._send(wire.Skipped(message.task_id))
                else:
                    self._call(message)
            elif type(message) is wire.Stop:
                return
            else:
                raise TypeError(f"unrecognized wire message: {message!r}")

    def _take(self, messages: list[wire.Message], queued: collections.deque[wire.Message]) -> None:
        for message in messages:
            if type(message) is wire.Skip:
                self.skipped.add(message.task_id)
            else:
                queued.append(message)

    def _call(self, call: wire.Call) -> None:
        try:
            fn = self._function(call.fn)
            args = loads(call.args)
            self.phase = _Phase.RUNNING
            try:
                result = _run(call.kind, fn, args)
            finally:
                self.phase = _Phase.BUSY
            del fn, args
        except _StopWorker:
            raise
        except BaseException as exc:
            leaving = isinstance(exc, SystemExit)
            self._answer(wire.Failed(call.task_id, capture(exc, skip_frames=2), leaving))
            if leaving:
                raise
            return
        try:
            data = dumps(result)
        except BaseException as exc:
            from ._errors import ResultEncodingError

            error = ResultEncodingError(f"{type(exc).__name__}: {exc}", describe(result))
            error.__cause__ = exc
            self._answer(wire.Failed(call.task_id, capture(error)))
            return
        del result
        self._answer(wire.Done(call.task_id, wire.blob(data)))

    def _answer(self, message: wire.Done | wire.Failed) -> None:
        # Counted as the manager counts them (for maxtasksperchild): every answered Call.
        self.identity.tasks_done += 1
        self._send(message)

    def _function(self, data: wire.Blob) -> Callable[..., Any]:
        key = bytes(data)
        fn = self.functions.get(key)
        if fn is None:
            fn = loads(key)
            if len(self.functions) >= _FUNCTION_CACHE_SIZE:
                self.functions.clear()
            self.functions[key] = fn
        return fn

    def _send(self, message: wire.Message) -> None:
        with self.send_lock:
            wire.send(self.conn, [message])

    # -- signals and the parent --------------------------------------------------------

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        if self.phase in (_Phase.IDLE, _Phase.RUNNING) and not self.interrupted:
            self.interrupted = True
            raise _StopWorker(SIGTERM_EXIT_CODE)

    def _watch_parent(self) -> None:
        """Leave when the parent dies, even while a task is running (no orphans)."""
        parent = multiprocessing.parent_process()
        sentinel = getattr(parent, "sentinel", None)
        if sentinel is None:  # pragma: no cover - start methods without a parent sentinel
            return

        def watch() -> None:
            multiprocessing.connection.wait([sentinel])
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="hookpool-parent-watch", daemon=True).start()


def _run(kind: int, fn: Callable[..., Any], args: Any) -> Any:
    if kind == wire.CallKind.APPLY:
        return fn(*args[0], **args[1])
    if kind == wire.CallKind.MAP:
        return list(map(fn, args))
    if kind == wire.CallKind.STARMAP:
        return list(itertools.starmap(fn, args))
    raise TypeError(f"unrecognized call kind: {kind!r}")
