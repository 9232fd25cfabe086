"""The engine of a pool on a dask.distributed cluster: ``Pool(..., cluster=...)``.

The facades, ``_calls`` and the results are the same as for local workers; only the
engine differs. Data flow::

    caller thread                 dask client                 dask worker (_cluster_worker)
    Pool / ProcessPoolExecutor
      │ pickle fn + args (_calls, as locally)
      │ Task(future) ──> ClusterEngine.submit ── client.submit(run_task, key) ──> run_task
      │                                                                          │ hooks
      │                  settler thread <── done callback ── future finished ────┘ answer
      │                   │ client.gather (a batch), then as the manager would:
      │                   │ decode the answer, replay its log records, settle the outcome
      │ <── AsyncResult / Future / IMapIterator ─┘
    result (or the worker's exception, with the worker's frames)

The settler thread is this engine's manager thread: callbacks run there, deadlines
(``task_timeout``) are watched there, and the pool winds down there (the finalizers run
as the pool's ``PoolPlugin`` is unregistered from the cluster).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError

from . import _cluster_worker as remote
from . import _protocol as wire
from ._answers import answer, internal_error, resolve
from ._engine import CancelRequest, Task, refusal
from ._errors import TaskTimeoutError
from ._records import TYPE_CHECKING
from ._reentry import check_may_block, critical, engine_thread, reentered
from ._serialize import dumps_for_cluster, rebuild
from ._state import PoolState

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from typing import Any

    from ._dialect import Dialect
    from ._engine import Outcome
    from ._hooks import Hooks

__all__ = ["ClusterEngine", "connect", "start_cluster_engine"]

logger = logging.getLogger("hookpool")

#: How long a call to the scheduler (registering hooks, stopping a task) may take.
RPC_SECONDS = 30.0
#: A stopped task (cancel, timeout, terminate) has this long to say so before its
#: outcome is settled without it.
STOP_GRACE_SECONDS = 5.0
#: How often an idle settler thread checks that the client is still connected.
CHECK_SECONDS = 1.0
#: A client that cannot reach the scheduler for this long breaks the pool.
RECONNECT_SECONDS = 10.0
#: With tasks waiting and no worker in the cluster for this long, they fail.
NO_WORKERS_SECONDS = 30.0
#: A task with a ``task_timeout`` that has not started on a worker this long after it
#: was handed over (plus its timeout) fails as timed out.
START_WAIT_SECONDS = 60.0
#: How many distinct function pickles the pool keeps an id for (see ``_function_id``).
FUNCTIONS_KEPT = 256
#: How many of a pool's tasks the cluster may hold per worker thread: one running, the
#: rest queued (by the scheduler, or on the worker), so that a worker starts its next
#: task as soon as one ends, without a round trip through this client (``_dispatch``).
#: Measured with 2 one-thread workers, a map with chunksize=1 of 2,000 tiny tasks,
#: against raw client.map in the same run: 8: 1.18x, 16: 1.11x, 32: 1.07x (with the
#: batches below; before them, 2: 2.5x, 4: 1.7x, 8: 1.6x, 16: 1.6x). Another A/B gave
#: 16: 1.08x, 32: 1.12x: past 16, within the spread between rounds.
TASKS_PER_THREAD = 16
#: The answers of finished tasks are fetched together (one ``gather``, one round trip
#: through the scheduler): once this share of the pool's room on the cluster has
#: finished, once none of its other tasks is still running, or once the first has
#: waited FETCH_WAIT_SECONDS. Handing over waits for the same share of room, while every
#: worker thread has a task (``_dispatch``).
BATCH_SHARE = 0.5
#: How long a finished task's answer may wait for others to be fetched with it, while
#: other tasks of the pool still run (a dask round trip takes about 10 ms on the
#: project's machine). The same map as above: 5 ms: 1.18x, 10 ms: 1.16x, 20 ms: 1.11x;
#: in another A/B, 20 ms: 1.08x, 40 ms: 1.13x.
FETCH_WAIT_SECONDS = 0.02
#: How often a task whose result dask computes again is looked at (``_recomputing``).
RECOMPUTE_POLL_SECONDS = 0.05
#: The statuses of a dask future whose result is on its way (again).
_COMPUTING = frozenset({"pending", "lost"})


def connect(cluster: object) -> tuple[Any, bool]:
    """The ``distributed.Client`` for ``cluster=``, and whether the pool owns it (and closes
    it). ``cluster``: a Client, a cluster object (``LocalCluster``, ...), or a scheduler
    address."""
    import distributed

    if isinstance(cluster, distributed.Client):
        return cluster, False
    if isinstance(cluster, str) or hasattr(cluster, "scheduler_address"):
        client = distributed.Client(  # type: ignore[no-untyped-call]
            cluster, set_as_default=False, timeout=RPC_SECONDS
        )
        return client, True
    raise TypeError(
        f"cluster= takes a distributed.Client, a cluster (LocalCluster...) or a scheduler "
        f"address such as 'tcp://10.0.0.5:8786', not {type(cluster).__name__}"
    )


class _InFlight:
    """A task handed to the cluster."""

    __slots__ = (
        "deadline",
        "finished",
        "future",
        "settled",
        "started",
        "stop_sent",
        "stopping",
        "task",
    )

    def __init__(self, task: Task, future: Any, deadline: float | None) -> None:
        self.task = task
        #: The distributed.Future; None for the moment it is being handed over.
        self.future = future
        self.deadline = deadline
        #: Since when a stop is aimed at it (cancel, timeout); None if not.
        self.stopping: float | None = None
        #: The workers were asked to stop it (``_stop``).
        self.stop_sent = False
        #: Its worker said it started (only asked for tasks with a timeout).
        self.started = False
        #: Its outcome is settled (timed out, say) while its dask future has not finished:
        #: it still holds a worker thread, so it still takes a slot (``_dispatch``).
        self.settled = False
        #: Its dask future finished: its thread is free, so it no longer takes a slot,
        #: though it is in ``_flying`` until its answer is fetched (``_unfetched``) and
        #: settled, and ``_forget`` drops it.
        self.finished = False


class ClusterEngine:
    """The ``Engine`` of a pool whose workers are a dask cluster's (see the module)."""

    def __init__(
        self,
        *,
        client: Any,
        owns_client: bool,
        hooks: Hooks,
        dialect: Dialect,
        name: str,
        forward_logging: bool,
        max_retries: int = 0,
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self._dialect = dialect
        self._name = name
        #: How many more times a task may run after workers died holding it (``NoRetries``
        #: reads it from the pool's id, in every task's key).
        self._max_retries = max_retries
        self._id = remote.new_pool_id(max_retries)
        #: Re-entrant: a signal handler that interrupted a caller holding it may still
        #: terminate() or close() the pool (see ``_reentry``).
        self._lock = threading.RLock()
        #: Set (under the lock) once the settler thread will run nothing more.
        self._ended = False
        self._state = PoolState.RUNNING
        self._broken_error: BaseException | None = None
        self._holds = 0
        self._ids = itertools.count(1)
        #: Tasks not handed to the cluster yet (see ``_dispatch``), and those handed.
        self._queue: collections.deque[Task] = collections.deque()
        self._flying: dict[int, _InFlight] = {}
        self._by_outcome: dict[int, int] = {}  # id(outcome) -> task id
        #: What the settler thread has to do: a finished task's id, or a callable.
        self._inbox: queue.SimpleQueue[int | Callable[[], None]] = queue.SimpleQueue()
        #: Function pickles -> the id workers cache the function under.
        self._functions: dict[bytes, int] = {}
        self._function_ids = itertools.count(1)
        level = _root_level() if forward_logging else None
        self._plugin = remote.PoolPlugin(self._id, _hooks_data(hooks), level)
        self._plugin_name = f"hookpool-pool-{self._id}"
        self._slots = self._count_slots()
        self._slots_counted = time.monotonic()
        #: How many in ``_flying`` are ``finished`` (``_settle_some``, ``_forget``).
        self._finishing = 0
        #: Finished tasks whose answers wait to be fetched together, and since when.
        self._unfetched: list[_InFlight] = []
        #: Finished tasks whose results were lost with their worker before they were
        #: fetched: dask computes them again (where ``run_task`` declines, unless the
        #: pool has ``max_retries``). Looked at every RECOMPUTE_POLL_SECONDS: dask's
        #: done callbacks take a lost future for a done one.
        self._recomputing: list[_InFlight] = []
        self._unfetched_since = 0.0
        #: Since when the client has not been connected to the scheduler (None: it is).
        self._disconnected_since: float | None = None
        #: Since when the cluster has had no workers (None: it has some).
        self._no_workers_since: float | None = None
        self._thread = threading.Thread(
            target=self._settle_loop, name=f"{name}-cluster-settler", daemon=True
        )
        self._thread.start()

    # -- the Engine surface --------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        return self._state

    @property
    def size(self) -> int:
        return self._slots

    @property
    def inline(self) -> bool:
        return False

    @property
    def remote(self) -> bool:
        return True

    def submit(self, task: Task, *, while_closing: bool = False) -> None:
        self.submit_many([task], while_closing=while_closing)

    @critical
    def submit_many(self, tasks: list[Task], *, while_closing: bool = False) -> None:
        with self._lock:
            state = self._state
            if not state.accepts(while_closing=while_closing):
                raise self._refusal(state)
            self._queue.extend(tasks)
        self._dispatch()

    def check_running(self) -> None:
        state = self._state
        if state is not PoolState.RUNNING:
            raise self._refusal(state)

    def close(self) -> None:
        self._become(PoolState.CLOSING)

    @critical
    def hold(self) -> None:
        with self._lock:
            self._holds += 1

    @critical
    def release(self) -> None:
        with self._lock:
            self._holds -= 1
        self._wake()

    def cancel(self, future: Outcome) -> bool:
        """Not started: it never runs (True). Running: the worker stops it (True).
        Finished first: its result stands (False). Waits (boundedly) to know which."""
        if future.cancel():  # still in this pool's queue
            return True
        check_may_block("cancel()")
        with self._lock:
            task_id = self._by_outcome.get(id(future))
            flying = self._flying.get(task_id) if task_id is not None else None
            if task_id is None or flying is None or future.done():
                return future.cancel()
            request = flying.task.cancel
            if request is None:
                request = flying.task.cancel = CancelRequest(threading.Event())
        if threading.current_thread() is self._thread:
            self._inbox.put(functools.partial(self._stop, task_id))
            return True
        self._stop(task_id)
        request.done.wait(STOP_GRACE_SECONDS + RPC_SECONDS)
        return request.cancelled

    @critical
    def cancel_queued(self) -> None:
        """Cancel every task not handed to the cluster yet: they will never run."""
        with self._lock:
            queued = list(self._queue)
        for task in queued:
            task.future.cancel()

    def terminate(self, *, kill: bool = False) -> None:
        """Fail every task not finished, stop the running ones, then run the finalizers
        (``kill`` changes nothing: the workers are the cluster's, not the pool's)."""
        self._become(PoolState.TERMINATING)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the settler thread to end; True if it has. From a signal handler
        that interrupted this thread inside the engine, False at once (the settler may
        need what the interrupted frame holds; the pool still stops)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("cannot join the pool from one of its own callbacks")
        if reentered():
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def worker_pids(self) -> list[int]:
        """The pids of the cluster's workers where this pool's initializer has run."""
        if self._state.is_final:
            return []
        try:
            found = self._client.run(remote.initialized_pid, self._id)
        except Exception:
            return []
        return sorted(pid for pid in found.values() if pid is not None)

    def processes(self) -> list[BaseProcess]:
        """No local worker processes."""
        return []

    @critical
    def call_soon(self, callback: Callable[[], None]) -> None:
        with self._lock:
            ended = self._ended
            if not ended:
                self._inbox.put(callback)
        if ended:
            callback()

    # -- handing over ------------------------------------------------------------------

    @critical
    def _dispatch(self) -> None:
        """Hand queued tasks to the cluster while it has room for them, in one batch.

        At most TASKS_PER_THREAD tasks per worker thread are with the cluster at a time:
        the rest wait in the pool's queue, where a cancel is certain. While every thread
        has a task, more go only once a BATCH_SHARE of that room is free: one graph for
        the scheduler to take in, where it would otherwise take one per finished task.
        A task handed over while every thread has one already may wait in a worker's
        queue, so it is marked ``confirm``: before it runs, its worker tells the
        scheduler (``NoRetries``), and should that worker then die, the task fails
        instead of running again elsewhere (one that never started runs elsewhere);
        unless the pool has ``max_retries``: then it may run again, and needs no
        confirmation (some 15% of a tiny task's time, measured). A task with a
        ``task_timeout`` is not queued on a worker: it goes when a thread is
        free, so that its wait for a start is short (see ``_hand_over``).
        """
        while True:
            batch: list[tuple[Task, bool]] = []
            with self._lock:
                busy = len(self._flying) - self._finishing
                room = self._slots * TASKS_PER_THREAD - busy
                if busy >= self._slots and room < min(len(self._queue), self._batch()):
                    return
                while self._queue and busy < self._slots * TASKS_PER_THREAD:
                    task = self._queue[0]
                    if task.timeout is not None and busy >= self._slots:
                        break
                    self._queue.popleft()
                    if not task.future.set_running_or_notify_cancel():
                        continue  # cancelled while queued
                    task.claimed = True
                    task.task_id = next(self._ids)
                    # Counted as handed over now, so that no other thread exceeds the room;
                    # known to cancel() now (a stop aimed at it reaches the workers first).
                    self._flying[task.task_id] = _InFlight(task, None, None)
                    self._by_outcome[id(task.future)] = task.task_id
                    batch.append((task, busy >= self._slots and not self._max_retries))
                    busy += 1
            if not batch:
                return
            self._hand_over(batch)

    def _batch(self) -> int:
        """How many tasks make a batch worth a round trip (``BATCH_SHARE``)."""
        return max(1, int(self._slots * TASKS_PER_THREAD * BATCH_SHARE))

    def _count_slots(self) -> int:
        """The cluster's worker threads: how many tasks it may have at once."""
        threads: dict[str, int] = self._client.nthreads()
        return max(1, sum(threads.values()))

    def _hand_over(self, batch: list[tuple[Task, bool]]) -> None:
        """Submit ``batch`` (tasks, and whether each must confirm its start) as one
        graph: one message to the scheduler however many tasks it holds."""
        tasks = [task for task, _ in batch]
        timed = any(task.timeout is not None for task in tasks)
        try:
            if timed:
                # A timed task's clock starts as it starts on its worker (after the
                # initializer there, as locally): the router listens before it can happen.
                _StartRouter.of(self._client).watch(self)
            futures = self._client.map(
                remote.run_task,
                [self._id] * len(tasks),
                [task.task_id for task in tasks],
                [int(task.kind) for task in tasks],
                [self._function_id(task.fn) for task in tasks],
                [task.fn for task in tasks],
                [task.args for task in tasks],
                [task.buffers for task in tasks],
                [task.timeout is not None for task in tasks],
                [confirm for _, confirm in batch],
                key=[remote.task_key(self._id, task.task_id) for task in tasks],
                pure=False,
            )
        except Exception as exc:
            for task in tasks:
                self.call_soon(functools.partial(self._fail_now, task, _lost_cluster(exc)))
            with self._lock:
                for task in tasks:
                    self._flying.pop(task.task_id, None)
                    self._by_outcome.pop(id(task.future), None)
            return
        watched: list[tuple[int, Any]] = []
        for task, future in zip(tasks, futures, strict=True):
            deadline = None
            if task.timeout is not None:  # until it starts (_on_started), a bound on the wait
                deadline = time.monotonic() + task.timeout + START_WAIT_SECONDS
            flying = _InFlight(task, future, deadline)
            with self._lock:
                placeholder = self._flying.get(task.task_id)
                if placeholder is None:  # settled meanwhile: terminated
                    future.cancel()
                    continue
                # A cancel() that came during the submit: the workers skip it already.
                flying.stopping, flying.stop_sent = placeholder.stopping, placeholder.stop_sent
                self._flying[task.task_id] = flying
            watched.append((task.task_id, future))
        _watch(self._client, self._inbox, watched)
        if timed:
            self._wake()  # the settler's next timeout may be one of these

    def _on_started(self, task_id: int) -> None:
        """On the settler thread: the task started on its worker (``NoRetries``' event,
        forwarded to this client by the scheduler): its ``task_timeout`` runs from now."""
        with self._lock:
            flying = self._flying.get(task_id)
            if flying is None or flying.task.timeout is None:
                return
            # With max_retries, a run after its worker died has a timeout of its own.
            if not flying.started or self._max_retries:
                flying.started = True
                flying.deadline = time.monotonic() + flying.task.timeout

    def _function_id(self, data: bytes) -> int:
        with self._lock:
            fn_id = self._functions.get(data)
            if fn_id is None:
                if len(self._functions) >= FUNCTIONS_KEPT:
                    self._functions.clear()  # the workers unpickle them again
                fn_id = self._functions[data] = next(self._function_ids)
            return fn_id

    # -- the settler thread ------------------------------------------------------------

    def _settle_loop(self) -> None:
        engine_thread.engine = self  # callbacks run here: they must not wait for the pool
        try:
            self._set_up()
            while not self._wind_down_if_due():
                self._settle_some(self._wait())
        except BaseException as exc:  # a bug: fail what is pending, as the manager does
            self._break(internal_error(exc))
            self._wind_down_if_due()

    def _wait(self) -> list[int | Callable[[], None]]:
        """What arrived, waiting at most until the next deadline (or CHECK_SECONDS)."""
        timeout = CHECK_SECONDS
        now = time.monotonic()
        with self._lock:
            for flying in self._flying.values():
                if flying.settled:
                    continue
                if flying.stopping is not None:
                    due: float | None = flying.stopping + STOP_GRACE_SECONDS
                else:
                    due = flying.deadline
                if due is not None and not flying.finished:
                    timeout = min(timeout, max(0.0, due - now))
            if self._unfetched:
                due = self._unfetched_since + FETCH_WAIT_SECONDS
                timeout = min(timeout, max(0.0, due - now))
        if self._recomputing:
            timeout = min(timeout, RECOMPUTE_POLL_SECONDS)
        items: list[int | Callable[[], None]] = []
        with contextlib.suppress(queue.Empty):
            items.append(self._inbox.get(timeout=timeout))
            while True:
                items.append(self._inbox.get_nowait())
        return items

    def _settle_some(self, items: list[int | Callable[[], None]]) -> None:
        done: list[_InFlight] = []
        for item in items:
            if isinstance(item, int):
                with self._lock:
                    flying = self._flying.get(item)
                if flying is not None:
                    done.append(flying)
            else:
                item()
        if self._recomputing:
            back = [f for f in self._recomputing if f.future.status not in _COMPUTING]
            if back:
                self._recomputing = [f for f in self._recomputing if f not in back]
                done.extend(back)
        if done:
            # Their threads are free: the next tasks go out before the answers are fetched.
            with self._lock:
                for flying in done:
                    if not flying.finished:
                        flying.finished = True
                        self._finishing += 1
            if not self._unfetched:
                self._unfetched_since = time.monotonic()
            self._unfetched.extend(done)
            self._dispatch()
        if self._unfetched and self._fetch_due():
            done, self._unfetched = self._unfetched, []
            try:
                self._settle_finished(done)
            finally:
                with self._lock:  # any not forgotten (an error on the way) count again
                    for flying in done:
                        if flying.finished and self._flying.get(flying.task.task_id) is flying:
                            flying.finished = False
                            self._finishing -= 1
        self._check_deadlines()
        if (self._queue or self._flying) and time.monotonic() - self._slots_counted > CHECK_SECONDS:
            self._check_workers()
        self._dispatch()
        self._check_connected()

    def _fetch_due(self) -> bool:
        """Whether the finished tasks' answers are fetched now (see BATCH_SHARE)."""
        if len(self._unfetched) >= self._batch() or self._state is not PoolState.RUNNING:
            return True
        if time.monotonic() - self._unfetched_since >= FETCH_WAIT_SECONDS:
            return True
        with self._lock:
            return len(self._flying) == self._finishing  # none is still running

    def _check_workers(self) -> None:
        """Count the cluster's threads again (workers join and leave); tasks waiting
        while it has had none for NO_WORKERS_SECONDS fail, instead of waiting for a
        worker that may never come."""
        now = self._slots_counted = time.monotonic()
        try:
            threads: dict[str, int] = self._client.nthreads()
        except Exception:
            return  # the connection check deals with it
        self._slots = max(1, sum(threads.values()))
        if threads:
            self._no_workers_since = None
            return
        if self._no_workers_since is None:
            self._no_workers_since = now
        elif now - self._no_workers_since > NO_WORKERS_SECONDS:
            from ._std_errors import WorkerLostError

            with self._lock:
                flights = [f for f in self._flying.values() if not (f.settled or f.finished)]
            for flying in flights:
                error = WorkerLostError(
                    f"the dask cluster has had no workers for {NO_WORKERS_SECONDS:.0f} s "
                    f"with {flying.task.describe()} waiting (its worker left, or was "
                    f"retired, and none came instead)"
                )
                self._settle(flying, error=error)
                if flying.future is not None:
                    flying.future.cancel()

    def _check_connected(self) -> None:
        """A client that has not been connected to the scheduler for RECONNECT_SECONDS
        breaks the pool: its tasks fail, instead of waiting for a scheduler that may
        never come back."""
        status = self._client.status
        if status == "running":
            self._disconnected_since = None
            return
        now = time.monotonic()
        if self._disconnected_since is None:
            self._disconnected_since = now
        elif now - self._disconnected_since > RECONNECT_SECONDS or status == "closed":
            gone = ConnectionError(f"the dask client is {status}: the scheduler is gone")
            self._break(_lost_cluster(gone))

    def _settle_finished(self, done: list[_InFlight]) -> None:
        """Fetch the answers of finished tasks (one round trip for all), settle each
        (unless settled already), and free their slots. One whose result was lost with
        its worker meanwhile waits for dask to compute it again (``_recomputing``)."""
        statuses = [flying.future.status for flying in done]  # (read once: they change)
        ok = [f for f, status in zip(done, statuses, strict=True) if status == "finished"]
        answers: list[Any] = []
        if ok:
            try:
                answers = self._client.gather([flying.future for flying in ok])
            except Exception:  # one would not come: fetch each, to fail only that one
                answers = [_one_answer(flying.future) for flying in ok]
        for flying, got in zip(ok, answers, strict=True):
            self._on_answer(flying, got)
        for flying, status in zip(done, statuses, strict=True):
            if status in _COMPUTING and not flying.settled:
                self._recomputing.append(flying)
            else:
                if status != "finished":
                    self._on_lost(flying)
                self._forget(flying.task)

    def _on_answer(self, flying: _InFlight, got: Any) -> None:
        if isinstance(got, BaseException):
            if _is_connection_error(got):
                self._on_lost(flying, got)
            else:  # its answer could not be sent, or decoded here: that task fails
                self._settle(
                    flying,
                    error=self._dialect.undecodable_result(got, flying.task.describe(), "?"),
                )
            return
        message, records, worker = got
        if records:
            from ._logs import replay

            for record in records:
                replay(worker, record)
        task = flying.task
        if type(message) is wire.InitFailed:
            error = self._initializer_error(message.error, worker)
            self._break(error)
            self._settle(flying, error=self._broken_error or error)
            return
        if type(message) in (wire.Interrupted, wire.Skipped):
            self._settle_stopped(flying, worker)
            return
        if type(message) is remote.Abandoned:
            self._settle(flying, error=self._abandoned(task, message.worker))
            return
        if type(message) is remote.Unconfirmed:
            if task.cancel is not None:  # cancelled meanwhile: it never ran, as asked
                self._settle_stopped(flying, worker)
                return
            cause = RuntimeError(
                f"{message.worker} could not confirm the start of {task.describe()} with the "
                f"scheduler, so it did not run it"
            )
            self._settle(flying, error=_lost_cluster(cause))
            return
        if flying.settled:
            return  # timed out, or stopped: its answer came too late
        value, failed = answer(task, message, self._dialect, worker)
        self._settle(flying, value=value, error=failed)

    def _on_lost(self, flying: _InFlight, error: BaseException | None = None) -> None:
        """The dask future did not finish: its worker died, it was cancelled, or the
        connection to the scheduler was lost."""
        status = flying.future.status
        if error is None and status == "error":
            error = _one_answer(flying.future)
        task = flying.task
        if task.cancel is not None or task.timed_out:
            self._settle_stopped(flying, "the cluster")
        elif _is_killed_worker(error):
            self._settle(flying, error=self._worker_lost(task, error))
        elif self._state is PoolState.TERMINATING or self._state.is_final:
            self._settle(flying, error=self._dialect.terminated_error())
        else:
            cause = error if error is not None else RuntimeError(f"dask future {status}")
            self._settle(flying, error=_lost_cluster(cause))

    def _settle_stopped(self, flying: _InFlight, worker: str) -> None:
        task = flying.task
        if task.cancel is not None:
            self._settle(flying, error=CancelledError(), cancelled=True)
        elif task.timed_out:
            self._settle(flying, error=self._timeout_error(task, worker))
        else:
            self._settle(flying, error=self._dialect.terminated_error())

    def _settle(
        self,
        flying: _InFlight,
        *,
        value: Any = None,
        error: BaseException | None = None,
        cancelled: bool = False,
    ) -> None:
        if flying.settled:
            return
        flying.settled = True
        task = flying.task
        resolve(task.future, value=value, error=error)
        if task.cancel is not None:
            task.cancel.cancelled = cancelled
            task.cancel.done.set()

    def _forget(self, task: Task) -> None:
        """Its dask future has finished: it no longer takes a slot."""
        with self._lock:
            flying = self._flying.pop(task.task_id, None)
            if flying is not None and flying.finished:
                flying.finished = False
                self._finishing -= 1
            self._by_outcome.pop(id(task.future), None)
        if flying is not None and flying.future is not None:
            flying.future.release()

    def _fail_now(self, task: Task, error: BaseException) -> None:
        resolve(task.future, error=error)

    # -- stops, deadlines ----------------------------------------------------------------

    def _stop(self, task_id: int) -> None:
        """Stop a task wherever it is: skipped if it has not started (then it is settled
        as stopped at once), interrupted if it runs. A task that finished meanwhile keeps
        its answer."""
        with self._lock:
            flying = self._flying.get(task_id)
            if flying is None or flying.stop_sent:
                return
            flying.stop_sent = True
            if flying.stopping is None:
                flying.stopping = time.monotonic()
        try:
            found = self._client.run(
                remote.stop, self._id, task_id, cancel=True, wait=True, on_error="return"
            )
        except Exception:
            found = None  # not known where it is: its answer (or the grace) settles it
        known = found is not None and all(isinstance(what, str) for what in found.values())
        if known and flying.future is not None and set(found.values()) <= {"absent"}:
            # Not started anywhere: every worker now skips it, and the scheduler drops it.
            flying.future.cancel()
        self._wake()

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            flights = list(self._flying.values())
        for flying in flights:
            if flying.finished:
                continue  # it ran to its end: its answer is on its way (``_unfetched``)
            if flying.settled:
                if flying.stopping is not None and now - flying.stopping > STOP_GRACE_SECONDS:
                    # Stopped, and still not done (blocked in C code): it no longer
                    # counts, for the slots or for close(); its worker thread is busy
                    # until the call returns, and dask queues tasks behind it there.
                    self._forget(flying.task)
                continue
            if flying.stopping is not None:
                if now - flying.stopping > STOP_GRACE_SECONDS:
                    # It did not say it stopped (blocked in C code, or its worker is
                    # gone): settle it without; its answer, if it comes, is dropped.
                    self._settle_stopped(flying, "the cluster")
            elif flying.deadline is not None and now >= flying.deadline:
                # The caller hears of it now; the worker stops the task at its next
                # bytecode (a task blocked in C code holds its thread until it returns).
                flying.task.timed_out = True
                flying.stopping = now
                self._settle_stopped(flying, "the cluster")
                # Asking the workers takes a round trip (longer, if one is unresponsive):
                # not on this thread, which settles every other task.
                threading.Thread(
                    target=self._stop, args=(flying.task.task_id,), daemon=True
                ).start()

    # -- state changes and winding down --------------------------------------------------

    def _become(self, state: PoolState, error: BaseException | None = None) -> bool:
        with self._lock:
            if not self._state.can_become(state):
                return False
            self._state = state
            if error is not None:
                self._broken_error = error
        self._wake()
        return True

    def _break(self, error: BaseException) -> None:
        if self._become(PoolState.BROKEN, error):
            logger.error("hookpool: %s is broken: %s", self._name, error)

    def _wind_down_if_due(self) -> bool:
        """Once closed with nothing left, or terminated, or broken: run the finalizers on
        the cluster and end the thread. True if it did."""
        state = self._state
        if state is PoolState.RUNNING:
            return False
        if state is PoolState.CLOSING and (self._flying or self._queue or self._holds):
            return False
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            flights = list(self._flying.values())
        self._unfetched.clear()
        self._recomputing.clear()
        for task in queued:
            if state is PoolState.BROKEN:
                resolve(task.future, error=self._broken_error)
            else:
                task.future.cancel()
        if flights:  # terminated or broken
            error = self._broken_error if state is PoolState.BROKEN else None
            with contextlib.suppress(Exception):
                self._client.run(remote.stop_all, self._id, wait=False)
            for flying in flights:
                if flying.future is not None:
                    flying.future.cancel()
                if error is not None:
                    self._settle(flying, error=error)
                else:
                    self._settle(flying, error=self._dialect.terminated_error())
                self._forget(flying.task)
        self._drain_inbox()
        _StartRouter.of(self._client).forget(self)
        self._unregister()
        with self._lock:
            self._ended = True  # call_soon runs callbacks itself from now on
        self._drain_inbox()  # what came during _unregister
        self._become(PoolState.STOPPED)
        return True

    def _drain_inbox(self) -> None:
        """Run what is left to run here (callbacks of tasks settled above)."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if not isinstance(item, int):
                item()

    def _unregister(self) -> None:
        """The finalizer runs on every worker that ran the initializer."""
        try:
            self._client.unregister_worker_plugin(self._plugin_name)
        except Exception as exc:
            logger.warning(
                "hookpool: could not remove %s's hooks from the cluster (its finalizers "
                "run when the workers exit instead): %s",
                self._name,
                exc,
            )
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close(timeout=RPC_SECONDS)

    def _wake(self) -> None:
        self._inbox.put(_nothing)

    # -- errors ------------------------------------------------------------------------

    def _set_up(self) -> None:
        """Put the pool's hooks on every worker, on the settler thread: the constructor
        does not wait (a task that reaches a worker first waits there for them)."""
        try:
            _register(self._client, remote.NoRetries(), remote.NoRetries.name)
            try:
                _register(self._client, self._plugin, self._plugin_name)
            except OSError:
                # A worker left while the hooks were being installed (CommClosedError):
                # the scheduler keeps them for every worker that starts from now on.
                logger.debug("hookpool: a worker left while %s's hooks were installed", self)
        except Exception as exc:
            self._break(_set_up_failed(exc))

    def _initializer_error(self, report: wire.ErrorReport, worker: str) -> BaseException:
        from ._std_errors import InitializerError

        error = InitializerError(
            f"the initializer raised in cluster worker {worker}: {report.type_name}: "
            f"{report.message}. hookpool does not retry an initializer that fails; fix "
            f"it, or catch the error inside it"
        )
        error.__cause__ = rebuild(report, self._dialect.remote_traceback)
        return error

    def _worker_lost(self, task: Task, error: BaseException | None) -> BaseException:
        from ._std_errors import WorkerLostError

        worker = getattr(getattr(error, "last_worker", None), "address", "?")
        if self._max_retries:
            lost = WorkerLostError(
                f"the cluster worker {worker} died holding {task.describe()}, as "
                f"{self._max_retries} others had before (max_retries={self._max_retries}): "
                f"it is not run again. Other tasks are not affected."
            )
        else:
            lost = WorkerLostError(
                f"the cluster worker {worker} died while running {task.describe()}. The "
                f"task was not run again elsewhere (tasks are not assumed idempotent: "
                f"max_retries= allows it); other tasks are not affected."
            )
        lost.__cause__ = error
        return lost

    def _abandoned(self, task: Task, worker: str) -> BaseException:
        from ._std_errors import WorkerLostError

        return WorkerLostError(
            f"the cluster worker {worker} left (retired, or died after the task finished, "
            f"its result with it) while holding {task.describe()}, which may have run to "
            f"its end there. dask would run it again on another worker; hookpool does not "
            f"(tasks are not assumed idempotent). Other tasks are not affected."
        )

    def _timeout_error(self, task: Task, worker: str) -> BaseException:
        return TaskTimeoutError(
            f"{task.describe()} ran longer than its timeout of {task.timeout} s on "
            f"{worker}; it was stopped"
        )

    def _refusal(self, state: PoolState) -> Exception:
        return refusal(state, self._name, self._broken_error, self._dialect)


class _StartRouter:
    """Delivers the "task started" events of one client's pools (the scheduler sends
    them to the client that subscribed to ``remote.STARTED``; a client has one handler
    per topic, hence one router for all its pools)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._engines: weakref.WeakValueDictionary[str, ClusterEngine] = (
            weakref.WeakValueDictionary()
        )
        self._subscribed = False

    @classmethod
    def of(cls, client: Any) -> _StartRouter:
        with _routers_lock:
            router = _routers.get(client)
            if router is None:
                router = _routers[client] = cls(client)
            return router

    def watch(self, engine: ClusterEngine) -> None:
        with _routers_lock:
            self._engines[engine._id] = engine
            if not self._subscribed:
                self._client.subscribe_topic(remote.STARTED, self)
                self._subscribed = True

    def forget(self, engine: ClusterEngine) -> None:
        with _routers_lock:
            self._engines.pop(engine._id, None)

    def __call__(self, event: Any) -> None:
        """On the client's event loop: hand the event to its pool's settler thread."""
        key = event[1] if isinstance(event, tuple) else event
        if not isinstance(key, str) or not key.startswith(remote.KEY_PREFIX):
            return
        pool_id, _, task_id = key[len(remote.KEY_PREFIX) :].rpartition("-")
        engine = self._engines.get(pool_id)
        if engine is not None and task_id.isdigit():
            engine.call_soon(functools.partial(engine._on_started, int(task_id)))


