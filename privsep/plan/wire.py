"""A plan as bytes, for the forkserver (and the plan cache): JSON derived from the records' fields and hints.

The broker and its forkserver run the same code, so the format is private
to them and never versioned; it is plain JSON because the forkserver must
never unpickle. Nothing here lists a field: :func:`encode` and
:func:`decode` walk the fields (``__slots__``, in order) and type hints of
the record (``privsep._record``) they are given, and of every record inside
it, so a field added to
:class:`~privsep.plan.spawnplan.SpawnPlan` travels without a change here. A
field whose type this module cannot carry fails the first encode with a
TypeError naming the field (``tests/unit/test_plan_wire.py`` fails first).

Types carried: ``str``, ``int``, ``bool``, ``float``, ``bytes`` (base64), ``X | None``,
``tuple[X, ...]``, fixed ``tuple[X, Y]``, ``Mapping[K, V]`` (a list of
pairs: keys need not be strings) and records of these (a list of the
field values, in field order). Decoding is strict: a wrong type or a wrong
length is a ValueError.

The codecs are built once per type; a value whose JSON form is itself
(``str``, ``int``, ``bool``, and containers of them) is passed through
without a call per item, which keeps a plan's round trip within the
hand-written format's cost (the forkserver pays it on every start).
"""

from __future__ import annotations

import binascii
import sys
import types
from _collections_abc import Mapping  # collections.abc's, without the collections package
from _operator import attrgetter

from privsep import _jsontext
from privsep._memo import cached
from privsep._record import Record

TYPE_CHECKING = False  # not typing's: a warm privsep run decodes its plan here without importing it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")
    _C = TypeVar("_C")

    #: A value to its JSON form (encoders) or back, checked (decoders). An encoder of None
    #: means the value is its own JSON form.
    _Codec = Callable[[Any], Any]

__all__ = ["decode", "encode"]
_SCALARS = (str, int, bool)


def encode(obj: object) -> bytes:
    """``obj``, a record (``privsep._record``), as JSON bytes."""
    cls: Any = type(obj)  # a class is hashable, whatever mypy makes of type[object]
    enc = _encoder(cls)
    return _jsontext.dumps(obj if enc is None else enc(obj)).encode()


def decode(cls: type[T], data: bytes) -> T:
    """The ``cls`` instance :func:`encode` made ``data`` from; ValueError if it is not one."""
    try:
        body = _jsontext.loads(data)
    except ValueError as exc:  # UnicodeDecodeError is one
        raise ValueError(f"not a {cls.__name__}: {exc}") from None
    hint: Any = cls
    value: T = _decoder(hint)(body)
    return value


# --- encoders ----------------------------------------------------------------------------------


def _new_encoder(hint: Any) -> _Codec | None:
    if hint in _SCALARS:
        return None
    if hint in (bytes, float):
        # bytes as base64; an int where a float is declared travels as the float it means
        return _b64 if hint is bytes else float
    if isinstance(hint, type) and issubclass(hint, Record):
        return _record_encoder(hint)
    origin, args = _origin_and_args(hint)
    if origin is types.UnionType:
        enc = _encoder(_optional_of(hint, args))
        return None if enc is None else (lambda value: None if value is None else enc(value))
    if origin is tuple and args:
        return _tuple_encoder(args)
    if origin in (Mapping, dict) and len(args) == 2:
        return _mapping_encoder(_encoder(args[0]), _encoder(args[1]))
    raise TypeError(f"privsep.plan.wire cannot carry {hint!r}")


def _tuple_encoder(args: tuple[Any, ...]) -> _Codec:
    if args[-1] is Ellipsis:
        item = _encoder(args[0])
        return list if item is None else (lambda value: [item(v) for v in value])
    items = tuple(_encoder(a) for a in args)
    if all(e is None for e in items):
        return list
    return lambda value: [v if e is None else e(v) for e, v in zip(items, value, strict=True)]


def _mapping_encoder(key: _Codec | None, val: _Codec | None) -> _Codec:
    if key is None and val is None:
        return lambda value: list(map(list, value.items()))
    return lambda value: [
        [k if key is None else key(k), v if val is None else val(v)] for k, v in value.items()
    ]


def _record_encoder(cls: type[Record]) -> _Codec:
    fields = _fields(cls, _encoder)
    get = _getter(tuple(name for name, _ in fields))
    encs = tuple(enc for _, enc in fields)
    if all(e is None for e in encs):
        return lambda obj: list(get(obj))
    return lambda obj: [v if e is None else e(v) for e, v in zip(encs, get(obj), strict=True)]


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) == 1:  # attrgetter of one name returns the value, not a 1-tuple
        (name,) = names
        return lambda obj: (getattr(obj, name),)
    return attrgetter(*names)


def _b64(value: bytes) -> str:
    return binascii.b2a_base64(value, newline=False).decode()


# --- decoders ----------------------------------------------------------------------------------


