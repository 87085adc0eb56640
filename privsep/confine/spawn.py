"""Start one confined child: the only way the broker reaches ``confine``.

Three processes per sandbox, each with one job::

    broker
     └── monitor   forked copy; setsid, closes every fd, unshares the namespaces (and, without
         │         root, a user namespace mapping 65534 to the broker's uid); outside the new
         │         pid namespace, invisible to the child; waits for init
         └── init  pid 1 of the new pid namespace: builds the filesystem view, mounts /proc,
             │     enters the sandbox's cwd; as root, then becomes the sandbox's own host id
             │     in a user namespace of its own (65534 inside); drops every privilege and
             │     only reaps; when it exits the kernel kills every process left in the
             │     namespace (daemonised ones included)
             └── command  drops identity, Landlock, rlimits, seccomp (loaded last), execve

Before the fork the broker makes the sandbox's cgroup (``privsep.cgroups``);
the monitor's first act is to join it, so init, the command and everything
they start are born inside it and counted against its limits.

The command is not pid 1 because pid 1 ignores every signal it has no handler
for, which breaks programs that signal themselves. No user code runs in a
forked copy of the broker: the command execs a fresh program, and monitor and
init run only this module.

With a terminal (``SpawnPlan.terminal``: privsep's stdio was a terminal, and
the broker gave the sandbox a pty of its own, see broker/terminal.py), init
starts a session and makes the pty its controlling terminal, and the command
leads the pty's foreground process group, as a job under a shell: the pty's
^C, ^Z and ^\\ signal the command's group. Both happen before seccomp, which
refuses ``TIOCSCTTY`` to the command. Init then also reports the command's
stops, and sends SIGCONT to its group when the broker continues it.

Init and (until its execve) the command report to the broker over a
private SEQPACKET "control" socket: the pidfds of init and command, the
seccomp listener fd, the first error of any step, the command's stops (with
a terminal) and init's final wait status. The command's copy is
close-on-exec, so the program never holds it.
Death propagates downwards: broker → monitor → init by the parent-death
signal, init → everything in the namespace by the kernel.

A root broker claims the sandbox's host id (:mod:`hostids`) before the fork
and holds it in :class:`Spawned` until the sandbox has ended.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import termios
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NoReturn

import prctl

from privsep import _linux, channel
from privsep.cgroups import Budget, SandboxCgroup
from privsep.confine import hostids, identity, landlock, limits, seccomp, view
from privsep.errors import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_PRIVSEP,
    ConfinementError,
    PrivsepError,
    RemoteProtocolError,
)
from privsep.policy.model import Limits, Policy
from privsep.policy.syscalls import expand

#: The fd number of the channel in the child (and the value of PRIVSEP_FD) without
#: socket activation; with it, the listening sockets take 3.. and the channel follows them.
CHANNEL_FD = 3
LISTEN_FDS_START = 3  # systemd's SD_LISTEN_FDS_START
_LISTEN_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
# The sandbox processes' control socket: the fd after the channel, set by _arrange_fds.
_control_fd = CHANNEL_FD + 1
_NAMESPACES = (
    _linux.CLONE_NEWNS
    | _linux.CLONE_NEWPID
    | _linux.CLONE_NEWNET
    | _linux.CLONE_NEWIPC
    | _linux.CLONE_NEWUTS
    | _linux.CLONE_NEWCGROUP
)
_MAX_CONTROL_FRAME = 4096
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class SpawnPlan:
    """Everything the child needs, computed in the broker before fork."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    view: view.ViewPlan
    landlock_rules: tuple[landlock.Rule, ...]
    landlock_abi: int
    rlimits: Mapping[int, int]
    seccomp_bpf: bytes
    user_namespace: bool
    syscall_default: str = "eperm"
    """How the broker answers a syscall outside the allowlist: eperm, enosys or kill."""
    learn: bool = False
    """privsep learn: the broker allows and records such syscalls instead."""
    transparent_calls: tuple[int, ...] = ()
    """The syscalls the filter sends to the broker for transparent brokering (transparent.py)."""
    cwd_inherited: bool = False
    """``cwd`` is where the user was, not a policy's choice: "/" if the child cannot enter it."""
    kernel_served: tuple[int, ...] = ()
    """Indices of the policy's [[files]] grants bound into the view: the kernel serves them."""
    in_process_call: bool = False
    """Forkserver only: after confinement, run ``privsep._callee`` in this (preloaded)
    interpreter instead of exec'ing ``argv``: a ``Sandbox.call`` in a few milliseconds."""
    listen: tuple[str, ...] = ()
    """Socket activation: the names (LISTEN_FDNAMES) of the listening sockets the broker
    passes as fds 3.. (see :func:`with_listen`); the channel comes after them."""
    budget: Budget = field(default_factory=lambda: Budget.of(Limits()))
    """What the sandbox's cgroup holds it to (the policy's [limits]); the broker makes the cgroup."""
    cgroups: str = "required"
    """The policy's [limits] cgroups: required, optional or off (the broker's decision)."""
    cgroup_join: tuple[str, ...] = ()
    """The files of this sandbox's cgroup (cgroup.procs; tasks on v1) the monitor writes "0" to,
    joining it, before anything else (see :func:`in_cgroup`); empty when it runs without one."""

    terminal: int | None = None
    """The command's fd (0-2) that is the pty the broker made for this sandbox (never the
    user's terminal): init makes it the controlling terminal of the sandbox's session and
    the command leads its foreground process group. None: no terminal, no session change."""

    @property
    def channel_fd(self) -> int:
        return LISTEN_FDS_START + len(self.listen)

    def to_json(self) -> bytes:
        """For the forkserver (a process of ours, not the child): plain JSON, no pickle."""
        body = {
            "argv": list(self.argv),
            "env": dict(self.env),
            "cwd": self.cwd,
            "view": {
                "dirs": list(self.view.dirs),
                "symlinks": [list(s) for s in self.view.symlinks],
                "binds": [
                    [b.path, b.is_dir, list(b.access), b.writable, None if b.idmap is None else list(b.idmap)]
                    for b in self.view.binds
                ],
                "tmp_size_mb": self.view.tmp_size_mb,
                "pins": list(self.view.pins),
                "masks": [[m.path, m.is_dir] for m in self.view.masks],
                "files": [list(f) for f in self.view.files],
                "frozen": list(self.view.frozen),
            },
            "kernel_served": list(self.kernel_served),
            "cwd_inherited": self.cwd_inherited,
            "landlock_rules": [[r.path, r.access] for r in self.landlock_rules],
            "landlock_abi": self.landlock_abi,
            "rlimits": {str(k): v for k, v in self.rlimits.items()},
            "seccomp_bpf": base64.b64encode(self.seccomp_bpf).decode(),
            "user_namespace": self.user_namespace,
            "host_uid": self.host_uid,
            "host_gid": self.host_gid,
            "syscall_default": self.syscall_default,
            "learn": self.learn,
            "transparent_calls": list(self.transparent_calls),
            "in_process_call": self.in_process_call,
            "listen": list(self.listen),
            "terminal": self.terminal,
            "budget": [self.budget.memory_mb, self.budget.processes, self.budget.cpu_percent],
            "cgroups": self.cgroups,
            "cgroup_join": list(self.cgroup_join),
        }
        return json.dumps(body).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SpawnPlan:
        body = json.loads(data)
        v = body["view"]
        return cls(
            argv=tuple(body["argv"]),
            env=dict(body["env"]),
            cwd=body["cwd"],
            view=view.ViewPlan(
                dirs=tuple(v["dirs"]),
                symlinks=tuple((a, b) for a, b in v["symlinks"]),
                binds=tuple(
                    view.Bind(p, d, tuple(a), w, None if m is None else (m[0], m[1]))
                    for p, d, a, w, m in v["binds"]
                ),
                tmp_size_mb=v["tmp_size_mb"],
                pins=tuple(v["pins"]),
                masks=tuple(view.Mask(p, d) for p, d in v["masks"]),
                files=tuple((p, t) for p, t in v["files"]),
                frozen=tuple(v["frozen"]),
            ),
            kernel_served=tuple(body["kernel_served"]),
            cwd_inherited=body["cwd_inherited"],
            landlock_rules=tuple(landlock.Rule(p, a) for p, a in body["landlock_rules"]),
            landlock_abi=body["landlock_abi"],
            rlimits={int(k): v for k, v in body["rlimits"].items()},
            seccomp_bpf=base64.b64decode(body["seccomp_bpf"]),
            user_namespace=body["user_namespace"],
            host_uid=body["host_uid"],
            host_gid=body["host_gid"],
            syscall_default=body["syscall_default"],
            learn=body["learn"],
            transparent_calls=tuple(body["transparent_calls"]),
            in_process_call=body["in_process_call"],
            listen=tuple(body.get("listen", ())),
            terminal=body.get("terminal"),
            budget=Budget(*body["budget"]),
            cgroups=body["cgroups"],
            cgroup_join=tuple(body["cgroup_join"]),
        )

    host_uid: int = field(default_factory=os.getuid)
    host_gid: int = field(default_factory=os.getgid)
    """The host ids the sandbox's 65534 maps to: the broker's own without root; with root,
    the id claimed for this sandbox when it is spawned (:func:`claim_host_ids`)."""


