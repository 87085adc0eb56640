"""confine/inside.py names a failed set-up's exception as traceback would, importing nothing."""

from __future__ import annotations

import traceback

import pytest

from privsep.confine.inside import _exception_line
from privsep.errors import PolicyError


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    "exc",
    [ValueError("x"), KeyError("k"), OSError(2, "gone"), PolicyError("p"), RuntimeError(), _Unprintable()],
)
def test_the_line_is_traceback_s_own(exc: BaseException) -> None:
    expected = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    assert _exception_line(exc) == expected
