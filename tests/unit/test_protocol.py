"""The wire protocol, sans-IO: every rule of docs/PROTOCOL.md the broker enforces."""

from __future__ import annotations

import json
import re
import traceback
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from privsep import protocol
from privsep.errors import ChannelError, LocalProtocolError, RemoteProtocolError
from privsep.protocol import (
    MAX_FRAME,
    MAX_MESSAGE,
    AddressResult,
    Bind,
    BrokerProtocol,
    ClientProtocol,
    Connect,
    ConnectUnix,
    EmptyResult,
    ErrorCode,
    ErrorInfo,
    ErrorReply,
    Hello,
    HelloResult,
    Listdir,
    ListdirResult,
    Mkdir,
    OkReply,
    Open,
    Ping,
    Rename,
    Request,
    Secret,
    SecretResult,
    Stat,
    StatResult,
    Unlink,
    decode_reply,
    encode_request,
    listing_page,
    reply_denied,
    reply_error,
    reply_ok,
)

HELLO = b'{"id":0,"op":"hello","versions":[1]}'


def ready() -> BrokerProtocol:
    """A broker protocol past its hello."""
    proto = BrokerProtocol("9.9")
    proto.receive(HELLO)
    return proto


def violation(proto: BrokerProtocol, frame: bytes) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        proto.receive(frame)
    return str(info.value)


# --- the happy path ------------------------------------------------------------------------------


def test_hello_then_ping_exact_bytes() -> None:
    proto = BrokerProtocol("9.9")
    hello = proto.receive(b'{"id":7,"op":"hello","versions":[3,1]}')
    assert hello == Hello(id=7, versions=(3, 1))
    assert proto.version == 1
    assert reply_ok(hello, proto.hello_result()) == (
        b'{"id":7,"ok":true,"result":{"version":1,"broker":"privsep 9.9","max_frame":65536}}'
    )
    ping = proto.receive(b'{"id":8,"op":"ping"}')
    assert ping == Ping(id=8)
    assert reply_ok(ping, {}) == b'{"id":8,"ok":true,"result":{}}'


def test_negotiation_picks_the_highest_common_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "SUPPORTED_VERSIONS", (1, 2, 3))
    proto = BrokerProtocol("9.9")
    proto.receive(b'{"id":1,"op":"hello","versions":[2,7,3]}')
    assert proto.version == 3


def test_hello_result_validates_on_the_client_side() -> None:
    proto = ready()
    client = ClientProtocol()
    sent = client.send(Hello(id=0, versions=(1,)))
    request = BrokerProtocol("9.9").receive(sent)
    answer = client.receive(reply_ok(request, proto.hello_result()), ())
    assert isinstance(answer, protocol.Answered) and answer.fd is None
    assert answer.result == HelloResult(version=1, broker="privsep 9.9", max_frame=MAX_FRAME)
    assert client.version == 1 and client.hello == answer.result


def ready_client() -> ClientProtocol:
    """A ClientProtocol past hello (its next request gets id 2)."""
    client = ClientProtocol()
    client.send(Hello(id=0, versions=(1,)))
    client.receive(reply_ok(Hello(id=1, versions=(1,)), ready().hello_result()), ())
    return client


def test_the_client_sends_hello_first_and_one_request_at_a_time() -> None:
    client = ClientProtocol()
    with pytest.raises(LocalProtocolError):
        client.send(Ping(id=0))
    client = ready_client()
    with pytest.raises(LocalProtocolError):
        client.send(Hello(id=0, versions=(1,)))
    assert json.loads(client.send(Ping(id=0)))["id"] == 2
    with pytest.raises(LocalProtocolError):
        client.send(Ping(id=0))
    assert client.receive(b'{"id":2,"ok":true,"result":{}}', ()) == protocol.Answered(
        protocol.EmptyResult(), None
    )
    assert json.loads(client.send(Ping(id=0)))["id"] == 3


@pytest.mark.parametrize(
    ("request_", "frame", "nfds", "reason"),
    [
        (Ping(id=0), b'{"id":7,"ok":true,"result":{}}', 0, "id does not match"),
        (Ping(id=0), b'{"id":2,"ok":true,"result":{"x":1}}', 0, "invalid EmptyResult"),
        (Ping(id=0), b'{"id":2,"ok":true,"result":{}}', 1, "attached file descriptors"),
        (
            Open(id=0, path="/a", mode="r"),
            b'{"id":2,"ok":true,"result":{}}',
            0,
            "exactly one file descriptor",
        ),
        (
            Open(id=0, path="/a", mode="r"),
            b'{"id":2,"ok":true,"result":{}}',
            2,
            "exactly one file descriptor",
        ),
        (Ping(id=0), b'{"id":2,"ok":false,"error":{"code":"failed","message":"x"}}', 1, "error reply"),
        (Ping(id=0), b"not json", 0, "reply"),
    ],
)
def test_a_reply_that_breaks_the_protocol_breaks_the_channel_for_good(
    request_: Request, frame: bytes, nfds: int, reason: str
) -> None:
    client = ready_client()
    client.send(request_)
    with pytest.raises(RemoteProtocolError, match=reason):
        client.receive(frame, list(range(100, 100 + nfds)))
    assert client.broken is not None and reason.split(maxsplit=1)[0] in client.broken
    with pytest.raises(ChannelError, match="unusable"):
        client.send(Ping(id=0))


def test_a_version_the_client_did_not_offer_breaks_the_channel() -> None:
    client = ClientProtocol()
    client.send(Hello(id=0, versions=(1,)))
    with pytest.raises(RemoteProtocolError, match="did not offer"):
        client.receive(b'{"id":1,"ok":true,"result":{"version":9,"broker":"b","max_frame":65536}}', ())
    assert client.broken is not None


