"""Lifecycle hooks: validated in the parent, run in the worker.

In each worker, in this order:

1. ``initializer(*initargs)`` runs once, before the first task.
2. Right after it succeeds, the finalizer is registered with
   ``multiprocessing.util.Finalize``; from then on it runs exactly once, whenever the
   worker leaves in an orderly way (see ``docs/lifecycle.md`` for the full table).
3. ``finalizer(*finalargs)`` runs as the worker leaves. An exception it raises is sent
   to the parent and logged there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ._records import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any

__all__ = ["Hooks"]


class Hooks(NamedTuple):
    """What a worker runs around its tasks."""

    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    finalizer: Callable[..., object] | None = None
    finalargs: tuple[Any, ...] = ()

    @classmethod
    def validate(
        cls,
        initializer: Callable[..., object] | None,
        initargs: Iterable[Any],
        finalizer: Callable[..., object] | None,
        finalargs: Iterable[Any],
    ) -> Hooks:
        """Check the hooks in the caller, where a mistake is easiest to see."""
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if finalizer is not None and not callable(finalizer):
            raise TypeError("finalizer must be a callable")
        return cls(initializer, tuple(initargs), finalizer, tuple(finalargs))

    def initialize(self) -> None:
        if self.initializer is not None:
            self.initializer(*self.initargs)

    def finalize(self) -> None:
        if self.finalizer is not None:
            self.finalizer(*self.finalargs)