_routers: weakref.WeakKeyDictionary[Any, _StartRouter] = weakref.WeakKeyDictionary()
_routers_lock = threading.Lock()


def _finished(inbox: queue.SimpleQueue[Any], task_id: int, future: Any) -> None:
    """A dask future is done (on the client's event loop, see ``_watch``): tell the
    settler."""
    inbox.put(task_id)


def _watch(client: Any, inbox: queue.SimpleQueue[Any], watched: list[tuple[int, Any]]) -> None:
    """Have each future's task id put in ``inbox`` once the future is done.

    ``Future.add_done_callback`` costs the client's event loop a wake-up per future, and
    hands each callback to a thread of its own; here one wake-up watches a batch, and the
    loop puts the ids in the inbox itself (``_finished`` does not block)."""
    done_callback = _done_callback()
    if done_callback is None:  # not in this version of distributed: the public way
        for task_id, future in watched:
            future.add_done_callback(functools.partial(_finished, inbox, task_id))
        return
    client.loop.add_callback(_watch_on_loop, done_callback, inbox, watched)


def _done_callback() -> Callable[..., Any] | None:
    """The coroutine ``Future.add_done_callback`` runs on the client's event loop (it
    waits for the future, then calls its callback there), if distributed has it."""
    try:
        from distributed.client import done_callback
    except ImportError:
        return None
    found: Callable[..., Any] = done_callback
    return found