def test_a_transport_failure_or_a_bad_descriptor_breaks_the_channel() -> None:
    client = ready_client()
    client.send(Ping(id=0))
    client.lost("interrupted")
    with pytest.raises(ChannelError, match="interrupted"):
        client.send(Ping(id=0))
    client = ready_client()
    with pytest.raises(RemoteProtocolError, match="not a socket"), client.checking():
        raise RemoteProtocolError("not a socket")
    with pytest.raises(ChannelError, match="not a socket"):
        client.send(Ping(id=0))
    client = ready_client()
    with pytest.raises(OSError), client.checking():
        raise OSError("EBADF: not the broker's fault")  # only a protocol violation breaks it
    client.send(Ping(id=0))


def test_hello_result_before_hello_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        BrokerProtocol("9.9").hello_result()


def test_a_frame_of_exactly_max_frame_bytes_is_accepted() -> None:
    frame = HELLO + b" " * (MAX_FRAME - len(HELLO))
    assert len(frame) == MAX_FRAME
    assert BrokerProtocol("9.9").receive(frame) == Hello(id=0, versions=(1,))


ids = st.integers(min_value=0, max_value=2**53 - 1)


@given(ids, st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=8))
def test_hello_round_trip(request_id: int, versions: list[int]) -> None:
    hello = Hello(id=request_id, versions=(1, *versions[1:]))
    assert BrokerProtocol("9.9").receive(encode_request(hello)) == hello


@given(ids)
def test_ping_round_trip(request_id: int) -> None:
    assert ready().receive(encode_request(Ping(id=request_id))) == Ping(id=request_id)


def test_models_are_frozen() -> None:
    hello = Hello(id=1, versions=(1,))
    with pytest.raises(ValidationError):
        hello.id = 2


# --- violations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "empty request frame"),
        (HELLO + b" " * (MAX_FRAME + 1 - len(HELLO)), f"request frame larger than {MAX_FRAME} bytes"),
        (b'{"id":0,"op":"hello","versions":[1],"x":"\xff"}', "invalid request: json_invalid"),
        (b'{"id":0,"op":"hello","versions":[1]', "invalid request: json_invalid"),
        (b'{"id":0,"op":"hello","versions":[1]}{}', "invalid request: json_invalid"),
        (b'{"id":0,"op":"hello","versions":[1],"x":NaN}', "invalid request: hello.?: extra_forbidden"),
        (b"[1]", "invalid request: dict_type"),
        (b'"hello"', "invalid request: dict_type"),
        (b'{"id":"0","op":"hello","versions":[1]}', "invalid request: hello.id: int_type"),
        (b'{"id":0.0,"op":"hello","versions":[1]}', "invalid request: hello.id: int_type"),
        (b'{"id":false,"op":"hello","versions":[1]}', "invalid request: hello.id: int_type"),
        (b'{"id":-1,"op":"hello","versions":[1]}', "invalid request: hello.id: greater_than_equal"),
        (b'{"id":9007199254740992,"op":"hello","versions":[1]}', "invalid request: hello.id: less_than"),
        (b'{"op":"hello","versions":[1]}', "invalid request: hello.id: missing"),
        (b'{"id":0,"versions":[1]}', "invalid request: union_tag_not_found"),
        (b'{"id":0,"op":"HELLO","versions":[1]}', "invalid request: union_tag_invalid"),
        (b'{"id":0,"op":"hello","versions":[]}', "invalid request: hello.versions: too_short"),
        (
            b'{"id":0,"op":"hello","versions":[1,1,1,1,1,1,1,1,1]}',
            "invalid request: hello.versions: too_long",
        ),
        (b'{"id":0,"op":"hello","versions":[1,true]}', "invalid request: hello.versions.1: int_type"),
        (b'{"id":0,"op":"hello","versions":[1,1001]}', "invalid request: hello.versions.1: less_than_equal"),
        (b'{"id":0,"op":"hello","versions":"1"}', "invalid request: hello.versions: tuple_type"),
        (b'{"id":0,"op":"hello","versions":[2,3]}', "no protocol version in common; this broker speaks [1]"),
        (b'{"id":0,"op":"ping"}', "the first request must be 'hello'"),
    ],
)
def test_violations_before_hello(frame: bytes, reason: str) -> None:
    assert violation(BrokerProtocol("9.9"), frame) == reason


def test_nesting_depth_is_bounded() -> None:
    frame = b'{"id":0,"op":"hello","versions":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert violation(BrokerProtocol("9.9"), frame) == "invalid request: json_invalid"


def test_a_second_hello_is_a_violation() -> None:
    assert violation(ready(), HELLO) == "'hello' may be sent only once"


def test_unknown_fields_are_named_only_if_they_are_ours() -> None:
    reason = violation(ready(), b'{"id":1,"op":"ping","versions":[1],"password":1}')
    assert reason == "invalid request: ping.versions: extra_forbidden; ping.?: extra_forbidden"


def test_many_errors_are_counted_not_listed() -> None:
    frame = b'{"id":1,"op":"ping","a":1,"b":1,"c":1,"d":1,"e":1}'
    assert violation(ready(), frame) == (
        "invalid request: ping.?: extra_forbidden; ping.?: extra_forbidden; ping.?: extra_forbidden; 2 more"
    )


@pytest.mark.parametrize("bad", [b"", b"{}", b'{"id":1,"op":"ping"}' + b" " * MAX_FRAME, HELLO])
def test_one_violation_breaks_the_channel_for_good(bad: bytes) -> None:
    proto = ready()
    with pytest.raises(RemoteProtocolError):
        proto.receive(bad)
    assert (
        violation(proto, b'{"id":2,"op":"ping"}')
        == "the channel already broke the protocol and must be closed"
    )


