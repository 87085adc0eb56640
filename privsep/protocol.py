"""The wire protocol between broker and child, sans-IO (docs/PROTOCOL.md is the spec).

This module only turns bytes into validated messages and messages into bytes; it
never touches a socket, a file descriptor or the clock, so every rule of the
protocol is testable in microseconds and the same code serves the broker and the
child. ``channel`` moves the bytes.

The broker treats every frame as hostile (DESIGN.md, "Rules the broker lives by"):
the size is checked before anything parses it, the parser is pydantic-core's
strict JSON parser (which bounds nesting depth), the models are strict, closed
and frozen, and nothing the peer sent ever comes back in an error text.

Each op has a request model (in the ``Request`` union), a result model
(``RESULT_MODELS``) and a fixed answer to "does a successful reply carry a file
descriptor?" (``OPS_WITH_FD``): exactly one if so, none otherwise, and an error
reply never carries any.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import Annotated, Any, Generic, Literal, NamedTuple, Protocol, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from privsep.errorcodes import ErrorCode
from privsep.errors import ChannelError, LocalProtocolError, RemoteProtocolError
from privsep.framing import (
    DATAGRAM_FRAMING,
    MAX_DATAGRAM,
    MAX_FDS,
    MAX_FRAME,
    decode_datagram,
    encode_datagram,
)

__all__ = [
    "ALLOW_FLAGS",
    "DATAGRAM_FRAMING",
    "LISTING_PAGE_BYTES",
    "MAX_CALL_MESSAGE",
    "MAX_CALL_TRACEBACK",
    "MAX_CALL_TYPE",
    "MAX_DATAGRAM",
    "MAX_FDS",
    "MAX_FRAME",
    "MAX_LISTDIR",
    "MAX_LISTING_OFFSET",
    "MAX_MESSAGE",
    "MAX_PATH",
    "OPEN_FLAGS",
    "OPS_WITH_FD",
    "RESULT_MODELS",
    "SECRET_NAME",
    "SUPPORTED_VERSIONS",
    "AddressResult",
    "AllowFlag",
    "Answered",
    "Bind",
    "BrokerProtocol",
    "ClientProtocol",
    "Connect",
    "ConnectUnix",
    "EmptyResult",
    "ErrorCode",
    "ErrorInfo",
    "ErrorReply",
    "Hello",
    "HelloResult",
    "Listdir",
    "ListdirResult",
    "Mkdir",
    "OkReply",
    "Open",
    "OpenMode",
    "Ping",
    "Rename",
    "Reply",
    "Request",
    "Secret",
    "SecretResult",
    "Stat",
    "StatResult",
    "Unlink",
    "cut_message",
    "decode_datagram",
    "decode_reply",
    "describe_violation",
    "encode_datagram",
    "encode_request",
    "is_utf8",
    "listing_page",
    "parse_result",
    "reply_denied",
    "reply_error",
    "reply_ok",
]

#: Longest error message, in characters, a reply may carry.
MAX_MESSAGE = 1024
#: Protocol versions this side speaks, oldest first.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

# Strict: no "1" for 1, no 1.0 for 1, no true for 1. Closed: an unknown field is
# an error, not silently dropped, so a typo or a smuggled field never goes unseen.
# Frozen: a request checked against the policy cannot change afterwards.
_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)

#: Below 2**53 so that a peer storing numbers as doubles reads every id exactly.
RequestId = Annotated[int, Field(ge=0, lt=2**53)]
Version = Annotated[int, Field(ge=1, le=1000)]


class Hello(BaseModel):
    """The first request on every channel: the client lists the versions it speaks."""

    model_config = _STRICT

    id: RequestId
    op: Literal["hello"] = "hello"
    versions: Annotated[tuple[Version, ...], Field(min_length=1, max_length=8)]


class Ping(BaseModel):
    """A no-op round trip: proves the broker is alive and answering."""

    model_config = _STRICT

    id: RequestId
    op: Literal["ping"] = "ping"


#: Longest path, in characters (PATH_MAX is 4096 bytes; the kernel checks bytes).
MAX_PATH = 4096
#: Most names one ``listdir`` result may hold (a frame is full long before).
MAX_LISTDIR = 100_000
#: The furthest page a ``listdir`` may ask for (names, in sorted order).
MAX_LISTING_OFFSET = 10_000_000
#: Bytes of names one ``listdir`` page may carry: a reply frame with room for the rest of it.
LISTING_PAGE_BYTES = 60_000

#: An absolute path, by the broker's rules; here only its shape: 1..4096 characters
#: and no NUL (a NUL is a violation: no system call can take it). Relative or
#: un-normalised paths pass this check and are *denied* by the broker.
WirePath = Annotated[str, Field(min_length=1, max_length=MAX_PATH, pattern=r"^[^\x00]*$")]
#: A host name or IP address literal, 1..253 characters (a DNS name's limit), no NUL.
Host = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[^\x00]*$")]
#: A secret's name, on the wire and in a policy's ``[secrets]`` table (one pattern for both;
#: match it with ``fullmatch``: ``$`` alone would let a trailing newline through).
SECRET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SecretName = Annotated[str, Field(min_length=1, max_length=64, pattern=SECRET_NAME.pattern)]
Port = Annotated[int, Field(ge=0, le=65535)]
#: Python's open() modes without "b"/"t": text or binary is the client's business.
OpenMode = Literal["r", "w", "a", "x", "r+", "w+", "a+", "x+"]
#: The flags the broker opens a file with, by mode (docs/PROTOCOL.md, ``open``); "w" and "a"
#: add O_CREAT when the grant has ``create`` too. The client checks the descriptor against them.
OPEN_FLAGS: Mapping[str, int] = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_WRONLY | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_APPEND,
    "a+": os.O_RDWR | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "x+": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}
SocketType = Literal["tcp", "udp"]


class Open(BaseModel):
    """Open a file; the reply carries the open descriptor (flags: docs/PROTOCOL.md)."""

    model_config = _STRICT

    id: RequestId
    op: Literal["open"] = "open"
    path: WirePath
    mode: OpenMode


class Stat(BaseModel):
    """``stat`` a path (following symlinks the policy allows)."""

    model_config = _STRICT

    id: RequestId
    op: Literal["stat"] = "stat"
    path: WirePath


class Listdir(BaseModel):
    """The names in a directory, without ``.`` and ``..``."""

    model_config = _STRICT

    id: RequestId
    op: Literal["listdir"] = "listdir"
    path: WirePath
    offset: Annotated[int, Field(ge=0, le=MAX_LISTING_OFFSET)] = 0
    """Where this page starts in the sorted listing: the ``next`` of the previous page."""


class Mkdir(BaseModel):
    """Create a directory (mode 0700)."""

    model_config = _STRICT

    id: RequestId
    op: Literal["mkdir"] = "mkdir"
    path: WirePath


class Unlink(BaseModel):
    """Remove a file (not a directory)."""

    model_config = _STRICT

    id: RequestId
    op: Literal["unlink"] = "unlink"
    path: WirePath


class Rename(BaseModel):
    """Rename ``src`` to ``dst``, replacing ``dst`` like os.rename."""

    model_config = _STRICT

    id: RequestId
    op: Literal["rename"] = "rename"
    src: WirePath
    dst: WirePath


class Connect(BaseModel):
    """Connect a TCP or UDP socket; the reply carries the connected socket."""

    model_config = _STRICT

    id: RequestId
    op: Literal["connect"] = "connect"
    host: Host
    port: Annotated[int, Field(ge=1, le=65535)]
    type: SocketType = "tcp"
    timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 10_000


class ConnectUnix(BaseModel):
    """Connect to a unix socket at a path; the reply carries the connected socket."""

    model_config = _STRICT

    id: RequestId
    op: Literal["connect_unix"] = "connect_unix"
    path: WirePath


class Bind(BaseModel):
    """Bind a TCP (then listening) or UDP socket; the reply carries it."""

    model_config = _STRICT

    id: RequestId
    op: Literal["bind"] = "bind"
    host: Host
    port: Port
    type: SocketType = "tcp"
    backlog: Annotated[int, Field(ge=1, le=4096)] = 128


class Secret(BaseModel):
    """A secret by name; the reply carries a sealed read-only memfd holding it."""

    model_config = _STRICT

    id: RequestId
    op: Literal["secret"] = "secret"
    name: SecretName


class CallArgs(BaseModel):
    """In a ``Sandbox.call`` child: the arguments of the function to run."""

    model_config = _STRICT

    id: RequestId
    op: Literal["call_args"] = "call_args"


#: The longest exception type name, message and traceback a ``Sandbox.call`` child reports.
MAX_CALL_TYPE, MAX_CALL_MESSAGE, MAX_CALL_TRACEBACK = 200, 4000, 32000


class CallFailure(BaseModel):
    """An exception raised by the called function, as text (never a pickled object)."""

    model_config = _STRICT

    type: Annotated[str, Field(min_length=1, max_length=MAX_CALL_TYPE)]
    message: Annotated[str, Field(max_length=MAX_CALL_MESSAGE)]
    traceback: Annotated[str, Field(max_length=MAX_CALL_TRACEBACK)]


class CallReturn(BaseModel):
    """In a ``Sandbox.call`` child: what the function returned (JSON), or how it failed."""

    model_config = _STRICT

    id: RequestId
    op: Literal["call_return"] = "call_return"
    value: JsonValue = None
    error: CallFailure | None = None


#: Every request a child may send. A new op is one more model in this union.
Request = Annotated[
    Hello
    | Ping
    | Open
    | Stat
    | Listdir
    | Mkdir
    | Unlink
    | Rename
    | Connect
    | ConnectUnix
    | Bind
    | Secret
    | CallArgs
    | CallReturn,
    Field(discriminator="op"),
]
_REQUEST_MODELS: tuple[type[BaseModel], ...] = get_args(get_args(Request)[0])
_REQUESTS: TypeAdapter[Request] = TypeAdapter(Request)


#: The command-line flag that would have allowed a denied request (DESIGN.md, "Public contract").
AllowFlag = Literal["--allow-read", "--allow-write", "--allow-connect", "--allow-bind", "--secret"]
ALLOW_FLAGS: frozenset[str] = frozenset(get_args(AllowFlag))


class ErrorInfo(BaseModel):
    """The ``error`` member of an error reply.

    ``allow`` (denials only) names the flag that would allow the request; the
    broker never says with what value, since that would echo the request: the
    client, which knows what it asked, composes the hint.
    """

    model_config = _STRICT

    code: ErrorCode
    message: Annotated[str, Field(max_length=MAX_MESSAGE)]
    allow: AllowFlag | None = None

    @model_validator(mode="after")
    def _allow_only_on_denials(self) -> ErrorInfo:
        if self.allow is not None and self.code is not ErrorCode.DENIED:
            raise ValueError("allow is only valid with code denied")
        return self


class OkReply(BaseModel):
    """A successful reply; ``result`` is validated further by the op's result model."""

    model_config = _STRICT

    id: RequestId
    ok: Literal[True]
    result: dict[str, Any]


