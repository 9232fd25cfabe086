"""Either facade behind one small interface, for tests that check a behaviour on both
(``facade`` fixture in conftest): ``hookpool.Pool`` spoken in its own words
(``apply_async``/``map``/``close``+``join``), ``hookpool.ProcessPoolExecutor`` in its own
(``submit``/``map``/``shutdown``)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from tasks_exec import join_manager

import hookpool


class Face:
    """One facade behind a common interface."""

    def __init__(self, kind: str, workers: int, *, cluster: Any = None, **hooks: Any) -> None:
        self.kind = kind
        #: On a dask cluster (a ``distributed.Client``), or None: local workers.
        self.cluster = cluster
        self.futures: list[Future[Any]] = []
        self.pool: hookpool.Pool | None = None
        self.executor: hookpool.ProcessPoolExecutor | None = None
        if cluster is not None:
            hooks["cluster"] = cluster
        if kind == "Pool":
            self.pool = hookpool.Pool(workers, **hooks)
        else:
            self.executor = hookpool.ProcessPoolExecutor(workers, **hooks)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self.pool is not None:
            future = self.pool.apply_async(fn, args).future
        else:
            assert self.executor is not None
            future = self.executor.submit(fn, *args)
        self.futures.append(future)
        return future

    def apply(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call and wait (``apply_async().get()``; ``submit().result()``), bounded."""
        if self.pool is not None:
            return self.pool.apply_async(fn, args).get(timeout=30)
        return self.submit(fn, *args).result(timeout=30)

    def map(self, fn: Callable[..., Any], items: list[Any] | range) -> list[Any]:
        if self.pool is not None:
            return self.pool.map_async(fn, items).get(timeout=30)
        assert self.executor is not None
        return list(self.executor.map(fn, items, timeout=30))

    def shutdown(self) -> None:
        """The orderly way out: ``close()`` + ``join()``; ``shutdown(wait=True)``."""
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
        else:
            assert self.executor is not None
            self.executor.shutdown(wait=True)

    @property
    def worker_pids(self) -> list[int]:
        face = self.pool if self.pool is not None else self.executor
        assert face is not None
        return face.worker_pids

    def stop(self) -> bool:
        """Teardown: stop now, even with a long task running. False if the manager had to
        be poked awake (a lost wake-up, see ``tasks_exec.join_manager``)."""
        if self.cluster is not None:
            face = self.pool if self.pool is not None else self.executor
            assert face is not None
            face._manager.terminate()
            assert face._manager.join(30), "the pool's settler thread did not end"
            return True
        if self.pool is not None:
            self.pool._manager.terminate()
            awake = join_manager(self.pool._manager)
            self.pool.terminate()
            return awake
        assert self.executor is not None
        self.executor.shutdown(wait=False, cancel_futures=True)
        for future in self.futures:
            if not future.done():
                self.executor.cancel(future)  # stops a running task's worker
        awake = join_manager(self.executor._manager)
        self.executor.shutdown(wait=True)
        return awake


MakeFace = Callable[..., Face]
