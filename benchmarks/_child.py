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
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import median
from time import perf_counter
from typing import Any

from _adapters import LIBRARIES, WORKERS, Adapter
from _limits import echo_pickled, echo_raw, read_frame, read_into, write_all, write_frame
from _startup import COMMON_MODULES, EARLY_CASES, measure
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


def case_replace(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    """``tasks`` tasks, ``map(chunksize=1)``, on a pool made with ``maxtasksperchild=1``
    (the spec's pool options): every task is run by a new worker."""
    ad = _started(ad, deadline)
    n: int = p["tasks"]
    _enter("map, a worker per task")
    t0 = perf_counter()
    out = ad.map(inc, list(range(n)), 1, deadline.left())
    dt = perf_counter() - t0
    _check(list(out) == list(range(1, n + 1)), "map output")
    _shutdown(ad)
    return {"per_task": dt / n, "total": dt}


# --------------------------------------------------------------------------- machine limits


def _echo_child(target: Callable[..., None], *args: Any) -> tuple[Any, Any, Any]:
    """Start a spawn child running ``target(inbox, outbox, *args)`` over two ``os.pipe``
    pipes; return it and this process's ends: the one to write to, the one to read from
    (``multiprocessing`` connections, used through their file descriptors)."""
    ctx = multiprocessing.get_context("spawn")
    inbox_r, inbox_w = ctx.Pipe(duplex=False)
    outbox_r, outbox_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(inbox_r, outbox_w, *args))
    proc.start()
    inbox_r.close()
    outbox_w.close()
    return proc, inbox_w, outbox_r


def _join(proc: Any, deadline: Deadline) -> None:
    _enter("join the echo child")
    proc.join(deadline.left())
    if proc.exitcode != 0:
        raise RuntimeError(f"echo child: exit code {proc.exitcode}")


def case_limit_pipe(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    """Back-to-back pickled round trips of a tiny object (an int and a function reference,
    like a task) with a spawn child that echoes: this process pickles and writes, the
    child reads, unpickles, pickles and writes back, this process reads and unpickles."""
    proc, inbox, outbox = _echo_child(echo_pickled)
    wfd, rfd = inbox.fileno(), outbox.fileno()
    samples: list[float] = []
    _enter("pickled round trips")
    for i in range(p["warmup"] + p["rounds"]):
        t0 = perf_counter()
        write_frame(wfd, pickle.dumps((i, identity), pickle.HIGHEST_PROTOCOL))
        back = pickle.loads(read_frame(rfd))
        dt = perf_counter() - t0
        _check(back == (i, identity), "echoed object")
        if i >= p["warmup"]:
            samples.append(dt)
        if i % 100 == 0:
            deadline.left()
    write_frame(wfd, pickle.dumps(None))
    _join(proc, deadline)
    return {"roundtrip": median(samples), "roundtrip_min": min(samples)}


def case_limit_raw(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    """Raw round trips of ``mib`` MiB through ``os.pipe`` to a spawn child and back, no
    pickling: write it all, the child reads it into a new buffer and writes it back, read
    it into a new buffer. The first round trip warms up; the median of the rest."""
    nbytes = p["mib"] << 20
    data = bytes(range(256)) * (nbytes // 256)
    rounds = 1 + p["rounds"]
    proc, inbox, outbox = _echo_child(echo_raw, nbytes, rounds)
    wfd, rfd = inbox.fileno(), outbox.fileno()
    samples: list[float] = []
    for i in range(rounds):
        _enter(f"raw round trip {i + 1}")
        deadline.left()
        t0 = perf_counter()
        write_all(wfd, data)
        back = bytearray(nbytes)
        read_into(rfd, memoryview(back))
        samples.append(perf_counter() - t0)
        _check(back == data, "raw round trip differs")
        del back
    _join(proc, deadline)
    return {"roundtrip": median(samples[1:])}


#: The whole scripts of the ``script`` case, by library; ``task`` is the script's own.
SCRIPTS = {
    "pool": """import multiprocessing


def task(x):
    return x + 1


if __name__ == "__main__":
    pool = multiprocessing.get_context("spawn").Pool(2)
    assert pool.apply(task, (1,)) == 2
    pool.close()
    pool.join()
""",
    "hookpool": """from hookpool import Pool


def task(x):
    return x + 1


if __name__ == "__main__":
    pool = Pool(2)
    assert pool.apply(task, (1,)) == 2
    pool.close()
    pool.join()
""",
}

#: The import alone, as ``python -c``, by library.
IMPORTS = {"pool": "import multiprocessing.pool", "hookpool": "from hookpool import Pool"}


def _time_command(argv: list[str], deadline: Deadline) -> float:
    t0 = perf_counter()
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=deadline.left()
    )
    dt = perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"{argv[1:]} exited with {proc.returncode}: {tail}")
    return dt


def case_script(ad: Adapter | None, p: Params, deadline: Deadline) -> Metrics:
    """Whole scripts timed from outside, as processes (``sys.executable SCRIPT``), the
    libraries' runs interleaved in pairs, the order alternating between pairs; then
    ``python -c IMPORT`` the same way, and ``python -c pass`` (the interpreter alone).
    Metrics: ``script@LIB``, ``import@LIB`` and ``interpreter``, medians of ``rounds``."""
    libs: list[str] = p["libs"]
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="hookpool-script-") as tmp:
        paths = {}
        for lib in libs:
            paths[lib] = Path(tmp, f"script_{lib.replace('-', '_')}.py")
            paths[lib].write_text(SCRIPTS[lib])
        for i in range(p["rounds"]):
            for lib in libs if i % 2 == 0 else libs[::-1]:
                _enter(f"script, {lib}, run {i + 1}")
                dt = _time_command([sys.executable, str(paths[lib])], deadline)
                times.setdefault(f"script@{lib}", []).append(dt)
    for i in range(p["rounds"]):
        for lib in libs if i % 2 == 0 else libs[::-1]:
            _enter(f"import, {lib}, run {i + 1}")
            dt = _time_command([sys.executable, "-c", IMPORTS[lib]], deadline)
            times.setdefault(f"import@{lib}", []).append(dt)
        _enter(f"interpreter, run {i + 1}")
        times.setdefault("interpreter", []).append(
            _time_command([sys.executable, "-c", "pass"], deadline)
        )
    return {name: median(values) for name, values in times.items()}


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
    "replace_forkserver": case_replace,
    "limit_pipe": case_limit_pipe,
    "limit_raw": case_limit_raw,
    "script": case_script,
}


def main(early: Metrics | BaseException | None = None) -> int:
    """Run the sample the spec names (``early``: one of the ``EARLY_CASES``, measured
    already by ``_main.py``, or the exception it raised)."""
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
        if spec["case"] in EARLY_CASES:
            _enter(spec["case"])
            if early is None:
                raise ValueError("this case is measured by _main.py: pass the library and case")
            if isinstance(early, BaseException):
                raise early
            metrics = early
        else:
            _enter("import")
            ad = LIBRARIES[spec["lib"]].make(**spec["params"].get("pool", {}))
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
