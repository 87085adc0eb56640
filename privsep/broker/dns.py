"""The sandbox's resolver: DNS over UDP and TCP at 127.0.0.53:53 in its namespace, answered by the broker.

One query, one decision (:func:`privsep.egress.names.decide_question`, from
the policy alone, before any lookup):

- a name no ``[[connect]]`` grant names gets NXDOMAIN at once, whatever its
  type: nothing is looked up, so nothing about it leaves the host (no
  exfiltration through ``secret.attacker.example``). Audited, and in the
  report at exit with the fix (``--allow-connect NAME:PORT``);
- a type other than A and AAAA gets NODATA (NOTIMP for query and meta types)
  at once: TXT is never answered;
- A and AAAA for an allowed name: its pinned addresses (``[network] hosts``,
  never looked up on the host), or the host's ``getaddrinfo`` on a worker.
  What is answered is first recorded in the sandbox's
  :class:`~privsep.egress.answered.AnswerBook` (the transparent connect path
  admits those addresses) and only what was recorded is answered; a book full
  of live answers gets SERVFAIL. No CNAME chain: the answer gives the asked
  name its addresses directly (the canonical name may be one no rule names).

``getaddrinfo`` gives no TTL, so host answers carry :data:`HOST_TTL` and are
kept that long per sandbox (A and AAAA come from one lookup); pinned ones
carry :data:`PINNED_TTL`. Bounded per sandbox: :data:`MAX_LOOKUPS` host
lookups in flight (one worker each), :data:`MAX_QUEUED` names waiting for
one, :data:`MAX_WAITING` queries waiting in all (past it: SERVFAIL at once),
:data:`MAX_TCP_CONNECTIONS` TCP connections, and each readiness of the UDP
socket reads at most :data:`UDP_BATCH` queries, so a flood waits its turn
behind its siblings' work on the loop.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from privsep.broker.events import READ, WRITE
from privsep.broker.report import Denial
from privsep.egress.dnswire import (
    MAX_QUERY,
    MAX_TCP,
    MAX_UDP,
    TYPE_A,
    DnsFormatError,
    Query,
    Rcode,
    TcpFramer,
    build_response,
    error_response,
    frame_tcp,
    parse_query,
)
from privsep.egress.names import QuestionDecision, Reply, decide_question

if TYPE_CHECKING:
    from privsep.broker.egress import Egress, Handler
    from privsep.policy.model import IPAddress

__all__ = ["DnsTcp", "DnsUdp", "Resolver", "lookup"]

HOST_TTL = 30
PINNED_TTL = 300
_NEGATIVE_TTL = 5
MAX_LOOKUPS = 4
MAX_QUEUED = 64
MAX_WAITING = 256
_MAX_CACHED = 512
MAX_TCP_CONNECTIONS = 8
UDP_BATCH = 32
_MAX_ADDRESSES = 16
_TCP_OUT = 64 * 1024
_TYPES = {1: "A", 28: "AAAA", 5: "CNAME", 16: "TXT", 15: "MX", 33: "SRV", 12: "PTR", 64: "SVCB", 65: "HTTPS"}

#: How an answer goes back: called once per query with the response, or None when none is sent.
Send = Callable[[bytes | None], None]


@dataclass(frozen=True)
class Looked:
    """What the host's resolver said of a name."""

    rcode: Rcode
    addresses: tuple[IPAddress, ...]
    why: str
    """For the audit record."""