# Every string the peer controls carries this canary; it must never reach an error text.
CANARY = "CANARY"
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text().map(CANARY.__add__)
OPS = sorted(protocol.RESULT_MODELS)
# Strings that would pass a field's checks but for one character: the canary must still not leak.
canary_text = (
    st.text(max_size=20).map(lambda t: CANARY + t) | st.just(CANARY + "\x00") | st.just(CANARY * 700)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text().map(CANARY.__add__), inner, max_size=4)
    ),
    max_leaves=20,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "op": st.sampled_from(OPS) | json_values,
        "versions": json_values | st.lists(st.integers(), max_size=10),
        **dict.fromkeys(["path", "src", "dst", "host", "name"], json_values | canary_text),
        **dict.fromkeys(["mode", "type"], json_values | st.sampled_from(["r", "w+", "tcp", "udp", "rb"])),
        **dict.fromkeys(["port", "timeout_ms", "backlog"], json_values | st.integers(-10, 700_000)),
    },
).flatmap(
    lambda known: st.dictionaries(st.text().map(CANARY.__add__), json_values, max_size=3).map(
        lambda extra: {**known, **extra}
    )
)
SAFE_TEXT = re.compile(r"[ -~]{1,250}")


def check_safe(reason: str) -> None:
    assert SAFE_TEXT.fullmatch(reason), reason
    assert CANARY not in reason


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_remote_protocol_errors(frame: bytes) -> None:
    for proto in (BrokerProtocol("9.9"), ready()):
        try:
            proto.receive(frame)
        except RemoteProtocolError as exc:
            check_safe(str(exc))


@given(request_like)
def test_errors_never_echo_the_request(request: dict[str, Any]) -> None:
    frame = json.dumps(request).encode()
    for proto in (BrokerProtocol("9.9"), ready()):
        try:
            proto.receive(frame)
        except RemoteProtocolError as exc:
            check_safe(str(exc))
            # Nor the traceback a log would show: no chained pydantic error quoting the input.
            assert CANARY not in "".join(traceback.format_exception(exc))


# --- replies -------------------------------------------------------------------------------------


def test_error_reply_exact_bytes() -> None:
    assert reply_error(None, ErrorCode.INVALID, "bad") == (
        b'{"id":null,"ok":false,"error":{"code":"invalid","message":"bad"}}'
    )


def test_reply_encoding_refuses_what_a_strict_peer_would_refuse() -> None:
    ping = Ping(id=1)
    with pytest.raises(LocalProtocolError):
        reply_ok(ping, {"x": float("nan")})
    with pytest.raises(LocalProtocolError):
        reply_ok(ping, {"x": object()})
    with pytest.raises(LocalProtocolError):
        reply_ok(ping, {"x": "a" * MAX_FRAME})
    assert decode_reply(reply_error(1, ErrorCode.FAILED, "m" * MAX_MESSAGE)).id == 1
    # A longer message is cut to the limit, never refused: a reply that cannot be sent would
    # take the run down (a denial naming a long grant path did, before).
    long = decode_reply(reply_error(1, ErrorCode.FAILED, "m" * (MAX_MESSAGE + 500)))
    assert isinstance(long, ErrorReply) and len(long.error.message) == MAX_MESSAGE
    assert long.error.message.endswith("\u2026")


json_results = st.dictionaries(
    st.text(),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ),
    max_size=5,
)


@given(ids, json_results)
def test_ok_reply_round_trip(request_id: int, result: dict[str, Any]) -> None:
    # Any JSON object decodes; whether it fits the op's result model is parse_result's business.
    frame = json.dumps({"id": request_id, "ok": True, "result": result}).encode()
    reply = decode_reply(frame)
    assert reply == OkReply(id=request_id, ok=True, result=result)


@given(st.none() | ids, st.sampled_from(ErrorCode), st.text(max_size=MAX_MESSAGE))
def test_error_reply_round_trip(request_id: int | None, code: ErrorCode, message: str) -> None:
    reply = decode_reply(reply_error(request_id, code, message))
    assert isinstance(reply, ErrorReply)
    assert (reply.id, reply.error.code, reply.error.message) == (request_id, code, message)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_the_client_protocol_returns_error_replies(code: ErrorCode) -> None:
    client = ready_client()
    client.send(Ping(id=0))
    error = client.receive(reply_error(2, code, "no"), ())
    assert isinstance(error, protocol.ErrorInfo) and (error.code, error.message) == (code, "no")
    # Only "invalid" ends the channel (the broker closes it after sending one).
    assert (client.broken is not None) == (code is ErrorCode.INVALID)


def test_the_client_protocol_accepts_a_null_id_error() -> None:
    client = ready_client()
    client.send(Ping(id=0))
    error = client.receive(reply_error(None, ErrorCode.INVALID, "bad"), ())
    assert isinstance(error, protocol.ErrorInfo) and error.code is ErrorCode.INVALID