def make_plan(
    policy: Policy, argv: Sequence[str], *, environ: Mapping[str, str] | None = None, learn: bool = False
) -> SpawnPlan:
    """Turn a policy and a command into a plan; raises PolicyError or ConfinementError early."""
    if not argv:
        raise ConfinementError("command", "no command given")
    environ = os.environ if environ is None else environ
    env = {"PATH": _DEFAULT_PATH, "HOME": "/tmp" if policy.view.tmp else "/"}
    env.update({k: environ[k] for k in policy.env.pass_through if k in environ})
    env.update(policy.env.set)
    env["PRIVSEP_FD"] = str(CHANNEL_FD)
    # A relative command path means "relative to where the user is", as it
    # would without privsep; the child's cwd is somewhere else.
    command = argv[0]
    if "/" in command:
        command = os.path.abspath(command)
    grants = view.plan_grants(policy, root_broker=os.geteuid() == 0, sandbox_id=identity.SANDBOX_ID)
    plan = grants.view
    binds = [(b.path, b.is_dir, b.access) for b in plan.binds]
    binds += [(path, False, ()) for path, _ in plan.files]  # generated, read-only like a [view] read
    spec = seccomp.FilterSpec(
        allow=expand(policy.syscalls.allow),
        default_action=policy.syscalls.default,
        notify_denials=True,
        # Only grants the broker serves need the child's opens: the kernel serves the rest.
        # Learning needs them all: an open outside the view is what it learns from.
        transparent_files=policy.transparent.files and (bool(grants.broker_served) or learn),
        transparent_net=policy.transparent_net,
        learn_lookups=learn,
        transparent_bind=policy.transparent_bind,
    )
    bpf = seccomp.compile_filter(spec)
    return SpawnPlan(
        argv=(command, *argv[1:]),
        env=env,
        cwd=policy.env.cwd or _inherited_cwd(plan),
        cwd_inherited=policy.env.cwd is None,
        view=plan,
        landlock_rules=landlock.rules_for(binds, list(view.DEVICES), policy.view.tmp),
        landlock_abi=_linux.landlock_abi_version(),
        rlimits=limits.rlimits(policy.limits),
        seccomp_bpf=bpf,
        user_namespace=os.geteuid() != 0,
        syscall_default=policy.syscalls.default,
        learn=learn,
        transparent_calls=tuple(sorted(seccomp.transparent_numbers(spec))),
        kernel_served=grants.kernel_served,
        budget=Budget.of(policy.limits),
        cgroups=policy.limits.cgroups,
    )


