"""The startup case, measured before the rest of the harness is imported (internal).

``_main.py`` runs this first when its sample is the startup case: the measuring process
has then imported the library under test, ``_adapters`` and ``_tasks`` (both light), and
nothing else, like a script whose first act is to make a pool. The harness (``_child``:
json, typing, threading, traceback, statistics...) comes after, and writes the result.

How much such imports matter is measured too: ``_child``'s ``startup_loaded`` case runs
the same steps after importing modules that larger programs usually have already
(``COMMON_MODULES``), which makes the standard library's own imports cheaper.
"""

from __future__ import annotations

from time import perf_counter

from _adapters import LIBRARIES, Adapter
from _tasks import identity

#: Imported before the ``startup_loaded`` case starts its clock.
COMMON_MODULES = ("logging", "typing", "threading", "traceback", "json", "dataclasses")

#: The first result must come within this; ``run.py`` kills a sample that overruns.
FIRST_RESULT_TIMEOUT_S = 60.0


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


def measure_library(key: str) -> dict[str, float]:
    return measure(LIBRARIES[key].make())
