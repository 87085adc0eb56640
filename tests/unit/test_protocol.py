"""The wire protocol, sans-IO: every rule of docs/PROTOCOL.md the broker enforces."""

from __future__ import annotations

import json
import re
import traceback
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from privsep import protocol
from privsep.errors import BrokerError, DeniedError, LocalProtocolError, RemoteProtocolError
from privsep.protocol import (
    MAX_FRAME,
    MAX_MESSAGE,
    BrokerProtocol,
    ErrorCode,
    ErrorReply,
    Hello,
    HelloResult,
    OkReply,
    Ping,
    check_reply,
    decode_reply,
    encode_request,
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
    result = check_reply(decode_reply(reply_ok(Hello(id=4, versions=(1,)), proto.hello_result())), 4)
    assert HelloResult.model_validate(result) == HelloResult(
        version=1, broker="privsep 9.9", max_frame=MAX_FRAME
    )


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
    reason = violation(ready(), b'{"id":1,"op":"ping","versions":[1],"secret":1}')
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
        "op": st.sampled_from(["hello", "ping"]) | json_values,
        "versions": json_values | st.lists(st.integers(), max_size=10),
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
    with pytest.raises(LocalProtocolError):
        reply_error(1, ErrorCode.FAILED, "m" * (MAX_MESSAGE + 1))
    assert decode_reply(reply_error(1, ErrorCode.FAILED, "m" * MAX_MESSAGE)).id == 1


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
    reply = decode_reply(reply_ok(Ping(id=request_id), result))
    assert reply == OkReply(id=request_id, ok=True, result=result)
    assert check_reply(reply, request_id) == result


@given(st.none() | ids, st.sampled_from(ErrorCode), st.text(max_size=MAX_MESSAGE))
def test_error_reply_round_trip(request_id: int | None, code: ErrorCode, message: str) -> None:
    reply = decode_reply(reply_error(request_id, code, message))
    assert isinstance(reply, ErrorReply)
    assert (reply.id, reply.error.code, reply.error.message) == (request_id, code, message)


def test_check_reply_raises_denied_error() -> None:
    reply = decode_reply(reply_error(5, ErrorCode.DENIED, "read of x denied by rule 3"))
    with pytest.raises(DeniedError) as info:
        check_reply(reply, 5)
    assert isinstance(info.value, PermissionError)
    assert (info.value.code, info.value.message) == ("denied", "read of x denied by rule 3")


@pytest.mark.parametrize("code", [c for c in ErrorCode if c is not ErrorCode.DENIED])
def test_check_reply_raises_broker_error(code: ErrorCode) -> None:
    with pytest.raises(BrokerError) as info:
        check_reply(decode_reply(reply_error(5, code, "no")), 5)
    assert not isinstance(info.value, DeniedError)
    assert (info.value.code, info.value.message) == (code.value, "no")


def test_check_reply_accepts_a_null_id_error() -> None:
    with pytest.raises(BrokerError) as info:
        check_reply(decode_reply(reply_error(None, ErrorCode.INVALID, "bad")), 5)
    assert info.value.code == "invalid"


@pytest.mark.parametrize(
    "frame",
    [b'{"id":6,"ok":true,"result":{}}', b'{"id":6,"ok":false,"error":{"code":"denied","message":""}}'],
)
def test_check_reply_refuses_a_mismatched_id(frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        check_reply(decode_reply(frame), 5)


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
