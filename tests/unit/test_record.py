"""privsep._record: the plan's and the broker's records keep what ``@dataclass(frozen=True)`` gave."""

from __future__ import annotations

import copy

import pytest

from privsep._record import Record, replace
from privsep.plan.landlock import Rule
from privsep.plan.view import Bind


def test_a_record_cannot_be_changed_after_init() -> None:
    bind = Bind("/srv", True)
    with pytest.raises(AttributeError, match="frozen"):
        bind.path = "/etc"
    with pytest.raises(AttributeError, match="frozen"):
        del bind.path
    with pytest.raises(AttributeError):
        bind.other = 1
    assert bind.path == "/srv"


def test_equality_and_hash_are_by_value_and_class() -> None:
    assert Rule("/a", 1) == Rule("/a", 1)
    assert hash(Rule("/a", 1)) == hash(Rule("/a", 1))
    assert Rule("/a", 1) != Rule("/a", 2)
    assert {Rule("/a", 1), Rule("/a", 1)} == {Rule("/a", 1)}

    class Other(Record):
        __slots__ = ("access", "path")

        def __init__(self, path: str, access: int) -> None:
            self._assign(locals())

    assert Other("/a", 1) != Rule("/a", 1)


def test_replace_makes_a_new_record_through_init() -> None:
    bind = Bind("/srv", True)
    changed = replace(bind, writable=True)
    assert changed == Bind("/srv", True, writable=True)
    assert bind.writable is False
    with pytest.raises(TypeError, match="no field nope"):
        replace(bind, nope=1)


def test_repr_names_every_field() -> None:
    assert repr(Rule("/a", 1)) == "Rule(access=1, path='/a')"  # in __slots__' order


def test_copy_rebuilds_the_record() -> None:
    bind = Bind("/srv", True, ("read",), writable=True, idmap=(1, 2))
    assert copy.copy(bind) == bind
    assert copy.deepcopy(bind) == bind


def test_a_record_cannot_derive_from_another() -> None:
    with pytest.raises(TypeError, match="derives from Record alone"):

        class Wider(Rule):  # its fields would miss Rule's in equality and on the wire
            __slots__ = ("extra",)
