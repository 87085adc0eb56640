"""Start one confined child: the broker's door to ``confine``.

The broker has computed everything beforehand (:mod:`privsep.plan`: the
plan, the compiled filter, the view to build); from the fork on, ``confine``
only applies it.

A sandbox is init (pid 1 of its own pid namespace) and the command init
forks; both are :mod:`privsep.confine.inside`'s. Init is cloned by a small
single-threaded process outside the sandbox, which then reaps it:

- :func:`spawn`, in a broker of one thread (``privsep run``), clones init
  itself, with every signal blocked until init has reset what it was cloned
  with; the broker reaps it and holds its lifeline. In a broker with other
  threads, whose locks a clone would copy held, it forks a **monitor**: it
  leads a session of its own, closes every fd of the broker's, clones init
  and waits for it. Outside the new pid namespace, invisible to the child.
  Neither costs anything up front.
- :class:`Zygote` is a long-lived helper (:mod:`privsep.confine.zygote`)
  that clones each sandbox's init itself: no fork of the broker at all. A
  forked broker copies its page tables (tens of MB with pydantic) into every
  sandbox, and every page either writes afterwards is copied again: more
  than half the CPU time of a start. ``Sandbox`` starts one when it opens.

Before the fork the broker makes the sandbox's cgroup (``privsep.cgroups``);
init's first act is to join it, so the command and everything it starts are
born inside it and counted against its limits.

The command is not pid 1 because pid 1 ignores every signal it has no handler
for, which breaks programs that signal themselves. No user code runs in a
forked copy of the broker: the command execs a fresh program, and monitor,
init and command run only ``confine``.

With a terminal (``SpawnPlan.terminal``: privsep's stdio was a terminal, and
the broker gave the sandbox a pty of its own, see broker/terminal.py), init,
which leads the sandbox's session, makes the pty its controlling terminal,
and the command leads the pty's foreground process group, as a job under a
shell: the pty's ^C, ^Z and ^\\ signal the command's group. Both happen
before seccomp, which refuses ``TIOCSCTTY`` to the command. Init then also
reports the command's stops, and sends SIGCONT to its group when the broker
continues it.

Init and (until its execve) the command report to the broker over a
private SEQPACKET "control" socket: the pidfds of init and command, the
seccomp listener fd, the first error of any step, the command's stops (with
a terminal) and init's final wait status (the format: :mod:`privsep.plan.control`).
Death propagates downwards: broker → (monitor or zygote →) init by the
parent-death signal, init → everything in the namespace by the kernel.

A root broker claims the sandbox's host id (:mod:`privsep.plan.hostids`) before
the fork and holds it in :class:`~privsep.plan.spawnplan.Spawned` until the
sandbox has ended.
"""

from __future__ import annotations

import os
import sys

import _prctl  # python-prctl's C module: its Python wrapper costs ~1 ms of every start to import

from privsep import _jsontext, _linux, _signals, channel
from privsep._lazy import lazy_module
from privsep.confine import inside
from privsep.errors import EXIT_PRIVSEP, ChannelError, ConfinementError
from privsep.plan import wire
from privsep.plan.spawnplan import Spawned, SpawnPlan, claim_host_ids

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    import subprocess
    from collections.abc import Callable, Sequence
    from typing import NoReturn, TypeVar

    T = TypeVar("T")

    from privsep.confine import zygote
else:  # the Zygote's alone: privsep run forks a monitor and never loads them
    subprocess = lazy_module("subprocess", globals())
    zygote = lazy_module("privsep.confine.zygote", globals())


def spawn(plan: SpawnPlan, *, stdio: Sequence[int] = (0, 1, 2), listen_fds: Sequence[int] = ()) -> Spawned:
    """Start the sandbox for ``plan`` from this process; the command's stdin/stdout/stderr are ``stdio``.

    ``listen_fds``: the listening sockets of :func:`~privsep.plan.spawnplan.with_listen`, one per name
    in ``plan.listen``; the command gets them at fds 3.. (the caller keeps its own).

    A single-threaded broker (``privsep run``) clones init itself, as the
    zygote does: no monitor to fork, wait for and reap (about a quarter of a
    run's start), and ``Spawned.pid`` is init's. One with other threads forks
    a monitor, which clones init from a process of one thread.
    """
    if len(listen_fds) != len(plan.listen):
        raise ConfinementError("listen", f"{len(plan.listen)} listen names but {len(listen_fds)} sockets")
    plan, held = claim_host_ids(plan)
    try:
        broker_chan, broker_ctl, (pid, pidfd, lifeline) = _sandbox_sockets(
            (*stdio, *listen_fds), lambda sources: _start_first(plan, sources)
        )
    except BaseException:
        if held is not None:
            held.release()
        raise
    return Spawned(
        pid=pid, pidfd=pidfd, channel=broker_chan, control=broker_ctl, host_ids=held, lifeline=lifeline
    )


