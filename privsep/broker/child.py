"""The broker's record of one sandbox, in parts: each part is owned by the module that changes it.

- ``Processes``: what the sandbox's own processes reported and how it is ending (lifecycle.py);
- ``Serving``: the request channel's protocol state, replies and relays (requests.py);
- ``Report``: denials and syscall counts for the report at exit (report.py);
- the rest is fixed when the sandbox starts (loop.py), except ``outcome``, set once when it has ended.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from privsep import cgroups
from privsep._lazy import lazy_module
from privsep._version import __version__
from privsep.broker.outcome import Outcome
from privsep.broker.report import Report
from privsep.broker.verdicts import SyscallRules
from privsep.broker.workers import Lane
from privsep.plan.control import ControlMessage
from privsep.plan.spawnplan import Spawned, SpawnPlan

if TYPE_CHECKING:
    from privsep import protocol
    from privsep.broker.egress import Egress
    from privsep.broker.relay import Relay
    from privsep.broker.services import Services
    from privsep.broker.terminal import Terminal  # only privsep run makes one
    from privsep.broker.transparent import Transparent
else:
    protocol = lazy_module("privsep.protocol", globals())  # made for a sandbox's first request


@dataclass
class CallContext:
    """One ``Sandbox.call``: what the child may ask for, and what it answered (JSON values only)."""

    function: str
    args: list[object]
    kwargs: dict[str, object]
    returned: protocol.CallReturn | None = None


@dataclass(eq=False)
class Processes:
    """What the sandbox's own processes reported over the control socket, and why it is ending."""

    init_pidfd: int | None = None
    command_pidfd: int | None = None
    listener: int | None = None  # the seccomp listener of the command's filter
    command_pid: int | None = None  # as the host sees it (for the audit log)
    setup_error: ControlMessage | None = None
    exec_error: ControlMessage | None = None
    exit_status: int | None = None
    monitor_reaped: bool = False
    init_exited: bool = False
    kill_reason: Outcome | None = None


@dataclass(eq=False)
class Serving:
    """The request channel: protocol state, replies not yet sent, and what is being relayed."""

    outbox: collections.deque[tuple[bytes, int | None]] = field(default_factory=collections.deque)
    pending: bool = False  # a slow request is on a worker: the channel is not read meanwhile
    requests: int = 0
    relays: dict[int, Relay] = field(default_factory=dict)  # by either of its fds
    _proto: protocol.BrokerProtocol | None = field(default=None, repr=False)

    @property
    def proto(self) -> protocol.BrokerProtocol:
        """The channel's protocol state, made when the first frame comes: a sandbox that sends
        none never builds the protocol's models (``privsep run -- /bin/true`` among them)."""
        if self._proto is None:
            self._proto = protocol.BrokerProtocol(__version__)
        return self._proto


@dataclass(eq=False)
class Child:
    """The broker's record of one sandbox."""

    argv0: str
    spawned: Spawned
    deadline: float | None
    timeout: float | None
    syscalls: SyscallRules
    lane: Lane  # its slow transparent calls, one at a time
    services: Services | None = None
    call: CallContext | None = None  # Sandbox.call: the function's arguments and its answer
    transparent: Transparent | None = None  # serves open/connect of programs without the client
    terminal: Terminal | None = None  # the sandbox's own pty, relayed to the user's terminal
    terminal_events: dict[int, int] = field(default_factory=dict)  # its fds as registered now
    egress: Egress | None = None  # its resolver and proxies (egress.py), when its plan has them
    cgroup: cgroups.SandboxCgroup | None = None
    cgroup_missing: str | None = None
    """Why this sandbox runs without a cgroup (the policy allowed it); None when it has one."""
    procs: Processes = field(default_factory=Processes)
    serving: Serving = field(default_factory=Serving)
    report: Report = field(default_factory=Report)
    outcome: Outcome | None = None
    plan: SpawnPlan | None = None  # what it was started from: the report reads its view and PATH

    @property
    def monitor_pid(self) -> int:
        """The sandbox's first process (the monitor: it reaps init and reports the exit status)."""
        return self.spawned.pid

    @property
    def command_pid(self) -> int | None:
        return self.procs.command_pid

    @property
    def ids(self) -> tuple[int, int] | None:
        """The sandbox's own host uid and gid (a root broker's), or None when it runs as the broker's."""
        held = self.spawned.host_ids
        return None if held is None else (held.id, held.id)
