"""SOCKS5 (RFC 1928): no authentication, CONNECT only, a reply for every refusal."""

from __future__ import annotations

import errno
import ipaddress
import random
import struct

import pytest

from privsep.egress.proxysocks import (
    SocksGreeted,
    SocksParser,
    SocksRefusal,
    SocksReply,
    SocksRequest,
    denied,
    failure_reply,
    reply,
)
from privsep.egress.target import Target

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
GREETING = b"\x05\x01\x00"


def connect_domain(name: bytes, port: int = 443, command: int = 1) -> bytes:
    return bytes([5, command, 0, 3, len(name)]) + name + struct.pack("!H", port)


def after_greeting(data: bytes) -> SocksGreeted | SocksRequest | SocksRefusal | None:
    parser = SocksParser()
    assert isinstance(parser.feed(GREETING), SocksGreeted)
    return parser.feed(data)


def refused_with(data: bytes) -> SocksReply:
    result = after_greeting(data)
    assert isinstance(result, SocksRefusal), result
    assert result.reply is not None
    return SocksReply(result.reply[1])


def test_greeting_then_connect_by_name() -> None:
    parser = SocksParser()
    assert parser.feed(b"\x05\x02\x02\x00") == SocksGreeted(b"\x05\x00")
    result = parser.feed(connect_domain(b"API.Example.COM.") + b"hello")
    assert result == SocksRequest(Target("api.example.com", 443, None), b"hello")


def test_a_greeting_and_request_sent_together_are_both_read() -> None:
    parser = SocksParser()
    assert isinstance(parser.feed(GREETING + connect_domain(b"a.example")), SocksGreeted)
    assert parser.feed(b"") == SocksRequest(Target("a.example", 443, None), b"")


def test_bytes_may_arrive_one_at_a_time() -> None:
    parser = SocksParser()
    results = [parser.feed(bytes([b])) for b in GREETING + connect_domain(b"a.example", 80)]
    assert [type(r).__name__ for r in results if r is not None] == ["SocksGreeted", "SocksRequest"]
    assert results[-1] == SocksRequest(Target("a.example", 80, None), b"")


@pytest.mark.parametrize(
    ("request_bytes", "target"),
    [
        (b"\x05\x01\x00\x01\xc0\x00\x02\x01\x01\xbb", Target("192.0.2.1", 443, V4("192.0.2.1"))),
        (
            b"\x05\x01\x00\x04" + V6("2001:db8::1").packed + b"\x00\x50",
            Target("2001:db8::1", 80, V6("2001:db8::1")),
        ),
        (connect_domain(b"127.0.0.1"), Target("127.0.0.1", 443, V4("127.0.0.1"))),  # a literal in a domain
        (connect_domain(b"::1"), Target("::1", 443, V6("::1"))),
    ],
)
def test_addresses_are_ip_literals_never_resolved(request_bytes: bytes, target: Target) -> None:
    assert after_greeting(request_bytes) == SocksRequest(target, b"")


def test_a_greeting_without_no_authentication_is_refused_with_ff() -> None:
    for greeting in (b"\x05\x01\x02", b"\x05\x00", b"\x05\x02\x01\x02"):
        result = SocksParser().feed(greeting)
        assert isinstance(result, SocksRefusal)
        assert result.reply == b"\x05\xff"