def lookup(name: str) -> Looked:
    """The host's ``getaddrinfo`` for ``name`` (both families at once); on a worker. Total."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:
            return Looked(Rcode.NXDOMAIN, (), "the host's resolver says the name does not exist")
        if exc.errno == getattr(socket, "EAI_NODATA", None):
            return Looked(Rcode.NOERROR, (), "the host's resolver has no address for the name")
        return Looked(Rcode.SERVFAIL, (), f"the host's resolver failed: {exc.strerror}")
    except (OSError, UnicodeError) as exc:
        return Looked(Rcode.SERVFAIL, (), f"the host's resolver failed: {exc}")
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        try:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        except ValueError:
            continue
        if address not in addresses:
            addresses.append(address)
    return Looked(Rcode.NOERROR, tuple(addresses[:_MAX_ADDRESSES]), "resolved on the host")


def _what(query: Query) -> str:
    """The audit's and the report's name for a query: NAME/TYPE (odd octets escaped by the codec)."""
    return f"{query.name}/{_TYPES.get(query.qtype, f'TYPE{query.qtype}')}"


@dataclass
class _Waiting:
    query: Query
    decision: QuestionDecision
    send: Send
    limit: int


class Resolver:
    """One sandbox's resolver: answers queries (bytes in, bytes out through ``send``)."""

    def __init__(self, egress: Egress) -> None:
        self._egress = egress
        self._cache: collections.OrderedDict[str, tuple[float, Looked]] = collections.OrderedDict()
        self._waiting: dict[str, list[_Waiting]] = {}
        self._queued: collections.deque[str] = collections.deque()
        self._running = 0
        self._waiters = 0
        self.lookups = 0
        """Names this sandbox had looked up on the host (never a denied or a pinned one)."""

    def answer(self, data: bytes, send: Send, limit: int) -> None:
        """Answer one query message; ``send`` gets the response now or when its lookup is done."""
        egress = self._egress
        try:
            query = parse_query(data)
        except DnsFormatError as exc:
            send(error_response(exc, limit))
            if exc.rcode is not None:
                denial = Denial("resolve", "(a malformed query)", None, f"not answered: {exc.reason}", None)
                egress.server.recorder.noted(
                    egress.child,
                    "resolve",
                    "(a malformed query)",
                    "deny",
                    None,
                    message=exc.reason,
                    denial=denial,
                )
            return
        decision = decide_question(egress.policy, egress.pins, query.name, query.qtype)
        if decision.reply is not Reply.ADDRESSES:
            send(build_response(query, decision.rcode, limit=limit))
            self._refused(query, decision)
            return
        name = decision.name.name
        assert name is not None, "an allowed name is a host name"
        pinned = decision.name.pinned
        if pinned is not None:
            self._respond(_Waiting(query, decision, send, limit), Looked(Rcode.NOERROR, pinned, "pinned"))
            return
        cached = self._cache.get(name)
        if cached is not None and cached[0] >= egress.now():
            self._respond(_Waiting(query, decision, send, limit), cached[1])
            return
        if self._waiters >= MAX_WAITING or (name not in self._waiting and len(self._queued) >= MAX_QUEUED):
            send(build_response(query, Rcode.SERVFAIL, limit=limit))
            why = (
                f"not looked up: the sandbox has {MAX_WAITING} queries waiting for the host's resolver "
                "already (a flood costs the sandbox only)"
            )
            egress.server.recorder.noted(
                egress.child, "resolve", _what(query), "error", self._rule(decision), message=why
            )
            return
        self._waiters += 1
        waiting = self._waiting.setdefault(name, [])
        waiting.append(_Waiting(query, decision, send, limit))
        if len(waiting) == 1:  # the first query for it: one lookup answers every query that waits
            self._queued.append(name)
            self._next()

    # -- lookups ----------------------------------------------------------------------------

    def _next(self) -> None:
        egress = self._egress
        handback = egress.server.handback
        while self._queued and self._running < MAX_LOOKUPS:
            name = self._queued.popleft()
            self._running += 1
            self.lookups += 1

            def job(name: str = name) -> None:
                try:
                    looked = lookup(name)
                except Exception:  # lookup is total; should it not be, the queries still get an answer
                    looked = Looked(Rcode.SERVFAIL, (), "the lookup failed (an internal error of privsep's)")
                handback.put(lambda: self._looked_up(name, looked))

            egress.server.workers.submit(job)

    def _looked_up(self, name: str, looked: Looked) -> None:
        """On the loop: a lookup is done; answer every query waiting for it."""
        self._running -= 1
        if not self._egress.alive:
            return  # the sandbox has ended: nobody to answer
        ttl = HOST_TTL if looked.rcode is Rcode.NOERROR and looked.addresses else _NEGATIVE_TTL
        self._cache[name] = (self._egress.now() + ttl, looked)
        self._cache.move_to_end(name)
        while len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
        for waiting in self._waiting.pop(name, []):
            self._waiters -= 1
            self._respond(waiting, looked)
        self._next()

    # -- answers ----------------------------------------------------------------------------

    @staticmethod
    def _rule(decision: QuestionDecision) -> str | None:
        rules = decision.name.rules
        return f"connect[{rules[0]}]" if rules else None

    def _respond(self, waiting: _Waiting, looked: Looked) -> None:
        egress = self._egress
        query, decision, send, limit = waiting.query, waiting.decision, waiting.send, waiting.limit
        name = decision.name.name
        assert name is not None
        recorder, rule, what = egress.server.recorder, self._rule(decision), _what(query)
        if looked.rcode is not Rcode.NOERROR:
            send(build_response(query, looked.rcode, limit=limit))
            recorder.noted(
                egress.child, "resolve", what, "error", rule, message=f"{decision.message}; {looked.why}"
            )
            return
        version = 4 if query.qtype == TYPE_A else 6
        addresses = [a for a in looked.addresses if a.version == version]
        if not addresses:
            send(build_response(query, Rcode.NOERROR, limit=limit))  # NODATA: none of this type
            recorder.noted(
                egress.child, "resolve", what, "allow", rule, message=f"{decision.message}; no such address"
            )
            return
        ttl = PINNED_TTL if decision.name.pinned is not None else HOST_TTL
        recorded = egress.book.record(name, addresses, ttl, egress.now())
        if not recorded.addresses:
            send(build_response(query, Rcode.SERVFAIL, limit=limit))
            recorder.noted(
                egress.child,
                "resolve",
                what,
                "error",
                rule,
                message="not answered: the sandbox's record of answered addresses is full of live answers",
            )
            return
        send(
            build_response(query, Rcode.NOERROR, addresses=recorded.addresses, ttl=recorded.ttl, limit=limit)
        )
        shown = ", ".join(map(str, recorded.addresses))
        recorder.noted(egress.child, "resolve", what, "allow", rule, message=f"{decision.message}: {shown}")

    def _refused(self, query: Query, decision: QuestionDecision) -> None:
        """A policy refusal (NXDOMAIN for the name, or the type): audited and reported."""
        egress = self._egress
        what = _what(query)
        hint = decision.name.hint
        subject = None if hint is None else hint.split(" ", 1)[1]
        denial = Denial(
            "resolve", what, self._rule(decision), decision.message, decision.name.allow_flag, subject
        )
        egress.server.recorder.noted(
            egress.child,
            "resolve",
            what,
            "deny",
            self._rule(decision),
            message=decision.message,
            denial=denial,
        )


