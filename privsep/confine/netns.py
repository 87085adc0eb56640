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

import _socket
import fcntl
import struct

from privsep.errors import ConfinementError
from privsep.plan.egress import EgressPlan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Report = Callable[..., None]

__all__ = ["serve_egress"]

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH14x")
_BACKLOG = 64


def _loopback_up() -> None:
    # _socket's sockets (see privsep/channel.py), closed by hand: they are no context managers
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        request = _IFREQ.pack(b"lo", 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
    finally:
        sock.close()


def serve_egress(egress: EgressPlan, report: Report) -> None:
    """Bring ``lo`` up, bind the egress sockets, report each (``report("egress", [fd], step=kind)``)."""
    try:
        _loopback_up()
    except OSError as exc:
        raise ConfinementError("egress", f"bringing the loopback interface up: {exc.strerror}") from None
    made: list[tuple[str, _socket.socket]] = []
    try:
        for endpoint in egress.endpoints():
            sock = _socket.socket(_socket.AF_INET, endpoint.type | _socket.SOCK_CLOEXEC)
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


def _send(made: Sequence[tuple[str, _socket.socket]], report: Report) -> None:
    for kind, sock in made:
        report("egress", [sock.fileno()], step=kind)
