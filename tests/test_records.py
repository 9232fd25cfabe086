"""``_records``: ``typing.NamedTuple``, ``Generic`` and ``TypeVar`` without ``typing``."""

from __future__ import annotations

import pickle
import types
import typing

import pytest

from hookpool import _records
from hookpool._records import NamedTuple


class Point(NamedTuple):
    """A point."""

    x: int
    y: int = 0
    label: str = ""

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)

    @classmethod
    def origin(cls) -> Point:
        return cls(0)


class TypedPoint(typing.NamedTuple):
    x: int
    y: int = 0
    label: str = ""


def test_it_is_a_namedtuple_like_typings() -> None:
    assert Point._fields == TypedPoint._fields == ("x", "y", "label")
    assert Point._field_defaults == TypedPoint._field_defaults == {"y": 0, "label": ""}
    assert Point(1) == (1, 0, "") == TypedPoint(1)
    assert Point(1, 2)._replace(label="a") == (1, 2, "a")
    assert repr(Point(3, 4)) == "Point(x=3, y=4, label='')"
    assert isinstance(Point(1), tuple)


def test_it_keeps_the_class_body() -> None:
    assert Point.__doc__ == "A point."
    assert Point(-2, 3).norm1 == 5
    assert Point.origin() == Point(0, 0)
    assert list(Point.__annotations__) == ["x", "y", "label"]
    assert Point.__module__ == __name__
    assert Point.__qualname__ == "Point"


def test_it_pickles_by_reference() -> None:
    point = Point(1, 2, "p")
    assert pickle.loads(pickle.dumps(point)) == point
    assert type(pickle.loads(pickle.dumps(point))) is Point


def test_a_field_without_default_may_not_follow_one_with() -> None:
    with pytest.raises(TypeError, match="follows one with a default"):

        class Bad(NamedTuple):
            a: int = 0
            b: int  # type: ignore[misc]  # the error under test


def test_type_checkers_see_typing() -> None:
    assert _records.TYPE_CHECKING is False


def test_generic_classes_subscript_as_typings_do() -> None:
    """The engine's generic classes are made with ``_records.Generic``: subscripting one
    gives a ``types.GenericAlias`` of it (as for the standard library's AsyncResult), and
    subclasses of a subscripted one are plain subclasses."""
    from hookpool import AsyncResult, IMapIterator, MapResult

    alias = AsyncResult[int]
    assert isinstance(alias, types.GenericAlias)
    assert alias.__origin__ is AsyncResult and alias.__args__ == (int,)
    assert MapResult[str].__origin__ is MapResult
    assert issubclass(MapResult, AsyncResult)
    assert IMapIterator[bytes].__origin__ is IMapIterator
    assert typing.get_origin(AsyncResult[int]) is AsyncResult


def test_generic_adds_no_state() -> None:
    class Box(_records.Generic[_records.TypeVar("T")]):
        __slots__ = ("item",)

    box = Box()
    assert not hasattr(box, "__dict__")
    assert Box[int]().__class__ is Box
