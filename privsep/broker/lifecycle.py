"""A sandbox's life as the broker sees it: made, reporting, killed, ended, released.

The broker starts a sandbox with its cgroup (made before the fork, so every
process is born in it), then learns of it only through the control socket
(init's and the command's pidfds, the seccomp listener, setup and exec errors,
the exit status) and through pidfds (the monitor and init exited). The
sandbox's first process (``Spawned``) is the monitor the broker forked, or,
from a zygote or the forkserver, init itself: its pidfd then serves as both,
and init sends no pidfd of its own. A sandbox has ended when its first
process is reaped (or, not the broker's child, gone) and its init is gone;
its outcome is then fixed once, its fds closed, its host id and cgroup given
back. A cgroup the kernel does not let go of yet (a process still dying) is
retried at the next start and at close.
"""

from __future__ import annotations

import os
import time

from privsep import _signals, cgroups, channel
from privsep.broker import notify
from privsep.broker.child import Child
from privsep.broker.events import Events
from privsep.broker.outcome import Outcome, from_wait_status, memory_limit
from privsep.broker.report import Denial, Recorder
from privsep.confine.spawn import spawn
from privsep.errors import EXIT_NOT_FOUND, EXIT_PRIVSEP, ChannelError, ConfinementError, RemoteProtocolError
from privsep.plan.control import ControlMessage, decode_control
from privsep.plan.spawnplan import Spawned, SpawnPlan, in_cgroup

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Spawner = Callable[..., Spawned]


