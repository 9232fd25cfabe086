"""``NamedTuple``, ``Generic`` and ``TypeVar`` for the modules on the start-up path, without
``typing``.

Under spawn every worker imports ``_worker`` (and, through the user's main script, the
facade): those modules define their records with this ``NamedTuple``. At run time it makes
a plain ``collections.namedtuple`` from the class body, as ``typing.NamedTuple`` does,
but without importing ``typing`` and without turning each field's annotation (a string,
under ``from __future__ import annotations``) into a ``typing.ForwardRef``: together some
3 ms of every worker's start, for annotations nothing reads at run time. Type checkers
see ``typing.NamedTuple`` itself.

The same contract: fields are the annotated names, in order; the ones with a value have
that default and must come last; methods, properties and the docstring are kept.

The engine, which the parent imports while its first workers boot, makes its generic
classes (``AsyncResult[T]``...) with this ``Generic`` and ``TypeVar``: at run time a class
that can be subscripted (``AsyncResult[int]`` is a ``types.GenericAlias``, as for the
standard library's ``AsyncResult``) and a type variable that is just its name. Type
checkers see ``typing``'s own.
"""

from __future__ import annotations

import collections
import types

__all__ = ["TYPE_CHECKING", "Generic", "NamedTuple", "TypeVar"]

#: ``typing.TYPE_CHECKING`` without importing ``typing`` (type checkers treat any
#: ``TYPE_CHECKING`` as true).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Generic as Generic
    from typing import NamedTuple as NamedTuple
    from typing import TypeVar as TypeVar
else:
    # What the class statement puts in a namespace besides fields and methods.
    _BOOKKEEPING = frozenset({"__module__", "__qualname__", "__annotations__"})

    class _NamedTupleMeta(type):
        def __new__(mcls, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, namespace)
            fields = list(namespace.get("__annotations__", {}))
            defaults = [namespace[field] for field in fields if field in namespace]
            if any(field not in namespace for field in fields[len(fields) - len(defaults) :]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = collections.namedtuple(
                name, fields, defaults=defaults, module=namespace["__module__"]
            )
            cls.__qualname__ = namespace["__qualname__"]
            cls.__annotations__ = namespace.get("__annotations__", {})
            for key, value in namespace.items():
                if key not in _BOOKKEEPING and key not in fields:
                    setattr(cls, key, value)
            return cls

    class NamedTuple(metaclass=_NamedTupleMeta):
        pass

    class Generic:
        __slots__ = ()
        __class_getitem__ = classmethod(types.GenericAlias)

    def TypeVar(name, *constraints, **options):
        return name