def in_cgroup(plan: SpawnPlan, cgroup: SandboxCgroup | None) -> SpawnPlan:
    """``plan`` for one sandbox: in ``cgroup``, or, without one, held by RLIMIT_NPROC instead.

    With the pids cgroup the sandbox's process count is its own, so
    RLIMIT_NPROC is not lowered (``limits.rlimits`` sets it as high as the
    hard limit lets): the kernel counts that one per uid, across every
    sandbox of a root broker (all uid 65534), and a low value would let one
    sandbox at its limit stop its siblings' forks. Without a cgroup it is
    the only bound on a fork bomb, shared or not.
    """
    if cgroup is not None:
        return replace(plan, cgroup_join=cgroup.join)
    rlimits = {**plan.rlimits, resource.RLIMIT_NPROC: plan.budget.processes}
    return replace(plan, cgroup_join=(), rlimits=rlimits)


def _inherited_cwd(plan: view.ViewPlan) -> str:
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

    The sockets themselves are given to :func:`spawn`. The command gets
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


@dataclass
class Spawned:
    """The broker's handles on a started sandbox."""

    pid: int
    """The monitor: the broker's direct child, reaped with waitpid."""
    pidfd: int
    channel: socket.socket
    control: socket.socket
    host_ids: hostids.Claim | None = None
    """A root broker's claim on the sandbox's host id: release it once the sandbox has ended."""

    def release_host_ids(self) -> None:
        if self.host_ids is not None:
            self.host_ids.release()


