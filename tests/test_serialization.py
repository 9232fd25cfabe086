"""What can be sent to a worker, and what is refused at the call site."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks
import tasks_api
from conftest import HERE, run_script, shared_pool

import hookpool
import hookpool._serialize

pytestmark = pytest.mark.usefixtures("collect_stopped_pools")


@pytest.fixture(scope="module")
def pool() -> Iterator[hookpool.Pool]:
    yield from shared_pool(hookpool.Pool(2))


def _numbers() -> Iterator[int]:
    yield 1


# -- refused in the caller's thread, delivered through the result ---------------------------

UNPICKLABLE: dict[str, Callable[[], Any]] = {
    "threading.Lock": threading.Lock,
    "generator": _numbers,
}

#: Each call site, and how its result is waited for: the asynchronous ones return, and
#: the pickling error comes from get()/result(), as with the standard library.
CALL_SITES: dict[str, Callable[[hookpool.Pool, Any], Any]] = {
    "apply_async": lambda pool, value: pool.apply_async(tasks.identity, (value,)).get(10),
    "apply_async-kwds": lambda pool, value: pool.apply_async(tasks.identity, (), {"x": value}).get(
        10
    ),
    "apply": lambda pool, value: pool.apply(tasks.identity, (value,)),
    "submit": lambda pool, value: pool.submit(tasks.identity, value).result(10),
    "map": lambda pool, value: pool.map(tasks.identity, [1, value, 3]),
    "map_async": lambda pool, value: pool.map_async(tasks.identity, [1, 2, value]).get(10),
    "starmap_async": lambda pool, value: pool.starmap_async(tasks.add, [(1, value)]).get(10),
}


@pytest.mark.parametrize("site", list(CALL_SITES))
@pytest.mark.parametrize("kind", list(UNPICKLABLE))
def test_unpicklable_argument_fails_the_result(pool: hookpool.Pool, kind: str, site: str) -> None:
    value = UNPICKLABLE[kind]()
    with pytest.raises(TypeError, match="cannot pickle"):
        CALL_SITES[site](pool, value)
    assert pool.apply(tasks.square, (3,)) == 9
    assert pool.map(tasks.square, range(5), 1) == [0, 1, 4, 9, 16]


def test_unpicklable_argument_in_imap_fails_its_item(pool: hookpool.Pool) -> None:
    """imap reads its input lazily: the error comes at that item's position."""
    iterator = pool.imap(tasks.identity, [1, threading.Lock(), 3])
    assert next(iterator) == 1
    with pytest.raises(TypeError, match="cannot pickle"):
        next(iterator)
    assert list(iterator) == [3]


def _spawn_ctx() -> Any:
    return hookpool.get_context()


PRIMITIVES: dict[str, Callable[[], Any]] = {
    "Lock": multiprocessing.Lock,
    "spawn-Lock": lambda: _spawn_ctx().Lock(),
    "RLock": lambda: _spawn_ctx().RLock(),
    "Semaphore": lambda: _spawn_ctx().Semaphore(2),
    "Event": lambda: _spawn_ctx().Event(),
    "Queue": multiprocessing.Queue,
    "spawn-Queue": lambda: _spawn_ctx().Queue(),
    "SimpleQueue": lambda: _spawn_ctx().SimpleQueue(),
    "Value": lambda: _spawn_ctx().Value("i", 1),
}


@pytest.mark.parametrize("site", ["apply_async", "submit", "map"])
@pytest.mark.parametrize("kind", list(PRIMITIVES))
def test_multiprocessing_primitive_as_argument_says_use_initargs(
    pool: hookpool.Pool, kind: str, site: str
) -> None:
    primitive = PRIMITIVES[kind]()
    try:
        with pytest.raises(RuntimeError) as info:
            CALL_SITES[site](pool, primitive)
        assert "initargs" in str(info.value)
        assert "inheritance" in str(info.value)
    finally:
        if hasattr(primitive, "close") and hasattr(primitive, "join_thread"):
            primitive.close()
            primitive.join_thread()
        del primitive
    assert pool.apply(tasks.square, (4,)) == 16


def test_primitive_through_initargs_works(make_pool: Callable[..., Any]) -> None:
    """The route the error message recommends does work (a Queue from the spawn context)."""
    queue = hookpool.get_context().Queue()
    try:
        pool = make_pool(2, initializer=tasks_api.put_pid, initargs=(queue,))
        pool.map(tasks.square, range(4))
        pids = {queue.get(timeout=10) for _ in range(2)}
        assert pids == set(pool.worker_pids)
    finally:
        queue.close()
        queue.join_thread()


# -- by value: lambdas, closures, local functions, partials ------------------------------


