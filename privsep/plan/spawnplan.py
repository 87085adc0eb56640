"""What the broker computes before it forks a sandbox: the :class:`SpawnPlan`.

A policy and a command become a plan here (:func:`make_plan`): the view
resolved against this host, the Landlock rules, the rlimits, the seccomp
filter compiled, the environment. Planning reads the host and may fail
(PolicyError, ConfinementError) while nothing has been forked. Each start
then finishes its copy of the plan: its cgroup (:func:`in_cgroup`), its
listening sockets (:func:`with_listen`), its host id (:func:`claim_host_ids`).

``privsep.confine.spawn.spawn`` forks with the finished plan and returns the
broker's handles on the sandbox (:class:`Spawned`). Nothing here runs after
the fork; the sandbox's processes only read the plan.
"""

from __future__ import annotations

import os
import resource

# Not collections.abc: that imports the collections package (~1 ms of every warm privsep run);
# the classes are the same, and plan/wire.py reads SpawnPlan's hints with them.
from _collections_abc import Mapping, Sequence

from privsep import _hostfacts as host
from privsep import _linux
from privsep._lazy import lazy_module
from privsep._record import Record, replace
from privsep.cgroups import Budget, SandboxCgroup
from privsep.errors import ConfinementError, PolicyError
from privsep.plan.egress import EgressPlan, egress_view, plan_egress, proxy_env
from privsep.plan.hostids import Claim, claim
from privsep.plan.landlock import Rule, rules_for
from privsep.plan.view import DEVICES, ViewPlan, plan_grants

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket

    # Only making a plan needs the policy's model (pydantic); reading one (the forkserver, the
    # plan cache of privsep run) must not pay for it.
    from privsep.plan import filter as syscall_filter
    from privsep.plan import importpath, limits, ownpaths
    from privsep.plan.filter import FilterSpec
    from privsep.policy import syscalls as syscall_groups
    from privsep.policy.model import Policy
else:
    # Nor for the filter's planning: a plan read from the cache carries its filter compiled.
    syscall_filter = lazy_module("privsep.plan.filter", globals())
    syscall_groups = lazy_module("privsep.policy.syscalls", globals())
    # Nor for the grants' checks and the limits' planning (~0.4 ms of a warm run).
    importpath = lazy_module("privsep.plan.importpath", globals())
    limits = lazy_module("privsep.plan.limits", globals())
    ownpaths = lazy_module("privsep.plan.ownpaths", globals())

#: The fd number of the channel in the child (and the value of PRIVSEP_FD) without
#: socket activation; with it, the listening sockets take 3.. and the channel follows them.
CHANNEL_FD = 3
LISTEN_FDS_START = 3  # systemd's SD_LISTEN_FDS_START
#: The unprivileged id the child runs as, in both modes, as its user namespace shows it: on the
#: host it is the broker's uid (non-root broker) or the sandbox's own claimed id (root broker).
SANDBOX_ID = 65534
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


host.register("landlock-abi", _linux.landlock_abi_version)


def _default_budget() -> Budget:
    # The policy's models (pydantic) only when a plan is made without a budget: the zygote
    # (confine/zygote.py) decodes plans with this module and never imports them.
    from privsep.policy.model import Limits  # noqa: PLC0415

    return Budget.of(Limits())


