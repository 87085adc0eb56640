"""Frozen records without ``dataclasses``: what a warm ``privsep run`` imports must be cheap.

A ``@dataclass`` costs its import (``dataclasses`` pulls in ``inspect``,
``ast``, ``dis`` and ``tokenize``: ~7 ms) and, on Python 3.11, an ``exec``
of its generated methods for every class (~0.7 ms each; the ~28 on the path
of ``privsep run -- /bin/true`` cost 17-25 ms of every run, issue 16). The
plan, the cgroup's description and the broker's records are :class:`Record`
instead: a class names its fields once, in ``__slots__`` (the order
``plan/wire.py`` carries them in), writes its own typed ``__init__`` whose
parameters are those names, and ends it with ``_assign(self, locals())``.
The base gives what ``@dataclass(frozen=True)`` gave: equality and a hash by
field values (same class only), a repr, :func:`replace`, and no assignment
after ``__init__`` (an AttributeError, as ``FrozenInstanceError`` is one).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _R = TypeVar("_R", bound="Record")

__all__ = ["Record", "replace", "setfield"]

#: ``object.__setattr__``: for the ``__init__`` of a record made once per request, which sets
#: each field by name instead of through :meth:`Record._assign`'s loop.
setfield = object.__setattr__
_set = setfield


class Record:
    """A frozen record: fields in ``__slots__``, values by ``__init__`` only (see the module)."""

    __slots__: tuple[str, ...] = ()

    def __init_subclass__(cls) -> None:
        # The fields are the class's own __slots__: a record made from another record would
        # silently leave the parent's fields out of equality, repr, replace and the wire.
        if cls.__bases__ != (Record,):
            raise TypeError(f"{cls.__name__}: a record derives from Record alone")
        super().__init_subclass__()

    def _assign(self, values: dict[str, Any]) -> None:
        """Set every field from ``values`` (``__init__``'s ``locals()``: its parameters are the fields)."""
        for name in self.__slots__:
            _set(self, name, values[name])

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.__slots__])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a {type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a {type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)  # the line above; for mypy
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        # copy and pickle would set the slots one by one, which __setattr__ refuses
        return (_rebuild, (type(self), self._values()))


def _rebuild(cls: type[_R], values: tuple[Any, ...]) -> _R:
    obj = object.__new__(cls)
    for name, value in zip(cls.__slots__, values, strict=True):
        _set(obj, name, value)
    return obj


def replace(obj: _R, /, **changes: Any) -> _R:
    """``obj`` with ``changes`` (field names to values), made through its class's ``__init__``."""
    values = {name: getattr(obj, name) for name in obj.__slots__}
    unknown = changes.keys() - values.keys()
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {', '.join(sorted(unknown))}")
    values.update(changes)
    return type(obj)(**values)
