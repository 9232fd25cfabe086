"""Tasks that fail at one stage of their trip, for the crash matrix of test_fidelity:
{error, exit, crash} x {task pickle, task unpickle, function run, result pickle, result
unpickle}. "error" raises ValueError, "exit" calls sys.exit, "crash" calls os._exit."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from typing import Any


def act(how: str) -> None:
    if how == "error":
        raise ValueError(f"{how} on purpose")
    if how == "exit":
        sys.exit(3)
    if how == "crash":
        os._exit(7)
    raise AssertionError(how)


def act_on_load(how: str, where: str) -> str:
    """Called while unpickling: acts in ``where`` ("worker" or "parent") only."""
    in_parent = multiprocessing.parent_process() is None
    if in_parent == (where == "parent"):
        act(how)
    return "loaded"


class FailsToPickle:
    """Acts while being pickled."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __repr__(self) -> str:
        return f"FailsToPickle({self.how!r})"

    def __reduce__(self) -> Any:
        act(self.how)


class FailsToUnpickle:
    """Pickles; acts while being unpickled in ``where``."""

    def __init__(self, how: str, where: str) -> None:
        self.how = how
        self.where = where

    def __reduce__(self) -> Any:
        return act_on_load, (self.how, self.where)


class CallableFailsToUnpickle(FailsToUnpickle):
    """A task function that pickles, and acts while being unpickled in ``where``."""

    def __call__(self, arg: object) -> str:
        return take(arg)


def take(arg: object) -> str:
    return type(arg).__name__


def run(how: str) -> None:
    act(how)


def return_unpicklable(how: str) -> FailsToPickle:
    return FailsToPickle(how)


def return_fails_in_parent(how: str) -> FailsToUnpickle:
    return FailsToUnpickle(how, "parent")


def square(x: int) -> int:
    return x * x


class Payload:
    """A result that can be watched with a weak reference."""

    def __init__(self, n: int) -> None:
        self.n = n


def record_then_sleep(path: str, value: int, seconds: float) -> int:
    """Append ``value`` to ``path`` (this task ran), then sleep."""
    with open(path, "a") as f:
        f.write(f"{value}\n")
    time.sleep(seconds)
    return value


def _sleep_then_load(seconds: float) -> str:
    time.sleep(seconds)
    return "loaded"


class SlowToUnpickle:
    """Takes ``seconds`` to unpickle, in the worker."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> Any:
        return _sleep_then_load, (self.seconds,)


def sleep_after(_: object, seconds: float) -> None:
    time.sleep(seconds)