#: The watchers ``_watch_on_loop`` started and that still run (asyncio keeps only weak
#: references to tasks).
_watchers: set[asyncio.Task[None]] = set()


def _watch_on_loop(
    done_callback: Callable[..., Any],
    inbox: queue.SimpleQueue[Any],
    watched: list[tuple[int, Any]],
) -> None:
    """On the client's event loop: one watcher per future, none yet waiting."""
    for task_id, future in watched:
        watcher = asyncio.ensure_future(
            done_callback(future, functools.partial(_finished, inbox, task_id))
        )
        _watchers.add(watcher)
        watcher.add_done_callback(_watchers.discard)


def _nothing() -> None:
    """Wakes the settler thread."""


def _one_answer(future: Any) -> Any:
    """One future's answer, or the exception that stands for it."""
    try:
        if future.status == "error":
            return future.exception(timeout=RPC_SECONDS)
        return future.result(timeout=RPC_SECONDS)
    except BaseException as exc:
        return exc


def _is_connection_error(error: BaseException) -> bool:
    """An error that says the cluster could not be reached (not this task's fault)."""
    return isinstance(error, (OSError, TimeoutError)) or type(error).__name__ in (
        "CommClosedError",
        "FutureCancelledError",
        "CancelledError",
    )


def _is_killed_worker(error: BaseException | None) -> bool:
    return type(error).__name__ == "KilledWorker"


