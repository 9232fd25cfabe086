"""The joblib backend (``hookpool.joblib``): joblib's expectations hold on hookpool workers,
each with its initializer and finalizer, and a dead worker fails its call instead of
hanging it.

Most tests share one two-worker backend; the ones about the workers' lifetime make their own.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest
from conftest import assert_gone, run_script
from joblib import Parallel, delayed
from tasks import fin_record, init_record
from tasks_hooks import init_fail, markers, wait_for
from tasks_joblib import (
    die_at,
    fail_at,
    fail_first_then_wait,
    nested,
    pid_of,
    square,
)

import hookpool
from hookpool.joblib import HookpoolBackend

N_JOBS = 2


@pytest.fixture(scope="module")
def backend() -> Iterator[HookpoolBackend]:
    """One backend for the module: its workers serve every test that uses it."""
    backend = HookpoolBackend()
    pids: list[int] = []
    try:
        yield backend
        pids = backend.worker_pids
    finally:
        backend.shutdown(wait=True)
    assert_gone(pids)


# -- what joblib programs expect ---------------------------------------------------------

COMPARE = """
import json

import joblib
from joblib import Parallel, delayed

import hookpool.joblib
from tasks_joblib import describe, fail_at, power, square


def run(backend):
    out = {}
    with joblib.parallel_config(backend=backend, n_jobs=2):
        out["auto batches"] = Parallel()(delayed(square)(i) for i in range(3000))
        out["batch_size=7"] = Parallel(batch_size=7)(
            delayed(power)(i, exponent=3) for i in range(100)
        )
        out["generator"] = list(
            Parallel(return_as="generator")(delayed(square)(i) for i in range(50))
        )
        out["generator_unordered"] = sorted(
            Parallel(return_as="generator_unordered")(delayed(square)(i) for i in range(50))
        )
        out["lambda"] = Parallel()(delayed(lambda x: x + 0.5)(i) for i in range(10))
        out["objects"] = Parallel()(
            delayed(describe)(v) for v in [None, 1.5, "s", (1, 2), {"a": 1}, b"x"]
        )
        try:
            Parallel()(delayed(fail_at)(i, 5) for i in range(10))
        except ValueError as error:
            out["error"] = [type(error).__name__, str(error)]
        out["n_jobs=-1"] = Parallel(n_jobs=-1)(delayed(square)(i) for i in range(20))
    return out


if __name__ == "__main__":
    print(json.dumps({backend: run(backend) for backend in ["loky", "hookpool"]}))
