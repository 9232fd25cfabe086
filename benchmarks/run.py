#!/usr/bin/env python3
"""Benchmark hookpool against the standard library's spawn pools (and others, if installed).

Run from anywhere:

    python benchmarks/run.py                 # full run, ~5-10 min on 2 cores
    python benchmarks/run.py --quick         # smaller sizes, 3 repeats, ~2 min
    python benchmarks/run.py --only map,imap --json out.json --markdown out.md

Every sample runs in a fresh child process (``_main.py``, then ``_child.py``) in its own process
group, so each library starts from the same cold state, a hung library is killed
after its time limit and reported as ``FAILED/timeout``, and leftover worker
processes are detected and cleaned up. Libraries are interleaved within each
repeat (rotating the order), and each cell is the median over the repeats.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # e.g. when started as ``python -m benchmarks.run``
    sys.path.insert(0, str(HERE))

from _adapters import LIBRARIES, MACHINE, PAIRED, PSEUDO, WORKERS  # noqa: E402
from _startup import COMMON_MODULES, EARLY_CASES, WARM_STARTS  # noqa: E402

EXIT_GRACE_S = 10.0
"""How long a child may take to exit after writing its result before it is killed."""

LEAK_GRACE_S = 2.0
"""How long leftover processes of a finished child may linger (e.g. resource tracker)."""

REFERENCE_LIBS = ("pool", "ppe")
SLOWDOWN_LIMIT = 10.0
"""Other libraries time out after this many times the slowest reference sample of the
same workload (never below ``Sizes.min_timeout_s``, never above the case's limit)."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Sizes:
    repeats: int
    cell_budget_s: float
    """Stop repeating a (case, library) cell once it has used this much wall time."""
    map_default_n: int
    map_default_rounds: int
    """Maps per sample of the default-chunksize case (median; see ``case_map``)."""
    map_cs1_n: int
    submit_n: int
    latency_samples: int
    latency_idle_s: float
    imap_n: int
    imap_chunksize: int
    imap_stall_s: float
    transfer_mib: int
    transfer_rounds: int
    lambda_n: int
    lambda_chunksize: int
    cpu_tasks: int
    cpu_task_ms: float
    cpu_serial_tasks: int
    replace_tasks: int
    """Tasks of the worker-replacement case (forkserver, ``maxtasksperchild=1``)."""
    script_rounds: int
    """Interleaved pairs of whole-script runs (and of import-only runs) per sample."""
    pipe_roundtrips: int
    """Pickled round trips per sample of the pipe machine limit (after 100 warm-ups)."""
    raw_rounds: int
    """Raw pipe round trips per sample (median), after one warm-up."""
    timeout_s: float
    """Per-sample time limit."""
    long_timeout_s: float
    """Per-sample time limit of the cases that may legitimately take long."""
    min_timeout_s: float
    """Floor of the adaptive limit for non-stdlib libraries (see ``SLOWDOWN_LIMIT``)."""


FULL = Sizes(
    repeats=5,
    cell_budget_s=30.0,
    map_default_n=100_000,
    map_default_rounds=5,
    map_cs1_n=10_000,
    submit_n=10_000,
    latency_samples=200,
    latency_idle_s=0.002,
    imap_n=1_000_000,
    imap_chunksize=1000,
    imap_stall_s=1.0,
    transfer_mib=64,
    transfer_rounds=1,
    lambda_n=10_000,
    lambda_chunksize=1,
    cpu_tasks=200,
    cpu_task_ms=20.0,
    cpu_serial_tasks=100,
    replace_tasks=60,
    script_rounds=5,
    pipe_roundtrips=2000,
    raw_rounds=3,
    timeout_s=60.0,
    long_timeout_s=120.0,
    min_timeout_s=20.0,
)

QUICK = Sizes(
    repeats=3,
    cell_budget_s=6.0,
    map_default_n=10_000,
    map_default_rounds=3,
    map_cs1_n=2_000,
    submit_n=2_000,
    latency_samples=50,
    latency_idle_s=0.002,
    imap_n=200_000,
    imap_chunksize=1000,
    imap_stall_s=0.5,
    transfer_mib=16,
    transfer_rounds=1,
    lambda_n=2_000,
    lambda_chunksize=1,
    cpu_tasks=40,
    cpu_task_ms=20.0,
    cpu_serial_tasks=20,
    replace_tasks=60,
    script_rounds=3,
    pipe_roundtrips=500,
    raw_rounds=3,
    timeout_s=20.0,
    long_timeout_s=40.0,
    min_timeout_s=10.0,
)


@dataclass(frozen=True)
class Case:
    """One child-process measurement; a workload (``group``) has one or more cases."""

    name: str
    group: str
    params: dict[str, Any]
    timeout_s: float
    requires: str | None = None
    """A module that must be importable (e.g. numpy), else the case is skipped."""
    libs: tuple[str, ...] | None = None
    """The libraries that run it, if not every selected one (a pseudo-library always runs
    the cases that name it: ``MACHINE``, ``PAIRED``)."""
    needs: tuple[str, ...] = ()
    """Machine-limit cases its rows are compared with: run too, whatever ``--only`` says."""


@dataclass(frozen=True)
class Ref:
    """What a row is also compared with: a machine limit, or another library's cell."""

    case: str
    lib: str
    metric: str
    name: str
    """Short name shown beside the value, e.g. 'pipe RT'."""


@dataclass(frozen=True)
class Row:
    """One line of the results table, read from one metric of one case."""

    case: str
    metric: str
    label: str
    kind: str
    """'ratio' (hookpool/Pool <= limit), 'info' (no target), 'lambda' (hookpool lambda /
    hookpool function <= limit), 'bounded' (hookpool value <= limit items) or 'speedup'
    (hookpool speedup over serial >= limit)."""
    limit: float | None = None
    unit: str = "s"
    """How raw values are shown: 's' (auto ms/µs/s), 'items', 'bytes' or 'x'."""
    subject: str = "hookpool"
    """The library the targets are about: 'hookpool' (ratio to the stdlib Pool) or
    'hookpool-ppe' (ratio to the stdlib PPE)."""
    ref: Ref | None = None
    """Also shown: the reference's value, and subject ÷ reference."""
    ref_limit: float | None = None
    """Target for subject ÷ reference (none: for information)."""


def build_cases(z: Sizes, cpu: tuple[int, int] | None, timeout: float | None) -> list[Case]:
    t = timeout or z.timeout_s
    long_t = timeout or z.long_timeout_s
    forkserver = "forkserver" in multiprocessing.get_all_start_methods()
    machine = (MACHINE,)
    cases = [
        Case("limit_pipe", "limits", {"rounds": z.pipe_roundtrips, "warmup": 100}, t, libs=machine),
        Case(
            "limit_raw", "limits", {"mib": z.transfer_mib, "rounds": z.raw_rounds}, t, libs=machine
        ),
        Case("limit_spawn", "limits", {}, t, libs=machine),
        Case("startup", "startup", {}, t, needs=("limit_spawn",)),
        Case("startup_loaded", "startup", {}, t),
        Case(
            "map_default",
            "map",
            {"n": z.map_default_n, "chunksize": None, "rounds": z.map_default_rounds},
            long_t,
        ),
        Case("map_cs1", "map", {"n": z.map_cs1_n, "chunksize": 1}, t),
        Case("submit", "submit", {"n": z.submit_n}, t),
        Case("latency", "submit", {"samples": z.latency_samples, "idle_s": z.latency_idle_s}, t),
        Case(
            "latency_busy",
            "submit",
            {"samples": z.latency_samples, "idle_s": 0.0},
            t,
            needs=("limit_pipe",),
        ),
        Case(
            "imap",
            "imap",
            {"n": z.imap_n, "chunksize": z.imap_chunksize, "stall_s": z.imap_stall_s},
            long_t,
        ),
        Case(
            "transfer_bytes",
            "transfer",
            {"kind": "bytes", "mib": z.transfer_mib, "rounds": z.transfer_rounds},
            t,
            needs=("limit_raw",),
        ),
        Case(
            "transfer_numpy",
            "transfer",
            {"kind": "numpy", "mib": z.transfer_mib, "rounds": z.transfer_rounds},
            t,
            requires="numpy",
            needs=("limit_raw",),
        ),
        Case("lambda", "lambda", {"n": z.lambda_n, "chunksize": z.lambda_chunksize}, long_t),
        Case(
            "script",
            "script",
            {"rounds": z.script_rounds, "libs": ["pool", "hookpool"]},
            t,
            libs=(PAIRED,),
        ),
    ]
    if forkserver:
        pair = ("pool", "hookpool")
        options = {"context": "forkserver", "maxtasksperchild": 1}
        cases += [
            Case("limit_forkserver", "limits", {}, t, libs=machine),
            Case(
                "startup_forkserver",
                "forkserver",
                {"context": "forkserver"},
                t,
                libs=pair,
                needs=("limit_forkserver",),
            ),
            Case(
                "replace_forkserver",
                "forkserver",
                {"tasks": z.replace_tasks, "pool": options},
                t,
                libs=pair,
                needs=("limit_forkserver",),
            ),
        ]
    if cpu is not None:
        loops, expected = cpu
        params = {
            "tasks": z.cpu_tasks,
            "serial_tasks": z.cpu_serial_tasks,
            "loops": loops,
            "expected": expected,
        }
        cases.append(Case("cpu", "cpu", params, long_t))
    return cases


def build_rows(z: Sizes) -> list[Row]:
    def k(n: int) -> str:
        return f"{n // 1000}k" if n % 1000 == 0 and n < 1_000_000 else f"{n / 1e6:g}M"

    pipe = Ref("limit_pipe", MACHINE, "roundtrip", "pipe RT")
    raw = Ref("limit_raw", MACHINE, "roundtrip", "raw pipe RT")
    interpreter = Ref("script", PAIRED, "interpreter", "python -c pass")
    return [
        Row(
            "startup",
            "startup",
            "startup → first result",
            "ratio",
            0.9,
            ref=Ref("limit_spawn", MACHINE, "first", "spawn Process"),
            ref_limit=1.1,
        ),
        Row(
            "startup_loaded",
            "startup",
            "same, common modules imported first",
            "info",
        ),
        Row("startup", "shutdown", "shutdown (close + join)", "info"),
        Row(
            "map_default", "map", f"map {k(z.map_default_n)} items, default chunksize", "ratio", 1.0
        ),
        Row("map_cs1", "map", f"map {k(z.map_cs1_n)} items, chunksize=1", "ratio", 0.9),
        Row(
            "submit",
            "per_task",
            f"apply_async/submit {k(z.submit_n)} tasks, per task",
            "ratio",
            0.6,
        ),
        Row("latency", "latency", "single-task latency, idle pool", "ratio", 0.7),
        Row(
            "latency_busy",
            "latency",
            "same, back to back (no idle time)",
            "info",
            ref=pipe,
            ref_limit=1.5,
        ),
        Row(
            "imap",
            "time",
            f"imap {k(z.imap_n)} lazy items, chunksize={z.imap_chunksize}",
            "ratio",
            1.2,
        ),
        Row(
            "imap",
            "max_ahead",
            f"imap read-ahead, consumer stalls {z.imap_stall_s:g} s",
            "bounded",
            0.1 * z.imap_n,
            unit="items",
        ),
        Row("imap", "rss_growth", "imap peak parent RSS growth", "info", unit="bytes"),
        Row(
            "imap",
            "time",
            f"executor.map {k(z.imap_n)} lazy items, chunksize={z.imap_chunksize}",
            "ratio",
            0.8,
            subject="hookpool-ppe",
            ref=Ref("imap", "hookpool", "time", "hookpool Pool.imap"),
            ref_limit=1.15,
        ),
        Row(
            "imap",
            "max_ahead",
            f"executor.map read-ahead, consumer stalls {z.imap_stall_s:g} s",
            "bounded",
            0.1 * z.imap_n,
            unit="items",
            subject="hookpool-ppe",
        ),
        Row(
            "transfer_bytes",
            "roundtrip",
            f"{z.transfer_mib} MiB bytes round trip",
            "ratio",
            0.5,
            ref=raw,
            ref_limit=1.3,
        ),
        Row(
            "transfer_numpy",
            "roundtrip",
            f"{z.transfer_mib} MiB numpy array round trip",
            "ratio",
            0.5,
            ref=raw,
        ),
        Row(
            "lambda",
            "map_function",
            f"map {k(z.lambda_n)} items, module function, chunksize={z.lambda_chunksize}",
            "info",
        ),
        Row("lambda", "map_lambda", "same map with a closure (lambda)", "lambda", 1.1),
        Row(
            "cpu",
            "speedup",
            f"CPU: {z.cpu_tasks} x {z.cpu_task_ms:g} ms tasks, speedup",
            "speedup",
            1.9,
            unit="x",
        ),
        Row(
            "script",
            "script",
            "whole script from outside: import, Pool(2), 1 task, close, exit",
            "ratio",
            0.95,
            ref=interpreter,
        ),
        Row(
            "script",
            "import",
            "`from hookpool import Pool` vs `import multiprocessing.pool`",
            "info",
            ref=interpreter,
        ),
        Row(
            "startup_forkserver",
            "startup",
            "forkserver: startup → first result",
            "ratio",
            1.0,
            ref=Ref("limit_forkserver", MACHINE, "first", "forkserver Process, 1st"),
        ),
        Row(
            "replace_forkserver",
            "per_task",
            f"forkserver, maxtasksperchild=1: {z.replace_tasks} tasks, per task",
            "ratio",
            1.0,
            ref=Ref("limit_forkserver", MACHINE, "warm", "forkserver Process"),
        ),
    ]


# --------------------------------------------------------------------------- results


@dataclass
class Failure:
    error: str
    detail: str
    repeat: int
    log_tail: str = ""


@dataclass
class Cell:
    """All samples of one (case, library) pair."""

    samples: list[dict[str, float]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    max_wall_s: float = 0.0
    skipped: str | None = None

    def values(self, metric: str) -> list[float]:
        return [s[metric] for s in self.samples if metric in s]

    def value(self, metric: str) -> float | None:
        values = self.values(metric)
        return median(values) if values else None

    def count(self, metric: str) -> int:
        return len(self.values(metric))

    def spread(self, metric: str) -> tuple[float, float] | None:
        """The lowest and highest sample of ``metric``."""
        values = self.values(metric)
        return (min(values), max(values)) if values else None

    def failure_text(self) -> str | None:
        if not self.failures:
            return None
        f = self.failures[0]
        return "FAILED/timeout" if f.error == "timeout" else f"ERROR ({f.error})"


@dataclass
class Outcome:
    ok: bool
    metrics: dict[str, float]
    error: str = ""
    detail: str = ""
    log_tail: str = ""
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0


# --------------------------------------------------------------------------- child processes


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    parts = [str(HERE), str(REPO)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid`` (Linux /proc; else best effort)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def reap_group(pgid: int, grace_s: float) -> int:
    """Wait up to ``grace_s`` for the group to empty; kill what is left; return that count."""
    end = time.monotonic() + grace_s
    members = group_members(pgid)
    while members and time.monotonic() < end:
        time.sleep(0.05)
        members = group_members(pgid)
    if members:
        kill_group(pgid)
    return len(members)


def run_child(case: Case, lib: str, repeat: int, timeout_s: float, workdir: Path) -> Outcome:
    stem = f"{case.name}-{lib}-{repeat}"
    out_path = workdir / f"{stem}.result.json"
    log_path = workdir / f"{stem}.log"
    spec_path = workdir / f"{stem}.spec.json"
    deadline_s = max(5.0, timeout_s - 3.0)
    spec = {
        "case": case.name,
        "lib": lib,
        "params": {**case.params, "repeat": repeat},
        "deadline_s": deadline_s,
        "out": str(out_path),
    }
    spec_path.write_text(json.dumps(spec))
    notes: list[str] = []
    start = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_main.py"),
                str(spec_path),
                LIBRARIES[lib].entry,
                *([lib, case.name] if case.name in EARLY_CASES else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=REPO,
            start_new_session=True,
        )
        hard_end = start + timeout_s + 5.0
        result_seen: float | None = None
        killed_for_timeout = False
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if result_seen is None and out_path.exists():
                result_seen = now
            if result_seen is not None and now - result_seen > EXIT_GRACE_S:
                notes.append(f"did not exit within {EXIT_GRACE_S:.0f} s after its result; killed")
                kill_group(proc.pid)
                proc.wait()
                break
            if now > hard_end:
                killed_for_timeout = True
                kill_group(proc.pid)
                proc.wait()
                break
    wall = time.monotonic() - start
    leaked = reap_group(proc.pid, LEAK_GRACE_S)
    log_tail = log_path.read_text(errors="replace")[-3000:]
    if out_path.exists():
        result = json.loads(out_path.read_text())
    elif killed_for_timeout:
        result = {
            "ok": False,
            "error": "timeout",
            "detail": f"killed after {timeout_s:.0f} s (no result written)",
        }
    else:
        result = {
            "ok": False,
            "error": "crash",
            "detail": f"child exited with code {proc.returncode} without a result",
        }
    if result["ok"] and leaked:
        notes.append(f"{leaked} process(es) still alive {LEAK_GRACE_S:.0f} s after exit; killed")
    return Outcome(
        ok=bool(result["ok"]),
        metrics=result.get("metrics", {}),
        error=result.get("error", ""),
        detail=result.get("detail", ""),
        log_tail="" if result["ok"] else log_tail,
        notes=notes,
        wall_s=wall,
    )


def probe_hookpool_executor() -> tuple[bool, str]:
    """Does ``hookpool.ProcessPoolExecutor`` exist? Checked in a child, bounded in time."""
    code = "import hookpool; hookpool.ProcessPoolExecutor"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=child_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False, "import hookpool timed out"
    if proc.returncode == 0:
        return True, ""
    lines = proc.stderr.strip().splitlines()
    return False, lines[-1] if lines else f"exit code {proc.returncode}"


# --------------------------------------------------------------------------- calibration


def calibrate_spin(task_ms: float) -> tuple[int, int]:
    """Loop count for ``_tasks.spin`` so one call takes ``task_ms`` here, and its result."""
    from _tasks import spin

    def timed(loops: int) -> float:
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            spin(loops)
            samples.append(time.perf_counter() - t0)
        return median(samples)

    loops = 10_000
    while (elapsed := timed(loops)) < 0.005:
        loops *= 4
    for _ in range(2):
        loops = max(1, round(loops * (task_ms / 1000) / elapsed))
        elapsed = timed(loops)
    return loops, spin(loops)


# --------------------------------------------------------------------------- machine info


def _first_line(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def fmt_load(load: list[float] | None) -> str:
    return "unknown" if load is None else " ".join(f"{x:.2f}" for x in load)


def compile_bytecode(notes: list[str]) -> None:
    """Compile the bytecode of the hookpool that the samples import (this checkout's:
    ``child_env`` puts it first on their path), as ``pip install`` does and as the
    standard library ships it: under PYTHONDONTWRITEBYTECODE=1 every worker would
    otherwise compile every module from source, which no installed copy does. The same
    for the harness's own modules (``_tasks`` is imported by every worker)."""
    if not compileall.compile_dir(REPO / "hookpool", quiet=2, workers=1):
        notes.append(f"could not compile the bytecode in {REPO / 'hookpool'}")
    if not compileall.compile_dir(HERE, maxlevels=0, quiet=2, workers=1):
        notes.append(f"could not compile the bytecode in {HERE}")


def note_editable_install(notes: list[str]) -> None:
    """An editable install adds an import hook that ``site`` loads in every interpreter,
    workers included (some 10 ms each here): the same for every library, but no user's
    installed copy has it, and it makes every start-up look alike."""
    for entry in map(Path, sys.path):
        if entry.is_dir() and any(entry.glob("__editable__*hookpool*")):
            notes.append(
                f"hookpool is installed in editable mode in {entry}: its import hook runs "
                "in every process the benchmark starts and adds the same to every "
                "library's start-up (install with `pip install .` to measure without it)"
            )


def machine_info() -> dict[str, Any]:
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            stdin=subprocess.DEVNULL,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    mem = _first_line("/proc/meminfo", "MemTotal")
    return {
        "loadavg_start": load_average(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _first_line("/proc/cpuinfo", "model name") or platform.processor(),
        "memory": f"{int(mem.split()[0]) / 2**20:.1f} GiB" if mem else None,
        "commit": commit,
        "versions": {
            name: v
            for name in ("hookpool", "cloudpickle", "numpy", "loky", "pebble", "mpire")
            if (v := _version(name))
        },
    }


# --------------------------------------------------------------------------- formatting


def fmt_value(value: float, unit: str) -> str:
    if unit == "items":
        return f"{value:,.0f}"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if unit == "x":
        return f"{value:.2f}x"
    if value >= 10:
        return f"{value:.1f} s"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        ms = value * 1e3
        return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.3g} ms"
    us = value * 1e6
    return f"{us:.0f} µs" if us >= 100 else f"{us:.3g} µs"


@dataclass
class TableRow:
    label: str
    cells: dict[str, str]
    values: dict[str, float | None]
    ratio: float | None
    ratio_ppe: float | None
    target: str
    verdict: str
    ref_name: str | None = None
    ref_value: float | None = None
    ratio_ref: float | None = None
    """The row's subject (hookpool, or hookpool PPE) ÷ the reference."""


STDLIB_OF = {"hookpool": "pool", "hookpool-ppe": "ppe"}
"""The standard library's counterpart of each hookpool API: what ``Row.limit`` divides by."""


class Report:
    def __init__(
        self,
        sizes: Sizes,
        cases: list[Case],
        libs: list[str],
        results: dict[str, dict[str, Cell]],
    ) -> None:
        self.sizes = sizes
        self.cases = {c.name: c for c in cases}
        self.libs = libs
        self.results = results

    def source(self, case: str, lib: str, metric: str) -> tuple[Cell | None, str]:
        """Where ``metric`` of ``lib`` in ``case`` is: a paired case keeps every library's
        values in the ``PAIRED`` pseudo-library's cell, as ``metric@lib``."""
        spec = self.cases.get(case)
        if spec is not None and spec.libs == (PAIRED,) and lib not in PSEUDO:
            if lib not in spec.params["libs"]:
                return None, metric
            return self.results.get(case, {}).get(PAIRED), f"{metric}@{lib}"
        return self.results.get(case, {}).get(lib), metric

    def cell(self, case: str, lib: str) -> Cell | None:
        return self.source(case, lib, "")[0]

    def raw(self, case: str, lib: str, metric: str) -> float | None:
        cell, name = self.source(case, lib, metric)
        if cell is None or cell.failures:
            return None
        return cell.value(name)

    def cell_text(self, row: Row, lib: str) -> str:
        cell, name = self.source(row.case, lib, row.metric)
        if cell is None:
            return "—"
        if cell.skipped:
            return cell.skipped
        if (text := cell.failure_text()) is not None:
            return text
        if row.kind == "lambda" and not cell.count(name):
            return "n/a"
        value = cell.value(name)
        if value is None:
            return "n/a"
        text = fmt_value(value, row.unit)
        if cell.count(name) < self.sizes.repeats:
            text += "*"
        if cell.notes:
            text += "†"
        return text

    def ratio(self, row: Row, num_lib: str, den_lib: str) -> float | None:
        if row.kind == "lambda":
            lam = self.raw(row.case, num_lib, "map_lambda")
            fun = self.raw(row.case, num_lib, "map_function")
            return lam / fun if lam is not None and fun else None
        num = self.raw(row.case, num_lib, row.metric)
        den = self.raw(row.case, den_lib, row.metric)
        if row.kind == "speedup":  # express as a time ratio too: lower is faster
            num, den = den, num
        return num / den if num is not None and den else None

    def ratio_ref(self, row: Row) -> float | None:
        if row.ref is None:
            return None
        num = self.raw(row.case, row.subject, row.metric)
        den = self.raw(row.ref.case, row.ref.lib, row.ref.metric)
        return num / den if num is not None and den else None

    def target_text(self, row: Row) -> str:
        of = "" if row.subject == "hookpool" else " (PPE ÷ PPE)"
        if row.kind == "ratio":
            text = f"≤ {row.limit:g}{of}"
        elif row.kind == "lambda":
            text = f"≤ {row.limit:.1f} (lambda ÷ function)"
        elif row.kind == "bounded":
            whose = "" if row.subject == "hookpool" else ", hookpool PPE"
            text = f"bounded: ≤ {row.limit:,.0f} items (10% of input{whose})"
        elif row.kind == "speedup":
            text = f"speedup ≥ {row.limit:g}x"
        else:
            text = ""
        if row.ref_limit is not None:
            text += ("; " if text else "") + f"≤ {row.ref_limit:g}x ref"
        return text or "—"

    def verdict(self, row: Row, ratio: float | None, ratio_ref: float | None) -> str:
        """'met' or 'missed' for each target, in the order ``target_text`` lists them."""
        cell = self.cell(row.case, row.subject)
        if cell is None:
            return "—"
        if cell.skipped:
            return "skipped"
        if cell.failures:
            return "FAILED"
        verdicts = []
        if row.kind != "info" and row.limit is not None:
            if row.kind in ("ratio", "lambda"):
                met = None if ratio is None else ratio <= row.limit
            else:
                value = self.raw(row.case, row.subject, row.metric)
                if value is None:
                    met = None
                elif row.kind == "bounded":
                    met = value <= row.limit
                else:
                    met = value >= row.limit
            verdicts.append(met)
        if row.ref_limit is not None:
            verdicts.append(None if ratio_ref is None else ratio_ref <= row.ref_limit)
        if not verdicts:
            return "—"
        return "; ".join("?" if v is None else "met" if v else "missed" for v in verdicts)

    def table(self, rows: list[Row]) -> list[TableRow]:
        out = []
        for row in rows:
            if row.case not in self.cases:
                continue
            ratio = self.ratio(row, row.subject, STDLIB_OF[row.subject])
            ratio_ref = self.ratio_ref(row)
            out.append(
                TableRow(
                    label=row.label,
                    cells={lib: self.cell_text(row, lib) for lib in self.libs},
                    values={lib: self.raw(row.case, lib, row.metric) for lib in self.libs},
                    ratio=ratio if row.subject == "hookpool" else None,
                    ratio_ppe=self.ratio(row, "hookpool-ppe", "ppe"),
                    target=self.target_text(row),
                    verdict=self.verdict(row, ratio, ratio_ref),
                    ref_name=row.ref.name if row.ref else None,
                    ref_value=(
                        self.raw(row.ref.case, row.ref.lib, row.ref.metric) if row.ref else None
                    ),
                    ratio_ref=ratio_ref,
                )
            )
        return out

    def failures(self) -> list[str]:
        lines = []
        for case, cells in self.results.items():
            for lib, cell in cells.items():
                title = LIBRARIES[lib].title
                for f in cell.failures:
                    lines.append(f"{case} / {title} (repeat {f.repeat + 1}): {f.detail}")
                for note, count in Counter(cell.notes).items():
                    times = f" ({count} samples)" if count > 1 else ""
                    lines.append(f"{case} / {title}: {note}{times}")
        return lines


def main_columns(libs: list[str]) -> list[str]:
    return [lib for lib in ("pool", "ppe", "hookpool", "hookpool-ppe") if lib in libs]


def other_columns(libs: list[str]) -> list[str]:
    return [lib for lib in libs if lib not in ("pool", "ppe", "hookpool", "hookpool-ppe")]


def fmt_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}"


def table_grid(report: Report, rows: list[Row]) -> tuple[list[list[str]], list[list[str]]]:
    """Header + body of the main table and of the optional-competitors table."""
    trows = report.table(rows)
    main = main_columns(report.libs)
    has_hp_ppe = "hookpool-ppe" in main
    has_ref = any(tr.ref_name for tr in trows)
    header = ["Workload", *(LIBRARIES[lib].title for lib in main), "hookpool / Pool"]
    if has_hp_ppe:
        header.append("hookpool PPE / PPE")
    if has_ref:
        header += ["Reference", "hookpool / ref"]
    header += ["Target", "Met"]
    body = []
    for tr in trows:
        line = [tr.label, *(tr.cells[lib] for lib in main), fmt_ratio(tr.ratio)]
        if has_hp_ppe:
            line.append(fmt_ratio(tr.ratio_ppe))
        if has_ref:
            if tr.ref_name is None:
                line += ["", ""]
            else:
                value = "n/a" if tr.ref_value is None else fmt_value(tr.ref_value, "s")
                line += [f"{value} ({tr.ref_name})", fmt_ratio(tr.ratio_ref)]
        line += [tr.target, tr.verdict]
        body.append(line)
    main_grid = [header, *body]

    others = other_columns(report.libs)
    other_grid: list[list[str]] = []
    if others:
        other_grid.append(["Workload", *(f"{LIBRARIES[lib].title} (÷ Pool)" for lib in others)])
        for row, tr in zip([r for r in rows if r.case in report.cases], trows, strict=True):
            line = [tr.label]
            for lib in others:
                text = tr.cells[lib]
                ratio = report.ratio(row, lib, "pool") if row.kind != "lambda" else None
                if ratio is not None and text[:1].isdigit():
                    text += f" ({ratio:.2f})"
                line.append(text)
            other_grid.append(line)
    return main_grid, other_grid


#: The machine limits, as the limits table shows them: (case, metric, what).
LIMITS = (
    ("limit_pipe", "roundtrip", "pickled round trip of a tiny object over a pipe (pipe RT)"),
    ("limit_raw", "roundtrip", "raw round trip of the transfer size over os.pipe (raw pipe RT)"),
    ("limit_spawn", "first", "bare spawn Process start + join, first in a process"),
    ("limit_spawn", "warm", f"same, median of the next {WARM_STARTS}"),
    ("limit_forkserver", "first", "bare forkserver Process start + join, first (server start)"),
    ("limit_forkserver", "warm", f"same, server running, median of the next {WARM_STARTS}"),
    ("script", "interpreter", "python -c pass, timed from outside"),
)


def limits_grid(report: Report) -> list[list[str]]:
    """The machine limits measured in this run (empty if none was)."""
    body = []
    for case, metric, what in LIMITS:
        lib = PAIRED if case == "script" else MACHINE
        cell = report.results.get(case, {}).get(lib)
        if cell is None:
            continue
        text = cell.failure_text() or (
            fmt_value(v, "s") if (v := cell.value(metric)) is not None else "n/a"
        )
        spread = cell.spread(metric)
        low_high = "" if spread is None else " to ".join(fmt_value(v, "s") for v in spread)
        body.append([what, text, low_high, str(cell.count(metric))])
    # The range shows what a median hides: a limit measured across cores (say, the pipe
    # RT: on one core, or waking the other) falls in two groups, and its median in either.
    return [["Machine limit", "Median", "Range", "Samples"], *body] if body else []


LEFT = {"Workload", "Target", "Met", "Machine limit"}
"""Columns aligned left; all others hold numbers and are aligned right."""


def render_text(grid: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
    lines = []
    for n, r in enumerate(grid):
        pairs = enumerate(zip(r, widths, strict=True))
        cells = [c.ljust(w) if grid[0][i] in LEFT else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown_table(grid: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    header, *body = grid
    lines = ["| " + " | ".join(esc(c) for c in header) + " |"]
    lines.append("|" + "|".join(":---" if c in LEFT else "---:" for c in header) + "|")
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def method_lines(z: Sizes, quick: bool, cpu: tuple[int, int] | None) -> list[str]:
    lines = [
        f"{WORKERS} workers everywhere; all pools use the spawn start method "
        "(stdlib: `multiprocessing.get_context('spawn').Pool` and "
        "`concurrent.futures.ProcessPoolExecutor(mp_context=spawn)`).",
        f"Each cell is the median of {z.repeats} samples{' (--quick)' if quick else ''}; "
        "every sample runs in a fresh process, libraries interleaved within each repeat; "
        "hookpool's bytecode is compiled first, as an installed copy's is. "
        "`*` = fewer samples (per-cell time budget "
        f"{z.cell_budget_s:g} s); `†` = see notes.",
        "Ratio columns are hookpool ÷ stdlib (lower is faster), except the lambda row "
        "(hookpool lambda map ÷ hookpool function map) and the CPU row (time ratio; the "
        "cells show speedup over serial, the ratio is Pool speedup ÷ hookpool speedup).",
        "Pools are warmed up (every worker has run a task) before all workloads except startup.",
        "Startup: measured in a process that has imported only the library under test (a script "
        "whose first act is to make a pool); the second row, after importing "
        f"{', '.join(COMMON_MODULES)} first, as larger programs have: that makes the standard "
        "library's own imports at `Pool()` cheaper.",
        "map/submit: trivial `x + 1` task; map with the default chunksize: each sample is "
        f"the median of {z.map_default_rounds} maps on the same pool (one, where a map takes "
        "a second or more); latency: median over "
        f"{z.latency_samples} single `apply_async`/`submit` round trips, "
        f"{z.latency_idle_s * 1e3:g} ms idle before each (back to back: none, each "
        "submitted as the last returns).",
        f"imap: lazy generator of {z.imap_n:,} ints, chunksize={z.imap_chunksize} for every "
        "library (Executor-style libraries use `map(..., chunksize=)`). Time: one pass with a "
        "consumer that keeps up. Read-ahead: max of items pulled from the generator minus "
        "items consumed, over that pass and a second one whose consumer sleeps "
        f"{z.imap_stall_s:g} s after the first result (an unbounded feeder keeps reading "
        "meanwhile); bounded means at most 10% of the input. RSS: growth of the parent's peak "
        "RSS (VmHWM, reset first via /proc/self/clear_refs) over both passes.",
        f"Round trip: one task that returns its {z.transfer_mib} MiB argument (bytes, or a "
        "float64 numpy array), submitted to a warmed-up pool; "
        + (
            "one round trip per sample."
            if z.transfer_rounds == 1
            else f"median of {z.transfer_rounds} round trips per sample."
        ),
        "Lambda: `lambda x: x * k + 1` closing over a local vs the module function "
        "`x * 3 + 1`; the stdlib cannot pickle lambdas under spawn, so it runs the function only.",
    ]
    lines += [
        "Reference: measured in the same run, each sample in a fresh process; hookpool / ref "
        "is the row's hookpool value (hookpool PPE on executor rows) ÷ the reference; "
        "`≤ Nx ref` targets that ratio. pipe RT: median of "
        f"{z.pipe_roundtrips} back-to-back pickled round trips of a tiny object (an int and a "
        "function reference) with a spawn child that echoes, over two `os.pipe` pipes. raw "
        f"pipe RT: {z.transfer_mib} MiB through `os.pipe` to a spawn child and back, no "
        f"pickling, new buffers on both sides, median of {z.raw_rounds} after a warm-up. "
        "spawn/forkserver Process: a bare `Process(target=nothing)` start + join, the first "
        "in a process that has imported only `multiprocessing` (spawn: with the resource "
        f"tracker's start; forkserver: with the server's), or the median of the next "
        f"{WARM_STARTS} (forkserver, per task row).",
        "executor.map: the imap workload's `ProcessPoolExecutor.map(..., chunksize=)` run, "
        "compared with hookpool's own `Pool.imap` on the same input (reference) and with "
        "the stdlib PPE (PPE ÷ PPE column).",
        f"Whole script: `python script.py` timed from outside ({z.script_rounds} interleaved "
        "pairs per sample, order alternating): the script imports the library, makes a "
        "2-worker spawn Pool, runs one `apply` of its own function, closes, joins and exits; "
        "import: `python -c` of `from hookpool import Pool` / `import multiprocessing.pool`, "
        "paired the same way; reference: `python -c pass`.",
        "Forkserver: `Pool(2, context='forkserver')` vs the stdlib's forkserver Pool; "
        "startup as above; then "
        f"{z.replace_tasks} tasks, `map(chunksize=1)`, with `maxtasksperchild=1` (a new "
        "worker per task), time per task.",
    ]
    if cpu is not None:
        lines.append(
            f"CPU: {z.cpu_tasks} pure-Python tasks calibrated to ~{z.cpu_task_ms:g} ms each "
            f"(`spin({cpu[0]:,})`), `map(chunksize=1)`; speedup = serial time ÷ pool time, "
            f"the serial time measured on {z.cpu_serial_tasks} of the tasks in the same child "
            "process just before the pool run (scaled to all tasks)."
        )
    return lines


def machine_lines(info: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return [
        f"Date: {info['date']}; commit {info['commit']}",
        f"Platform: {info['platform']}; {info['python']}",
        f"CPU: {info['cpu_model']}; os.cpu_count()={info['cpu_count']}, "
        f"usable={info['cpu_affinity']}; memory {info['memory']}",
        f"Packages: {versions or 'none found'}",
        f"Load average (1/5/15 min) at start: {fmt_load(info['loadavg_start'])}"
        + (f"; at end: {fmt_load(info['loadavg_end'])}" if "loadavg_end" in info else ""),
    ]


def render_markdown(
    report: Report,
    rows: list[Row],
    info: dict[str, Any],
    quick: bool,
    cpu: tuple[int, int] | None,
    notes: list[str],
) -> str:
    main_grid, other_grid = table_grid(report, rows)
    parts = [
        "# hookpool benchmarks",
        "",
        "Generated by `python benchmarks/run.py"
        + (" --quick" if quick else "")
        + "`. Lower is faster unless stated.",
        "",
        "## Machine",
        "",
        *(f"- {line}" for line in machine_lines(info)),
        "",
        "## Results",
        "",
        render_markdown_table(main_grid),
        "",
    ]
    if other_grid:
        parts += [
            "### Other libraries (value, and ratio to stdlib Pool)",
            "",
            render_markdown_table(other_grid),
            "",
        ]
    if limits := limits_grid(report):
        parts += [
            "### Machine limits (measured in the same run)",
            "",
            render_markdown_table(limits),
            "",
        ]
    parts += ["## Method", "", *(f"- {line}" for line in method_lines(report.sizes, quick, cpu))]
    all_notes = notes + report.failures()
    if all_notes:
        parts += ["", "## Notes and failures", "", *(f"- {n}" for n in all_notes)]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    groups = sorted({c.group for c in build_cases(FULL, (1, 1), None)})
    names = [c.name for c in build_cases(FULL, (1, 1), None)]
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes, 3 repeats (~2 min)")
    ap.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"workloads to run: {', '.join(groups)} (or single cases: {', '.join(names)})",
    )
    ap.add_argument(
        "--repeats", type=int, metavar="N", help="samples per cell (default 5, --quick 3)"
    )
    ap.add_argument(
        "--libs",
        metavar="KEY[,KEY]",
        help=f"libraries to run (default: all available): {', '.join(LIBRARIES)}",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="fixed time limit per sample, in seconds (default: 60 s, 120 s for the long "
        f"workloads, and for non-stdlib libraries {SLOWDOWN_LIMIT:g}x the slowest stdlib sample "
        "of the workload if lower, but at least 20 s; --quick: 20/40/10 s)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        metavar="S",
        help="wall-time budget per (workload, library) cell before repeats stop",
    )
    ap.add_argument(
        "--max-timeouts",
        type=int,
        default=3,
        metavar="N",
        help="skip a library's remaining workloads after N timeouts (0: never)",
    )
    ap.add_argument("--json", type=Path, metavar="PATH", help="write all samples and results")
    ap.add_argument("--markdown", type=Path, metavar="PATH", help="write a Markdown report")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - set(groups) - set(names)
        if unknown:
            ap.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
        args.only = wanted
    if args.libs:
        keys = [s.strip() for s in args.libs.split(",") if s.strip()]
        unknown = set(keys) - set(LIBRARIES)
        if unknown:
            ap.error(f"unknown librar(y/ies): {', '.join(sorted(unknown))}")
        args.libs = keys
    return args


def select_libs(requested: list[str] | None, notes: list[str]) -> list[str]:
    libs = []
    for key, lib in LIBRARIES.items():
        if key in PSEUDO or (requested is not None and key not in requested):
            continue
        if key == "hookpool-ppe":
            ok, why = probe_hookpool_executor()
            if not ok:
                notes.append(f"hookpool.ProcessPoolExecutor not benchmarked: {why}")
                continue
        elif lib.optional and importlib.util.find_spec(lib.module) is None:
            continue
        libs.append(key)
    return libs


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Runner:
    """Runs every (case, library, repeat) sample, interleaving libraries within a repeat."""

    def __init__(
        self, sizes: Sizes, libs: list[str], max_timeouts: int, fixed_timeout: bool
    ) -> None:
        self.sizes = sizes
        self.fixed_timeout = fixed_timeout
        self.libs = libs
        self.max_timeouts = max_timeouts
        self.results: dict[str, dict[str, Cell]] = {}
        self.notes: list[str] = []
        self.timeouts: Counter[str] = Counter()
        self.done = 0
        self.total = 0

    def case_libs(self, case: Case) -> list[str]:
        if case.libs is None:
            return self.libs
        return [lib for lib in case.libs if lib in PSEUDO or lib in self.libs]

    def run(self, cases: list[Case]) -> None:
        self.total = sum(len(self.case_libs(c)) for c in cases) * self.sizes.repeats
        with tempfile.TemporaryDirectory(prefix="hookpool-bench-") as tmp:
            for case in cases:
                self.run_case(case, Path(tmp))

    def run_case(self, case: Case, workdir: Path) -> None:
        libs = self.case_libs(case)
        cells = self.results[case.name] = {lib: Cell() for lib in libs}
        if not libs:
            return
        if case.requires and importlib.util.find_spec(case.requires) is None:
            for cell in cells.values():
                cell.skipped = f"skipped ({case.requires} missing)"
            self.notes.append(f"{case.name}: skipped, {case.requires} is not installed")
            self.done += len(libs) * self.sizes.repeats
            return
        for repeat in range(self.sizes.repeats):
            shift = repeat % len(libs)
            for lib in libs[shift:] + libs[:shift]:
                self.done += 1
                if self.should_run(cells[lib], lib):
                    self.sample(case, lib, repeat, cells, workdir)

    def should_run(self, cell: Cell, lib: str) -> bool:
        if cell.failures or (cell.samples and cell.wall_s >= self.sizes.cell_budget_s):
            return False
        if self.max_timeouts and self.timeouts[lib] >= self.max_timeouts:
            if not cell.samples:
                cell.skipped = "skipped (timeouts)"
            return False
        return True

    def time_limit(self, case: Case, lib: str, cells: dict[str, Cell]) -> tuple[float, str]:
        """The limit for one sample, and how it was chosen (for the failure message)."""
        if self.fixed_timeout or lib in REFERENCE_LIBS or lib in PSEUDO:
            return case.timeout_s, ""
        walls = [
            cells[ref].max_wall_s for ref in REFERENCE_LIBS if ref in cells and cells[ref].samples
        ]
        if not walls:
            return case.timeout_s, ""
        limit = min(case.timeout_s, max(self.sizes.min_timeout_s, SLOWDOWN_LIMIT * max(walls)))
        if limit >= case.timeout_s:
            return case.timeout_s, ""
        return limit, (
            f" [limit {limit:.0f} s: {SLOWDOWN_LIMIT:g}x the slowest stdlib sample,"
            f" at least {self.sizes.min_timeout_s:g} s]"
        )

    def sample(
        self, case: Case, lib: str, repeat: int, cells: dict[str, Cell], workdir: Path
    ) -> None:
        cell = cells[lib]
        timeout_s, why = self.time_limit(case, lib, cells)
        outcome = run_child(case, lib, repeat, timeout_s, workdir)
        if outcome.error == "timeout":
            outcome.detail += why
        cell.wall_s += outcome.wall_s
        cell.notes += outcome.notes
        title = LIBRARIES[lib].title
        if outcome.ok:
            cell.samples.append(outcome.metrics)
            cell.max_wall_s = max(cell.max_wall_s, outcome.wall_s)
            status = "ok"
        else:
            cell.failures.append(Failure(outcome.error, outcome.detail, repeat, outcome.log_tail))
            status = f"{outcome.error}: {outcome.detail}"[:100]
            if outcome.error == "timeout":
                self.timeouts[lib] += 1
                if self.timeouts[lib] == self.max_timeouts:
                    self.notes.append(
                        f"{title}: remaining workloads skipped after "
                        f"{self.max_timeouts} timeouts (--max-timeouts)"
                    )
        log(
            f"[{self.done:>3}/{self.total}] {case.name:<14} {title:<14} "
            f"rep {repeat + 1}/{self.sizes.repeats}  {outcome.wall_s:6.2f} s  {status}"
        )


def write_json(
    path: Path,
    report: Report,
    rows: list[Row],
    info: dict[str, Any],
    quick: bool,
    cpu: tuple[int, int] | None,
    notes: list[str],
    elapsed: float,
) -> None:
    payload = {
        "machine": info,
        "config": {
            "quick": quick,
            "workers": WORKERS,
            **asdict(report.sizes),
            "cpu_loops": cpu[0] if cpu else None,
        },
        "libraries": {k: LIBRARIES[k].title for k in report.libs},
        "cases": {
            name: {"group": c.group, "params": c.params, "timeout_s": c.timeout_s}
            for name, c in report.cases.items()
        },
        "samples": {
            case: {lib: asdict(cell) for lib, cell in cells.items()}
            for case, cells in report.results.items()
        },
        "table": [asdict(tr) for tr in report.table(rows)],
        "notes": notes + report.failures(),
        "elapsed_s": elapsed,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def run(args: argparse.Namespace) -> int:
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        **{
            **asdict(base),
            **({"repeats": args.repeats} if args.repeats else {}),
            **({"cell_budget_s": args.budget} if args.budget else {}),
        }
    )
    info = machine_info()
    for line in machine_lines(info):
        log(line)
    notes: list[str] = []
    compile_bytecode(notes)
    note_editable_install(notes)
    libs = select_libs(args.libs, notes)
    if not libs:
        log("No library to benchmark (see --libs).")
        return 2
    log(f"Libraries: {', '.join(LIBRARIES[k].title for k in libs)}")

    cpu: tuple[int, int] | None = None
    if not args.only or "cpu" in args.only:
        cpu = calibrate_spin(sizes.cpu_task_ms)
        log(f"CPU task calibrated: spin({cpu[0]:,}) ≈ {sizes.cpu_task_ms:g} ms")
    all_cases = build_cases(sizes, cpu, args.timeout)
    wanted = {
        c.name for c in all_cases if not args.only or c.group in args.only or c.name in args.only
    }
    wanted |= {need for c in all_cases if c.name in wanted for need in c.needs}
    cases = [c for c in all_cases if c.name in wanted]
    rows = build_rows(sizes)

    runner = Runner(sizes, libs, args.max_timeouts, fixed_timeout=args.timeout is not None)
    started = time.monotonic()
    runner.run(cases)
    elapsed = time.monotonic() - started
    notes += runner.notes

    info["loadavg_end"] = load_average()
    if info["loadavg_start"] and info["loadavg_start"][0] > 0.5:
        notes.append(
            "The machine was not idle when the run started (load average above); "
            "other processes may have perturbed the timings."
        )
    serial = [s["serial_time"] for c in runner.results.get("cpu", {}).values() for s in c.samples]
    if serial:
        per_task = median(serial) / sizes.cpu_tasks
        notes.insert(
            0,
            f"CPU task: median serial time per task {fmt_value(per_task, 's')} "
            f"(calibrated to {sizes.cpu_task_ms:g} ms before the run)",
        )
    notes.append(f"Total benchmark wall time: {elapsed:.0f} s")

    report = Report(sizes, cases, libs, runner.results)
    main_grid, other_grid = table_grid(report, rows)
    print()
    print(
        f"hookpool benchmarks ({'quick' if args.quick else 'full'}; "
        f"{WORKERS} workers, spawn; medians of {sizes.repeats})"
    )
    for line in machine_lines(info):
        print("  " + line)
    if len(main_grid) > 1:
        print()
        print(render_text(main_grid))
    if other_grid:
        print()
        print(render_text(other_grid))
    if limits := limits_grid(report):
        print()
        print(render_text(limits))
    print()
    for line in notes + report.failures():
        print(f"- {line}")

    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(report, rows, info, args.quick, cpu, notes))
        log(f"Markdown written to {args.markdown}")
    if args.json:
        write_json(args.json, report, rows, info, args.quick, cpu, notes, elapsed)
        log(f"JSON written to {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
