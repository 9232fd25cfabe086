"""Pickling of user data, and exceptions across the process boundary.

The only importer of cloudpickle and tblib (both imported lazily, so a worker that never
meets a lambda or an exception does not pay for them).

* Plain pickle (protocol 5, with multiprocessing's reducers for connections and shared
  memory) is the path for data and for functions importable by reference. Functions
  defined in a spawn-importable ``__main__`` stay by reference, so they share the
  worker's module globals with the initializer (loky/ray lose them, see FIELD-NOTES).
* cloudpickle takes only what plain pickle cannot do right: lambdas, closures, local
  classes, and definitions in an interactive ``__main__`` the workers cannot import, or
  under the script's ``if __name__ == "__main__":`` guard, which their import skips.
* Objects that may only reach a child by inheritance (Lock, Queue, Value...) are refused
  with a message that says to pass them through ``initargs``; when the hooks are pickled
  during spawn they pass, unless they were made for a fork context.
"""

from __future__ import annotations

import collections
import copyreg
import functools
import multiprocessing.context
import multiprocessing.reduction
import pickle
import sys
import threading
import types
from collections.abc import Callable
from io import BytesIO

from ._protocol import OUT_OF_BAND_MIN, ErrorReport
from ._records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar

    T = TypeVar("T")

__all__ = ["Pickled", "capture", "dumps", "dumps_data", "loads", "loads_data", "rebuild"]


@functools.cache
def _inheritance_only() -> tuple[type, ...]:
    """Types that may reach a child only by inheritance (imported when first needed, so
    that a worker which never meets one does not import them)."""
    import multiprocessing.queues
    import multiprocessing.sharedctypes
    import multiprocessing.synchronize

    return (
        multiprocessing.synchronize.SemLock,
        multiprocessing.synchronize.Condition,
        multiprocessing.synchronize.Event,
        multiprocessing.synchronize.Barrier,
        multiprocessing.queues.Queue,
        multiprocessing.queues.SimpleQueue,
        multiprocessing.sharedctypes.SynchronizedBase,
    )


#: multiprocessing's reducers (connections, shared-memory arenas...), looked up live:
#: some are registered only when their module is first imported (multiprocessing.heap
#: on the first Value or Array), after a reused pickler was built.
_MP_EXTRA_REDUCERS: dict[type, Any] = multiprocessing.reduction.ForkingPickler._extra_reducers  # type: ignore[attr-defined]
_MP_REDUCERS: Any = collections.ChainMap(_MP_EXTRA_REDUCERS, copyreg.dispatch_table)


def _refuse_if_inheritance_only(obj: Any) -> None:
    if type(obj).__module__.startswith("multiprocessing.") and isinstance(obj, _inheritance_only()):
        _check_inheritable(obj)


class _Pickler(multiprocessing.reduction.ForkingPickler):
    """ForkingPickler that hands what plain pickle cannot do to cloudpickle."""

    def __init__(
        self,
        file: Any,
        protocol: int,
        buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
    ) -> None:
        # Not ForkingPickler.__init__: it copies a dispatch table that is replaced here.
        pickle.Pickler.__init__(self, file, protocol, buffer_callback=buffer_callback)
        self.dispatch_table = _MP_REDUCERS

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType or isinstance(obj, type):
            if _by_value(obj):
                return _loads_by_value, (_cloudpickle_dumps(obj),)
        else:
            _refuse_if_inheritance_only(obj)
        return NotImplemented


def _cloudpickle_dumps(obj: Any) -> bytes:
    buffer = BytesIO()
    _cloud_pickler_class()(buffer, protocol=5).dump(obj)
    return buffer.getvalue()


@functools.cache
def _cloud_pickler_class() -> type:
    """cloudpickle's Pickler, with the same rules as ours for what a function captures:
    multiprocessing's reducers apply, and inheritance-only objects are refused in tasks
    (a lambda initializer that captures a Queue still passes at spawn time)."""
    base: Any = _cloudpickle().Pickler

    class CloudPickler(base):  # type: ignore[misc]
        dispatch_table: ClassVar[Any] = collections.ChainMap(
            _MP_EXTRA_REDUCERS, base.dispatch_table
        )

        def reducer_override(self, obj: Any) -> Any:
            _refuse_if_inheritance_only(obj)
            return super().reducer_override(obj)

    return CloudPickler


