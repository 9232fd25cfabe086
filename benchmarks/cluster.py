#!/usr/bin/env python3
"""What hookpool adds on a dask cluster: ``hookpool.Pool(cluster=client)`` and
``hookpool.ProcessPoolExecutor(cluster=client)`` against the raw dask calls
(``client.submit``, ``client.map``) on the same ``distributed.LocalCluster`` (2 worker
processes, one thread each, on 127.0.0.1), in one process. Run from anywhere:

    python benchmarks/cluster.py                   # 7 rounds, ~2 min on 2 cores
    python benchmarks/cluster.py --rounds 3        # quicker, noisier
    python benchmarks/cluster.py --markdown out.md

Needs ``pip install "hookpool[dask]"``. Each round times every workload once, raw dask
and hookpool alternating first; the report gives the median of each, the ratio of the
medians (hookpool ÷ raw: 1.10 is 10% more), and the spread of the per-round ratios.

Workloads:

* back to back: one tiny task submitted, its result awaited, repeated: the per-task
  overhead (``client.submit(f, x).result()`` vs ``pool.apply(f, (x,))`` and
  ``executor.submit(f, x).result()``).
* map: ``x + 1`` over 2,000 items: ``client.gather(client.map(f, items))`` vs
  ``pool.map(f, items)`` with its default chunks (what a user's ``pool.map`` does), and
  with ``chunksize=1`` (one dask task per item, as ``client.map`` makes): by default
  (a task never runs twice: each task that waited in a worker's queue asks the
  scheduler before it starts), and with ``max_retries=3``, dask's own policy for
  ``client.map`` (``distributed.scheduler.allowed-failures``: a task whose worker dies
  runs again, up to 3 times), which needs no such question.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's hookpool; _tasks

import _tasks  # noqa: E402

import hookpool  # noqa: E402

BACK_TO_BACK = 200
MAP_ITEMS = 2_000


def raw_back_to_back(client: Any) -> float:
    for i in range(BACK_TO_BACK):
        assert client.submit(_tasks.inc, i, pure=False).result() == i + 1
    return BACK_TO_BACK


def pool_back_to_back(pool: hookpool.Pool) -> float:
    for i in range(BACK_TO_BACK):
        assert pool.apply(_tasks.inc, (i,)) == i + 1
    return BACK_TO_BACK


def executor_back_to_back(executor: hookpool.ProcessPoolExecutor) -> float:
    for i in range(BACK_TO_BACK):
        assert executor.submit(_tasks.inc, i).result() == i + 1
    return BACK_TO_BACK


def raw_map(client: Any) -> float:
    results = client.gather(client.map(_tasks.inc, range(MAP_ITEMS), pure=False))
    assert results[-1] == MAP_ITEMS
    return MAP_ITEMS


def pool_map(pool: hookpool.Pool) -> float:
    assert pool.map(_tasks.inc, range(MAP_ITEMS))[-1] == MAP_ITEMS
    return MAP_ITEMS


def pool_map_chunksize_1(pool: hookpool.Pool) -> float:
    assert pool.map(_tasks.inc, range(MAP_ITEMS), chunksize=1)[-1] == MAP_ITEMS
    return MAP_ITEMS


#: (row, the raw dask workload, the hookpool workload, which hookpool facade it uses).
PAIRS: list[tuple[str, Callable[[Any], float], Callable[[Any], float], str]] = [
    ("back to back: Pool.apply", raw_back_to_back, pool_back_to_back, "pool"),
    ("back to back: executor.submit", raw_back_to_back, executor_back_to_back, "executor"),
    ("map, 2k items, default chunks", raw_map, pool_map, "pool"),
    ("map, 2k items, chunksize=1", raw_map, pool_map_chunksize_1, "pool"),
    ("map, 2k items, chunksize=1, max_retries=3", raw_map, pool_map_chunksize_1, "retrying"),
]


def timed(workload: Callable[[Any], float], target: Any) -> float:
    """Seconds per task of one run of ``workload``."""
    started = time.perf_counter()
    tasks = workload(target)
    return (time.perf_counter() - started) / tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        import distributed
    except ImportError:
        print('needs dask.distributed: pip install "hookpool[dask]"', file=sys.stderr)
        return 2
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    )
    client = distributed.Client(cluster, set_as_default=False)
    pool = hookpool.Pool(cluster=client)
    executor = hookpool.ProcessPoolExecutor(cluster=client)
    retrying = hookpool.Pool(cluster=client, max_retries=3)
    facades = {"pool": pool, "executor": executor, "retrying": retrying}
    samples: dict[str, tuple[list[float], list[float]]] = {row: ([], []) for row, *_ in PAIRS}
    try:
        for _row, raw, ours, facade in PAIRS:  # warm up: workers, imports, the hooks
            raw(client)
            ours(facades[facade])
        for round_number in range(args.rounds):
            for row, raw, ours, facade in PAIRS:
                raw_first = round_number % 2 == 0
                if raw_first:
                    samples[row][0].append(timed(raw, client))
                samples[row][1].append(timed(ours, facades[facade]))
                if not raw_first:
                    samples[row][0].append(timed(raw, client))
            print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for each in (pool, retrying):
            each.close()
            each.join()
        executor.shutdown()
        client.close()
        cluster.close()
    report = render(samples, args.rounds, distributed.__version__)
    print(report)
    if args.markdown is not None:
        args.markdown.write_text(report)
    return 0


def render(samples: dict[str, tuple[list[float], list[float]]], rounds: int, version: str) -> str:
    lines = [
        f"hookpool on dask.distributed {version}: LocalCluster, 2 workers x 1 thread, "
        f"{rounds} rounds (medians; ratio = hookpool ÷ raw dask, lower is faster)",
        "",
        "| workload | raw dask | hookpool | ratio | per-round ratios (min-max) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row, (raw, ours) in samples.items():
        ratios = [o / r for r, o in zip(raw, ours, strict=True)]
        lines.append(
            f"| {row} | {fmt(statistics.median(raw))} | {fmt(statistics.median(ours))} | "
            f"{statistics.median(ours) / statistics.median(raw):.2f} | "
            f"{min(ratios):.2f}-{max(ratios):.2f} |"
        )
    return "\n".join(lines) + "\n"


def fmt(seconds: float) -> str:
    """Per task, in the unit that reads best."""
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


if __name__ == "__main__":
    sys.exit(main())
