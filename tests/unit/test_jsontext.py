"""privsep._jsontext against the json module: what one writes the other reads back, the same.

A warm ``privsep run`` reads the plan cache, the zygote's answers and the sandbox's control
reports with ``_jsontext`` (the C codec ``json`` uses, without importing ``json``); the cold
run writes the cache's policy with ``json.dumps``. Both ways must agree on every value privsep
keeps, and a malformed or hostile document (a control frame comes from inside the sandbox)
must be a ValueError, never another exception.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from privsep import _jsontext

_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(_VALUES)
def test_what_one_writes_the_other_reads(value: object) -> None:
    text = _jsontext.dumps(value)
    assert text == json.dumps(value, separators=(",", ":"), allow_nan=False)
    assert _jsontext.loads(text) == value
    assert _jsontext.loads(text.encode()) == value
    assert _jsontext.loads(json.dumps(value)) == value  # json's default separators too


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "[1,]",
        "[1] [2]",
        "NaN",
        '{"a": Infinity}',
        "-Infinity",
        '"\\x"',
        '"unterminated',
        "{'single': 1}",
        "[" * 100_000 + "]" * 100_000,  # deeper than the interpreter recurses
    ],
)
def test_what_is_not_one_json_document_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        _jsontext.loads(text)


def test_bytes_that_are_not_utf8_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        _jsontext.loads(b'"\xff"')


@pytest.mark.parametrize("value", [math.nan, math.inf, [math.inf], {"x": -math.inf}])
def test_nan_and_the_infinities_are_not_written(value: object) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        _jsontext.dumps(value)


@pytest.mark.parametrize("value", [b"bytes", object(), {1j: 2}, [set()]])
def test_what_json_cannot_hold_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        _jsontext.dumps(value)


def test_a_value_inside_itself_is_a_value_error() -> None:
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(ValueError, match="Circular"):
        _jsontext.dumps(looped)
