"""``_records.NamedTuple``: the worker's ``typing.NamedTuple``, without ``typing``."""

from __future__ import annotations

import pickle
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
