"""Fuzz the broker's frame decoder (``BrokerProtocol.receive``) with whatever a hostile child could send.

Each input is tried as one frame on a fresh channel and on one past its
``hello``, and, split at ``\\xfe\\xfe``, as a sequence of frames on one
channel. Its text is also planted, behind a marker, in each field of a
well-formed request. The properties:

- ``receive`` returns a validated request or raises ``RemoteProtocolError``,
  never anything else;
- an accepted frame is at most ``MAX_FRAME`` bytes and re-encodes to the same request;
- a violation's text is built from the broker's own words only: a fixed
  sentence, or ``invalid request:`` followed by locations made of field
  names, indexes and ``?``, and pydantic error types (so it cannot echo the
  input, whatever the input is), and the marker never appears in it;
- after a violation the channel stays broken.

``python -m fuzz.protocol_fuzz --runs N`` (or ``python -m fuzz`` for every harness).
"""

from __future__ import annotations

import json
import re
import sys

from fuzz._driver import instrumented, run, wants_plain

with instrumented(wants_plain()):
    from privsep import protocol
    from privsep.errors import RemoteProtocolError
    from privsep.protocol import MAX_FRAME, BrokerProtocol, Request, encode_request

MARKER = "QZFUZZMARK"
SEPARATOR = b"\xfe\xfe"
HELLO = b'{"id":1,"op":"hello","versions":[1]}'

_FIXED = {
    "empty request frame",
    f"request frame larger than {MAX_FRAME} bytes",
    "the first request must be 'hello'",
    "'hello' may be sent only once",
    "no protocol version in common; this broker speaks [1]",
    "the channel already broke the protocol and must be closed",
}
_NAMES = "|".join(sorted((re.escape(n) for n in protocol._KNOWN_NAMES), key=len, reverse=True))
_PART = rf"(?:{_NAMES}|\d+|\?)"
_SEGMENT = re.compile(rf"(?:{_PART}(?:\.{_PART})*: )?[a-z_]+|\d+ more")
_PREFIX = "invalid request: "


def check_message(text: str) -> None:
    """``text`` is made of the broker's own words (see the module docstring)."""
    assert MARKER not in text, text
    if text in _FIXED:
        return
    assert text.startswith(_PREFIX), text
    segments = text[len(_PREFIX) :].split("; ")
    if segments[-1].endswith("..."):  # describe_violation cuts long summaries
        assert re.fullmatch(r"[A-Za-z0-9_.?: ]*", segments.pop()[:-3]), text
    for segment in segments:
        assert _SEGMENT.fullmatch(segment), (segment, text)


def receive(proto: BrokerProtocol, frame: bytes) -> Request | None:
    """The request, or None after checking the violation's text; anything else propagates."""
    try:
        request = proto.receive(frame)
    except RemoteProtocolError as exc:
        check_message(str(exc))
        return None
    assert 0 < len(frame) <= MAX_FRAME
    again = BrokerProtocol("fuzz")
    if not isinstance(request, protocol.Hello):
        again.receive(HELLO)
    assert again.receive(encode_request(request)) == request
    return request


def ready() -> BrokerProtocol:
    proto = BrokerProtocol("fuzz")
    proto.receive(HELLO)
    return proto


_TEMPLATES: list[dict[str | None, object]] = [
    {"id": 2, "op": "open", "path": None, "mode": "r"},
    {"id": 2, "op": "open", "path": "/x", "mode": None},
    {"id": 2, "op": "rename", "src": "/a", "dst": None},
    {"id": 2, "op": "connect", "host": None, "port": 443},
    {"id": 2, "op": "secret", "name": None},
    {"id": 2, "op": None},
    {"id": 2, "op": "ping", None: 1},
    {"id": None, "op": "ping"},
]


def planted(text: str) -> list[bytes]:
    """Well-formed requests with ``MARKER + text`` in one field (or as a key) each."""
    value = MARKER + text
    frames = []
    for template in _TEMPLATES:
        frame = {
            (value if key is None else key): (value if field is None else field)
            for key, field in template.items()
        }
        frames.append(json.dumps(frame).encode())
    return frames


def test_one_input(data: bytes) -> None:
    for proto in (BrokerProtocol("fuzz"), ready()):
        receive(proto, data)
    proto = BrokerProtocol("fuzz")
    broken = False
    for frame in data.split(SEPARATOR)[:16]:
        accepted = receive(proto, frame) is not None
        assert not (broken and accepted), "a broken channel accepted a frame"
        broken = broken or not accepted
    text = data[:512].decode("utf-8", "replace")
    for frame in planted(text):
        receive(ready(), frame)


SEEDS = [
    HELLO,
    b'{"id":2,"op":"ping"}',
    b'{"id":3,"op":"open","path":"/srv/data/x","mode":"r+"}',
    b'{"id":4,"op":"stat","path":"/srv"}',
    b'{"id":5,"op":"listdir","path":"/"}',
    b'{"id":6,"op":"rename","src":"/a","dst":"/b"}',
    b'{"id":7,"op":"connect","host":"db.internal","port":5432,"type":"tcp","timeout_ms":10000}',
    b'{"id":8,"op":"bind","host":"0.0.0.0","port":0,"type":"udp","backlog":1}',
    b'{"id":9,"op":"secret","name":"tls_key"}',
    b'{"id":10,"op":"connect_unix","path":"/run/s.sock"}',
    HELLO + SEPARATOR + b'{"id":2,"op":"ping"}' + SEPARATOR + b'{"id":3,"op":"mkdir","path":"/t"}',
]
TOKENS = [
    *(f'"{name}"'.encode() for name in sorted(protocol._KNOWN_NAMES)),
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"1e400",
    b"-0",
    b"9007199254740992",
    b"\\u0000",
    b"\\ud800",
    b"\xef\xbb\xbf",
    SEPARATOR,
]


def main() -> int:
    return run("protocol", test_one_input, SEEDS, TOKENS)


if __name__ == "__main__":
    sys.exit(main())