class ErrorReply(BaseModel):
    """A failed request; ``id`` is null when the broker would not trust the frame's id."""

    model_config = _STRICT

    id: RequestId | None
    ok: Literal[False]
    error: ErrorInfo


def _reply_tag(reply: Any) -> str | None:
    """Pick the reply model by ``ok``, which must be a JSON boolean.

    A plain ``Literal[True]`` discriminator would also take ``1`` for ``true``:
    pydantic compares literals by equality, even in strict mode.
    """
    ok = reply.get("ok") if isinstance(reply, dict) else None
    if ok is True:
        return "ok"
    if ok is False:
        return "error"
    return None


Reply = Annotated[
    Annotated[OkReply, Tag("ok")] | Annotated[ErrorReply, Tag("error")],
    Discriminator(_reply_tag),
]
_REPLIES: TypeAdapter[Reply] = TypeAdapter(Reply)


class HelloResult(BaseModel):
    """The result of ``hello``: the version chosen and the limits the broker applies."""

    model_config = _STRICT

    version: Version
    broker: Annotated[str, Field(max_length=100)]
    max_frame: Annotated[int, Field(ge=1)]


class EmptyResult(BaseModel):
    """The result of an op that returns nothing but success (and maybe its descriptor)."""

    model_config = _STRICT


