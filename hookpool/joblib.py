"""``hookpool.joblib``: run ``joblib.Parallel`` on hookpool workers.

Importing this module registers the joblib backend ``"hookpool"``::

    import joblib
    import hookpool.joblib  # registers the backend

    with joblib.parallel_config(backend="hookpool", n_jobs=4, initializer=setup, finalizer=flush):
        results = joblib.Parallel()(joblib.delayed(work)(x) for x in data)

Everything joblib runs in that block, including the libraries that call joblib inside
(scikit-learn's ``n_jobs``), runs on one set of hookpool workers, each with the
initializer and the finalizer. joblib has no entry points for backends: the import is the
registration. This module, unlike the rest of the package, imports joblib; ``import
hookpool`` does not import it.

Data flow::

    caller thread                        HookpoolBackend / _Workers       hookpool workers
    ─────────────                        ──────────────────────────       ────────────────
    joblib.Parallel()(...)
      │ configure(n_jobs) ──────────────> _Workers.start(n): reuse the
      │                                   executor, or start one of n ──> initializer(*initargs)
      │ BatchedCalls ─> submit(batch, ──> ProcessPoolExecutor.submit ───> batch(): the tasks
      │                 callback)                                            │
      │ BatchCompletionCallBack(future) <── future done, on hookpool's <──────┘
      │   retrieve_result_callback       manager thread; joblib submits
      │   (future.result())              its next batch from there
      │ terminate(): end of the call ───> nothing: the workers stay
      ▼
    the end of the parallel_config block
      backend released ─────────────────> _Workers.release ────────────> finalizer(*finalargs)

Actors:

``HookpoolBackend``
    What joblib calls: ``configure`` at the start of each ``Parallel`` call, ``submit``
    for each batch, ``retrieve_result_callback`` as each batch ends, ``abort_everything``
    when a batch failed, ``terminate`` at the end of the call. joblib makes one
    ``HookpoolBackend`` per ``parallel_config`` block (and one per ``Parallel`` call
    made with ``backend="hookpool"`` outside such a block). Batch sizes come from joblib's
    ``AutoBatchingMixin``, as for its own process backends.

``_Workers``
    The backend's workers: a ``hookpool.ProcessPoolExecutor``, started by the first call
    that needs processes and reused by the next calls that ask for the same number. It
    holds no reference to the backend, so that the backend can be released (the end of
    the ``parallel_config`` block) and release the workers in turn (``weakref.finalize``).
"""

from __future__ import annotations

import re
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

try:
    import joblib
    from joblib.parallel import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
    )
except ImportError as error:  # pragma: no cover - tested in a subprocess
    raise ImportError(
        "hookpool.joblib needs joblib (1.4 or later), which is not installed: "
        "install it with pip install 'hookpool[joblib]'"
    ) from error

from ._executor import ProcessPoolExecutor
from ._hooks import Hooks
from ._identity import current_worker

__all__ = ["HookpoolBackend"]

#: The name ``parallel_config(backend=...)`` and ``Parallel(backend=...)`` know it by.
BACKEND_NAME = "hookpool"
#: The oldest joblib this backend was tested with (``return_as="generator_unordered"``
#: came in 1.4; before 1.5 joblib calls ``apply_async`` where it now calls ``submit``).
MIN_JOBLIB = (1, 4)


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else (0, 0)


if _version(joblib.__version__) < MIN_JOBLIB:
    raise ImportError(
        f"hookpool.joblib needs joblib {'.'.join(map(str, MIN_JOBLIB))} or later, and "
        f"joblib {joblib.__version__} is installed: upgrade it with "
        f"pip install -U 'hookpool[joblib]'"
    )


class _Relay:
    """joblib's callback for one batch, called once as the batch ends, then dropped.

    The callback (joblib's ``BatchCompletionCallBack``) refers to the ``Parallel`` object,
    and so to the backend; after a failed call it also keeps its future (it drops it only
    for the outcomes it registers). Kept by the future after it ran, it would close a
    reference cycle that keeps the backend, and the workers, alive past the end of the
    ``parallel_config`` block until the next garbage collection.
    """

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[Future[Any]], object]) -> None:
        self.callback: Callable[[Future[Any]], object] | None = callback

    def __call__(self, future: Future[Any]) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(future)


