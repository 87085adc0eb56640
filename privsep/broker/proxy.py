"""The sandbox's allowlisting proxies: HTTP at 127.0.0.1:3128, SOCKS5 at 127.0.0.1:1080, served by the broker.

For programs that honour ``HTTP_PROXY`` and friends (set by the plan when
``[network] proxy = true``). An addition to transparent connect, not a
replacement: both decide by the same ``[[connect]]`` rules, and a program
that ignores the variables still gets exactly what its direct connects are
allowed. What the proxy adds: the decision is made on the **host name the
client asked for**, so a program needs no DNS at all, and plain-HTTP requests
can carry a header the sandbox never sees (``[[network.inject]]``).

One request per connection (:mod:`privsep.egress.proxyhttp`,
:mod:`privsep.egress.proxysocks` parse it, strictly), decided on the loop:

- a **name**: only one a rule allows on that port is resolved
  (:func:`~privsep.policy.decide.may_resolve`), by the broker (its pinned
  addresses first, never looked up), and every address it resolves to must be
  allowed for it (:func:`~privsep.egress.admit.decide_named_connect`: deny
  rules, and loopback, link-local and the metadata address only when an IP
  rule allows that address itself). The broker connects to what it resolved
  itself; an address the client names for an allowed name is never used;
- an **IP address**: as a transparent connect is: a rule naming it, or an
  allowed name the sandbox's resolver answered it for
  (:func:`~privsep.egress.admit.decide_answered_connect`; SOCKS clients that
  resolve first send addresses).

Resolving and connecting run on a worker, at most :data:`MAX_CONNECTING` per
sandbox at once (the rest wait their turn); a sandbox holds at most
:data:`MAX_CONNECTIONS` connections per proxy (past it: 503, or SOCKS
"no acceptable method", and closed). Bytes are then relayed by the loop,
non-blocking, with at most :data:`BUFFER` octets buffered each way: a side
that does not read stops the other side being read. A plain-HTTP request is
forwarded with ``Connection: close`` and exactly its ``Content-Length``
octets; anything more the client sends (a second, pipelined request for
another host) closes the connection.

Every decision is audited (``connect HOST:PORT/tcp``); every refusal goes to
the report at exit with its fix (``--allow-connect HOST:PORT``), and to the
client in its protocol's words (403 with privsep's text, or SOCKS reply 2).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from privsep import protocol
from privsep.broker.answers import Answer, Refusal, denied, failed
from privsep.broker.events import READ, WRITE
from privsep.broker.net import NetService
from privsep.broker.report import Denial
from privsep.broker.secrets import read_source
from privsep.egress import proxyhttp, proxysocks
from privsep.egress.admit import decide_answered_connect, decide_named_connect
from privsep.egress.names import PinnedHosts
from privsep.egress.target import Target
from privsep.policy.decide import decide_connect, may_resolve
from privsep.policy.model import Inject, IPAddress, Policy, SecretSource

if TYPE_CHECKING:
    from privsep.broker.egress import Egress, Handler

__all__ = ["HTTP_FULL", "MAX_CONNECTIONS", "SOCKS_FULL", "HttpProxy", "ProxyLimits", "SocksProxy"]

MAX_CONNECTIONS = 64
MAX_CONNECTING = 4
CONNECT_TIMEOUT_MS = 30_000
BUFFER = 64 * 1024
_DISCARD = 1 << 20  # what a refused client may still send before it is cut off
_MAX_ADDRESSES = 16
HTTP_FULL = proxyhttp.error_response(
    503, f"the sandbox has {MAX_CONNECTIONS} connections to this proxy open already; close some"
)
SOCKS_FULL = b"\x05\xff"  # no acceptable method: the client gives up on this connection


def _rule(index: int | None) -> str | None:
    return None if index is None else f"connect[{index}]"


class ProxyLimits:
    """One sandbox's proxy connections being resolved and connected: :data:`MAX_CONNECTING` at once."""

    def __init__(self) -> None:
        self._running = 0
        self._waiting: deque[Callable[[], bool]] = deque()

    def submit(self, start: Callable[[], bool]) -> None:
        """``start()`` now or when a slot frees; False from it: it started nothing (closed meanwhile)."""
        self._waiting.append(start)
        self._next()

    def done(self) -> None:
        self._running -= 1
        self._next()

    def _next(self) -> None:
        while self._waiting and self._running < MAX_CONNECTING:
            start = self._waiting.popleft()
            self._running += 1
            if not start():
                self._running -= 1


@dataclass(frozen=True)
class _Route:
    """Where a request may go, decided on the loop: the addresses themselves, or a name to resolve."""

    target: Target
    address: IPAddress | None
    rule: str | None
    pinned: tuple[IPAddress, ...] | None


@dataclass(frozen=True)
class _Connected:
    fd: int
    rule: str | None
    address: str
    injected: tuple[str, bytes] | None