@pytest.mark.parametrize(
    "frame",
    [b'{"id":6,"ok":true,"result":{}}', b'{"id":6,"ok":false,"error":{"code":"denied","message":""}}'],
)
def test_the_client_protocol_refuses_a_mismatched_id(frame: bytes) -> None:
    client = ready_client()
    client.send(Ping(id=0))  # id 2
    with pytest.raises(RemoteProtocolError):
        client.receive(frame, ())


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b'{"id":1,"ok":true,"result":{"x":"' + b"a" * MAX_FRAME + b'"}}',
        b'{"id":1,"ok":1,"result":{}}',
        b'{"id":1,"ok":0,"error":{"code":"failed","message":""}}',
        b'{"id":1,"ok":"true","result":{}}',
        b'{"id":1,"result":{}}',
        b'{"id":null,"ok":true,"result":{}}',
        b'{"id":1,"ok":true,"result":[]}',
        b'{"id":1,"ok":true,"result":{},"error":{"code":"failed","message":""}}',
        b'{"id":1,"ok":false,"error":{"code":"oops","message":""}}',
        b'{"id":1,"ok":false,"error":{"code":"failed","message":"","trace":""}}',
        b'{"id":1,"ok":false,"error":{"code":"failed","message":"' + b"m" * (MAX_MESSAGE + 1) + b'"}}',
        b'{"id":1,"ok":false,"error":{"code":"failed"}}',
    ],
)
def test_decode_reply_is_strict(frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_reply(frame)


def test_hello_result_is_strict() -> None:
    with pytest.raises(ValidationError):
        HelloResult.model_validate({"version": 1, "broker": "privsep", "max_frame": True})


# --- the brokered ops (issue 3) ------------------------------------------------------------------

VALID_REQUESTS: list[tuple[bytes, Request]] = [
    (b'{"id":1,"op":"open","path":"/srv/in/a.txt","mode":"r"}', Open(id=1, path="/srv/in/a.txt", mode="r")),
    *[
        (f'{{"id":1,"op":"open","path":"/f","mode":"{m}"}}'.encode(), Open(id=1, path="/f", mode=m))
        for m in ("r", "w", "a", "x", "r+", "w+", "a+", "x+")
    ],
    (b'{"id":2,"op":"stat","path":"/"}', Stat(id=2, path="/")),
    (b'{"id":3,"op":"listdir","path":"/srv"}', Listdir(id=3, path="/srv")),
    (b'{"id":4,"op":"mkdir","path":"/srv/out/d"}', Mkdir(id=4, path="/srv/out/d")),
    (b'{"id":5,"op":"unlink","path":"/srv/out/f"}', Unlink(id=5, path="/srv/out/f")),
    (b'{"id":6,"op":"rename","src":"/a","dst":"/b"}', Rename(id=6, src="/a", dst="/b")),
    (
        b'{"id":7,"op":"connect","host":"db.internal","port":5432,"type":"tcp","timeout_ms":10000}',
        Connect(id=7, host="db.internal", port=5432),
    ),
    (b'{"id":7,"op":"connect","host":"::1","port":53}', Connect(id=7, host="::1", port=53)),
    (
        b'{"id":7,"op":"connect","host":"10.0.0.1","port":65535,"type":"udp","timeout_ms":1}',
        Connect(id=7, host="10.0.0.1", port=65535, type="udp", timeout_ms=1),
    ),
    (b'{"id":8,"op":"connect_unix","path":"/run/app.sock"}', ConnectUnix(id=8, path="/run/app.sock")),
    (
        b'{"id":9,"op":"bind","host":"127.0.0.1","port":0,"type":"tcp","backlog":128}',
        Bind(id=9, host="127.0.0.1", port=0),
    ),
    (
        b'{"id":9,"op":"bind","host":"::","port":443,"type":"udp","backlog":4096}',
        Bind(id=9, host="::", port=443, type="udp", backlog=4096),
    ),
    (b'{"id":10,"op":"secret","name":"tls_key.v-2"}', Secret(id=10, name="tls_key.v-2")),
    # Paths are only shaped here: relative or un-normalised ones are the broker's to deny.
    (b'{"id":11,"op":"stat","path":"relative/../x"}', Stat(id=11, path="relative/../x")),
    (b'{"id":11,"op":"stat","path":"/\\u00e9\xc3\xa9"}', Stat(id=11, path="/éé")),
    (b'{"id":11,"op":"stat","path":"/' + b"a" * 4095 + b'"}', Stat(id=11, path="/" + "a" * 4095)),
    (
        b'{"id":12,"op":"connect","host":"' + b"h" * 253 + b'","port":1}',
        Connect(id=12, host="h" * 253, port=1),
    ),
    (b'{"id":13,"op":"secret","name":"' + b"n" * 64 + b'"}', Secret(id=13, name="n" * 64)),
]


@pytest.mark.parametrize(("frame", "request_"), VALID_REQUESTS)
def test_valid_op_frames_are_accepted(frame: bytes, request_: Request) -> None:
    assert ready().receive(frame) == request_
    assert ready().receive(encode_request(request_)) == request_


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"id":1,"op":"open","path":"","mode":"r"}', "open.path: string_too_short"),
        (b'{"id":1,"op":"open","path":"/' + b"a" * 4096 + b'","mode":"r"}', "open.path: string_too_long"),
        (b'{"id":1,"op":"open","path":"/a\\u0000b","mode":"r"}', "open.path: string_pattern_mismatch"),
        (b'{"id":1,"op":"open","path":"/a\\ud800","mode":"r"}', "json_invalid"),
        (b'{"id":1,"op":"open","path":"/a","mode":"rb"}', "open.mode: literal_error"),
        (b'{"id":1,"op":"open","path":"/a","mode":"R"}', "open.mode: literal_error"),
        (b'{"id":1,"op":"open","path":"/a"}', "open.mode: missing"),
        (b'{"id":1,"op":"open","path":"/a","mode":"r","flags":0}', "open.?: extra_forbidden"),
        (b'{"id":1,"op":"open","path":["/a"],"mode":"r"}', "open.path: string_type"),
        (b'{"id":1,"op":"stat","path":"\\u0000"}', "stat.path: string_pattern_mismatch"),
        (b'{"id":1,"op":"stat"}', "stat.path: missing"),
        (b'{"id":1,"op":"listdir","path":"/a","mode":"r"}', "listdir.mode: extra_forbidden"),
        (b'{"id":1,"op":"mkdir","path":"/a","mode":448}', "mkdir.mode: extra_forbidden"),
        (b'{"id":1,"op":"unlink","path":null}', "unlink.path: string_type"),
        (b'{"id":1,"op":"rename","src":"/a"}', "rename.dst: missing"),
        (b'{"id":1,"op":"rename","src":"/a","dst":"/b\\u0000"}', "rename.dst: string_pattern_mismatch"),
        (
            b'{"id":1,"op":"rename","path":"/a","dst":"/b"}',
            "rename.src: missing; rename.path: extra_forbidden",
        ),
        (b'{"id":1,"op":"connect","host":"","port":80}', "connect.host: string_too_short"),
        (b'{"id":1,"op":"connect","host":"' + b"h" * 254 + b'","port":80}', "connect.host: string_too_long"),
        (b'{"id":1,"op":"connect","host":"a\\u0000b","port":80}', "connect.host: string_pattern_mismatch"),
        (b'{"id":1,"op":"connect","host":"h","port":0}', "connect.port: greater_than_equal"),
        (b'{"id":1,"op":"connect","host":"h","port":65536}', "connect.port: less_than_equal"),
        (b'{"id":1,"op":"connect","host":"h","port":"80"}', "connect.port: int_type"),
        (b'{"id":1,"op":"connect","host":"h","port":80.0}', "connect.port: int_type"),
        (b'{"id":1,"op":"connect","host":"h","port":true}', "connect.port: int_type"),
        (b'{"id":1,"op":"connect","host":"h","port":80,"type":"sctp"}', "connect.type: literal_error"),
        (
            b'{"id":1,"op":"connect","host":"h","port":80,"timeout_ms":0}',
            "connect.timeout_ms: greater_than_equal",
        ),
        (
            b'{"id":1,"op":"connect","host":"h","port":80,"timeout_ms":600001}',
            "connect.timeout_ms: less_than_equal",
        ),
        (b'{"id":1,"op":"connect","host":"h","port":80,"backlog":1}', "connect.backlog: extra_forbidden"),
        (b'{"id":1,"op":"connect","host":"h"}', "connect.port: missing"),
        (b'{"id":1,"op":"connect_unix","path":""}', "connect_unix.path: string_too_short"),
        (
            b'{"id":1,"op":"connect_unix","host":"h","port":1}',
            "connect_unix.path: missing; connect_unix.host: extra_forbidden; "
            "connect_unix.port: extra_forbidden",
        ),
        (b'{"id":1,"op":"bind","host":"h","port":-1}', "bind.port: greater_than_equal"),
        (b'{"id":1,"op":"bind","host":"h","port":65536}', "bind.port: less_than_equal"),
        (b'{"id":1,"op":"bind","host":"h","port":1,"backlog":0}', "bind.backlog: greater_than_equal"),
        (b'{"id":1,"op":"bind","host":"h","port":1,"backlog":4097}', "bind.backlog: less_than_equal"),
        (b'{"id":1,"op":"bind","host":"h","port":1,"timeout_ms":5}', "bind.timeout_ms: extra_forbidden"),
        (b'{"id":1,"op":"secret","name":""}', "secret.name: string_too_short"),
        (b'{"id":1,"op":"secret","name":"' + b"n" * 65 + b'"}', "secret.name: string_too_long"),
        (b'{"id":1,"op":"secret","name":"a/b"}', "secret.name: string_pattern_mismatch"),
        (b'{"id":1,"op":"secret","name":"a b"}', "secret.name: string_pattern_mismatch"),
        (b'{"id":1,"op":"secret","name":"abc\\n"}', "secret.name: string_pattern_mismatch"),
        (b'{"id":1,"op":"secret","name":"\\u00e9"}', "secret.name: string_pattern_mismatch"),
        (b'{"id":1,"op":"secret","name":"k","source":"env:K"}', "secret.?: extra_forbidden"),
        (b'{"id":1,"op":"chmod","path":"/a"}', "union_tag_invalid"),
    ],
)
def test_op_bounds_are_violations(frame: bytes, reason: str) -> None:
    assert violation(ready(), frame) == f"invalid request: {reason}"


