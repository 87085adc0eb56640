"""Pure parsing for unmodified servers: ``--listen`` values and the sockaddr a program passes to bind()."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from privsep.broker.transparent import _bind_sockaddr, _Unserved
from privsep.errors import PolicyError
from privsep.policy.grants import Listen, parse_listen

ANY = "0.0.0.0"  # noqa: S104 - parsed, never bound


def test_listen_defaults_and_forms() -> None:
    assert parse_listen(["80", "127.0.0.1:8080/tcp", "web=[::]:443"]) == [
        Listen("listen", ANY, 80),
        Listen("listen", "127.0.0.1", 8080),
        Listen("web", "::", 443),
    ]
    assert Listen("web", "::", 443).bind_grant() == "[::]:443"
    assert Listen("listen", ANY, 80).bind_grant() == "0.0.0.0:80"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("80/udp", "TCP only"),
        ("a:b=80", "no ':'"),
        ("0", "not 1..65535"),
        ("[::1]:99999", "not 1..65535"),
        ("localhost:80", "not an IP address"),
        ("127.0.0.1", "not HOST:PORT"),
    ],
)
def test_listen_refuses_with_the_fix(value: str, message: str) -> None:
    with pytest.raises(PolicyError, match="--listen") as info:
        parse_listen([value])
    assert message in str(info.value)


def test_listen_twice_is_refused() -> None:
    with pytest.raises(PolicyError, match="given twice"):
        parse_listen(["80", "0.0.0.0:80"])


def _in(family: int, port: int, address: str) -> bytes:
    return struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_aton(address) + bytes(8)


def _in6(port: int, address: str, scope: int = 0) -> bytes:
    head = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", port) + bytes(4)
    return head + socket.inet_pton(socket.AF_INET6, address) + struct.pack("=I", scope)


def test_bind_sockaddr_v4() -> None:
    data = _in(socket.AF_INET, 8080, "127.0.0.1")
    assert _bind_sockaddr(data, socket.AF_INET, 16) == ("127.0.0.1", 8080, ("127.0.0.1", 8080))
    # As the kernel: AF_UNSPEC means AF_INET for INADDR_ANY only.
    unspec = _in(socket.AF_UNSPEC, 80, ANY)
    assert _bind_sockaddr(unspec, socket.AF_INET, 16)[:2] == (ANY, 80)


def test_bind_sockaddr_v6_mapped_is_decided_as_v4_and_bound_as_written() -> None:
    host, port, address = _bind_sockaddr(_in6(443, "::ffff:127.0.0.1"), socket.AF_INET6, 28)
    assert (host, port) == ("127.0.0.1", 443)
    assert address == ("::ffff:7f00:1", 443, 0, 0)
    assert _bind_sockaddr(_in6(1, "::1", 3), socket.AF_INET6, 28) == ("::1", 1, ("::1", 1, 0, 3))


@pytest.mark.parametrize(
    ("data", "family", "addrlen", "err"),
    [
        (_in(socket.AF_INET, 80, "127.0.0.1"), socket.AF_INET, 8, errno.EINVAL),
        (_in(socket.AF_UNSPEC, 80, "127.0.0.1"), socket.AF_INET, 16, errno.EAFNOSUPPORT),
        (_in(socket.AF_INET6, 80, "127.0.0.1"), socket.AF_INET, 16, errno.EAFNOSUPPORT),
        (_in6(80, "::1")[:20], socket.AF_INET6, 20, errno.EINVAL),
        (_in(socket.AF_INET, 80, "127.0.0.1") + bytes(12), socket.AF_INET6, 28, errno.EAFNOSUPPORT),
    ],
)
def test_bind_sockaddr_malformed_gets_the_kernels_errno(
    data: bytes, family: int, addrlen: int, err: int
) -> None:
    with pytest.raises(_Unserved) as info:
        _bind_sockaddr(data, family, addrlen)
    assert info.value.err == err
