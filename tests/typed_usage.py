"""A typed program using hookpool's public API: ``mypy --strict`` must accept it as is
(tests/test_typing.py), and each ``# type: ignore[...]`` marks a misuse mypy must catch
(with ``warn_unused_ignores``, an ignore mypy does not need is itself an error).

Not collected by pytest (no ``test_`` prefix); never run, only type-checked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import hookpool


def square(x: int) -> int:
    return x * x


def label(x: int, prefix: str) -> str:
    return f"{prefix}{x}"


def setup(path: str) -> None:
    pass


def pool_usage() -> None:
    with hookpool.Pool(2, initializer=setup, initargs=("db",), finalizer=print) as pool:
        squares: list[int] = pool.map(square, range(10))
        lazy: hookpool.IMapIterator[int] = pool.imap(square, range(10))
        first: int = next(lazy)
        unordered: list[int] = list(pool.imap_unordered(square, range(10), chunksize=2))
        result: hookpool.AsyncResult[int] = pool.apply_async(square, (3,))
        value: int = result.get(timeout=1)
        future: concurrent.futures.Future[str] = pool.submit(label, 1, prefix="n")
        text: str = future.result()
        pool.submit(label, 1, 2)  # type: ignore[arg-type]
        bad: list[str] = pool.map(square, range(3))  # type: ignore[arg-type]
        stars: list[str] = pool.starmap(label, [(1, "a")])
        print(squares, first, unordered, value, text, bad, stars)


def executor_usage() -> None:
    with hookpool.ProcessPoolExecutor(max_workers=2, finalizer=print) as ex:
        future: concurrent.futures.Future[int] = ex.submit(square, 2)
        results: list[int] = list(ex.map(square, range(5)))
        ex.submit(square, "two")  # type: ignore[arg-type]
        print(future.result(), results)


async def asyncio_usage(ex: hookpool.ProcessPoolExecutor) -> int:
    loop = asyncio.get_running_loop()
    direct: int = await loop.run_in_executor(ex, square, 3)
    wrapped: int = await asyncio.wrap_future(ex.submit(square, 4))
    return direct + wrapped


def identity_usage() -> int | None:
    me: hookpool.WorkerInfo | None = hookpool.current_worker()
    return None if me is None else me.index
