#!/usr/bin/env python3
"""What ``max_memory_per_child`` costs on small tasks: the same workloads on two warm
``hookpool.Pool(2)``, one without a limit and one with a limit no task reaches (so
every task pays for the measurement, and no worker is ever replaced), interleaved in
one process. Run from anywhere:

    python benchmarks/memory_limit.py               # 15 rounds, ~1 min on 2 cores
    python benchmarks/memory_limit.py --rounds 5    # quicker, noisier

Each round times each workload once on each pool, the order alternating between
rounds; the report gives, per workload, the median time of each pool, the ratio of the
medians (with ÷ without: 1.00 means no cost), and the spread of the per-round ratios.
On a shared machine wall times are noisy (the spread shows how much): so the report
also gives the CPU time the workers of each pool used over the whole run, per task
(``/proc/<pid>/stat``), which other processes do not disturb; the measurement runs in
the workers. And one measurement by itself (``ResidentMemory.read``), in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's hookpool; _tasks

import _tasks  # noqa: E402

import hookpool  # noqa: E402
from hookpool._memory import ResidentMemory  # noqa: E402

LIMIT = "1TiB"  # never reached: the cost of measuring, not of replacing workers


def map_chunksize_1(pool: hookpool.Pool) -> None:
    """10k tasks of one item each: the per-task overhead, where a check weighs most."""
    assert pool.map(_tasks.inc, range(10_000), chunksize=1)[-1] == 10_000


def apply_back_to_back(pool: hookpool.Pool) -> None:
    """500 round trips, each submitted as the last returns (the latency path)."""
    for i in range(500):
        assert pool.apply(_tasks.inc, (i,)) == i + 1


def submit_then_wait(pool: hookpool.Pool) -> None:
    """2k submits, then wait for all."""
    futures = [pool.submit(_tasks.inc, i) for i in range(2_000)]
    assert [f.result(timeout=60) for f in futures][-1] == 2_000


WORKLOADS: dict[str, Callable[[hookpool.Pool], None]] = {
    "map, 10k items, chunksize=1": map_chunksize_1,
    "apply back to back, 500 calls": apply_back_to_back,
    "submit 2k, then wait": submit_then_wait,
}


TASKS_PER_ROUND = 10_000 + 500 + 2_000


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes ``pids`` used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / ticks


def time_read(samples: int = 200_000) -> float:
    """Microseconds per ``ResidentMemory.read`` (one pread of /proc/self/statm)."""
    memory = ResidentMemory()
    try:
        start = time.perf_counter()
        for _ in range(samples):
            memory.read()
        return (time.perf_counter() - start) / samples * 1e6
    finally:
        memory.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    pools = {
        "without": hookpool.Pool(2),
        "with": hookpool.Pool(2, max_memory_per_child=LIMIT),
    }
    times: dict[str, dict[str, list[float]]] = {
        name: {"without": [], "with": []} for name in WORKLOADS
    }
    try:
        for pool in pools.values():  # warm: both workers started and used
            pool.map(_tasks.nap, [0.05] * 4, chunksize=1)
        before = {which: pool.worker_pids for which, pool in pools.items()}
        cpu = {which: -cpu_seconds(pids) for which, pids in before.items()}
        for round_ in range(rounds):
            order = ["without", "with"] if round_ % 2 == 0 else ["with", "without"]
            for name, workload in WORKLOADS.items():
                for which in order:
                    start = time.perf_counter()
                    workload(pools[which])
                    times[name][which].append(time.perf_counter() - start)
        after = {which: pool.worker_pids for which, pool in pools.items()}
        assert after == before, f"a worker was replaced: {before} -> {after}"
        for which, pids in after.items():
            cpu[which] += cpu_seconds(pids)
    finally:
        for pool in pools.values():
            pool.terminate()

    read_us = time_read()
    print(f"max_memory_per_child={LIMIT!r} vs no limit, 2 workers each, {rounds} rounds")
    print(f"one measurement (pread of /proc/self/statm): {read_us:.2f} us")
    tasks = rounds * TASKS_PER_ROUND
    without, with_ = (cpu[which] / tasks * 1e6 for which in ("without", "with"))
    print(
        f"workers' CPU per task: without {without:.2f} us, with {with_:.2f} us "
        f"(ratio {with_ / without:.3f}; {tasks} tasks each, clock ticks of "
        f"{1e3 / os.sysconf('SC_CLK_TCK'):.0f} ms)"
    )
    print()
    header = f"{'workload':32} {'without':>10} {'with':>10} {'ratio':>7}  per-round ratios"
    print(header)
    print("-" * len(header))
    for name in WORKLOADS:
        without = statistics.median(times[name]["without"])
        with_ = statistics.median(times[name]["with"])
        per_round = sorted(
            w / wo for w, wo in zip(times[name]["with"], times[name]["without"], strict=True)
        )
        low, mid, high = per_round[0], statistics.median(per_round), per_round[-1]
        print(
            f"{name:32} {without * 1e3:8.1f}ms {with_ * 1e3:8.1f}ms {with_ / without:7.3f}"
            f"  {low:.3f} .. {mid:.3f} .. {high:.3f}"
        )


if __name__ == "__main__":
    main()
