"""Serving a sandbox's request channel: read a request, decide and perform it, reply.

Every socket is non-blocking. A child that does not read its replies only
stops having its requests read (back-pressure: replies queue in its outbox,
and past _MAX_OUTBOX it is cut off), so nothing one child sends can stall
another. A slow request (resolving, connecting, a large listing) runs on a
worker; while it does, that child's channel is not read, so a child has at
most one request in flight and cannot queue work without bound. A child that
breaks the protocol is cut off and killed; its siblings carry on.

Relays (an append-only file's pipe, a UDP flow) are the data paths some
answers leave behind; they are served here too, and bounded per child.
"""

from __future__ import annotations

import errno
import os
import select

from privsep import _signals, channel
from privsep._lazy import lazy_module
from privsep.broker.events import READ, WRITE
from privsep.broker.outcome import Outcome
from privsep.broker.report import Denial
from privsep.broker.services import SLOW_OPS, Services, perform
from privsep.errors import EXIT_PRIVSEP, ChannelError, RemoteProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket

    from privsep import protocol
    from privsep.broker import answers
    from privsep.broker import relay as relays
    from privsep.broker.answers import Answer, Refusal
    from privsep.broker.child import Child
    from privsep.broker.events import Events
    from privsep.broker.lifecycle import Lifecycle
    from privsep.broker.relay import Relay
    from privsep.broker.report import Recorder
    from privsep.broker.workers import Handback, Workers
else:
    protocol = lazy_module("privsep.protocol", globals())  # pydantic: loaded with a sandbox's first request
    # With the first request (the answers) or relay: the channel of a sandbox that asks for
    # nothing is only ever read for its hang-up.
    answers = lazy_module("privsep.broker.answers", globals())
    relays = lazy_module("privsep.broker.relay", globals())

_MAX_OUTBOX = 64  # replies queued for a child that does not read, before it is cut off
MAX_RELAYS = 32  # UDP flows and append-only files per child: each costs the broker two fds
#: The requests the channel answers itself; every other op is for the policy's services.
_OWN_OPS = frozenset({"hello", "ping", "call_args", "call_return"})
_HANDLE = Services.handle  # not overridden: the read-only open may take its own path