def _lost_cluster(cause: BaseException) -> BaseException:
    from ._std_errors import PoolBrokenError

    error = PoolBrokenError(
        f"the pool lost touch with the dask cluster: {type(cause).__name__}: {cause}. "
        f"Is the scheduler still running, and reachable?"
    )
    error.__cause__ = cause
    return error


def _set_up_failed(cause: BaseException) -> BaseException:
    from ._std_errors import PoolBrokenError

    error = PoolBrokenError(
        f"could not install the pool's hooks on the dask cluster: {type(cause).__name__}: "
        f"{cause}. hookpool must be installed (same version) where the scheduler and the "
        f"workers run"
    )
    error.__cause__ = cause
    return error


def _register(client: Any, plugin: Any, name: str) -> None:
    client.register_plugin(plugin, name=name)


def _hooks_data(hooks: Hooks) -> bytes:
    """The hooks, pickled once for every worker of the cluster. What may only pass to a
    child by inheritance (a multiprocessing Lock, Queue, Value) cannot reach one."""
    try:
        return dumps_for_cluster(hooks)
    except Exception as exc:
        raise TypeError(
            f"the initializer, finalizer or their arguments cannot be sent to a cluster's "
            f"workers ({type(exc).__name__}: {exc}). multiprocessing Locks, Queues, "
            f"Events, Values and shared memory exist on one machine only: on a cluster, "
            f"use distributed.Lock, distributed.Queue, distributed.Event or "
            f"distributed.Variable instead"
        ) from exc


