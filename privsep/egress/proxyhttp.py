"""The HTTP proxy's side of one client connection, sans-IO: a request head in, what to do out.

Two kinds of request are served, one per connection:

- ``CONNECT host:port``: a tunnel. The broker decides the target, connects
  itself, answers :func:`connect_established` and relays bytes;
- absolute-form ``GET http://host[:port]/path``: plain HTTP, forwarded to the
  origin with a head rewritten by :func:`forward_head` (origin-form, hop-by-hop
  and ``Proxy-*`` headers dropped, ``Connection: close``, optionally a header
  whose value comes from a secret). Its body is exactly ``Content-Length``
  octets; after them the client may send nothing more (a second, pipelined
  request would reach the same origin unchecked: the broker closes instead).
  Bodies framed by ``Transfer-Encoding`` are not forwarded (501): the broker
  would have to parse the chunks to know where the request ends.

Strict, because a proxy that reads a request differently from the origin is
how a second host gets smuggled past it. Refused with 400: a line ending in a
bare LF, a bare CR anywhere, a header folded onto the next line (obs-fold),
whitespace between a header name and its colon, a control character in a
value, more than one Host header, a Host header naming another host or port
than the target, no Host header in an HTTP/1.1 request (HTTP/1.0 may omit it:
Python's http.client up to 3.11 sends ``CONNECT host:port HTTP/1.0`` without
one), ``Transfer-Encoding`` together with ``Content-Length``, more than one
``Content-Length``, a ``Connection`` header naming Host, Content-Length or
Transfer-Encoding (dropping those would change where the request ends), userinfo
in the authority, an origin-form or ``https://`` target (use CONNECT), a
fragment. A head over :data:`MAX_HEAD` octets or :data:`MAX_HEADERS` lines is
431. Versions other than HTTP/1.0 and 1.1 are 505.

Errors (:class:`HttpRefusal`) carry privsep's words and the ``--allow-connect``
hint in a plain-text body; they never echo the client's bytes, and the value
of an injected header appears in no error.

No ``407``: the proxy is reachable from one sandbox's network namespace only,
so it asks for no credentials (a 407 would make clients prompt for some).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from privsep.egress.target import Target, TargetError, parse_authority

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "HttpHeadParser",
    "HttpRefusal",
    "HttpRequest",
    "connect_established",
    "denied",
    "error_response",
    "forward_head",
    "reflected",
]

MAX_HEAD = 16 * 1024
"""Octets of a request head, its final empty line included."""
MAX_HEADERS = 100

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_VERSIONS = ("HTTP/1.0", "HTTP/1.1")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)
_FRAMING = frozenset({"host", "content-length", "transfer-encoding"})
_REFLECTING = frozenset({"TRACE", "TRACK"})
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: Target
    path: str
    """Origin-form path and query to forward ("/" at least); "" for CONNECT."""
    version: str
    headers: tuple[tuple[str, str], ...]
    """As received, in order; values without surrounding whitespace, octets kept (latin-1)."""
    body_length: int
    """Octets of body that follow the head (Content-Length); 0 for CONNECT."""
    rest: bytes
    """What the client sent after the head: the body's start (never more than ``body_length``
    octets: more is refused as pipelining), or early tunnel data. The broker forwards at most
    ``body_length`` octets in all, and closes the connection if the client sends more."""

    @property
    def connect(self) -> bool:
        return self.method == "CONNECT"


@dataclass(frozen=True)
class HttpRefusal:
    status: int
    message: str
    """privsep's words; never the client's bytes."""
    hint: str | None = None
    """The flag that would allow it, e.g. ``--allow-connect api.example.com:443``."""

    def response(self) -> bytes:
        return error_response(self.status, self.message, self.hint)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.refusal = HttpRefusal(status, message)


class HttpHeadParser:
    """Feed bytes as they arrive; one request head per connection.

    ``feed`` returns None while the head is incomplete, then an
    :class:`HttpRequest` or an :class:`HttpRefusal` (answer it, then close).
    """

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self._buffer = bytearray()
        self._checked = 0
        self._max = max_head
        self._done = False

    def feed(self, data: bytes) -> HttpRequest | HttpRefusal | None:
        if self._done:
            raise RuntimeError("the head was already parsed: one request per connection")
        self._buffer += data
        try:
            end = self._find_end()
            if end is None:
                return None
            self._done = True
            return _parse(bytes(self._buffer[: end - 4]), bytes(self._buffer[end:]))
        except _Refused as refused:
            self._done = True
            return refused.refusal

    def _find_end(self) -> int | None:
        """Where the head ends (after its empty line), checking each line end once as it arrives."""
        buffer = self._buffer
        while True:
            newline = buffer.find(b"\n", self._checked)
            if newline < 0:
                self._checked = len(buffer)
                if len(buffer) > self._max:
                    raise _Refused(431, f"the request head is longer than {self._max} octets")
                return None
            if newline + 1 > self._max:
                raise _Refused(431, f"the request head is longer than {self._max} octets")
            if newline == 0 or buffer[newline - 1] != ord("\r"):
                raise _Refused(400, "a line ends in a bare LF; HTTP lines end in CRLF")
            self._checked = newline + 1
            if buffer[newline - 3 : newline + 1] == b"\r\n\r\n":
                return newline + 1


def _parse(head: bytes, rest: bytes) -> HttpRequest:
    if b"\r" in head.replace(b"\r\n", b""):
        raise _Refused(400, "a bare CR in the request head")
    lines = head.split(b"\r\n")
    if len(lines) - 1 > MAX_HEADERS:
        raise _Refused(431, f"more than {MAX_HEADERS} header lines")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        raise _Refused(400, "the request line is not METHOD SP TARGET SP HTTP/1.1")
    method, target_text, version = (part.decode("ascii") for part in line.groups())
    if version not in _VERSIONS:
        raise _Refused(505, "only HTTP/1.1 and HTTP/1.0 are served")
    headers = tuple(_header(raw) for raw in lines[1:])
    hosts = _values(headers, "host")
    if len(hosts) > 1:
        raise _Refused(400, "more than one Host header")
    if not hosts and version == "HTTP/1.1":
        raise _Refused(400, "an HTTP/1.1 request without a Host header")
    _check_connection(headers)
    lengths = _values(headers, "content-length")
    codings = _values(headers, "transfer-encoding")
    if lengths and codings:
        raise _Refused(400, "both Transfer-Encoding and Content-Length: the request's end would be ambiguous")
    if len(lengths) > 1:
        raise _Refused(400, "more than one Content-Length header")
    try:
        if method == "CONNECT":
            if lengths or codings:
                raise _Refused(400, "a CONNECT request carries no content")
            target, path, body = parse_authority(target_text, None), "", 0
        else:
            if codings:
                raise _Refused(
                    501, "request bodies framed by Transfer-Encoding are not forwarded; send Content-Length"
                )
            target, path = _absolute_form(target_text)
            body = _content_length(lengths[0]) if lengths else 0
            if len(rest) > body:
                raise _Refused(
                    400, "a second request after the first (pipelining): one request per connection"
                )
        if hosts:
            default = target.port if method == "CONNECT" else 80
            named = parse_authority(hosts[0], default)
            if (named.host, named.port) != (target.host, target.port):
                raise _Refused(400, "the Host header names another host or port than the request target")
    except TargetError as exc:
        raise _Refused(400, str(exc)) from None
    return HttpRequest(method, target, path, version, headers, body, rest)


def _header(raw: bytes) -> tuple[str, str]:
    if raw[:1] in (b" ", b"\t"):
        raise _Refused(400, "a header folded onto a continuation line (obs-fold)")
    name, colon, value = raw.partition(b":")
    if not colon:
        raise _Refused(400, "a header line without ':'")
    if name != name.rstrip(b" \t"):
        raise _Refused(400, "whitespace between a header name and its ':'")
    if not _TOKEN.fullmatch(name):
        raise _Refused(400, "a header name that is not a token")
    value = value.strip(b" \t")
    if not _FIELD_VALUE.fullmatch(value):
        raise _Refused(400, "a control character in a header value")
    return name.decode("ascii"), value.decode("latin-1")


def _values(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def _connection_tokens(headers: tuple[tuple[str, str], ...]) -> set[str]:
    tokens = set()
    for value in _values(headers, "connection"):
        for item in value.split(","):
            token = item.strip(" \t").lower()
            if token:
                tokens.add(token)
    return tokens


def _check_connection(headers: tuple[tuple[str, str], ...]) -> None:
    for token in _connection_tokens(headers):
        if not _TOKEN.fullmatch(token.encode("latin-1")):
            raise _Refused(400, "the Connection header lists something that is not a header name")
        if token in _FRAMING:
            raise _Refused(400, "the Connection header names Host, Content-Length or Transfer-Encoding")


def _content_length(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise _Refused(400, "Content-Length is not a decimal number")
    return int(text)


def _absolute_form(text: str) -> tuple[Target, str]:
    if text.startswith("/") or text == "*":
        raise _Refused(
            400, "this is a proxy: ask for the absolute URL (http://host/path), or CONNECT host:port"
        )
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise _Refused(400, "only http:// URLs are forwarded (and CONNECT host:port for anything else)")
    if scheme.lower() == "https":
        raise _Refused(400, "an https:// URL: ask for a tunnel with CONNECT host:443 (set HTTPS_PROXY)")
    if "#" in rest:
        raise _Refused(400, "a fragment (#) in the request target")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    return parse_authority(authority, 80), path if path.startswith("/") else "/" + path


def _check_injected(name: str, value: bytes) -> None:
    if not name.isascii() or not _TOKEN.fullmatch(name.encode("ascii")):
        raise ValueError("the header name to inject is not a token")
    if name.lower() in _HOP_BY_HOP or name.lower().startswith("proxy-") or name.lower() in _FRAMING:
        raise ValueError("the header to inject is one the proxy itself sets or drops")
    if not _FIELD_VALUE.fullmatch(value) or value != value.strip(b" \t"):
        raise ValueError(
            "the secret cannot be sent as a header value: it holds a control character (CR, LF, NUL...) "
            "or leading or trailing whitespace"
        )


def reflected(request: HttpRequest) -> HttpRefusal | None:
    """501 for a method whose answer is the request itself, when a header is to be injected into it.

    TRACE (and IIS's TRACK) asks the origin to send back the request as it
    received it (RFC 9110 9.3.8), injected header included: forwarded, the
    value would reach the sandbox, which must never hold it. Compared in any
    case: some origins read methods so.
    """
    if request.method.upper() not in _REFLECTING:
        return None
    return HttpRefusal(
        501, "TRACE is not forwarded to a host the proxy adds a header for: the answer would carry it back"
    )


def forward_head(request: HttpRequest, inject: tuple[str, bytes] | None = None) -> bytes:
    """The head to send the origin for a plain-HTTP request, with ``inject`` (name, secret value) set.

    The client's own header of that name is dropped: the origin sees the
    broker's value only, and the client never held it.
    """
    if request.connect:
        raise ValueError("a CONNECT request is tunnelled, not forwarded")
    if inject is not None:
        if reflected(request) is not None:
            raise ValueError("a TRACE request would carry the injected header back to the client")
        _check_injected(*inject)
    drop = _HOP_BY_HOP | _connection_tokens(request.headers)
    if inject is not None:
        drop |= {inject[0].lower()}
    lines = [
        f"{request.method} {request.path} {request.version}".encode("ascii"),
        f"Host: {request.target.host_header(80)}".encode("ascii"),
    ]
    for name, value in request.headers:
        lowered = name.lower()
        if lowered in drop or lowered.startswith("proxy-"):
            continue
        lines.append(f"{name}: {value}".encode("latin-1"))
    lines.append(f"Via: {request.version[5:]} privsep".encode("ascii"))
    if inject is not None:
        lines.append(inject[0].encode("ascii") + b": " + inject[1])
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def error_response(status: int, message: str, hint: str | None = None) -> bytes:
    """A complete response privsep sends instead of the origin's, then closes."""
    reason = _REASONS.get(status)
    if reason is None:
        raise ValueError(f"status {status} is not one the proxy sends")
    text = f"privsep: {message}\n"
    if hint is not None:
        text += f"privsep: to allow it, re-run with {hint}\n"
    body = text.encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def denied(target: Target, message: str, allow_flag: str | None) -> HttpRefusal:
    """403 for a policy denial; the hint names the target (validated, so safe to print)."""
    hint = f"{allow_flag} {target.authority()}" if allow_flag is not None else None
    return HttpRefusal(403, message, hint)


def connect_established() -> bytes:
    return b"HTTP/1.1 200 Connection established\r\n\r\n"