class RequestServer:
    def __init__(
        self, events: Events, recorder: Recorder, lifecycle: Lifecycle, workers: Workers, handback: Handback
    ) -> None:
        self._events = events
        self._recorder = recorder
        self._lifecycle = lifecycle
        self._workers = workers
        self._handback = handback

    def watch(self, child: Child) -> None:
        child.spawned.channel.setblocking(False)
        self._events.watch(child.spawned.channel, "channel", child)

    def on_channel(self, child: Child) -> None:
        sock, serving = child.spawned.channel, child.serving
        if serving.outbox:
            self._flush(child)
            return
        try:
            frame = channel.recv_no_fds(sock)
        except BlockingIOError:
            return
        except RemoteProtocolError as exc:
            self._violation(child, str(exc))
            return
        except (ChannelError, OSError):
            frame = None
        if frame is None:
            if hung_up(sock):  # every process of the sandbox closed its end
                self._events.forget(sock)
            else:  # an empty frame reads like end of stream, but the peer is still there
                self._violation(child, "the child sent an empty frame")
            return
        serving.requests += 1
        try:
            request = serving.proto.receive(frame)
        except RemoteProtocolError as exc:
            self._violation(child, str(exc))
            return
        except Exception as exc:  # a bug of ours, or the protocol's first import failing: rule 6
            self._lost(child, exc)
            return
        self._serve(child, request)

    def _serve(self, child: Child, request: protocol.Request) -> None:
        """Decide → perform → reply; a slow operation is performed on a worker."""
        op = request.op
        if op not in _OWN_OPS:
            services = child.services
            if services is None:
                refusal = answers.Refusal(
                    protocol.ErrorCode.UNSUPPORTED, "this sandbox has no brokered operations"
                )
                self.answer(child, request, self._recorder.start(), refusal)
            elif op in SLOW_OPS:
                self._submit(child, request, services)
            elif type(request) is protocol.Open and request.mode == "r" and type(services).handle is _HANDLE:
                self._open_read(child, services, request)  # a subclass's own handle sees every request
            else:
                start = self._recorder.start()
                self.answer(child, request, start, self.perform(child, services, request))
        elif type(request) is protocol.Ping:  # exact types: isinstance would run ABCMeta's check
            self._queue(child, protocol.reply_ok(request, {}))
        elif type(request) is protocol.Hello:
            self._queue(child, protocol.reply_ok(request, child.serving.proto.hello_result()))
        else:
            assert isinstance(request, protocol.CallArgs | protocol.CallReturn)
            self._on_call(child, request)

    def _on_call(self, child: Child, request: protocol.CallArgs | protocol.CallReturn) -> None:
        call = child.call
        if call is None:
            refusal = answers.Refusal(
                protocol.ErrorCode.UNSUPPORTED, "this child was not started by Sandbox.call"
            )
            self.answer(child, request, self._recorder.start(), refusal)
        elif isinstance(request, protocol.CallArgs):
            result = {"function": call.function, "args": call.args, "kwargs": call.kwargs}
            self._queue(child, protocol.reply_ok(request, result))
        elif call.returned is not None:
            refusal = answers.Refusal(protocol.ErrorCode.FAILED, "already returned")
            self.answer(child, request, self._recorder.start(), refusal)
        else:
            call.returned = request
            self._queue(child, protocol.reply_ok(request, {}))

    def perform(self, child: Child, services: Services, request: protocol.Request) -> Answer | Refusal:
        """``services.perform``; a bug of ours the request reached is logged and answered EIO (rule 6)."""
        try:
            return perform(services, request, child.ids)
        except Exception as exc:
            return self._internal_error(child, request, exc)

    def _internal_error(self, child: Child, request: protocol.Request, exc: Exception) -> Refusal:
        self._recorder.internal_error(child, f"a {request.op} request", exc)
        return answers.Refusal(
            protocol.ErrorCode.FAILED, "internal error in the broker (logged there)", errno=errno.EIO
        )

    def _open_read(self, child: Child, services: Services, request: protocol.Open) -> None:
        """The commonest request, a read-only open, without the generic steps that cannot apply to it.

        What ``perform`` then ``answer`` would do, in the same order and with the
        same checks: the file service decides on the broker's copy of the path and
        opens it beneath the pinned grant (``FileService.open_read``); a refusal or a
        bug of ours is answered as ``answer`` answers it; the audit log gets its
        record. Skipped: the per-op dispatch, the sandbox-ids context (only the
        network operations read it), and the ``Answer`` when no audit log needs it.
        """
        start = self._recorder.start()
        try:
            fd, rule = services.files.open_read(request.path)  # in the try: LazyServices builds here
        except answers.Refusal as refusal:
            self.answer(child, request, start, refusal)
            return
        except Exception as exc:
            self.answer(child, request, start, self._internal_error(child, request, exc))
            return
        if self._recorder.auditing:
            self._recorder.decision(child, request, start, answers.Answer(fd=fd, rule=rule))
        self._queue(child, protocol.reply_ok(request, {}), fd)

    def _submit(self, child: Child, request: protocol.Request, services: Services) -> None:
        """Run a slow request on a worker; stop reading this child until it is answered."""
        child.serving.pending = True
        self._want(child)
        start = self._recorder.start()

        def job() -> None:
            answer = self.perform(child, services, request)
            self._handback.put(lambda: self._performed(child, request, start, answer))

        self._workers.submit(job)

    def _performed(
        self, child: Child, request: protocol.Request, start: float, answer: Answer | Refusal
    ) -> None:
        """On the loop: a slow request's answer is back from its worker."""
        child.serving.pending = False
        if child.outcome is not None or child.spawned.channel.fileno() < 0:
            discard(answer)  # nobody left to receive it
            return
        self.answer(child, request, start, answer)
        self._want(child)  # read again (a reply sent at once leaves the registration alone)

    def answer(self, child: Child, request: protocol.Request, start: float, answer: Answer | Refusal) -> None:
        """Audit one decision and queue its reply (with its fd, if any)."""
        if isinstance(answer, answers.Answer):
            if answer.relay is None or self.add_relay(child, answer.relay):
                self._recorder.decision(child, request, start, answer)
                self._queue(child, protocol.reply_ok(request, answer.result), answer.fd)
                return
            discard(answer)
            answer = answers.Refusal(
                protocol.ErrorCode.FAILED,
                f"too many relayed UDP flows and append-only files (at most {MAX_RELAYS})",
            )
        self._recorder.decision(child, request, start, answer)
        if answer.code is protocol.ErrorCode.DENIED:
            reply, fd = protocol.reply_denied(request.id, answer.message, answer.allow), None
        else:
            reply, fd = protocol.reply_error(request.id, answer.code, answer.message), None
        self._queue(child, reply, fd)

    # -- replies and back-pressure ----------------------------------------

    def _queue(self, child: Child, reply: bytes, fd: int | None = None) -> None:
        """Send ``reply`` now if nothing waits before it, else queue it behind the others.

        Sent at once, it changes nothing the selector watches: the channel was
        read for this request and is read for the next one.
        """
        outbox = child.serving.outbox
        if outbox:
            outbox.append((reply, fd))
            self._flush(child)
            return
        try:
            channel.send(child.spawned.channel, reply, () if fd is None else (fd,))
        except BlockingIOError:
            outbox.append((reply, fd))
            self._want(child)  # wait until the child reads
            return
        except (ChannelError, OSError):
            self._want(child)  # the child is gone: reading tells the loop so
        if fd is not None:
            os.close(fd)  # the child has its own copy now (or nobody needs it)

    def _flush(self, child: Child) -> None:
        sock, outbox = child.spawned.channel, child.serving.outbox
        while outbox:
            reply, fd = outbox[0]
            try:
                channel.send(sock, reply, () if fd is None else (fd,))
            except BlockingIOError:
                break
            except (ChannelError, OSError):
                _drop_outbox(child)
                break
            outbox.popleft()
            if fd is not None:
                os.close(fd)  # the child has its own copy now
        if len(outbox) > _MAX_OUTBOX:
            self._violation(child, "the child does not read its replies")
            return
        self._want(child)

    def _want(self, child: Child) -> None:
        """Replies queued: wait for writability (no new requests are read).
        A slow request in flight: nothing. Otherwise: the next request."""
        sock = child.spawned.channel
        if sock.fileno() >= 0:
            serving = child.serving
            self._events.want(
                sock, WRITE if serving.outbox else 0 if serving.pending else READ, "channel", child
            )

    def _violation(self, child: Child, reason: str) -> None:
        sock = child.spawned.channel
        # The reason is built by protocol/channel from our own words only (never peer bytes).
        reply = protocol.reply_error(None, protocol.ErrorCode.INVALID, f"protocol violation: {reason}"[:1000])
        try:
            channel.send(sock, reply)
        except (ChannelError, OSError):
            pass
        detail = f"the child broke the protocol ({reason}); it was disconnected and killed"
        self._cut_off(child, Outcome("violation", 128 + _signals.SIGKILL, detail=detail))

    def _lost(self, child: Child, exc: Exception) -> None:
        """A frame met a bug of ours before it was a request (the first frame also builds the
        protocol's models: a broken install fails there): logged, and this sandbox alone is cut
        off and killed, with no reply (it could need the protocol that failed). Its siblings
        carry on (rule 6)."""
        self._recorder.internal_error(child, "a frame from the sandbox", exc)
        detail = "the broker failed to read the sandbox's request (logged above); the sandbox was killed"
        self._cut_off(child, Outcome("lost", EXIT_PRIVSEP, detail=detail))

    def _cut_off(self, child: Child, outcome: Outcome) -> None:
        """Close the sandbox's channel (its queued replies and their fds dropped) and kill it."""
        sock = child.spawned.channel
        _drop_outbox(child)
        self._events.forget(sock)
        sock.close()
        self._lifecycle.kill(child, outcome)

    # -- relays -------------------------------------------------------------

    def add_relay(self, child: Child, relay: Relay) -> bool:
        """Serve ``relay`` for ``child``; False (and nothing done) when it has as many as it may."""
        relays = child.serving.relays
        # Keyed by each watched end: a UDP flow has two, an append-only file one. Count relays.
        if len(set(relays.values())) >= MAX_RELAYS:
            return False
        for end, role in relay.watched():
            relays[end.fileno()] = relay
            self._events.watch(end, role, child)
        return True

    def on_relay(self, child: Child, role: str, fd: int) -> None:
        relay = child.serving.relays.get(fd)
        if relay is None:
            return
        if role == "relay_peer":
            relay.from_peer()
        elif not relay.from_child():
            self._close_relay(child, relay)

    def _close_relay(self, child: Child, relay: Relay) -> None:
        for end, _ in relay.watched():
            child.serving.relays.pop(end.fileno(), None)
            self._events.forget(end.fileno())
        if isinstance(relay, relays.AppendRelay) and relay.truncated:
            reason = "an append-only file takes at most [limits] file_size_mb per open; the rest was dropped"
            child.report.deny(Denial("append", relay.path, None, reason, None))
        if isinstance(relay, relays.UdpServerRelay):
            for host, port in relay.refused:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                reason = "not a peer that wrote to the bound UDP socket; it may only answer"
                child.report.deny(Denial("sendto", f"{where}/udp", None, reason, None))
        relay.close()

    def release(self, child: Child) -> None:
        """The sandbox has ended: drop unsent replies, end its relays, close its channel."""
        _drop_outbox(child)
        for relay in set(child.serving.relays.values()):
            self._close_relay(child, relay)
        self._events.forget(child.spawned.channel)
        child.spawned.channel.close()


def discard(answer: Answer | Refusal) -> None:
    """An answer nobody will receive: release what it holds."""
    if isinstance(answer, answers.Answer):
        if answer.fd is not None:
            os.close(answer.fd)
        if answer.relay is not None:
            answer.relay.close()


def _drop_outbox(child: Child) -> None:
    for _, fd in child.serving.outbox:
        if fd is not None:
            os.close(fd)
    child.serving.outbox.clear()


def hung_up(fd: _socket.socket | int) -> bool:
    """Whether poll reports hang-up: a closed peer, or a seccomp listener with no process left.

    On SEQPACKET an empty message and end of stream both read as b"", so
    the broker asks poll rather than guessing from the read.
    """
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP | select.POLLHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in poller.poll(0))