def test_lambda(pool: hookpool.Pool) -> None:
    assert pool.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]
    assert pool.apply(lambda a, b=2: a * b, (21,)) == 42
    assert pool.submit(lambda: "called").result(timeout=10) == "called"
    assert list(pool.imap(lambda x: -x, range(3))) == [0, -1, -2]
    assert sorted(pool.imap_unordered(lambda x: x * 3, range(4))) == [0, 3, 6, 9]
    assert pool.starmap(lambda a, b: a - b, [(5, 1), (9, 4)]) == [4, 5]


def test_closure(pool: hookpool.Pool) -> None:
    def make_adder(n: int) -> Callable[[int], int]:
        def add(x: int) -> int:
            return x + n

        return add

    assert pool.map(make_adder(10), range(3)) == [10, 11, 12]
    assert pool.apply(make_adder(-1), (1,)) == 0


def test_closure_sees_the_cell_value_at_each_call(pool: hookpool.Pool) -> None:
    factor = 2

    def scale(x: int) -> int:
        return x * factor

    assert pool.apply(scale, (3,)) == 6
    factor = 5
    assert pool.apply(scale, (3,)) == 15
    assert pool.map(scale, [1, 2]) == [5, 10]


def test_local_function_and_local_class(pool: hookpool.Pool) -> None:
    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: int

    def swap(point: Point) -> Point:
        return Point(point.y, point.x)

    result = pool.apply(swap, (Point(1, 2),))
    assert (result.x, result.y) == (2, 1)
    assert type(result).__name__ == "Point"


def test_partials(pool: hookpool.Pool) -> None:
    def power(base: int, exponent: int) -> int:
        return int(base**exponent)

    assert pool.map(functools.partial(power, exponent=2), range(4)) == [0, 1, 4, 9]
    assert pool.map(functools.partial(lambda a, b: a - b, 10), [1, 2]) == [9, 8]
    assert pool.map(functools.partial(tasks.add, 100), [1, 2]) == [101, 102]
    assert pool.submit(functools.partial(power, 2), 10).result(timeout=10) == 1024


def test_builtin_and_bound_method(pool: hookpool.Pool) -> None:
    assert pool.submit(pow, 2, 10).result(timeout=10) == 1024
    assert pool.map("abc".count, ["a", "b", "z"]) == [1, 1, 0]


# -- real scripts: __main__ by reference when workers can import it ----------------------

SCRIPT = textwrap.dedent(
    """
    import hookpool

    CONFIG = "unset"


    def init(value):
        global CONFIG
        CONFIG = value


    def task(x):
        return f"{CONFIG}:{x}"


    def make_multiplier(n):
        def multiply(x):
            return x * n
        return multiply


    if __name__ == "__main__":
        with hookpool.Pool(2, initializer=init, initargs=("configured",)) as pool:
            print("task", pool.map(task, [1, 2, 3]))
            print("lambda", pool.map(lambda x: x + 100, [1, 2]))
            print("closure", pool.map(make_multiplier(7), [1, 2]))
            pool.close()
            pool.join()
        print("done")
    """
)


def test_script_main_functions_go_by_reference(tmp_path: Path) -> None:
    """A task defined in the script sees the module global its initializer (also in
    the script) set in the worker: both are the worker's own __main__ functions."""
    result = run_script(SCRIPT, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "task ['configured:1', 'configured:2', 'configured:3']",
        "lambda [101, 102]",
        "closure [7, 14]",
        "done",
    ], result.stderr


GUARDED_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    import hookpool

    SEEN = "top-level global"


    def helper(x):
        return x + 1


    def seen(_):
        return SEEN  # by name: the worker's own module global


    def call(fn, arg):
        return fn(arg)


    if __name__ == "__main__":
        # Defined only when run as a script: a spawned worker's re-import skips this
        # block, so these travel by value.
        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y

        def norm1(point):
            return abs(point.x) + abs(point.y)

        def twice_plus_one(x):
            return helper(x * 2)

        def moved(point):
            return Point(point.x + 1, point.y)

        def init():
            global SEEN
            SEEN = "set by init"  # in its own globals: it travels by value, as a lambda

        def fin():
            with open(os.path.join(sys.argv[1], f"fin-{os.getpid()}"), "w") as f:
                f.write("1")

        with hookpool.Pool(2, initializer=init, finalizer=fin) as pool:
            print(pool.map(twice_plus_one, [1, 2, 3]))
            print(pool.apply(norm1, (Point(3, -4),)))
            print(pool.submit(moved, Point(1, 2)).result(timeout=30).x)
            print(pool.map(seen, [0]))
            print(pool.apply(call, (twice_plus_one, 5)))  # in the arguments too
            print(pool.apply(call, (norm1, Point(1, 1))))
            pool.close()
            pool.join()
        print("fins", len(os.listdir(sys.argv[1])))
    """
)


def test_functions_and_classes_defined_under_the_main_guard(tmp_path: Path) -> None:
    """What a script defines under ``if __name__ == "__main__":`` is not in the module
    a spawned worker imports (with the standard library's spawn Pool, an AttributeError
    in the worker): it travels by value, as task, hook or argument. A top-level function
    still goes by name, and sees the worker's own module globals."""
    out = tmp_path / "out"
    out.mkdir()
    result = run_script(GUARDED_SCRIPT, tmp_path, timeout=60, args=(str(out),))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[3, 5, 7]",
        "7",
        "2",
        "['top-level global']",
        "11",
        "2",
        "fins 2",
    ], result.stderr


