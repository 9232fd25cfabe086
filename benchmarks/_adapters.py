"""One small, uniform interface over every pool library the benchmarks compare.

Nothing here imports a third-party library at module level: each ``make_*``
factory imports its library when called, inside the measuring child process,
so a missing or broken library only fails its own cells. Nor does it import
``typing`` or ``dataclasses``: the startup case runs with only this module (and
the library) imported, like a script whose first act is to make a pool.
"""

from __future__ import annotations

import multiprocessing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Getter = Callable[[float], Any]
    """Waits for one submitted task: ``getter(timeout_seconds) -> result``."""

WORKERS = 2
"""Every pool in every workload runs with exactly this many worker processes."""


def spawn_context() -> Any:
    return multiprocessing.get_context("spawn")


class Adapter(ABC):
    """The operations the workloads need, whatever the library calls them."""

    supports_lambda: bool = False

    @abstractmethod
    def start(self) -> None:
        """Construct the pool (workers may start now or lazily)."""

    @abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> Getter:
        """Schedule ``fn(*args)``; return a function that waits for its result."""

    @abstractmethod
    def map(
        self, fn: Callable[..., Any], items: list[Any], chunksize: int | None, timeout: float
    ) -> list[Any]:
        """Ordered map; ``chunksize=None`` means the library's own default."""

    @abstractmethod
    def imap(self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        """Ordered, lazily consumed map over a possibly infinite iterable."""

    @abstractmethod
    def shutdown(self) -> None:
        """Graceful shutdown: no new work, wait for the workers to exit."""


class PoolAdapter(Adapter):
    """``multiprocessing.Pool``-style API (stdlib Pool, hookpool.Pool)."""

    def __init__(self, factory: Callable[[], Any], *, supports_lambda: bool) -> None:
        self._factory = factory
        self._pool: Any = None
        self.supports_lambda = supports_lambda

    def start(self) -> None:
        self._pool = self._factory()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Getter:
        getter: Getter = self._pool.apply_async(fn, args).get
        return getter

    def map(
        self, fn: Callable[..., Any], items: list[Any], chunksize: int | None, timeout: float
    ) -> list[Any]:
        result: list[Any] = self._pool.map_async(fn, items, chunksize).get(timeout)
        return result

    def imap(self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        return iter(self._pool.imap(fn, items, chunksize))

    def shutdown(self) -> None:
        self._pool.close()
        self._pool.join()


class ExecutorAdapter(Adapter):
    """``concurrent.futures.Executor`` API (stdlib PPE, hookpool PPE, loky)."""

    def __init__(self, factory: Callable[[], Any], *, supports_lambda: bool) -> None:
        self._factory = factory
        self._ex: Any = None
        self.supports_lambda = supports_lambda

    def start(self) -> None:
        self._ex = self._factory()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Getter:
        getter: Getter = self._ex.submit(fn, *args).result
        return getter

    def map(
        self, fn: Callable[..., Any], items: list[Any], chunksize: int | None, timeout: float
    ) -> list[Any]:
        extra = {} if chunksize is None else {"chunksize": chunksize}
        return list(self._ex.map(fn, items, timeout=timeout, **extra))

    def imap(self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        return iter(self._ex.map(fn, items, chunksize=chunksize))

    def shutdown(self) -> None:
        self._ex.shutdown(wait=True)


class PebbleAdapter(Adapter):
    """``pebble.ProcessPool`` (schedule / map-future API)."""

    def __init__(self) -> None:
        self._pool: Any = None

    def start(self) -> None:
        import pebble

        self._pool = pebble.ProcessPool(max_workers=WORKERS, context=spawn_context())

    def submit(self, fn: Callable[..., Any], *args: Any) -> Getter:
        getter: Getter = self._pool.schedule(fn, args=args).result
        return getter

    def map(
        self, fn: Callable[..., Any], items: list[Any], chunksize: int | None, timeout: float
    ) -> list[Any]:
        extra = {} if chunksize is None else {"chunksize": chunksize}
        return list(self._pool.map(fn, items, **extra).result())

    def imap(self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        return iter(self._pool.map(fn, items, chunksize=chunksize).result())

    def shutdown(self) -> None:
        self._pool.close()
        self._pool.join()


class MpireAdapter(Adapter):
    """``mpire.WorkerPool`` with spawn and ``keep_alive=True`` (workers reused across calls)."""

    def __init__(self) -> None:
        self._pool: Any = None

    def start(self) -> None:
        import mpire

        self._pool = mpire.WorkerPool(n_jobs=WORKERS, start_method="spawn", keep_alive=True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Getter:
        getter: Getter = self._pool.apply_async(fn, args=args).get
        return getter

    def map(
        self, fn: Callable[..., Any], items: list[Any], chunksize: int | None, timeout: float
    ) -> list[Any]:
        return list(self._pool.map(fn, items, chunk_size=chunksize))

    def imap(self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int) -> Iterator[Any]:
        return iter(self._pool.imap(fn, items, chunk_size=chunksize))

    def shutdown(self) -> None:
        self._pool.stop_and_join()


def _make_stdlib_pool(context: str = "spawn", maxtasksperchild: int | None = None) -> Adapter:
    ctx = multiprocessing.get_context(context)
    return PoolAdapter(
        lambda: ctx.Pool(WORKERS, maxtasksperchild=maxtasksperchild), supports_lambda=False
    )


def _make_stdlib_ppe() -> Adapter:
    from concurrent.futures import ProcessPoolExecutor

    return ExecutorAdapter(
        lambda: ProcessPoolExecutor(WORKERS, mp_context=spawn_context()), supports_lambda=False
    )


def _make_hookpool_pool(context: str = "spawn", maxtasksperchild: int | None = None) -> Adapter:
    import hookpool

    pool_cls: Any = hookpool.Pool
    options: dict[str, Any] = {}
    if context != "spawn":  # hookpool's default; otherwise the call is a user's plain Pool(2)
        options["context"] = context
    if maxtasksperchild is not None:
        options["maxtasksperchild"] = maxtasksperchild
    return PoolAdapter(lambda: pool_cls(WORKERS, **options), supports_lambda=True)


def _make_hookpool_ppe() -> Adapter:
    import hookpool

    executor_cls: Any = hookpool.ProcessPoolExecutor  # type: ignore[attr-defined,unused-ignore]
    return ExecutorAdapter(lambda: executor_cls(WORKERS), supports_lambda=True)


def _make_loky() -> Adapter:
    import loky

    return ExecutorAdapter(
        lambda: loky.ProcessPoolExecutor(max_workers=WORKERS), supports_lambda=True
    )


def _no_pool() -> None:
    """The pseudo-libraries' ``make``: their cases start processes of their own."""


class Library:
    """One library the benchmarks can run (or a pseudo-library, see ``PSEUDO``).

    ``make(**options)`` returns the adapter; the stdlib Pool and hookpool Pool accept
    ``context=`` (a start method name) and ``maxtasksperchild=``, the others none.
    """

    def __init__(
        self,
        key: str,
        title: str,
        module: str,
        optional: bool,
        make: Callable[..., Adapter | None],
        entry: str,
    ) -> None:
        self.key = key
        self.title = title
        self.module = module
        """Distribution/module whose presence decides whether an optional library runs."""
        self.optional = optional
        self.make = make
        self.entry = entry
        """The import a user's script starts with, as ``module:name`` (see ``_main.py``)."""


LIBRARIES: dict[str, Library] = {
    lib.key: lib
    for lib in (
        Library(
            "pool",
            "stdlib Pool",
            "multiprocessing",
            False,
            _make_stdlib_pool,
            "multiprocessing:get_context",
        ),
        Library(
            "ppe",
            "stdlib PPE",
            "concurrent.futures",
            False,
            _make_stdlib_ppe,
            "concurrent.futures:ProcessPoolExecutor",
        ),
        Library(
            "hookpool", "hookpool Pool", "hookpool", False, _make_hookpool_pool, "hookpool:Pool"
        ),
        Library(
            "hookpool-ppe",
            "hookpool PPE",
            "hookpool",
            True,
            _make_hookpool_ppe,
            "hookpool:ProcessPoolExecutor",
        ),
        Library("loky", "loky", "loky", True, _make_loky, "loky:ProcessPoolExecutor"),
        Library("pebble", "pebble", "pebble", True, PebbleAdapter, "pebble:ProcessPool"),
        Library("mpire", "mpire", "mpire", True, MpireAdapter, "mpire:WorkerPool"),
        Library(
            "machine",
            "machine limit",
            "multiprocessing",
            False,
            _no_pool,
            "multiprocessing:get_context",
        ),
        Library(
            "paired",
            "paired scripts",
            "multiprocessing",
            False,
            _no_pool,
            "multiprocessing:get_context",
        ),
    )
}

MACHINE = "machine"
"""Pseudo-library of the machine-limit cases: pipe round trips, bare process start-up."""

PAIRED = "paired"
"""Pseudo-library of cases that time several libraries in one sample, in interleaved runs
(whole scripts timed from outside); their metrics are named ``metric@library``."""

PSEUDO = (MACHINE, PAIRED)
"""Never selected as a library: they run only the cases that name them."""
