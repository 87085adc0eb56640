"""The exception tree drawn in privsep/errors.py is the real one, and the public API exports it."""

from __future__ import annotations

import re

import privsep
from privsep import errors


def _drawn_tree() -> dict[str, str]:
    """child name -> parent name, read from the drawing in the module docstring."""
    assert errors.__doc__ is not None
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        match = re.match(r"^(\s*(?:[│ ]   )*)(?:[├└]── )?([A-Z][A-Za-z]+Error)\b", line)
        if not match:
            continue
        depth, name = len(match.group(1)) // 4 + (1 if "──" in line else 0), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def test_the_drawing_matches_the_classes() -> None:
    drawn = _drawn_tree()
    real = {
        name: cls.__mro__[1].__name__
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.PrivsepError) and cls is not errors.PrivsepError
    }
    assert drawn == real


def test_every_error_is_exported_and_denied_is_a_permission_error() -> None:
    for name in errors.__all__:
        assert getattr(privsep, name) is getattr(errors, name)
    assert issubclass(privsep.DeniedError, PermissionError)
    assert issubclass(privsep.ChildError, privsep.PrivsepError)