class Lifecycle:
    """Starts sandboxes and sees them end; ``ended(child)`` is called once, when one has."""

    def __init__(self, events: Events, recorder: Recorder, ended: Callable[[Child], None]) -> None:
        self._events = events
        self._recorder = recorder
        self._ended = ended
        self._leftover: list[cgroups.SandboxCgroup] = []  # ended sandboxes' cgroups not removed yet

    def launch(
        self, plan: SpawnPlan, stdio: Sequence[int], spawner: Spawner | None, listen_fds: tuple[int, ...]
    ) -> tuple[Spawned, cgroups.SandboxCgroup | None, str | None]:
        """Fork the sandbox inside its new cgroup: (its processes, the cgroup, why it has none)."""
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
        return spawned, cgroup, missing

    def watch(self, child: Child) -> None:
        """Start listening to the sandbox's own processes."""
        sp = child.spawned
        sp.control.setblocking(False)
        self._events.watch(sp.control, "control", child)
        self._events.watch(sp.pidfd, "monitor", child)
        if child.cgroup is not None and child.cgroup.oom_fd is not None:
            self._events.watch(child.cgroup.oom_fd, "oom", child)

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

    # -- what the sandbox tells -------------------------------------------

    def on_control(self, child: Child) -> None:
        sock = child.spawned.control
        while True:
            try:
                frame = channel.recv(sock)
            except BlockingIOError:
                return
            except (RemoteProtocolError, ChannelError, OSError) as exc:
                self._events.forget(sock)
                self.kill(
                    child, Outcome("lost", EXIT_PRIVSEP, detail=f"the sandbox's control socket failed: {exc}")
                )
                return
            if frame is None:
                self._events.forget(sock)
                return
            try:
                msg = decode_control(frame)
            except RemoteProtocolError as exc:
                self.kill(child, Outcome("lost", EXIT_PRIVSEP, detail=str(exc)))
                continue
            self._on_message(child, msg)

    def _on_message(self, child: Child, msg: ControlMessage) -> None:
        procs = child.procs
        if msg.kind in ("init", "command", "listener"):
            assert msg.fd is not None
            os.set_blocking(msg.fd, False)
            attr = {"init": "init_pidfd", "command": "command_pidfd", "listener": "listener"}[msg.kind]
            if getattr(procs, attr) is not None:  # each is sent once; a second one is not trusted
                os.close(msg.fd)
                self.kill(child, Outcome("lost", EXIT_PRIVSEP, detail=f"duplicate {msg.kind} report"))
                return
            setattr(procs, attr, msg.fd)
            if msg.kind == "init":
                self._events.watch(msg.fd, "init", child)
                if procs.kill_reason is not None:
                    self.kill(child, procs.kill_reason)  # killed before init was known: make sure
            elif msg.kind == "listener":
                notify.set_sync_wakeup(msg.fd)  # where the kernel has it (privsep doctor says)
                self._events.watch(msg.fd, "listener", child)
            else:
                procs.command_pid = _pid_of(msg.fd)
                held, procs.held_signals = procs.held_signals, {}
                for sig in held:
                    self.send_signal(child, sig)
        elif msg.kind == "egress":  # egress (issue 17): a socket of the sandbox's resolver or proxies
            assert msg.fd is not None
            if child.egress is None:
                os.close(msg.fd)
            elif not child.egress.adopt(msg.step, msg.fd):
                self.kill(child, Outcome("lost", EXIT_PRIVSEP, detail="a bad report of an egress socket"))
        elif msg.kind == "error":
            procs.setup_error = procs.setup_error or msg
        elif msg.kind == "exec_error":
            procs.exec_error = msg
        elif msg.kind == "exit":
            procs.exit_status = msg.status
        elif msg.kind == "stopped" and child.terminal is not None and child.outcome is None:
            # The command stopped (^Z on its pty): privsep stops too, as a job of the
            # user's shell, and continues the command when it is itself continued.
            # Not with a timeout: a stopped privsep enforces nothing, and the command could
            # stop itself to outlive it (second fresh-eyes audit). The command goes on.
            if child.deadline is None:
                child.terminal.suspend()
            self.send_signal(child, _signals.SIGCONT)

    def on_oom(self, child: Child) -> None:
        """cgroup v1: the kernel ran the sandbox out of memory. Its OOM killer ends one process;
        the sandbox ends as a whole (v2's memory.oom.group does the same in the kernel)."""
        cgroup = child.cgroup
        if cgroup is not None and cgroup.oom_pending():
            self.kill(child, memory_limit(cgroup.budget.memory_mb))

    def on_init_exit(self, child: Child) -> None:
        child.procs.init_exited = True
        if child.procs.init_pidfd is not None:
            self._events.forget(child.procs.init_pidfd)
        self._maybe_end(child)

    def on_monitor_exit(self, child: Child) -> None:
        if child.spawned.ours:
            try:
                pid, _ = os.waitpid(child.monitor_pid, os.WNOHANG)
            except ChildProcessError:
                pid = child.monitor_pid
            if pid == 0:
                return
        # else a helper's child: its pidfd being readable says it has exited; its pid is not ours
        procs = child.procs
        procs.monitor_reaped = True
        self._events.forget(child.spawned.pidfd)
        self.on_control(child)  # reports sent before the exit are already queued
        if procs.init_pidfd is not None and not procs.init_exited:
            # The monitor died before reaping init (killed from outside): make
            # sure, and finish when init has gone, namespace and all.
            try:
                _signals.pidfd_send_signal(procs.init_pidfd, _signals.SIGKILL)
            except ProcessLookupError:
                pass
        self._maybe_end(child)

    # -- what the broker does to it -----------------------------------------

    def send_signal(self, child: Child, sig: int) -> None:
        """Deliver ``sig`` to the command (not to privsep's own processes); one that comes before
        the command exists is held until it reports, not dropped (a ^C or SIGTERM during the
        start ended nothing, and the command ran to its end: fresh-eyes audit)."""
        if child.outcome is not None:
            return
        if child.procs.command_pidfd is None:
            child.procs.held_signals[sig] = None
            return
        try:
            _signals.pidfd_send_signal(child.procs.command_pidfd, sig)
        except ProcessLookupError:
            pass

    def kill(self, child: Child, reason: Outcome) -> None:
        """End the whole sandbox now; ``reason`` becomes its outcome (the first reason given wins).

        Through init when it is known: its death empties the pid namespace
        before it counts as exited. Not the monitor as well: the monitor would
        be reaped at once, and the sandbox must not count as ended (nor its
        seccomp listener be closed, which lets a blocked call return) while
        the namespace is still being torn down. Before init has reported, no
        command exists yet, and killing the monitor takes init with it.
        """
        if child.outcome is not None:
            # Ended, and released: its pidfds are closed, and their numbers may be another
            # sandbox's by now (a second ^C after the command ended raised EBADF: audit 13).
            return
        procs = child.procs
        if procs.kill_reason is None:
            procs.kill_reason = reason
        pidfd = procs.init_pidfd if procs.init_pidfd is not None else child.spawned.pidfd
        try:
            _signals.pidfd_send_signal(pidfd, _signals.SIGKILL)
        except ProcessLookupError:
            pass

    # -- the end ------------------------------------------------------------

    def _maybe_end(self, child: Child) -> None:
        """The sandbox has ended when its monitor is reaped and its init (if any) is gone."""
        procs = child.procs
        if procs.monitor_reaped and (procs.init_pidfd is None or procs.init_exited):
            self._note_limits(child)
            child.outcome = outcome_of(child)
            self._ended(child)

    def _note_limits(self, child: Child) -> None:
        """Forks the process limit refused: reported at exit like the policy's denials."""
        refused = 0 if child.cgroup is None else child.cgroup.pids_refused()
        if not refused or child.cgroup is None:
            return
        limit = child.cgroup.budget.processes
        denial = Denial(
            "fork",
            "once" if refused == 1 else f"{refused} times",
            "limits.processes",
            f"the sandbox reached its process limit ([limits] processes = {limit}: processes and threads "
            "together), so fork, clone or a new thread failed with EAGAIN",
            "--processes",
            subject=str(limit * 2),
        )
        self._recorder.denial(child, denial, audited_as="limits.processes")

    def release(self, child: Child) -> None:
        """Every process of the sandbox has gone: close its fds, free its host id and its cgroup."""
        sp = child.spawned
        self._events.forget(sp.control)
        sp.control.close()
        procs = child.procs
        for fd in (sp.pidfd, procs.listener, procs.init_pidfd, procs.command_pidfd):
            if fd is not None:
                self._events.forget(fd)
                os.close(fd)
        procs.listener = procs.init_pidfd = procs.command_pidfd = None
        sp.close_lifeline()
        sp.release_host_ids()
        cgroup = child.cgroup
        if cgroup is not None:
            if cgroup.oom_fd is not None:
                self._events.forget(cgroup.oom_fd)
                os.close(cgroup.oom_fd)
                cgroup.oom_fd = None
            if not cgroup.remove():
                self._leftover.append(cgroup)

    def close(self) -> None:
        """Every sandbox has ended: give the kernel a moment to let go of their cgroups."""
        deadline = time.monotonic() + 2
        while self._leftover and time.monotonic() < deadline:
            self._leftover = cgroups.remove_all(self._leftover)
            if self._leftover:
                time.sleep(0.01)