def _root_level() -> int:
    return logging.getLogger().getEffectiveLevel()


def start_cluster_engine(
    cluster: object,
    *,
    inline: bool,
    hooks: Hooks,
    local_only: dict[str, object],
    dialect: Dialect,
    name: str,
    forward_logging: bool,
    max_retries: int = 0,
) -> ClusterEngine:
    """The engine of a pool on ``cluster``, after refusing what has no meaning there.

    ``local_only``: the facade's arguments that only local workers can honour, by the
    name the caller used, with the value given (None: not given). ``max_retries``: how
    many more times a task may run when workers die holding it (``NoRetries``).

    Raises:
        ValueError: ``inline`` with a cluster, or a local-only argument given.
    """
    if inline:
        raise ValueError(
            "inline=True (or HOOKPOOL_INLINE=1) and cluster= ask for two different places "
            "to run tasks: choose one"
        )
    for argument, value in local_only.items():
        if value is not None:
            raise ValueError(
                f"{argument}={value!r} cannot apply on a cluster: {_INSTEAD[argument]}"
            )
    client, owns_client = connect(cluster)
    try:
        return ClusterEngine(
            client=client,
            owns_client=owns_client,
            hooks=hooks,
            dialect=dialect,
            name=name,
            forward_logging=forward_logging,
            max_retries=max_retries,
        )
    except BaseException:
        if owns_client:
            client.close()
        raise


_WORKER_LIFETIME = (
    "dask starts and retires the workers, not hookpool. Use the workers' own settings "
)
#: What to use instead of a local-only argument on a cluster.
_INSTEAD = {
    "maxtasksperchild": _WORKER_LIFETIME
    + "(distributed.worker.lifetime.duration restarts workers after a while; "
    "client.restart_workers() on demand)",
    "max_tasks_per_child": _WORKER_LIFETIME
    + "(distributed.worker.lifetime.duration restarts workers after a while; "
    "client.restart_workers() on demand)",
    "max_memory_per_child": _WORKER_LIFETIME
    + "(memory_limit: a worker's nanny restarts it above distributed.worker.memory."
    "terminate of it)",
    "context": "dask starts the workers, with its own start method",
    "mp_context": "dask starts the workers, with its own start method",
}