def test_every_op_has_a_result_model_and_an_fd_rule() -> None:
    ops = {tag for model in protocol._REQUEST_MODELS for tag in get_args(model.model_fields["op"].annotation)}
    assert set(protocol.RESULT_MODELS) == ops
    with_fd = protocol.OPS_WITH_FD
    assert with_fd == {"open", "connect", "connect_unix", "bind", "secret"}
    assert with_fd <= ops


def test_every_new_model_is_strict_closed_and_frozen() -> None:
    for model in (*protocol._REQUEST_MODELS, *protocol.RESULT_MODELS.values()):
        assert model.model_config.get("strict") is True, model
        assert model.model_config.get("extra") == "forbid", model
        assert model.model_config.get("frozen") is True, model
    with pytest.raises(ValidationError):
        Open(id=1, path="/a", mode="r").path = "/b"


def test_encoding_refuses_lone_surrogates_and_sends_utf8() -> None:
    with pytest.raises(LocalProtocolError, match="surrogate"):
        protocol._encode({"path": "/\udcff"})
    assert encode_request(Stat(id=1, path="/é")) == '{"id":1,"op":"stat","path":"/é"}'.encode()


# --- results ---------------------------------------------------------------------------------------

STAT = {
    "mode": 0o100644,
    "ino": 2**64 - 1,
    "dev": 2**64 - 1,
    "nlink": 1,
    "uid": 2**32 - 1,
    "gid": 0,
    "size": 2**63 - 1,
    "atime_ns": -(2**63),
    "mtime_ns": 0,
    "ctime_ns": 2**63 - 1,
}


@pytest.mark.parametrize(
    ("request_", "result"),
    [
        (Ping(id=1), {}),
        (Open(id=1, path="/a", mode="r"), {}),
        (Stat(id=1, path="/a"), STAT),
        (Listdir(id=1, path="/a"), {"names": []}),
        (Listdir(id=1, path="/a"), {"names": ["a", ".b", "é" * 255, "x y"]}),
        (Mkdir(id=1, path="/a"), {}),
        (Unlink(id=1, path="/a"), {}),
        (Rename(id=1, src="/a", dst="/b"), {}),
        (Connect(id=1, host="h", port=1), {"address": ["127.0.0.1", 1]}),
        (Connect(id=1, host="h", port=1), {"address": ("::1", 65535)}),
        (ConnectUnix(id=1, path="/s"), {}),
        (Bind(id=1, host="h", port=0), {"address": ["0.0.0.0", 0]}),  # noqa: S104
        (Secret(id=1, name="k"), {"size": 0}),
        (Secret(id=1, name="k"), SecretResult(size=2**53 - 1)),
    ],
)
def test_results_round_trip(request_: Request, result: dict[str, Any] | BaseModel) -> None:
    model = protocol.RESULT_MODELS[request_.op]
    client = ready_client()
    client.send(request_)
    fds = [100] if request_.op in protocol.OPS_WITH_FD else []
    answer = client.receive(reply_ok(request_.model_copy(update={"id": 2}), result), fds)
    expected = result if isinstance(result, BaseModel) else model.model_validate_json(json.dumps(result))
    assert answer == protocol.Answered(expected, fds[0] if fds else None)


