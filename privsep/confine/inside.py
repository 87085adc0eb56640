"""The sandbox's own processes, from the clone on: init, then the command.

:func:`start_init` runs in a single-threaded process outside the sandbox (the
monitor :func:`~privsep.confine.spawn.spawn` forks, or the zygote,
:mod:`privsep.confine.zygote`) and clones init straight into a new pid
namespace (and, without root, a new user namespace): pid 1 is the first
process of the sandbox, no fork after an ``unshare`` is needed to make it.
Everything else here runs inside and only applies the plan::

    init      pid 1: joins the sandbox's cgroup before anything else (so the command and
     │        all it starts are born inside), leads a session of its own, closes every fd,
     │        unshares the other namespaces (mount, network, IPC, UTS, cgroup), builds the
     │        filesystem view, mounts /proc, enters the sandbox's cwd; as root, then becomes
     │        the sandbox's own host id in a user namespace of its own (65534 inside); drops
     │        every privilege, forks the command and only reaps; when it exits the kernel
     │        kills every process left in the namespace (daemonised ones included)
     └── command  keeps init's identity (checked), Landlock, rlimits, seccomp (loaded
              last), execve

This module imports nothing of the broker's (no pydantic, no policy): the
zygote runs it in an interpreter of about 14 MB, so that each sandbox copies,
and writes over, as little memory as possible.

Init and (until its execve) the command report to the broker over a private
SEQPACKET "control" socket (the format: :mod:`privsep.plan.control`). The
command's copy is close-on-exec, so the program never holds it. Init cannot
see its parent (it is outside the pid namespace): a "lifeline" pipe, whose
write end only the parent holds, tells it that the parent is gone.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import gc
import os
import select
import struct
import sys

import _prctl  # python-prctl's C module: its Python wrapper costs ~1 ms of every start to import

from privsep import _linux, _signals
from privsep.confine import identity, landlock, limits, netns, seccomp, view
from privsep.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_PRIVSEP, ConfinementError
from privsep.plan.control import encode_control
from privsep.plan.spawnplan import SpawnPlan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

_LISTEN_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
#: ``termios.TIOCSCTTY``, looked up by :func:`start_init` before the clone of a sandbox that has a
#: terminal: termios (a shared library) would cost every other start its import (~0.2 ms), and
#: init, which takes the terminal once its view is built, could no longer import it.
_tiocsctty = 0
#: The sandbox processes' control socket, set by :func:`arrange_fds` (the fd after the channel).
_control_fd = -1
#: The control socket as a socket object, made by :func:`arrange_fds` once its number is final:
#: before any seccomp filter, since CPython's socket constructor calls getsockname, which a
#: policy's filter may hand to the broker as a notification, and the command's report of its
#: listener, the fd the broker answers those with, then waited for itself (fresh-eyes audit 18:
#: a policy without [syscalls] hung every start). Detached, never closed, by its owners.
_control_sock: _socket.socket | None = None
#: Made by init once it runs, not with the clone: the cgroup namespace must be made after
#: init joined the sandbox's cgroup, so that it is the root init sees.
_NAMESPACES = (
    _linux.CLONE_NEWNS
    | _linux.CLONE_NEWNET
    | _linux.CLONE_NEWIPC
    | _linux.CLONE_NEWUTS
    | _linux.CLONE_NEWCGROUP
)


def start_init(
    plan: SpawnPlan, sources: Sequence[int], *, announce: bool = True, reset: bool = False
) -> tuple[int, int]:
    """Clone the sandbox's init from this process: (its pid, the lifeline).

    The caller is single-threaded and has reset its signal state
    (:func:`reset_process_state`): init inherits it as it is. A caller that
    keeps its own (the broker) blocks every signal around the call and passes
    ``reset``: init resets the state it was cloned with before anything else,
    so that no handler of the caller's ever runs in init. ``sources`` are
    stdin, stdout, stderr, the listening sockets of ``plan.listen`` (if any),
    channel, control: init takes them over; the caller closes its own. The
    caller keeps the lifeline (a pipe's write end) open until it has reaped
    init: init checks through it that its parent still lives, whenever the
    parent-death signal could have been missed. ``announce``: init sends the
    broker its own pidfd first (the "init" report); a caller that hands the
    broker init's pidfd itself (the zygote) spares it.
    """
    global _tiocsctty
    if plan.terminal is not None and not _tiocsctty:
        import termios  # noqa: PLC0415 - see _tiocsctty

        _tiocsctty = termios.TIOCSCTTY
    lifeline_r, lifeline_w = os.pipe2(os.O_CLOEXEC)
    clone = _linux.CLONE_NEWPID | (_linux.CLONE_NEWUSER if plan.user_namespace else 0)
    collecting = gc.isenabled()
    gc.disable()  # init is born without: a collection could close fds whose numbers it reuses
    try:
        pid = _linux.fork_into(clone)
    except BaseException as exc:
        os.close(lifeline_r)
        os.close(lifeline_w)
        if isinstance(exc, OSError):
            raise ConfinementError("namespaces", f"clone: {exc.strerror}") from None
        raise
    finally:
        if collecting:
            gc.enable()  # in the caller; init disables it again first thing
    if pid == 0:  # pragma: no cover - runs in the sandbox's init, measured by the integration tests
        gc.disable()
        status = EXIT_PRIVSEP
        try:
            if reset:
                reset_process_state()
            os.close(lifeline_w)
            status = _init(plan, sources, lifeline_r, announce)
        finally:
            os._exit(status)
    os.close(lifeline_r)
    return pid, lifeline_w


def send(sock: _socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """One SEQPACKET frame with ``fds`` (SCM_RIGHTS), as ``channel.send`` sends it, with its
    errors as they come (``report`` ignores an OSError: the broker may be gone)."""
    # The fds as C ints (channel.fds_payload's layout; that module is the broker's and the client's)
    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([data], ancillary, _socket.MSG_NOSIGNAL)


def report(
    kind: str, fds: Sequence[int] = (), *, step: str = "", reason: str = "", status: int = 0, errno: int = 0
) -> None:
    """Tell the broker, over the control socket (best effort: a gone broker is not an error here)."""
    if _control_fd < 0:
        return  # failed before the fds were arranged: the broker sees the control socket close
    made = _control_sock is None or _control_sock.fileno() != _control_fd
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, _control_fd) if made else _control_sock
    assert sock is not None
    try:
        send(sock, encode_control(kind, step=step, reason=reason, status=status, errno=errno), fds)
    except OSError:
        pass  # the broker is gone; the parent-death signal finishes us
    finally:
        if made:
            sock.detach()


def fail(exc: BaseException) -> int:
    """Report why set-up stopped (the first error of any step); the exit status to use."""
    if isinstance(exc, ConfinementError):
        report("error", step=exc.step, reason=exc.reason, status=EXIT_PRIVSEP)
    else:
        report("error", step="internal", reason=_exception_line(exc)[:900], status=EXIT_PRIVSEP)
    return EXIT_PRIVSEP


def _exception_line(exc: BaseException) -> str:
    """``traceback.format_exception_only``'s last line ("module.Type: message"), without importing
    ``traceback`` (linecache, tokenize, textwrap: ~1.5 ms of every run's start) nor, here inside
    the view, importing anything at all once set-up has failed."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ in ("builtins", "__main__")
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    try:
        message = str(exc)
    except Exception:  # what format_exception_only says of an unprintable one
        message = "<exception str() failed>"
    return f"{name}: {message}" if message else name


def broker_pidfd(broker_pid: int) -> int | None:
    """For a helper the broker started (the zygote, the forkserver): a pidfd of the broker's
    process, to leave when it is readable; None if the broker is gone already.

    The process, not a parent-death signal: that follows the thread that opened the
    Sandbox, and a worker thread that ends would take every sandbox with it.
    """
    try:
        broker = os.pidfd_open(broker_pid)
    except ProcessLookupError:
        return None
    if os.getppid() != broker_pid:
        os.close(broker)
        return None
    return broker


def reset_process_state() -> None:
    """Undo what a copy of the broker's (or the zygote's) interpreter inherited.

    Every handler written in Python goes, not only the usual ones: a copy of
    the broker that kept the terminal's SIGWINCH, SIGCONT or SIGTSTP handler
    would run the broker's code on the broker's terminal fds (by then closed,
    or other fds under the same numbers) when the user resized or stopped it.
    """
    gc.disable()  # a collection could close fds whose numbers we are about to reuse
    _signals.set_wakeup_fd(-1)
    for sig in (
        _signals.SIGINT,
        _signals.SIGTERM,
        _signals.SIGHUP,
        _signals.SIGPIPE,
        _signals.SIGXFSZ,
        _signals.SIGCHLD,
    ):
        _signals.signal(sig, _signals.SIG_DFL)
    for sig in _signals.valid_signals():
        if callable(_signals.getsignal(sig)):
            _signals.signal(sig, _signals.SIG_DFL)
    _signals.pthread_sigmask(_signals.SIG_SETMASK, [])


def arrange_fds(sources: Sequence[int], *, keep: int = -1) -> int:
    """stdio to 0-2, listening sockets to 3.., then the channel (all inherited by the
    command), then control (close-on-exec); then ``keep`` (close-on-exec) if given,
    whose new number is returned; close the rest."""
    global _control_fd, _control_sock
    # Until the control socket has its number, a report goes to where it is now: never to
    # whatever this process holds at that number (the zygote's own socket to the broker).
    _control_fd = sources[-1]
    wanted = [*sources, keep] if keep >= 0 else list(sources)
    # Copies above every target, so that no dup2 below overwrites one: no fixed floor
    # (a soft RLIMIT_NOFILE of 64 would make F_DUPFD fail with EINVAL).
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, len(wanted)) for fd in wanted]
    control = len(sources) - 1
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=target < control)
    _control_fd = control
    _linux.close_range(len(wanted))
    if _control_sock is not None:
        _control_sock.detach()  # an earlier arrangement's (a forked copy of a zygote's init)
    _control_sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, control)
    return len(sources) if keep >= 0 else -1