class SpawnPlan(Record):
    """Everything the child needs, computed in the broker before fork.

    Data only: the sandbox's processes read it as they inherit it, and the forkserver gets it
    through :mod:`privsep.plan.wire`, which derives its format from these fields.
    """

    __slots__ = (
        "argv",
        "budget",
        "cgroup_join",
        "cgroups",
        "cwd",
        "cwd_inherited",
        "dangerous_calls",
        "egress",
        "env",
        "host_gid",
        "host_uid",
        "in_process_call",
        "kernel_served",
        "landlock_abi",
        "landlock_rules",
        "learn",
        "listen",
        "rlimits",
        "seccomp_bpf",
        "syscall_default",
        "terminal",
        "transparent_calls",
        "user_namespace",
        "view",
    )

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    view: ViewPlan
    landlock_rules: tuple[Rule, ...]
    landlock_abi: int
    rlimits: Mapping[int, int]
    seccomp_bpf: bytes
    user_namespace: bool
    dangerous_calls: tuple[int, ...]
    """The numbers of the syscalls privsep never allows (``policy.syscalls.DANGEROUS``): the
    broker's answer to one that reaches it, learning or not. Named here, when the filter is
    compiled, so that the broker never needs libseccomp to start a sandbox."""
    syscall_default: str
    """How the broker answers a syscall outside the allowlist: eperm, enosys or kill."""
    learn: bool
    """privsep learn: the broker allows and records such syscalls instead."""
    transparent_calls: tuple[int, ...]
    """The syscalls the filter sends to the broker for transparent brokering (transparent.py)."""
    cwd_inherited: bool
    """``cwd`` is where the user was, not a policy's choice: "/" if the child cannot enter it."""
    kernel_served: tuple[int, ...]
    """Indices of the policy's [[files]] grants bound into the view: the kernel serves them."""
    in_process_call: bool
    """Forkserver only: after confinement, run ``privsep._callee`` in this (preloaded)
    interpreter instead of exec'ing ``argv``: a ``Sandbox.call`` in a few milliseconds."""
    listen: tuple[str, ...]
    """Socket activation: the names (LISTEN_FDNAMES) of the listening sockets the broker
    passes as fds 3.. (see :func:`with_listen`); the channel comes after them."""
    budget: Budget
    """What the sandbox's cgroup holds it to (the policy's [limits]); the broker makes the cgroup."""
    cgroups: str
    """The policy's [limits] cgroups: required, optional or off (the broker's decision)."""
    cgroup_join: tuple[str, ...]
    """The files of this sandbox's cgroup (cgroup.procs; tasks on v1) init writes "0" to,
    joining it, before anything else (see :func:`in_cgroup`); empty when it runs without one."""

    terminal: int | None
    """The command's fd (0-2) that is the pty the broker made for this sandbox (never the
    user's terminal): init makes it the controlling terminal of the sandbox's session and
    the command leads its foreground process group. None: no terminal, no session change."""

    egress: EgressPlan | None
    """The sandbox's resolver and proxies (plan/egress.py): init makes their sockets in its
    network namespace and hands them to the broker; None: it has neither."""

    host_uid: int
    host_gid: int
    """The host ids the sandbox's 65534 maps to: the broker's own without root; with root,
    the id claimed for this sandbox when it is spawned (:func:`claim_host_ids`)."""

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced took them
        self,
        argv: tuple[str, ...],
        env: Mapping[str, str],
        cwd: str,
        view: ViewPlan,
        landlock_rules: tuple[Rule, ...],
        landlock_abi: int,
        rlimits: Mapping[int, int],
        seccomp_bpf: bytes,
        user_namespace: bool,
        dangerous_calls: tuple[int, ...],
        syscall_default: str = "eperm",
        learn: bool = False,
        transparent_calls: tuple[int, ...] = (),
        cwd_inherited: bool = False,
        kernel_served: tuple[int, ...] = (),
        in_process_call: bool = False,
        listen: tuple[str, ...] = (),
        budget: Budget | None = None,
        cgroups: str = "required",
        cgroup_join: tuple[str, ...] = (),
        terminal: int | None = None,
        egress: EgressPlan | None = None,
        host_uid: int | None = None,
        host_gid: int | None = None,
    ) -> None:
        if budget is None:
            budget = _default_budget()
        if host_uid is None:
            host_uid = os.getuid()
        if host_gid is None:
            host_gid = os.getgid()
        self._assign(locals())

    @property
    def channel_fd(self) -> int:
        return LISTEN_FDS_START + len(self.listen)


def own_paths(policy: Policy) -> list[tuple[str, str, str]]:
    """The files privsep opens by name for ``policy`` (its secrets' and injected headers' source
    files) and its plan cache: what no write grant may reach (``plan/ownpaths.py``)."""
    keep = "keep that file outside every write grant"
    found = [
        (source.ref, f"the secret {name}'s file", keep)
        for name, source in policy.secrets.items()
        if source.kind == "file"
    ]
    found += [
        (inject.source[len("file:") :], f"the file of the header injected for {inject.host}", keep)
        for inject in policy.network.inject
        if inject.source.startswith("file:")
    ]
    return found + own_cache()


def own_cache() -> list[tuple[str, str, str]]:
    """privsep's plan cache, as :func:`own_paths` lists it (none when the cache is off): a run
    from a kept plan checks it too, for the cache it reads may not be the one planned with."""
    from privsep.plan import cache  # noqa: PLC0415 - it imports this module

    where = cache.directory()
    if where is None:
        return []
    move = "set PRIVSEP_CACHE_DIR to a directory outside the grant (or PRIVSEP_NO_CACHE=1)"
    return [(where, "privsep's plan cache", move)]


