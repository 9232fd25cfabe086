"""The worker process: its entry point and its loop.

A worker imports only this module, ``_protocol``, ``_serialize``, ``_hooks``,
``_identity``, ``_memory``, ``_errors`` and, once its code uses logging or shows a
warning, ``_logs`` (and ``logging``): never the manager or the facades.

Life of a worker::

    spawn ──> identity, log forwarding (*) ──> load hooks ──> initializer ──> register Finalize
                                                   │              │           ──> send Ready
                                                   │              │               (or Retiring (**))
                                                   └── raises ────┴──> send InitFailed, exit
                                                                      (no finalizer: none ran)

    loop:  recv Call ──> run ──> send Done | Failed ──> measure memory (**)(***)
                                                          └── over the limit: send Retiring;
                                                              drop every Call from then on
           recv Stop, pipe closed, or SIGTERM ──> leave the loop

    leave: finalizer (exactly once; errors sent as FinalizerFailed) ──> exit

    any time, from any thread (initializer, tasks, their threads, finalizer):
           a log record or warning ──> send Log

    (*) installed as ``logging`` is first imported, or on the first warning
    (**) only with ``max_memory_per_child``: the resident set, from ``/proc/self/statm``
    (***) if ``MEMORY_CHECK_SECONDS`` have passed since the last measurement

Sending: every message goes through ``_Worker._send``, one whole message at a time under
``send_lock``, from whichever thread produced it. Log records make it re-entrant: a signal
handler (or a ``__del__``) that logs can run in the main thread while that thread is in
the middle of writing a message. So the lock is an RLock, and a message sent by the thread
that is already writing is queued and written right after the current one (never into the
middle of it, never waiting on itself).

Signals: SIGINT is ignored (Ctrl-C is the parent's business; workers do not print a
traceback each). SIGTERM (``terminate()``, or the parent-watch thread when the parent
dies) raises ``_StopWorker`` in the main thread, but only while the worker waits for work
or runs a task, and not while that thread is writing a message (a task that logs): a
frame cut in half would garble everything sent after it; the stop is raised as soon as
the write ends. Anywhere else (initializer, sending a result, the finalizer) it is
remembered and honoured at the next safe point, so a finalizer is never cut short by it.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import multiprocessing
import multiprocessing.util
import os
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from types import FrameType

from . import _identity
from . import _protocol as wire
from ._hooks import Hooks
from ._memory import ResidentMemory
from ._records import TYPE_CHECKING, NamedTuple
from ._serialize import SpawnedHooks, capture, describe, dumps_data, loads, loads_data

if TYPE_CHECKING:
    from typing import Any

__all__ = ["SIGTERM_EXIT_CODE", "WorkerConfig", "main"]

_FINALIZE_PRIORITY = 100  # before multiprocessing's own exit-time finalizers


#: The exit code of a worker that SIGTERM stopped (after running its finalizer), as a
#: shell reports a process killed by that signal: the parent can tell why it left.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
#: The signal of a stop aimed at one task (cancel, timeout): the worker stops the task
#: named in its stop slot if that is the one it runs (``_workers.StopSlot``). Not SIGTERM,
#: which stops whatever runs (terminate, or someone outside); a real-time signal where
#: there are some, which user code hardly ever uses.
STOP_SIGNAL = signal.SIGRTMIN + 1 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR1
#: After the parent died, how long the worker has to finish its finalizer (as long as
#: ``terminate()`` gives it) before it exits regardless.
ORPHAN_GRACE_SECONDS = 5.0
#: With ``max_memory_per_child``, a worker measures itself after a task only if this
#: long has passed since it last did: one measurement (a system call, ~2 us) after every
#: task would cost a trivial task a fifth of its time in the worker; a clock read costs
#: a fiftieth of that. Memory grows only as fast as pages are touched, some GiB/s at
#: most, so between two measurements a worker grows by a few MiB, tens at worst; and a
#: task that runs this long or longer is always measured right after.
MEMORY_CHECK_SECONDS = 0.001


class WorkerConfig(NamedTuple):
    """What the parent tells one worker about itself, at spawn time."""

    number: int  # its index in the pool, from 1
    name: str
    #: The worker's root logger level (the parent root's effective level at spawn time),
    #: or None: do not forward logging and warnings to the parent.
    log_level: int | None
    #: ``max_memory_per_child`` in bytes, or None: do not measure.
    max_memory: int | None = None
    #: Which task a ``STOP_SIGNAL`` is for (``_workers.StopSlot``).
    stop_slot: wire.SharedFd | None = None


class _StopWorker(SystemExit):
    """Raised in the main thread by SIGTERM: leave now, running the finalizer."""


class _Phase(enum.Enum):
    STARTING = "starting"  # not yet initialized: SIGTERM is deferred
    IDLE = "idle"  # waiting for a message: SIGTERM interrupts
    RUNNING = "running"  # inside user task code: SIGTERM interrupts
    BUSY = "busy"  # our own bookkeeping, sending a result: SIGTERM is deferred
    LEAVING = "leaving"  # finalizer: SIGTERM is ignored


def main(conn: wire.PipeEnd, hooks: SpawnedHooks, config: WorkerConfig) -> None:
    """Entry point of a worker process (the target of its ``Process``)."""
    _Worker(conn, config).run(hooks)


class _Worker:
    def __init__(self, conn: wire.PipeEnd, config: WorkerConfig) -> None:
        self.conn = conn
        self.config = config
        self.phase = _Phase.STARTING
        self.stop_requested = False
        self.interrupted = False
        # The functions the manager sent, by id: unpickled on first use (function_data
        # until then: a function that fails to unpickle fails each of its tasks alike).
        self.functions: dict[int, Callable[..., Any]] = {}
        self.function_data: dict[int, bytes] = {}
        self.skipped: set[int] = set()  # ids of queued tasks cancelled before they started
        self.identity = _identity.enter(config.number, config.name)
        #: Measures the resident set after each task, with a max_memory_per_child.
        self.memory: ResidentMemory | None = None
        #: Sent Retiring: runs no more tasks, waits for Stop (see wire.Retiring).
        self.retired = False
        self.next_measure = 0.0  # monotonic time: see MEMORY_CHECK_SECONDS
        # Invariant: ``writer`` is the ident of the thread writing a message, set only
        # while it holds ``send_lock``; ``queued_sends`` holds what that same thread sent
        # while it was writing (see _send).
        self.send_lock = threading.RLock()
        self.writer: int | None = None
        self.queued_sends: collections.deque[wire.Message] = collections.deque()
        self.stop_after_write = False  # SIGTERM arrived while the main thread was writing
        # The task the main thread runs (from before it unpickles it until it answered),
        # and one a stop (STOP_SIGNAL) was aimed at before it started: it is skipped.
        self.current_task = 0
        self.skip_target = 0
        self.aimed_stop = 0  # a stop aimed at the current task, while it is unpickled
        self.stop_slot = -1 if config.stop_slot is None else config.stop_slot.fd

    # -- lifecycle ---------------------------------------------------------------------

    def run(self, spawned: SpawnedHooks) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(STOP_SIGNAL, self._on_aimed_stop)
        self._watch_parent()
        _identity.set_process_title(self.config.name)
        if self.config.max_memory is not None:
            self.memory = ResidentMemory()
        finalizer = self._initialize(spawned)
        if finalizer is None:
            return
        try:
            self._serve()
        except (EOFError, OSError):
            self.identity.leave("parent_exited")  # leave in an orderly way
        finally:
            self.phase = _Phase.LEAVING
            finalizer()

    def _initialize(self, spawned: SpawnedHooks) -> multiprocessing.util.Finalize | None:
        """Run the initializer; register the finalizer; report Ready or InitFailed."""
        unpickling = False
        try:
            if self.config.log_level is not None:
                _ForwardLogging(self._send, self.config.log_level).when_used()
            unpickling = True
            hooks: Hooks = spawned.load()
            unpickling = False
            hooks.initialize()
        except BaseException as exc:
            self.phase = _Phase.LEAVING
            with contextlib.suppress(OSError, EOFError):  # the parent may be gone already
                self._send(wire.InitFailed(capture(exc, skip_frames=2), unpickling))
            return None
        finalizer = multiprocessing.util.Finalize(
            None, self._finalize, (hooks,), exitpriority=_FINALIZE_PRIORITY
        )
        # Over the memory limit already: not Ready but Retiring. The manager reports it
        # (a replacement would be as big) and the worker waits in _serve to be stopped.
        rss = self._measure()
        with contextlib.suppress(OSError, EOFError):
            # If the parent is gone, _serve meets the closed pipe and the worker leaves,
            # running the finalizer, without a traceback for the user.
            if not self._retire_if_over(rss):
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
        inbox = wire.Inbox(self.conn)
        readable = select.poll()  # one poller for the life of the worker: poll(0) is cheap
        readable.register(self.conn.fileno(), select.POLLIN)
        queued: collections.deque[wire.Message] = collections.deque()
        while True:
            if not queued:
                self.phase = _Phase.IDLE
                if self.stop_requested:
                    return
                # Wait in poll(), not in read(): a read sleeping on the socket is also
                # woken each time the parent reads an answer this worker wrote (the
                # socket's room to write grew), a wake-up that costs the reading parent
                # an interrupt to this worker's CPU; poll() is woken only for input.
                readable.poll()
                self._take(inbox.recv(), queued)
                continue
            if readable.poll(0):  # read everything sent so far: a Skip may follow its Call
                self._take(inbox.recv(), queued)
                continue
            self.phase = _Phase.BUSY
            if self.stop_requested:
                return
            message = queued.popleft()
            if type(message) is wire.Call:
                if self.retired:
                    continue  # not run, not answered: the manager puts it back in its queue
                # First the current task, then the skip target: a stop aimed at this task
                # in between sees it as current (and stops it), or set the target.
                skip = message.task_id in self.skipped
                if not skip:
                    self.current_task = message.task_id
                    skip = message.task_id == self.skip_target
                if skip:
                    self.current_task = 0
                    self.skipped.discard(message.task_id)
                    if not isinstance(message.fn, int):  # later calls refer to it
                        self._define(message.fn)
                    self._send(wire.Skipped(message.task_id))
                else:
                    self._call(message)
                    if self.memory is not None and time.monotonic() >= self.next_measure:
                        del message  # the task's arguments do not count either
                        self._retire_if_over(self._measure())
            elif type(message) is wire.Stop:
                self.identity.leave(message.reason)
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
        stage = wire.Stage.FUNCTION
        try:
            fn = self._function(call.fn)
            stage = wire.Stage.ARGS
            args = loads_data(call.args, call.buffers)
            stage = wire.Stage.RUN
            self.phase = _Phase.RUNNING
            # A SIGTERM that came while this was BUSY unpickling (deferred) stops it now,
            # before the task: the handler sets the flag first, then looks at the phase.
            if self.stop_requested or self.aimed_stop == call.task_id:
                self._honour_stop()
            try:
                result = _run(call.kind, fn, args)
            finally:
                self.phase = _Phase.BUSY
            del fn, args
        except _StopWorker:
            # Stopped in the middle of it: say so, so that the manager can settle it now
            # (the finalizer may take a while), then leave.
            with contextlib.suppress(OSError, EOFError):
                self._send(wire.Interrupted(call.task_id))
            raise
        except BaseException as exc:
            # A SystemExit, from the task or from unpickling it: the worker leaves (its
            # finalizer runs) after answering.
            leaving = isinstance(exc, SystemExit)
            if leaving:
                self.identity.leave("system_exit")
            skip = 2 if stage is wire.Stage.RUN else 1  # from the function's own frame
            self._answer(wire.Failed(call.task_id, capture(exc, skip_frames=skip), leaving, stage))
            if leaving:
                raise
            return
        try:
            data, buffers = dumps_data(result, snapshot=False)
        except BaseException as exc:  # even a SystemExit: the task is answered, with it
            stage, shown = wire.Stage.RESULT, describe(result)
            self._answer(wire.Failed(call.task_id, capture(exc), False, stage, shown))
            return
        del result
        self._answer(wire.Done(call.task_id, wire.blob(data), buffers))

    def _answer(self, message: wire.Done | wire.Failed) -> None:
        # Counted as the manager counts them (for maxtasksperchild): every answered Call.
        self.identity.tasks_done += 1
        # Answered: a stop aimed at it from now on comes too late, and stops nothing.
        self.current_task = 0
        self._send(message)

    def _measure(self) -> int | None:
        """With ``max_memory_per_child``, the resident set now: after the initializer, then
        after a task once its answer was sent and its result dropped (a large result on
        its way out does not count), at most once per ``MEMORY_CHECK_SECONDS``."""
        if self.memory is None:
            return None
        self.identity.memory = rss = self.memory.read()
        self.next_measure = time.monotonic() + MEMORY_CHECK_SECONDS
        return rss

    def _retire_if_over(self, rss: int | None) -> bool:
        """Above the limit, retire: send Retiring and run no more tasks (``_serve``). The
        parent then stops this worker as it stops one recycled by ``maxtasksperchild``:
        with Stop, and the finalizer runs to the end."""
        limit = self.config.max_memory
        if rss is None or limit is None or rss <= limit:
            return False
        self.identity.leave("max_memory_per_child")
        self.retired = True
        self._send(wire.Retiring(rss))
        return True

    def _function(self, ref: int | wire.FunctionDef) -> Callable[..., Any]:
        fn_id = ref if isinstance(ref, int) else self._define(ref)
        fn = self.functions.get(fn_id)
        if fn is None:
            fn = self.functions[fn_id] = loads(self.function_data[fn_id])
            del self.function_data[fn_id]
        return fn

    def _define(self, definition: wire.FunctionDef) -> int:
        fn_id, data, forget_others = definition
        if forget_others:  # the manager keeps the table of each worker bounded
            self.functions.clear()
            self.function_data.clear()
        self.function_data[fn_id] = data
        return fn_id

    def _send(self, message: wire.Message) -> None:
        """Write one message, whole, from any thread; see the module docstring. A task's
        answer goes at once: holding it back to batch it with the next one would delay it
        by however long the next task runs.

        Guarantees: never waits on itself (a re-entrant call from the thread that is
        writing queues its message instead), and never interleaves two messages' bytes.
        """
        me = threading.get_ident()
        try:
            with self.send_lock:
                if self.writer == me:  # re-entered mid-write (a signal handler that logs)
                    self.queued_sends.append(message)
                    return
                self.writer = me
                try:
                    wire.send(self.conn, [message])
                    while True:
                        while self.queued_sends:
                            wire.send(self.conn, [self.queued_sends.popleft()])
                        self.writer = None  # from here a re-entrant call writes itself...
                        if not self.queued_sends:  # ...or queued just before: send it
                            break
                        self.writer = me
                finally:
                    self.writer = None
        finally:
            # A SIGTERM deferred by this write (main thread only, see _on_sigterm) is
            # raised now, even if the write failed; not from a nested call: that one
            # is still inside the outer write.
            if self.stop_after_write and self.writer != me and _in_main_thread():
                self.stop_after_write = False
                self._honour_stop()

    # -- signals and the parent --------------------------------------------------------

    def _on_aimed_stop(self, signum: int, frame: FrameType | None) -> None:
        target = self._stop_target()
        if target != self.current_task:
            # Aimed at a task this worker has finished, or not started yet (then it is
            # skipped when it comes): not a stop of this one.
            self.skip_target = target
            return
        # Aimed at the task this worker has: it stops that task if it runs it now, or
        # before it starts it (unpickling it: see _call); once it has run, too late.
        self.aimed_stop = target
        if self.writer == threading.get_ident():
            self.stop_after_write = True  # raising now would cut a frame in half
            return
        self._honour_stop()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self.identity.leave("stopped")
        if self.writer == threading.get_ident():
            self.stop_after_write = True  # raising now would cut a frame in half
            return
        self._honour_stop()

    def _stop_target(self) -> int:
        """The task an aimed stop is for (0: none, never a task's id)."""
        try:
            return int.from_bytes(os.pread(self.stop_slot, 8, 0), "little")
        except OSError:
            return 0

    def _honour_stop(self) -> None:
        """Raise a requested stop if the main thread is where it may be raised: a stop of
        whatever runs (SIGTERM) while idle or in a task; one aimed at the task it runs,
        in that task."""
        if self.interrupted:
            return
        aimed = self.aimed_stop != 0 and self.aimed_stop == self.current_task
        if (self.stop_requested and self.phase in (_Phase.IDLE, _Phase.RUNNING)) or (
            aimed and self.phase is _Phase.RUNNING
        ):
            self.interrupted = True
            self.identity.leave("stopped")
            raise _StopWorker(SIGTERM_EXIT_CODE)

    def _watch_parent(self) -> None:
        """Leave when the parent dies, even while a task is running (no orphans).

        SIGTERM first, as ``terminate()`` does: the task is interrupted and the finalizer
        runs. If the worker is still there after the same grace period (an initializer or
        a finalizer that blocks, say on a Lock the dead parent held), it exits anyway.
        """
        parent = multiprocessing.parent_process()
        sentinel = getattr(parent, "sentinel", None)
        if sentinel is None:  # pragma: no cover - start methods without a parent sentinel
            return

        def watch() -> None:
            gone = select.poll()  # not multiprocessing.connection.wait: see PipeEnd
            gone.register(sentinel, select.POLLIN)
            while not gone.poll():  # blocks until the parent's end closes
                pass
            self.identity.leave("parent_exited")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(ORPHAN_GRACE_SECONDS)
            os._exit(SIGTERM_EXIT_CODE)

        threading.Thread(target=watch, name="hookpool-parent-watch", daemon=True).start()


class _ForwardLogging:
    """Installs log forwarding (``_logs.install``) when the worker first uses logging or
    shows a warning, not at start: ``logging`` is not free to import, and most tasks never
    log. Nothing is missed: it is installed as ``logging`` is imported (before the code
    that imported it runs on), or on the first warning, before that warning is shown.

    The finder stays in ``sys.meta_path`` (removing it could make an import running in
    another thread skip the next finder); once installed, it finds nothing. A spec found
    for ``logging`` but never loaded (``importlib.util.find_spec``) installs nothing: the
    import that follows is found again.
    """

    def __init__(self, send: Callable[[wire.Message], None], level: int) -> None:
        self._send = send
        self._level = level
        self._installed = False
        self._lock = threading.Lock()
        self._showwarning = warnings.showwarning
        self._logging_showwarning: Callable[..., Any] | None = None

    def when_used(self) -> None:
        if "logging" in sys.modules:  # imported already (by __main__, say): now
            self.install()
            return
        sys.meta_path.insert(0, self)
        warnings.showwarning = self._first_warning

    def install(self) -> None:
        with self._lock:
            if self._installed:
                return
            self._installed = True
            if warnings.showwarning == self._first_warning:
                warnings.showwarning = self._showwarning
            from . import _logs

            _logs.install(self._send, self._level)
            self._logging_showwarning = warnings.showwarning  # logging's, from now on

    def _first_warning(self, *args: Any, **kwargs: Any) -> None:
        self.install()
        # Normally no longer called once installed; but ``warnings.catch_warnings()``
        # entered before and left after the install puts this hook back: show through
        # logging's, as captureWarnings would have.
        show = self._logging_showwarning
        if show is None or show == self._first_warning:  # pragma: no cover - defensive
            show = self._showwarning
        show(*args, **kwargs)

    # A meta path finder, for ``import logging`` only.
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "logging" or self._installed:
            return None
        for finder in sys.meta_path:  # what the import system would find without us
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenCall(spec.loader, self.install)
                return spec
        return None


class _ThenCall:
    """A module loader that calls ``then`` once the module has been executed."""

    def __init__(self, loader: Any, then: Callable[[], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._then()

    def __getattr__(self, name: str) -> Any:  # get_source, is_package...: the real loader's
        return getattr(self._loader, name)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _run(kind: int, fn: Callable[..., Any], args: Any) -> Any:
    if kind == wire.CallKind.APPLY:
        return fn(*args[0], **args[1])
    if kind == wire.CallKind.MAP:
        return list(map(fn, args))
    if kind == wire.CallKind.STARMAP:
        return list(itertools.starmap(fn, args))
    raise TypeError(f"unrecognized call kind: {kind!r}")