def _sandbox_sockets(
    first: Sequence[int], start: Callable[[tuple[int, ...]], T]
) -> tuple[_socket.socket, _socket.socket, T]:
    """One sandbox's channel and control socketpairs: the broker's two ends, and what ``start``
    returned, given the fds the sandbox starts with (``first``, then its ends of both). The
    sandbox's ends are closed once ``start`` returns (the sandbox holds its copies); the
    broker's too if it raised. (A function, not a context manager: contextlib's import costs a
    warm ``privsep run`` what a with-block saves in reading.)"""
    broker_chan, child_chan = channel.socketpair()
    try:
        broker_ctl, child_ctl = channel.socketpair()
    except BaseException:
        broker_chan.close()
        child_chan.close()
        raise
    try:
        started = start((*first, child_chan.fileno(), child_ctl.fileno()))
    except BaseException:
        broker_chan.close()
        broker_ctl.close()
        raise
    finally:
        child_chan.close()
        child_ctl.close()
    return broker_chan, broker_ctl, started


def _start_first(plan: SpawnPlan, sources: Sequence[int]) -> tuple[int, int, int | None]:
    """Start the sandbox's first process: (its pid, a pidfd of it, init's lifeline or None).

    From a broker of one thread, init itself, cloned with every signal blocked
    until init has reset what it inherited
    (:func:`~privsep.confine.inside.reset_process_state`): a handler of the
    broker's (its terminal's SIGWINCH, Python's SIGINT) never runs in init.
    Init announces no pidfd of its own: the broker opens it, as it would the
    monitor's. A handler held back meanwhile runs when the mask is restored,
    last; should it raise (a ^C during the start), init is killed and reaped
    before the exception goes on, not left running with nobody to watch it.
    """
    if _linux.threads() != 1:
        mask = None
        pid, lifeline = _fork_monitor(plan, sources), None
    else:
        mask = _signals.pthread_sigmask(_signals.SIG_BLOCK, _signals.valid_signals())
        try:
            pid, lifeline = inside.start_init(plan, sources, announce=False, reset=True)
        except BaseException:
            _signals.pthread_sigmask(_signals.SIG_SETMASK, mask)
            raise
    pidfd = -1
    try:
        pidfd = os.pidfd_open(pid)
        if mask is not None:
            _signals.pthread_sigmask(_signals.SIG_SETMASK, mask)  # runs what was held back
    except BaseException:
        _end_first(pid, pidfd, lifeline)
        if mask is not None:
            _signals.pthread_sigmask(_signals.SIG_SETMASK, mask)
        raise
    return pid, pidfd, lifeline


