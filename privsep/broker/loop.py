"""The broker: one event loop serving any number of confined children.

Single-threaded and non-blocking (the nginx master model). Per sandbox the
loop watches its request channel (requests.py), its control socket and
pidfds (lifecycle.py), its seccomp listener (listener.py), with a terminal
its pty relay (terminal.py), on cgroup v1 the OOM eventfd of its memory
cgroup, and the relays some answers leave behind. Slow operations run on
worker threads (workers.py), which hand their results back to this thread.
Each part owns its part of the sandbox's record (child.py); this module only
assembles them, dispatches events by role, and enforces timeouts.

Each sandbox has a cgroup of its own (``privsep.cgroups``), made before the
fork and removed once its processes are gone.
"""

from __future__ import annotations

import time

from privsep._record import replace
from privsep.broker.child import CallContext, Child
from privsep.broker.events import Events
from privsep.broker.lifecycle import Lifecycle
from privsep.broker.listener import ListenerServer
from privsep.broker.outcome import Outcome
from privsep.broker.report import Recorder
from privsep.broker.requests import RequestServer
from privsep.broker.verdicts import SyscallRules
from privsep.broker.workers import Handback, Lane, Workers
from privsep.errors import EXIT_PRIVSEP, EXIT_TIMEOUT
from privsep.plan.spawnplan import SpawnPlan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from privsep import protocol
    from privsep.broker.answers import Answer, Refusal
    from privsep.broker.audit import AuditLog
    from privsep.broker.egress import EgressServer
    from privsep.broker.events import Role
    from privsep.broker.lifecycle import Spawner
    from privsep.broker.services import Services
    from privsep.broker.terminal import Terminal  # only privsep run makes one
    from privsep.broker.transparent import Transparent

__all__ = ["Broker", "CallContext", "Child"]

_NEVER = float("inf")  # no deadline to wake up for


