"""Drop-in promises: the demo runs, the signatures match the standard library's, workers
never use the global start method, and a map's function is pickled once."""

from __future__ import annotations

import concurrent.futures
import inspect
import multiprocessing.pool
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_script
from tasks import square

import hookpool
import hookpool._calls
import hookpool._serialize


@pytest.mark.timeout(90)
def test_the_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hookpool"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "rows in the database after close()+join(): 1000" in result.stdout
    assert "[11, 12, 13]" in result.stdout  # the lambda task
    assert "in parse" in result.stdout  # the worker's frame in the traceback


def _parameters(fn: Callable[..., object]) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (hookpool.Pool, multiprocessing.pool.Pool),
        (hookpool.ProcessPoolExecutor, concurrent.futures.ProcessPoolExecutor),
    ],
)
def test_constructor_extends_the_standard_signature(
    ours: Callable[..., object], theirs: Callable[..., object]
) -> None:
    """Every standard parameter, in the same place with the same default; every extra
    one keyword-only, so no call written for the standard library changes meaning."""
    standard = _parameters(theirs)
    mine = _parameters(ours)
    assert mine[: len(standard)] == standard
    for name, kind, _ in mine[len(standard) :]:
        assert kind is inspect.Parameter.KEYWORD_ONLY, name


@pytest.mark.parametrize(
    "method",
    [
        "apply",
        "apply_async",
        "map",
        "map_async",
        "imap",
        "imap_unordered",
        "starmap",
        "starmap_async",
        "close",
        "terminate",
        "join",
    ],
)
def test_pool_methods_extend_the_standard_signatures(method: str) -> None:
    standard = _parameters(getattr(multiprocessing.pool.Pool, method))
    mine = _parameters(getattr(hookpool.Pool, method))
    assert mine[: len(standard)] == standard
    for name, kind, _ in mine[len(standard) :]:
        assert kind is inspect.Parameter.KEYWORD_ONLY, name


@pytest.mark.parametrize("method", ["submit", "map", "shutdown"])
def test_executor_methods_extend_the_standard_signatures(method: str) -> None:
    standard = _parameters(getattr(concurrent.futures.ProcessPoolExecutor, method))
    mine = _parameters(getattr(hookpool.ProcessPoolExecutor, method))
    assert mine[: len(standard)] == standard


def test_submit_takes_fn_positionally_only(make_pool: Callable[..., hookpool.Pool]) -> None:
    pool = make_pool(1)
    assert pool.submit(dict, fn=1).result(timeout=30) == {"fn": 1}


GLOBAL_START_METHOD_SCRIPT = """
import multiprocessing, sys
import hookpool

FLAG = "set at import"

def flag(_):
    return FLAG, sys.modules["__main__"].__spec__ is None

if __name__ == "__main__":
    multiprocessing.set_start_method("fork", force=True)
    FLAG = "set in the parent only"  # a forked child would see this
    with hookpool.Pool(1) as pool:
        print(pool.apply(flag, (0,))[0])
"""


def test_workers_ignore_the_global_start_method(tmp_path: Path) -> None:
    result = run_script(GLOBAL_START_METHOD_SCRIPT, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "set at import"  # spawned: it re-imported the script


def test_a_maps_function_is_pickled_once(
    make_pool: Callable[..., hookpool.Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = hookpool._calls.dumps_callable

    def counting(fn: object, *, remote: bool = False) -> bytes:
        calls.append(fn)
        return real(fn, remote=remote)

    monkeypatch.setattr(hookpool._calls, "dumps_callable", counting)
    pool = make_pool(1)
    offset = 3
    assert pool.map(lambda x: x + offset, range(50), chunksize=1) == [x + 3 for x in range(50)]
    assert list(pool.imap(square, range(20))) == [x * x for x in range(20)]
    assert len(calls) == 2  # one per map, not one per chunk


def test_importable_functions_are_pickled_by_reference() -> None:
    data = hookpool._serialize.dumps_callable(square)
    assert b"cloudpickle" not in data and b"square" in data
    assert len(data) < 100