@pytest.mark.parametrize(
    ("model", "result", "reason"),
    [
        (EmptyResult, {"x": 1}, "?: extra_forbidden"),
        (StatResult, {**STAT, "ino": -1}, "ino: greater_than_equal"),
        (StatResult, {**STAT, "ino": 2**64}, "ino: less_than_equal"),
        (StatResult, {**STAT, "uid": 2**32}, "uid: less_than_equal"),
        (StatResult, {**STAT, "size": -1}, "size: greater_than_equal"),
        (StatResult, {**STAT, "atime_ns": -(2**63) - 1}, "atime_ns: greater_than_equal"),
        (StatResult, {**STAT, "mode": "0644"}, "mode: int_type"),
        (StatResult, {**STAT, "mode": 1.0}, "mode: int_type"),
        (StatResult, {**STAT, "blocks": 8}, "blocks: ?"),
        (StatResult, {k: v for k, v in STAT.items() if k != "size"}, "size: missing"),
        (ListdirResult, {"names": [""]}, "names.0: string_too_short"),
        (ListdirResult, {"names": ["a/b"]}, "names.0: string_pattern_mismatch"),
        (ListdirResult, {"names": ["a\x00"]}, "names.0: string_pattern_mismatch"),
        (ListdirResult, {"names": ["a" * 256]}, "names.0: string_too_long"),
        (ListdirResult, {"names": "ab"}, "names: tuple_type"),
        (ListdirResult, {"names": ["a"] * (protocol.MAX_LISTDIR + 1)}, "names: too_long"),
        (AddressResult, {"address": ["127.0.0.1"]}, "address.1: missing"),
        (AddressResult, {"address": ["127.0.0.1", 1, 0, 0]}, "address: too_long"),
        (AddressResult, {"address": ["127.0.0.1", 65536]}, "address.1: less_than_equal"),
        (AddressResult, {"address": ["", 1]}, "address.0: string_too_short"),
        (AddressResult, {"address": "127.0.0.1:1"}, "address: tuple_type"),
        (SecretResult, {"size": -1}, "size: greater_than_equal"),
        (SecretResult, {"size": 2**53}, "size: less_than"),
        (SecretResult, {}, "size: missing"),
        (HelloResult, {"version": 1, "broker": "b", "max_frame": True}, "max_frame: int_type"),
    ],
)
def test_results_are_strict(model: type[BaseModel], result: dict[str, Any], reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        protocol.parse_result(model, result)
    # "blocks: ?": an unknown field the broker invented is named only if the name is ours.
    expected = reason.replace("blocks: ?", "?: extra_forbidden")
    assert str(info.value).startswith(f"invalid {model.__name__}: {expected}")


def test_parse_result_never_echoes_the_result() -> None:
    result = {"names": [CANARY + "/"], CANARY: CANARY}
    with pytest.raises(RemoteProtocolError) as info:
        protocol.parse_result(ListdirResult, result)
    check_safe(str(info.value))
    assert CANARY not in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize(
    ("request_", "result"),
    [
        (Ping(id=1), {"x": 1}),
        (Stat(id=1, path="/a"), {"mode": 1}),
        (Listdir(id=1, path="/a"), {"names": ["a/b"]}),
        (Connect(id=1, host="h", port=1), {"address": ["::1", 1, 0, 0]}),
        (Secret(id=1, name="k"), {"size": "3"}),
    ],
)
def test_reply_ok_refuses_a_result_that_does_not_fit(request_: Request, result: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError, match=f"the result of '{request_.op}' does not fit"):
        reply_ok(request_, result)


# --- denials and the allow field -------------------------------------------------------------------


@pytest.mark.parametrize("flag", sorted(protocol.ALLOW_FLAGS))
def test_the_allow_field_round_trips(flag: str) -> None:
    frame = reply_denied(3, "files[0] grants read", flag)
    assert frame == (
        b'{"id":3,"ok":false,"error":{"code":"denied","message":"files[0] grants read","allow":"'
        + flag.encode()
        + b'"}}'
    )
    reply = decode_reply(frame)
    assert isinstance(reply, ErrorReply)
    assert (reply.error.code, reply.error.message, reply.error.allow) == (
        ErrorCode.DENIED,
        "files[0] grants read",
        flag,
    )
    assert reply.error.message == "files[0] grants read"


def test_a_denial_without_a_flag_has_no_allow_field() -> None:
    assert reply_denied(3, "denied by files[1]", None) == (
        b'{"id":3,"ok":false,"error":{"code":"denied","message":"denied by files[1]"}}'
    )
    reply = decode_reply(reply_denied(3, "denied by files[1]", None))
    assert isinstance(reply, ErrorReply)
    assert reply.error.allow is None
    explicit_null = decode_reply(b'{"id":3,"ok":false,"error":{"code":"denied","message":"","allow":null}}')
    assert isinstance(explicit_null, ErrorReply)
    assert explicit_null.error == ErrorInfo(code=ErrorCode.DENIED, message="")


def test_reply_denied_refuses_what_the_client_would_refuse() -> None:
    with pytest.raises(LocalProtocolError, match="allow_flag"):
        reply_denied(1, "no", "--allow-everything")
    with pytest.raises(LocalProtocolError, match="allow_flag"):
        reply_denied(1, "no", "allow-read")
    cut = decode_reply(reply_denied(1, "m" * (MAX_MESSAGE + 1), None))
    assert isinstance(cut, ErrorReply) and len(cut.error.message) == MAX_MESSAGE


@given(
    st.lists(
        st.text(min_size=1, max_size=255).filter(lambda n: "/" not in n and "\x00" not in n), max_size=400
    )
)
def test_listing_pages_hold_every_name_once_and_each_fits_a_frame(names: list[str]) -> None:
    names = sorted(set(names))
    got: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page, following = listing_page(names, offset)
        frame = reply_ok(Listdir(id=1, path="/d", offset=offset), {"names": page, "next": following})
        assert len(frame) <= MAX_FRAME
        assert page or not names
        assert following is None or following > offset
        got += page
        offset = following
    assert got == names


def test_a_listing_of_control_character_names_is_paged_not_refused() -> None:
    names = sorted(chr(1) * 200 + str(i) for i in range(2000))  # each name costs ~1200 bytes in JSON
    page, following = listing_page(names, 0)
    assert following == len(page) and 0 < len(page) < len(names)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"id":1,"ok":false,"error":{"code":"denied","message":"","allow":"--allow-everything"}}',
        b'{"id":1,"ok":false,"error":{"code":"denied","message":"","allow":"--allow-read=/etc"}}',
        b'{"id":1,"ok":false,"error":{"code":"denied","message":"","allow":1}}',
        b'{"id":1,"ok":false,"error":{"code":"failed","message":"","allow":"--allow-read"}}',
        b'{"id":1,"ok":false,"error":{"code":"not_found","message":"","allow":"--secret"}}',
    ],
)
def test_a_bad_allow_field_is_a_broken_broker(frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_reply(frame)


# --- hypothesis over the new ops -------------------------------------------------------------------

no_nul = st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])
paths = st.text(no_nul, min_size=1, max_size=300)
hosts = st.text(no_nul, min_size=1, max_size=253)
names = st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z")
requests = st.one_of(
    st.builds(Open, id=ids, path=paths, mode=st.sampled_from(get_args(protocol.OpenMode))),
    st.builds(Stat, id=ids, path=paths),
    st.builds(Listdir, id=ids, path=paths),
    st.builds(Mkdir, id=ids, path=paths),
    st.builds(Unlink, id=ids, path=paths),
    st.builds(Rename, id=ids, src=paths, dst=paths),
    st.builds(
        Connect,
        id=ids,
        host=hosts,
        port=st.integers(1, 65535),
        type=st.sampled_from(["tcp", "udp"]),
        timeout_ms=st.integers(1, 600_000),
    ),
    st.builds(ConnectUnix, id=ids, path=paths),
    st.builds(
        Bind,
        id=ids,
        host=hosts,
        port=st.integers(0, 65535),
        type=st.sampled_from(["tcp", "udp"]),
        backlog=st.integers(1, 4096),
    ),
    st.builds(Secret, id=ids, name=names),
)