def _resolve(policy: Policy, route: _Route) -> tuple[list[IPAddress], list[str | None]]:
    """On a worker: the addresses of the route's name (pinned first), each allowed for it, or a Refusal."""
    target = route.target
    if route.address is not None:
        return [route.address], [route.rule]
    addresses: list[IPAddress]
    if route.pinned is not None:
        addresses = list(route.pinned)
    else:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Refusal(
                protocol.ErrorCode.NOT_FOUND, f"the name does not resolve ({exc.strerror})"
            ) from None
        addresses = []
        for *_rest, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if address not in addresses:
                addresses.append(address)
        addresses = addresses[:_MAX_ADDRESSES]
    rules: list[str | None] = []
    for address in addresses:
        pinned = None if route.pinned is None else PinnedHosts({target.host: route.pinned})
        decision = decide_named_connect(policy, target.host, address, target.port, "tcp", pins=pinned)
        if not decision.allowed:
            # Any address the name may not lead to denies the name: the resolver's choice of
            # order must not decide whether a sandbox reaches a forbidden network.
            raise denied(decision.message, allow=decision.allow_flag, rule=_rule(decision.rule))
        rules.append(_rule(decision.rule))
    return addresses, rules


def _connect(policy: Policy, route: _Route, inject: Inject | None) -> _Connected:
    """On a worker: resolve, check, connect; the injected header's value read last. Raises Refusal."""
    addresses, rules = _resolve(policy, route)
    answer: Answer = NetService.connect_decided(
        addresses, rules, route.target.port, "tcp", CONNECT_TIMEOUT_MS
    )
    assert answer.fd is not None
    try:
        injected = None
        if inject is not None:
            source = SecretSource.parse(inject.source)
            value = read_source(source.kind, source.ref, f"the header injected for {inject.host}")
            injected = (inject.header, inject.prefix.encode("ascii") + value)
        address = answer.result.get("address")
        shown = str(address[0]) if isinstance(address, list) else "?"
        return _Connected(answer.fd, answer.rule, shown, injected)
    except BaseException:
        socket.socket(fileno=answer.fd).close()
        raise