def _end_first(pid: int, pidfd: int, lifeline: int | None) -> None:
    """A start that failed after the fork: kill the sandbox's first process, reap it, close its fds."""
    try:
        os.kill(pid, _signals.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    for fd in (pidfd, -1 if lifeline is None else lifeline):
        if fd >= 0:
            os.close(fd)


def _fork_monitor(plan: SpawnPlan, sources: Sequence[int]) -> int:
    broker_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked monitor, measured by the integration tests
        monitor_main(plan, sources, broker_pid)
    return pid


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


def start_sandbox(plan: SpawnPlan, sources: Sequence[int]) -> tuple[int, int | None]:
    """For a helper process that starts many sandboxes (the forkserver): (pid, lifeline).

    Single-threaded, it clones the sandbox's init itself, as the zygote does:
    the pid is init's, and the lifeline (a pipe's write end) must stay open
    until init is reaped. With other threads, whose locks a clone would copy
    held, it forks a monitor as :func:`spawn` does: the monitor's pid, and
    None. The caller has reset its signal state (``inside.reset_process_state``)
    and closes its own copies of ``sources``.
    """
    if _linux.threads() == 1:
        return inside.start_init(plan, sources, announce=False)  # the helper sends init's pidfd
    return _fork_monitor(plan, sources), None


def _monitor(plan: SpawnPlan, sources: Sequence[int], parent_pid: int) -> None:
    inside.reset_process_state()
    _prctl.prctl(_prctl.PR_SET_NAME, "privsep-monitor")
    try:
        os.setsid()  # out of the broker's session: a ^C at its terminal is the broker's business
        inside.arrange_fds(sources)  # and nothing else of the broker's: no grant, no secret, no log
        _prctl.prctl(_prctl.PR_SET_PDEATHSIG, _signals.SIGKILL)
        if os.getppid() != parent_pid:
            raise ConfinementError("monitor", "the broker exited during set-up")
        init_pid, lifeline = inside.start_init(plan, range(len(sources)))
        os.closerange(0, len(sources))  # the monitor keeps only the lifeline: its death closes it
    except BaseException as exc:
        os._exit(inside.fail(exc))
    _prctl.prctl(_prctl.PR_SET_DUMPABLE, 0)
    while True:
        try:
            os.waitpid(init_pid, 0)
            break
        except ChildProcessError:
            break
        except InterruptedError:
            continue
    os.close(lifeline)


class Zygote:
    """The broker's handle on its zygote (:mod:`privsep.confine.zygote`): a ``spawner`` for ``Broker.start``.

    Started before the broker holds anything a sandbox must not inherit, as the
    forkserver is; it waits for the zygote only at the first spawn, so that the
    interpreter's start overlaps the rest of the broker's.
    """

    def __init__(self) -> None:
        ours, theirs = channel.socketpair()
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    *zygote.interpreter_flags(),
                    *("-m", "privsep.confine.zygote", str(theirs.fileno()), str(os.getpid())),
                ],
                pass_fds=[theirs.fileno()],
                env=zygote.environment(),
                stdin=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,  # never in the foreground group of the broker's terminal
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._ready = False
        self._out_of_step = False

    def spawn(self, plan: SpawnPlan, *, stdio: Sequence[int] = (0, 1, 2)) -> Spawned:
        """Start the sandbox for ``plan`` from the zygote; as :func:`spawn` (``Spawned.pid`` is init's)."""
        if not self._ready:
            frame = self._recv()
            if frame is None or frame.data != zygote.READY:
                raise ConfinementError("zygote", "the zygote did not start (see its stderr)")
            self._ready = True
        self._in_step()
        # The broker claims the host id and holds it: it is the one that sees the sandbox end.
        plan, held = claim_host_ids(plan)
        try:
            broker_chan, broker_ctl, (pid, pidfd) = _sandbox_sockets(
                stdio, lambda sources: self._start(plan, sources)
            )
        except BaseException:
            if held is not None and not self._out_of_step:
                # Answered (or never asked): no sandbox runs as the id. Cut before the answer, one
                # may: its claim is kept until the broker ends, so no other sandbox gets the id.
                held.release()
            raise
        return Spawned(
            pid=pid, pidfd=pidfd, channel=broker_chan, control=broker_ctl, host_ids=held, ours=False
        )

    def _start(self, plan: SpawnPlan, fds: Sequence[int]) -> tuple[int, int]:
        """Send the plan and the sandbox's fds; init's pid and pidfd, or the zygote's reason why not."""
        self._in_step()
        try:
            channel.send(self._sock, wire.encode(plan), fds)
        except (ChannelError, OSError) as exc:
            raise ConfinementError("zygote", f"the zygote is gone ({exc})") from None
        self._out_of_step = True
        frame = self._recv()
        self._out_of_step = False
        if frame is None:
            raise ConfinementError("zygote", "the zygote exited")
        answer = _jsontext.loads(frame.data)
        if len(frame.fds) != 1:
            channel.close_fds(frame.fds)
            raise ConfinementError(str(answer.get("step", "zygote")), str(answer.get("reason", "")))
        return int(answer["pid"]), frame.fds[0]

    def _in_step(self) -> None:
        if self._out_of_step:
            # An exchange was cut between request and answer (an exception, ^C): the next
            # answer would be the previous request's, and a sandbox would get another's pid.
            raise ConfinementError(
                "zygote", "an earlier start was interrupted before the zygote answered; open a new Sandbox"
            )

    def _recv(self) -> channel.Frame | None:
        try:
            return channel.recv(self._sock)
        except (ChannelError, OSError) as exc:
            raise ConfinementError("zygote", f"the zygote is gone ({exc})") from None

    def close(self) -> None:
        """End the zygote; its sandboxes die with it (parent-death signal)."""
        self._sock.close()
        self._proc.kill()
        self._proc.wait()