class _Reusable(threading.local):
    """One pickler per thread, reused: building a ForkingPickler costs a dict copy."""

    def __init__(self) -> None:
        self.buffer = BytesIO()
        self.pickler = _Pickler(self.buffer, 5)
        self.busy = False


_reusable = _Reusable()


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` for a worker, in the calling thread."""
    state = _reusable
    if state.busy:  # re-entered from a __reduce__: use a fresh pickler
        buffer = BytesIO()
        _Pickler(buffer, 5).dump(obj)
        return buffer.getvalue()
    state.busy = True
    try:
        state.pickler.dump(obj)
        return state.buffer.getvalue()
    finally:
        state.buffer.seek(0)
        state.buffer.truncate()
        state.pickler.clear_memo()
        state.busy = False


Pickled = tuple[bytes, tuple[pickle.PickleBuffer, ...]]
"""What ``dumps_data`` makes: the pickle, and the large buffers it refers to, which travel
out of band (``_protocol``) and are handed back to ``loads_data``."""


class _Buffers:
    """Collects the out-of-band buffers of one pickling (a pickler's buffer_callback)."""

    def __init__(self, *, snapshot: bool) -> None:
        self.found: list[pickle.PickleBuffer] = []
        self.snapshot = snapshot

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        """True: keep this buffer in the pickle (small, or not contiguous)."""
        try:
            view = buffer.raw()
        except BufferError:
            return True
        if view.nbytes < OUT_OF_BAND_MIN:
            return True
        if self.snapshot and not view.readonly:
            buffer = pickle.PickleBuffer(bytearray(view))
        self.found.append(buffer)
        return False

    def take(self) -> tuple[pickle.PickleBuffer, ...]:
        if not self.found:
            return ()
        found, self.found = self.found, []
        return tuple(found)


class _ReusableData(threading.local):
    """One plain C pickler per thread for task data, reused: building one costs more
    than pickling a few small arguments with it."""

    def __init__(self) -> None:
        self.stream = BytesIO()
        self.buffers = _Buffers(snapshot=True)
        self.pickler = pickle.Pickler(self.stream, 5, buffer_callback=self.buffers)
        self.pickler.dispatch_table = self.table = _plain_reducers()
        self.busy = False


def dumps_data(obj: Any, *, snapshot: bool = True, remote: bool = False) -> Pickled:
    """Pickle task arguments or a result: with the C pickler and multiprocessing's
    reducers (no Python hook per object) when it can, and with the pickler of ``dumps``
    when it refuses (a lambda, a Lock...), which then does it right or raises the clear
    error.

    Large buffers (a numpy array; a ``bytes`` or ``bytearray`` among the arguments, or
    the result) are not copied into the pickle: they are returned beside it and written
    to the worker's pipe as they are. ``snapshot``: copy the writable ones now (the
    caller's thread may change them after submitting; a worker's result is its own).

    Plain pickle is trusted only while ``__main__`` is importable in the workers, and
    only with a pickle that names nothing the script defines under its ``if __name__ ==
    "__main__":`` guard: it would pickle a function or class of an interactive
    ``__main__``, or from that guard, by a name they cannot find.
    ``remote``: the workers are on a cluster, where ``__main__`` is never the caller's.
    """
    if _is_plain(obj, _LIFT_DEPTH):  # most small tasks: numbers and strings
        return _plain_dumps(obj, 5), ()
    if remote:
        return _main_elsewhere(dumps_data, obj, snapshot=snapshot)
    lifted = _lift(obj, _LIFT_DEPTH)
    state = _reusable_data
    if not state.busy and _main_importable():  # busy: re-entered from a __reduce__
        state.busy = True
        state.buffers.snapshot = snapshot
        pickler = state.pickler
        table = _plain_reducers()  # a Connection still goes by DupFd
        if state.table is not table:  # multiprocessing registered a reducer since
            pickler.dispatch_table = state.table = table
        try:
            pickler.dump(lifted)
            data = state.stream.getvalue()
            # The C pickler names whatever it meets; what the script defines under its
            # guard, the workers' import of it lacks: a pickle that may name one of
            # those is made again, below.
            if b"__main__" not in data or not _names_guarded(data):
                return data, state.buffers.take()
            state.buffers.take()
        except Exception:
            state.buffers.take()  # and pickle it again, below
        finally:
            state.stream.seek(0)
            state.stream.truncate()
            pickler.clear_memo()
            state.busy = False
    buffers = _Buffers(snapshot=snapshot)
    stream = BytesIO()
    _Pickler(stream, 5, buffer_callback=buffers).dump(lifted)
    return stream.getvalue(), buffers.take()


def loads_data(data: bytes | bytearray | pickle.PickleBuffer, buffers: tuple[Any, ...]) -> Any:
    """Unpickle what ``dumps_data`` made, once its buffers have arrived."""
    return pickle.loads(data, buffers=buffers) if buffers else pickle.loads(data)


#: How deep into tuples, lists and dicts ``_lift`` looks for large bytes: enough for
#: ``(args, kwargs)`` and a tuple among them; and how many items one may hold.
_LIFT_DEPTH = 3
_LIFT_WIDTH = 16


_plain_dumps = pickle.dumps
_SCALARS = frozenset({int, float, str, bool, type(None), complex})


def _is_plain(obj: Any, depth: int) -> bool:
    """Whether ``obj`` holds only built-in scalars and small bytes, in tuples, lists and
    dicts at most ``depth`` levels deep and ``_LIFT_WIDTH`` wide. Plain ``pickle.dumps``
    pickles those exactly as ``dumps_data`` would, without reducers, a look for large
    buffers or a question about ``__main__``: nothing in them is pickled by reference.
    """
    kind = type(obj)
    if kind in _SCALARS:
        return True
    if kind is bytes or kind is bytearray:
        return len(obj) < OUT_OF_BAND_MIN
    if not depth or (kind is not tuple and kind is not list and kind is not dict):
        return False
    if len(obj) > _LIFT_WIDTH:
        return False
    if kind is dict:
        for key, value in obj.items():
            if type(key) not in _SCALARS or not (
                type(value) in _SCALARS or _is_plain(value, depth - 1)
            ):
                return False
        return True
    for item in obj:  # noqa: SIM110 - a loop: all() of a generator costs more here
        if type(item) not in _SCALARS and not _is_plain(item, depth - 1):
            return False
    return True


def _lift(obj: Any, depth: int) -> Any:
    """``obj`` with its large ``bytes`` and ``bytearray`` wrapped to travel out of band.

    Pickle never asks a hook about those two types, so they are found here, in the
    places a large payload usually is: an argument, a keyword argument, the result, or
    one level inside those. Elsewhere they are pickled in line, as by the standard
    library. Containers are rebuilt only when something inside them is wrapped; the
    common case (nothing large) only looks, without building anything.
    """
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        return _Lifted(obj) if len(obj) >= OUT_OF_BAND_MIN else obj
    if not depth or (kind is not tuple and kind is not list and kind is not dict):
        return obj
    if len(obj) > _LIFT_WIDTH:
        return obj
    inside = obj.values() if kind is dict else obj
    for item in inside:  # a look first, without a call for each plain item
        item_kind = type(item)
        if item_kind is bytes or item_kind is bytearray:
            if len(item) >= OUT_OF_BAND_MIN:
                break
        elif (
            (item_kind is tuple or item_kind is list or item_kind is dict)
            and item  # an empty one holds nothing large
            and _lift(item, depth - 1) is not item
        ):
            break
    else:
        return obj
    lifted = [_lift(item, depth - 1) for item in inside]
    return dict(zip(obj, lifted, strict=True)) if kind is dict else kind(lifted)


class _Lifted:
    """A large ``bytes`` or ``bytearray``, pickled as an out-of-band buffer."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = _as_bytes if type(self.data) is bytes else _as_bytearray
        return rebuild, (pickle.PickleBuffer(self.data),)


def _as_bytes(buffer: Any) -> bytes:
    # The worker reads a read-only buffer into a bytes object: that one, without a copy.
    return buffer if type(buffer) is bytes else bytes(buffer)


def _as_bytearray(buffer: Any) -> bytearray:
    return buffer if type(buffer) is bytearray else bytearray(buffer)


_plain_table: dict[type, Any] = {}
_plain_table_sizes = (-1, -1)


def _plain_reducers() -> dict[type, Any]:
    """copyreg's reducers and multiprocessing's, as one dict (a C lookup per object),
    rebuilt when either gains one (multiprocessing registers some on first use)."""
    global _plain_table, _plain_table_sizes
    sizes = (len(copyreg.dispatch_table), len(_MP_EXTRA_REDUCERS))
    if sizes != _plain_table_sizes:
        _plain_table = {**copyreg.dispatch_table, **_MP_EXTRA_REDUCERS}
        _plain_table_sizes = sizes
    return _plain_table


_reusable_data = _ReusableData()


loads = pickle.loads


def _loads_by_value(data: bytes) -> Any:
    return _cloudpickle().loads(data)


@functools.cache
def _cloudpickle() -> types.ModuleType:
    import cloudpickle

    module: types.ModuleType = cloudpickle
    return module


def _by_value(obj: Any) -> bool:
    """Whether a function or class must travel by value (cloudpickle), not by name."""
    module_name = getattr(obj, "__module__", None)
    qualname: str = getattr(obj, "__qualname__", "")
    if module_name is None or "<" in qualname:  # <lambda>, <locals>
        return True
    if module_name in ("__main__", "__mp_main__") and (
        not _main_importable() or qualname.partition(".")[0] in _main_guarded()
    ):
        return True
    module = sys.modules.get(module_name)
    if module is None:
        return True
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is not obj


def _main_importable() -> bool:
    """Whether spawned children re-import ``__main__`` (a script, or ``python -m``);
    asked for every task, so the answer is kept for as long as ``__main__`` stays the
    same module. Never, while pickling for a cluster (``_main_elsewhere``)."""
    if _pickling_for.cluster:
        return False
    main = sys.modules.get("__main__")
    if main is None:
        return False
    known = _main_answer
    if known[0] is main:
        return bool(known[1])
    answer = _main_is_importable(main)
    _main_answer[:] = [main, answer]
    return answer


_main_answer: list[Any] = [None, False]


class _PicklingFor(threading.local):
    cluster = False


_pickling_for = _PicklingFor()


def _main_elsewhere(dump: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``dump(*args, **kwargs)``, pickling for a cluster's workers: what ``__main__``
    defines travels by value, since they never import the caller's ``__main__``."""
    before, _pickling_for.cluster = _pickling_for.cluster, True
    try:
        return dump(*args, **kwargs)
    finally:
        _pickling_for.cluster = before


def _main_guarded() -> frozenset[str]:
    """The functions and classes the ``__main__`` script defines only under its
    ``if __name__ == "__main__":`` guard: a spawned worker's re-import of the script
    skips that block, so they cannot travel by name. Read once per ``__main__``."""
    main = sys.modules.get("__main__")
    known = _guarded_answer
    if known[0] is not main:
        known[:] = [main, _guarded_names(getattr(main, "__file__", None))]
    names: frozenset[str] = known[1]
    return names


_guarded_answer: list[Any] = [None, frozenset()]


def _names_guarded(data: bytes) -> bool:
    """Whether the pickle ``data`` may name something defined under the guard (a
    guarded name in it: perhaps only in a string, which costs a slower pickling)."""
    return any(name.encode() in data for name in _main_guarded())


def _guarded_names(path: str | None) -> frozenset[str]:
    """Names ``def``/``class``-defined inside a top-level ``if __name__ == "__main__":``
    block of the file at ``path``, less those defined anywhere else at module level (at
    the top, or in a top-level ``try``/``if``/``with``... block: a method name there
    counts too, so that a module-level function is never taken for a guarded one). A
    scan of the lines, not a parse: ``ast`` costs more to import than most scripts to
    read; a guarded definition it misses goes by name, as without this."""
    import re

    try:
        with open(path or "", "rb") as file:  # (only ASCII matters here)
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return frozenset()
    guard = re.compile(
        r"""if\s*\(?\s*(__name__\s*==\s*(['"])__main__\2|(['"])__main__\3\s*==\s*__name__)"""
        r"""\s*\)?\s*:"""
    )
    definition = re.compile(r"\s*(?:async\s+def|def|class)\s+([A-Za-z_]\w*)")
    guarded: set[str] = set()
    elsewhere: set[str] = set()
    in_guard = in_definition = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        found = definition.match(line)
        if line[:1] not in ("", " ", "\t", "#"):  # a top-level statement
            in_guard = guard.match(line) is not None
            in_definition = found is not None  # (what it nests is not module-level)
            if found is not None:
                elsewhere.add(found.group(1))
        elif found is not None:
            if in_guard:
                guarded.add(found.group(1))
            elif not in_definition:
                elsewhere.add(found.group(1))
    return frozenset(guarded - elsewhere)


def _main_is_importable(main: Any) -> bool:
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        # multiprocessing.spawn does not re-run a package's __main__ (`python -m pkg`).
        return name != "__main__" and not name.endswith(".__main__")
    return getattr(main, "__file__", None) is not None


def _check_inheritable(obj: Any) -> None:
    """Refuse a primitive sent as a task argument, or one made for a fork context."""
    if multiprocessing.context.get_spawning_popen() is None:
        name = type(obj).__name__
        raise RuntimeError(
            f"a multiprocessing {name} cannot be sent to a worker with a task: it may only "
            f"be shared with a process by inheritance, when the process starts. Pass it "
            f"through initargs instead, e.g. Pool(initializer=setup, initargs=(obj,)), "
            f"and keep it in a global that setup() sets in each worker."
        )
    if hasattr(obj, "_semlock") and _made_for_fork(obj):
        raise ValueError(
            f"a multiprocessing {type(obj).__name__} in the hooks' arguments (itself, or "
            f"inside a Queue, Value, Event, Condition...) was created from a 'fork' "
            f"context (on Linux, the default one: multiprocessing.Queue(), .Lock()...), "
            f"but hookpool starts workers with 'spawn'; a child that used it would crash. "
            f"Create it from hookpool's context instead: hookpool.get_context().Queue(), "
            f".Lock(), .Value()... (the same as multiprocessing.get_context('spawn'))."
        )


def _made_for_fork(lock: Any) -> bool:
    flag = getattr(lock, "_is_fork_ctx", None)  # 3.11.7+
    if flag is not None:
        return bool(flag)
    # Before that: a fork-context semaphore is unlinked at once and so has no name.
    return getattr(lock._semlock, "name", None) is None


# ---------------------------------------------------------------------------------------
# Exceptions: captured in the worker, rebuilt in the caller.


def capture(exc: BaseException, *, skip_frames: int = 0) -> ErrorReport:
    """Describe ``exc`` and its cause chain in a form that always pickles."""
    return _capture(exc, skip_frames, set())


def _capture(exc: BaseException, skip_frames: int, seen: set[int]) -> ErrorReport:
    seen.add(id(exc))
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    import traceback  # only once a task fails: not free to import in every worker

    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        data: bytes | None = dumps(exc)
    except Exception:
        data = None
    frames = None
    if tb is not None:
        try:
            from tblib import Traceback

            frames = Traceback(tb).to_dict()
        except Exception:  # pragma: no cover - tblib refuses an odd frame
            frames = None
    cause = exc.__cause__
    context = exc.__context__
    return ErrorReport(
        type_name=_qualified_name(type(exc)),
        message=_safe_str(exc),
        traceback_text=text,
        exception=data,
        frames=frames,
        cause=None if cause is None or id(cause) in seen else _capture(cause, 0, seen),
        context=(
            None
            if context is None or context is cause or id(context) in seen
            else _capture(context, 0, seen)
        ),
        context_is_cause=context is not None and context is cause,
        suppress_context=exc.__suppress_context__,
    )


def rebuild(
    report: ErrorReport, remote_traceback: Callable[[str], BaseException] | None = None
) -> BaseException:
    """The worker's exception, as itself where possible, with the worker's frames.

    If its ``__cause__`` was not set by the worker's code, and ``remote_traceback`` is
    given, the cause is ``remote_traceback(formatted worker traceback)``, as the standard
    library's pools attach theirs (``Dialect.remote_traceback``).
    """
    from ._errors import RemoteError

    exc: BaseException | None = None
    if report.exception is not None:
        try:
            loaded = loads(report.exception)
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            exc = loaded
    if exc is None:
        exc = RemoteError(report.type_name, report.message, report.traceback_text)
    if report.frames is not None:
        try:
            from tblib import Traceback

            exc = exc.with_traceback(_as_traceback(Traceback.from_dict(report.frames)))
        except Exception:  # pragma: no cover - keep the exception, lose the frames
            pass
    if report.cause is not None:
        exc.__cause__ = rebuild(report.cause)
    elif remote_traceback is not None:
        exc.__cause__ = remote_traceback(report.traceback_text)
    if report.context is not None:
        exc.__context__ = rebuild(report.context)
    elif report.context_is_cause:  # `raise X from err` inside `except ... as err`
        exc.__context__ = exc.__cause__
    exc.__suppress_context__ = report.suppress_context
    return exc


def _as_traceback(frames: Any) -> types.TracebackType | None:
    """A real traceback for tblib's ``frames``: one frame per worker frame, each made by
    running a stub under the worker frame's file, line and function name, as tblib's
    ``as_traceback`` does. tblib's stub fails on a name at fixed columns, which Python
    3.11+ shows as carets under the wrong part of the line; this one fails on a call
    spanning the whole line as read here, so the carets are left out, as for a worker
    frame whose error spans its line."""
    import linecache

    top: types.TracebackType | None = None
    last: types.TracebackType | None = None
    made: types.TracebackType | None = None
    try:
        while frames is not None:
            code = frames.tb_frame.f_code
            lineno = frames.tb_lineno
            line = linecache.getline(code.co_filename, lineno).rstrip("\r\n")
            indent = len(line) - len(line.lstrip()) if lineno > 1 else 0
            stub = _stub(indent, len(line.encode()) - indent).replace(
                co_firstlineno=lineno - 1 if indent else lineno,
                co_filename=code.co_filename,
                co_name=code.co_name,
            )
            try:
                exec(stub, {**frames.tb_frame.f_globals, "_": None})
            except TypeError:  # None is not callable: the stub's own frame
                made = sys.exc_info()[2].tb_next  # type: ignore[union-attr]
                if last is None:
                    top = made
                else:
                    last.tb_next = made
                last = made
            frames = frames.tb_next
        return top
    finally:
        # Each stub frame's f_back is this frame, which keeps its locals: without this,
        # they would hold the traceback in a cycle (as tblib's as_traceback avoids too).
        top = last = made = None


@functools.lru_cache(maxsize=128)
def _stub(indent: int, width: int) -> types.CodeType:
    """Code whose one statement, a call that fails, spans ``width`` columns after
    ``indent`` (the least: ``_()``); on its second line when indented (under ``if 1:``)."""
    call = "_(" + " " * max(0, width - 3) + ")"
    source = f"if 1:\n{' ' * indent}{call}" if indent else call
    return compile(source, "<hookpool>", "exec")


def _qualified_name(kind: type) -> str:
    module = kind.__module__
    if module in ("builtins", "__main__", "__mp_main__"):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:
        return f"<str() failed on a {type(obj).__name__}>"


def describe(value: object, limit: int = 200) -> str:
    """A short repr for error messages; never raises."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object (repr failed)>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SpawnedHooks:
    """The lifecycle hooks, pickled while a worker is being spawned.

    Pickling here happens inside multiprocessing's spawn, so Locks, Queues, Values and
    pipe connections in ``initargs`` pass by inheritance. The worker unpickles the data
    itself (``load``), so that an error doing so is reported like an initializer error.
    """

    def __init__(self, hooks: Any) -> None:
        self._hooks = hooks
        self._data: bytes | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_spawned_hooks_from_bytes, (dumps(self._hooks),))

    def load(self) -> Any:
        if self._data is None:
            return self._hooks
        return loads(self._data)


def _spawned_hooks_from_bytes(data: bytes) -> SpawnedHooks:
    hooks = SpawnedHooks(None)
    hooks._data = data
    return hooks


_CALLABLE_CACHE: dict[Any, bytes] = {}
_CALLABLE_CACHE_SIZE = 256


def dumps_callable(fn: Any, *, remote: bool = False) -> bytes:
    """Pickle a task function. Functions importable by name are pickled once and cached
    (their pickle is just the name); anything pickled by value is pickled every time,
    since a closure's cells or a lambda's globals may have changed since. ``remote``:
    for workers on a cluster, which cannot import the caller's ``__main__``."""
    if remote:
        return _main_elsewhere(dumps, fn)
    if type(fn) is not types.FunctionType:
        return dumps(fn)
    data = _CALLABLE_CACHE.get(fn)
    if data is None:
        if _by_value(fn):
            return dumps(fn)
        if len(_CALLABLE_CACHE) >= _CALLABLE_CACHE_SIZE:
            _CALLABLE_CACHE.clear()
        data = _CALLABLE_CACHE[fn] = dumps(fn)
    return data


def dumps_for_cluster(obj: Any) -> bytes:
    """``dumps`` for a cluster's workers: what ``__main__`` defines goes by value."""
    return _main_elsewhere(dumps, obj)


def callable_name(fn: Any) -> str:
    """A readable name for a task function, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__
