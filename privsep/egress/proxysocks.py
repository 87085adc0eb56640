"""The SOCKS5 proxy's side of one client connection (RFC 1928), sans-IO.

Served: the greeting with the "no authentication" method (the proxy is
reachable from one sandbox's network namespace only, so there is no one to
authenticate), and one CONNECT request to a domain name, an IPv4 or an IPv6
address. A domain that is an IP literal in text is taken as that address
(decided by IP rules, never resolved). Everything else is refused with the
reply RFC 1928 has for it:

======================================  ===============================================
a greeting of another version           no reply (the client speaks no SOCKS5), close
no "no authentication" method offered   method X'FF', then close
a request of another version, RSV != 0  reply 1 (general failure)
an empty domain                         reply 1 (general failure)
BIND, UDP ASSOCIATE, other commands     reply 7 (command not supported)
address types other than 1, 3, 4        reply 8 (address type not supported)
a domain that is not a host name        reply 4 (host unreachable)
port 0, or denied by the policy         reply 2 (connection not allowed by ruleset)
======================================  ===============================================

:func:`failure_reply` maps the broker's connect errors to replies 3..6. A reply
carries no text: the message and the ``--allow-connect`` hint of a refusal go
to the audit record and the exit report.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import struct
from dataclasses import dataclass

from privsep.egress.target import Target, TargetError, parse_host
from privsep.policy.model import IPAddress

__all__ = [
    "SocksGreeted",
    "SocksParser",
    "SocksRefusal",
    "SocksReply",
    "SocksRequest",
    "denied",
    "failure_reply",
    "reply",
]

_VERSION = 5
_NO_AUTH = 0
_NO_ACCEPTABLE = 0xFF
_CONNECT = 1
_ATYP_IPV4, _ATYP_DOMAIN, _ATYP_IPV6 = 1, 3, 4


class SocksReply(enum.IntEnum):
    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


@dataclass(frozen=True)
class SocksGreeted:
    """The greeting chose "no authentication": send ``reply``, then feed on (``feed(b"")`` first)."""

    reply: bytes


@dataclass(frozen=True)
class SocksRequest:
    target: Target
    rest: bytes
    """What the client sent after its request (data for the tunnel)."""


@dataclass(frozen=True)
class SocksRefusal:
    reply: bytes | None
    """Send it, if any, then close."""
    message: str
    """privsep's words for the audit record; never the client's bytes."""
    hint: str | None = None


def reply(code: SocksReply, bound: tuple[IPAddress, int] | None = None) -> bytes:
    """A reply to the request; ``bound`` (the broker's local end) for success, else 0.0.0.0:0."""
    address, port = bound if bound is not None else (ipaddress.IPv4Address(0), 0)
    atyp = _ATYP_IPV4 if address.version == 4 else _ATYP_IPV6
    return bytes([_VERSION, code, 0, atyp]) + address.packed + struct.pack("!H", port)


def _refused(code: SocksReply, message: str) -> SocksRefusal:
    return SocksRefusal(reply(code), message)


class SocksParser:
    """Feed bytes as they arrive.

    ``feed`` returns None while a message is incomplete; :class:`SocksGreeted`
    after the greeting (send its reply, then call ``feed(b"")`` for anything
    already buffered); then :class:`SocksRequest` or :class:`SocksRefusal`.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._greeted = False
        self._done = False

    def feed(self, data: bytes) -> SocksGreeted | SocksRequest | SocksRefusal | None:
        if self._done:
            raise RuntimeError("the request was already parsed: one per connection")
        self._buffer += data
        result = self._request() if self._greeted else self._greeting()
        if isinstance(result, SocksRequest | SocksRefusal):
            self._done = True
        return result

    def _greeting(self) -> SocksGreeted | SocksRefusal | None:
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[0] != _VERSION:
            return SocksRefusal(None, "not a SOCKS version 5 greeting")
        if len(buffer) < 2 or len(buffer) < 2 + buffer[1]:
            return None
        methods = buffer[2 : 2 + buffer[1]]
        self._buffer = buffer[2 + buffer[1] :]
        if _NO_AUTH not in methods:
            return SocksRefusal(
                bytes([_VERSION, _NO_ACCEPTABLE]), "the client offers no method but authentication"
            )
        self._greeted = True
        return SocksGreeted(bytes([_VERSION, _NO_AUTH]))

    def _request(self) -> SocksRequest | SocksRefusal | None:
        buffer = self._buffer
        if len(buffer) < 5:
            return None
        size = _address_size(buffer)
        if isinstance(size, SocksRefusal):
            return size
        end = 4 + size + 2
        if len(buffer) < end:
            return None
        (port,) = struct.unpack_from("!H", buffer, end - 2)
        if port == 0:
            return _refused(SocksReply.NOT_ALLOWED, "port 0 is not a destination")
        target = _target(buffer[3], buffer[4 : end - 2], port)
        if isinstance(target, SocksRefusal):
            return target
        return SocksRequest(target, buffer[end:])


def _address_size(request: bytes) -> int | SocksRefusal:
    """Octets of DST.ADDR in a request whose first five octets are in, or why it is refused."""
    version, command, reserved, atyp, first = request[:5]
    if version != _VERSION or reserved != 0:
        return _refused(SocksReply.GENERAL_FAILURE, "a request that is not SOCKS5 (version, RSV)")
    if command != _CONNECT:
        return _refused(SocksReply.COMMAND_NOT_SUPPORTED, "only CONNECT is served (no BIND, UDP ASSOCIATE)")
    if atyp == _ATYP_DOMAIN and first == 0:
        return _refused(SocksReply.GENERAL_FAILURE, "an empty domain name")
    size = {_ATYP_IPV4: 4, _ATYP_IPV6: 16, _ATYP_DOMAIN: 1 + first}.get(atyp)
    if size is None:
        return _refused(SocksReply.ADDRESS_TYPE_NOT_SUPPORTED, "an address type other than 1, 3 or 4")
    return size


def _target(atyp: int, raw: bytes, port: int) -> Target | SocksRefusal:
    if atyp == _ATYP_IPV4:
        v4 = ipaddress.IPv4Address(raw)
        return Target(str(v4), port, v4)
    if atyp == _ATYP_IPV6:
        v6 = ipaddress.IPv6Address(raw)
        return Target(str(v6), port, v6)
    try:
        host, address = parse_host(raw[1:].decode("ascii"), bare_ipv6=True)
    except (UnicodeDecodeError, TargetError) as exc:
        reason = "the domain is not ASCII" if isinstance(exc, UnicodeDecodeError) else str(exc)
        return _refused(SocksReply.HOST_UNREACHABLE, reason)
    return Target(host, port, address)


def denied(target: Target, message: str, allow_flag: str | None) -> SocksRefusal:
    """Reply 2 for a policy denial; the hint (for the audit) names the validated target."""
    hint = f"{allow_flag} {target.authority()}" if allow_flag is not None else None
    return SocksRefusal(reply(SocksReply.NOT_ALLOWED), message, hint)


_FAILURES = {
    errno.ECONNREFUSED: SocksReply.CONNECTION_REFUSED,
    errno.ENETUNREACH: SocksReply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: SocksReply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: SocksReply.TTL_EXPIRED,
}


def failure_reply(error_number: int | None) -> bytes:
    """The reply for a connect the broker tried and failed (RFC 1928 has no "timed out": 6 is closest)."""
    return reply(_FAILURES.get(error_number or 0, SocksReply.GENERAL_FAILURE))