def make_plan(
    policy: Policy, argv: Sequence[str], *, environ: Mapping[str, str] | None = None, learn: bool = False
) -> SpawnPlan:
    """Turn a policy and a command into a plan; raises PolicyError or ConfinementError early.

    A host read that fails in a way planning does not expect (``realpath`` met a path that
    stopped being a symlink between its lstat and its readlink: a directory swapped in a loop,
    fresh-eyes audit 18) is a PolicyError naming the path, not a traceback."""
    try:
        return _make_plan(policy, argv, environ=environ, learn=learn)
    except OSError as exc:
        raise PolicyError(
            f"planning the sandbox failed reading {exc.filename or 'a path'}: {exc.strerror or exc}; "
            "if something was changing it at that moment, start again"
        ) from None


def _make_plan(
    policy: Policy, argv: Sequence[str], *, environ: Mapping[str, str] | None, learn: bool
) -> SpawnPlan:
    if not argv:
        raise ConfinementError("command", "no command given")
    env = {"PATH": _DEFAULT_PATH, "HOME": "/tmp" if policy.view.tmp else "/"}
    for name in policy.env.pass_through:
        value = host.getenv(name) if environ is None else environ.get(name)
        if value is not None:
            env[name] = value
    egress = plan_egress(policy)  # egress (issue 17): resolver and proxies
    env.update(proxy_env(egress))
    env.update(policy.env.set)
    env["PRIVSEP_FD"] = str(CHANNEL_FD)
    written = [(r.path, [a.value for a in r.access]) for r in policy.files if not r.deny]
    importpath.check_grants(written)
    ownpaths.check_writes(written, own_paths(policy))
    grants = plan_grants(policy, root_broker=os.geteuid() == 0, sandbox_id=SANDBOX_ID)
    plan = egress_view(grants.view, egress)
    binds = [(b.path, b.is_dir, b.access) for b in plan.binds]
    # generated, read-only like a [view] read
    binds += [(path, False, ()) for path, _ in (*plan.files, *plan.overlays)]
    spec = filter_spec(policy, broker_served=bool(grants.broker_served), learn=learn)
    bpf = syscall_filter.compile_filter(spec)
    compiler = syscall_filter.compiler_files()
    if not compiler:
        host.incomplete()
    for path in compiler:
        host.file_identity(path)
    return SpawnPlan(
        argv=command_argv(argv),
        env=env,
        cwd=policy.env.cwd or _inherited_cwd(plan),
        cwd_inherited=policy.env.cwd is None,
        view=plan,
        landlock_rules=rules_for(binds, list(DEVICES), policy.view.tmp),
        landlock_abi=host.observe("landlock-abi"),
        rlimits=limits.rlimits(policy.limits),
        seccomp_bpf=bpf,
        user_namespace=os.geteuid() != 0,
        dangerous_calls=tuple(sorted(syscall_filter.dangerous_numbers())),
        syscall_default=policy.syscalls.default,
        learn=learn,
        transparent_calls=tuple(sorted(syscall_filter.transparent_numbers(spec))),
        kernel_served=grants.kernel_served,
        budget=Budget.of(policy.limits),
        cgroups=policy.limits.cgroups,
        egress=egress,
    )


def command_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """The argv a plan runs for ``argv``, the only part of a plan the command decides.

    A relative command path means "relative to where the user is", as it would
    without privsep; the child's cwd is somewhere else.
    """
    command = argv[0]
    if "/" in command:
        command = os.path.abspath(command)
    return (command, *argv[1:])


#: What runs under the seccomp filter before the command's own code (confine/inside.py: the
#: listener's report to the broker, the close of spare fds, execve) and what ends it: a policy
#: that allows less would have every start wait on the broker for a listener it cannot send
#: (fresh-eyes audit 18: a policy without [syscalls] hung until --timeout).
_START_NEEDS = ("sendmsg", "close", "execve", "exit_group")


def filter_spec(policy: Policy, *, broker_served: bool, learn: bool = False) -> FilterSpec:
    """The seccomp filter a sandbox of ``policy`` loads; ``privsep policy check`` compiles the same.

    ``broker_served``: some ``[[files]]`` grant is served by the broker (the
    kernel cannot), so the child's opens must reach it.
    """
    allow = syscall_groups.expand(policy.syscalls.allow)
    missing = [name for name in _START_NEEDS if name not in allow]
    if missing:
        raise PolicyError(
            f"the policy's [syscalls] allow lacks {', '.join(missing)}, which the sandbox needs to "
            "start: privsep's own last steps before the command (handing the broker the filter's "
            "listener, then execve) and the command's exit run under the filter, and without them "
            'the start would hang or fail; extend a shipped policy (extends = "minimal") or add '
            '"@system-service" (or at least "@default", "@basic-io" and "sendmsg") to [syscalls] allow'
        )
    return syscall_filter.FilterSpec(
        allow=allow,
        default_action=policy.syscalls.default,
        notify_denials=True,
        # Only grants the broker serves need the child's opens: the kernel serves the rest.
        # Learning needs them all: an open outside the view is what it learns from.
        transparent_files=policy.transparent.files and (broker_served or learn),
        transparent_net=policy.transparent_net,
        learn_lookups=learn,
        # Every bind goes to the broker, rule or none: a server with no grant is then told which
        # --allow-bind would work (its inet sockets live in the sandbox's empty namespace).
        transparent_bind=policy.transparent.net,
    )


