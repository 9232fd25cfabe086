"""Measure one benchmark case for one library in a fresh process (internal).

Run as ``python _main.py SPEC.json MODULE:NAME`` (``_main.py`` is the main module and
calls ``main()`` here), where the spec names the case, the library, the case parameters,
a deadline in seconds and the path of the result file. ``run.py`` starts one of these
per sample, in its own process group, and kills the group if it overruns, so a hung
library fails its cell instead of the run.

The result file holds ``{"ok": true, "metrics": {...}}`` with raw SI values
(seconds, items, bytes), or ``{"ok": false, "error": ..., "detail": ...}``.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import median
from time import perf_counter
from typing import Any

from _adapters import LIBRARIES, WORKERS, Adapter
from _startup import COMMON_MODULES, measure
from _tasks import affine, identity, inc, make_closure, nap, spin

Params = dict[str, Any]
Metrics = dict[str, float]

_phase = "init"
_out_path: Path | None = None
_emit_lock = threading.Lock()
_emitted = False


class WrongResult(Exception):
    """The library returned something other than the expected result."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left, for a result wait; raises once the deadline has passed."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"deadline exceeded during {_phase}")
        return left


def _enter(phase: str) -> None:
    global _phase
    _phase = phase


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(f"wrong result: {what}")


def _emit(payload: dict[str, Any]) -> bool:
    """Write the result file once (atomically); later calls are ignored."""
    global _emitted
    with _emit_lock:
        if _emitted or _out_path is None:
            return False
        tmp = _out_path.with_suffix(".partial")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, _out_path)
        _emitted = True
        return True


def _on_timeout(seconds: float) -> None:
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    _emit(
        {
            "ok": False,
            "error": "timeout",
            "detail": f"timed out after {seconds:.0f} s during {_phase}",
        }
    )
    os._exit(3)


# --------------------------------------------------------------------------- helpers


def _warm(ad: Adapter, deadline: Deadline) -> None:
    """Make sure every worker exists and has run a task, then a few trivial round trips."""
    _enter("warm-up")
    getters = [ad.submit(nap, 0.05) for _ in range(WORKERS)]
    for get in getters:
        get(deadline.left())
    for i in range(10):
        _check(ad.submit(identity, i)(deadline.left()) == i, "warm-up identity")


def _started(ad: Adapter | None, deadline: Deadline) -> Adapter:
    if ad is None:
        raise ValueError("this case needs a pool library")
    _enter("start")
    ad.start()
    _warm(ad, deadline)
    return ad


def _shutdown(ad: Adapter) -> None:
    _enter("shutdown")
    ad.shutdown()


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0); False if not possible, then the peak is process-lifetime."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- cases


