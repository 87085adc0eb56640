"""JSON through the interpreter's own C codec (``_json``), without importing the ``json`` package.

Why (issue 16): ``json`` imports ``re`` for its pure-Python fallbacks, and
``re`` imports ``enum`` and ``functools``: about 3 ms of every warm
``privsep run -- /bin/true``, which reads its plan from the cache, decodes
the key's inputs and talks to the sandbox's init in JSON. The C scanner and
encoder here are the ones ``json.loads`` and ``json.dumps`` use whenever
they can; what this module leaves out is only what privsep never writes:
whitespace around a document, NaN and the infinities (refused both ways),
and the pretty-printing options.

Text written by ``json.dumps`` with its defaults (or ``separators=(",", ":")``)
reads back here, and text written here reads back with ``json.loads``:
``tests/unit/test_jsontext.py`` holds the two to each other.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["dumps", "loads"]


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _not_json(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} is not JSON")


class _Scanning:
    """What ``_json.make_scanner`` reads from its context: ``json.JSONDecoder``'s defaults, and
    NaN and the infinities refused, as no JSON holds them."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constant)


_scan = _json.make_scanner(_Scanning())  # type: ignore[arg-type]  # the context is duck-typed
# markers {} (not None): a container inside itself is a ValueError, as with json.dumps
_encode = _json.make_encoder(
    {}, _not_json, _json.encode_basestring_ascii, None, ":", ",", False, False, False
)


def loads(data: str | bytes) -> Any:
    """The value ``data`` holds: one JSON document with nothing around it; ValueError if it is
    not one (bytes must be UTF-8)."""
    text = data.decode() if isinstance(data, bytes) else data
    try:
        value, end = _scan(text, 0)
    except StopIteration as stop:
        raise ValueError(f"not JSON at offset {stop.value}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if end != len(text):
        raise ValueError(f"not JSON: extra data at offset {end}")
    return value


def dumps(obj: object) -> str:
    """``obj`` as compact JSON (``json.dumps(obj, separators=(",", ":"), allow_nan=False)``);
    TypeError for what JSON cannot hold, ValueError for NaN, an infinity or a cycle."""
    if isinstance(obj, str):  # the encoder takes containers and numbers; a bare string is its own case
        return _json.encode_basestring_ascii(obj)
    return "".join(_encode(obj, 0))
