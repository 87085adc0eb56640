"""The plan's trip to the forkserver: every field of every record in it arrives as it left."""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Optional

import pytest

from privsep._record import Record
from privsep.cgroups import Budget
from privsep.plan import wire
from privsep.plan.egress import EgressPlan
from privsep.plan.landlock import Rule
from privsep.plan.spawnplan import SpawnPlan
from privsep.plan.view import Bind, Mask, ViewPlan


def full_plan() -> SpawnPlan:
    """A plan in which no field has its default, no container is empty and nothing is None.

    Adding a field to SpawnPlan (or to a record inside it) fails
    :func:`test_the_sample_plan_sets_every_field` until it is set here, and then the
    round trip proves it travels.
    """
    return SpawnPlan(
        argv=("/usr/bin/env", "caf\u00e9", ""),
        env={"PATH": "/bin", "UNDECODABLE": "a\udcffb", "EMPTY": ""},
        cwd="/srv/work",
        view=ViewPlan(
            dirs=("/srv", "/srv/work"),
            symlinks=(("/lib", "usr/lib"), ("/bin", "usr/bin")),
            binds=(
                Bind("/usr/lib/python3", True, ("read", "list"), writable=True, idmap=(0, 0)),
                Bind("/srv/work", True, ("read", "write"), writable=True, idmap=(1000, 1001)),
            ),
            tmp_size_mb=64,
            pins=("/srv/work/a",),
            masks=(Mask("/srv/work/a/secret", True), Mask("/srv/work/fifo", False)),
            files=(("/etc/passwd", "root:x:0:0:root:/root:/usr/sbin/nologin\n"),),
            frozen=(("/srv/work/suid", 2049, 131),),
            overlays=(("/etc/resolv.conf", "nameserver 127.0.0.53\n"),),
        ),
        landlock_rules=(Rule("/", 8), Rule("/srv/work", 0x7FFF)),
        landlock_abi=6,
        rlimits={7: 1024, 6: -1, 4: 0},
        seccomp_bpf=bytes(range(256)) * 3,
        user_namespace=True,
        dangerous_calls=(101, 165, 310),
        syscall_default="kill",
        learn=True,
        transparent_calls=(2, 42, 257),
        cwd_inherited=True,
        kernel_served=(0, 3),
        in_process_call=True,
        listen=("http", "https"),
        budget=Budget(memory_mb=256, processes=32, cpu_percent=50),
        cgroups="optional",
        cgroup_join=("/sys/fs/cgroup/privsep-1/cgroup.procs",),
        terminal=1,
        egress=EgressPlan(dns=True, proxy=True),
        host_uid=2_000_000_001,
        host_gid=2_000_000_002,
    )


def _default(cls: type[Record], name: str) -> object:
    """The field's default as ``__init__`` declares it (None there: a value computed when not given)."""
    return inspect.signature(cls.__init__).parameters[name].default


def _unset(obj: Any, where: str) -> list[str]:
    """The fields of ``obj``, and of the records inside it, that a round trip would not test."""
    found: list[str] = []
    for name in obj.__slots__:
        value = getattr(obj, name)
        at = f"{where}.{name}"
        empty = isinstance(value, tuple | Mapping | bytes | str) and not value
        if value is None or empty or value == _default(type(obj), name):
            found.append(at)
        items = (
            value.values() if isinstance(value, Mapping) else value if isinstance(value, tuple) else (value,)
        )
        for i, item in enumerate(items):
            if isinstance(item, Record):
                found += _unset(item, at if item is value else f"{at}[{i}]")
    return found


def test_the_sample_plan_sets_every_field() -> None:
    assert _unset(full_plan(), "SpawnPlan") == []


def test_every_field_survives_the_round_trip() -> None:
    plan = full_plan()
    back = wire.decode(SpawnPlan, wire.encode(plan))
    assert back == plan
    # Equality would let a list pass for a tuple in a dict value or the like: compare the types too.
    assert repr(back) == repr(plan)


