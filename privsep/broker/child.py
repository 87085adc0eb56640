"""The broker's record of one sandbox, in parts: each part is owned by the module that changes it.

- ``Processes``: what the sandbox's own processes reported and how it is ending (lifecycle.py);
- ``Serving``: the request channel's protocol state, replies and relays (requests.py);
- ``Report``: denials and syscall counts for the report at exit (report.py);
- the rest is fixed when the sandbox starts (loop.py), except ``outcome``, set once when it has ended.
"""

from __future__ import annotations

from privsep._lazy import lazy_module
from privsep._version import __version__
from privsep.broker.report import Report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable

    from privsep import cgroups, protocol
    from privsep.broker.egress import Egress
    from privsep.broker.outcome import Outcome
    from privsep.broker.relay import Relay
    from privsep.broker.services import Services
    from privsep.broker.terminal import Terminal  # only privsep run makes one
    from privsep.broker.transparent import Transparent
    from privsep.broker.verdicts import SyscallRules
    from privsep.broker.workers import Lane
    from privsep.plan.control import ControlMessage
    from privsep.plan.spawnplan import Spawned, SpawnPlan
else:
    protocol = lazy_module("privsep.protocol", globals())  # made for a sandbox's first request
    # The C type collections.deque is, without the collections package (~1 ms of a warm run)
    from _collections import deque


class CallContext:
    """One ``Sandbox.call``: what the child may ask for, and what it answered (JSON values only)."""

    __slots__ = ("args", "function", "kwargs", "returned")

    def __init__(
        self,
        function: str,
        args: list[object],
        kwargs: dict[str, object],
        returned: protocol.CallReturn | None = None,
    ) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.returned = returned


class Processes:
    """What the sandbox's own processes reported over the control socket, and why it is ending."""

    def __init__(self) -> None:
        self.init_pidfd: int | None = None
        self.command_pidfd: int | None = None
        self.listener: int | None = None  # the seccomp listener of the command's filter
        self.command_pid: int | None = None  # as the host sees it (for the audit log)
        self.setup_error: ControlMessage | None = None
        self.exec_error: ControlMessage | None = None
        self.exit_status: int | None = None
        self.monitor_reaped = False
        self.init_exited = False
        self.kill_reason: Outcome | None = None
        #: Signals to pass on that came before the command existed: sent once it reports.
        self.held_signals: dict[int, None] = {}


class Serving:
    """The request channel: protocol state, replies not yet sent, and what is being relayed."""

    def __init__(self) -> None:
        self.outbox: deque[tuple[bytes, int | None]] = deque()
        self.pending = False  # a slow request is on a worker: the channel is not read meanwhile
        self.requests = 0
        self.relays: dict[int, Relay] = {}  # by either of its fds
        self._proto: protocol.BrokerProtocol | None = None

    @property
    def proto(self) -> protocol.BrokerProtocol:
        """The channel's protocol state, made when the first frame comes: a sandbox that sends
        none never builds the protocol's models (``privsep run -- /bin/true`` among them)."""
        if self._proto is None:
            self._proto = protocol.BrokerProtocol(__version__)
        return self._proto


class Child:
    """The broker's record of one sandbox.

    The records of this module are plain classes, not dataclasses: they are
    compared by identity and never copied, and Python 3.11 compiles each dataclass's methods
    from source when its module is imported, ~0.5-1.3 ms apiece on every ``privsep run``.
    """

    def __init__(
        self,
        *,
        argv0: str,
        spawned: Spawned,
        deadline: float | None,
        timeout: float | None,
        syscalls: SyscallRules,
        lane: Lane,  # its slow transparent calls, one at a time
        services: Services | None = None,
        call: CallContext | None = None,  # Sandbox.call: the function's arguments and its answer
        transparent: Transparent | None = None,  # serves open/connect of programs without the client
        terminal: Terminal | None = None,  # the sandbox's own pty, relayed to the user's terminal
        egress: Egress | None = None,  # its resolver and proxies (egress.py), when its plan has them
        cgroup: cgroups.SandboxCgroup | None = None,
        cgroup_missing: str | None = None,
        outcome: Outcome | None = None,
        plan: SpawnPlan | None = None,  # what it was started from: the report reads its view and PATH
    ) -> None:
        self.argv0 = argv0
        self.spawned = spawned
        self.deadline = deadline
        self.timeout = timeout
        self.syscalls = syscalls
        self.lane = lane
        self.services = services
        self.call = call
        self.transparent = transparent
        #: Makes ``transparent`` for the first call it serves (loop.py); None: it serves none.
        self.make_transparent: Callable[[], Transparent] | None = None
        self.terminal = terminal
        self.terminal_events: dict[int, int] = {}  # its fds as registered now
        self.egress = egress
        self.cgroup = cgroup
        self.cgroup_missing = cgroup_missing
        """Why this sandbox runs without a cgroup (the policy allowed it); None when it has one."""
        self.procs = Processes()
        self.serving = Serving()
        self.report = Report()
        self.outcome = outcome
        self.plan = plan

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