_U32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
_U64 = Annotated[int, Field(ge=0, le=2**64 - 1)]
_I64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class StatResult(BaseModel):
    """The result of ``stat``: the fields of struct stat a Python os.stat_result needs.

    ``ino`` and ``dev`` may exceed 2**53: a C client parses them as 64-bit integers.
    """

    model_config = _STRICT

    mode: _U32
    ino: _U64
    dev: _U64
    nlink: _U64
    uid: _U32
    gid: _U32
    size: Annotated[int, Field(ge=0, le=2**63 - 1)]
    atime_ns: _I64
    mtime_ns: _I64
    ctime_ns: _I64


#: One directory entry: 1..255 characters (NAME_MAX is 255 bytes), no "/" and no NUL.
DirName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^/\x00]+$")]


class ListdirResult(BaseModel):
    """The result of ``listdir``: the entries, in no particular order."""

    model_config = _STRICT

    names: Annotated[tuple[DirName, ...], Field(max_length=MAX_LISTDIR)]
    next: Annotated[int, Field(ge=1, le=MAX_LISTING_OFFSET)] | None = None
    """More names follow: ask again with this ``offset``. None: this page ends the listing."""


def is_utf8(text: str) -> bool:
    """``text`` (a path or name decoded with surrogateescape) was valid UTF-8: the wire is UTF-8 text."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def listing_page(names: Sequence[str], offset: int) -> tuple[list[str], int | None]:
    """The page of sorted ``names`` starting at ``offset`` that fits a reply frame, and the next offset.

    Sized by each name's encoded JSON (a control character costs six bytes), so a
    page always fits; every page holds at least one name while any remain.
    """
    page: list[str] = []
    used = 0
    for index in range(offset, len(names)):
        size = len(json.dumps(names[index], ensure_ascii=False).encode()) + 1
        if page and (used + size > LISTING_PAGE_BYTES or len(page) >= MAX_LISTDIR):
            return page, index
        page.append(names[index])
        used += size
    return page, None


class AddressResult(BaseModel):
    """The result of ``connect`` (the peer's address) and ``bind`` (the bound address)."""

    model_config = _STRICT

    address: tuple[Annotated[str, Field(min_length=1, max_length=64)], Port]


class SecretResult(BaseModel):
    """The result of ``secret``: the size in bytes of the memfd that comes with it."""

    model_config = _STRICT

    size: Annotated[int, Field(ge=0, lt=2**53)]


class CallArgsResult(BaseModel):
    """The arguments of a ``Sandbox.call``: JSON values only, validated on arrival."""

    model_config = _STRICT

    function: Annotated[str, Field(min_length=3, max_length=512)]
    args: list[JsonValue]
    kwargs: dict[str, JsonValue]


#: The result model of each op's successful reply.
RESULT_MODELS: Mapping[str, type[BaseModel]] = {
    "call_args": CallArgsResult,
    "call_return": EmptyResult,
    "hello": HelloResult,
    "ping": EmptyResult,
    "open": EmptyResult,
    "stat": StatResult,
    "listdir": ListdirResult,
    "mkdir": EmptyResult,
    "unlink": EmptyResult,
    "rename": EmptyResult,
    "connect": AddressResult,
    "connect_unix": EmptyResult,
    "bind": AddressResult,
    "secret": SecretResult,
}
#: The ops whose successful reply carries exactly one file descriptor; every
#: other reply, and every error reply, carries none.
OPS_WITH_FD: frozenset[str] = frozenset({"open", "connect", "connect_unix", "bind", "secret"})
#: The models pydantic-core serialises to exactly the bytes ``_json`` makes of their dump
#: (tests/unit/test_protocol.py checks it), so a frame needs no Python-level dump: every
#: model but those with a JSON value in them, where pydantic would write NaN as null
#: and ``_json`` refuses it.
_SERIALISED: frozenset[type[BaseModel]] = frozenset(
    {*_REQUEST_MODELS, *RESULT_MODELS.values()} - {CallReturn, CallArgsResult}
)

# Names a violation summary may repeat: field names and op tags are ours, so
# repeating them leaks nothing; any other string in a location came from the peer.
_MODELS: tuple[type[BaseModel], ...] = (
    *_REQUEST_MODELS,
    ErrorInfo,
    OkReply,
    ErrorReply,
    *RESULT_MODELS.values(),
)
_KNOWN_NAMES = frozenset(
    {name for model in _MODELS for name in model.model_fields}
    | {tag for model in _REQUEST_MODELS for tag in get_args(model.model_fields["op"].annotation)}
)
_MAX_DESCRIPTION = 200
_MAX_REPORTED_ERRORS = 3


def describe_violation(exc: ValidationError) -> str:
    """Summarise a validation failure in words safe to send back to the peer.

    pydantic's own text quotes the input, and the input is the attacker's. This
    uses only error types (fixed identifiers) and locations, where any string we
    did not define ourselves becomes ``?``.
    """
    return _describe(
        [
            (e["loc"], e["type"])
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
    )


def _describe(errors: Sequence[tuple[tuple[int | str, ...], str]]) -> str:
    """``describe_violation`` of (location, error type) pairs."""
    parts = []
    for where, kind in errors:
        loc = ".".join(str(p) if isinstance(p, int) or p in _KNOWN_NAMES else "?" for p in where)
        parts.append(f"{loc}: {kind}" if loc else kind)
    text = "; ".join(parts[:_MAX_REPORTED_ERRORS])
    if len(parts) > _MAX_REPORTED_ERRORS:
        text += f"; {len(parts) - _MAX_REPORTED_ERRORS} more"
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 3] + "..."


class _Validator(Protocol):
    """A TypeAdapter's ``validator`` (pydantic-core's), called directly: TypeAdapter.validate_json
    is one more Python frame for every frame received."""

    def validate_json(self, data: bytes, /) -> Any: ...


def _decode(validator: _Validator, frame: bytes, what: str) -> Any:
    """Bound, then parse and validate one frame; raise a safe RemoteProtocolError."""
    if not frame:
        raise RemoteProtocolError(f"empty {what} frame")
    if len(frame) > MAX_FRAME:
        raise RemoteProtocolError(f"{what} frame larger than {MAX_FRAME} bytes")
    try:
        return validator.validate_json(frame)
    except ValidationError as exc:
        # "from None": the chained pydantic error quotes the peer's bytes, and
        # tracebacks end up in logs.
        raise RemoteProtocolError(f"invalid {what}: {describe_violation(exc)}") from None


# One encoder for every frame: json.dumps with these options would build a new one per call.
# Raw UTF-8 rather than \u escapes: a lone surrogate (os.fsdecode of a non-UTF-8
# name) then fails here instead of breaking the peer's parser.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


#: What _JSON.encode does with a str, without its Python frame (ensure_ascii=False).
_quote = json.encoder.encode_basestring


def _json(value: object) -> bytes:
    """``value`` as compact JSON; refuse what the peer's strict parser would refuse."""
    try:
        return _JSON.encode(value).encode()
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(
            "a frame may hold only JSON values: str, int, bool, None, list, dict with str keys; "
            "no NaN or infinity, no string that is not valid Unicode (lone surrogates)"
        ) from exc


def _bounded(frame: bytes) -> bytes:
    if len(frame) > MAX_FRAME:
        raise LocalProtocolError(f"frame of {len(frame)} bytes exceeds MAX_FRAME ({MAX_FRAME})")
    return frame


def _encode(message: Mapping[str, object]) -> bytes:
    """Serialise compactly; refuse what the peer's strict parser would refuse."""
    return _bounded(_json(message))


class _State(enum.Enum):
    AWAIT_HELLO = enum.auto()
    READY = enum.auto()
    BROKEN = enum.auto()


# The states as plain names: ``_State.READY`` goes through the enum's class lookup (~0.15 us)
# twice on every request the broker reads.
_READY, _BROKEN = _State.READY, _State.BROKEN


class BrokerProtocol:
    """The broker's side of one channel: a state machine fed with frames.

    ``hello`` first and exactly once; any violation breaks the channel for
    good (OpenSSH's monitor does the same: a peer that broke the protocol once
    is not given a second chance to probe). The caller sends
    ``reply_error(None, ErrorCode.INVALID, str(exc))``, closes the channel and
    kills the child.
    """

    def __init__(self, broker_version: str) -> None:
        self._broker_version = broker_version
        self._state = _State.AWAIT_HELLO
        #: The negotiated protocol version, once ``hello`` was received.
        self.version: int | None = None

    def receive(self, frame: bytes) -> Request:
        """Validate one frame from the child and return the request it holds.

        Raises RemoteProtocolError, with a reason safe to send back, on any
        violation, and on every call after one.
        """
        state = self._state
        if state is _BROKEN:
            raise RemoteProtocolError("the channel already broke the protocol and must be closed")
        try:
            request: Request = _decode(_REQUESTS.validator, frame, "request")
            if state is _READY and type(request) not in _CHECKED_FURTHER:
                return request  # most requests: _advance has nothing to check
            return self._advance(request)
        except RemoteProtocolError:
            self._state = _BROKEN
            raise

    def _advance(self, request: Request) -> Request:
        if self._state is _State.AWAIT_HELLO:
            if not isinstance(request, Hello):
                raise RemoteProtocolError("the first request must be 'hello'")
            common = set(request.versions).intersection(SUPPORTED_VERSIONS)
            if not common:
                raise RemoteProtocolError(
                    f"no protocol version in common; this broker speaks {list(SUPPORTED_VERSIONS)}"
                )
            self.version = max(common)
            self._state = _State.READY
        elif type(request) is Hello:  # an exact type: isinstance would run ABCMeta's check per request
            raise RemoteProtocolError("'hello' may be sent only once")
        elif type(request) is CallReturn and not _finite(request.value):
            # pydantic's JSON parser reads NaN, Infinity and 1e999; JSON has none of them
            # (docs/PROTOCOL.md), and the host's Sandbox.call must not be handed one.
            raise RemoteProtocolError("a call_return value holds NaN or Infinity, which JSON does not have")
        return request

    def hello_result(self) -> dict[str, Any]:
        """The result to answer the ``hello`` that ``receive`` just returned."""
        if self.version is None:
            raise LocalProtocolError("hello_result() called before a valid 'hello' was received")
        return HelloResult(
            version=self.version, broker=f"privsep {self._broker_version}", max_frame=MAX_FRAME
        ).model_dump()


#: The requests ``_advance`` checks beyond their model once the channel is ready.
_CHECKED_FURTHER = frozenset({Hello, CallReturn})


def _finite(value: JsonValue) -> bool:
    """No NaN or infinite float anywhere in ``value`` (walked without recursion: it may be deep)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is float:
            if not math.isfinite(item):
                return False
        elif type(item) is list:
            pending.extend(item)
        elif type(item) is dict:
            pending.extend(item.values())
    return True


#: A successful reply with an empty result (open, ping, mkdir...): the most common frame by far,
#: built from bytes (tests/unit/test_protocol.py checks them against the general encoding).
_OK_EMPTY = b'{"id":%d,"ok":true,"result":{}}'


def reply_ok(request: Request, result: Mapping[str, object] | BaseModel) -> bytes:
    """Encode the success reply to ``request``; ``result`` must fit the op's result model.

    A mapping is checked the way the client will check it (``RESULT_MODELS``),
    from the very bytes sent, so a broker bug is a LocalProtocolError here
    rather than a dead child there. An empty one for an op whose result is
    ``EmptyResult`` fits by construction, and so does an instance of the op's
    result model (validated when it was built): neither is checked again.
    Attach the descriptor, for an op in ``OPS_WITH_FD``, when sending the frame.
    """
    model = RESULT_MODELS[request.op]
    if model is EmptyResult and type(result) is dict and not result:
        return _OK_EMPTY % request.id
    if isinstance(result, BaseModel):
        if type(result) is model and model in _SERIALISED:
            body = result.__pydantic_serializer__.to_json(result)
            return _bounded(b'{"id":%d,"ok":true,"result":%b}' % (request.id, body))
        result = result.model_dump(mode="json")
    body = _json(dict(result))
    try:
        model.__pydantic_validator__.validate_json(body)
    except ValidationError as exc:
        raise LocalProtocolError(
            f"the result of {request.op!r} does not fit {model.__name__}: {describe_violation(exc)}"
        ) from None
    return _bounded(b'{"id":%d,"ok":true,"result":%b}' % (request.id, body))


def cut_message(message: str) -> str:
    """``message`` within MAX_MESSAGE characters: cut, with an ellipsis, never refused.

    A denial names rules by their paths, which a policy may make long; a reply
    that cannot be sent would take the whole run down with it.
    """
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "\u2026"


def reply_error(request_id: int | None, code: ErrorCode, message: str) -> bytes:
    """Encode an error reply; ``message`` must be a fixed text of the broker's, never peer input."""
    message = cut_message(message)
    return _encode({"id": request_id, "ok": False, "error": {"code": code.value, "message": message}})


def reply_denied(request_id: int, message: str, allow_flag: str | None) -> bytes:
    """Encode a ``denied`` reply, naming the flag that would allow the request, if any.

    ``message`` says which rule decided, in the policy's terms, never with the
    child's input (no path, no host); ``allow_flag`` is one of ``ALLOW_FLAGS``
    or None. The client adds the flag's value from what it asked.
    """
    error: dict[str, object] = {"code": ErrorCode.DENIED.value, "message": cut_message(message)}
    if allow_flag is not None:
        if allow_flag not in ALLOW_FLAGS:
            raise LocalProtocolError(f"allow_flag must be one of {sorted(ALLOW_FLAGS)} or None")
        error["allow"] = allow_flag
    return _encode({"id": request_id, "ok": False, "error": error})


def encode_request(request: Request) -> bytes:
    """Encode a request (the child's side)."""
    return _encode_request(request, request.id)


_NOT_ID = {"id"}  # never changed: pydantic-core only reads it


def _encode_request(request: Request, request_id: int) -> bytes:
    """``request`` as it is sent with the id ``request_id``: no copy of the model for a new id."""
    if type(request) in _SERIALISED:
        # The id leads every request ({"id":N,"op":...}): serialise the rest and put it in front.
        rest = request.__pydantic_serializer__.to_json(request, exclude=_NOT_ID)
        return _bounded(b'{"id":%d,%b' % (request_id, rest[1:]))
    return _encode({**request.model_dump(mode="json"), "id": request_id})


#: Makes the NamedTuples of every request and reply with tuple's own constructor: a NamedTuple's
#: __new__ is a Python-level function.
_new = tuple.__new__


class Prepared(NamedTuple):
    """A request checked and encoded without a model: ``ClientProtocol.send`` puts its id in front."""

    op: str
    rest: bytes  # the frame after its id: b',"op":...}'


def prepare_open(path: str, mode: str) -> Prepared | None:
    """``Open(path=path, mode=mode)``, ready to send, without building the model: most requests.

    The same checks the model makes (``WirePath``: a str of 1 to MAX_PATH characters, no
    NUL, valid Unicode; ``OpenMode``), made directly; None when one fails, and the
    caller builds the model to say which. The frame is what the broker's model reads
    as that request (tests/unit/test_protocol.py checks them against each other).
    """
    if type(path) is not str or type(mode) is not str or mode not in OPEN_FLAGS:
        return None
    if not 0 < len(path) <= MAX_PATH or "\x00" in path:
        return None
    try:
        quoted = _quote(path).encode()  # raw UTF-8, as _json writes every frame
    except UnicodeEncodeError:  # a lone surrogate: not valid Unicode
        return None
    return _new(Prepared, ("open", b',"op":"open","path":%b,"mode":"%b"}' % (quoted, mode.encode())))


def decode_reply(frame: bytes) -> Reply:
    """Bound, parse and validate a reply (the child's side): the broker is checked too."""
    result: Reply = _decode(_REPLIES.validator, frame, "reply")
    return result


_M = TypeVar("_M", bound=BaseModel)


def parse_result(model: type[_M], result: Mapping[str, Any]) -> _M:
    """Validate a reply's ``result`` against the op's result model (the child's side).

    ``result`` came from ``decode_reply``, so it is plain JSON data; it is checked
    the way the JSON would be (a list is a valid tuple). Raises RemoteProtocolError.
    """
    try:
        return model.model_validate_json(json.dumps(dict(result), ensure_ascii=False))
    except ValidationError as exc:
        raise RemoteProtocolError(f"invalid {model.__name__}: {describe_violation(exc)}") from None


class Answered(NamedTuple):
    """A successful reply: the op's result model, and the descriptor it carried (the caller's to close)."""

    result: BaseModel
    fd: int | None


_R = TypeVar("_R", bound=BaseModel)


class TypedOkReply(BaseModel, Generic[_R]):
    """A successful reply to a known op: ``result`` is its result model, checked in the same pass."""

    model_config = _STRICT

    id: RequestId
    ok: Literal[True]
    result: _R


@cache
def _typed_replies(model: type[BaseModel]) -> _Validator:
    """The replies to an op whose result is ``model``: built on first use (a child uses a few)."""
    ok = TypedOkReply[model]  # type: ignore[valid-type]
    return TypeAdapter(
        Annotated[Annotated[ok, Tag("ok")] | Annotated[ErrorReply, Tag("error")], Discriminator(_reply_tag)]
    ).validator


_RESULT_LOC = ("ok", "result")


def _decode_typed(model: type[BaseModel], frame: bytes) -> Any:
    """A reply whose result must be ``model``, bound, parsed and validated once; RemoteProtocolError.

    A reply whose only fault is in its result is reported in the result model's
    terms ("invalid StatResult: size: missing"), as ``parse_result`` reports it.
    """
    if not frame:
        raise RemoteProtocolError("empty reply frame")
    if len(frame) > MAX_FRAME:
        raise RemoteProtocolError(f"reply frame larger than {MAX_FRAME} bytes")
    try:
        return _typed_replies(model).validate_json(frame)
    except ValidationError as exc:
        errors = [
            (e["loc"], e["type"])
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        if all(loc[:2] == _RESULT_LOC for loc, _ in errors):
            detail = _describe([(loc[2:], kind) for loc, kind in errors])
            raise RemoteProtocolError(f"invalid {model.__name__}: {detail}") from None
        raise RemoteProtocolError(f"invalid reply: {_describe(errors)}") from None


class ClientProtocol:
    """The child's side of one channel, without I/O: ids, ``hello``, typed results, the broken state.

    Like h11's connection, every failure goes through one place: after a
    reply that breaks the protocol (``receive`` raises RemoteProtocolError),
    after a transport failure between a request and its reply (``lost``), or
    after a descriptor of the wrong kind (``checking``), the channel is broken
    for good and ``send`` refuses with the first reason. A request whose reply
    was missed would otherwise be answered by the next one's.

    Each reply is validated once, with the waiting op's result model inside
    the reply model. The reply most requests get, an empty result (``open``,
    ``ping``...), is recognised by its exact bytes: no other frame means it.
    """

    def __init__(self) -> None:
        self._next_id = 0
        self._waiting: str | None = None  # the op of the request sent, until its reply comes
        self._broken: str | None = None
        #: The negotiated protocol version, once ``hello`` was answered.
        self.version: int | None = None
        self.hello: HelloResult | None = None

    @property
    def broken(self) -> str | None:
        """Why the channel is unusable, or None."""
        return self._broken

    def send(self, request: Request | Prepared) -> bytes:
        """The frame for ``request`` (its id assigned here); one request in flight at a time."""
        if self._broken is not None:
            raise ChannelError(f"the channel to the broker is unusable: {self._broken}")
        if self._waiting is not None:
            raise LocalProtocolError("a request is already waiting for its reply")
        if (self.hello is None) != (type(request) is Hello):
            raise LocalProtocolError("'hello' first, and only once")
        self._next_id += 1
        if isinstance(request, Prepared):  # a NamedTuple: no ABCMeta check, unlike a model
            frame = _bounded(b'{"id":%d%b' % (self._next_id, request.rest))
        else:
            frame = _encode_request(request, self._next_id)
        self._waiting = request.op
        return frame

    def receive(self, frame: bytes, fds: Sequence[int]) -> Answered | ErrorInfo:
        """What the reply to the waiting request means; its descriptors stay the caller's to close.

        Raises RemoteProtocolError (and breaks the channel) when the reply breaks the protocol.
        An ``invalid`` error also breaks it: the broker closes the channel after sending one.
        """
        op, self._waiting = self._waiting, None
        if op is None:
            raise LocalProtocolError("receive() without a request waiting")
        if (
            op in _EMPTY_RESULT_OPS
            and frame == _OK_EMPTY % self._next_id
            and len(fds) == (1 if op in OPS_WITH_FD else 0)
        ):
            # Exactly the frame the broker sends for success, its id ours, with what it must carry.
            return _new(Answered, (_EMPTY_RESULT, fds[0] if fds else None))
        try:
            return self._interpret(op, frame, fds)
        except RemoteProtocolError as exc:
            self._broken = str(exc)
            raise

    def _interpret(self, op: str, frame: bytes, fds: Sequence[int]) -> Answered | ErrorInfo:
        reply = _decode_typed(RESULT_MODELS[op], frame)
        nfds = len(fds)
        # A null id answers a frame whose id the broker would not trust (code "invalid").
        if reply.id is not None and reply.id != self._next_id:
            raise RemoteProtocolError("the reply's id does not match the request's")
        if isinstance(reply, ErrorReply):
            if nfds:
                raise RemoteProtocolError("the broker attached file descriptors to an error reply")
            if reply.error.code is ErrorCode.INVALID:
                self._broken = "the broker found a protocol violation and closed the channel"
            return reply.error
        if reply.id is None:
            raise RemoteProtocolError("a successful reply without an id")
        result = reply.result
        expected = 1 if op in OPS_WITH_FD else 0
        if nfds != expected:
            if expected:
                raise RemoteProtocolError(
                    f"the reply to {op!r} must carry exactly one file descriptor, it carried {nfds}"
                )
            raise RemoteProtocolError(f"the broker attached file descriptors to a reply to {op!r}")
        if isinstance(result, HelloResult):
            if result.version not in SUPPORTED_VERSIONS:
                raise RemoteProtocolError("the broker chose a protocol version this client did not offer")
            self.version, self.hello = result.version, result
        return Answered(result, fds[0] if expected else None)

    def lost(self, reason: str) -> None:
        """The transport failed between a request and its reply: the channel cannot be trusted again."""
        self._waiting = None
        if self._broken is None:
            self._broken = reason

    @contextlib.contextmanager
    def checking(self) -> Iterator[None]:
        """Around the caller's checks of a received descriptor (the kind an op promises): a
        RemoteProtocolError raised there breaks the channel, as one from ``receive`` does."""
        try:
            yield
        except RemoteProtocolError as exc:
            self.lost(str(exc))
            raise


_EMPTY_RESULT = EmptyResult()
_EMPTY_RESULT_OPS = frozenset(op for op, model in RESULT_MODELS.items() if model is EmptyResult)
