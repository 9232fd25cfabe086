"""Tasks and objects that break things on purpose, for the crash table."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


def sigkill_self(_: object = None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def exit_abruptly(_: object = None) -> None:
    os._exit(7)


def exit_abruptly_once(gate: str, timeout: float = 30.0) -> None:
    """Exit with os._exit as soon as the file ``gate`` exists (the test is ready)."""
    deadline = time.monotonic() + timeout
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(7)


def segfault(_: object = None) -> None:
    ctypes.string_at(0)


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled: __init__ needs two arguments."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}-{b}")


def raise_two_arg_error(_: object = None) -> None:
    raise TwoArgError("x", "y")


class LockHoldingError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_lock_holding_error(_: object = None) -> None:
    raise LockHoldingError("holds a lock")


def return_lock(_: object = None) -> threading.Lock:
    return threading.Lock()


def _fail_to_load() -> None:
    raise RuntimeError("this result cannot be unpickled")


class UnloadableResult:
    def __reduce__(self) -> Any:
        return (_fail_to_load, ())


def return_unloadable(_: object = None) -> UnloadableResult:
    return UnloadableResult()


def _exit_on_load() -> None:
    os._exit(9)


class ExitAtUnpickle:
    """An argument that kills the worker while it is being unpickled."""

    def __reduce__(self) -> Any:
        return (_exit_on_load, ())


def _raise_on_load() -> None:
    raise ImportError("cannot rebuild this argument in the worker")


class ErrorAtUnpickle:
    def __reduce__(self) -> Any:
        return (_raise_on_load, ())


class ErrorAtPickle:
    def __reduce__(self) -> Any:
        raise TypeError("this argument refuses to be pickled")


def take(arg: object) -> str:
    return type(arg).__name__


def record_run(directory: str, key: str, seconds: float = 0.0) -> str:
    """Mark that task `key` started (one byte per start), then sleep."""
    with open(Path(directory, key), "a") as marker:
        marker.write("x")
    if seconds:
        time.sleep(seconds)
    return key
