"""The public surface is ``hookpool/__init__.py``; everything else is private, and a worker
process imports only what it needs."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

from conftest import run_script
from tasks_exec import loaded

import hookpool

PUBLIC = {
    "AsyncResult",
    "HookpoolError",
    "IMapIterator",
    "InitializerError",
    "MapResult",
    "Pool",
    "PoolBrokenError",
    "PoolTerminatedError",
    "ProcessPoolExecutor",
    "ReentrantCallError",
    "RemoteError",
    "RemoteTraceback",
    "ResultEncodingError",
    "TaskDecodingError",
    "TaskTimeoutError",
    "WorkerInfo",
    "WorkerLostError",
    "current_worker",
    "get_context",
}

#: What a worker must not import: the manager, the facades, and the heavy dependencies
#: that only the parent (or an exception, or a lambda) needs.
NOT_IN_A_WORKER = [
    "hookpool._manager",
    "hookpool._pool",
    "hookpool._executor",
    "hookpool._calls",
    "hookpool._results",
    "concurrent.futures.process",
    "cloudpickle",
    "tblib",
]

#: What importing a facade must not import: the engine, made when a pool is. Under spawn
#: every worker re-imports the user's main script, and with it its ``from hookpool import
#: Pool``.
ENGINE = ["hookpool._manager", "hookpool._calls", "hookpool._results", "hookpool._inline"]
#: ...nor what a worker does without: a plain task does not log, and the worker's pipe is
#: not a Connection.
WORKER_SKIPS = ["logging", "multiprocessing.connection"]


def test_all_lists_exactly_the_public_names() -> None:
    assert len(hookpool.__all__) == len(set(hookpool.__all__)), "duplicates in __all__"
    assert set(hookpool.__all__) == PUBLIC
    for name in hookpool.__all__:
        assert getattr(hookpool, name) is not None, name
    assert set(hookpool.__all__) <= set(dir(hookpool))


def test_star_import_gives_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from hookpool import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == PUBLIC


def test_no_other_public_name_is_defined_by_hookpool() -> None:
    """After every lazy name is loaded, a name of ``hookpool`` that is not private and not
    in ``__all__`` may only be a module or a helper hookpool itself imported."""
    for name in hookpool.__all__:
        getattr(hookpool, name)
    for name, value in vars(hookpool).items():
        if name.startswith("_") or name in hookpool.__all__:
            continue
        if isinstance(value, types.ModuleType):
            if value.__name__ == "hookpool.joblib":  # set once imported: see below
                continue
            assert not value.__name__.startswith("hookpool"), f"hookpool.{name} is public"
            continue
        module = getattr(value, "__module__", None)
        assert not (isinstance(module, str) and module.startswith("hookpool")), (
            f"hookpool.{name} is defined by hookpool but not in __all__"
        )


def test_unknown_attribute_raises_attribute_error() -> None:
    try:
        hookpool.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("hookpool.NoSuchName did not raise AttributeError")


#: Public names that are the standard library's own objects, on purpose.
STANDARD = {"RemoteTraceback"}


def test_public_objects_come_from_private_modules() -> None:
    for name in sorted(set(hookpool.__all__) - STANDARD):
        value = getattr(hookpool, name)
        module = value.__module__
        assert module == "hookpool" or module.startswith("hookpool._"), (name, module)


def test_every_module_but_init_is_private() -> None:
    package_dir = Path(hookpool.__file__).parent
    names = [info.name for info in pkgutil.iter_modules(hookpool.__path__)]
    assert names, "no submodules found"
    # The one public submodule: the joblib integration, imported on purpose by its users
    # (``import hookpool.joblib`` registers the backend), never by ``import hookpool``.
    assert [n for n in names if not n.startswith("_")] == ["joblib"]
    files = [p.stem for p in package_dir.glob("*.py") if p.name != "__init__.py"]
    assert sorted(files) == sorted(names)
    assert [p.name for p in package_dir.iterdir() if p.is_dir() and p.name != "__pycache__"] == []


def _imported_by(code: str, modules: list[str] = NOT_IN_A_WORKER) -> list[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import json, sys\n{code}\n"
            f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    found: list[str] = json.loads(out.stdout)
    return found


def test_importing_the_worker_module_imports_little() -> None:
    assert _imported_by("import hookpool._worker") == []


def test_importing_hookpool_imports_little() -> None:
    """The lazy public names (PEP 562) keep a plain ``import hookpool`` light too."""
    assert _imported_by("import hookpool") == []


def test_a_worker_imports_neither_typing_nor_connection() -> None:
    """What a worker imports to start, with a main script that imports the Pool, imports
    neither ``typing`` nor ``multiprocessing.connection`` (together some 7 ms of every
    worker's start here; see ``_protocol.PipeEnd``)."""
    found = _imported_by(
        "from hookpool import Pool\nimport hookpool._worker",
        ["typing", "multiprocessing.connection", "tempfile"],
    )
    assert found == []


def test_importing_a_facade_imports_no_engine() -> None:
    pool = _imported_by("from hookpool import Pool", [*ENGINE, "concurrent.futures", "logging"])
    assert pool == []
    # The executor subclasses concurrent.futures.Executor: that much it must import.
    assert _imported_by("from hookpool import ProcessPoolExecutor", ENGINE) == []


def test_a_worker_of_a_script_that_imports_hookpool_imports_no_engine(tmp_path: Path) -> None:
    """A real script with ``from hookpool import Pool`` at the top: its workers re-import
    it, and must still not import the engine (nor the parent-only dependencies)."""
    script = (
        "import json\n"
        "from hookpool import Pool\n"
        "from tasks_exec import loaded\n"
        'if __name__ == "__main__":\n'
        "    with Pool(1) as pool:\n"
        f"        print(json.dumps(pool.apply(loaded, ({[*ENGINE, *WORKER_SKIPS]!r},))))\n"
    )
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_check_can_see_an_import() -> None:
    """The probe itself works: the manager does pull these modules in."""
    found = _imported_by("import hookpool._manager")
    assert "hookpool._manager" in found


def test_a_live_worker_imports_little(make_pool: Callable[..., hookpool.Pool]) -> None:
    """A spawned worker that ran a plain task has not imported the parent-only modules."""
    pool = make_pool(1)
    assert pool.apply(loaded, (NOT_IN_A_WORKER,)) == []
    # ... and the probe is real: the parent has them.
    importlib.import_module("hookpool._manager")
    assert "hookpool._manager" in loaded(NOT_IN_A_WORKER)


#: What the parent does without to start a pool and get its first results: its first
#: workers boot meanwhile, on the same CPUs (see ``_protocol.PipeEnd``, ``_records`` and
#: ``_std_errors``)...
PARENT_SKIPS = ["typing", "multiprocessing.connection", "hookpool._std_errors"]
#: ...or leaves to a pool's own threads: its timer, once the pool is a moment old
#: (``_manager._import_errors``), its manager where it raises one of the errors.
MANAGER_IMPORTS = [
    "multiprocessing.connection",
    "multiprocessing.pool",
    "concurrent.futures.process",
    "hookpool._std_errors",
]
#: The names of a pool's own threads end so.
POOL_THREADS = ("-manager", "-errors")

WATCH_IMPORTS = """
import json, sys, threading
first_imported_by = {}

class Watch:
    def find_spec(self, name, path=None, target=None):
        first_imported_by.setdefault(name, threading.current_thread().name)

sys.meta_path.insert(0, Watch())
"""


def test_a_parent_starts_a_pool_without_the_heavy_imports(tmp_path: Path) -> None:
    """A script that imports only hookpool: making pools and getting results (apply_async,
    map, imap, submit) imports none of ``PARENT_SKIPS`` in the caller's thread, and the
    manager thread or its timer imports what hookpool's errors need (never the caller)."""
    script = WATCH_IMPORTS + (
        "from hookpool import Pool, ProcessPoolExecutor\n"
        'if __name__ == "__main__":\n'
        "    with Pool(2) as pool:\n"
        "        assert pool.apply_async(abs, (-1,)).get(30) == 1\n"
        "        assert pool.map(abs, range(-5, 5)) == list(map(abs, range(-5, 5)))\n"
        "        assert list(pool.imap(abs, range(-5, 5))) == list(map(abs, range(-5, 5)))\n"
        "    with ProcessPoolExecutor(1) as executor:\n"
        "        assert executor.submit(abs, -2).result(30) == 2\n"
        f"    watched = {[*PARENT_SKIPS, *MANAGER_IMPORTS]!r}\n"
        "    print(json.dumps({m: first_imported_by.get(m) for m in watched}))\n"
    )
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    imported_by: dict[str, str | None] = json.loads(result.stdout)
    assert imported_by["typing"] is None
    for module in MANAGER_IMPORTS:
        thread = imported_by[module]
        assert thread is None or thread.endswith(POOL_THREADS), (module, thread)


def test_an_open_pool_imports_its_errors_on_a_thread_of_its_own(tmp_path: Path) -> None:
    """The errors with standard-library bases cannot be imported as the interpreter exits
    (``_std_errors``): an open pool imports them once it is a moment old, on its timer
    thread (not its manager's, which would take parked workers back from their callers).
    The watch is bounded: five seconds."""
    script = WATCH_IMPORTS + (
        "import time\n"
        "from hookpool import Pool\n"
        'if __name__ == "__main__":\n'
        "    with Pool(1) as pool:\n"
        "        assert pool.apply(abs, (-1,)) == 1\n"
        "        deadline = time.monotonic() + 5\n"
        '        while "hookpool._std_errors" not in sys.modules and time.monotonic() < deadline:\n'
        "            time.sleep(0.01)\n"
        '        print(first_imported_by.get("hookpool._std_errors"))\n'
    )
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("-errors"), result.stdout


def test_a_short_script_does_not_import_the_errors_at_all(tmp_path: Path) -> None:
    """A pool closed before it is ``IMPORT_ERRORS_AFTER_SECONDS`` old never imports them
    (about 7 ms of CPU, on the cores its workers exit on). The delay is raised to 60 s
    here, so that a slow machine cannot reach it."""
    script = (
        "import sys\n"
        "import hookpool._manager\n"
        "from hookpool import Pool\n"
        "hookpool._manager.IMPORT_ERRORS_AFTER_SECONDS = 60.0\n"
        'if __name__ == "__main__":\n'
        "    with Pool(2) as pool:\n"
        "        assert pool.map(abs, range(-5, 5)) == list(map(abs, range(-5, 5)))\n"
        "        pool.close()\n"
        "        pool.join()\n"
        f"    print(sorted(set({MANAGER_IMPORTS!r}) & set(sys.modules)))\n"
    )
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