@given(requests)
def test_op_round_trip(request_: Request) -> None:
    assert ready().receive(encode_request(request_)) == request_


@given(requests, st.sampled_from(["path", "src", "dst", "host", "name"]), st.integers(0, 10))
def test_a_nul_anywhere_in_a_string_field_is_a_violation(request_: Request, field: str, at: int) -> None:
    data = request_.model_dump(mode="json")
    if field not in data:
        return
    data[field] = data[field][:at] + "\x00" + data[field][at:]
    reason = violation(ready(), json.dumps(data).encode())
    assert reason == f"invalid request: {request_.op}.{field}: string_pattern_mismatch"


# --------------------------------------------------------------------------- relayed UDP framing


@given(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(min_value=0, max_value=65535),
    st.binary(max_size=2048),
)
def test_a_framed_datagram_round_trips(ip: object, port: int, payload: bytes) -> None:
    frame = protocol.encode_datagram((str(ip), port), payload)
    assert protocol.decode_datagram(frame) == ((str(ip), port), payload)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x04",
        b"\x04\x00\x35",
        b"\x04\x00\x35\x7f\x00\x00",
        b"\x05\x00\x35\x7f\x00\x00\x01",
        b"\x06" + b"\x00" * 10,
    ],
)
def test_a_malformed_datagram_frame_is_none(frame: bytes) -> None:
    assert protocol.decode_datagram(frame) is None


def test_a_datagram_to_a_name_is_refused_locally() -> None:
    with pytest.raises(ValueError):
        protocol.encode_datagram(("localhost", 53), b"x")


# --- fast encodings: the same bytes as the general encoder ---------------------------------------
#
# Requests and result models are serialised by pydantic-core, and the empty success reply is
# built from bytes, where _encode (json.dumps) once made them: the wire must not change.


def general_encoding(message: BaseModel) -> bytes:
    return protocol._encode(message.model_dump(mode="json"))


@pytest.mark.parametrize(
    "request_",
    [request_ for _, request_ in VALID_REQUESTS]
    + [
        Open(id=2**53 - 1, path="/" + "".join(map(chr, range(1, 0x80))), mode="x+"),
        Rename(id=3, src="/a\u2028\u00e9\U0001f600", dst='/"\\'),
        protocol.CallArgs(id=4),
        protocol.CallReturn(id=5, value={"x": [1, 2.5, None, "é"]}),
    ],
)
def test_a_request_is_encoded_as_its_dump_would_be(request_: Request) -> None:
    assert encode_request(request_) == general_encoding(request_)
    assert protocol._encode_request(request_, 77) == general_encoding(request_.model_copy(update={"id": 77}))


@given(st.text(min_size=1, max_size=200).filter(protocol.is_utf8).filter(lambda t: "\x00" not in t), ids)
def test_any_path_is_encoded_as_its_dump_would_be(path: str, request_id: int) -> None:
    request_ = Stat(id=0, path=path)
    assert protocol._encode_request(request_, request_id) == general_encoding(Stat(id=request_id, path=path))


def test_a_call_return_still_refuses_what_json_cannot_carry() -> None:
    # pydantic would write NaN as null: a CallReturn (a JSON value inside) keeps the refusing encoder.
    with pytest.raises(LocalProtocolError):
        encode_request(protocol.CallReturn(id=1, value=float("nan")))