class _Proxy:
    """One client connection of a proxy: its request, then a relay; see the module docstring."""

    name = "proxy"

    def __init__(self, egress: Egress, sock: socket.socket, done: Callable[[Handler], None]) -> None:
        self.egress = egress
        self._client = sock
        self._done = done
        self._upstream: socket.socket | None = None
        self._to_client = bytearray()
        self._to_upstream = bytearray()
        self._state = "head"  # head -> waiting -> relay; or closing (an answer of ours, then close)
        self._client_eof = False
        self._upstream_eof = False
        self._client_shut = False
        self._upstream_shut = False
        self._body_left: int | None = None  # plain HTTP: the request's octets still to forward
        self._discarded = 0
        self._closed = False
        self._target: Target | None = None

    # -- the loop ----------------------------------------------------------------------------

    def ready(self, fd: int) -> None:
        if self._closed:
            return
        if self._state == "head":
            data = self._recv(self._client, BUFFER)
            if data is None:
                pass
            elif not data:
                self.close()
                return
            else:
                self._feed(data)
        elif self._state == "relay":
            self._pump()
        elif self._state == "closing":
            self._finish()
        self._update()

    def _recv(self, sock: socket.socket, size: int) -> bytes | None:
        """``size`` octets at most; None when there is nothing yet; b"" at EOF or on an error."""
        try:
            return sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    # -- deciding ----------------------------------------------------------------------------

    def _what(self, target: Target) -> str:
        return f"{target.authority()}/tcp"

    def _route(self, target: Target) -> _Route | Refusal:
        egress, policy = self.egress, self.egress.policy
        if target.address is not None:
            decision = decide_answered_connect(
                policy, egress.book, target.address, target.port, "tcp", now=egress.now(), pins=egress.pins
            )
            if not decision.allowed:
                return denied(decision.message, allow=decision.allow_flag, rule=_rule(decision.rule))
            return _Route(target, target.address, _rule(decision.rule), None)
        if not may_resolve(policy, target.host, target.port, "tcp"):
            # Decided without a lookup: the name never reaches DNS.
            decision = decide_connect(policy, target.host, target.port, "tcp")
            return denied(decision.message, allow=decision.allow_flag, rule=_rule(decision.rule))
        return _Route(target, None, None, egress.pins.get(target.host))

    def _request(self, target: Target, inject: Inject | None = None) -> None:
        """Decide ``target``; if allowed, resolve and connect on a worker, in the sandbox's turn."""
        self._target = target
        route = self._route(target)
        if isinstance(route, Refusal):
            self._refused(route)
            return
        self._state = "waiting"
        egress = self.egress
        policy = egress.policy

        def start() -> bool:
            if self._closed:
                return False
            handback = egress.server.handback

            def job() -> None:
                try:
                    result: _Connected | Refusal = _connect(policy, route, inject)
                except Refusal as refusal:
                    result = refusal
                except Exception as exc:  # a bug of ours: logged on the loop, answered 502, never lost
                    failure = exc
                    result = failed("the proxy failed (an internal error of privsep's, logged)")
                    handback.put(
                        lambda: egress.server.recorder.internal_error(egress.child, "the proxy", failure)
                    )
                handback.put(lambda: self._connected(result))

            egress.server.workers.submit(job)
            return True

        egress.proxies.submit(start)

    def _connected(self, result: _Connected | Refusal) -> None:
        """On the loop, from the worker: relay, or answer the refusal."""
        self.egress.proxies.done()
        if self._closed or not self.egress.alive:
            if isinstance(result, _Connected):
                socket.socket(fileno=result.fd).close()
            self.close()
            return
        if isinstance(result, Refusal):
            self._refused(result)
            self._update()
            return
        assert self._target is not None
        self._upstream = socket.socket(fileno=result.fd)
        self._upstream.setblocking(False)
        egress = self.egress
        message = (
            f"allowed by {result.rule or 'a rule'}, through privsep's {self.name} proxy, to {result.address}"
        )
        egress.server.recorder.noted(
            egress.child, "connect", self._what(self._target), "allow", result.rule, message=message
        )
        try:
            self._established(result)
        except ValueError as exc:  # the injected value cannot be a header value
            self._failed(failed(str(exc)))
            self._update()
            return
        self._state = "relay"
        self._pump()
        self._update()

    def _established(self, result: _Connected) -> None:
        raise NotImplementedError

    def _refused(self, refusal: Refusal) -> None:
        """A policy denial or a failure: audited (a denial also reported), answered, closed."""
        egress = self.egress
        what = "(a malformed request)" if self._target is None else self._what(self._target)
        is_denial = refusal.code is protocol.ErrorCode.DENIED
        denial = None
        if is_denial:
            subject = None if self._target is None else self._target.authority()
            denial = Denial("connect", what, refusal.rule, refusal.message, refusal.allow, subject)
        egress.server.recorder.noted(
            egress.child, "connect", what, "deny" if is_denial else "error", refusal.rule,
            message=refusal.message, denial=denial,
        )  # fmt: skip
        if is_denial:
            self._denied(refusal)
        else:
            self._failed(refusal)

    def _deny_request(self, what: str, message: str) -> None:
        """A request refused before any route is decided (malformed, or one whose answer would
        carry an injected value back): audited and reported as a denial of ``what``."""
        egress = self.egress
        denial = Denial("connect", what, None, message, None)
        egress.server.recorder.noted(
            egress.child, "connect", what, "deny", None, message=message, denial=denial
        )

    def _denied(self, refusal: Refusal) -> None:
        raise NotImplementedError

    def _failed(self, refusal: Refusal) -> None:
        raise NotImplementedError

    def _answer_and_close(self, data: bytes) -> None:
        """Send ``data`` (ours), then close once it is out and the client is done."""
        self._to_client += data
        self._state = "closing"
        if self._upstream is not None:
            self.egress.server.events.forget(self._upstream.fileno())
            self._upstream.close()
            self._upstream = None
        self._finish()

    def _finish(self) -> None:
        """Closing: flush our answer, then read and drop what the client still sends (a close with
        unread data would reset the connection and lose the answer), bounded."""
        if not self._flush(self._client, self._to_client):
            self.close()
            return
        if self._to_client:
            return
        if not self._client_shut:
            with contextlib.suppress(OSError):
                self._client.shutdown(socket.SHUT_WR)
            self._client_shut = True
        while True:
            data = self._recv(self._client, BUFFER)
            if data is None:
                return
            self._discarded += len(data)
            if not data or self._discarded > _DISCARD:
                self.close()
                return

    # -- relaying ----------------------------------------------------------------------------

    def _flush(self, sock: socket.socket, out: bytearray) -> bool:
        """Send what ``out`` holds; False when the peer is gone."""
        while out:
            try:
                sent = sock.send(out)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            del out[:sent]
        return True

    def _pump(self) -> None:
        upstream = self._upstream
        assert upstream is not None
        while not self._client_eof and len(self._to_upstream) < BUFFER:
            data = self._recv(self._client, BUFFER - len(self._to_upstream))
            if data is None:
                break
            if not data:
                self._client_eof = True
                break
            if self._body_left is not None:
                if len(data) > self._body_left:
                    self.close()  # more than the request: a second one, for a host nobody checked
                    return
                self._body_left -= len(data)
            self._to_upstream += data
        while not self._upstream_eof and len(self._to_client) < BUFFER:
            data = self._recv(upstream, BUFFER - len(self._to_client))
            if data is None:
                break
            if not data:
                self._upstream_eof = True
                break
            self._to_client += data
        if not self._flush(upstream, self._to_upstream) or not self._flush(self._client, self._to_client):
            self.close()
            return
        if self._client_eof and not self._to_upstream and not self._upstream_shut:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)
            self._upstream_shut = True
        if self._upstream_eof and not self._to_client and not self._client_shut:
            with contextlib.suppress(OSError):
                self._client.shutdown(socket.SHUT_WR)
            self._client_shut = True
        if self._client_shut and self._upstream_shut:
            self.close()  # both directions are done

    def _update(self) -> None:
        if self._closed:
            return
        watch = self.egress.server.watch
        client = 0
        if self._state in ("head", "closing") or (
            self._state == "relay" and not self._client_eof and len(self._to_upstream) < BUFFER
        ):
            client |= READ
        if self._to_client:
            client |= WRITE
        watch(self._client.fileno(), client, self)
        if self._upstream is not None:
            upstream = READ if not self._upstream_eof and len(self._to_client) < BUFFER else 0
            if self._to_upstream:
                upstream |= WRITE
            watch(self._upstream.fileno(), upstream, self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        forget = self.egress.server.events.forget
        for sock in (self._client, self._upstream):
            if sock is not None:
                forget(sock.fileno())
                sock.close()
        self._upstream = None
        self._done(self)


class HttpProxy(_Proxy):
    """``CONNECT host:port`` (a tunnel) and absolute-form plain HTTP (forwarded, one request)."""

    name = "HTTP"

    def __init__(self, egress: Egress, sock: socket.socket, done: Callable[[Handler], None]) -> None:
        super().__init__(egress, sock, done)
        self._parser = proxyhttp.HttpHeadParser()
        self._http: proxyhttp.HttpRequest | None = None

    def _feed(self, data: bytes) -> None:
        result = self._parser.feed(data)
        if result is None:
            return
        if isinstance(result, proxyhttp.HttpRefusal):
            self._deny_request("(a malformed proxy request)", result.message)
            self._answer_and_close(result.response())
            return
        self._http = result
        inject = None
        if not result.connect and result.target.address is None:
            inject = next(
                (i for i in self.egress.policy.network.inject if i.host == result.target.host), None
            )
        reflected = None if inject is None else proxyhttp.reflected(result)
        if reflected is not None:  # its answer would carry the injected value back to the sandbox
            self._target = result.target
            self._deny_request(self._what(result.target), reflected.message)
            self._answer_and_close(reflected.response())
            return
        self._request(result.target, inject)

    def _established(self, result: _Connected) -> None:
        request = self._http
        assert request is not None
        if request.connect:
            self._to_client += proxyhttp.connect_established()
            self._to_upstream += request.rest
            return
        self._to_upstream += proxyhttp.forward_head(request, result.injected)
        self._to_upstream += request.rest
        self._body_left = request.body_length - len(request.rest)

    def _denied(self, refusal: Refusal) -> None:
        assert self._target is not None
        answer = proxyhttp.denied(self._target, refusal.message, refusal.allow)
        self._answer_and_close(answer.response())

    def _failed(self, refusal: Refusal) -> None:
        status = 504 if refusal.errno == errno.ETIMEDOUT else 502
        self._answer_and_close(proxyhttp.error_response(status, refusal.message))


class SocksProxy(_Proxy):
    """SOCKS5, no authentication, CONNECT only."""

    name = "SOCKS5"

    def __init__(self, egress: Egress, sock: socket.socket, done: Callable[[Handler], None]) -> None:
        super().__init__(egress, sock, done)
        self._parser = proxysocks.SocksParser()
        self._rest = b""

    def _feed(self, data: bytes) -> None:
        result = self._parser.feed(data)
        if isinstance(result, proxysocks.SocksGreeted):
            self._to_client += result.reply
            self._flush(self._client, self._to_client)
            result = self._parser.feed(b"")
        if result is None or isinstance(result, proxysocks.SocksGreeted):
            return
        if isinstance(result, proxysocks.SocksRefusal):
            self._deny_request("(a malformed SOCKS5 request)", result.message)
            if result.reply is None:
                self.close()
            else:
                self._answer_and_close(result.reply)
            return
        self._rest = result.rest
        self._request(result.target)

    def _established(self, result: _Connected) -> None:
        self._to_client += proxysocks.reply(proxysocks.SocksReply.SUCCEEDED)  # no bound address: the host's
        self._to_upstream += self._rest

    def _denied(self, refusal: Refusal) -> None:
        self._answer_and_close(proxysocks.reply(proxysocks.SocksReply.NOT_ALLOWED))

    def _failed(self, refusal: Refusal) -> None:
        self._answer_and_close(proxysocks.failure_reply(refusal.errno))