"""


@pytest.mark.timeout(90)
def test_a_joblib_program_gives_the_same_results_as_with_loky(tmp_path: Path) -> None:
    """Auto and fixed batches, generators, a lambda, assorted objects, an exception and
    ``n_jobs=-1``: the same with ``backend="hookpool"`` as with joblib's default, loky
    (in a real script, so that loky's workers go with it)."""
    result = run_script(COMPARE, tmp_path, timeout=80)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["hookpool"] == out["loky"]
    assert out["hookpool"]["auto batches"] == [i * i for i in range(3000)]
    assert out["hookpool"]["batch_size=7"] == [i**3 for i in range(100)]
    assert out["hookpool"]["error"] == ["ValueError", "task 5 failed in the worker"]


def test_results_in_order_with_auto_and_fixed_batches(backend: HookpoolBackend) -> None:
    with joblib.parallel_config(backend=backend, n_jobs=N_JOBS):
        auto = Parallel(batch_size="auto")(delayed(square)(i) for i in range(5000))
        fixed = Parallel(batch_size=13)(delayed(square)(i) for i in range(200))
        generated = Parallel(return_as="generator")(delayed(square)(i) for i in range(100))
        assert list(generated) == [i * i for i in range(100)]
        unordered = Parallel(return_as="generator_unordered")(
            delayed(square)(i) for i in range(100)
        )
        assert sorted(unordered) == [i * i for i in range(100)]
        pids = set(Parallel()(delayed(pid_of)(i) for i in range(20)))
    assert auto == [i * i for i in range(5000)]
    assert fixed == [i * i for i in range(200)]
    assert pids <= set(backend.worker_pids)


def test_an_exception_is_reraised_with_the_workers_frames(backend: HookpoolBackend) -> None:
    with joblib.parallel_config(backend=backend, n_jobs=N_JOBS):
        with pytest.raises(ValueError, match="task 3 failed in the worker") as caught:
            Parallel()(delayed(fail_at)(i, 3) for i in range(10))
        # joblib drops the exception's own traceback; the worker's comes as __cause__.
        text = "".join(traceback.format_exception(caught.value))
        assert "RemoteTraceback" in text
        assert "_fail_inner" in text
        assert Parallel()(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


def test_a_failed_batch_stops_the_other_batches_of_its_call(
    backend: HookpoolBackend, tmp_path: Path
) -> None:
    """The batches queued behind a failure (in hookpool's queue, or sent ahead to a busy
    worker) never run; the running ones are interrupted; the next call works."""
    directory = str(tmp_path)
    count = 12
    with joblib.parallel_config(backend=backend, n_jobs=N_JOBS):
        with pytest.raises(ValueError, match="the first task failed"):
            Parallel(batch_size=1, pre_dispatch="all")(
                delayed(fail_first_then_wait)(i, directory) for i in range(count)
            )
        assert Parallel(batch_size=1)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
        Path(directory, "gate").write_text("1")  # (in case a gated batch was not stopped)
    # A gated batch never ends before the gate opens: each worker started one at most.
    ran = {p.name for p in tmp_path.iterdir() if p.name.startswith("ran-")}
    assert len(ran) <= N_JOBS, f"more batches ran than there are workers: {sorted(ran)}"


def test_joblibs_timeout_ends_the_call_and_the_next_call_works(
    backend: HookpoolBackend, tmp_path: Path
) -> None:
    directory = str(tmp_path)
    with joblib.parallel_config(backend=backend, n_jobs=N_JOBS):
        with pytest.raises(multiprocessing.TimeoutError):
            Parallel(timeout=0.5, batch_size=1)(
                delayed(fail_first_then_wait)(i, directory) for i in range(1, 5)
            )
        Path(directory, "gate").write_text("1")
        assert Parallel()(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


def test_a_worker_killed_mid_task_fails_its_call_and_the_next_call_works(
    backend: HookpoolBackend,
) -> None:
    with joblib.parallel_config(backend=backend, n_jobs=N_JOBS):
        with pytest.raises(hookpool.WorkerLostError, match="SIGKILL"):
            Parallel(batch_size=1)(delayed(die_at)(i, 2) for i in range(6))
        assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
    assert len(backend.worker_pids) == N_JOBS  # the lost worker was replaced


def test_a_nested_call_runs_on_threads_in_the_worker(backend: HookpoolBackend) -> None:
    """As with joblib's own process backends: a task's own joblib call gets the threading
    backend, in the worker's process; no process is started."""
    with joblib.parallel_config(backend=backend, n_jobs=N_JOBS):
        outer = Parallel(batch_size=1)(delayed(nested)(i, None) for i in range(2))
    for pid, active, inner in outer:
        assert pid in backend.worker_pids
        assert active == "ThreadingBackend"
        assert inner == [(pid, True, i) for i in range(3)]


def test_a_nested_hookpool_call_runs_sequentially_and_says_so(
    backend: HookpoolBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """``backend="hookpool"`` named again inside a task: the worker starts no workers of
    its own; the call runs there, sequentially, and a warning says why."""
    with joblib.parallel_config(backend=backend, n_jobs=N_JOBS):
        outer = Parallel(batch_size=1)(delayed(nested)(i, "hookpool") for i in range(2))
    for pid, _, inner in outer:
        assert inner == [(pid, True, i) for i in range(3)]
    warned = [r.getMessage() for r in caplog.records if "runs sequentially" in r.getMessage()]
    assert warned, "the worker's warning did not reach the parent's logging"
    assert "Leave the backend unset in nested calls" in warned[0]


def test_n_jobs_follows_joblibs_rules(backend: HookpoolBackend) -> None:
    cpus = joblib.cpu_count()
    with joblib.parallel_config(backend=backend):
        assert joblib.effective_n_jobs(-1) == cpus
        assert joblib.effective_n_jobs(-2) == max(cpus - 1, 1)
        assert joblib.effective_n_jobs(-cpus - 5) == 1
        assert joblib.effective_n_jobs(3) == 3
        assert joblib.effective_n_jobs(None) == 1  # n_jobs set nowhere
        with pytest.raises(ValueError, match="n_jobs=0 has no meaning"):
            joblib.effective_n_jobs(0)
        # No n_jobs anywhere: one job, run in this process, as with joblib's backends.
        assert set(Parallel()(delayed(pid_of)(i) for i in range(3))) == {os.getpid()}


def test_require_sharedmem_gets_joblibs_threads(backend: HookpoolBackend) -> None:
    """As for loky: joblib replaces a process backend by threads, in this process."""
    with joblib.parallel_config(backend=backend, n_jobs=N_JOBS, require="sharedmem"):
        assert set(Parallel()(delayed(pid_of)(i) for i in range(4))) == {os.getpid()}


# -- the workers' lifetime ---------------------------------------------------------------


def test_a_parallel_call_naming_the_backend_has_workers_of_its_own() -> None:
    """``Parallel(backend="hookpool")`` outside a block: its workers go with the call."""
    pids = set(Parallel(n_jobs=2, backend="hookpool")(delayed(pid_of)(i) for i in range(10)))
    assert os.getpid() not in pids
    assert_gone(list(pids))


@pytest.mark.timeout(90)
def test_hooks_run_once_per_worker_for_every_call_of_a_block(tmp_path: Path) -> None:
    """The block's calls share its workers; a call that asks for another number of
    workers replaces them (the old ones finalize first); the end of the block releases
    the backend, and every worker runs its finalizer exactly once.

    Garbage collection is off: the release must come from the block's end itself, even
    after a call that raised.
    """
    directory = str(tmp_path)
    gc.disable()
    try:
        with joblib.parallel_config(
            backend="hookpool",
            n_jobs=2,
            initializer=init_record,
            initargs=(directory,),
            finalizer=fin_record,
            finalargs=(directory,),
        ):
            used = set(Parallel()(delayed(pid_of)(i) for i in range(50)))
            used |= set(Parallel(return_as="generator")(delayed(pid_of)(i) for i in range(50)))
            # (A worker still booting may not have run its initializer yet: wait for it.)
            wait_for(lambda: len(markers(directory, "init")) == 2, what="2 initializers")
            first = markers(directory, "init")
            assert used <= first
            assert markers(directory, "fin") == set()  # still serving the block

            wider = set(Parallel(n_jobs=3)(delayed(pid_of)(i) for i in range(50)))
            # The two first workers finalized before the three new ones started.
            assert markers(directory, "fin") == first
            assert wider <= markers(directory, "init") - first
            wait_for(lambda: len(markers(directory, "init")) == 5, what="3 more initializers")

            # A failed call: its other batches are stopped, their workers finalized and
            # replaced (more initializers), and joblib's objects are left in cycles.
            with pytest.raises(ValueError):
                Parallel()(delayed(fail_at)(i, 1) for i in range(30))
        wait_for(
            lambda: markers(directory, "fin") == markers(directory, "init"),
            what="every finalizer",
        )
        everyone = markers(directory, "init")
    finally:
        gc.enable()
    for pid in everyone:
        assert Path(directory, f"fin-{pid}").read_text() == "1", f"worker {pid}"
    assert_gone(list(everyone))


def test_a_backend_used_as_a_context_manager_waits_for_the_finalizers(tmp_path: Path) -> None:
    directory = str(tmp_path)
    with (
        HookpoolBackend(
            initializer=init_record,
            initargs=(directory,),
            finalizer=fin_record,
            finalargs=(directory,),
        ) as backend,
        joblib.parallel_config(backend=backend, n_jobs=2),
    ):
        assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
        pids = backend.worker_pids
    # No waiting here: the with exit returned once every finalizer had run.
    assert markers(directory, "fin") == markers(directory, "init") == set(pids)
    with (
        joblib.parallel_config(backend=backend, n_jobs=2),
        pytest.raises(RuntimeError, match="was shut down"),
    ):
        Parallel()(delayed(square)(i) for i in range(10))
    assert_gone(pids)


def test_max_tasks_per_child_recycles_workers_with_their_hooks(tmp_path: Path) -> None:
    """Each worker leaves after one batch, running its finalizer; its replacement runs
    the initializer."""
    directory = str(tmp_path)
    with (
        HookpoolBackend(
            initializer=init_record,
            initargs=(directory,),
            finalizer=fin_record,
            finalargs=(directory,),
            max_tasks_per_child=1,
        ) as backend,
        joblib.parallel_config(backend=backend, n_jobs=2),
    ):
        used = Parallel(batch_size=1)(delayed(pid_of)(i) for i in range(6))
    assert len(set(used)) == 6
    assert set(used) <= markers(directory, "init")
    assert markers(directory, "fin") == markers(directory, "init")
    for pid in markers(directory, "fin"):
        assert Path(directory, f"fin-{pid}").read_text() == "1", f"worker {pid}"


AT_EXIT = """
import sys

import joblib
from joblib import Parallel, delayed

import hookpool.joblib
from tasks import fin_record, init_record
from tasks_joblib import pid_of

if __name__ == "__main__":
    directory = sys.argv[1]
    config = joblib.parallel_config(
        backend="hookpool",
        n_jobs=2,
        initializer=init_record,
        initargs=(directory,),
        finalizer=fin_record,
        finalargs=(directory,),
    )
    config.__enter__()  # never left: the backend lives until the interpreter exits
    print(sorted(set(Parallel()(delayed(pid_of)(i) for i in range(20)))))
"""


def test_the_finalizers_run_at_interpreter_exit(tmp_path: Path) -> None:
    """A backend still alive as the program ends: the interpreter waits for every
    worker's finalizer before it exits."""
    directory = tmp_path / "markers"
    directory.mkdir()
    result = run_script(AT_EXIT, tmp_path, args=(str(directory),))
    assert result.returncode == 0, result.stderr
    started = markers(str(directory), "init")
    assert len(started) == 2
    assert set(json.loads(result.stdout)) <= started
    # No waiting: the script had exited.
    assert markers(str(directory), "fin") == started


def test_a_failing_initializer_fails_the_call(tmp_path: Path) -> None:
    directory = str(tmp_path)
    with (
        HookpoolBackend(initializer=init_fail, initargs=(directory,)) as backend,
        joblib.parallel_config(backend=backend, n_jobs=2),
        pytest.raises(hookpool.InitializerError, match="init-boom from the worker"),
    ):
        Parallel()(delayed(square)(i) for i in range(10))


def test_bad_parameters_are_refused_in_the_parent() -> None:
    with pytest.raises(TypeError, match="initializer must be a callable"):
        joblib.parallel_config(backend="hookpool", initializer=42)
    with pytest.raises(AssertionError, match="does not accept setting the inner_max_num"):
        joblib.parallel_config(backend="hookpool", inner_max_num_threads=2)
    with pytest.raises(ValueError, match="max_tasks_per_child must be a positive int"):
        HookpoolBackend(max_tasks_per_child=0)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(HookpoolBackend())
    with pytest.raises(RuntimeError, match="call configure"):
        HookpoolBackend().submit(int)


# -- packaging ---------------------------------------------------------------------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )


def test_import_hookpool_does_not_import_joblib() -> None:
    result = _run("import sys, hookpool; print('joblib' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_without_joblib_the_import_says_what_to_install() -> None:
    result = _run("import sys; sys.modules['joblib'] = None; import hookpool.joblib")
    assert result.returncode != 0
    assert "pip install 'hookpool[joblib]'" in result.stderr


def test_an_old_joblib_is_refused_with_the_version_needed() -> None:
    result = _run("import joblib; joblib.__version__ = '1.3.2'; import hookpool.joblib")
    assert result.returncode != 0
    assert "needs joblib 1.4 or later, and joblib 1.3.2 is installed" in result.stderr


def test_importing_hookpool_joblib_registers_the_backend() -> None:
    result = _run(
        "import joblib, joblib.parallel, hookpool.joblib\n"
        "print(joblib.parallel.BACKENDS['hookpool'].__qualname__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "HookpoolBackend"
