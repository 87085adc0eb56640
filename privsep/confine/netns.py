"""The sandbox's own network namespace, made usable for its resolver and proxies (plan/egress.py).

Runs in init, which still holds the capabilities of the namespace's owner
(root's, or those of the user namespace a non-root broker made), before any
program of the sandbox exists:

- ``lo`` goes up (a new network namespace has it down), so that 127.0.0.0/8
  reaches something at all. Nothing else is configured: the namespace has no
  other interface and no route out; every connection beyond it is one the
  broker makes.
- one socket per :class:`~privsep.plan.egress.Endpoint` is bound there
  (port 53 needs the capability, which the sandbox's programs never have),
  listening for TCP, and sent to the broker over the control socket; init's
  copies are closed at once. The broker serves them from its loop; since they
  are bound first and without ``SO_REUSEADDR``/``SO_REUSEPORT``, nothing in
  the sandbox can bind those addresses.

Without egress in the plan nothing here runs, and ``lo`` stays down as before.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from collections.abc import Callable, Sequence

from privsep.errors import ConfinementError
from privsep.plan.egress import EgressPlan

__all__ = ["serve_egress"]

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH14x")
_BACKLOG = 64

Report = Callable[..., None]


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        request = _IFREQ.pack(b"lo", 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def serve_egress(egress: EgressPlan, report: Report) -> None:
    """Bring ``lo`` up, bind the egress sockets, report each (``report("egress", [fd], step=kind)``)."""
    try:
        _loopback_up()
    except OSError as exc:
        raise ConfinementError("egress", f"bringing the loopback interface up: {exc.strerror}") from None
    made: list[tuple[str, socket.socket]] = []
    try:
        for endpoint in egress.endpoints():
            sock = socket.socket(socket.AF_INET, endpoint.type | socket.SOCK_CLOEXEC)
            made.append((endpoint.kind, sock))
            try:
                sock.bind((endpoint.host, endpoint.port))
                if not endpoint.udp:
                    sock.listen(_BACKLOG)
            except OSError as exc:
                raise ConfinementError(
                    "egress", f"binding {endpoint.host}:{endpoint.port} in the sandbox: {exc.strerror}"
                ) from None
        _send(made, report)
    finally:
        for _, sock in made:
            sock.close()


def _send(made: Sequence[tuple[str, socket.socket]], report: Report) -> None:
    for kind, sock in made:
        report("egress", [sock.fileno()], step=kind)