@given(ids)
def test_the_empty_success_reply_is_the_general_encoding(request_id: int) -> None:
    expected = protocol._encode({"id": request_id, "ok": True, "result": {}})
    for request_ in (Ping(id=request_id), Open(id=request_id, path="/a", mode="r")):
        assert reply_ok(request_, {}) == expected


@pytest.mark.parametrize(
    ("request_", "result"),
    [
        (Hello(id=9, versions=(1,)), HelloResult(version=1, broker='privsep é"', max_frame=MAX_FRAME)),
        (Stat(id=9, path="/a"), StatResult.model_validate(STAT)),
        (Listdir(id=9, path="/a"), ListdirResult(names=("a", "é" * 255, "x\ty"), next=7)),
        (Listdir(id=9, path="/a"), ListdirResult(names=())),
        (Bind(id=9, host="::", port=0), AddressResult(address=("::1", 65535))),
        (Secret(id=9, name="k"), SecretResult(size=2**53 - 1)),
        (Open(id=9, path="/a", mode="r"), EmptyResult()),
    ],
)
def test_a_result_model_is_encoded_as_its_dump_would_be(request_: Request, result: BaseModel) -> None:
    expected = protocol._encode({"id": request_.id, "ok": True, "result": result.model_dump(mode="json")})
    assert reply_ok(request_, result) == expected
    assert reply_ok(request_, result.model_dump(mode="json")) == expected


def test_a_result_model_of_another_op_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="does not fit"):
        reply_ok(Stat(id=1, path="/a"), SecretResult(size=1))


def test_the_client_recognises_only_the_exact_empty_reply_without_parsing() -> None:
    # Any other spelling of the same reply is validated, and accepted.
    client = ready_client()
    client.send(Ping(id=0))
    assert client.receive(b'{ "id" : 2 , "ok" : true , "result" : { } }', ()) == protocol.Answered(
        EmptyResult(), None
    )
    # The exact bytes with the wrong number of descriptors, or another id, break the channel.
    client.send(Open(id=0, path="/a", mode="r"))
    with pytest.raises(RemoteProtocolError, match="exactly one file descriptor"):
        client.receive(b'{"id":3,"ok":true,"result":{}}', ())
    client = ready_client()
    client.send(Ping(id=0))
    with pytest.raises(RemoteProtocolError, match="id does not match"):
        client.receive(b'{"id":3,"ok":true,"result":{}}', ())


@pytest.mark.parametrize(
    ("request_", "frame", "reason"),
    [
        # Only the result is wrong: named by the result model, as parse_result names it.
        (
            Stat(id=0, path="/a"),
            b'{"id":2,"ok":true,"result":{"mode":1}}',
            "invalid StatResult: ino: missing",
        ),
        (
            Secret(id=0, name="k"),
            b'{"id":2,"ok":true,"result":{"size":"3"}}',
            "invalid SecretResult: size: int_type",
        ),
        # The envelope is wrong too: named as the reply.
        (Stat(id=0, path="/a"), b'{"id":"2","ok":true,"result":{}}', "invalid reply: ok.id: int_type"),
        (Ping(id=0), b'{"id":2,"ok":1,"result":{}}', "invalid reply: union_tag_not_found"),
    ],
)
def test_a_reply_is_validated_once_with_its_result_model(
    request_: Request, frame: bytes, reason: str
) -> None:
    client = ready_client()
    client.send(request_)
    fds = [100] if request_.op in protocol.OPS_WITH_FD else []
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(frame, fds)
    assert str(info.value).startswith(reason)


@pytest.mark.parametrize(
    "value", ["NaN", "Infinity", "-Infinity", "1e999", "[1, [2, NaN]]", '{"a": {"b": -1e400}}']
)
def test_a_call_return_holding_nan_or_infinity_is_a_violation(value: str) -> None:
    """pydantic reads them from JSON; the host's ``Sandbox.call`` must never get one (fresh-eyes audit)."""
    proto = ready()
    reason = violation(proto, b'{"id":1,"op":"call_return","value":' + value.encode() + b"}")
    assert "NaN or Infinity" in reason


def test_a_call_return_with_finite_floats_is_accepted() -> None:
    value = ready().receive(b'{"id":1,"op":"call_return","value":[1.5, {"a": -2e300}, "NaN"]}')
    assert value == protocol.CallReturn(id=1, value=[1.5, {"a": -2e300}, "NaN"])


@given(
    path=st.text(max_size=40) | st.text(min_size=4090, max_size=4100),
    mode=st.sampled_from([*protocol.OPEN_FLAGS, "rb", ""]),
)
def test_a_prepared_open_is_the_models_open(path: str, mode: str) -> None:
    """``prepare_open`` refuses what the model refuses; the broker reads its frame as the model."""
    try:
        model: protocol.Open | None = protocol.Open(id=0, path=path, mode=mode)  # type: ignore[arg-type]
    except ValidationError:
        model = None
    prepared = protocol.prepare_open(path, mode)
    assert (prepared is None) == (model is None)
    if prepared is None or model is None:
        return
    client = protocol.ClientProtocol()
    client.hello = protocol.HelloResult(version=1, broker="privsep test", max_frame=protocol.MAX_FRAME)
    frame = client.send(prepared)
    broker = protocol.BrokerProtocol("test")
    broker.receive(b'{"id":0,"op":"hello","versions":[1]}')
    assert broker.receive(frame) == model.model_copy(update={"id": 1})
    assert client.receive(b'{"id":1,"ok":true,"result":{}}', (7,)) == protocol.Answered(
        protocol.EmptyResult(), 7
    )


def test_a_prepared_open_refuses_a_lone_surrogate_and_a_nul() -> None:
    assert protocol.prepare_open("/a/\udcff", "r") is None
    assert protocol.prepare_open("/a\x00b", "r") is None
