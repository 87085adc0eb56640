"""Start one confined child: :func:`spawn`, the only way the broker reaches ``confine``.

The broker has computed everything beforehand (:mod:`privsep.plan`: the
plan, the compiled filter, the view to build); from the fork on, this module
and the layers it calls only apply it.

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
a terminal) and init's final wait status (the format: :mod:`privsep.plan.control`).
The command's copy is close-on-exec, so the program never holds it.
Death propagates downwards: broker → monitor → init by the parent-death
signal, init → everything in the namespace by the kernel.

A root broker claims the sandbox's host id (:mod:`privsep.plan.hostids`) before
the fork and holds it in :class:`~privsep.plan.spawnplan.Spawned` until the
sandbox has ended.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import os
import select
import signal
import socket
import sys
import termios
import traceback
from collections.abc import Sequence
from typing import NoReturn

import prctl

from privsep import _linux, channel
from privsep.confine import identity, landlock, limits, netns, seccomp, view
from privsep.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_PRIVSEP, ConfinementError, PrivsepError
from privsep.plan.control import encode_control
from privsep.plan.spawnplan import CHANNEL_FD, Spawned, SpawnPlan, claim_host_ids

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


def spawn(plan: SpawnPlan, *, stdio: Sequence[int] = (0, 1, 2), listen_fds: Sequence[int] = ()) -> Spawned:
    """Fork the sandbox for ``plan``; the command's stdin/stdout/stderr are ``stdio``.

    ``listen_fds``: the listening sockets of :func:`~privsep.plan.spawnplan.with_listen`, one per name
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


def _report(
    kind: str, fds: Sequence[int] = (), *, step: str = "", reason: str = "", status: int = 0, errno: int = 0
) -> None:
    sock = socket.socket(fileno=_control_fd)
    try:
        frame = encode_control(kind, step=step, reason=reason, status=status, errno=errno)
        channel.send(sock, frame, fds)
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
        if plan.egress is not None:  # egress (issue 17): lo up, resolver and proxy sockets to the broker
            netns.serve_egress(plan.egress, _report)
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
