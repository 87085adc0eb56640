"""cgroup v1: one hierarchy per controller (memory, pids, cpu), as on hybrid hosts.

A sandbox gets one directory in each hierarchy it needs, beneath the
broker's own cgroup there (``/proc/self/cgroup`` names one per hierarchy).

- memory: ``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes`` at
  the same value when the kernel accounts swap, so that nothing is swapped
  out past the limit; without swap accounting, ``memory.swappiness`` 0 (the
  best v1 offers: the kernel avoids swapping the sandbox out). v1 has no
  ``memory.oom.group``: the kernel's OOM killer ends one process. So the
  broker registers an eventfd on ``memory.oom_control`` (through
  ``cgroup.event_control``) and, when the sandbox's own limit was hit, ends
  the whole sandbox itself. The kill is read back from ``oom_control``'s
  ``oom_kill`` counter and ``memory.failcnt``.
- pids: ``pids.max``; ``pids.events`` counts the forks it refused.
- cpu (only when the policy sets ``cpu_percent``): ``cpu.cfs_period_us`` and
  ``cpu.cfs_quota_us``.

v1 has no delegation of its own: root can make cgroups anywhere, another
user only where root gave it a directory (and moved it there), which is what
systemd's ``Delegate=`` does on v2. Joining takes a write of "0" to the
``tasks`` file of each hierarchy, by the sandbox's init (single-threaded,
being a clone of a single-threaded process), into a cgroup the broker made, so the kernel's owner check passes
for a non-root broker too. ``tasks`` rather than ``cgroup.procs``: moving
the calling thread alone lets the kernel skip its global threadgroup lock,
whose write side waits for an RCU grace period (4-12 ms a spawn on a loaded
2-CPU VM, against ~0.2 ms).
"""

from __future__ import annotations

import errno
import os

from privsep.cgroups._common import (
    PERIOD_US,
    REAL,
    Budget,
    Fs,
    Host,
    SandboxCgroup,
    counters,
    kill_members,
    sandbox_name,
    write,
)
from privsep.errors import ConfinementError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

#: How far below the limit the peak may stay when a charge over it fails (a huge page, and change).
_CHARGE_SLACK = 4 << 20


class V1Cgroup(SandboxCgroup):
    version = "v1"
    # "0" to tasks moves the calling thread: init is single-threaded (a clone), so that is
    # the whole process, and the kernel skips the global threadgroup lock (a wait for an RCU grace
    # period, 4-12 ms on a loaded 2-CPU VM) that cgroup.procs takes.
    join_file = "tasks"

    def __init__(self, name: str, dirs: Mapping[str, str], budget: Budget, fs: Fs) -> None:
        super().__init__(name, tuple(dirs.values()), budget, fs)
        self.by_controller = dict(dirs)

    def memory_limit_hit(self) -> bool:
        memory = self.by_controller["memory"]
        if counters(f"{memory}/memory.oom_control").get("oom_kill", 0) == 0:
            return False
        # The kill was the sandbox's own limit, not a host-wide or a parent's OOM: a charge
        # against this cgroup's own counters failed.
        return _own_limit_failed(memory)

    def pids_refused(self) -> int:
        return counters(f"{self.by_controller['pids']}/pids.events").get("max", 0)

    def kill(self) -> None:
        kill_members(f"{self.by_controller['pids']}/cgroup.procs", self.name)

    def oom_pending(self) -> bool:
        """Read the eventfd: the sandbox ran out of memory, and it was its own limit."""
        assert self.oom_fd is not None
        try:
            os.eventfd_read(self.oom_fd)
        except BlockingIOError:
            return False
        return _own_limit_failed(self.by_controller["memory"])


def _own_limit_failed(memory: str) -> bool:
    """The sandbox's own limit was reached: its peak usage came within a charge of the limit.

    An OOM of a parent cgroup, or of the host, notifies and counts in every
    cgroup below it too, and must not read as the sandbox's limit. v1 has no
    ``memory.events`` to tell them apart, and this kernel leaves
    ``memory.failcnt`` at 0; the peak does tell: the kernel kills only when a
    charge (at most a huge page, 2 MiB, or a batch) cannot fit under the limit.
    """
    limit = _number(f"{memory}/memory.limit_in_bytes")
    peak = max(
        _number(f"{memory}/memory.max_usage_in_bytes"), _number(f"{memory}/memory.memsw.max_usage_in_bytes")
    )
    return limit > 0 and peak > limit - _CHARGE_SLACK