def outcome_of(child: Child) -> Outcome:
    """How an ended sandbox ended, from what it reported (the first cause that explains it wins)."""
    procs = child.procs
    if procs.kill_reason is not None:
        return procs.kill_reason
    if child.cgroup is not None and child.cgroup.memory_limit_hit():
        return memory_limit(child.cgroup.budget.memory_mb)  # whatever else broke, this is why
    if procs.setup_error is not None:
        err = procs.setup_error
        detail = f"could not confine the child: step '{err.step}': {err.reason}"
        return Outcome("setup_error", EXIT_PRIVSEP, detail=detail)
    if procs.exec_error is not None:
        err = procs.exec_error
        reason = os.strerror(err.errno)
        if err.status == EXIT_NOT_FOUND:
            from privsep.hints import not_found_hint  # noqa: PLC0415 - only a failed exec needs it

            plan = child.plan
            if plan is None:
                detail = f"command not found in the sandbox: {child.argv0} ({reason})"
            else:
                detail = not_found_hint(child.argv0, plan.env.get("PATH", ""), plan.view)
        else:
            detail = f"command cannot be executed in the sandbox: {child.argv0} ({reason})"
        return Outcome("exec_error", err.status, detail=detail)
    if procs.exit_status is None:
        return Outcome(
            "lost", EXIT_PRIVSEP, detail="the sandbox ended without reporting the command's exit status"
        )
    return from_wait_status(procs.exit_status)


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
