"""The manager: one thread in the parent that owns the workers and every task in flight.

Data flow::

    caller thread                      manager thread                     worker process
    ─────────────                      ──────────────                     ──────────────
    Pool / ProcessPoolExecutor
      │ serialize fn + args (_serialize.dumps), in the caller's thread
      │ Task(future) ──> Manager.submit ──> queue ──┐
      │                     (wake-up pipe) ─────────┤
      │                                             ▼
      │                                 selector over: wake-up pipe,
      │                                 each worker's pipe and sentinel
      │                                             │ _dispatch: Call ──────────> _Worker._serve
      │                                             │                               runs fn
      │                                             │ <──────────────────── Log ────┤ (logging)
      │                                             │ <──────────── Done / Failed ──┘
      │                                             │ <──── Retiring ── measured after the
      │                                             │       answer: over max_memory_per_child
      │                                             │ ──── Stop ──────> finalizer, exit
      │                                             │ _logs.replay: parent's handlers
      │                                             │ future.set_result / set_exception
      │ <── AsyncResult / Future / IMapIterator ────┘
      ▼
    result (or the worker's exception, with the worker's frames)

Actors:

``Task``
    The parent-side record of one unit of work (one ``apply``/``submit`` call, or one chunk
    of a map). It owns the ``concurrent.futures.Future`` the facades hand out (for a
    chunk of ``map``, a lighter ``Outcome``), and the already-pickled function and
    arguments.

``Manager``
    Thread-safe entry points (``submit``, ``close``, ``terminate``) only append to the queue
    or change the state, then write one byte to the wake-up pipe. Everything else happens
    on the manager thread, which waits on one selector: the wake-up pipe, every worker's
    duplex pipe, and every worker's process sentinel. Deadlines (task timeouts, the
    terminate grace period) become the selector's timeout. Nothing polls (an idle pool's
    manager wakes once a second, see ``TAKE_BACK_SECONDS``).

    One shortcut: while the manager thread sleeps, the workers with nothing to do are
    *parked*, and ``submit`` sends a task straight to a parked worker from the caller's
    thread, under the manager's lock, instead of waking the manager to do it (that
    thread hop is a third of an idle pool's latency). The manager unparks every worker,
    under the same lock, as soon as it wakes: a worker is only ever touched by one thread
    at a time, and the manager sees the task in ``inflight`` like any other.

    And its mirror image on the way back: a thread that waits for a task sent that way
    may borrow the worker and read the answer from its pipe itself, while the manager
    sleeps on (``_read_directly``). The manager takes every lent worker back as soon as
    it wakes, for whatever reason, and handles what the borrower read, in order.

``WorkerHandle``
    The manager's view of one worker: its process, its pipe, and the tasks sent to
    it, in the order it runs them. Because a worker runs its tasks one at a time, in
    order, the first task in ``inflight`` is the one it is running: if the worker dies,
    that task fails with ``WorkerLostError`` and the ones queued behind it, which never
    started, go back to the front of the queue. A task is sent to a worker only after the
    worker reported ``Ready``. Short tasks are queued behind a worker's running one, to
    hide the round trip, within small bounds of time, bytes and count (``_pick_worker``),
    so the pipe can never fill in both directions at once; a task cancelled while queued
    at a worker is skipped there (``Skip``) instead of stopping the worker. A worker
    stopped in the middle of a task (a cancel, a timeout) keeps the tasks queued behind
    it until it has exited, so that the answers it still sends count; the rest then go
    back to the queue.

    Recycling: after ``maxtasksperchild`` answers the manager sends the worker ``Stop``
    (and never queues more than that behind its running task). With
    ``max_memory_per_child`` the worker measures itself after each answer and, above the
    limit, says so (``Retiring``) and runs nothing more; the manager then puts back in
    the queue whatever it had sent it since and sends ``Stop`` too. Either way the
    finalizer runs to the end, and a replacement starts at once.

``_worker``
    The child side, in its own module, which imports neither this module nor the facades.
    Its log records and warnings come back as ``Log`` messages on the same pipe as its
    results, so they are handed to the parent's logging handlers (on this thread, by
    ``_logs.replay``) in the order the worker emitted them, and before the result of the
    task that emitted them.

``Engine``
    The surface of ``Manager`` that the facades and ``_calls`` use. ``_inline.InlineManager``
    provides the same surface with no processes and no manager thread: each Task runs in
    the thread that submits it (inline mode, for debugging and tests).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import logging
import math
import os
import select
import selectors
import signal
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, InvalidStateError
from multiprocessing.process import BaseProcess

from . import _logs, _worker
from . import _protocol as wire
from ._errors import PoolTerminatedError, TaskTimeoutError
from ._memory import describe as describe_size
from ._records import TYPE_CHECKING
from ._serialize import loads_data, rebuild
from ._spawn import Spawner, StartedWorker
from ._state import PoolState

if TYPE_CHECKING:  # for type checkers only: typing is not imported at run time
    from typing import Any, Protocol

    from ._dialect import Dialect

    class Outcome(Protocol):
        """What the manager needs of a task's future: a ``concurrent.futures.Future`` is one;
        a map's chunks use a lighter ``_results.ChunkSlot``."""

        def set_running_or_notify_cancel(self) -> bool: ...
        def set_result(self, result: Any) -> None: ...
        def set_exception(self, exception: BaseException | None) -> None: ...
        def cancel(self) -> bool: ...
        def done(self) -> bool: ...

    class Engine(Protocol):
        """What the facades and ``_calls`` may use: ``Manager`` or ``_inline.InlineManager``."""

        @property
        def state(self) -> PoolState: ...

        @property
        def size(self) -> int: ...

        @property
        def inline(self) -> bool:
            """True for ``InlineManager``: tasks run in the caller's thread, in ``submit``."""
            ...

        def submit(self, task: Task, *, while_closing: bool = False) -> None: ...

        def submit_many(self, tasks: list[Task], *, while_closing: bool = False) -> None: ...

        def check_running(self) -> None: ...

        def close(self) -> None: ...

        def hold(self) -> None:
            """While closing, keep serving until ``release()``: more tasks are coming."""
            ...

        def release(self) -> None: ...

        def cancel(self, future: Outcome) -> bool: ...

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


__all__ = ["Manager", "Task"]

logger = logging.getLogger("hookpool")


#: Seconds a worker gets, after being asked to stop, to run its finalizer before SIGKILL.
TERMINATE_GRACE_SECONDS = 5.0
#: A busy worker gets more tasks queued behind its current one while they amount to less
#: than this much work at its recent pace (see Manager._pick_worker)...
PREFETCH_SECONDS = 0.002
#: ...and while the bytes and messages it has not read yet stay under these (far below
#: what a socket buffer holds, so that a send to a busy worker never blocks).
PREFETCH_BYTES = 64 * 1024
PREFETCH_TASKS = 256
#: Functions a worker keeps (sent once each, then referred to by id) before it is told to
#: forget them all and start again.
FUNCTIONS_PER_WORKER = 64
#: Workers in a row that die while starting before the pool gives up (PoolBrokenError).
STARTUP_FAILURES_TO_BREAK = 3
#: How long to wait for a worker's exit status once its sentinel has fired.
REAP_SECONDS = 5.0
#: A caller reading its answer from a lent worker checks this often that the worker is
#: still lent to it (see Manager._read_directly)...
LENT_CHECK_SECONDS = 0.5
#: ...and the manager thread, while workers are parked (and so may be lent), sleeps at
#: most this long before taking them back.
TAKE_BACK_SECONDS = 1.0


