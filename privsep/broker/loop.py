"""The broker: one event loop serving any number of confined children.

Single-threaded and non-blocking (the nginx master model): every socket is
non-blocking, a child that does not read its replies only stops having its
requests read (back-pressure), and nothing one child sends can stall another.
A child that breaks the protocol is cut off and killed; its siblings carry on.

Per child the loop watches four fds: the request channel, the private
control socket (reports from the sandbox's own processes), the monitor's
pidfd (the sandbox ended) and the seccomp listener (a dangerous syscall).
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

from privsep import __version__, channel, protocol
from privsep.broker import notify
from privsep.broker.outcome import (
    EXIT_NOT_FOUND,
    EXIT_PRIVSEP,
    EXIT_TIMEOUT,
    Outcome,
    from_wait_status,
)
from privsep.confine.seccomp import syscall_name
from privsep.confine.spawn import ControlMessage, Spawned, SpawnPlan, decode_control, spawn
from privsep.errors import ChannelError, LocalProtocolError, RemoteProtocolError

_Role = Literal["channel", "control", "pidfd", "init", "listener"]
_MAX_OUTBOX = 64  # replies queued for a child that does not read, before it is cut off


@dataclass(eq=False)
class Child:
    """The broker's record of one sandbox."""

    argv0: str
    spawned: Spawned
    deadline: float | None
    timeout: float | None
    proto: protocol.BrokerProtocol = field(default_factory=lambda: protocol.BrokerProtocol(__version__))
    init_pidfd: int | None = None
    command_pidfd: int | None = None
    listener: int | None = None
    outbox: collections.deque[bytes] = field(default_factory=collections.deque)
    kill_reason: Outcome | None = None
    setup_error: ControlMessage | None = None
    exec_error: ControlMessage | None = None
    exit_status: int | None = None
    monitor_reaped: bool = False
    init_exited: bool = False
    outcome: Outcome | None = None
    requests: int = 0

    @property
    def pid(self) -> int:
        return self.spawned.pid