@pytest.mark.parametrize(
    "data", [b"\x04\x01\x01\xbb\x7f\x00\x00\x01\x00", b"CONNECT a:443 HTTP/1.1\r\n", b"\x00"]
)
def test_another_protocol_gets_no_socks5_reply(data: bytes) -> None:
    result = SocksParser().feed(data)
    assert isinstance(result, SocksRefusal)
    assert result.reply is None


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (connect_domain(b"a.example", command=2), SocksReply.COMMAND_NOT_SUPPORTED),  # BIND
        (connect_domain(b"a.example", command=3), SocksReply.COMMAND_NOT_SUPPORTED),  # UDP ASSOCIATE
        (connect_domain(b"a.example", command=9), SocksReply.COMMAND_NOT_SUPPORTED),
        (b"\x05\x01\x00\x02\x00\x00\x00\x00\x00\x50", SocksReply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50", SocksReply.GENERAL_FAILURE),  # RSV set
        (b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", SocksReply.GENERAL_FAILURE),  # version
        (b"\x05\x01\x00\x03\x00\x00\x50", SocksReply.GENERAL_FAILURE),  # empty domain
        (connect_domain(b"a.example", port=0), SocksReply.NOT_ALLOWED),
        (connect_domain(b"a..example"), SocksReply.HOST_UNREACHABLE),
        (connect_domain(b"a.example\x00.evil"), SocksReply.HOST_UNREACHABLE),
        (connect_domain(b"b\xc3\xbccher.example"), SocksReply.HOST_UNREACHABLE),
        (connect_domain(b"[::1]"), SocksReply.HOST_UNREACHABLE),
        (connect_domain(b"127.1"), SocksReply.HOST_UNREACHABLE),
        (connect_domain(b"fe80::1%eth0"), SocksReply.HOST_UNREACHABLE),
        (connect_domain(b"a.example:443"), SocksReply.HOST_UNREACHABLE),
        (connect_domain(b"a" * 64 + b".example"), SocksReply.HOST_UNREACHABLE),
        (connect_domain(b"a" * 255), SocksReply.HOST_UNREACHABLE),
    ],
)
def test_each_refusal_has_its_reply(data: bytes, code: SocksReply) -> None:
    assert refused_with(data) == code


def test_refusal_messages_never_echo_the_request() -> None:
    result = after_greeting(connect_domain(b"exfiltrated_data.example"))
    assert isinstance(result, SocksRefusal)
    assert "exfiltrated" not in result.message


def test_one_request_per_parser() -> None:
    parser = SocksParser()
    parser.feed(GREETING + connect_domain(b"a.example"))
    parser.feed(b"")
    with pytest.raises(RuntimeError, match="one per connection"):
        parser.feed(b"")


def test_replies() -> None:
    assert reply(SocksReply.SUCCEEDED) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert reply(SocksReply.SUCCEEDED, (V4("10.0.0.2"), 40000)) == b"\x05\x00\x00\x01\x0a\x00\x00\x02\x9c\x40"
    assert reply(SocksReply.SUCCEEDED, (V6("::1"), 1)) == b"\x05\x00\x00\x04" + V6("::1").packed + b"\x00\x01"


def test_a_denial_is_reply_2_with_the_hint_for_the_audit() -> None:
    result = denied(
        Target("api.example.com", 443, None), "no [[connect]] rule names this host", "--allow-connect"
    )
    assert result.reply == reply(SocksReply.NOT_ALLOWED)
    assert result.hint == "--allow-connect api.example.com:443"


@pytest.mark.parametrize(
    ("error_number", "code"),
    [
        (errno.ECONNREFUSED, SocksReply.CONNECTION_REFUSED),
        (errno.ENETUNREACH, SocksReply.NETWORK_UNREACHABLE),
        (errno.EHOSTUNREACH, SocksReply.HOST_UNREACHABLE),
        (errno.ETIMEDOUT, SocksReply.TTL_EXPIRED),
        (errno.EPERM, SocksReply.GENERAL_FAILURE),
        (None, SocksReply.GENERAL_FAILURE),
    ],
)
def test_connect_failures_map_to_replies(error_number: int | None, code: SocksReply) -> None:
    assert failure_reply(error_number) == reply(code)


def test_fuzz_random_streams_only_parse_or_refuse() -> None:
    rng = random.Random(1928)  # noqa: S311 - a fixed seed: the same inputs every run
    seeds = [GREETING + connect_domain(b"a.example"), GREETING + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"]
    outcomes: dict[str, int] = {}
    for _ in range(20000):
        data = bytearray(rng.choice(seeds))
        if rng.random() < 0.2:
            data = bytearray(rng.randrange(256) for _ in range(rng.randrange(300)))
        for _ in range(rng.randint(0, 3) if data else 0):
            at = rng.randrange(len(data))
            data[at] = rng.choice([0, 1, 3, 4, 5, 0xFF, rng.randrange(256)])
        parser = SocksParser()
        result: object = None
        at = 0
        while at < len(data) or isinstance(result, SocksGreeted):
            step = rng.randint(1, 16)
            result = parser.feed(bytes(data[at : at + step]))
            at += step
            if isinstance(result, SocksRequest | SocksRefusal):
                break
        outcomes[type(result).__name__] = outcomes.get(type(result).__name__, 0) + 1
        if isinstance(result, SocksRequest):
            assert 1 <= result.target.port <= 65535
    assert outcomes.get("SocksRequest", 0) > 1000 and outcomes.get("SocksRefusal", 0) > 1000