def in_cgroup(plan: SpawnPlan, cgroup: SandboxCgroup | None) -> SpawnPlan:
    """``plan`` for one sandbox: in ``cgroup``, or, without one, held by RLIMIT_NPROC instead.

    With the pids cgroup the sandbox's process count is its own, so
    RLIMIT_NPROC is not lowered (:func:`~privsep.plan.limits.rlimits` sets it as high as the
    hard limit lets): the kernel counts that one per uid, across every
    sandbox of a root broker (all uid 65534), and a low value would let one
    sandbox at its limit stop its siblings' forks. Without a cgroup it is
    the only bound on a fork bomb, shared or not.
    """
    if cgroup is not None:
        return replace(plan, cgroup_join=cgroup.join)
    values = {**plan.rlimits, resource.RLIMIT_NPROC: plan.budget.processes}
    return replace(plan, cgroup_join=(), rlimits=values)


def _inherited_cwd(plan: ViewPlan) -> str:
    """Where the user is, when the child can see it there (relative paths then mean what they
    meant outside); otherwise "/"."""
    try:
        here = os.getcwd()
    except OSError:
        return "/"
    for b in plan.binds:
        if b.is_dir and (here == b.path or here.startswith(b.path.rstrip("/") + "/")):
            return here
    # A directory leading to a grant exists in the view too (as an empty one), as under bwrap.
    return here if here in plan.dirs else "/"


def with_listen(plan: SpawnPlan, names: Sequence[str]) -> SpawnPlan:
    """``plan`` with socket activation: ``len(names)`` listening sockets at fds 3.., named ``names``.

    The sockets themselves are given to :func:`privsep.confine.spawn.spawn`. The command gets
    ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` (its own pid, set
    right before execve) as systemd sets them, and ``PRIVSEP_FD`` names the
    channel, now the fd after the last socket.
    """
    for name in names:
        if not name or len(name) > 255 or ":" in name or not (name.isascii() and name.isprintable()):
            raise ConfinementError(
                "listen", f"{name!r} is not a valid fd name (1-255 printable ASCII, no ':')"
            )
    listen = tuple(names)
    env = {**plan.env, "PRIVSEP_FD": str(LISTEN_FDS_START + len(listen))}
    return replace(plan, listen=listen, env=env)


class Spawned:
    """The broker's handles on a started sandbox."""

    __slots__ = ("channel", "control", "host_ids", "lifeline", "ours", "pid", "pidfd")

    pid: int
    """The sandbox's first process, whose exit ends it: init itself, cloned by the broker
    (reaped with waitpid) or started by a zygote (or the forkserver), which reaps it; or
    a monitor, the broker's direct child, that reaps init. Init sends no "init" report
    unless a monitor started it: otherwise the broker holds its pidfd already."""
    pidfd: int
    channel: _socket.socket
    control: _socket.socket
    host_ids: Claim | None
    """A root broker's claim on the sandbox's host id: release it once the sandbox has ended."""
    ours: bool
    """``pid`` is the broker's own child, which it must reap; False when a helper (a zygote,
    the forkserver) started it: the broker then never calls waitpid on that pid, which
    could by then name another child of the host application's."""
    lifeline: int | None
    """Init cloned by the broker itself: the write end of the pipe that tells init its
    parent lives (``confine.inside.start_init``). Held until init is reaped, then closed."""

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced took them
        self,
        pid: int,
        pidfd: int,
        channel: _socket.socket,
        control: _socket.socket,
        host_ids: Claim | None = None,
        ours: bool = True,
        lifeline: int | None = None,
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.channel = channel
        self.control = control
        self.host_ids = host_ids
        self.ours = ours
        self.lifeline = lifeline

    def release_host_ids(self) -> None:
        if self.host_ids is not None:
            self.host_ids.release()

    def close_lifeline(self) -> None:
        """Once init is reaped: its pipe has nothing more to tell."""
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None


def claim_host_ids(plan: SpawnPlan) -> tuple[SpawnPlan, Claim | None]:
    """A root broker's plan gets a host id of its own (the claim is the caller's to release);
    a non-root broker's is returned as it is."""
    if plan.user_namespace:
        return plan, None
    held = claim()
    return replace(plan, host_uid=held.id, host_gid=held.id), held