def claim_host_ids(plan: SpawnPlan) -> tuple[SpawnPlan, hostids.Claim | None]:
    """A root broker's plan gets a host id of its own (the claim is the caller's to release);
    a non-root broker's is returned as it is."""
    if plan.user_namespace:
        return plan, None
    held = hostids.claim()
    return replace(plan, host_uid=held.id, host_gid=held.id), held


@dataclass(frozen=True)
class ControlMessage:
    """One report from the sandbox's own processes (never from the user's program)."""

    kind: str
    fd: int | None = None
    step: str = ""
    reason: str = ""
    status: int = 0
    errno: int = 0


_KINDS = {"init", "command", "listener", "error", "exec_error", "exit", "stopped"}


def decode_control(frame: channel.Frame) -> ControlMessage:
    """Parse one control frame; anything unexpected is a RemoteProtocolError (fds closed)."""
    try:
        if len(frame.data) > _MAX_CONTROL_FRAME:
            raise ValueError("frame too large")
        obj = json.loads(frame.data)
        if not isinstance(obj, dict) or obj.get("kind") not in _KINDS:
            raise ValueError("unknown kind")
        kind = obj["kind"]
        wants_fd = kind in ("init", "command", "listener")
        if len(frame.fds) != (1 if wants_fd else 0):
            raise ValueError("wrong number of fds")
        msg = ControlMessage(
            kind=kind,
            fd=frame.fds[0] if wants_fd else None,
            step=str(obj.get("step", ""))[:64],
            reason=str(obj.get("reason", ""))[:1024],
            status=int(obj.get("status", 0)),
            errno=int(obj.get("errno", 0)),
        )
    except (ValueError, TypeError, OverflowError) as exc:
        channel.close_fds(frame.fds)
        raise RemoteProtocolError(f"bad control message from the sandbox: {exc}") from None
    return msg


def spawn(plan: SpawnPlan, *, stdio: Sequence[int] = (0, 1, 2), listen_fds: Sequence[int] = ()) -> Spawned:
    """Fork the sandbox for ``plan``; the command's stdin/stdout/stderr are ``stdio``.

    ``listen_fds``: the listening sockets of :func:`with_listen`, one per name
    in ``plan.listen``; the command gets them at fds 3.. (the caller keeps its own).
    """
    if len(listen_fds) != len(plan.listen):
        raise ConfinementError("listen", f"{len(plan.listen)} listen names but {len(listen_fds)} sockets")
    plan, held = claim_host_ids(plan)
    try:
        broker_chan, child_chan = channel.socketpair()
        broker_ctl, child_ctl = channel.socketpair()
        broker_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked monitor, measured by the integration tests
            monitor_main(plan, (*stdio, *listen_fds, child_chan.fileno(), child_ctl.fileno()), broker_pid)
        child_chan.close()
        child_ctl.close()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
    except BaseException:
        if held is not None:
            held.release()
        raise
    return Spawned(pid=pid, pidfd=pidfd, channel=broker_chan, control=broker_ctl, host_ids=held)


# ---------------------------------------------------------------------------
# Everything below runs in the sandbox's processes, never in the broker.


def monitor_main(plan: SpawnPlan, sources: Sequence[int], parent_pid: int) -> NoReturn:
    """The forked monitor's whole life: ``sources`` are stdin, stdout, stderr, the listening
    sockets of ``plan.listen`` (if any), channel, control.

    ``parent_pid`` is the process that forked it (the broker, or the
    forkserver): the monitor dies with it.
    """
    status = EXIT_PRIVSEP
    try:
        _monitor(plan, sources, parent_pid)
        status = 0
    finally:
        os._exit(status)


def _report(kind: str, fds: Sequence[int] = (), **fields: object) -> None:
    sock = socket.socket(fileno=_control_fd)
    try:
        channel.send(sock, json.dumps({"kind": kind, **fields}).encode(), fds)
    except (OSError, PrivsepError):
        pass  # the broker is gone; the parent-death signal finishes us
    finally:
        sock.detach()


def _fail(exc: BaseException) -> int:
    if isinstance(exc, ConfinementError):
        _report("error", step=exc.step, reason=exc.reason, status=EXIT_PRIVSEP)
    else:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:900]
        _report("error", step="internal", reason=detail, status=EXIT_PRIVSEP)
    return EXIT_PRIVSEP


