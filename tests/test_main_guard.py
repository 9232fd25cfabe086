"""A script that creates a pool at import time, without ``if __name__ == "__main__":``,
fails fast with a clear error: no hang, no endless respawn."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import assert_gone, run_script

import hookpool._events
import hookpool._manager

PROCESSES = 2
#: The initial workers, plus the few replacements hookpool allows for workers that die
#: while starting, before it declares the pool broken.
MAX_WORKERS = PROCESSES + getattr(hookpool._events, "STARTUP_FAILURES_TO_BREAK", 1)

# Every process that imports the script leaves a marker: the parent, and each worker
# (which re-imports the main script as __mp_main__ under spawn).
PROLOGUE = """
import os, sys
from pathlib import Path
Path(sys.argv[1], f"{__name__}-{os.getpid()}").write_text("1")
import hookpool, tasks
"""

SCRIPTS = {
    "map": PROLOGUE
    + """
pool = hookpool.Pool(PROCESSES)
print(pool.map(tasks.square, range(8)))
pool.close()
pool.join()
""",
    "with": PROLOGUE
    + """
with hookpool.Pool(PROCESSES) as pool:
    print(pool.apply(tasks.square, (3,)))
""",
    "imap": PROLOGUE
    + """
pool = hookpool.Pool(PROCESSES, initializer=tasks.identity, initargs=(1,))
print(list(pool.imap(tasks.square, range(8))))
""",
}
SCRIPTS["forkserver"] = SCRIPTS["map"].replace(
    "hookpool.Pool(PROCESSES)", 'hookpool.Pool(PROCESSES, context="forkserver")'
)
SCRIPTS = {kind: source.replace("PROCESSES", str(PROCESSES)) for kind, source in SCRIPTS.items()}


def started(directory: Path) -> tuple[list[int], list[int]]:
    """(pids of the script run as __main__, pids of workers that imported it)."""
    main, workers = [], []
    for path in directory.iterdir():
        name, _, pid = path.name.rpartition("-")
        (main if name == "__main__" else workers).append(int(pid))
    return main, workers


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_pool_at_import_time_fails_fast(tmp_path: Path, kind: str) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    try:
        proc = run_script(SCRIPTS[kind], tmp_path, timeout=30, args=(str(markers),))
    except subprocess.TimeoutExpired:
        _, workers = started(markers)
        kill_workers(workers)
        pytest.fail(f"the script hung; {len(workers)} worker processes were started")
    main, workers = started(markers)
    try:
        assert len(main) == 1
        assert proc.returncode != 0, proc.stdout
        assert proc.returncode != -signal.SIGKILL
        # A clear message, naming the fix.
        assert "__main__" in proc.stderr, proc.stderr
        assert "__name__" in proc.stderr, proc.stderr
        assert "Traceback" in proc.stderr
        # No endless respawn: a bounded number of workers ever started.
        # (With forkserver, the fork server imports the main script too.)
        bound = MAX_WORKERS + (kind == "forkserver")
        assert 1 <= len(workers) <= bound, f"{len(workers)} workers started"
        # The script never got a result.
        assert proc.stdout.strip() == ""
        # And none of them is left behind.
        assert_gone(workers, timeout=10)
    finally:
        kill_workers(workers)


def test_the_parent_error_is_pool_broken(tmp_path: Path) -> None:
    """The parent sees a PoolBrokenError telling what to do, not just a child's stderr."""
    markers = tmp_path / "markers"
    markers.mkdir()
    proc = run_script(SCRIPTS["map"], tmp_path, timeout=30, args=(str(markers),))
    _, workers = started(markers)
    kill_workers(workers)
    last_line = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert "PoolBrokenError" in last_line, proc.stderr
    assert "__main__" in last_line


def test_guarded_script_works(tmp_path: Path) -> None:
    """The control: the same script under the guard runs and exits 0."""
    markers = tmp_path / "markers"
    markers.mkdir()
    source = (
        PROLOGUE
        + "\nif __name__ == '__main__':\n"
        + "".join(
            "    " + line + "\n" for line in SCRIPTS["map"][len(PROLOGUE) :].strip().splitlines()
        )
    )
    proc = run_script(source, tmp_path, timeout=30, args=(str(markers),))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([x * x for x in range(8)])
    main, workers = started(markers)
    assert len(main) == 1 and len(workers) == PROCESSES
    assert_gone(workers)


def kill_workers(pids: list[int]) -> None:
    """Clean up after a failure: SIGKILL the workers that are still multiprocessing
    children (a pid that was reused by another program is left alone)."""
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