def case_startup_loaded(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    """The startup case (``_startup``), after importing what larger programs have already."""
    if ad is None:
        raise ValueError("this case needs a pool library")
    for name in COMMON_MODULES:
        importlib.import_module(name)
    _enter("startup")
    return measure(ad)


#: A sample of a map repeats it (``rounds``) while it has taken less than this in all.
MAP_ROUNDS_BUDGET_S = 1.0


def case_map(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    """The median of up to ``rounds`` maps on the same warm pool: a map that takes 15-25
    ms is at the mercy of one scheduling hiccup; one that takes seconds runs once."""
    ad = _started(ad, deadline)
    n: int = p["n"]
    items = list(range(n))
    expected = list(range(1, n + 1))
    samples: list[float] = []
    while len(samples) < p.get("rounds", 1) and sum(samples) < MAP_ROUNDS_BUDGET_S:
        _enter(f"map {len(samples) + 1}")
        t0 = perf_counter()
        out = ad.map(inc, items, p["chunksize"], deadline.left())
        samples.append(perf_counter() - t0)
        _check(list(out) == expected, "map output")
    _shutdown(ad)
    return {"map": median(samples)}


def case_submit(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    ad = _started(ad, deadline)
    n: int = p["n"]
    _enter("submit")
    t0 = perf_counter()
    getters = [ad.submit(inc, i) for i in range(n)]
    _enter("wait for all")
    results = [get(deadline.left()) for get in getters]
    dt = perf_counter() - t0
    _check(results == list(range(1, n + 1)), "submit results")
    _shutdown(ad)
    return {"per_task": dt / n, "total": dt}


def case_latency(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    ad = _started(ad, deadline)
    idle_s: float = p["idle_s"]
    samples: list[float] = []
    _enter("latency")
    for i in range(p["samples"]):
        if idle_s:
            time.sleep(idle_s)  # let the workers go back to waiting: an idle pool
        t0 = perf_counter()
        r = ad.submit(identity, i)(deadline.left())
        samples.append(perf_counter() - t0)
        _check(r == i, "latency result")
    _shutdown(ad)
    return {"latency": median(samples), "latency_min": min(samples)}


class _CountingSource:
    """A lazy input that records how many items the pool has pulled from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.produced = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.produced += 1
            yield i


def _consume(ad: Adapter, n: int, chunksize: int, stall_s: float) -> tuple[float, int]:
    """Iterate ``imap`` over a counting generator; return (seconds, max read-ahead).

    The consumer sleeps ``stall_s`` once, after the first result: an unbounded feeder
    keeps pulling input meanwhile, a bounded one stops. The sleep is not timed.
    """
    source = _CountingSource(n)
    consumed = 0
    max_ahead = 0
    t0 = perf_counter()
    results = ad.imap(inc, iter(source), chunksize)
    for r in results:  # the first result, then the optional stall
        consumed = 1
        _check(r == 1, f"imap item 0: got {r!r}")
        time.sleep(stall_s)
        max_ahead = source.produced - consumed
        break
    for r in results:
        consumed += 1
        if r != consumed:
            raise WrongResult(f"imap item {consumed - 1}: got {r!r}")
        ahead = source.produced - consumed
        if ahead > max_ahead:
            max_ahead = ahead
    dt = perf_counter() - t0 - stall_s
    _check(consumed == n, f"imap yielded {consumed} of {n} items")
    return dt, max_ahead


def case_imap(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    ad = _started(ad, deadline)
    n: int = p["n"]
    base_kib = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    _enter("imap, fast consumer")
    dt, fast_ahead = _consume(ad, n, p["chunksize"], 0.0)
    _enter("imap, stalling consumer")
    _, stalled_ahead = _consume(ad, n, p["chunksize"], p["stall_s"])
    peak_kib = _proc_status_kib("VmHWM")
    _shutdown(ad)
    metrics: Metrics = {
        "time": dt,
        "max_ahead": float(max(fast_ahead, stalled_ahead)),
        "max_ahead_fast": float(fast_ahead),
        "max_ahead_stalled": float(stalled_ahead),
    }
    if base_kib is not None and peak_kib is not None:
        metrics["rss_growth"] = max(0.0, (peak_kib - base_kib) * 1024.0)
        metrics["rss_peak_was_reset"] = float(reset)
    return metrics


def _payload(kind: str, nbytes: int) -> tuple[Any, Callable[[Any], bool]]:
    if kind == "bytes":
        data = bytes(range(256)) * (nbytes // 256)
        return data, lambda out: isinstance(out, bytes) and out == data
    import numpy as np

    arr = np.arange(nbytes // 8, dtype=np.float64)
    return arr, lambda out: isinstance(out, np.ndarray) and bool(np.array_equal(out, arr))


def case_transfer(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    payload, same = _payload(p["kind"], p["mib"] << 20)
    ad = _started(ad, deadline)
    samples: list[float] = []
    for i in range(p["rounds"]):
        _enter(f"round trip {i + 1}")
        t0 = perf_counter()
        out = ad.submit(identity, payload)(deadline.left())
        samples.append(perf_counter() - t0)
        _check(same(out), "round-trip payload differs")
        del out
    _shutdown(ad)
    return {"roundtrip": median(samples)}


def case_lambda(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    ad = _started(ad, deadline)
    n: int = p["n"]
    items = list(range(n))
    expected = [affine(x) for x in items]
    runs: list[tuple[str, Callable[[int], int]]] = [("map_function", affine)]
    if ad.supports_lambda:
        runs.append(("map_lambda", make_closure(3)))
        if p["repeat"] % 2:  # alternate the order between repeats
            runs.reverse()
    for name, fn in runs:  # warm both paths (e.g. the serializer's import)
        _enter(f"warm {name}")
        _check(ad.map(fn, items[:8], 1, deadline.left()) == expected[:8], f"warm {name}")
    metrics: Metrics = {}
    for name, fn in runs:
        _enter(name)
        t0 = perf_counter()
        out = ad.map(fn, items, p["chunksize"], deadline.left())
        metrics[name] = perf_counter() - t0
        _check(list(out) == expected, name)
    _shutdown(ad)
    return metrics


def case_cpu(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    """Speedup of a pool over running the same tasks serially in this process.

    The serial baseline runs in the same child right before the parallel run, so
    both see the same machine state; a separate baseline process proved too noisy
    on shared virtual machines.
    """
    loops: int = p["loops"]
    tasks = [loops] * p["tasks"]
    ad = _started(ad, deadline)
    _enter("serial baseline")
    serial_tasks = tasks[: p["serial_tasks"]]
    t0 = perf_counter()
    serial_out = [spin(x) for x in serial_tasks]
    serial = (perf_counter() - t0) * len(tasks) / len(serial_tasks)
    _enter("cpu map")
    t0 = perf_counter()
    out = ad.map(spin, tasks, 1, deadline.left())
    parallel = perf_counter() - t0
    _check(
        serial_out + list(out) == [p["expected"]] * (len(serial_tasks) + len(tasks)), "spin results"
    )
    _shutdown(ad)
    return {"speedup": serial / parallel, "time": parallel, "serial_time": serial}


CASES: dict[str, Callable[[Adapter | None, Params, Deadline], Metrics]] = {
    "startup_loaded": case_startup_loaded,
    "map_default": case_map,
    "map_cs1": case_map,
    "submit": case_submit,
    "latency": case_latency,
    "latency_busy": case_latency,
    "imap": case_imap,
    "transfer_bytes": case_transfer,
    "transfer_numpy": case_transfer,
    "lambda": case_lambda,
    "cpu": case_cpu,
}


def main(early: Metrics | BaseException | None = None) -> int:
    """Run the sample the spec names (``early``: the startup case, measured already by
    ``_main.py``, or the exception it raised)."""
    global _out_path
    spec = json.loads(Path(sys.argv[1]).read_text())
    _out_path = Path(spec["out"])
    seconds = float(spec["deadline_s"])
    deadline = Deadline(seconds)
    watchdog = threading.Timer(seconds, _on_timeout, args=(seconds,))
    watchdog.daemon = True
    watchdog.start()
    # Backstop if the watchdog thread cannot run (e.g. the GIL is never released).
    faulthandler.dump_traceback_later(seconds + 5, exit=True)
    try:
        if spec["case"] == "startup":
            _enter("startup")
            if early is None:
                raise ValueError("the startup case is measured by _main.py: pass the library")
            if isinstance(early, BaseException):
                raise early
            metrics = early
        else:
            _enter("import")
            ad = LIBRARIES[spec["lib"]].make()
            metrics = CASES[spec["case"]](ad, spec["params"], deadline)
    except BaseException as exc:
        traceback.print_exc()
        name = type(exc).__name__
        error = "timeout" if isinstance(exc, TimeoutError) or name == "TimeoutError" else name
        message = f"{name}: {exc}" if str(exc) else name
        _emit({"ok": False, "error": error, "detail": f"{message} (during {_phase})"})
        sys.stderr.flush()
        os._exit(1)  # do not wait for a possibly broken library at interpreter exit
    _emit({"ok": True, "metrics": metrics})
    watchdog.cancel()
    faulthandler.cancel_dump_traceback_later()
    _enter("interpreter exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