def _reset_process_state() -> None:
    """Undo what a forked copy of the broker inherited from Python."""
    gc.disable()  # a collection could close fds whose numbers we are about to reuse
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _arrange_fds(sources: Sequence[int]) -> None:
    """stdio to 0-2, listening sockets to 3.., then the channel (all inherited by the
    command), then control (close-on-exec); close the rest."""
    global _control_fd
    _control_fd = len(sources) - 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in sources]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=target != _control_fd)
    _linux.close_range(_control_fd + 1)


def _join_cgroup(paths: Sequence[str]) -> ConfinementError | None:
    """Move this process into the sandbox's cgroup: init and the command, forked later, are born there."""
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as exc:
            return ConfinementError("cgroups", f"joining the sandbox's cgroup ({path}): {exc.strerror}")
    return None


def _monitor(plan: SpawnPlan, sources: Sequence[int], broker_pid: int) -> None:
    # First of all: nothing of the sandbox may exist outside its cgroup. Reported once the
    # control socket is in place; nothing is forked if it failed.
    joined = _join_cgroup(plan.cgroup_join)
    _reset_process_state()
    prctl.set_name("privsep-monitor")
    try:
        os.setsid()
        _arrange_fds(sources)
        if joined is not None:
            raise joined
        prctl.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != broker_pid:
            raise ConfinementError("monitor", "the broker exited during set-up")
        try:
            _linux.unshare(_NAMESPACES | (_linux.CLONE_NEWUSER if plan.user_namespace else 0))
        except OSError as exc:
            raise ConfinementError("namespaces", f"unshare: {exc.strerror}") from None
        if plan.user_namespace:
            identity.map_ids(plan.host_uid, plan.host_gid)
        prctl.set_pdeathsig(signal.SIGKILL)  # cleared by the credential change of unshare
        if os.getppid() != broker_pid:
            raise ConfinementError("monitor", "the broker exited during set-up")
        lifeline_r, lifeline_w = os.pipe2(os.O_CLOEXEC)
        init_pid = os.fork()
        if init_pid == 0:
            os.close(lifeline_w)
            os._exit(_init(plan, lifeline_r))
        os.close(lifeline_r)
        os.closerange(0, _control_fd + 1)  # the monitor keeps only lifeline_w: its death closes it
    except BaseException as exc:
        os._exit(_fail(exc))
    prctl.set_dumpable(0)
    while True:
        try:
            os.waitpid(init_pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _parent_alive(lifeline: int) -> bool:
    """Init cannot see its parent (it is outside the pid namespace): the pipe tells."""
    ready, _, _ = select.select([lifeline], [], [], 0)
    return not ready  # readable means EOF: the monitor's end closed because it died


def _init(plan: SpawnPlan, lifeline: int) -> int:
    prctl.set_name("privsep-init")
    try:
        prctl.set_pdeathsig(signal.SIGKILL)
        if not _parent_alive(lifeline):
            return EXIT_PRIVSEP
        # Report ourselves (pid 1 of our namespace) before the command exists: on
        # the one control socket this orders "init" before anything the command
        # sends, so the broker can always kill through init once a command runs.
        own = os.pidfd_open(1)
        _report("init", [own])
        os.close(own)
        view.build_view(plan.view, host_id=plan.host_uid)
        try:
            socket.sethostname("privsep")
        except OSError as exc:
            raise ConfinementError("namespaces", f"sethostname: {exc.strerror}") from None
        if plan.terminal is not None:
            _take_terminal(plan.terminal)
        # Here, before any change of identity: the command inherits it, and a cwd only the
        # host's root could enter (the broker's, a 0700 directory) is entered as before.
        _enter_cwd(plan)
        if not plan.user_namespace:
            identity.enter_user_namespace(plan.host_uid)
            prctl.set_pdeathsig(signal.SIGKILL)  # cleared by the change of credentials
            if not _parent_alive(lifeline):
                return EXIT_PRIVSEP
        command_pid = os.fork()
        if command_pid == 0:
            os.close(lifeline)
            os._exit(_command(plan))
        pidfd = os.pidfd_open(command_pid)
        _report("command", [pidfd])
        os.close(pidfd)
        os.closerange(0, _control_fd)  # stdio, listening sockets, channel: the command's
        identity.drop_identity(parent_pid=0)
        if not _parent_alive(lifeline):
            return EXIT_PRIVSEP
    except BaseException as exc:
        return _fail(exc)
    # Reap everything (orphans are re-parented to us) until the command ends;
    # returning ends the namespace, which kills whatever the command left.
    # With a terminal, also see the command stop and continue (job control).
    flags = 0 if plan.terminal is None else os.WUNTRACED | os.WCONTINUED
    while True:
        try:
            pid, status = os.waitpid(-1, flags)
        except InterruptedError:
            continue
        except ChildProcessError:
            return EXIT_PRIVSEP
        if pid != command_pid:
            continue
        if os.WIFSTOPPED(status):
            # The broker stops privsep in turn (the user's shell takes the terminal back)
            # and, once privsep is continued, continues the command.
            _report("stopped", status=os.WSTOPSIG(status))
        elif os.WIFCONTINUED(status):
            # The broker continued the command; the rest of its job (a pipeline in its
            # process group) was stopped with it: continue them too, as a shell's fg does.
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(command_pid), signal.SIGCONT)
        else:
            _report("exit", status=status)
            return 0