def test_the_wire_is_json_without_any_field_name() -> None:
    # The format is the records' field order (__slots__): nothing here or in wire.py spells a field.
    body = json.loads(wire.encode(full_plan()))
    assert isinstance(body, list)
    assert len(body) == len(SpawnPlan.__slots__)


class _Unsupported(Record):
    __slots__ = ("name", "ratio")
    name: str
    ratio: complex

    def __init__(self, name: str, ratio: complex) -> None:
        self._assign(locals())


class _Outer(Record):
    __slots__ = ("inner",)
    inner: tuple[_Unsupported, ...]

    def __init__(self, inner: tuple[_Unsupported, ...]) -> None:
        self._assign(locals())


def test_a_field_the_wire_cannot_carry_is_named_at_the_first_encode() -> None:
    with pytest.raises(
        TypeError, match=r"_Outer\.inner: _Unsupported\.ratio: .*cannot carry <class 'complex'>"
    ):
        wire.encode(_Outer((_Unsupported("x", 0.5j),)))


class _Timed(Record):
    __slots__ = ("limit", "seconds")
    seconds: float
    limit: float | None

    def __init__(self, seconds: float, limit: float | None) -> None:
        self._assign(locals())


def test_a_float_travels_as_a_float_and_an_int_given_for_one_arrives_as_one() -> None:
    for value in (_Timed(0.25, None), _Timed(1e-9, 3600.5)):
        assert wire.decode(_Timed, wire.encode(value)) == value
    back = wire.decode(_Timed, wire.encode(_Timed(5, 7)))  # what a lenient model may hold
    assert back == _Timed(5.0, 7.0)
    assert type(back.seconds) is float and type(back.limit) is float
    with pytest.raises(ValueError, match="expected float"):
        wire.decode(_Timed, b"[5, null]")


def _with(body: list[Any], name: str, value: object) -> list[Any]:
    index = SpawnPlan.__slots__.index(name)
    return [*body[:index], value, *body[index + 1 :]]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda body: body[:-1], "expected a list of"),  # a field missing
        (lambda body: [*body, 1], "expected a list of"),  # one too many
        (lambda body: _with(body, "env", 7), "expected a list"),
        (lambda body: _with(body, "env", [["PATH"]]), "expected a list of 2"),
        (lambda body: _with(body, "seccomp_bpf", True), "expected base64 text"),
        (lambda body: _with(body, "seccomp_bpf", "not base64!"), "bad base64"),
        (lambda body: _with(body, "landlock_abi", True), "expected int, got bool"),
        (lambda body: _with(body, "argv", ["/bin/true", 1]), "expected a list of str"),
        (lambda body: _with(body, "terminal", "1"), "expected int, got str"),
    ],
)
def test_decoding_is_strict(mutate: Any, message: str) -> None:
    body = json.loads(wire.encode(full_plan()))
    with pytest.raises(ValueError, match=message):
        wire.decode(SpawnPlan, json.dumps(mutate(body)).encode())


def test_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a SpawnPlan"):
        wire.decode(SpawnPlan, b"\xff not json")


@pytest.mark.parametrize(
    "hint",
    [
        int | None,
        Optional[int],  # noqa: UP045 - the old spelling is read the same
        tuple[int, ...],
        tuple[str, bool],
        Mapping[str, int],
        dict[int, str],
        str,
        Rule,
    ],
)
def test_hints_are_taken_apart_as_typing_would(hint: Any) -> None:
    """The wire reads hints without importing ``typing`` (a warm ``privsep run`` never does):
    what it makes of each is what ``typing.get_origin`` and ``get_args`` make of it."""
    origin, args = wire._origin_and_args(hint)
    expected = typing.get_origin(hint)
    assert origin is (types.UnionType if expected is typing.Union else expected)
    assert args == typing.get_args(hint)
