"""A strict, bounded DNS message codec (RFC 1035) for the resolver privsep gives a sandbox.

The peer is the sandbox's stub resolver (glibc, musl, Go's, dig): hostile by
assumption. :func:`parse_query` is total over bytes: it returns a
:class:`Query` or raises :class:`DnsFormatError`, nothing else, whatever it is
given (a unit test fuzzes it). The error says what to answer: an rcode and
the id to echo, or ``rcode=None`` for messages that get no answer at all (too
short to carry an id, or a response: answering responses is how reflection
loops start).

What is accepted, and why it is this narrow:

- one message of at most 512 octets (RFC 1035's UDP limit; over TCP the same
  bound applies to the length prefix, see :class:`TcpFramer`): a query is a
  header, one name of at most 255 octets and four octets more, so no honest
  query comes near it;
- opcode QUERY only (else NOTIMP); QR, TC, Z and RCODE clear in the header
  (else FORMERR; a message with QR set is dropped); AD and CD are ignored;
- exactly one question, no answer or authority records, and at most one
  additional record, which must be an EDNS(0) OPT (RFC 6891; Go and dig send
  one): anything else is FORMERR, as are trailing octets;
- names are plain labels: a compression pointer in a question is refused (a
  query has nothing earlier to point at, so refusing costs nothing and loops
  cannot exist), as are the reserved label types (a length octet of 64 or
  more), and a name longer than 255 octets;
- class IN only: other classes get REFUSED (the question is echoed);
- an EDNS version other than 0 gets BADVERS, as RFC 6891 asks.

A label may hold any octet on the wire; :attr:`Query.name` shows every
octet outside letters, digits and '-' as ``\\DDD`` (RFC 1035 presentation
form), so a label holding a '.' can never pass for two labels, and such a
name is never a host name a policy rule could name.

Responses (:func:`build_response`) echo the id and the question exactly as
received (case included: some resolvers check it, RFC 5452), set QR and RA,
copy RD, and carry A/AAAA answers behind an optional CNAME chain. A response
larger than the limit (512 octets over UDP) is sent with TC set and no
answers, so the client retries over TCP.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from privsep.policy.model import IPAddress, host_name

__all__ = [
    "MAX_NAME",
    "MAX_QUERY",
    "MAX_TCP",
    "MAX_UDP",
    "TYPE_A",
    "TYPE_AAAA",
    "TYPE_CNAME",
    "TYPE_OPT",
    "DnsFormatError",
    "Edns",
    "Query",
    "Rcode",
    "TcpFramer",
    "build_response",
    "error_response",
    "frame_tcp",
    "parse_query",
]

MAX_UDP = 512
"""The largest response sent over UDP; a larger one is truncated (TC)."""
MAX_QUERY = 512
"""The largest query accepted, over UDP or TCP."""
MAX_TCP = 65535
MAX_NAME = 255
"""Octets of a name in wire form, length octets and the final zero included (RFC 1035 2.3.4)."""
_MAX_LABEL = 63

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1

_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_OPCODE = 0x7800
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_Z = 0x0040
_RCODE = 0x000F
_POINTER = 0xC0
_LDH = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_MAX_TTL = 0x7FFFFFFF  # RFC 2181 8


class Rcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16
    """Extended (EDNS): the low four bits go in the header, the rest in the OPT record."""


@dataclass(frozen=True)
class Edns:
    """The query's OPT record (RFC 6891): it asks for an OPT record in the answer."""

    version: int
    payload: int
    """The UDP size the client accepts; privsep still answers within 512 octets over UDP."""
    dnssec_ok: bool


@dataclass(frozen=True)
class Query:
    id: int
    rd: bool
    labels: tuple[bytes, ...]
    """The name's labels as received, case kept: echoed exactly in the answer."""
    qtype: int
    qclass: int
    edns: Edns | None

    @property
    def name(self) -> str:
        """Presentation form, lower case, no trailing dot ("." for the root); odd octets as ``\\DDD``."""
        if not self.labels:
            return "."
        return ".".join("".join(_char(octet) for octet in label) for label in self.labels)


def _char(octet: int) -> str:
    if octet in _LDH:
        return chr(octet).lower()
    return f"\\{octet:03d}"