@pytest.mark.parametrize(
    ("source", "inside", "outside"),
    [
        (
            'def a(): pass\nif __name__ == "__main__":\n    def b(): pass\n'
            "    class C:\n        def m(self): pass\n    async def d(): pass\n",
            {"b", "C", "d"},
            {"a"},
        ),
        ("if '__main__' == __name__:\n    def b(): pass\nelse:\n    def e(): pass\n", {"b"}, {"e"}),
        ('if __name__ == "__main__":\n    def b(): pass\ndef b(): pass\n', set(), {"b"}),
        ("try:\n    def t(): pass\nexcept ImportError:\n    pass\n", set(), {"t"}),
        (
            "try:\n    from x import work\nexcept ImportError:\n    def work(): pass\n"
            "if __name__ == '__main__':\n    class Job:\n        def work(self): pass\n",
            {"Job"},
            {"work"},  # a module-level function, whatever the guard's methods are named
        ),
        (
            "class Top:\n    def helper(self): pass\n"
            "if (__name__ == '__main__'):\n    def helper(): pass\n",
            {"helper"},  # a method of a top-level class is not module-level
            {"Top"},
        ),
        ('if __name__ == "__main__":\n\n    # a comment\n\n    def b(): pass\n', {"b"}, set()),
    ],
    ids=[
        "guard",
        "reversed-and-else",
        "also-top-level",
        "other-block",
        "method-named-as-a-function",
        "parenthesized-guard",
        "blank-lines",
    ],
)
def test_which_names_the_main_guard_holds(
    tmp_path: Path, source: str, inside: set[str], outside: set[str]
) -> None:
    """(A method's name may count as guarded too: no function of ``__main__`` is named
    after it, unless one defined at the top level, which goes by name.)"""
    script = tmp_path / "script.py"
    script.write_text(source)
    names = hookpool._serialize._guarded_names(str(script))
    assert inside <= names
    assert not outside & names


SOURCE_WITHOUT_FILE = textwrap.dedent(
    """
    import hookpool

    OFFSET = 1000

    def shift(x):
        return x + OFFSET

    class Box:
        def __init__(self, v):
            self.v = v

    def unbox(box):
        return box.v * 2

    with hookpool.Pool(2) as pool:
        print(pool.map(shift, [1, 2, 3]))
        print(pool.apply(unbox, (Box(21),)))
        print(pool.submit(lambda: OFFSET + 1).result(timeout=30))
    """
)


def test_python_c_main_functions_go_by_value(tmp_path: Path) -> None:
    """With ``python -c`` the workers cannot import __main__: its functions (and classes)
    travel by value, with the globals they use."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", SOURCE_WITHOUT_FILE],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[1001, 1002, 1003]", "42", "1001"], result.stderr


FINALIZER_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    import hookpool

    OUT = sys.argv[1]


    def record(kind):
        with open(os.path.join(OUT, f"{kind}-{os.getpid()}"), "w") as f:
            f.write("1")


    def main_finalizer():
        record("main-fin")


    if __name__ == "__main__":
        prefix = "lambda-fin"
        with hookpool.Pool(2, initializer=record, initargs=("main-init",),
                           finalizer=main_finalizer) as pool:
            print(pool.map(abs, [-1, -2]))
        pool = hookpool.Pool(1, initializer=lambda: record("lambda-init"),
                             finalizer=lambda: record(prefix))
        pool.apply(abs, (-3,))
        pool.close()
        pool.join()
        print("done")
    """
)


def test_main_and_lambda_finalizers_run_in_a_real_script(tmp_path: Path) -> None:
    """A finalizer defined in the script's __main__, and a lambda finalizer (a closure
    over a local), each run once in every worker whose initializer ran (the `with` exit
    may stop a worker still starting, before its initializer)."""
    out = tmp_path / "out"
    out.mkdir()
    result = run_script(FINALIZER_SCRIPT, tmp_path, timeout=60, args=(str(out),))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "done"
    names = sorted(p.name.rsplit("-", 1)[0] for p in out.iterdir())
    assert names.count("lambda-init") == names.count("lambda-fin") == 1
    assert 1 <= names.count("main-init") == names.count("main-fin") <= 2
    pids = {kind: {p.name.rsplit("-", 1)[1] for p in out.glob(f"{kind}-*")} for kind in names}
    assert pids["main-init"] == pids["main-fin"]  # the same workers