def _take_terminal(fd: int) -> None:
    """Init leads a session of its own whose controlling terminal is the sandbox's pty.

    Init, not the command: a session leader's own process group is orphaned (its
    parent is in another session), and the kernel drops ^Z for an orphaned group. The
    command's group, whose parent (init) is in the same session, is a proper job.
    """
    try:
        os.setsid()
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    except OSError as exc:
        raise ConfinementError(
            "terminal", f"making the pty the controlling terminal: {exc.strerror}"
        ) from None


def _lead_terminal(fd: int) -> None:
    """The command leads a process group of its own, the foreground one of the pty.

    SIGTTOU is blocked while it takes the foreground, as a shell's child does it:
    otherwise the kernel would stop a background group for asking.
    """
    try:
        os.setpgid(0, 0)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        try:
            os.tcsetpgrp(fd, os.getpid())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    except OSError as exc:
        raise ConfinementError("terminal", f"taking the pty's foreground: {exc.strerror}") from None


def _enter_cwd(plan: SpawnPlan) -> None:
    try:
        os.chdir(plan.cwd)
    except OSError as exc:
        if plan.cwd_inherited:
            os.chdir("/")
        else:
            raise ConfinementError(
                "cwd",
                f"{plan.cwd} is not a directory in the child's view ({exc.strerror}); change [env] cwd",
            ) from None


def _command(plan: SpawnPlan) -> int:
    prctl.set_name("privsep-cmd")
    try:
        if plan.terminal is not None:
            _lead_terminal(plan.terminal)
        identity.drop_identity(parent_pid=1)
        landlock.apply_landlock(plan.landlock_rules, plan.landlock_abi)
        limits.apply_rlimits(dict(plan.rlimits))
        listener = seccomp.load_filter(plan.seccomp_bpf, listener=True)
        if listener is None:
            raise ConfinementError("seccomp", "the kernel returned no notification listener")
        _report("listener", [listener])
        os.close(listener)
    except BaseException as exc:
        return _fail(exc)
    if plan.in_process_call:
        return _call_in_process(plan)
    env = {k: v for k, v in plan.env.items() if k not in _LISTEN_ENV}
    if plan.listen:
        # LISTEN_PID must be the pid the program sees (this process's, in the sandbox's pid
        # namespace), which execve keeps: so it is set here, not in the broker.
        env.update(LISTEN_FDS=str(len(plan.listen)), LISTEN_PID=str(os.getpid()))
        env["LISTEN_FDNAMES"] = ":".join(plan.listen)
    try:
        os.execvpe(plan.argv[0], list(plan.argv), env)
    except OSError as exc:
        code = EXIT_NOT_FOUND if exc.errno in (errno.ENOENT, errno.ENOTDIR) else EXIT_NOT_EXECUTABLE
        _report("exec_error", errno=exc.errno or 0, status=code)
        return code
    return EXIT_PRIVSEP  # pragma: no cover - execvpe does not return


def _call_in_process(plan: SpawnPlan) -> int:
    """Forkserver children: the confined process becomes the ``Sandbox.call`` child itself.

    Everything execve would have reset is reset by hand: the control socket
    closed, the environment replaced by the plan's (the forkserver's own is
    never the child's), ``sys.path`` given the plan's PYTHONPATH, the garbage
    collector back on.
    """
    os.close(_control_fd)
    os.environ.clear()
    os.environ.update(plan.env)
    # sys.path was computed when the forkserver started: apply the plan's PYTHONPATH as startup would.
    sys.path[:0] = [p for p in plan.env.get("PYTHONPATH", "").split(":") if p]
    gc.enable()
    from privsep import _callee  # noqa: PLC0415 - only forkserver children need it (preloaded there)

    try:
        return _callee.main()
    except BaseException:  # a failure of the call machinery itself (the function's are reported)
        traceback.print_exc()
        return 1