def _number(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return int(f.read())  # ASCII digits (and spaces) only: int() of bytes takes nothing else
    except (OSError, ValueError):
        return 0


class V1Host(Host):
    """The broker's own cgroup in each v1 hierarchy it uses: ``dirs`` maps memory, pids (and
    cpu, when mounted) to those directories."""

    version = "v1"

    def __init__(self, dirs: Mapping[str, str], *, fs: Fs = REAL) -> None:
        super().__init__(fs)
        self.dirs = dict(dirs)
        self.controllers = tuple(c for c in ("memory", "pids", "cpu") if c in self.dirs)
        self.swap_accounted = os.path.exists(f"{self.dirs['memory']}/memory.memsw.limit_in_bytes")

    @classmethod
    def open(cls, dirs: Mapping[str, str], *, fs: Fs = REAL) -> V1Host:
        """Check the broker may make cgroups in each hierarchy; raises ConfinementError('cgroups')."""
        for controller in ("memory", "pids"):
            if controller not in dirs:
                raise ConfinementError(
                    "cgroups", f"no cgroup v1 hierarchy with the {controller} controller is mounted"
                )
        usable = {c: d for c, d in dirs.items() if os.access(d, os.W_OK | os.X_OK)}
        closed = [dirs[c] for c in ("memory", "pids") if c not in usable]
        if closed:
            raise ConfinementError(
                "cgroups",
                f"uid {os.geteuid()} cannot make cgroups in {', '.join(closed)} (cgroup v1, the broker's own "
                "cgroups). v1 has no delegation of its own: have root make a cgroup in each of the memory "
                "and pids (and cpu) hierarchies, chown it (and its cgroup.procs and tasks) to this user "
                "and move privsep into it, as systemd's Delegate= does on v2; or run privsep as root",
            )
        dirs = usable  # cpu only where the broker may use it: a policy's cpu_percent says so at start
        return cls(dirs, fs=fs)

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(self.dirs.values())

    def create(self, budget: Budget) -> V1Cgroup:
        if budget.cpu_percent and "cpu" not in self.dirs:
            raise ConfinementError(
                "cgroups", f"cpu_percent = {budget.cpu_percent} needs the cpu controller, which no cgroup v1 "
                "hierarchy has here; remove cpu_percent (or set it to 0)"
            )  # fmt: skip
        name = sandbox_name()
        wanted = ("memory", "pids", "cpu") if budget.cpu_percent else ("memory", "pids")
        dirs = {c: f"{self.dirs[c]}/{name}" for c in wanted}
        made: dict[str, str] = {}
        oom_fd = None
        try:
            for controller, path in dirs.items():
                self.fs.mkdir(path)
                made[controller] = path
            memory = dirs["memory"]
            write(f"{memory}/memory.limit_in_bytes", budget.memory_bytes)
            if self.swap_accounted:
                write(f"{memory}/memory.memsw.limit_in_bytes", budget.memory_bytes)
            else:
                write(f"{memory}/memory.swappiness", 0)
            write(f"{dirs['pids']}/pids.max", budget.pids_max)
            if budget.cpu_percent:
                write(f"{dirs['cpu']}/cpu.cfs_period_us", PERIOD_US)
                write(f"{dirs['cpu']}/cpu.cfs_quota_us", budget.cpu_quota_us)
            oom_fd = _oom_eventfd(memory)
        except OSError as exc:
            try:
                V1Cgroup(name, made, budget, self.fs).remove()
            except OSError:
                pass
            where = exc.filename or "a new cgroup"
            raise ConfinementError(
                "cgroups", f"making the sandbox's cgroup: {where}: {exc.strerror or exc}"
            ) from None
        cgroup = V1Cgroup(name, made, budget, self.fs)
        cgroup.oom_fd = oom_fd
        return cgroup

    def describe(self) -> str:
        swap = "no swap: memsw" if self.swap_accounted else "no swap accounting here: swappiness 0"
        what = {
            "memory": f"memory (memory_mb, {swap})",
            "pids": "processes (pids)",
            "cpu": "CPU (cpu_percent)",
        }
        limited = ", ".join(what[c] for c in self.controllers)
        return f"v1 beneath {', '.join(self.dirs.values())}; limits {limited}; OOM kills reported"


def _oom_eventfd(memory: str) -> int:
    """An eventfd the kernel signals when the cgroup at ``memory`` runs out of memory."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        control = os.open(f"{memory}/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            write(f"{memory}/cgroup.event_control", f"{efd} {control}")
        finally:
            os.close(control)
    except OSError as exc:
        os.close(efd)
        if exc.errno == errno.EINVAL:  # a kernel without memcg v1 events
            raise OSError(exc.errno, "memory.oom_control events are not supported", exc.filename) from None
        raise
    return efd
