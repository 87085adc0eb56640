"""A sandbox's egress by host name, served by the broker: its resolver, its proxies, its admitted addresses.

The sandbox's init makes the sockets inside the sandbox's own network
namespace (``confine/netns.py``: 127.0.0.53:53 for DNS over UDP and TCP,
127.0.0.1:3128 for HTTP, 127.0.0.1:1080 for SOCKS5) and sends them over the
control socket; :meth:`Egress.adopt` checks each (a socket of the kind the plan
named, bound where it should be, in the sandbox's namespace and not the
broker's) and the loop serves it from then on (role ``egress``): the resolver
in ``dns.py``, the proxies in ``proxy.py``. The broker never enters the
sandbox's namespace (``setns`` would need CAP_SYS_ADMIN, which a non-root
broker lacks); it only holds sockets that live there.

What an unmodified program's ``connect`` meets (``transparent.py`` asks here):

- to one of those addresses, on a socket of the sandbox's own namespace: the
  broker connects that very socket there (:meth:`Egress.connect_inside`: the
  child's own socket, shared with the broker's copy, to the address the
  broker read once), so the program reaches privsep's resolver or proxy and
  nothing else;
- anywhere else: admitted by :func:`privsep.egress.admit.decide_answered_connect`
  (:meth:`Egress.admit`): a rule naming the address itself, or an allowed name
  the sandbox's resolver answered with that address, still live. The broker
  then connects a socket of its own, as for any transparent connect.

Each sandbox's egress is bounded on its own (DNS lookups and proxy connections
in flight, connections open, bytes buffered): a hostile sandbox flooding its
resolver or its proxy costs only itself. Every handler is total: a bug of ours
an input reaches is logged, that connection closed, and every sibling carries on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from privsep import _linux, protocol
from privsep.broker import dns, notify, proxy, unixconnect
from privsep.broker.answers import Answer, Refusal, denied
from privsep.broker.events import READ, Events
from privsep.broker.net import NetService
from privsep.broker.report import Recorder
from privsep.broker.services import Services
from privsep.broker.transparent import Deferred
from privsep.broker.workers import Handback, Workers
from privsep.egress.admit import decide_answered_connect
from privsep.egress.answered import AnswerBook
from privsep.egress.names import PinnedHosts
from privsep.plan.egress import EgressPlan, Endpoint
from privsep.policy.model import Policy

if TYPE_CHECKING:
    from privsep.broker.child import Child

__all__ = ["Admitted", "Egress", "EgressServer", "Handler"]

_SIOCGSKNS = 0x894C  # the network namespace of a socket, as an fd
_OWN_NETNS = os.stat("/proc/self/ns/net").st_ino


class Handler(Protocol):
    """One watched fd of a sandbox's egress (or two, for a relay); the loop calls ``ready``."""

    def ready(self, fd: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Admitted:
    """A transparent connect :meth:`Egress.admit` allowed; ``connect`` runs on a worker."""

    address: str
    port: int
    rule: str | None

    def connect(self, request: protocol.Connect) -> Answer | Refusal:
        try:
            address = ipaddress.ip_address(self.address)
            return NetService.connect_decided([address], [self.rule], self.port, "tcp", request.timeout_ms)
        except Refusal as refusal:
            return refusal


class EgressServer:
    """What every sandbox's egress shares: the loop's selector, the recorder, the workers."""

    def __init__(self, events: Events, recorder: Recorder, workers: Workers, handback: Handback) -> None:
        self.events = events
        self.recorder = recorder
        self.workers = workers
        self.handback = handback

    def attach(self, child: Child, plan: EgressPlan | None, services: Services | None) -> Egress | None:
        """The sandbox's egress, if its plan has one (without services it would serve nothing)."""
        if plan is None or services is None:
            return None
        return Egress(self, child, plan, services.policy)

    def ready(self, handler: Handler, fd: int) -> None:
        """From the loop: ``fd`` of ``handler`` is ready. Total: a bug of ours closes that handler."""
        try:
            handler.ready(fd)
        except Exception as exc:
            owner = getattr(handler, "egress", None)
            if isinstance(owner, Egress):
                self.recorder.internal_error(owner.child, "the sandbox's resolver or proxy", exc)
            with contextlib.suppress(Exception):
                handler.close()

    def watch(self, fd: int, events: int, handler: Handler) -> None:
        self.events.want(fd, events, "egress", handler)


class Egress:
    """One sandbox's resolver and proxies, and the addresses its resolver answered."""

    def __init__(self, server: EgressServer, child: Child, plan: EgressPlan, policy: Policy) -> None:
        self.server = server
        self.child = child
        self.plan = plan
        self.policy = policy
        self.pins = PinnedHosts.parse(policy.network.hosts)
        self.book = AnswerBook()
        self.handlers: set[Handler] = set()
        self.closed = False
        self._endpoints = {e.kind: e for e in plan.endpoints()}
        self._adopted: dict[str, socket.socket] = {}
        self.resolver = dns.Resolver(self)
        self.proxies = proxy.ProxyLimits()
        self._serve: dict[str, Callable[[socket.socket], Handler]] = {
            "dns_udp": lambda sock: dns.DnsUdp(self, sock),
            "dns_tcp": lambda sock: Acceptor(self, sock, dns.DnsTcp, dns.MAX_TCP_CONNECTIONS, b""),
            "http": lambda sock: Acceptor(
                self, sock, proxy.HttpProxy, proxy.MAX_CONNECTIONS, proxy.HTTP_FULL
            ),
            "socks": lambda sock: Acceptor(
                self, sock, proxy.SocksProxy, proxy.MAX_CONNECTIONS, proxy.SOCKS_FULL
            ),
        }

    @property
    def alive(self) -> bool:
        return not self.closed and self.child.outcome is None

    def now(self) -> float:
        return time.monotonic()

    # -- the sockets init sends ------------------------------------------------------------

    def adopt(self, kind: str, fd: int) -> bool:
        """Take a socket init made for ``kind``; False (and the fd closed) if it is not what the plan says."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return False
        endpoint = self._endpoints.get(kind)
        if endpoint is None or kind in self._adopted or not _is_endpoint(sock, endpoint) or self.closed:
            sock.close()
            return False
        sock.setblocking(False)
        self._adopted[kind] = sock
        handler = self._serve[kind](sock)
        self.handlers.add(handler)
        self.server.watch(sock.fileno(), READ, handler)
        return True

    def serves(self, sock_type: int, peer: tuple[str, int]) -> bool:
        """Whether a connect to ``peer`` on a socket of the sandbox's namespace is for privsep's own."""
        for endpoint in self._endpoints.values():
            if (endpoint.host, endpoint.port) == peer and endpoint.type == sock_type & 0xF:
                return True
        return False

    # -- transparent connect -------------------------------------------------------------

    @staticmethod
    def connect_inside(
        listener: int, note: notify.Notification, sock: socket.socket, address: bytes
    ) -> Deferred | None:
        """Connect the program's own socket to privsep's resolver or proxy, in its namespace.

        On the socket the broker checked, to the address it read once: nothing
        the program changes afterwards is looked at again. A UDP connect only
        sets the peer, so it is done at once, on the loop (a DNS lookup makes one
        each time); a TCP one could wait for a full backlog, so a worker makes it
        (``connect_bounded`` ends that wait).
        """
        if sock.type == socket.SOCK_DGRAM:
            try:
                err = _linux.connect_raw(sock.fileno(), address)
                if err:
                    notify.refuse(listener, note, err)
                else:
                    notify.succeed(listener, note, 0)
            finally:
                sock.close()
            return None
        mine = os.dup(listener)

        def job() -> None:
            try:
                err = unixconnect.connect_bounded(sock, address)
                if err:
                    notify.refuse(mine, note, err)
                else:
                    notify.succeed(mine, note, 0)
            except OSError:
                pass  # the caller has gone
            except Exception:
                with contextlib.suppress(OSError):
                    notify.refuse(mine, note, errno.EIO)
                raise
            finally:
                sock.close()
                os.close(mine)

        def drop() -> None:
            os.close(mine)
            sock.close()

        return Deferred(job, drop)

    def admit(self, request: protocol.Connect) -> Admitted | Refusal:
        """A transparent TCP connect to an address: by the rules, or by what the resolver answered."""
        address = ipaddress.ip_address(request.host)
        decision = decide_answered_connect(
            self.policy, self.book, address, request.port, "tcp", now=self.now(), pins=self.pins
        )
        rule = None if decision.rule is None else f"connect[{decision.rule}]"
        if not decision.allowed:
            return denied(decision.message, allow=decision.allow_flag, rule=rule)
        return Admitted(request.host, request.port, rule)

    # -- the end ----------------------------------------------------------------------------

    def close(self) -> None:
        """The sandbox has ended: every socket closed, every lookup's answer dropped when it comes."""
        if self.closed:
            return
        self.closed = True
        for handler in list(self.handlers):
            with contextlib.suppress(Exception):
                handler.close()
        self.handlers.clear()
        for sock in self._adopted.values():
            self.server.events.forget(sock.fileno())
            sock.close()
        self._adopted.clear()


#: Makes the handler of one accepted connection; it calls ``done`` with itself once closed.
MakeConnection = Callable[["Egress", socket.socket, Callable[[Handler], None]], Handler]


class Acceptor:
    """A listening socket of the sandbox's egress: accepts while the sandbox has room.

    Past ``limit`` open connections a connection is accepted, told ``full``
    (best effort) and closed at once: never left in the backlog, where the
    program's connect, and the worker performing it, would wait.
    """

    def __init__(
        self, egress: Egress, sock: socket.socket, make: MakeConnection, limit: int, full: bytes
    ) -> None:
        self.egress = egress
        self._sock = sock
        self._make = make
        self._limit = limit
        self._full = full
        self._open: set[Handler] = set()

    def ready(self, fd: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ECONNABORTED and friends: that connection is gone
            conn.setblocking(False)
            if len(self._open) >= self._limit:
                with contextlib.suppress(OSError):
                    conn.send(self._full)
                conn.close()
                continue
            handler = self._make(self.egress, conn, self._closed)
            self._open.add(handler)
            self.egress.handlers.add(handler)
            self.egress.server.watch(conn.fileno(), READ, handler)

    def _closed(self, handler: Handler) -> None:
        self._open.discard(handler)
        self.egress.handlers.discard(handler)

    def close(self) -> None:
        for handler in list(self._open):
            with contextlib.suppress(Exception):
                handler.close()
        self._open.clear()


_ACCEPT_BATCH = 16


def _is_endpoint(sock: socket.socket, endpoint: Endpoint) -> bool:
    """The socket is the one the plan names: its kind, its address, in the sandbox's namespace."""
    try:
        if sock.family != socket.AF_INET or sock.type != endpoint.type:
            return False
        if sock.getsockname() != (endpoint.host, endpoint.port):
            return False
        if not endpoint.udp and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        nsfd = fcntl.ioctl(sock.fileno(), _SIOCGSKNS)
    except OSError:
        return False
    try:
        return os.fstat(nsfd).st_ino != _OWN_NETNS  # the sandbox's, never the broker's own
    finally:
        os.close(nsfd)