class DnsFormatError(ValueError):
    """The message is not a query privsep serves; the attributes say how to answer it.

    ``rcode`` None: send nothing. ``id``/``rd``: echoed in a header-only answer.
    ``query``: the query was well formed but is refused (a class other than IN,
    an EDNS version other than 0); its question is echoed. The message names the
    broken rule and never contains the peer's bytes.
    """

    def __init__(
        self,
        reason: str,
        rcode: Rcode | None,
        *,
        id: int | None = None,
        rd: bool = False,
        query: Query | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rcode = rcode
        self.id = id
        self.rd = rd
        self.query = query


# --- parsing -------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, message: bytes, id_: int, rd: bool) -> None:
        self.message = message
        self.offset = _HEADER.size
        self.id = id_
        self.rd = rd

    def fail(self, reason: str) -> DnsFormatError:
        return DnsFormatError(reason, Rcode.FORMERR, id=self.id, rd=self.rd)

    def take(self, count: int, what: str) -> bytes:
        end = self.offset + count
        if end > len(self.message):
            raise self.fail(f"the message ends inside {what}")
        chunk = self.message[self.offset : end]
        self.offset = end
        return chunk

    def u16(self, what: str) -> int:
        value: int = struct.unpack("!H", self.take(2, what))[0]
        return value

    def name(self) -> tuple[bytes, ...]:
        labels: list[bytes] = []
        size = 1  # the root's zero octet
        while True:
            length = self.take(1, "a name")[0]
            if length & _POINTER == _POINTER:
                raise self.fail("a compression pointer in a query (a query has nothing to point back to)")
            if length > _MAX_LABEL:
                raise self.fail(f"a label longer than {_MAX_LABEL} octets (or a reserved label type)")
            if length == 0:
                return tuple(labels)
            size += length + 1
            if size > MAX_NAME:
                raise self.fail(f"a name longer than {MAX_NAME} octets")
            labels.append(self.take(length, "a label"))


def parse_query(message: bytes) -> Query:
    """The one question of a DNS query message, or :class:`DnsFormatError` (only that)."""
    if len(message) < _HEADER.size:
        raise DnsFormatError("shorter than a DNS header", None)
    id_, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(message)
    rd = bool(flags & _RD)
    if flags & _QR:
        raise DnsFormatError("a response, not a query (never answered: no reflection loops)", None)
    if len(message) > MAX_QUERY:
        raise DnsFormatError(f"longer than {MAX_QUERY} octets", Rcode.FORMERR, id=id_, rd=rd)
    if flags & _OPCODE:
        raise DnsFormatError("an opcode other than QUERY", Rcode.NOTIMP, id=id_, rd=rd)
    reader = _Reader(message, id_, rd)
    if flags & (_TC | _Z | _RCODE):
        raise reader.fail("TC, Z or RCODE set in a query")
    if qdcount != 1:
        raise reader.fail("a query must ask exactly one question")
    if ancount or nscount:
        raise reader.fail("a query must carry no answer or authority records")
    if arcount > 1:
        raise reader.fail("a query may carry one additional record (EDNS OPT) at most")
    labels = reader.name()
    qtype = reader.u16("the question")
    qclass = reader.u16("the question")
    edns = _read_opt(reader) if arcount else None
    if reader.offset != len(message):
        raise reader.fail("octets after the last record")
    query = Query(id_, rd, labels, qtype, qclass, edns)
    if qclass != CLASS_IN:
        raise DnsFormatError("a class other than IN", Rcode.REFUSED, id=id_, rd=rd, query=query)
    if edns is not None and edns.version != 0:
        raise DnsFormatError("an EDNS version other than 0", Rcode.BADVERS, id=id_, rd=rd, query=query)
    return query


def _read_opt(reader: _Reader) -> Edns:
    if reader.name():
        raise reader.fail("the additional record is not an EDNS OPT record (its name must be the root)")
    if reader.u16("the OPT record") != TYPE_OPT:
        raise reader.fail("the additional record is not an EDNS OPT record")
    payload = reader.u16("the OPT record")
    extended, version, flags = struct.unpack("!BBH", reader.take(4, "the OPT record"))
    if extended:
        raise reader.fail("an extended RCODE in a query")
    rdata = reader.take(reader.u16("the OPT record"), "the OPT options")
    offset = 0
    while offset < len(rdata):  # options are skipped, but must be well formed (RFC 6891 6.1.2)
        if offset + 4 > len(rdata):
            raise reader.fail("the OPT options end inside an option header")
        (length,) = struct.unpack_from("!H", rdata, offset + 2)
        offset += 4 + length
        if offset > len(rdata):
            raise reader.fail("an OPT option runs past its record")
    return Edns(version, payload, bool(flags & 0x8000))


class TcpFramer:
    """Splits a DNS-over-TCP stream (RFC 1035 4.2.2: a 2-octet length, then the message) into messages.

    Holds at most one incomplete message. A length under a header's size or
    over :data:`MAX_QUERY` is a :class:`DnsFormatError` with ``rcode=None``:
    the stream cannot be trusted past it, so the connection is closed.
    """

    def __init__(self, max_message: int = MAX_QUERY) -> None:
        self._buffer = b""
        self._max = max_message
        self._broken = False

    def feed(self, data: bytes) -> list[bytes]:
        """The messages ``data`` completes, in order; the remainder waits for the next call.

        Once a length was refused, every later call is refused too.
        """
        if self._broken:
            raise DnsFormatError("the stream already broke its framing", None)
        buffer = self._buffer + data
        messages: list[bytes] = []
        while len(buffer) >= 2:
            (length,) = struct.unpack_from("!H", buffer)
            if length < _HEADER.size or length > self._max:
                self._buffer, self._broken = b"", True
                raise DnsFormatError(f"a TCP length prefix outside {_HEADER.size}..{self._max} octets", None)
            if len(buffer) < 2 + length:
                break
            messages.append(buffer[2 : 2 + length])
            buffer = buffer[2 + length :]
        self._buffer = buffer
        return messages


def frame_tcp(message: bytes) -> bytes:
    """``message`` with its 2-octet length prefix, for a TCP stream."""
    if len(message) > MAX_TCP:
        raise ValueError(f"a DNS message over TCP is at most {MAX_TCP} octets")
    return struct.pack("!H", len(message)) + message


# --- building ------------------------------------------------------------------------------------


class _Writer:
    """A message under construction, with name compression against what it already holds."""

    def __init__(self) -> None:
        self.out = bytearray(_HEADER.size)
        self._suffixes: dict[tuple[bytes, ...], int] = {}

    def name(self, labels: Sequence[bytes]) -> None:
        for i in range(len(labels)):
            key = tuple(label.lower() for label in labels[i:])
            known = self._suffixes.get(key)
            if known is not None:
                self.out += struct.pack("!H", 0xC000 | known)
                return
            if len(self.out) < 0x4000:  # a pointer holds 14 bits of offset
                self._suffixes[key] = len(self.out)
            self.out += bytes([len(labels[i])]) + labels[i]
        self.out += b"\x00"

    def record(self, owner: Sequence[bytes], rtype: int, ttl: int, rdata: bytes) -> None:
        self.name(owner)
        self.out += struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata

    def cname(self, owner: Sequence[bytes], target: Sequence[bytes], ttl: int) -> None:
        self.name(owner)
        self.out += struct.pack("!HHI", TYPE_CNAME, CLASS_IN, ttl)
        length_at = len(self.out)
        self.out += b"\x00\x00"
        self.name(target)
        struct.pack_into("!H", self.out, length_at, len(self.out) - length_at - 2)


def _labels(name: str) -> tuple[bytes, ...]:
    canonical = host_name(name)
    if canonical is None:
        raise ValueError("a CNAME target must be a host name (RFC 1123)")
    return tuple(label.encode("ascii") for label in canonical.split("."))


def _opt(rcode: Rcode) -> bytes:
    """Our OPT record: root name, our UDP size, the extended rcode's high bits, version 0."""
    return b"\x00" + struct.pack("!HHBBHH", TYPE_OPT, MAX_UDP, rcode >> 4, 0, 0, 0)


def _header(id_: int, rd: bool, rcode: Rcode, counts: tuple[int, int, int, int], truncated: bool) -> bytes:
    flags = _QR | _RA | (rcode & _RCODE) | (_RD if rd else 0) | (_TC if truncated else 0)
    return _HEADER.pack(id_, flags, *counts)


def build_response(
    query: Query,
    rcode: Rcode,
    *,
    addresses: Sequence[IPAddress] = (),
    chain: Sequence[str] = (),
    ttl: int = 0,
    limit: int = MAX_UDP,
) -> bytes:
    """The answer to ``query``: ``rcode``, then (NOERROR only) the CNAME chain and the addresses.

    ``chain`` lists CNAME targets in order: the query's name is an alias of
    ``chain[0]``, which is an alias of ``chain[1]``... and the addresses belong
    to the last. Only addresses of the asked type go in (IPv4 for A, IPv6 for
    AAAA; the rest are left out), so NOERROR with none of them is NODATA. Over
    ``limit`` octets, the answer goes with TC set and no records but OPT.
    """
    if rcode != Rcode.NOERROR and (addresses or chain):
        raise ValueError("only a NOERROR answer carries records")
    if not 0 < limit <= MAX_TCP:
        raise ValueError(f"the limit is 1..{MAX_TCP} octets")
    ttl = max(0, min(ttl, _MAX_TTL))
    writer = _Writer()
    writer.name(query.labels)
    writer.out += struct.pack("!HH", query.qtype, query.qclass)
    question_end = len(writer.out)
    owner: Sequence[bytes] = query.labels
    answers = 0
    for target in chain:
        labels = _labels(target)
        writer.cname(owner, labels, ttl)
        owner, answers = labels, answers + 1
    version = {TYPE_A: 4, TYPE_AAAA: 6}.get(query.qtype)
    for address in addresses:
        if address.version == version:
            writer.record(owner, query.qtype, ttl, address.packed)
            answers += 1
    opt = _opt(rcode) if query.edns is not None else b""
    truncated = len(writer.out) + len(opt) > limit
    if truncated:
        del writer.out[question_end:]
        answers = 0
    body = bytes(writer.out[_HEADER.size :]) + opt
    header = _header(query.id, query.rd, rcode, (1, answers, 0, 1 if opt else 0), truncated)
    return header + body


def error_response(error: DnsFormatError, limit: int = MAX_UDP) -> bytes | None:
    """What to send for a refused message: None (nothing), a header-only answer, or the echoed question."""
    if error.rcode is None:
        return None
    if error.query is not None:
        return build_response(error.query, error.rcode, limit=limit)
    assert error.id is not None, "an rcode comes with the id to echo"
    return _header(error.id, error.rd, error.rcode, (0, 0, 0, 0), truncated=False)