class _Workers:
    """The workers of one backend: started by the first call that needs processes, reused
    while the calls ask for the same number, released with the backend.

    Guarantees: the executor in use is replaced only by ``start``, which lets the old
    workers finish the work already given to them and run their finalizers before the
    new ones start; after ``release`` no executor is started again.
    """

    def __init__(self, hooks: Hooks, max_tasks_per_child: int | None) -> None:
        self._hooks = hooks
        self._max_tasks_per_child = max_tasks_per_child
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._size = 0  # the executor's number of workers
        self._released = False
        # Submitted and not done, with the executor running it: what ``stop_pending``
        # stops. Invariant: a future is added before its done-callback that removes it,
        # so a done one never stays.
        self._pending: dict[Future[Any], ProcessPoolExecutor] = {}

    def start(self, n_workers: int) -> None:
        """Make sure ``n_workers`` workers serve the next batches."""
        with self._lock:
            self._check_open()
            old = self._executor
            if old is not None and self._size == n_workers:
                return
            self._executor = None
        if old is not None:
            # Outside the lock, which _settled takes as each of the old batches ends.
            old.shutdown(wait=True)
        with self._lock:
            self._check_open()  # not shut down from another thread meanwhile
            self._executor = ProcessPoolExecutor(
                n_workers,
                initializer=self._hooks.initializer,
                initargs=self._hooks.initargs,
                finalizer=self._hooks.finalizer,
                finalargs=self._hooks.finalargs,
                max_tasks_per_child=self._max_tasks_per_child,
            )
            self._size = n_workers

    def _check_open(self) -> None:
        if self._released:
            raise RuntimeError(
                "this hookpool joblib backend was shut down, and its workers are gone: "
                "use a new one (a new parallel_config block) for more work"
            )

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Future[Any]], object] | None
    ) -> Future[Any]:
        with self._lock:
            executor = self._executor
        if executor is None:
            raise RuntimeError(
                "the hookpool joblib backend has no workers: joblib calls configure() "
                "before submit(); outside joblib, call configure(n_jobs) first"
            )
        future = executor.submit(func)
        with self._lock:
            self._pending[future] = executor
        future.add_done_callback(self._settled)
        if callback is not None:
            future.add_done_callback(_Relay(callback))
        return future

    def _settled(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.pop(future, None)

    def stop_pending(self) -> None:
        """Stop every batch not done, as hookpool's ``cancel`` does: one not started never
        runs; a running one is interrupted, and its worker runs its finalizer and is
        replaced. Returns at once."""
        with self._lock:
            pending = list(self._pending.items())
        for future, executor in pending:
            executor.cancel(future)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            executor = self._executor
        return [] if executor is None else executor.worker_pids

    def release(self, wait: bool) -> None:
        """No more work: the workers finish what they were given, run their finalizers
        and leave. With ``wait``, return once they have left."""
        with self._lock:
            self._released = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait)


class HookpoolBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """The joblib backend ``"hookpool"``: ``joblib.Parallel`` on hookpool workers.

    Made by joblib from ``parallel_config(backend="hookpool", **params)``, which passes
    ``params`` to the constructor; or made directly and passed as
    ``parallel_config(backend=HookpoolBackend(...))``.

    Args:
        nesting_level: set by joblib.
        inner_max_num_threads: not supported (joblib refuses it for this backend, as
            ``supports_inner_max_num_threads`` is False).
        initializer: called as ``initializer(*initargs)`` once in each worker, before its
            first task. May be a lambda or a closure.
        initargs: arguments for the initializer, handed to each worker as it is spawned.
        finalizer: called as ``finalizer(*finalargs)`` once in each worker whose
            initializer ran, as the worker leaves (see "Lifetime of the workers").
        finalargs: arguments for the finalizer, handed over like ``initargs``.
        max_tasks_per_child: a worker leaves (running its finalizer) after this many
            batches and is replaced (running the initializer).

    Lifetime of the workers:
        The first ``Parallel`` call that runs on processes starts workers as its batches
        need them, up to ``n_jobs``. The next calls that ask for the same number reuse
        them; a call that asks for another number waits for the old workers to finish
        their work and run their finalizers, then starts new ones. joblib's
        ``terminate()`` at the end of each call leaves the workers running. They leave,
        each running its finalizer, when:

        - the backend is released: at the end of the ``parallel_config`` block, unless
          something still refers to it (a ``Parallel`` object or an unfinished generator
          kept past the block, the dictionary ``parallel_config`` returns as ``as``); then
          when that goes. The block does not wait for them;
        - ``shutdown()`` is called, or a ``with HookpoolBackend(...) as backend:`` block
          ends: this waits until every finalizer has run;
        - the interpreter exits: hookpool waits for them then.

        As in any hookpool pool, a worker killed with SIGKILL runs no finalizer; its
        batch fails with ``hookpool.WorkerLostError`` and it is replaced.

    Differences from joblib's process backends, on purpose: workers always start with
    spawn; large numpy arrays are pickled whole (joblib's ``max_nbytes``, ``mmap_mode``
    and ``temp_folder`` memory-mapping options are accepted and not used); the number of
    threads of native libraries in the workers is not limited. When a batch fails,
    only the workers running the call's other batches are stopped, each running its
    finalizer (loky kills every worker).
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = 1  # as joblib's own backends: Parallel() with no n_jobs is sequential

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        finalizer: Callable[..., object] | None = None,
        finalargs: Iterable[Any] = (),
        max_tasks_per_child: int | None = None,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if max_tasks_per_child is not None and (
            not isinstance(max_tasks_per_child, int) or max_tasks_per_child <= 0
        ):
            raise ValueError("max_tasks_per_child must be a positive int or None")
        hooks = Hooks.validate(initializer, initargs, finalizer, finalargs)
        self._workers = _Workers(hooks, max_tasks_per_child)
        # Released with the backend: the callback must not refer to the backend itself.
        self._release = weakref.finalize(self, self._workers.release, False)
        self.parallel: Any = None

    # -- what joblib calls -----------------------------------------------------------------

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The number of workers a call with ``n_jobs`` gets: ``-1`` is one per CPU
        (``joblib.cpu_count()``), ``-2`` one fewer, and so on; 1 inside a hookpool worker,
        where a nested call runs sequentially instead of starting processes."""
        if n_jobs == 0:
            raise ValueError(
                "n_jobs=0 has no meaning: ask for a number of workers (n_jobs=4), or "
                "n_jobs=-1 for one per CPU"
            )
        if n_jobs is None:
            return 1
        if current_worker() is not None:
            return 1
        if n_jobs < 0:
            return max(int(joblib.cpu_count()) + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **memmapping_options: object,
    ) -> int:
        """Called by joblib as each ``Parallel`` call starts: start or reuse the workers.

        joblib also passes its memory-mapping options, ``verbose`` and a multiprocessing
        context (``memmapping_options``): hookpool pickles arrays whole and always
        spawns, so they are not used.
        """
        n_workers = self.effective_n_jobs(n_jobs)
        if n_workers == 1 and n_jobs != 1 and current_worker() is not None:
            warnings.warn(
                f"a joblib call with backend='hookpool' and n_jobs={n_jobs} inside a "
                "hookpool worker runs sequentially (n_jobs=1): a worker does not start "
                "workers of its own. Leave the backend unset in nested calls, and joblib "
                "runs them on threads in the worker",
                stacklevel=4,  # configure <- Parallel._initialize_backend <- __call__ <- you
            )
        if n_workers == 1:
            # As joblib's own backends: one job runs in the calling process, no workers.
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._workers.start(n_workers)
        self.parallel = parallel
        return n_workers

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Future[Any]], object] | None = None
    ) -> Future[Any]:
        """Run one batch in a worker; ``callback(future)`` runs as it ends."""
        return self._workers.submit(func, callback)

    # joblib before 1.5 calls apply_async with the same contract.
    apply_async = submit

    def retrieve_result_callback(self, future: Future[Any]) -> Any:
        """The batch's results, or its exception (with the worker's traceback as
        ``__cause__``, which joblib keeps: it drops the exception's own traceback)."""
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A batch failed, the call timed out, or its generator was dropped: joblib
        wants none of the other batches. Those not started never run; the running ones
        are interrupted, and their workers run their finalizers and are replaced (in the
        background: ``ensure_ready`` or not, the backend takes the next call at once)."""
        self._workers.stop_pending()

    def terminate(self) -> None:
        """Called by joblib at the end of each call: the workers stay for the next one."""
        self.reset_batch_stats()
        self.parallel = None  # no cycle with the Parallel object, see _Relay

    # -- explicit lifetime -----------------------------------------------------------------

    def shutdown(self, wait: bool = True) -> None:
        """Release the workers now: they finish the work given to them, run their
        finalizers and leave. With ``wait``, return once every finalizer has run. The
        backend takes no more calls afterwards."""
        self._release.detach()
        self._workers.release(wait)

    def __enter__(self) -> HookpoolBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """``shutdown()``: waits for every worker's finalizer."""
        self.shutdown(wait=True)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (none before the first call)."""
        return self._workers.pids

    def __reduce__(self) -> Any:
        raise TypeError(
            "a HookpoolBackend cannot be pickled: it owns worker processes. Nested joblib "
            "calls in a worker get joblib's nested backend (threads), not this one"
        )


joblib.register_parallel_backend(BACKEND_NAME, HookpoolBackend)