def _join_cgroup(paths: Sequence[str]) -> ConfinementError | None:
    """Move this process into the sandbox's cgroup: the command, forked later, is born there."""
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


def _parent_alive(lifeline: int) -> bool:
    """Init cannot see its parent (it is outside the pid namespace): the pipe tells."""
    ready, _, _ = select.select([lifeline], [], [], 0)
    return not ready  # readable means EOF: the parent's end closed because it died


def _init(plan: SpawnPlan, sources: Sequence[int], lifeline: int, announce: bool) -> int:
    # First of all: nothing of the sandbox may exist outside its cgroup. Reported once the
    # control socket is in place; nothing is forked if it failed.
    joined = _join_cgroup(plan.cgroup_join)
    _prctl.prctl(_prctl.PR_SET_NAME, "privsep-init")
    try:
        os.setsid()
        lifeline = arrange_fds(sources, keep=lifeline)
        if joined is not None:
            raise joined
        _prctl.prctl(_prctl.PR_SET_PDEATHSIG, _signals.SIGKILL)
        if not _parent_alive(lifeline):
            return EXIT_PRIVSEP
        try:
            _linux.unshare(_NAMESPACES)
        except OSError as exc:
            raise ConfinementError("namespaces", f"unshare: {exc.strerror}") from None
        if plan.user_namespace:
            identity.map_ids(plan.host_uid, plan.host_gid)
        if announce:
            # Report ourselves (pid 1 of our namespace) before the command exists: on
            # the one control socket this orders "init" before anything the command
            # sends, so the broker can always kill through init once a command runs.
            own = os.pidfd_open(1)
            report("init", [own])
            os.close(own)
        if plan.egress is not None:  # egress (issue 17): lo up, resolver and proxy sockets to the broker
            netns.serve_egress(plan.egress, report)
        view.build_view(plan.view, host_id=plan.host_uid)
        try:
            _socket.sethostname("privsep")
        except OSError as exc:
            raise ConfinementError("namespaces", f"sethostname: {exc.strerror}") from None
        if plan.terminal is not None:
            _take_terminal(plan.terminal)
        # Here, before any change of identity: the command inherits it, and a cwd only the
        # host's root could enter (the broker's, a 0700 directory) is entered as before.
        _enter_cwd(plan)
        if not plan.user_namespace:
            identity.enter_user_namespace(plan.host_uid)
        # Before the fork, once for both: init needs no privilege from here on, and the
        # command keeps what it inherits (the parent-death signal, cleared by every
        # change of credentials, is armed last).
        identity.drop_identity(parent_pid=0)
        if not _parent_alive(lifeline):
            return EXIT_PRIVSEP
        command_pid = os.fork()
        if command_pid == 0:
            os.close(lifeline)
            os._exit(_command(plan))
        pidfd = os.pidfd_open(command_pid)
        report("command", [pidfd])
        os.close(pidfd)
        os.closerange(0, _control_fd)  # stdio, listening sockets, channel: the command's
    except BaseException as exc:
        return fail(exc)
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
            report("stopped", status=os.WSTOPSIG(status))
        elif os.WIFCONTINUED(status):
            # The broker continued the command; the rest of its job (a pipeline in its
            # process group) was stopped with it: continue them too, as a shell's fg does.
            try:
                os.killpg(os.getpgid(command_pid), _signals.SIGCONT)
            except OSError:
                pass
        else:
            report("exit", status=status)
            return 0


