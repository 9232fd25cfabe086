"""The startup cases, measured before the rest of the harness is imported (internal).

``_main.py`` runs this first when its sample is the startup case: the measuring process
has then imported the library under test, ``_adapters`` and ``_tasks`` (both light), and
nothing else, like a script whose first act is to make a pool. The harness (``_child``:
json, typing, threading, traceback, statistics...) comes after, and writes the result.

How much such imports matter is measured too: ``_child``'s ``startup_loaded`` case runs
the same steps after importing modules that larger programs usually have already
(``COMMON_MODULES``), which makes the standard library's own imports cheaper.

The same holds for the other ``EARLY_CASES``: the pool's start-up with the forkserver start
method, and the machine limits they are compared with, a bare ``Process`` start and join.
"""

from __future__ import annotations

import multiprocessing
from time import perf_counter

from _adapters import LIBRARIES, Adapter
from _tasks import identity, nothing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Imported before the ``startup_loaded`` case starts its clock.
COMMON_MODULES = ("logging", "typing", "threading", "traceback", "json", "dataclasses")

#: The first result must come within this; ``run.py`` kills a sample that overruns.
FIRST_RESULT_TIMEOUT_S = 60.0

#: Cases measured here, before the harness is imported: ``run.py`` passes their sample the
#: library's key and the case's name (``_main.py SPEC MODULE:NAME KEY CASE``).
EARLY_CASES = ("startup", "startup_forkserver", "limit_spawn", "limit_forkserver")

#: Bare process starts measured after the first one (median), in the ``limit_*`` cases.
WARM_STARTS = 5


def measure(ad: Adapter) -> dict[str, float]:
    """Construct the pool, wait for the first result of a trivial task, then shut down."""
    t0 = perf_counter()
    ad.start()
    first = ad.submit(identity, 42)(FIRST_RESULT_TIMEOUT_S)
    t1 = perf_counter()
    if first != 42:
        raise ValueError(f"wrong result: first result {first!r}")
    ad.shutdown()
    t2 = perf_counter()
    return {"startup": t1 - t0, "shutdown": t2 - t1}


def measure_process(method: str) -> dict[str, float]:
    """``Process(target=nothing).start(); join()`` with start method ``method``: the first
    (spawn: with the resource tracker's start, as a pool's first worker; forkserver: with
    the server's), then the median of ``WARM_STARTS`` more."""
    ctx: Any = multiprocessing.get_context(method)
    samples = []
    for _ in range(1 + WARM_STARTS):
        t0 = perf_counter()
        proc = ctx.Process(target=nothing)
        proc.start()
        proc.join(FIRST_RESULT_TIMEOUT_S)
        samples.append(perf_counter() - t0)
        if proc.exitcode != 0:
            raise RuntimeError(f"bare {method} process: exit code {proc.exitcode}")
    warm = sorted(samples[1:])
    return {"first": samples[0], "warm": warm[len(warm) // 2]}


def _pool(key: str, **options: str) -> Adapter:
    ad = LIBRARIES[key].make(**options)
    if ad is None:
        raise ValueError(f"{key!r} is not a pool library")
    return ad


def measure_early(key: str, case: str) -> dict[str, float]:
    """Measure one of the ``EARLY_CASES`` for library ``key``."""
    if case == "startup":
        return measure(_pool(key))
    if case == "startup_forkserver":
        return measure(_pool(key, context="forkserver"))
    if case in ("limit_spawn", "limit_forkserver"):
        return measure_process(case.removeprefix("limit_"))
    raise ValueError(f"not an early case: {case!r}")