def _new_decoder(hint: Any) -> _Codec:
    if hint in _SCALARS:
        return _scalar_of(hint)
    if hint in (bytes, float):
        return _unb64 if hint is bytes else _scalar_of(float)
    if isinstance(hint, type) and issubclass(hint, Record):
        return _record_decoder(hint)
    origin, args = _origin_and_args(hint)
    if origin is types.UnionType:
        dec = _decoder(_optional_of(hint, args))
        return lambda data: None if data is None else dec(data)
    if origin is tuple and args:
        return _tuple_decoder(args)
    if origin in (Mapping, dict) and len(args) == 2:
        key, val = _decoder(args[0]), _decoder(args[1])
        return lambda data: {key(k): val(v) for k, v in (_list(pair, 2) for pair in _list(data))}
    raise TypeError(f"privsep.plan.wire cannot carry {hint!r}")


def _tuple_decoder(args: tuple[Any, ...]) -> _Codec:
    if args[-1] is Ellipsis:
        if args[0] in _SCALARS:
            kind = args[0]
            return lambda data: _scalars(kind, data)
        item = _decoder(args[0])
        return lambda data: tuple(map(item, _list(data)))
    items = tuple(_decoder(a) for a in args)
    return lambda data: tuple(dec(v) for dec, v in zip(items, _list(data, len(items)), strict=True))


def _record_decoder(cls: type[Record]) -> _Codec:
    fields = _fields(cls, _decoder)
    names = tuple(name for name, _ in fields)
    decs = tuple(dec for _, dec in fields)

    def dec(data: Any) -> Any:
        values = _list(data, len(decs))
        return cls(**{name: d(v) for name, d, v in zip(names, decs, values, strict=True)})

    return dec


def _scalar_of(kind: type) -> _Codec:
    return lambda data: _scalar(kind, data)


def _scalar(kind: type, data: Any) -> Any:
    if type(data) is not kind:  # exactly: a bool is no int here
        raise ValueError(f"expected {kind.__name__}, got {type(data).__name__}")
    return data


def _scalars(kind: type, data: Any) -> tuple[Any, ...]:
    items = _list(data)
    if not set(map(type, items)) <= {kind}:
        raise ValueError(f"expected a list of {kind.__name__}, got {data!r:.60}")
    return tuple(items)


def _unb64(data: Any) -> bytes:
    if type(data) is not str:
        raise ValueError(f"expected base64 text, got {type(data).__name__}")
    try:
        # base64.b64decode(validate=True), without importing base64 (its module costs every run)
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None


def _list(data: Any, length: int | None = None) -> list[Any]:
    if type(data) is not list or (length is not None and len(data) != length):
        want = "a list" if length is None else f"a list of {length}"
        raise ValueError(f"expected {want}, got {data!r:.60}")
    return data


#: Each codec is built once per type (and the codecs of its parts through these too).
_encoder = cached(_new_encoder)
_decoder = cached(_new_decoder)


# --- hints -------------------------------------------------------------------------------------


def _origin_and_args(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """What ``typing.get_origin`` and ``get_args`` give for the hints carried here, without
    importing ``typing`` (~3 ms of every warm ``privsep run``): ``X | None``'s origin is
    ``types.UnionType`` (also for a ``typing.Optional``), a generic's its ``__origin__``."""
    if isinstance(hint, types.UnionType):
        return types.UnionType, hint.__args__
    typing = sys.modules.get("typing")  # a typing.Optional hint: its module imported typing
    if typing is not None and getattr(hint, "__origin__", None) is typing.Union:
        return types.UnionType, hint.__args__
    return getattr(hint, "__origin__", None), getattr(hint, "__args__", ())


def _fields(cls: type[Record], codec: Callable[[Any], _C]) -> tuple[tuple[str, _C], ...]:
    """(name, codec) of each field of ``cls``, from its resolved type hint; a TypeError names
    the field whose type cannot be carried."""
    hints = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - inspect is not on a run's path
    namespace = vars(sys.modules[cls.__module__])
    out = []
    for name in cls.__slots__:
        try:
            if name not in hints:
                raise TypeError("a field without a type hint cannot be carried")
            out.append((name, codec(_resolved(hints[name], namespace))))
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.{name}: {exc}") from None
    return tuple(out)


def _resolved(hint: object, namespace: dict[str, Any]) -> Any:
    """A field's hint as a type: what ``typing.get_type_hints`` gives for it (a string hint is
    evaluated in its class's module), at a third of the cost, once per class and process (~1 ms
    of every warm ``privsep run``, which decodes its plan from the cache)."""
    return eval(hint, namespace) if isinstance(hint, str) else hint  # noqa: S307 - our own source's hints


def _optional_of(hint: Any, args: tuple[Any, ...]) -> Any:
    others = [a for a in args if a is not type(None)]
    if len(args) != 2 or len(others) != 1:
        raise TypeError(f"only X | None unions are carried, not {hint!r}")
    return others[0]
