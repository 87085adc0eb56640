"""The parts of the wire protocol that need no pydantic: frame limits and datagram framing.

``privsep.protocol`` re-exports every name here; this module exists so that
what moves bytes without parsing requests (``channel``, the broker's relays
and answers) can be imported without the request models, which cost more to
build than a whole ``privsep run -- /bin/true`` may take (issue 16): the
broker imports ``protocol`` only when the first request arrives.
"""

from __future__ import annotations

import struct

from privsep._lazy import lazy_module

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
else:  # only datagrams use it (a relayed UDP flow): not every privsep run's start
    ipaddress = lazy_module("ipaddress", globals())

__all__ = [
    "DATAGRAM_FRAMING",
    "MAX_DATAGRAM",
    "MAX_FDS",
    "MAX_FRAME",
    "decode_datagram",
    "encode_datagram",
]

#: Largest frame in bytes, either direction. One frame is one SEQPACKET message,
#: so the receiver can size its buffer once and detect anything bigger.
MAX_FRAME = 65536
#: Most file descriptors one frame may carry: the kernel's SCM_MAX_FD.
MAX_FDS = 253


# --------------------------------------------------------------------------- relayed UDP datagrams
#
# A UDP "bind" reaches the child as a unix seqpacket socket whose messages
# carry one datagram each, prefixed with the peer's address: family (4 or
# 6, one byte), port (two bytes, big-endian), the address (4 or 16 bytes),
# then the payload. From the broker it names the sender; from the child,
# the destination.

_DATAGRAM_HEAD = struct.Struct("!BH")
_ADDRESS_LEN = {4: 4, 6: 16}
#: The largest UDP payload either side relays (the IP length field's limit).
MAX_DATAGRAM = 65535
#: Room read beyond a payload for the address in front of it (at most 19 bytes).
DATAGRAM_FRAMING = 32


def encode_datagram(address: tuple[str, int], payload: bytes) -> bytes:
    """Frame ``payload`` for (or from) ``address``; raises ValueError for a bad address."""
    host, port = address
    ip = ipaddress.ip_address(host)
    if not 0 <= port <= 65535:
        raise ValueError("port out of range")
    return _DATAGRAM_HEAD.pack(ip.version, port) + ip.packed + payload


def decode_datagram(frame: bytes) -> tuple[tuple[str, int], bytes] | None:
    """The address and payload of a framed datagram, or None if the frame is malformed."""
    if len(frame) < _DATAGRAM_HEAD.size:
        return None
    family, port = _DATAGRAM_HEAD.unpack_from(frame)
    size = _ADDRESS_LEN.get(family)
    if size is None or len(frame) < _DATAGRAM_HEAD.size + size:
        return None
    start = _DATAGRAM_HEAD.size
    raw = frame[start : start + size]
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = (
        ipaddress.IPv6Address(raw) if family == 6 else ipaddress.IPv4Address(raw)
    )
    return (str(ip), port), frame[start + size :]
