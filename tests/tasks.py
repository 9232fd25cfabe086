"""Module-level task functions that workers import by name (tests/ is on sys.path)."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def identity(x: Any) -> Any:
    return x


def pid(_: object = None) -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def raise_value_error(message: str = "boom") -> None:
    raise ValueError(message)


def sleep_then_raise(seconds: float, message: str) -> None:
    time.sleep(seconds)
    raise_value_error(message)


# -- hooks that count in files, so a test can see every worker's lifecycle ---------------

_state: dict[str, Any] = {}


def init_record(directory: str) -> None:
    """Initializer: remember the directory, write an init marker for this worker."""
    _state["dir"] = directory
    write_whole(Path(directory, f"init-{os.getpid()}"), "1")


def fin_record(directory: str) -> None:
    """Finalizer: write a fin marker; count repeated runs in the same file."""
    path = Path(directory, f"fin-{os.getpid()}")
    count = int(path.read_text()) if path.exists() else 0
    write_whole(path, str(count + 1))


def write_whole(path: Path, text: str) -> None:
    """Write ``path`` so that a reader never sees it half written (tests poll these
    markers while workers write them)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def counts(directory: str) -> tuple[dict[str, int], dict[str, int]]:
    """(init markers, fin markers) as {pid: times}."""
    inits: dict[str, int] = {}
    fins: dict[str, int] = {}
    for path in Path(directory).iterdir():
        kind, _, who = path.name.partition("-")
        if kind == "init":
            inits[who] = int(path.read_text())
        elif kind == "fin":
            fins[who] = int(path.read_text())
    return inits, fins


def exit_with(code: int) -> None:
    """A task that ends its worker through SystemExit (sys.exit in library code)."""
    raise SystemExit(code)


def append_to(path: str, value: Any) -> Any:
    """Record that this task ran (one line per run), then return ``value``."""
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return value


def raise_from_inside_except() -> None:
    try:
        raise KeyError("inner")
    except KeyError as err:
        raise ValueError("outer") from err


_shared: dict[str, Any] = {}


def keep(name: str, value: Any) -> None:
    """Initializer: keep ``value`` in this worker under ``name``."""
    _shared[name] = value


def read_value(name: str) -> Any:
    return _shared[name].value


def read_array(name: str) -> list[Any]:
    return list(_shared[name])


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def send_through(conn: Any, value: Any) -> None:
    """Send ``value`` through a pipe Connection passed as a task argument."""
    conn.send(value)
    conn.close()


def sleep_then_die(seconds: float) -> None:
    time.sleep(seconds)
    os.kill(os.getpid(), 9)


class Frame:
    """A buffer that pickles out of band (protocol 5), as a numpy array does."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return Frame, (pickle.PickleBuffer(self.data),)


def frame_writable(frame: Frame) -> bool:
    return not memoryview(frame.data).readonly


def scribble(value: Any) -> Any:
    """Write into the first byte of ``value`` (a bytearray, or a writable Frame) here."""
    target = value.data if isinstance(value, Frame) else value
    memoryview(target)[0] = ord("!")
    return value


def sleep_then_first_byte(seconds: float, value: bytearray) -> int:
    time.sleep(seconds)
    return value[0]
