"""The resolver's UDP handler (privsep/broker/dns.py) when a bug of ours breaks it: it stops.

``EgressServer.ready`` closes a handler whose ``ready`` raised (rule 6: the bug costs that
handler only). A closed UDP handler must leave the loop's watch: before, it stayed watched and
went on reading and working on every later query while answering none.
"""

from __future__ import annotations

import socket
from typing import cast

from privsep.broker.dns import DnsUdp
from privsep.broker.egress import Egress, EgressServer
from privsep.broker.events import READ, Events


class _Broken:
    """A resolver with a bug: every query raises."""

    def __init__(self) -> None:
        self.asked = 0

    def answer(self, data: bytes, send: object, limit: int) -> None:
        self.asked += 1
        raise RuntimeError("a bug of ours")


class _Recorder:
    def internal_error(self, *args: object) -> None:  # pragma: no cover - only for a real Egress
        raise AssertionError("the stand-in egress is not an Egress")


class _Egress:
    def __init__(self, server: EgressServer) -> None:
        self.server = server
        self.resolver = _Broken()


def test_a_udp_resolver_closed_by_a_bug_is_no_longer_watched_or_read() -> None:
    events = Events()
    server = EgressServer(events, _Recorder(), None, None)  # type: ignore[arg-type]
    egress = _Egress(server)
    listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listening.bind(("127.0.0.1", 0))
        listening.setblocking(False)
        handler = DnsUdp(cast(Egress, egress), listening)
        server.watch(listening.fileno(), READ, handler)
        sender.sendto(b"first query", listening.getsockname())
        [(fd, owner, role)] = events.select(1.0)
        assert (fd, owner, role) == (listening.fileno(), handler, "egress")
        server.ready(handler, fd)  # the bug: the handler is closed
        assert egress.resolver.asked == 1

        sender.sendto(b"second query", listening.getsockname())
        assert events.select(0.05) == []  # no longer watched
        handler.ready(listening.fileno())  # and a stray call reads nothing
        assert egress.resolver.asked == 1
        assert listening.recv(100) == b"second query"  # still there: nobody read it
    finally:
        events.close()
        listening.close()
        sender.close()
