"""Stress harness: hammer one Pool and one ProcessPoolExecutor; exit non-zero on any
violation. Not collected by pytest (test_races.py runs it briefly).

    python tests/stress.py --seconds 60 --seed N

Several threads (the main thread among them) submit short tasks through apply_async,
submit, map and imap; a thread SIGKILLs random workers; some tasks have a task timeout
and overrun it; some are cancelled; SIGUSR1 arrives at the main thread every few ms and
its handler calls back into the pools (apply_async, sometimes apply, near the end
terminate). Then close + join, each wait bounded.

Checks: nothing hangs (a hang prints every thread's stack and exits 3); every task
returned its own value or raised a documented error (WorkerLostError, TaskTimeoutError,
CancelledError, PoolTerminatedError, or an error saying a signal handler may not do
that); no result is lost (a bounded get that times out) or wrong; no task id ran twice
(hookpool never re-runs a task whose worker died); after join, every worker that ran
its initializer ran its finalizer, except the ones this harness SIGKILLed.

Uses hookpool's public API only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import faulthandler
import itertools
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])

from tasks_hooks import markers  # noqa: E402
from tasks_races import fin_marker, init_marker, record, recorded  # noqa: E402

import hookpool  # noqa: E402

GET_SECONDS = 10.0  # a result not there by then is lost
DRAIN_SECONDS = 15.0  # close + join, and the last results, after the run


@dataclass
class Submitted:
    """One call: the ids of its tasks, in order, and what came back."""

    kind: str
    facade: str
    ids: list[int]
    handle: Any
    timed: bool = False  # has a task timeout it overruns on purpose
    cancelled: bool | None = None
    outcome: str = ""
    errors: list[str] = field(default_factory=list)


class Harness:
    def __init__(self, seconds: float, seed: int) -> None:
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.root = Path(tempfile.mkdtemp(prefix="hookpool-stress-"))
        self.dirs = {"Pool": self.root / "pool", "Executor": self.root / "executor"}
        for d in self.dirs.values():
            d.mkdir()
        self.ran = str(self.root / "ran")
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.calls: list[Submitted] = []
        self.killed: dict[str, set[int]] = {"Pool": set(), "Executor": set()}
        self.stopping = threading.Event()
        self.main_done = threading.Event()  # the main thread's submitting is over
        self.terminated: set[str] = set()
        self.handler_counts = {"apply_async": 0, "apply": 0, "refused": 0, "terminate": 0}
        self.violations: list[str] = []
        self.started = time.monotonic()
        self.pool = hookpool.Pool(
            3,
            initializer=init_marker,
            initargs=(str(self.dirs["Pool"]),),
            finalizer=fin_marker,
            finalargs=(str(self.dirs["Pool"]),),
            inline=False,
        )
        self.executor = hookpool.ProcessPoolExecutor(
            2,
            initializer=init_marker,
            initargs=(str(self.dirs["Executor"]),),
            finalizer=fin_marker,
            finalargs=(str(self.dirs["Executor"]),),
            inline=False,
        )

    # -- submitting ------------------------------------------------------------------

    def new_ids(self, n: int) -> list[int]:
        with self.lock:
            return [next(self.ids) for _ in range(n)]

    def add(self, call: Submitted) -> None:
        with self.lock:
            self.calls.append(call)

    def one_call(self, rng: random.Random) -> None:
        """Submit one random call, maybe wait for it, maybe cancel it."""
        facade = "Pool" if rng.random() < 0.6 else "Executor"
        if facade in self.terminated:
            return
        kind = rng.choice(["apply_async", "apply_async", "submit", "map", "imap", "timed"])
        if facade == "Executor" and kind in ("apply_async", "timed"):
            kind = "submit"
        seconds = rng.choice([0, 0.0005, 0.001, 0.003, 0.005])
        try:
            if kind == "map" or kind == "imap":
                ids = self.new_ids(rng.randint(2, 12))
                paths = [self.ran] * len(ids)
                durations = [seconds] * len(ids)
                if facade == "Pool":
                    chunks = rng.randint(1, 3)
                    if kind == "map":
                        handle: Any = self.pool.starmap_async(
                            record, zip(paths, ids, durations, strict=False), chunks
                        )
                    else:
                        handle = self.pool.imap(
                            _record_args, zip(paths, ids, durations, strict=False), chunks
                        )
                else:
                    handle = self.executor.map(record, paths, ids, durations)
                call = Submitted(kind, facade, ids, handle)
            elif kind == "timed":
                (task_id,) = self.new_ids(1)
                handle = self.pool.apply_async(
                    record, (self.ran, task_id, 1.0), task_timeout=rng.choice([0.05, 0.1])
                )
                call = Submitted(kind, facade, [task_id], handle, timed=True)
            else:
                (task_id,) = self.new_ids(1)
                if facade == "Pool":
                    handle = self.pool.apply_async(record, (self.ran, task_id, seconds))
                else:
                    handle = self.executor.submit(record, self.ran, task_id, seconds)
                call = Submitted(kind, facade, [task_id], handle)
        except (ValueError, RuntimeError):  # stopped (terminate near the end)
            return
        except hookpool.PoolTerminatedError:
            return
        self.add(call)
        if kind in ("apply_async", "submit") and rng.random() < 0.08:
            time.sleep(rng.uniform(0, 0.004))
            target = self.pool if facade == "Pool" else self.executor
            call.cancelled = target.cancel(call.handle)
        if rng.random() < 0.3:  # wait for it here (the rest are collected at the end)
            self.settle(call, GET_SECONDS)

    def submitter(self, seed: float, deadline: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline and not self.stopping.is_set():
            self.one_call(rng)

    # -- chaos -----------------------------------------------------------------------

    def killer(self, deadline: float) -> None:
        rng = random.Random(self.rng.random())
        while not self.stopping.wait(rng.uniform(0.2, 0.6)) and time.monotonic() < deadline:
            facade = rng.choice(["Pool", "Executor"])
            if facade in self.terminated:
                continue
            target = self.pool if facade == "Pool" else self.executor
            pids = target.worker_pids
            if not pids:
                continue
            pid = rng.choice(pids)
            with self.lock:
                self.killed[facade].add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def on_usr1(self, signum: int, frame: Any) -> None:
        rng = self.rng
        late = time.monotonic() - self.started > 0.85 * self.seconds
        choice = rng.random()
        try:
            if late and choice < 0.02 and "Pool" not in self.terminated:
                self.terminated.add("Pool")
                self.handler_counts["terminate"] += 1
                self.pool.terminate()
            elif choice < 0.05 and "Pool" not in self.terminated:
                self.handler_counts["apply"] += 1
                (task_id,) = self.new_ids(1)
                call = Submitted("apply (handler)", "Pool", [task_id], None)
                try:
                    value = self.pool.apply(record, (self.ran, task_id, 0))
                    call.outcome = "value" if value == task_id * 7 else f"wrong value {value!r}"
                except BaseException as error:
                    call.outcome = self.judge(call, error)
                self.add(call)
            elif "Pool" not in self.terminated:
                self.handler_counts["apply_async"] += 1
                (task_id,) = self.new_ids(1)
                handle = self.pool.apply_async(record, (self.ran, task_id, 0))
                self.add(Submitted("apply_async (handler)", "Pool", [task_id], handle))
        except (ValueError, RuntimeError, hookpool.PoolTerminatedError) as error:
            if "signal handler" in str(error):
                self.handler_counts["refused"] += 1

    def pelter(self, deadline: float) -> None:
        rng = random.Random(self.rng.random())
        while not self.stopping.wait(rng.uniform(0.005, 0.03)) and time.monotonic() < deadline:
            os.kill(os.getpid(), signal.SIGUSR1)

    # -- checking --------------------------------------------------------------------

    def judge(self, call: Submitted, error: BaseException) -> str:
        """The outcome of a call that raised ``error``: a documented error, or a violation."""
        if isinstance(error, hookpool.TaskTimeoutError):
            if not call.timed:
                call.errors.append(f"TaskTimeoutError without a task timeout: {error}")
            return "TaskTimeoutError"
        if isinstance(error, (multiprocessing.TimeoutError, concurrent.futures.TimeoutError)):
            call.errors.append(f"result lost: not there after {GET_SECONDS} s")
            return "lost"
        if isinstance(error, concurrent.futures.CancelledError):
            return "CancelledError"
        if isinstance(error, hookpool.WorkerLostError):
            return "WorkerLostError"
        if isinstance(error, hookpool.PoolTerminatedError):
            return "PoolTerminatedError"
        if "signal handler" in str(error):
            return "refused (signal handler)"
        call.errors.append(f"undocumented error: {error!r}")
        return "error"

    def settle(self, call: Submitted, timeout: float) -> None:
        if call.outcome or call.handle is None:
            return
        try:
            if call.kind == "imap" or (call.kind == "map" and call.facade == "Executor"):
                values = _take_all(call.handle, timeout, len(call.ids))
            elif call.facade == "Pool":
                values = call.handle.get(timeout)
            else:
                values = call.handle.result(timeout)
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                raise
            call.outcome = self.judge(call, error)
            return
        expected = [i * 7 for i in call.ids]
        if not isinstance(values, list):
            values = [values]
        if values != expected:
            call.errors.append(f"wrong values: {values!r}, expected {expected!r}")
            call.outcome = "wrong"
        else:
            call.outcome = "value"
            if call.timed:
                call.errors.append("a task that overran its timeout returned a value")
            if call.cancelled:
                call.errors.append("cancel() returned True, yet the result was delivered")

    # -- the run ---------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGUSR1, self.on_usr1)
        deadline = self.started + self.seconds
        threads = [
            threading.Thread(target=self.submitter, args=(self.rng.random(), deadline))
            for _ in range(3)
        ]
        threads.append(threading.Thread(target=self.killer, args=(deadline,)))
        threads.append(threading.Thread(target=self.pelter, args=(deadline,)))
        for thread in threads:
            thread.daemon = True
            thread.start()
        self.submitter(self.rng.random(), deadline)  # the main thread, where handlers run
        self.main_done.set()
        self.stopping.set()
        for thread in threads:
            thread.join(DRAIN_SECONDS)
            if thread.is_alive():
                self.hang(f"thread {thread.name} did not finish")
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        for call in list(self.calls):
            self.settle(call, GET_SECONDS)
        self.pool.close()
        self.executor.shutdown(wait=False)
        joiner = threading.Thread(target=self.join_both, daemon=True)
        joiner.start()
        joiner.join(DRAIN_SECONDS)
        if joiner.is_alive():
            self.hang("close + join did not finish")
        return self.report()

    def join_both(self) -> None:
        self.pool.join()
        self.executor.shutdown(wait=True)

    def hang(self, what: str) -> None:
        print(f"VIOLATION hang: {what}; every thread's stack:", flush=True)
        faulthandler.dump_traceback(sys.stdout, all_threads=True)
        sys.stdout.flush()
        os._exit(3)

    def report(self) -> int:
        outcomes: dict[str, int] = {}
        for call in self.calls:
            outcomes[call.outcome] = outcomes.get(call.outcome, 0) + 1
            for error in call.errors:
                self.violations.append(f"{call.kind} on {call.facade}, ids {call.ids}: {error}")
        counts = recorded(self.ran)
        twice = sorted(i for i, n in counts.items() if n > 1)
        if twice:
            self.violations.append(f"task ids that ran more than once: {twice}")
        for facade, directory in self.dirs.items():
            inits, fins = markers(str(directory), "init"), markers(str(directory), "fin")
            missing = inits - fins - self.killed[facade]
            if missing:
                self.violations.append(
                    f"{facade}: workers that ran the initializer but not the finalizer "
                    f"(not SIGKILLed here): {sorted(missing)}"
                )
            if fins - inits:
                self.violations.append(f"{facade}: finalizers without initializer: {fins - inits}")
            print(
                f"{facade}: {len(inits)} workers initialized, {len(fins)} finalized, "
                f"{len(self.killed[facade])} SIGKILLed"
            )
        tasks = sum(len(call.ids) for call in self.calls)
        print(f"{len(self.calls)} calls, {tasks} tasks, {len(counts)} ran; outcomes: {outcomes}")
        print(f"signal handler: {self.handler_counts}")
        for violation in self.violations[:50]:
            print("VIOLATION", violation)
        if len(self.violations) > 50:
            print(f"... and {len(self.violations) - 50} more")
        print("OK" if not self.violations else f"{len(self.violations)} VIOLATIONS")
        return 1 if self.violations else 0


def _record_args(args: tuple[str, int, float]) -> int:
    return record(*args)


def _take_all(iterator: Any, timeout: float, count: int) -> list[Any]:
    """The items of an imap / executor map, each within ``timeout`` (bounded)."""
    values: list[Any] = []
    if hasattr(iterator, "next"):  # IMapIterator
        for _ in range(count):
            values.append(iterator.next(timeout))
        return values
    result: list[Any] = []
    done = threading.Event()
    failure: list[BaseException] = []

    def drain() -> None:
        try:
            result.extend(iterator)
        except BaseException as error:
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=drain, daemon=True).start()
    if not done.wait(timeout):
        raise multiprocessing.TimeoutError
    if failure:
        raise failure[0]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    harness = Harness(args.seconds, args.seed)
    print(f"seed {args.seed}, {args.seconds} s, markers in {harness.root}", flush=True)

    # The last resort: the main thread stuck (in a signal handler, say), or whatever
    # hangs past every bounded wait.
    def watch() -> None:
        if not harness.main_done.wait(args.seconds + GET_SECONDS + 5):
            harness.hang("the main thread is stuck")
        time.sleep(3 * DRAIN_SECONDS + GET_SECONDS)
        harness.hang("the run overran")

    threading.Thread(target=watch, daemon=True).start()
    return harness.run()


if __name__ == "__main__":
    sys.exit(main())
