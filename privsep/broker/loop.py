"""The broker: one event loop serving any number of confined children.

Single-threaded and non-blocking (the nginx master model): every socket is
non-blocking, a child that does not read its replies only stops having its
requests read (back-pressure), and nothing one child sends can stall another.
A child that breaks the protocol is cut off and killed; its siblings carry on.

Per child the loop watches five fds: the request channel, the private
control socket (reports from the sandbox's own processes), the monitor's
and init's pidfds (the sandbox ended) and the seccomp listener (a dangerous
syscall); with a terminal (``privsep run`` on a tty), also the sandbox's pty
and the user's terminal, relayed by broker/terminal.py; on cgroup v1, also
the eventfd of its memory cgroup's OOM notification, which ends the whole
sandbox (v2 does that in the kernel). Slow operations (resolving,
connecting) run on worker threads; while one is under way for a child, that
child's channel is not read, so a child has at most one request in flight
and cannot queue work without bound.

Each sandbox has a cgroup of its own (``privsep.cgroups``), made before the
fork and removed once its processes are gone; one the kernel does not let
go of yet (a process still dying) is retried at the next start and at close.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import os
import queue
import select
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from privsep import __version__, cgroups, channel, protocol
from privsep._printable import printable
from privsep.broker import notify
from privsep.broker.actas import sandbox_ids
from privsep.broker.answers import Answer, Refusal
from privsep.broker.audit import AuditLog, Record
from privsep.broker.outcome import Outcome, from_wait_status, memory_limit
from privsep.broker.relay import AppendRelay, Relay, UdpServerRelay
from privsep.broker.services import SLOW_OPS, Services, target
from privsep.broker.transparent import Deferred, Served, Transparent, view_roots
from privsep.confine.seccomp import dangerous_numbers, syscall_name
from privsep.confine.spawn import ControlMessage, Spawned, SpawnPlan, decode_control, in_cgroup, spawn
from privsep.errors import (
    EXIT_NOT_FOUND,
    EXIT_PRIVSEP,
    EXIT_TIMEOUT,
    ChannelError,
    ConfinementError,
    RemoteProtocolError,
)

if TYPE_CHECKING:
    from privsep.broker.terminal import Terminal  # only privsep run makes one

_Role = Literal[
    "channel",
    "control",
    "pidfd",
    "init",
    "listener",
    "oom",
    "wakeup",
    "relay_child",
    "relay_peer",
    "external",
    "terminal",
]
_MAX_OUTBOX = 64  # replies queued for a child that does not read, before it is cut off
_WORKERS = 4
_IDLE_S = 30.0  # an idle worker beyond _WORKERS ends after this long
_MAX_TRACEBACKS = 5  # printed in full per broker; later internal errors go to the audit log
_MAX_TRACEBACK_CHARS = 8192
_MAX_RELAYS = 32  # UDP flows per child: each costs the broker two fds
_MAX_DENIALS = 256  # kept per child for the report; the audit log has every one


@dataclass
class CallContext:
    """One ``Sandbox.call``: what the child may ask for, and what it answered (JSON values only)."""

    function: str
    args: list[object]
    kwargs: dict[str, object]
    returned: protocol.CallReturn | None = None


@dataclass(frozen=True)
class Denial:
    """A request the policy refused, for the report at exit (never holds a secret value)."""

    op: str
    target: str
    rule: str | None
    message: str
    allow: str | None
    subject: str | None = None  # the part of the target that was refused (one path of a rename)


class _Workers:
    """Daemon threads for slow operations: one for each operation in flight.

    A fixed pool let sandboxes whose operations hang (a connect to a black hole, a
    listing of a huge directory) occupy every thread, and a sibling's request then
    waited behind them. Each sandbox has at most two slow operations in flight (one
    request, one transparent call), so it holds at most two threads, and a sibling's
    operation always gets a thread at once. Up to _WORKERS idle threads are kept;
    the others end after _IDLE_S. Not concurrent.futures: its threads are joined at
    interpreter exit, so one connect stuck in its timeout would hold ``privsep run`` open.
    """

    def __init__(self, done: Callable[[], None]) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._done = done
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, not yet promised to one

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # promised: some waiting thread takes this job
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._run, name="privsep-worker", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > _WORKERS:
                        self._idle -= 1
                        return
                continue
            job()
            self._done()
            with self._lock:
                self._idle += 1


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
    services: Services | None = None
    outbox: collections.deque[tuple[bytes, int | None]] = field(default_factory=collections.deque)
    pending: bool = False
    deferred: collections.deque[tuple[Callable[[], None], Callable[[], None]]] = field(
        default_factory=collections.deque
    )  # transparent slow calls waiting for this sandbox's one worker slot: (run, drop)
    deferred_running: bool = False
    denials: list[Denial] = field(default_factory=list)  # at most _MAX_DENIALS kept
    denials_dropped: int = 0  # beyond that: counted, not kept (a flood must not grow the broker)
    relays: dict[int, Relay] = field(default_factory=dict)  # by either of its fds
    syscall_default: str = "eperm"  # the policy's answer to a syscall outside the allowlist
    learning: bool = False  # privsep learn: allow and record instead of denying
    syscall_denials: dict[str, int] = field(default_factory=dict)  # name -> times denied
    syscalls_used: dict[str, int] = field(default_factory=dict)  # learn mode: name -> times allowed
    call: CallContext | None = None  # Sandbox.call: the function's arguments and its answer
    transparent: Transparent | None = None  # serves open/connect of programs without the client
    command_pid: int | None = None
    kill_reason: Outcome | None = None
    setup_error: ControlMessage | None = None
    exec_error: ControlMessage | None = None
    exit_status: int | None = None
    monitor_reaped: bool = False
    init_exited: bool = False
    outcome: Outcome | None = None
    requests: int = 0
    terminal: Terminal | None = None  # the sandbox's own pty, relayed to the user's terminal
    terminal_events: dict[int, int] = field(default_factory=dict)  # its fds as registered now
    cgroup: cgroups.SandboxCgroup | None = None
    cgroup_missing: str | None = None
    """Why this sandbox runs without a cgroup (the policy allowed it); None when it has one."""

    @property
    def pid(self) -> int:
        return self.spawned.pid


class Broker:
    """Starts sandboxes and serves their requests until they end."""

    def __init__(self, *, audit: AuditLog | None = None) -> None:
        self._sel = selectors.DefaultSelector()
        self._children: set[Child] = set()
        self._audit = audit
        self._internal_errors = 0
        # (child, request, start, result, reply): reply False for a transparently brokered
        # call, which the worker has answered itself; the loop only records it.
        self._finished: queue.SimpleQueue[tuple[Child, protocol.Request, float, Answer | Refusal, bool]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, (None, "wakeup"))
        self._workers = _Workers(self._wake)
        self._deferred_lock = threading.Lock()  # guards every Child.deferred and deferred_running
        self._leftover: list[cgroups.SandboxCgroup] = []  # ended sandboxes' cgroups not removed yet

    def _wake(self) -> None:
        """From a worker thread: a result is waiting (a full pipe already says so)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b".")

    # -- public -----------------------------------------------------------

    def start(
        self,
        plan: SpawnPlan,
        *,
        services: Services | None = None,
        timeout: float | None = None,
        stdio: tuple[int, int, int] = (0, 1, 2),
        call: CallContext | None = None,
        spawner: Callable[..., Spawned] | None = None,
        listen_fds: tuple[int, ...] = (),
        terminal: Terminal | None = None,
    ) -> Child:
        """Spawn a sandbox for ``plan``; it runs while the loop is driven (``wait``/``run_once``).

        ``services`` performs the brokered operations of the plan's policy
        (built once per policy); without it a child can only ``hello`` and ``ping``.
        ``listen_fds``: socket activation (``plan`` from ``with_listen``); the caller keeps them.
        ``stdio`` is given to the child as it is. ``terminal`` (``Terminal.for_stdio``
        of privsep's own stdio, entered): the child gets that pty instead of the
        user's terminal (``stdio`` is then ignored), and the loop relays it.
        """
        if terminal is not None:
            if terminal.in_use:
                raise ValueError("a Terminal serves one sandbox; make one per start")
            plan = dataclasses.replace(plan, terminal=terminal.child_fd)
            stdio = terminal.child_stdio
        if listen_fds and spawner is not None:
            raise ValueError("socket activation needs the plain spawn, not a forkserver")
        cgroup, missing = self._cgroup_for(plan)
        plan = in_cgroup(plan, cgroup)
        try:
            if listen_fds:
                spawned = spawn(plan, stdio=stdio, listen_fds=listen_fds)
            else:
                spawned = (spawner or spawn)(plan, stdio=stdio)
        except BaseException:
            if cgroup is not None and not cgroup.remove():
                self._leftover.append(cgroup)
            raise
        deadline = time.monotonic() + timeout if timeout else None
        child = Child(
            argv0=plan.argv[0],
            spawned=spawned,
            deadline=deadline,
            timeout=timeout,
            services=services,
            syscall_default=plan.syscall_default,
            learning=plan.learn,
            call=call,
            cgroup=cgroup,
            cgroup_missing=missing,
        )
        if terminal is not None:
            terminal.spawned()
            child.terminal = terminal
            self._sync_terminal(child)
        if plan.transparent_calls:
            v = plan.view
            roots = view_roots(
                tuple(b.path for b in v.binds), tuple(p for p, _ in v.symlinks), v.tmp_size_mb is not None
            )
            child.transparent = Transparent(
                frozenset(plan.transparent_calls),
                roots,
                frozenset(plan.kernel_served),
                view_dirs=frozenset(v.dirs),
                learning=plan.learn,
            )
        self._children.add(child)
        spawned.channel.setblocking(False)
        spawned.control.setblocking(False)
        self._sel.register(spawned.channel, selectors.EVENT_READ, (child, "channel"))
        self._sel.register(spawned.control, selectors.EVENT_READ, (child, "control"))
        self._sel.register(spawned.pidfd, selectors.EVENT_READ, (child, "pidfd"))
        if cgroup is not None and cgroup.oom_fd is not None:
            self._sel.register(cgroup.oom_fd, selectors.EVENT_READ, (child, "oom"))
        return child

    def _cgroup_for(self, plan: SpawnPlan) -> tuple[cgroups.SandboxCgroup | None, str | None]:
        """The new sandbox's cgroup, or why it runs without one (only if its policy allows that)."""
        if plan.cgroups == "off":
            return None, '--no-cgroups, or [limits] cgroups = "off"'
        if self._leftover:
            self._leftover = cgroups.remove_all(self._leftover)
        try:
            return cgroups.host().create(plan.budget), None
        except ConfinementError as exc:
            if plan.cgroups == "optional":
                return None, f'{exc.reason} ([limits] cgroups = "optional")'
            raise ConfinementError(
                "cgroups",
                f"{exc.reason}. To run without per-sandbox memory, process and CPU limits instead (only "
                'setrlimit per process), pass --no-cgroups or set [limits] cgroups = "optional"',
            ) from None

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
            if role == "wakeup":
                self._on_finished()
            elif role in ("relay_child", "relay_peer"):
                self._on_relay(child, role, key.fd)
            elif role == "external":
                child(key.fd)  # a watch(): the callback sits where the child would
            elif child.outcome is None:
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

    def watch(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(fd)`` from the loop whenever ``fd`` is readable (e.g. a captured stdout)."""
        self._sel.register(fd, selectors.EVENT_READ, (callback, "external"))

    def unwatch(self, fd: int) -> None:
        self._forget(fd)

    def fileno(self) -> int:
        """A descriptor that is readable when the loop has work: for asyncio's add_reader."""
        return self._sel.fileno()

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
        """Kill every sandbox still running and wait for them; release every fd and cgroup."""
        for child in list(self._children):
            self.kill(child, Outcome("lost", EXIT_PRIVSEP, detail="the broker was closed"))
        while self._children:
            self.run_once()
        deadline = time.monotonic() + 2
        while self._leftover and time.monotonic() < deadline:
            self._leftover = cgroups.remove_all(self._leftover)
            if self._leftover:
                time.sleep(0.01)
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        # Replies of slow operations that finished after their child: only their fds matter.
        self._on_finished()

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
        elif role == "terminal":
            assert child.terminal is not None
            child.terminal.pump()
            self._sync_terminal(child)
        elif role == "oom":
            self._on_oom(child)
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
        if frame is None:
            if _hung_up(sock):  # every process of the sandbox closed its end
                self._forget(sock)
            else:  # an empty frame reads like end of stream, but the peer is still there
                self._violation(child, "the child sent an empty frame")
            return
        child.requests += 1
        try:
            request = child.proto.receive(frame)
        except RemoteProtocolError as exc:
            self._violation(child, str(exc))
            return
        if isinstance(request, protocol.Hello):
            self._queue(child, protocol.reply_ok(request, child.proto.hello_result()))
        elif isinstance(request, protocol.Ping):
            self._queue(child, protocol.reply_ok(request, {}))
        elif isinstance(request, protocol.CallArgs | protocol.CallReturn):
            self._on_call(child, request)
        elif child.services is None:
            self._finish(
                child,
                request,
                time.monotonic(),
                Refusal(protocol.ErrorCode.UNSUPPORTED, "this sandbox has no brokered operations"),
            )
        elif request.op in SLOW_OPS:
            self._submit(child, request, child.services)
        else:
            self._finish(child, request, time.monotonic(), self._perform(child, child.services, request))

    def _on_call(self, child: Child, request: protocol.CallArgs | protocol.CallReturn) -> None:
        call = child.call
        if call is None:
            refusal = Refusal(protocol.ErrorCode.UNSUPPORTED, "this child was not started by Sandbox.call")
            self._finish(child, request, time.monotonic(), refusal)
        elif isinstance(request, protocol.CallArgs):
            result = {"function": call.function, "args": call.args, "kwargs": call.kwargs}
            self._queue(child, protocol.reply_ok(request, result))
        elif call.returned is not None:
            self._finish(
                child, request, time.monotonic(), Refusal(protocol.ErrorCode.FAILED, "already returned")
            )
        else:
            call.returned = request
            self._queue(child, protocol.reply_ok(request, {}))

    def _submit(self, child: Child, request: protocol.Request, services: Services) -> None:
        """Run a slow request on a worker; stop reading this child until it is answered."""
        child.pending = True
        self._watch(child)
        start = time.monotonic()

        def job() -> None:
            self._finished.put((child, request, start, self._perform(child, services, request), True))

        self._workers.submit(job)

    def _on_finished(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass
        while True:
            try:
                child, request, start, answer, reply = self._finished.get_nowait()
            except queue.Empty:
                return
            if not reply:
                self._record(child, request, start, answer)
                continue
            child.pending = False
            if child.outcome is not None or child.spawned.channel.fileno() < 0:
                if isinstance(answer, Answer):
                    _discard(answer)
                continue
            self._finish(child, request, start, answer)

    def _finish(
        self, child: Child, request: protocol.Request, start: float, answer: Answer | Refusal
    ) -> None:
        """Audit one decision and queue its reply (with its fd, if any)."""
        if isinstance(answer, Answer) and (relay := answer.relay) is not None:
            if len(child.relays) >= 2 * _MAX_RELAYS:
                _discard(answer)
                answer = Refusal(
                    protocol.ErrorCode.FAILED,
                    f"too many relayed UDP flows and append-only files (at most {_MAX_RELAYS})",
                )
            else:
                self._add_relay(child, relay)
        self._record(child, request, start, answer)
        if isinstance(answer, Answer):
            reply, fd = protocol.reply_ok(request, answer.result), answer.fd
        elif answer.code is protocol.ErrorCode.DENIED:
            reply, fd = protocol.reply_denied(request.id, answer.message, answer.allow), None
        else:
            reply, fd = protocol.reply_error(request.id, answer.code, answer.message), None
        self._queue(child, reply, fd)

    def record(self, child: Child, request: protocol.Request, answer: Answer | Refusal) -> None:
        """Audit a decision made for ``child`` outside the loop (``--listen``, before it started)."""
        self._record(child, request, time.monotonic(), answer)

    def _record(
        self, child: Child, request: protocol.Request, start: float, answer: Answer | Refusal
    ) -> None:
        """Audit one decision; a denial also goes into the report at exit."""
        latency = int((time.monotonic() - start) * 1e6)
        what = target(request)
        if isinstance(answer, Answer):
            record = Record(child.command_pid, request.op, what, "allow", answer.rule, latency)
        else:
            denied = answer.code is protocol.ErrorCode.DENIED
            record = Record(
                child.command_pid, request.op, what, "deny" if denied else "error", answer.rule, latency,
                code=answer.code.value, message=answer.message,
            )  # fmt: skip
            if denied:
                _note_denial(
                    child, Denial(request.op, what, answer.rule, answer.message, answer.allow, answer.subject)
                )
        if self._audit is not None:
            self._audit.write(record)

    def _queue(self, child: Child, reply: bytes, fd: int | None = None) -> None:
        child.outbox.append((reply, fd))
        self._flush(child)

    def _flush(self, child: Child) -> None:
        sock = child.spawned.channel
        while child.outbox:
            reply, fd = child.outbox[0]
            try:
                channel.send(sock, reply, () if fd is None else (fd,))
            except BlockingIOError:
                break
            except (ChannelError, OSError):
                self._drop_outbox(child)
                break
            child.outbox.popleft()
            if fd is not None:
                os.close(fd)  # the child has its own copy now
        if len(child.outbox) > _MAX_OUTBOX:
            self._violation(child, "the child does not read its replies")
            return
        self._watch(child)

    def _watch(self, child: Child) -> None:
        """Register the channel for what it waits on now.

        Replies queued: writability (back-pressure: no new requests are read).
        A slow request in flight: nothing. Otherwise: the next request.
        """
        sock = child.spawned.channel
        if sock.fileno() < 0:
            return
        events = selectors.EVENT_WRITE if child.outbox else 0 if child.pending else selectors.EVENT_READ
        try:
            key = self._sel.get_key(sock)
        except KeyError:
            if events:
                self._sel.register(sock, events, (child, "channel"))
            return
        if not events:
            self._sel.unregister(sock)
        elif key.events != events:
            self._sel.modify(sock, events, (child, "channel"))

    def _add_relay(self, child: Child, relay: Relay) -> None:
        for end, role in relay.watched():
            child.relays[end.fileno()] = relay
            self._sel.register(end, selectors.EVENT_READ, (child, role))

    def _on_relay(self, child: Child, role: str, fd: int) -> None:
        relay = child.relays.get(fd)
        if relay is None:
            return
        if role == "relay_peer":
            relay.from_peer()
        elif not relay.from_child():
            self._close_relay(child, relay)

    def _close_relay(self, child: Child, relay: Relay) -> None:
        for end, _ in relay.watched():
            child.relays.pop(end.fileno(), None)
            self._forget(end.fileno())
        if isinstance(relay, AppendRelay) and relay.truncated:
            reason = "an append-only file takes at most [limits] file_size_mb per open; the rest was dropped"
            _note_denial(child, Denial("append", relay.path, None, reason, None))
        if isinstance(relay, UdpServerRelay):
            for host, port in relay.refused:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                reason = "not a peer that wrote to the bound UDP socket; it may only answer"
                _note_denial(child, Denial("sendto", f"{where}/udp", None, reason, None))
        relay.close()

    def _drop_outbox(self, child: Child) -> None:
        for _, fd in child.outbox:
            if fd is not None:
                os.close(fd)
        child.outbox.clear()

    def _violation(self, child: Child, reason: str) -> None:
        sock = child.spawned.channel
        # The reason is built by protocol/channel from our own words only (never peer bytes).
        reply = protocol.reply_error(None, protocol.ErrorCode.INVALID, f"protocol violation: {reason}"[:1000])
        with contextlib.suppress(ChannelError, OSError):
            channel.send(sock, reply)
        self._drop_outbox(child)
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
            else:
                child.command_pid = _pid_of(msg.fd)
        elif msg.kind == "error":
            child.setup_error = child.setup_error or msg
        elif msg.kind == "exec_error":
            child.exec_error = msg
        elif msg.kind == "exit":
            child.exit_status = msg.status
        elif msg.kind == "stopped" and child.terminal is not None and child.outcome is None:
            # The command stopped (^Z on its pty): privsep stops too, as a job of the
            # user's shell, and continues the command when it is itself continued.
            # Not with a timeout: a stopped privsep enforces nothing, and the command could
            # stop itself to outlive it (second fresh-eyes audit). The command goes on.
            if child.deadline is None:
                child.terminal.suspend()
            self.send_signal(child, signal.SIGCONT)

    def _sync_terminal(self, child: Child) -> None:
        """Register the pty relay's fds for exactly what it can use now (never a busy loop)."""
        assert child.terminal is not None
        want = child.terminal.interest() if child.outcome is None else {}
        for fd, events in want.items():
            had = child.terminal_events.get(fd)
            if had is None:
                self._sel.register(fd, events, (child, "terminal"))
            elif had != events:
                self._sel.modify(fd, events, (child, "terminal"))
        for fd in child.terminal_events.keys() - want.keys():
            self._forget(fd)
        child.terminal_events = want

    def _on_listener(self, child: Child) -> None:
        assert child.listener is not None
        try:
            note = notify.receive(child.listener)
        except OSError:
            self._forget(child.listener)  # every process under the filter is gone
            return
        if note is None:
            if _hung_up(child.listener):
                # No process is left under the filter: stop watching, or an
                # always-readable fd would spin the loop until init exits.
                self._forget(child.listener)
            return
        native = note.arch == notify.AUDIT_ARCH_X86_64
        if native and child.transparent is not None and note.nr in child.transparent.calls:
            self._on_transparent(child, child.transparent, note)
            return
        name = syscall_name(note.nr) if native else f"syscall {note.nr} (arch {note.arch:#x})"
        dangerous = not native or note.nr in dangerous_numbers()
        if child.learning:
            # Permissive by definition (see notify.py): record, and let it run,
            # except the dangerous set, which stays denied.
            if dangerous:
                child.syscall_denials[name] = child.syscall_denials.get(name, 0) + 1
                notify.refuse(child.listener, note, errno.EPERM)
            else:
                child.syscalls_used[name] = child.syscalls_used.get(name, 0) + 1
                notify.allow_for_learning(child.listener, note)
            self._audit_syscall(child, name, "deny" if dangerous else "allow")
            return
        self._audit_syscall(child, name, "deny")
        if dangerous or child.syscall_default == "kill":
            why = (
                "which privsep never allows"
                if dangerous
                else f'which the policy does not allow (its [syscalls] default is "kill"); '
                f'to allow it, add "{name}" to [syscalls] allow'
            )
            self.kill(
                child,
                Outcome(
                    "seccomp",
                    128 + signal.SIGSYS,
                    detail=f"killed by seccomp: the command called {name}, {why}",
                    signal=signal.SIGSYS,
                    syscall=name,
                ),
            )
            # Never answered: the call stays blocked until SIGKILL ends the process.
            # An answer (even an error) would let it run on until the kill lands.
            return
        child.syscall_denials[name] = child.syscall_denials.get(name, 0) + 1
        notify.refuse(
            child.listener, note, errno.ENOSYS if child.syscall_default == "enosys" else errno.EPERM
        )

    def _on_transparent(self, child: Child, transparent: Transparent, note: notify.Notification) -> None:
        """An open or connect of a program that does not use the client (see transparent.py)."""
        assert child.listener is not None
        start = time.monotonic()
        try:
            served = transparent.serve(child.listener, note, child.services)
        except OSError:
            # The listener itself failed (the sandbox is going away): nothing left to answer.
            return
        except Exception as exc:
            self._internal_error(child, f"syscall {note.nr}", exc)
            with contextlib.suppress(OSError):
                notify.refuse(child.listener, note, errno.EIO)
            return
        if isinstance(served, Served):
            if isinstance(served.result, Answer) and (relay := served.result.relay) is not None:
                if len(child.relays) >= 2 * _MAX_RELAYS:
                    relay.close()  # the child's pipe now fails with EPIPE; the report says why
                    served = Served(
                        served.request,
                        Refusal(
                            protocol.ErrorCode.FAILED,
                            f"too many append-only files open (at most {_MAX_RELAYS})",
                        ),
                    )
                else:
                    self._add_relay(child, relay)
            self._record(child, served.request, start, served.result)
        elif isinstance(served, Deferred):
            job = served.job
            listener = child.listener

            def run() -> None:
                try:
                    result = job()
                except OSError:
                    return
                except Exception as exc:
                    self._internal_error(child, f"syscall {note.nr}", exc)
                    with contextlib.suppress(OSError):
                        notify.refuse(listener, note, errno.EIO)
                    return
                if result is not None:
                    self._finished.put((child, result.request, start, result.result, False))

            self._defer(child, run, served.drop)

    def _defer(self, child: Child, run: Callable[[], None], drop: Callable[[], None]) -> None:
        """One slow transparent call in flight per sandbox (guarantee 9); the rest wait their turn.

        A sandbox with many threads connecting to a black hole then occupies one
        worker, not all of them: its siblings' calls are never queued behind it.
        The waiting calls stay unanswered (their threads blocked in the kernel);
        once the sandbox has ended, they are dropped, never run.
        """
        with self._deferred_lock:
            if child.deferred_running:
                child.deferred.append((run, drop))
                return
            child.deferred_running = True
        self._workers.submit(lambda: self._run_deferred(child, run))

    def _run_deferred(self, child: Child, run: Callable[[], None]) -> None:
        try:
            run()
        finally:
            following: Callable[[], None] | None = None
            with self._deferred_lock:
                while child.deferred:
                    nxt, drop = child.deferred.popleft()
                    if child.outcome is None:
                        following = nxt
                        break
                    with contextlib.suppress(OSError):
                        drop()
                if following is None:
                    child.deferred_running = False
            if following is not None:
                chosen = following
                self._workers.submit(lambda: self._run_deferred(child, chosen))

    def _perform(self, child: Child, services: Services, request: protocol.Request) -> Answer | Refusal:
        """Run one request; every refusal becomes a value (it is a reply, not an error of ours).

        Anything else is a bug of ours that the request reached: logged, and
        answered as a failure (EIO), so the child, its siblings and the broker go on.
        """
        held = child.spawned.host_ids
        token = sandbox_ids.set(None if held is None else (held.id, held.id))
        try:
            return services.handle(request)
        except Refusal as refusal:
            return refusal
        except Exception as exc:
            self._internal_error(child, f"a {request.op} request", exc)
            return Refusal(
                protocol.ErrorCode.FAILED, "internal error in the broker (logged there)", errno=errno.EIO
            )
        finally:
            sandbox_ids.reset(token)

    def _internal_error(self, child: Child, what: str, exc: BaseException) -> None:
        """A bug of ours met a child's input: log it, answer EIO, carry on (rule 6).

        The traceback may quote the child's input: it is escaped for the terminal, and
        only the first _MAX_TRACEBACKS are printed (a child that found the bug could
        otherwise fill the user's terminal); the audit log records every one.
        """
        self._internal_errors += 1
        if self._internal_errors <= _MAX_TRACEBACKS:
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            more = (
                " (later ones are counted in the audit log only)"
                if self._internal_errors == _MAX_TRACEBACKS
                else ""
            )
            print(
                f"privsep: internal error while serving {what} for the sandbox of pid {child.command_pid} "
                f"(answered EIO; the broker and every other sandbox carry on); please report it{more}:\n"
                f"{printable(detail[:_MAX_TRACEBACK_CHARS], lines=True)}",
                file=sys.stderr,
                flush=True,
            )
        if self._audit is not None:
            with contextlib.suppress(OSError):
                self._audit.write(Record(child.command_pid, "internal", type(exc).__name__, "error", what, 0))

    def _audit_syscall(self, child: Child, name: str, decision: str) -> None:
        if self._audit is not None:
            self._audit.write(Record(child.command_pid, "syscall", name, decision, "syscalls", 0))

    def _on_oom(self, child: Child) -> None:
        """cgroup v1: the kernel ran the sandbox out of memory. Its OOM killer ends one process;
        the sandbox ends as a whole (v2's memory.oom.group does the same in the kernel)."""
        cgroup = child.cgroup
        if cgroup is not None and cgroup.oom_pending():
            self.kill(child, memory_limit(cgroup.budget.memory_mb))

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
            self._note_limits(child)
            child.outcome = self._outcome(child)
            self._release(child)

    def _note_limits(self, child: Child) -> None:
        """Forks the process limit refused: reported at exit like the policy's denials."""
        if child.cgroup is None:
            return
        refused = child.cgroup.pids_refused()
        if not refused:
            return
        limit = child.cgroup.budget.processes
        times = "once" if refused == 1 else f"{refused} times"
        denial = Denial(
            "fork",
            times,
            "limits.processes",
            f"the sandbox reached its process limit ([limits] processes = {limit}: processes and threads "
            "together), so fork, clone or a new thread failed with EAGAIN",
            "--processes",
            subject=str(limit * 2),
        )
        _note_denial(child, denial)
        if self._audit is not None:
            why = denial.message
            with contextlib.suppress(OSError):
                self._audit.write(
                    Record(child.command_pid, "fork", times, "deny", "limits.processes", 0, message=why)
                )

    def _outcome(self, child: Child) -> Outcome:
        if child.kill_reason is not None:
            return child.kill_reason
        if child.cgroup is not None and child.cgroup.memory_limit_hit():
            return memory_limit(child.cgroup.budget.memory_mb)  # whatever else broke, this is why
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
        if child.terminal is not None:
            self._sync_terminal(child)  # outcome is set: unregisters every fd of the relay
            child.terminal.finish()  # what the sandbox wrote last, then the user's termios back
        self._drop_outbox(child)
        for relay in set(child.relays.values()):
            self._close_relay(child, relay)
        sp = child.spawned
        for sock in (sp.channel, sp.control):
            self._forget(sock)
            sock.close()
        for fd in (sp.pidfd, child.listener, child.init_pidfd, child.command_pidfd):
            if fd is not None:
                self._forget(fd)
                os.close(fd)
        child.listener = child.init_pidfd = child.command_pidfd = None
        sp.release_host_ids()  # every process of the sandbox has gone: its host id is free
        cgroup = child.cgroup
        if cgroup is not None:
            if cgroup.oom_fd is not None:
                self._forget(cgroup.oom_fd)
                os.close(cgroup.oom_fd)
                cgroup.oom_fd = None
            if not cgroup.remove():
                self._leftover.append(cgroup)
        self._children.discard(child)


def _pid_of(pidfd: int) -> int | None:
    """The host pid behind a pidfd (for the audit log), from its fdinfo."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _discard(answer: Answer) -> None:
    """An answer nobody will receive: release what it holds."""
    if answer.fd is not None:
        os.close(answer.fd)
    if answer.relay is not None:
        answer.relay.close()


def _note_denial(child: Child, denial: Denial) -> None:
    if len(child.denials) < _MAX_DENIALS:
        child.denials.append(denial)
    else:
        child.denials_dropped += 1


def _hung_up(fd: socket.socket | int) -> bool:
    """Whether poll reports hang-up: a closed peer, or a seccomp listener with no process left.

    On SEQPACKET an empty message and end of stream both read as b"", so
    the broker asks poll rather than guessing from the read.
    """
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP | select.POLLHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in poller.poll(0))