class DnsUdp:
    """The resolver's UDP socket: at most :data:`UDP_BATCH` queries per readiness."""

    def __init__(self, egress: Egress, sock: socket.socket) -> None:
        self.egress = egress
        self._sock = sock
        self._closed = False

    def ready(self, fd: int) -> None:
        if self._closed:
            return
        for _ in range(UDP_BATCH):
            try:
                data, peer = self._sock.recvfrom(MAX_QUERY + 1)  # longer: cut, and refused as too long
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error of an earlier answer: nothing to read
            self.egress.resolver.answer(data, functools.partial(self._send, peer=peer), MAX_UDP)

    def _send(self, response: bytes | None, peer: tuple[str, int]) -> None:
        if response is None or self._closed:
            return
        with contextlib.suppress(OSError):  # a full buffer drops the answer, as UDP may
            self._sock.sendto(response, peer)

    def close(self) -> None:
        """Stop serving: out of the loop's watch too, or a closed resolver would go on reading (and
        working on) every query, answering none. The socket itself is the egress's to close."""
        if self._closed:
            return
        self._closed = True
        self.egress.server.events.forget(self._sock.fileno())


class DnsTcp:
    """One DNS-over-TCP connection: queries in, answers out in order of completion, bounded."""

    def __init__(self, egress: Egress, sock: socket.socket, done: Callable[[Handler], None]) -> None:
        self.egress = egress
        self._sock = sock
        self._done = done
        self._framer = TcpFramer()
        self._out = bytearray()
        self._pending = 0
        self._eof = False
        self._closed = False

    def ready(self, fd: int) -> None:
        if self._closed:
            return
        self._flush()
        if not self._eof and len(self._out) < _TCP_OUT:
            try:
                data = self._sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self.close()
                return
            if data == b"":
                self._eof = True
            elif data:
                try:
                    messages = self._framer.feed(data)
                except DnsFormatError:
                    self.close()  # the stream's framing is broken: nothing after it can be trusted
                    return
                for message in messages:
                    self._pending += 1
                    self.egress.resolver.answer(message, self._answered, MAX_TCP)
        self._update()

    def _answered(self, response: bytes | None) -> None:
        if self._closed:
            return
        self._pending -= 1
        if response is not None:
            self._out += frame_tcp(response)
            self._flush()
        self._update()

    def _flush(self) -> None:
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._out.clear()
                self._eof = True
                return
            del self._out[:sent]

    def _update(self) -> None:
        if self._closed:
            return
        if self._eof and not self._out and not self._pending:
            self.close()
            return
        want = (READ if not self._eof and len(self._out) < _TCP_OUT else 0) | (WRITE if self._out else 0)
        self.egress.server.watch(self._sock.fileno(), want, self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.egress.server.events.forget(self._sock.fileno())
        self._sock.close()
        self._done(self)