class Broker:
    """Starts sandboxes and serves their requests until they end."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._children: set[Child] = set()

    # -- public -----------------------------------------------------------

    def start(
        self, plan: SpawnPlan, *, timeout: float | None = None, stdio: tuple[int, int, int] = (0, 1, 2)
    ) -> Child:
        """Spawn a sandbox for ``plan``; it runs while the loop is driven (``wait``/``run_once``)."""
        spawned = spawn(plan, stdio=stdio)
        deadline = time.monotonic() + timeout if timeout else None
        child = Child(argv0=plan.argv[0], spawned=spawned, deadline=deadline, timeout=timeout)
        self._children.add(child)
        spawned.channel.setblocking(False)
        spawned.control.setblocking(False)
        self._sel.register(spawned.channel, selectors.EVENT_READ, (child, "channel"))
        self._sel.register(spawned.control, selectors.EVENT_READ, (child, "control"))
        self._sel.register(spawned.pidfd, selectors.EVENT_READ, (child, "pidfd"))
        return child

    def wait(self, child: Child) -> Outcome:
        """Serve every child until ``child`` has ended; return how it ended."""
        while child.outcome is None:
            self.run_once()
        return child.outcome

    def run_once(self, max_wait: float | None = None) -> None:
        """Wait for one round of events (or a deadline) and handle them."""
        timeout = self._next_timeout(max_wait)
        for key, _events in self._sel.select(timeout):
            child, role = key.data
            if child.outcome is None:
                self._dispatch(child, role)
        now = time.monotonic()
        for child in list(self._children):
            if child.deadline is not None and now >= child.deadline and child.kill_reason is None:
                self.kill(
                    child,
                    Outcome(
                        "timeout",
                        EXIT_TIMEOUT,
                        detail=f"timed out after {child.timeout:g} s; the sandbox was killed",
                    ),
                )

    def send_signal(self, child: Child, sig: int) -> None:
        """Deliver ``sig`` to the command (not to privsep's own processes)."""
        if child.command_pidfd is not None and child.outcome is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(child.command_pidfd, sig)

    def kill(self, child: Child, reason: Outcome) -> None:
        """End the whole sandbox now; ``reason`` becomes its outcome.

        Through init when it is known: its death empties the pid namespace
        before it counts as exited. Not the monitor as well: the monitor would
        be reaped at once, and the sandbox must not count as ended (nor its
        seccomp listener be closed, which lets a blocked call return) while
        the namespace is still being torn down. Before init has reported, no
        command exists yet, and killing the monitor takes init with it.
        """
        if child.kill_reason is None:
            child.kill_reason = reason
        pidfd = child.init_pidfd if child.init_pidfd is not None else child.spawned.pidfd
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)

    def close(self) -> None:
        """Kill every sandbox still running and wait for them; release every fd."""
        for child in list(self._children):
            self.kill(child, Outcome("lost", EXIT_PRIVSEP, detail="the broker was closed"))
        while self._children:
            self.run_once()
        self._sel.close()

    @property
    def children(self) -> frozenset[Child]:
        return frozenset(self._children)

    # -- events -----------------------------------------------------------

    def _next_timeout(self, max_wait: float | None) -> float | None:
        deadlines = [c.deadline for c in self._children if c.deadline is not None and c.kill_reason is None]
        timeout = max_wait
        if deadlines:
            until = max(0.0, min(deadlines) - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        return timeout

    def _dispatch(self, child: Child, role: _Role) -> None:
        if role == "channel":
            self._on_channel(child)
        elif role == "control":
            self._on_control(child)
        elif role == "listener":
            self._on_listener(child)
        elif role == "init":
            child.init_exited = True
            self._forget(child.init_pidfd if child.init_pidfd is not None else -1)
            self._maybe_finish(child)
        else:
            self._on_monitor_exit(child)

    def _on_channel(self, child: Child) -> None:
        sock = child.spawned.channel
        if child.outbox:
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
        if frame is None:  # every process of the sandbox closed its end
            self._sel.unregister(sock)
            return
        child.requests += 1
        try:
            request = child.proto.receive(frame)
        except RemoteProtocolError as exc:
            self._violation(child, str(exc))
            return
        self._queue(child, self._handle(child, request))

    def _handle(self, child: Child, request: protocol.Request) -> bytes:
        if isinstance(request, protocol.Hello):
            return protocol.reply_ok(request, child.proto.hello_result())
        if isinstance(request, protocol.Ping):
            return protocol.reply_ok(request, {})
        raise LocalProtocolError(
            f"no handler for op {request.op!r}"
        )  # pragma: no cover - union is exhaustive

    def _queue(self, child: Child, reply: bytes) -> None:
        child.outbox.append(reply)
        self._flush(child)

    def _flush(self, child: Child) -> None:
        sock = child.spawned.channel
        while child.outbox:
            try:
                channel.send(sock, child.outbox[0])
            except BlockingIOError:
                break
            except (ChannelError, OSError):
                child.outbox.clear()
                break
            child.outbox.popleft()
        if len(child.outbox) > _MAX_OUTBOX:
            self._violation(child, "the child does not read its replies")
            return
        # Back-pressure: while replies wait, watch for writability, not for requests.
        events = selectors.EVENT_WRITE if child.outbox else selectors.EVENT_READ
        try:
            if self._sel.get_key(sock).events != events:
                self._sel.modify(sock, events, (child, "channel"))
        except KeyError:
            pass

    def _violation(self, child: Child, reason: str) -> None:
        sock = child.spawned.channel
        # The reason is built by protocol/channel from our own words only (never peer bytes).
        reply = protocol.reply_error(None, protocol.ErrorCode.INVALID, f"protocol violation: {reason}"[:1000])
        with contextlib.suppress(ChannelError, OSError):
            channel.send(sock, reply)
        self._forget(sock)
        sock.close()
        self.kill(
            child,
            Outcome(
                "violation",
                128 + signal.SIGKILL,
                detail=f"the child broke the protocol ({reason}); it was disconnected and killed",
            ),
        )

    def _on_control(self, child: Child) -> None:
        sock = child.spawned.control
        while True:
            try:
                frame = channel.recv(sock)
            except BlockingIOError:
                return
            except (RemoteProtocolError, ChannelError, OSError) as exc:
                self._forget(sock)
                self.kill(
                    child, Outcome("lost", EXIT_PRIVSEP, detail=f"the sandbox's control socket failed: {exc}")
                )
                return
            if frame is None:
                self._forget(sock)
                return
            try:
                msg = decode_control(frame)
            except RemoteProtocolError as exc:
                self.kill(child, Outcome("lost", EXIT_PRIVSEP, detail=str(exc)))
                continue
            self._on_control_message(child, msg)

    def _on_control_message(self, child: Child, msg: ControlMessage) -> None:
        if msg.kind in ("init", "command", "listener"):
            assert msg.fd is not None
            os.set_blocking(msg.fd, False)
            attr = {"init": "init_pidfd", "command": "command_pidfd", "listener": "listener"}[msg.kind]
            if getattr(child, attr) is not None:  # each is sent once; a second one is not trusted
                os.close(msg.fd)
                self.kill(child, Outcome("lost", EXIT_PRIVSEP, detail=f"duplicate {msg.kind} report"))
                return
            setattr(child, attr, msg.fd)
            if msg.kind == "init":
                self._sel.register(msg.fd, selectors.EVENT_READ, (child, "init"))
                if child.kill_reason is not None:
                    self.kill(child, child.kill_reason)  # killed before init was known: make sure
            elif msg.kind == "listener":
                self._sel.register(msg.fd, selectors.EVENT_READ, (child, "listener"))
        elif msg.kind == "error":
            child.setup_error = child.setup_error or msg
        elif msg.kind == "exec_error":
            child.exec_error = msg
        elif msg.kind == "exit":
            child.exit_status = msg.status

    def _on_listener(self, child: Child) -> None:
        assert child.listener is not None
        try:
            note = notify.receive(child.listener)
        except OSError:
            self._forget(child.listener)  # every process under the filter is gone
            return
        if note is None:
            return
        name = (
            syscall_name(note.nr)
            if note.arch == notify.AUDIT_ARCH_X86_64
            else f"syscall {note.nr} (arch {note.arch:#x})"
        )
        self.kill(
            child,
            Outcome(
                "seccomp",
                128 + signal.SIGSYS,
                detail=f"killed by seccomp: the command called {name}, which privsep never allows",
                signal=signal.SIGSYS,
                syscall=name,
            ),
        )
        # Never answered: the call stays blocked until SIGKILL ends the process.
        # An answer (even an error) would let it run on until the kill lands.

    def _on_monitor_exit(self, child: Child) -> None:
        try:
            pid, _ = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            pid = child.pid
        if pid == 0:
            return
        child.monitor_reaped = True
        self._forget(child.spawned.pidfd)
        self._on_control(child)  # reports sent before the exit are already queued
        if child.init_pidfd is not None and not child.init_exited:
            # The monitor died before reaping init (killed from outside): make
            # sure, and finish when init has gone, namespace and all.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(child.init_pidfd, signal.SIGKILL)
        self._maybe_finish(child)

    def _maybe_finish(self, child: Child) -> None:
        """The sandbox has ended when its monitor is reaped and its init (if any) is gone."""
        if child.monitor_reaped and (child.init_pidfd is None or child.init_exited):
            child.outcome = self._outcome(child)
            self._release(child)

    def _outcome(self, child: Child) -> Outcome:
        if child.kill_reason is not None:
            return child.kill_reason
        if child.setup_error is not None:
            err = child.setup_error
            return Outcome(
                "setup_error",
                EXIT_PRIVSEP,
                detail=f"could not confine the child: step '{err.step}': {err.reason}",
            )
        if child.exec_error is not None:
            err = child.exec_error
            reason = os.strerror(err.errno)
            if err.status == EXIT_NOT_FOUND:
                detail = (
                    f"command not found in the sandbox: {child.argv0} ({reason}); the child sees only the "
                    "paths of the policy's [view], plus /dev, /proc (and /tmp if granted): add the program's "
                    "directory to [view] read"
                )
            else:
                detail = f"command cannot be executed in the sandbox: {child.argv0} ({reason})"
            return Outcome("exec_error", err.status, detail=detail)
        if child.exit_status is None:
            return Outcome(
                "lost", EXIT_PRIVSEP, detail="the sandbox ended without reporting the command's exit status"
            )
        return from_wait_status(child.exit_status)

    def _forget(self, fileobj: socket.socket | int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fileobj)

    def _release(self, child: Child) -> None:
        sp = child.spawned
        for sock in (sp.channel, sp.control):
            self._forget(sock)
            sock.close()
        for fd in (sp.pidfd, child.listener, child.init_pidfd, child.command_pidfd):
            if fd is not None:
                self._forget(fd)
                os.close(fd)
        child.listener = child.init_pidfd = child.command_pidfd = None
        self._children.discard(child)
