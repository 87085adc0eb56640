"""Brokered network access: the broker resolves, checks, connects or binds, and hands over the socket.

The child has no network of its own (a fresh, empty network namespace; its
TCP/UDP sockets reach nothing there, and their connect and bind go to the
broker), so every TCP connection it makes is one the broker made for it.
Names are resolved here, and only names a rule could allow: a lookup of
an arbitrary name would leak data through DNS. Every resolved address is checked (a name that resolves to a
forbidden address is denied, whatever else it resolves to). Then the
broker connects itself, with a timeout, from its own network namespace.
Connecting is slow, so these calls run on the broker's worker threads.

A UDP socket from the broker could ``sendto`` any address, whatever it
was connected to, so the child never gets one. A UDP "connection" is a
relay instead (``relay.py``): the child holds a unix seqpacket socket, and
the broker forwards its datagrams to the one allowed peer. A UDP bind is
relayed too: the child reads and writes datagrams framed with the peer's
address, and may answer only peers that wrote to it first.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Sequence

from privsep.broker.actas import sandbox_ids, seen_as
from privsep.broker.answers import Answer, Refusal, denied, failed
from privsep.broker.files import FileService
from privsep.broker.relay import UdpRelay, UdpServerRelay
from privsep.policy.decide import decide_bind, decide_connect, may_resolve
from privsep.policy.model import Policy
from privsep.protocol import ErrorCode

_MAX_ADDRESSES = 16

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class NetService:
    def __init__(self, policy: Policy, files: FileService) -> None:
        self._policy = policy
        self._files = files

    def connect(self, host: str, port: int, proto: str, timeout_ms: int) -> Answer:
        """Runs on a worker thread: resolution and connect may take a while."""
        addresses = self._resolve(host, port, proto)
        rules = []
        for address in addresses:
            decision = decide_connect(self._policy, host, port, proto, address)
            if not decision.allowed:
                raise denied(decision.message, allow=decision.allow_flag, rule=_rule(decision.rule))
            rules.append(_rule(decision.rule))
        return self.connect_decided(addresses, rules, port, proto, timeout_ms)

    @staticmethod
    def connect_decided(
        addresses: Sequence[IPAddress], rules: Sequence[str | None], port: int, proto: str, timeout_ms: int
    ) -> Answer:
        """Connect to the first of ``addresses`` that answers; each was allowed by its rule already.

        Runs on a worker. The decision is the caller's: :meth:`connect` decides
        by the rules, the sandbox's egress (broker/egress.py) by the rules and
        the addresses its resolver answered.
        """
        last: OSError | None = None
        for address, rule in zip(addresses, rules, strict=True):
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if proto == "udp":
                try:
                    relay, fd = UdpRelay.open(family, (str(address), port), timeout_ms / 1000)
                except OSError as exc:
                    last = exc
                    continue
                return Answer({"address": [str(address), port]}, fd=fd, rule=rule, relay=relay)
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(timeout_ms / 1000)
                sock.connect((str(address), port))
                sock.setblocking(True)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            return Answer({"address": [str(address), port]}, fd=sock.detach(), rule=rule)
        assert last is not None
        if isinstance(last, TimeoutError):
            raise failed(f"connection timed out after {timeout_ms} ms", errno=errno.ETIMEDOUT)
        raise failed(f"connection failed: {last.strerror or last}", errno=last.errno)

    def _resolve(self, host: str, port: int, proto: str) -> list[IPAddress]:
        literal = _literal(host)
        if literal is not None:
            return [literal]
        if not may_resolve(self._policy, host, port, proto):
            # Decided without a lookup, so the name never reaches DNS.
            decision = decide_connect(self._policy, host, port, proto)
            raise denied(decision.message, allow=decision.allow_flag, rule=_rule(decision.rule))
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        try:
            infos = socket.getaddrinfo(host, port, type=kind)
        except socket.gaierror as exc:
            raise Refusal(ErrorCode.NOT_FOUND, f"the name does not resolve ({exc.strerror})") from None
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if address not in addresses:
                addresses.append(address)
        return addresses[:_MAX_ADDRESSES]

    def decide_bind(self, host: str, port: int, proto: str) -> str | None:
        """The rule that allows this bind (``bind[i]``); raises the denial ``client.bind`` gets."""
        if _literal(host) is None:
            # No flag to suggest: --allow-bind takes an IP address too.
            raise denied("bind needs an IP address (127.0.0.1, 0.0.0.0, ::), not a host name")
        decision = decide_bind(self._policy, host, port, proto)
        if not decision.allowed:
            raise denied(decision.message, allow=decision.allow_flag, rule=_rule(decision.rule, "bind"))
        return _rule(decision.rule, "bind")

    def bind(self, host: str, port: int, proto: str, backlog: int) -> Answer:
        rule = self.decide_bind(host, port, proto)
        address = ipaddress.ip_address(host)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        if proto == "udp":
            try:
                relay, fd = UdpServerRelay.open(family, (str(address), port))
            except OSError as exc:
                raise _bind_failed(exc, port, rule) from None
            bound = relay.peer.getsockname()
            return Answer({"address": [str(bound[0]), int(bound[1])]}, fd=fd, rule=rule, relay=relay)

        def reuse(sock: socket.socket) -> None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        return self.listen_tcp(family, (str(address), port), rule, backlog, prepare=reuse)

    def listen_tcp(
        self,
        family: int,
        address: tuple[str, int] | tuple[str, int, int, int],
        rule: str | None,
        backlog: int,
        *,
        prepare: Callable[[socket.socket], None],
    ) -> Answer:
        """Bind and listen a TCP socket of the broker's own, after ``prepare`` set its options.

        Only after :meth:`decide_bind` allowed ``address``. The socket listens
        before anyone else sees it: a bound TCP socket that does not listen
        could still be connect()ed, to anywhere, from this network namespace.
        """
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            prepare(sock)
            sock.bind(address)
            sock.listen(backlog)
            bound = sock.getsockname()
        except OSError as exc:
            sock.close()
            raise _bind_failed(exc, address[1], rule) from None
        return Answer({"address": [str(bound[0]), int(bound[1])]}, fd=sock.detach(), rule=rule)

    def connect_unix(self, path: str) -> Answer:
        """Connect to a unix socket found beneath a grant, through its O_PATH fd (no path race)."""
        decision, pathfd = self._files.connect_unix(path)
        rule = f"files[{decision.rule}]"
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
                sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
                try:
                    sock.settimeout(5)
                    with seen_as(sandbox_ids.get()):  # the daemon's peer is the sandbox, not root
                        sock.connect(f"/proc/self/fd/{pathfd}")
                    sock.setblocking(True)
                    return Answer(fd=sock.detach(), rule=rule)
                except OSError as exc:
                    sock.close()
                    if exc.errno != 91:  # EPROTOTYPE: the other socket type
                        raise failed(f"connection failed: {exc.strerror or exc}", rule=rule) from None
            raise failed("the socket is neither stream nor seqpacket", rule=rule)
        finally:
            os.close(pathfd)


def _rule(index: int | None, kind: str = "connect") -> str | None:
    return None if index is None else f"{kind}[{index}]"


def unprivileged_port_start() -> int:
    """The lowest port a process without CAP_NET_BIND_SERVICE may bind (1024 unless the sysctl says)."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 1024


def _bind_failed(exc: OSError, port: int, rule: str | None) -> Refusal:
    if exc.errno == errno.EACCES and os.geteuid() != 0 and 0 < port < (start := unprivileged_port_start()):
        # Not the policy's doing: say so, in the denial report too (the program only sees EACCES).
        return denied(
            f"the policy allows it, but ports below {start} need a broker running as root "
            f"(this one is uid {os.geteuid()}; net.ipv4.ip_unprivileged_port_start is {start})",
            rule=rule,
        )
    return failed(f"bind failed: {exc.strerror or exc}", rule=rule, errno=exc.errno)