class Task:
    """One unit of work, parent side: owns the Future and the pickled call.

    A plain class (as ``WorkerHandle``), not a dataclass: a user's script that imports
    hookpool is re-imported by every spawned worker, and dataclasses imports inspect.
    """

    __slots__ = (
        "args",
        "buffers",
        "cancel_requested",
        "charged",
        "claimed",
        "fn",
        "fn_name",
        "future",
        "items",
        "kind",
        "task_id",
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
        self.task_id = 0
        #: set_running_or_notify_cancel() has been called (the task cannot be cancelled).
        self.claimed = False
        #: Cancelled on request while in flight: stop its worker as soon as it starts.
        self.cancel_requested = False
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


class WorkerHandle:
    """The manager's view of one worker process."""

    def __init__(
        self,
        name: str,
        process: BaseProcess,
        conn: wire.PipeEnd,
        pid: int,
        reader: wire.FrameReader,
    ) -> None:
        self.name = name
        self.process = process
        self.conn = conn
        self.pid = pid
        self.reader = reader
        #: Reported Ready: the initializer ran, the finalizer is registered.
        self.ready = False
        #: Asked to leave (Stop sent or SIGTERM): gets no more tasks.
        self.stopping = False
        #: The pipe hit EOF; only the sentinel is watched from then on.
        self.conn_closed = False
        #: Tasks sent to this worker, in the order it runs them; [0] is running.
        self.inflight: collections.deque[Task] = collections.deque()
        #: Pickled bytes of the tasks in ``inflight``, and how many of them have a timeout.
        self.inflight_bytes = 0
        self.timeouts = 0
        #: When inflight[0] started (approximately: when it was sent or its predecessor
        #: ended).
        self.head_started = 0.0
        self.tasks_done = 0
        #: Moving average of task duration, to decide how many tasks to queue behind the
        #: running one. Until a task was measured, nothing is queued behind the first.
        self.avg_seconds = PREFETCH_SECONDS
        #: SIGKILL at this monotonic time if still alive (after a stop request).
        self.kill_at: float | None = None
        #: Its sentinel fired and it was reaped.
        self.exited = False
        #: Stopped on purpose in the middle of a task (cancel, timeout): the tasks still in
        #: ``inflight`` when it exits are not at fault, and go back to the queue.
        self.interrupted = False
        #: Why it was killed, when hookpool killed it for something other than a stop.
        self.lost_reason: str | None = None
        #: The pickled functions sent to it, and the id it knows each by.
        self.functions: dict[bytes, int] = {}
        #: Lent to a caller waiting for its one task (``Manager._read_directly``): the
        #: manager thread does not watch its pipe until it takes it back.
        self.lent = False
        #: The borrower is reading it. Still set when the manager takes it back, the read
        #: was cut short (a signal handler raised): what it read may be lost.
        self.reading = False
        #: What the borrower read, for the manager to handle, in order, on taking it back.
        self.handoff: collections.deque[wire.Message] = collections.deque()
        #: Held by the borrower while it reads, and by the manager while it takes it back.
        self.read_lock = threading.Lock()
        #: Taken back in this turn of the loop: its pipe may have been read empty.
        self.reclaimed = False
        #: An eventfd the manager signals as it takes the worker back, so that a borrower
        #: polling the pipe wakes even if the manager read it empty first; -1 where
        #: workers are not lent (no epoll).
        self.nudge = -1
        #: The nudge was signalled (on the last take-back or give-back) and not drained
        #: since.
        self.nudged = False
        #: Lent to a second thread waiting for the same task (or to the same one again,
        #: after an interrupt): giving it back nudges, as taking it back does.
        self.lent_twice = False

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.name} pid={self.pid}>"

    def cost(self, task: Task) -> int:
        """Bytes sending ``task`` to this worker takes: with its function, the first time."""
        return task.wire_size + (0 if task.fn in self.functions else len(task.fn))

    def push(self, task: Task) -> None:
        """Record a task sent to this worker."""
        self.inflight.append(task)
        task.charged = self.cost(task)
        self.inflight_bytes += task.charged
        self.timeouts += task.timeout is not None

    def pop_head(self) -> Task:
        """Take the task it is running (finished, failed or abandoned)."""
        return self._forget(self.inflight.popleft())

    def pop_tail(self) -> Task:
        """Take the last task queued behind the running one."""
        return self._forget(self.inflight.pop())

    def _forget(self, task: Task) -> Task:
        self.inflight_bytes -= task.charged
        self.timeouts -= task.timeout is not None
        return task