class Broker:
    """Starts sandboxes and serves their requests until they end."""

    def __init__(self, *, audit: AuditLog | None = None) -> None:
        self._events = Events()
        self._children: set[Child] = set()
        self._timed: set[Child] = set()  # those with a deadline: the only ones each wake-up looks at
        #: No later than the soonest deadline of a timed child not being killed (inf: none). Only
        #: ever early (a child killed or ended since): a wake-up at or past it looks at each one.
        self._soonest = _NEVER
        self._recorder = Recorder(audit)
        self._handback = Handback()
        self._events.watch(self._handback.wake_fd, "wakeup", None)
        self._workers = Workers(self._handback.wake)
        self._lifecycle = Lifecycle(self._events, self._recorder, self._ended)
        self._requests = RequestServer(
            self._events, self._recorder, self._lifecycle, self._workers, self._handback
        )
        self._listener = ListenerServer(
            self._events, self._recorder, self._lifecycle, self._requests, self._handback
        )
        self._egress: EgressServer | None = None  # made by the first sandbox with a resolver or proxy
        self._handlers: dict[Role, Callable[[Child], Any]] = {
            "channel": self._requests.on_channel,
            "control": self._lifecycle.on_control,
            "listener": self._listener.on_listener,
            "terminal": self._on_terminal,
            "oom": self._lifecycle.on_oom,
            "init": self._lifecycle.on_init_exit,
            "monitor": self._lifecycle.on_monitor_exit,
        }

    # -- public -----------------------------------------------------------

    def start(
        self,
        plan: SpawnPlan,
        *,
        services: Services | None = None,
        timeout: float | None = None,
        stdio: Sequence[int] = (0, 1, 2),
        call: CallContext | None = None,
        spawner: Spawner | None = None,
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
            plan = replace(plan, terminal=terminal.child_fd)
            stdio = terminal.child_stdio
        if listen_fds and spawner is not None:
            raise ValueError("socket activation needs the plain spawn, not a forkserver")
        spawned, cgroup, missing = self._lifecycle.launch(plan, stdio, spawner, listen_fds)
        rules = SyscallRules(
            frozenset(plan.transparent_calls),
            frozenset(plan.dangerous_calls),
            plan.syscall_default,
            plan.learn,
        )
        child = Child(
            argv0=plan.argv[0],
            plan=plan,
            spawned=spawned,
            deadline=time.monotonic() + timeout if timeout else None,
            timeout=timeout,
            syscalls=rules,
            lane=Lane(self._workers, lambda: child.outcome is None),
            services=services,
            call=call,
            cgroup=cgroup,
            cgroup_missing=missing,
        )
        if terminal is not None:
            terminal.spawned()
            child.terminal = terminal
            self._sync_terminal(child)
        if plan.egress is not None:  # egress (issue 17): its resolver and proxies
            child.egress = self._egress_server().attach(child, plan.egress, services)
        if plan.transparent_calls:
            # Made by the first call it serves (listener.py): most commands make none, and its
            # module and the resource modules behind it are then never imported.
            child.make_transparent = lambda: _transparent(plan, rules, child)
        self._children.add(child)
        if child.deadline is not None:
            self._timed.add(child)
            self._soonest = min(self._soonest, child.deadline)
        self._requests.watch(child)
        self._lifecycle.watch(child)
        return child

    def wait(self, child: Child) -> Outcome:
        """Serve every child until ``child`` has ended; return how it ended."""
        while child.outcome is None:
            self.run_once()
        return child.outcome

    def run_once(self, max_wait: float | None = None) -> None:
        """Wait for one round of events (or a deadline) and handle them."""
        timeout = max_wait
        soonest = self._soonest
        if soonest != _NEVER:  # one clock read, not a scan of the timed children, per wake-up
            until = max(0.0, soonest - time.monotonic())
            timeout = until if max_wait is None else min(max_wait, until)
        for fd, owner, role in self._events.select(timeout):
            if role == "channel":  # the commonest event by far: a request
                if owner.outcome is None:
                    self._requests.on_channel(owner)
            elif role == "wakeup":
                self._handback.run()
            elif role in ("relay_child", "relay_peer"):
                self._requests.on_relay(owner, role, fd)
            elif role == "external":
                owner(fd)  # a watch(): the callback sits where the child would
            elif role == "egress":
                self._egress_server().ready(owner, fd)  # the owner is the fd's handler (egress.py)
            elif owner.outcome is None:
                self._dispatch(owner, role)
        if self._soonest != _NEVER and time.monotonic() >= self._soonest:
            self._expire()

    def watch(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(fd)`` from the loop whenever ``fd`` is readable (e.g. a captured stdout)."""
        self._events.watch(fd, "external", callback)

    def unwatch(self, fd: int) -> None:
        self._events.forget(fd)

    def fileno(self) -> int:
        """A descriptor that is readable when the loop has work: for asyncio's add_reader."""
        return self._events.fileno()

    def send_signal(self, child: Child, sig: int) -> None:
        """Deliver ``sig`` to the command (not to privsep's own processes)."""
        self._lifecycle.send_signal(child, sig)

    def kill(self, child: Child, reason: Outcome) -> None:
        """End the whole sandbox now; ``reason`` becomes its outcome."""
        self._lifecycle.kill(child, reason)

    def record(self, child: Child, request: protocol.Request, answer: Answer | Refusal) -> None:
        """Audit a decision made for ``child`` outside the loop (``--listen``, before it started)."""
        self._recorder.decision(child, request, time.monotonic(), answer)

    def close(self) -> None:
        """Kill every sandbox still running and wait for them; release every fd and cgroup."""
        for child in list(self._children):
            self.kill(child, Outcome("lost", EXIT_PRIVSEP, detail="the broker was closed"))
        while self._children:
            self.run_once()
        self._lifecycle.close()
        self._events.close()
        # Replies of slow operations that finished after their child: only their fds matter.
        self._handback.run()
        self._handback.close()

    @property
    def children(self) -> frozenset[Child]:
        return frozenset(self._children)

    # -- events -----------------------------------------------------------

    def _egress_server(self) -> EgressServer:
        """Imported and made on first use: a run without egress never pays for the proxy's code."""
        if self._egress is None:
            from privsep.broker.egress import EgressServer  # noqa: PLC0415 - see above

            self._egress = EgressServer(self._events, self._recorder, self._workers, self._handback)
        return self._egress

    def _expire(self) -> None:
        """Kill each sandbox past its deadline; the soonest deadline left is the next wake-up."""
        now = time.monotonic()
        soonest = _NEVER
        for child in list(self._timed):
            if child.deadline is None or child.procs.kill_reason is not None:
                continue
            if now >= child.deadline:
                detail = f"timed out after {child.timeout:g} s; the sandbox was killed"
                self._lifecycle.kill(child, Outcome("timeout", EXIT_TIMEOUT, detail=detail))
            else:
                soonest = min(soonest, child.deadline)
        self._soonest = soonest

    def _dispatch(self, child: Child, role: Role) -> None:
        self._handlers[role](child)  # built once: this runs for every event

    def _on_terminal(self, child: Child) -> None:
        assert child.terminal is not None
        child.terminal.pump()
        self._sync_terminal(child)

    def _sync_terminal(self, child: Child) -> None:
        """Register the pty relay's fds for exactly what it can use now (never a busy loop)."""
        assert child.terminal is not None
        want = child.terminal.interest() if child.outcome is None else {}
        for fd in child.terminal_events.keys() | want.keys():
            self._events.want(fd, want.get(fd, 0), "terminal", child)
        child.terminal_events = want

    def _ended(self, child: Child) -> None:
        """The sandbox has ended (its outcome is set): release everything it held."""
        if child.terminal is not None:
            self._sync_terminal(child)  # outcome is set: unregisters every fd of the relay
            child.terminal.finish()  # what the sandbox wrote last, then the user's termios back
        self._requests.release(child)
        if child.egress is not None:
            child.egress.close()
        self._lifecycle.release(child)
        self._children.discard(child)
        self._timed.discard(child)


def _transparent(plan: SpawnPlan, rules: SyscallRules, child: Child) -> Transparent:
    """What serves ``child``'s transparently brokered calls (transparent.py)."""
    from privsep.broker.transparent import Transparent, view_roots  # noqa: PLC0415 - see Broker.start

    v = plan.view
    roots = view_roots(
        tuple(b.path for b in v.binds), tuple(p for p, _ in v.symlinks), v.tmp_size_mb is not None
    )
    return Transparent(
        rules.transparent,
        roots,
        frozenset(plan.kernel_served),
        view_dirs=frozenset(v.dirs),
        learning=plan.learn,
        ids=child.ids,
        egress=child.egress,
    )