def _take_terminal(fd: int) -> None:
    """Init, the leader of the sandbox's session, makes the sandbox's pty its controlling terminal.

    Init, not the command: a session leader's own process group is orphaned (its
    parent is in another session), and the kernel drops ^Z for an orphaned group. The
    command's group, whose parent (init) is in the same session, is a proper job.
    """
    try:
        fcntl.ioctl(fd, _tiocsctty, 0)
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
        mask = _signals.pthread_sigmask(_signals.SIG_BLOCK, {_signals.SIGTTOU})
        try:
            os.tcsetpgrp(fd, os.getpid())
        finally:
            _signals.pthread_sigmask(_signals.SIG_SETMASK, mask)
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
    _prctl.prctl(_prctl.PR_SET_NAME, "privsep-cmd")
    try:
        if plan.terminal is not None:
            _lead_terminal(plan.terminal)
        identity.keep_identity(parent_pid=1)
        landlock.apply_landlock(plan.landlock_rules, plan.landlock_abi)
        limits.apply_rlimits(dict(plan.rlimits))
        listener = seccomp.load_filter(plan.seccomp_bpf, listener=True)
        if listener is None:
            raise ConfinementError("seccomp", "the kernel returned no notification listener")
        report("listener", [listener])
        os.close(listener)
    except BaseException as exc:
        return fail(exc)
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
        report("exec_error", errno=exc.errno or 0, status=code)
        return code
    return EXIT_PRIVSEP  # pragma: no cover - execvpe does not return


def _call_in_process(plan: SpawnPlan) -> int:
    """Forkserver children: the confined process becomes the ``Sandbox.call`` child itself.

    Everything execve would have reset is reset by hand: the control socket
    closed, the environment replaced by the plan's (the forkserver's own is
    never the child's), ``sys.path`` given the plan's PYTHONPATH, the garbage
    collector back on.
    """
    global _control_sock
    if _control_sock is not None:
        _control_sock.detach()  # the object must not close the number later, once reused
        _control_sock = None
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
        import traceback  # noqa: PLC0415 - preloaded in the forkserver (_callee imports it)

        traceback.print_exc()
        return 1