class Manager:
    """Owns the worker processes and the task table; see the module docstring."""

    def __init__(
        self,
        *,
        processes: int,
        spawner: Spawner,
        started: list[StartedWorker],
        maxtasksperchild: int | None,
        dialect: Dialect,
        max_memory: int | None = None,
    ) -> None:
        self._size = processes
        self._spawner = spawner
        self._maxtasks = maxtasksperchild
        self._dialect = dialect  # the errors of the facade (Pool or executor)
        self._max_memory = max_memory  # bytes (max_memory_per_child): the workers measure
        self._name = spawner.pool_name

        # Re-entrant: a signal handler in the main thread may call close() or terminate()
        # while that thread is inside submit() (both locks are held across a write).
        self._lock = threading.RLock()
        self._state = PoolState.RUNNING
        self._broken_error: BaseException | None = None
        self._queue: collections.deque[Task] = collections.deque()
        self._task_ids = itertools.count(1)
        self._function_ids = itertools.count(1)
        self._workers: list[WorkerHandle] = []
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self._parked: list[WorkerHandle] = []  # guarded by _lock, see _park_idle
        self._sleeping = False  # workers are parked while the manager sleeps (_park_idle)
        self._lent: list[WorkerHandle] = []  # guarded by _lock, see _read_directly
        self._startup_failures = 0  # workers in a row that died before reporting Ready
        self._std_errors_imported = False  # see _loop
        self._holds = 0  # lazy maps still submitting while closing (see hold())
        self._winding_down = False
        self._kill_on_stop = False  # terminate(kill=True): no grace period, no finalizers
        self._soon: collections.deque[Callable[[], None]] = collections.deque()  # call_soon
        self._thread_ended = False  # from then on, call_soon runs its callback at once

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._wake_lock = threading.RLock()  # _close_fds vs a late _wake
        self._selector = selectors.DefaultSelector()
        self._epoll = _epoll_of(self._selector)
        if not hasattr(os, "eventfd"):  # (Linux has both) without it, no lending
            self._epoll = None
        self._scratch = wire.scratch_buffer()  # every worker's FrameReader reads into it
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

        # The first workers, started by start_engine; any missing are started here, in
        # the caller's thread.
        try:
            for worker in started:
                self._adopt(worker)
            for _ in range(processes - len(started)):
                self._start_worker()
        except BaseException:
            self._kill_all()
            self._close_fds()
            raise
        self._thread = threading.Thread(target=self._run, name=f"{self._name}-manager", daemon=True)
        self._thread.start()
        _live.add(self)

    # -- thread-safe entry points (any thread) -------------------------------------------

    @property
    def state(self) -> PoolState:
        return self._state

    @property
    def size(self) -> int:
        return self._size

    @property
    def inline(self) -> bool:
        return False

    def submit(self, task: Task, *, while_closing: bool = False) -> None:
        """Queue ``task``, or send it to a parked worker. Raises if the pool does not
        accept tasks."""
        with self._lock:
            state = self._state
            if not state.accepts(while_closing=while_closing):
                raise self._refusal(state)
            task.task_id = next(self._task_ids)
            if self._parked and not self._queue and self._send_directly(task):
                return
            self._queue.append(task)
        self._wake()

    def _send_directly(self, task: Task) -> bool:
        """In the caller's thread, under ``_lock``: send ``task`` to a parked worker. False
        if it must go through the queue after all (the manager then takes it from there).

        Not for a task with a timeout (the manager must know its deadline before it
        sleeps), nor a large one (the lock would be held while it is written).
        """
        if task.timeout is not None or task.wire_size + len(task.fn) > PREFETCH_BYTES:
            return False
        if not task.future.set_running_or_notify_cancel():
            return True  # cancelled already: it never runs
        task.claimed = True
        worker = self._parked.pop()
        try:
            self._assign(worker, task)
            wire.send(worker.conn, [self._call(worker, task)])
        except OSError:  # it is dying: the task goes to the queue, for another worker
            worker.pop_tail()
            self._give_up_on(worker, None)
            return False
        except BaseException:
            # A signal handler raised in this thread (Ctrl-C) in the middle of the write:
            # the pipe may hold part of a frame, so the worker is stopped and replaced.
            # The exception propagates out of submit(): the caller never gets this task.
            if task in worker.inflight:
                worker.pop_tail()
            self._give_up_on(worker, "a write to it was interrupted by a signal handler")
            _resolve(task.future, error=CancelledError())
            raise
        offer = getattr(task.future, "offer_direct_read", None)
        if offer is not None and self._epoll is not None:
            offer(functools.partial(self._read_directly, worker, task))
        return True

    def _read_directly(self, worker: WorkerHandle, task: Task, timeout: float | None) -> None:
        """In a thread waiting for ``task``, sent straight to ``worker`` while the manager
        slept: read the answer from the worker's pipe here. Otherwise the manager thread
        wakes, reads it, settles the outcome and wakes this thread, which then waits for
        the GIL the manager holds: two thread wake-ups where one does, on an idle pool's
        critical path. Returns when the task is settled, or when reading here ends (the
        timeout, or the manager took the worker back): the caller then waits as usual.

        The manager *lends* the worker: while it sleeps, it stops watching the worker's
        pipe (one system call, which a signal handler cannot cut in half), and it
        takes back every lent worker first thing when it wakes (``_take_back``), for
        whatever reason it wakes, and nudges this thread (``WorkerHandle.nudge``): the
        manager may read the answer before this thread even polls. This thread wakes the
        manager when done. What is read here goes
        to the worker's ``handoff`` for the manager to handle in order; this thread
        settles the task itself only if its answer is the first thing read, so a log
        record the task sent before its answer still reaches the handlers first. When that
        answer is all it read, it also gives the worker back itself (``_give_back``), and
        the manager sleeps on.
        """
        given_back = False
        try:
            with self._lock:
                fds = self._lend(worker, task)
            if fds is not None and self._read_lent(worker, task, *fds, timeout):
                with self._lock:
                    given_back = self._give_back(worker, task)
        finally:
            if not given_back:  # the manager takes the worker back (at the latest within
                self._wake()  # TAKE_BACK_SECONDS) and handles what was read

    def _lend(self, worker: WorkerHandle, task: Task) -> tuple[int, int] | None:
        """Under ``_lock``: lend ``worker`` to a thread waiting for ``task``, its only
        task, if the manager sleeps (it takes the worker back on waking; until then it
        changes nothing about the worker). Already lent for it (a thread that waited
        before was interrupted): this one carries on. Returns its pipe's fd and its
        nudge's."""
        if not self._sleeping or not worker.inflight or worker.inflight[0] is not task:
            return None
        if not worker.lent:
            if len(worker.inflight) > 1 or worker.stopping or worker.conn_closed:
                return None
            assert self._epoll is not None
            if worker.nudged:  # by the last take-back (the manager sleeps: no other)
                worker.nudged = False
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(worker.nudge)
            worker.lent_twice = False
            self._lent.append(worker)  # first: the manager takes back whatever is listed
            worker.lent = True
            with contextlib.suppress(OSError):
                self._epoll.unregister(worker.conn.fileno())
        else:
            worker.lent_twice = True
        return worker.conn.fileno(), worker.nudge

    def _give_back(self, worker: WorkerHandle, task: Task) -> bool:
        """Under ``_lock``, in the borrower's thread, once it settled ``task`` whole (one cut
        short, in this thread or another waiting for it, the manager completes): if the
        manager still sleeps and the answer was all the borrower read, do what the
        manager would on taking the worker back (count the task done, watch the pipe
        again) and park the worker for the next ``submit``. Waking the manager for that
        costs a system call, and a thread switch on the caller's critical path.

        Not when anything else needs the manager: another message read, an answer that
        did not settle here, a worker leaving or due for replacement (maxtasksperchild).
        A worker over ``max_memory_per_child`` says so after its answer, in a message of
        its own: the manager, woken by it (its pipe is watched again), retires it, and
        puts back in the queue a task sent to it meanwhile, which it did not run.
        A thread also waiting for ``task`` reads nothing more: it finds it done, once the
        nudge wakes it.
        """
        if not self._sleeping or not worker.lent or self._state is not PoolState.RUNNING:
            return False
        if len(worker.handoff) != 1 or len(worker.inflight) != 1 or worker.reading:
            return False
        answer = worker.handoff[0]
        if (
            type(answer) not in _ANSWERS
            or answer.task_id != task.task_id  # type: ignore[union-attr]
            or getattr(answer, "leaving", False)
            or worker.inflight[0] is not task
            or not task.future.done()
            or worker.stopping
            or (self._maxtasks is not None and worker.tasks_done + 1 >= self._maxtasks)
        ):
            return False
        assert self._epoll is not None
        try:
            self._epoll.register(worker.conn.fileno(), select.EPOLLIN)
        except OSError:
            return False  # the manager sees to it
        # A signal handler may raise in this (main) thread anywhere from here on. Until
        # _park_answered starts, nothing has changed: the manager, woken by the caller's
        # ``finally``, takes the worker back as usual (its pipe is watched already).
        now = time.monotonic()
        counts = (_pace(worker, now), worker.tasks_done + 1, now)
        try:
            self._park_answered(worker, counts)
        except BaseException:  # cut short part-way: finish it, then let the error go on
            self._park_answered(worker, counts)
            raise
        return True

    def _park_answered(self, worker: WorkerHandle, counts: tuple[float, int, float]) -> None:
        """The end of a give-back, in a form that may run again when cut short: its only
        task answered and counted, its pipe watched, the worker parked."""
        worker.avg_seconds, worker.tasks_done, worker.head_started = counts
        worker.inflight.clear()
        worker.inflight_bytes = worker.timeouts = 0
        worker.handoff.clear()
        worker.lent = False
        worker.reclaimed = True  # a readiness event from before the lend may be pending
        if worker in self._lent:
            self._lent.remove(worker)
        if worker not in self._parked:
            self._parked.append(worker)
        if worker.lent_twice:  # another thread may be polling it still: it reads no more
            _nudge(worker)

    def _read_lent(
        self, worker: WorkerHandle, task: Task, fd: int, nudge: int, timeout: float | None
    ) -> bool:
        # True if this thread settled ``task``, whole (see _give_back).
        # The fds are only read while the worker is lent (then they are open); once it
        # was taken back, a number may even be another file's: polling it then ends at
        # the next check. The nudge is signalled only as the worker is taken back.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(nudge, select.POLLIN)
        pipe = select.poll()
        pipe.register(fd, select.POLLIN)
        deadline = None if timeout is None else time.monotonic() + timeout
        scratch = _thread_scratch()
        while True:
            wait = LENT_CHECK_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return False
            poller.poll(math.ceil(wait * 1000))
            with worker.read_lock:
                if not worker.lent:
                    return False  # taken back: the manager reads it from here on
                if worker.handoff or task.future.done():
                    return False  # another thread waiting for it read the answer
                if not pipe.poll(0):  # (read by that thread meanwhile)
                    continue
                worker.reading = True
                try:
                    messages = worker.reader.read(scratch)
                except (EOFError, OSError):  # it is leaving; the manager sees to it
                    worker.reading = False
                    return False
                except Exception:  # unreadable: still "reading", so it gets replaced
                    return False
                worker.handoff.extend(messages)
                worker.reading = False
                if not worker.handoff:
                    continue  # part of a frame so far
                first = worker.handoff[0]
                outcome: Any = task.future  # it offered this read: an ApplyOutcome
                if (
                    type(first) in _ANSWERS
                    and first.task_id == task.task_id  # type: ignore[union-attr]
                    and outcome.may_settle_here()
                ):
                    # Interrupted from here on, the answer is still in the handoff: the
                    # manager settles the task (or completes the settling) on taking
                    # the worker back.
                    value, error = _answer(
                        task,
                        first,  # type: ignore[arg-type]
                        self._dialect,
                        worker.name,
                        catch=_DECODING_IN_CALLER,
                    )
                    return outcome.settle_here(value, error)  # type: ignore[no-any-return]
                return False

    def _give_up_on(self, worker: WorkerHandle, reason: str | None) -> None:
        """From any thread: send ``worker`` nothing more and have the manager stop it
        (it is dying, or its pipe cannot be trusted)."""
        worker.stopping = True
        worker.lost_reason = worker.lost_reason or reason
        self._commands.append(lambda: self._stop_worker(worker, signal_it=True))
        self._wake()

    def submit_many(self, tasks: list[Task], *, while_closing: bool = False) -> None:
        """Queue several tasks at once (one lock, one wake-up); the first ones go straight
        to the parked workers, as with ``submit``."""
        with self._lock:
            state = self._state
            if not state.accepts(while_closing=while_closing):
                raise self._refusal(state)
            for task in tasks:
                task.task_id = next(self._task_ids)
            sent = 0
            while (
                sent < len(tasks)
                and self._parked
                and not self._queue
                and self._send_directly(tasks[sent])
            ):
                sent += 1
            if sent == len(tasks):
                return
            self._queue.extend(tasks[sent:] if sent else tasks)
        self._wake()

    def check_running(self) -> None:
        state = self._state
        if state is not PoolState.RUNNING:
            raise self._refusal(state)

    def close(self) -> None:
        """No new tasks; queued ones still run; then the workers leave."""
        with self._lock:
            if self._state is PoolState.RUNNING:
                self._state = PoolState.CLOSING
        self._wake()

    def hold(self) -> None:
        """Keep the workers while closing, until ``release()``: more tasks are coming."""
        with self._lock:
            self._holds += 1

    def release(self) -> None:
        with self._lock:
            self._holds -= 1
        self._wake()

    def cancel(self, future: Outcome) -> bool:
        """Cancel a task: a queued one never runs; a running one has its worker stopped
        (and replaced) and fails with ``CancelledError``. False if it already finished."""
        if future.cancel():
            return True
        if future.done():
            return False
        self._commands.append(lambda: self._cancel_running(future))
        self._wake()
        return True

    def cancel_queued(self) -> None:
        """Cancel every task still waiting in the queue: they will never run."""
        for task in list(self._queue):
            task.future.cancel()

    def terminate(self, *, kill: bool = False) -> None:
        """Cancel queued tasks, fail running ones, stop the workers (``kill``: with
        SIGKILL at once, no finalizer). Does not wait."""
        if kill:
            self._kill_on_stop = True  # read by the manager thread, once it wakes
        with self._lock:
            if self._state in (PoolState.RUNNING, PoolState.CLOSING):
                self._state = PoolState.TERMINATING
        self._wake()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the manager thread to finish; True if it did.

        Called from a signal handler that interrupted this same thread inside
        ``submit`` (a SIGTERM handler calling ``terminate()``), it returns False at once:
        the manager needs the lock that the interrupted ``submit`` holds, so waiting
        would never end. The pool still stops once the handler has returned.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("cannot join the pool from one of its own callbacks")
        if _held_here(self._lock) or _held_here(self._wake_lock):
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in list(self._workers)]

    def processes(self) -> list[BaseProcess]:
        return [w.process for w in list(self._workers)]

    def call_soon(self, callback: Callable[[], None]) -> None:
        with self._lock:
            queued = not self._thread_ended
            if queued:
                self._soon.append(callback)
        if queued:
            self._wake()
        else:
            callback()

    def _refusal(self, state: PoolState) -> Exception:
        return refusal(state, self._name, self._broken_error, self._dialect)

    def _wake(self) -> None:
        """Make the manager thread look at the queue, the commands and the state.

        Callers change those first, then call this. The flag saves a system call per
        submit while a wake-up is already on its way; the manager clears it only after
        emptying the pipe, and acts on the queue after that (see _drain_wakeups).
        """
        if not self._wake_pending:
            self._wake_pending = True
            try:
                with self._wake_lock:
                    if self._wake_w >= 0:  # not after _close_fds: the number may be reused
                        with contextlib.suppress(BlockingIOError, OSError):
                            os.write(self._wake_w, b"\0")
            except BaseException:  # a signal handler raised before the byte was written
                self._wake_pending = False
                raise

    # -- the manager thread ----------------------------------------------------------------

    def _run_soon(self) -> None:
        while self._soon:
            try:
                self._soon.popleft()()
            except Exception:  # a callback's own errors are its caller's to report
                logger.exception("hookpool: a callback raised")

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            logger.exception("hookpool: internal error in the manager thread of %s", self._name)
            self._break(_internal_error(exc))
            self._end_lends()  # before any pipe is closed
            self._kill_all()
        finally:
            self._end_lends()
            with self._lock:
                if self._state is not PoolState.BROKEN:
                    self._state = PoolState.STOPPED
            self._fail_everything(self._broken_error or PoolTerminatedError("the pool stopped"))
            self._close_fds()
            with self._lock:
                self._thread_ended = True
            self._run_soon()

    def _loop(self) -> None:
        while True:
            self._advance()
            if not self._workers and self._state is not PoolState.RUNNING:
                return
            timeout = self._seconds_to_next_deadline()
            parked = self._park_idle()
            if parked and self._epoll is not None:
                # A worker may be lent while this thread sleeps; its borrower wakes this
                # thread when done, unless a signal handler raised at the wrong moment:
                # then the worker is taken back by this time anyway.
                timeout = TAKE_BACK_SECONDS if timeout is None else min(timeout, TAKE_BACK_SECONDS)
            if not self._std_errors_imported and self._idle():
                # Now, not while the workers boot or a task is out: see _std_errors.
                self._std_errors_imported = True
                with contextlib.suppress(Exception):  # too late: the interpreter is exiting
                    from . import _std_errors  # noqa: F401
            events = self._selector.select(timeout)
            if parked:
                self._unpark_all()
            for key, _ in events:
                if key.data is None:
                    self._drain_wakeups()
                    while self._commands:
                        self._commands.popleft()()
                    self._run_soon()
                    continue
                handler, worker = key.data
                if not worker.exited:  # it may have left earlier in this same batch
                    handler(worker)
            self._check_deadlines()

    def _advance(self) -> None:
        """Act on the state: dispatch, replace workers, or wind down."""
        state = self._state
        if state is PoolState.TERMINATING or state is PoolState.BROKEN:
            if not self._winding_down:
                self._winding_down = True
                reason = self._broken_error or self._dialect.terminated_error()
                self._fail_everything(reason)
                for worker in self._workers:
                    self._stop_worker(worker, signal_it=True)
            return
        # RUNNING or CLOSING
        self._dispatch()
        alive = sum(1 for w in self._workers if not w.stopping)
        if state is PoolState.RUNNING or self._queue:
            while alive < self._size:
                self._start_worker()
                alive += 1
        elif not self._queue and not self._holds and not any(w.inflight for w in self._workers):
            for worker in self._workers:
                if not worker.stopping:
                    self._stop_worker(worker, signal_it=False, reason="close")

    def _call(self, worker: WorkerHandle, task: Task) -> wire.Call:
        """The Call for ``task``, to be written to ``worker`` now (by whichever thread
        owns it): its function by id if the worker has it already."""
        fn: int | wire.FunctionDef | None = worker.functions.get(task.fn)
        if fn is None:
            forget_others = len(worker.functions) >= FUNCTIONS_PER_WORKER
            if forget_others:
                worker.functions.clear()
            fn_id = worker.functions[task.fn] = next(self._function_ids)
            fn = (fn_id, task.fn, forget_others)
        return wire.Call(task.task_id, int(task.kind), fn, wire.blob(task.args), task.buffers)

    def _idle(self) -> bool:
        """No task queued or out, and every worker has started (reported Ready)."""
        return not self._queue and all(w.ready and not w.inflight for w in self._workers)

    def _park_idle(self) -> bool:
        """Before sleeping: let ``submit`` send tasks to the idle workers itself. True if
        any was parked: then ``_unpark_all`` must run on waking."""
        if self._state is not PoolState.RUNNING or self._queue:
            return False
        # (Read without the lock: while this thread is awake, only it changes these.)
        idle = [
            worker
            for worker in self._workers
            if worker.ready
            and not worker.inflight
            and not worker.stopping
            and not worker.conn_closed
        ]
        if not idle:  # every worker busy, as through a long map: no lock to take
            return False
        with self._lock:
            if self._queue:  # a submit came in since: dispatch it first
                return False
            self._parked = idle
            self._sleeping = True
            return True

    def _unpark_all(self) -> None:
        """On waking: the manager thread owns every worker again. Taking the lock also
        waits for a ``submit`` still writing to a worker it took from the parked ones."""
        with self._lock:
            self._parked = []
            self._sleeping = False  # nothing more is lent until it sleeps again
            lent = list(self._lent)
        cut_short = [self._take_back(worker) for worker in lent]  # all, before any handling
        with self._lock:
            self._lent = []  # (only now: if a take-back raised, _end_lends sees the rest)
        for worker, cut in zip(lent, cut_short, strict=True):
            self._handle_handoff(worker, cut_short=cut)

    def _take_back(self, worker: WorkerHandle) -> bool:
        """Watch a lent worker again (see ``_read_directly``). True if its borrower was
        cut short in the middle of a read."""
        assert self._epoll is not None
        with worker.read_lock:  # waits for a borrower in the middle of a read
            worker.lent = False
            _nudge(worker)
            cut_short, worker.reading = worker.reading, False
            with contextlib.suppress(FileExistsError):  # lent, but not unregistered yet
                self._epoll.register(worker.conn.fileno(), select.EPOLLIN)
            worker.reclaimed = True
        return cut_short

    def _handle_handoff(self, worker: WorkerHandle, *, cut_short: bool) -> None:
        """Handle what a lent worker's borrower read, in order. If it was cut short
        mid-read, an answer may be lost: the worker is stopped, and a task it still owes
        fails with a clear error (it ran, so it is not run again)."""
        if worker.inflight:  # the borrower may have been interrupted while settling it
            complete = getattr(worker.inflight[0].future, "complete_settling", None)
            if complete is not None:
                complete()
        while worker.handoff:
            self._handle(worker, worker.handoff.popleft())
        if cut_short:  # what is left in its pipe may start mid-message: not read again
            worker.lost_reason = worker.lost_reason or (
                "a thread reading its answer was interrupted by a signal handler, or read "
                "an unreadable message, so the answer may be lost"
            )
            self._forget_conn(worker)
            self._stop_worker(worker, signal_it=True)

    def _end_lends(self) -> None:
        """As the manager thread ends: no thread reads a worker whose pipe it closes."""
        with self._lock:
            self._sleeping = False
            lent, self._lent = self._lent, []
        for worker in lent:
            with worker.read_lock:
                worker.lent = False
                _nudge(worker)

    def _assign(self, worker: WorkerHandle, task: Task) -> None:
        """Record ``task`` as sent to ``worker`` (before it is written: its answer may
        arrive before the write call returns)."""
        if not worker.inflight:
            worker.head_started = time.monotonic()
        worker.push(task)

    def _dispatch(self) -> None:
        """Move queued tasks to workers with room; one frame per worker per pass."""
        queue = self._queue
        if not queue:
            return
        outbox: dict[WorkerHandle, list[Task]] = {}
        now = time.monotonic()
        # While a worker is still starting, queue nothing behind a busy one: it will be
        # ready in a moment, and the first worker up would otherwise take everything.
        prefetch = all(w.ready or w.stopping for w in self._workers)
        while queue:
            worker = self._pick_worker(queue[0], now, prefetch)
            if worker is None:
                break
            task = queue.popleft()
            if not task.claimed:
                if not task.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued: it never runs
                task.claimed = True
            self._assign(worker, task)
            outbox.setdefault(worker, []).append(task)
        for worker, tasks in outbox.items():
            try:
                wire.send(worker.conn, [self._call(worker, task) for task in tasks])
            except OSError:
                # The worker is dying and never got these tasks. Its sentinel will fire.
                for task in reversed(tasks):
                    worker.pop_tail()
                    queue.appendleft(task)
                self._stop_worker(worker, signal_it=True)

    def _pick_worker(self, task: Task, now: float, prefetch: bool) -> WorkerHandle | None:
        """The least loaded ready worker with room for ``task``, if any.

        An idle worker always has room. A busy one takes more tasks behind its current
        one (hiding the round trip, which dominates short tasks) only while: the queued
        work is worth about PREFETCH_SECONDS at its recent pace, and its current task has
        not already run longer than that (bounding how unevenly work can end up
        spread); the bytes it has not read yet stay under PREFETCH_BYTES
        (so a send to it can never block, whatever it is sending back); no task involved
        has a timeout (a timeout must only stop the task it belongs to); and it will not
        reach maxtasksperchild first. The count and byte limits keep every send to a busy
        worker far below what a socket buffer holds, so the manager never blocks on a
        worker that is itself blocked sending results.
        """
        best: WorkerHandle | None = None
        best_load = 0
        prefetch = prefetch and task.timeout is None
        for worker in self._workers:
            if not worker.ready or worker.stopping:
                continue
            load = len(worker.inflight)
            if load == 0:
                return worker
            if best is not None and load >= best_load:
                continue
            if (
                prefetch
                and worker.timeouts == 0
                and load < PREFETCH_TASKS
                and worker.inflight_bytes + worker.cost(task) <= PREFETCH_BYTES
                and load * worker.avg_seconds < PREFETCH_SECONDS
                and now - worker.head_started < PREFETCH_SECONDS  # not stuck on a long one
                and (self._maxtasks is None or worker.tasks_done + load < self._maxtasks)
            ):
                best, best_load = worker, load
        return best

    # -- messages from a worker ------------------------------------------------------------

    def _on_readable(self, worker: WorkerHandle) -> None:
        if worker.reclaimed:
            worker.reclaimed = False
            if not _poll(worker.conn):
                return  # its borrower read it all (the selector had reported it before)
        try:
            messages = worker.reader.read()
        except (EOFError, OSError):
            self._forget_conn(worker)
            return
        except Exception:  # garbage on the pipe (a process the task forked wrote to it?)
            logger.exception("hookpool: unreadable message from %s; killing it", worker.name)
            worker.lost_reason = "its pipe to the pool carried an unreadable message"
            with contextlib.suppress(OSError):
                worker.process.kill()
            self._forget_conn(worker)
            return
        for message in messages:
            self._handle(worker, message)

    def _handle(self, worker: WorkerHandle, message: wire.Message) -> None:
        kind = type(message)
        if kind is wire.Done or kind is wire.Failed or kind is wire.Skipped:
            self._on_result(worker, message)  # type: ignore[arg-type]
        elif kind is wire.Log:
            assert isinstance(message, wire.Log)
            _logs.replay(worker.name, message)
        elif kind is wire.Ready:
            worker.ready = True
            self._startup_failures = 0
        elif kind is wire.InitFailed:
            assert isinstance(message, wire.InitFailed)
            cause = rebuild(message.error, self._dialect.remote_traceback)
            from ._std_errors import InitializerError

            error = InitializerError(
                f"the initializer raised in worker {worker.name} (pid {worker.pid}): "
                f"{message.error.type_name}: {message.error.message}. hookpool does not "
                f"restart workers whose initializer fails; fix the initializer, or catch "
                f"the error inside it"
            )
            error.__cause__ = cause
            worker.stopping = True
            self._break(error)
        elif kind is wire.Retiring:
            assert isinstance(message, wire.Retiring)
            self._on_retiring(worker, message.rss)
        elif kind is wire.FinalizerFailed:
            assert isinstance(message, wire.FinalizerFailed)
            logger.error(
                "hookpool: the finalizer raised in worker %s (pid %s):\n%s",
                worker.name,
                message.pid,
                message.error.traceback_text,
            )
        else:
            raise TypeError(f"unrecognized wire message from {worker.name}: {message!r}")

    def _on_result(
        self, worker: WorkerHandle, message: wire.Done | wire.Failed | wire.Skipped
    ) -> None:
        if not worker.inflight or worker.inflight[0].task_id != message.task_id:
            if any(t.task_id == message.task_id for t in worker.inflight):
                raise RuntimeError(f"{worker.name} answered task {message.task_id} out of order")
            # A late answer for a task no longer at this worker: settled already (timed
            # out, cancelled, terminated), or put back after the worker was stopped.
            return
        task = worker.pop_head()
        now = time.monotonic()
        if type(message) is not wire.Skipped:
            worker.avg_seconds = _pace(worker, now)
            worker.tasks_done += 1
        worker.head_started = now
        # Skipped: cancelled before it started, settled then. Settled already otherwise:
        # by the thread the worker was lent to (_read_directly), or cancelled, or failed.
        if type(message) is not wire.Skipped and not task.future.done():
            value, error = _answer(task, message, self._dialect, worker.name)  # type: ignore[arg-type]
            _resolve(task.future, value=value, error=error)
        if type(message) is wire.Failed and message.leaving:
            # SystemExit: it is on its way out; send it nothing more.
            worker.stopping = True
            self._requeue_unstarted(worker)
            return
        if worker.inflight and worker.inflight[0].cancel_requested:
            self._stop_running_task(worker)
        elif self._maxtasks is not None and worker.tasks_done >= self._maxtasks:
            logger.debug(
                "hookpool: worker %s (pid %s) leaves after %d tasks (maxtasksperchild)",
                worker.name,
                worker.pid,
                worker.tasks_done,
            )
            self._stop_worker(worker, signal_it=False, reason="maxtasksperchild")

    def _on_retiring(self, worker: WorkerHandle, rss: int) -> None:
        """The worker's resident memory is above ``max_memory_per_child`` (``rss`` bytes,
        measured by itself). It runs nothing more: what it was sent goes back to the
        queue, and it is stopped as maxtasksperchild stops a worker. Right after its
        initializer, every replacement would be as big: the pool breaks instead of
        restarting workers in a loop."""
        limit = self._max_memory
        assert limit is not None
        if not worker.ready:
            from ._std_errors import PoolBrokenError

            worker.stopping = True
            self._break(
                PoolBrokenError(
                    f"worker {worker.name} (pid {worker.pid}) uses {describe_size(rss)} "
                    f"({rss} bytes) of resident memory right after its initializer, above "
                    f"max_memory_per_child={describe_size(limit)} ({limit} bytes): every "
                    f"worker would be retired before its first task, so hookpool does not "
                    f"start another. Set max_memory_per_child above what a worker needs "
                    f"once initialized, plus what its tasks may keep; or None"
                )
            )
            return
        logger.info(
            "hookpool: worker %s (pid %s) leaves after %d tasks: its resident memory, %s, "
            "is above max_memory_per_child (%s); a new worker replaces it",
            worker.name,
            worker.pid,
            worker.tasks_done,
            describe_size(rss),
            describe_size(limit),
        )
        self._requeue_unstarted(worker)
        self._stop_worker(worker, signal_it=False, reason="max_memory_per_child")

    # -- worker processes ------------------------------------------------------------------

    def _start_worker(self) -> WorkerHandle:
        return self._adopt(self._spawner.start())

    def _adopt(self, started: StartedWorker) -> WorkerHandle:
        name, process, conn = started
        assert process.pid is not None
        worker = WorkerHandle(
            name=name,
            process=process,
            conn=conn,
            pid=process.pid,
            reader=wire.FrameReader(conn, self._scratch),
        )
        if self._epoll is not None:
            worker.nudge = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._workers.append(worker)
        self._selector.register(conn.fileno(), selectors.EVENT_READ, (self._on_readable, worker))
        self._selector.register(process.sentinel, selectors.EVENT_READ, (self._on_exit, worker))
        return worker

    def _stop_worker(self, worker: WorkerHandle, *, signal_it: bool, reason: str = "") -> None:
        """Ask a worker to leave: Stop when idle, SIGTERM when it must stop now. ``reason``:
        why, for a Stop (``WorkerInfo.leaving``: ``close``, ``maxtasksperchild``,
        ``max_memory_per_child``); a worker that gets SIGTERM knows it was ``stopped``."""
        if worker.exited or (worker.stopping and (not signal_it or worker.kill_at is not None)):
            return
        worker.stopping = True
        if signal_it and self._kill_on_stop:
            with contextlib.suppress(OSError):
                worker.process.kill()
        elif signal_it:
            # Interrupted: it gets a bounded grace period for its finalizer. A worker asked
            # to leave in an orderly way (close, recycling) finishes its finalizer, however
            # long it takes, as the standard library's join() waits for its workers.
            if worker.kill_at is None:
                worker.kill_at = time.monotonic() + TERMINATE_GRACE_SECONDS
            with contextlib.suppress(OSError):
                worker.process.terminate()
        elif not worker.conn_closed:
            try:
                wire.send(worker.conn, [wire.Stop(reason)])
            except OSError:
                self._forget_conn(worker)

    def _on_exit(self, worker: WorkerHandle) -> None:
        # Results it sent before leaving still count. (poll: a process it forked may hold
        # the other end open, so do not wait for EOF.)
        while not worker.conn_closed and _poll(worker.conn):
            self._on_readable(worker)
        self._forget_conn(worker)
        worker.exited = True
        self._selector.unregister(worker.process.sentinel)
        _reap(worker.process, REAP_SECONDS)
        exitcode = worker.process.exitcode
        # Not process.close(): the user may hold it (Pool._pool) and read its exitcode
        # or join() it; its fds are released with the object.
        self._workers.remove(worker)
        if worker.inflight and not worker.interrupted:
            lost = worker.pop_head()
            _resolve(lost.future, error=self._lost_error(worker, lost, exitcode))
        self._requeue_unstarted(worker)
        if worker.ready or worker.stopping or self._state.is_final:
            return
        # It died while starting. Once may be bad luck (an OOM kill): start another. Again
        # and again is a bug in the set-up, and respawning forever would hide it.
        self._startup_failures += 1
        if self._startup_failures >= STARTUP_FAILURES_TO_BREAK:
            from ._std_errors import PoolBrokenError

            self._break(
                PoolBrokenError(
                    f"{STARTUP_FAILURES_TO_BREAK} workers in a row died while starting; the "
                    f"last, {worker.name} (pid {worker.pid}), {_exit_text(exitcode)} before "
                    f"its initializer finished. Their stderr says why. A "
                    f"common cause is a script that creates a pool at import time: put that "
                    f'code under `if __name__ == "__main__":`.'
                )
            )

    def _lost_error(self, worker: WorkerHandle, task: Task, exitcode: int | None) -> BaseException:
        if self._state is PoolState.TERMINATING and (
            worker.kill_at is not None or self._kill_on_stop
        ):
            return self._dialect.terminated_error()
        cause = (
            _likely_cause(exitcode) if worker.lost_reason is None else f" ({worker.lost_reason})"
        )
        what = (
            f"worker {worker.name} (pid {worker.pid}) {_exit_text(exitcode)} while running "
            f"{task.describe()}{cause}."
        )
        try:
            from ._std_errors import WorkerLostError
        except Exception:  # the interpreter is exiting: too late to import (see _std_errors)
            return PoolTerminatedError(f"{what} The interpreter is exiting.")
        return WorkerLostError(
            f"{what} The worker was replaced; other tasks are not affected.",
            pid=worker.pid,
            exitcode=exitcode,
        )

    def _cancel_running(self, future: Outcome) -> None:
        for task in self._queue:  # put back after its worker was lost: it never started
            if task.future is future:
                self._queue.remove(task)
                _resolve(future, error=CancelledError())
                return
        for worker in self._workers:
            for position, task in enumerate(worker.inflight):
                if task.future is future:
                    _resolve(future, error=CancelledError())
                    if position == 0:
                        self._stop_running_task(worker)
                        return
                    # Queued behind the running task, in the worker's pipe: tell it to
                    # skip the task. If the Skip cannot be sent, stop the worker when
                    # the task reaches the head (_on_result).
                    try:
                        wire.send(worker.conn, [wire.Skip(task.task_id)])
                    except OSError:
                        task.cancel_requested = True
                    return

    def _stop_running_task(self, worker: WorkerHandle) -> None:
        """Stop a worker in the middle of its task (already settled by the caller).

        The tasks queued behind it stay with it until it has exited: it may have finished
        some of them before the stop arrives, and their answers still count. The rest go
        back to the queue then (``_on_exit``).
        """
        worker.pop_head()
        worker.interrupted = True
        self._stop_worker(worker, signal_it=True)

    def _requeue_unstarted(self, worker: WorkerHandle) -> None:
        """Put back the tasks still queued at a worker that leaves. Those cancelled while
        queued there (Skip) are settled already: they are dropped, never run."""
        while worker.inflight:
            task = worker.pop_tail()
            if not task.future.done():
                self._queue.appendleft(task)

    def _forget_conn(self, worker: WorkerHandle) -> None:
        if not worker.conn_closed:
            worker.conn_closed = True
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.conn.fileno())
            worker.conn.close()
            if worker.nudge >= 0:
                os.close(worker.nudge)
                worker.nudge = -1

    # -- deadlines -----------------------------------------------------------------------

    def _seconds_to_next_deadline(self) -> float | None:
        deadline = None
        for worker in self._workers:
            for when in (worker.kill_at, _task_deadline(worker)):
                if when is not None and (deadline is None or when < deadline):
                    deadline = when
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.kill_at is not None and now >= worker.kill_at:
                with contextlib.suppress(OSError):
                    worker.process.kill()
                worker.kill_at = None  # its sentinel will fire
            deadline = _task_deadline(worker)
            if deadline is not None and now >= deadline:
                task = worker.inflight[0]
                _resolve(
                    task.future,
                    error=TaskTimeoutError(
                        f"{task.describe()} ran longer than its timeout of {task.timeout} s "
                        f"in worker {worker.name} (pid {worker.pid}); the worker was "
                        f"stopped and will be replaced"
                    ),
                )
                self._stop_running_task(worker)

    # -- breaking down ---------------------------------------------------------------------

    def _break(self, error: BaseException) -> None:
        with self._lock:
            if self._state.is_final:
                return
            self._state = PoolState.BROKEN
            self._broken_error = error

    def _fail_everything(self, error: BaseException) -> None:
        """Settle every pending task: on a broken pool all fail with its error; on
        terminate the queued ones are cancelled (they never ran) and running ones fail."""
        broken = self._state is PoolState.BROKEN
        while self._queue:
            task = self._queue.popleft()
            if broken or not task.future.cancel():
                _resolve(task.future, error=error)
        for worker in self._workers:
            while worker.inflight:
                task = worker.pop_head()
                _resolve(task.future, error=error)

    def _drain_wakeups(self) -> None:
        # Empty the pipe, then clear the flag: in the other order, a _wake() between the
        # two would leave the flag set with no byte in the pipe, and every later _wake()
        # would skip its write while the manager sleeps: a lost wake-up, a hang.
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass
        self._wake_pending = False

    def _kill_all(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                worker.process.kill()
            with contextlib.suppress(OSError, ValueError):
                _reap(worker.process, REAP_SECONDS)
            self._forget_conn(worker)

    def _close_fds(self) -> None:
        self._selector.close()
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    # -- interpreter exit ------------------------------------------------------------------

    def _at_exit(self) -> None:
        if self._dialect.exit_mode == "drain":
            self.close()
        else:
            self.terminate()


def refusal(
    state: PoolState,
    name: str,
    broken_error: BaseException | None,
    dialect: Dialect,
) -> Exception:
    """What submitting to an engine in ``state`` (not RUNNING) raises."""
    if state is PoolState.BROKEN:
        from ._std_errors import PoolBrokenError

        error = PoolBrokenError(f"{name} is broken and cannot run tasks: {broken_error}")
        error.__cause__ = broken_error
        return error
    return dialect.closed_error()


def _held_here(lock: Any) -> bool:
    """Whether the current thread holds ``lock`` (an RLock)."""
    return bool(lock._is_owned())


def _internal_error(exc: BaseException) -> BaseException:
    """What a pool breaks with when its manager thread fails: a PoolBrokenError, or a
    PoolTerminatedError if that can no longer be imported (see ``_std_errors``)."""
    message = (
        f"internal error in the hookpool manager thread: {exc!r}; "
        f"the pool cannot run tasks any more"
    )
    try:
        from ._std_errors import PoolBrokenError
    except Exception:  # the interpreter is exiting: concurrent.futures.process will not import
        error: BaseException = PoolTerminatedError(message)
    else:
        error = PoolBrokenError(message)
    error.__cause__ = exc
    return error


def _reap(process: BaseProcess, timeout: float) -> None:
    """Wait at most ``timeout`` for a worker that has exited, or was killed, to be reaped.

    Not ``process.join(timeout)``: with a timeout that waits in
    ``multiprocessing.connection.wait``, whose import costs some 5 ms. The process is on
    its way out (its sentinel fired, or it got SIGKILL), so a few non-blocking waitpid
    calls (``exitcode``), short sleeps between them, are enough.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0001
    while process.exitcode is None and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(2 * delay, 0.01)


def _poll(conn: wire.PipeEnd) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False


def _task_deadline(worker: WorkerHandle) -> float | None:
    if worker.inflight and not worker.stopping:
        timeout = worker.inflight[0].timeout
        if timeout is not None:
            return worker.head_started + timeout
    return None


_ANSWERS = (wire.Done, wire.Failed)


#: What unpickling a result in a caller's thread may raise that becomes the task's error:
#: not a KeyboardInterrupt, which is the caller's (the manager decodes the answer later).
_DECODING_IN_CALLER = (Exception, SystemExit)


def _answer(
    task: Task,
    message: wire.Done | wire.Failed,
    dialect: Dialect,
    worker: str,
    *,
    catch: type[BaseException] | tuple[type[BaseException], ...] = BaseException,
) -> tuple[Any, BaseException | None]:
    """The value or the error a worker's answer to ``task`` settles it with, in the words
    of the facade (``dialect``). ``catch``: what unpickling may raise that becomes the
    task's error."""
    if type(message) is wire.Failed:
        error = rebuild(message.error, dialect.remote_traceback)
        return None, dialect.failed(message, error, task.describe(), worker)
    assert isinstance(message, wire.Done)
    try:
        return loads_data(message.value, message.buffers), None
    except catch as exc:
        return None, dialect.undecodable_result(exc, task.describe(), worker)


def _epoll_of(selector: selectors.BaseSelector) -> Any:
    """The ``select.epoll`` under an ``EpollSelector``, whose register and unregister
    are single calls into C, safe from another thread and from a signal handler raising
    half-way (``selectors`` keeps a table beside it, updated in Python). None on
    platforms without epoll: there, workers are not lent (``_read_directly``)."""
    poller = getattr(selector, "_selector", None)
    epoll = getattr(select, "epoll", None)
    return poller if epoll is not None and isinstance(poller, epoll) else None


def _nudge(worker: WorkerHandle) -> None:
    """Wake a thread that may be polling ``worker``'s pipe as a borrower: it is taken back."""
    worker.nudged = True
    with contextlib.suppress(OSError):
        os.eventfd_write(worker.nudge, 1)


_scratch = threading.local()


def _pace(worker: WorkerHandle, now: float) -> float:
    """The moving average of ``worker``'s task duration, with the task that ends now."""
    return 0.8 * worker.avg_seconds + 0.2 * (now - worker.head_started)


def _thread_scratch() -> memoryview:
    """A read buffer for the lent workers this thread reads (see FrameReader)."""
    buffer: memoryview | None = getattr(_scratch, "buffer", None)
    if buffer is None:
        buffer = _scratch.buffer = memoryview(bytearray(64 * 1024))
    return buffer


def _resolve(future: Outcome, *, value: Any = None, error: BaseException | None = None) -> None:
    """Settle a future that may already be settled (terminate races a late result)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


def _exit_text(exitcode: int | None) -> str:
    if exitcode is None:
        return "disappeared"
    if exitcode == _worker.SIGTERM_EXIT_CODE:
        return "was stopped by SIGTERM"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


def _likely_cause(exitcode: int | None) -> str:
    if exitcode is None:
        return ""
    if exitcode == -signal.SIGKILL:
        return (
            " (likely the kernel's out-of-memory killer, see `dmesg`, or a `kill -9` from outside)"
        )
    if exitcode in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGILL, -signal.SIGFPE):
        return " (a crash in native code: a C extension, ctypes, or the interpreter)"
    if exitcode == -signal.SIGABRT:
        return " (native code called abort(), e.g. a failed C assertion)"
    if exitcode in (-signal.SIGTERM, _worker.SIGTERM_EXIT_CODE):
        return " (someone outside hookpool sent it SIGTERM; it ran its finalizer and left)"
    if exitcode >= 0:
        return " (the task, or a library it called, ended the process with os._exit())"
    return ""


# -- interpreter exit: stop every live pool, giving finalizers their grace period ---------

_live: weakref.WeakSet[Manager] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    managers = list(_live)
    for manager in managers:
        manager._at_exit()
    deadline = time.monotonic() + TERMINATE_GRACE_SECONDS + REAP_SECONDS
    for manager in managers:
        manager.join(max(0.0, deadline - time.monotonic()))


# Registered after multiprocessing.util's own exit hook, so it runs before it (LIFO).
atexit.register(_stop_all_at_exit)
