"""cgroup v2: the unified hierarchy, the default on current distributions.

A sandbox gets one directory beneath the broker's own cgroup:

- memory: ``memory.max``, ``memory.swap.max`` 0 (when the kernel accounts
  swap), and ``memory.oom.group`` 1, so that an OOM kill takes the whole
  sandbox, as one unit, in the kernel. ``memory.events`` tells it was the
  sandbox's own limit (``oom``) and that it killed (``oom_kill``).
- pids: ``pids.max``; ``pids.events`` counts the forks it refused.
- cpu (only when the policy sets ``cpu_percent``): ``cpu.max``.
- the end: ``cgroup.kill`` (Linux 5.14) kills whatever is left, then rmdir.

Delegation: the broker's own cgroup must offer memory and pids in its
``cgroup.controllers`` (its parent enabled them for it) and be writable by
the broker: root's, or delegated (systemd's ``Delegate=yes``, as rootless
podman gets it with ``systemd-run --user --scope -p Delegate=yes``). v2 lets
a cgroup hand controllers to its children only when it holds no process
itself, so when the controllers are not enabled yet in its
``cgroup.subtree_control``, the broker moves itself into a leaf beneath its
own cgroup (``privsep-PID-START-broker``) and enables them. It does so only
when it is the only process there; otherwise it refuses and says how to give
it a cgroup of its own.
"""

from __future__ import annotations

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
    leaf_name,
    pids_in,
    read,
    sandbox_name,
    write,
)
from privsep.errors import ConfinementError

_NEEDED = ("memory", "pids")
_DELEGATE = (
    "give privsep a cgroup of its own with the controllers delegated: as a service with Delegate=yes, "
    "or `systemd-run --user --scope -p Delegate=yes privsep run ...` (rootless podman does the same); "
    "or run privsep as root"
)


class V2Cgroup(SandboxCgroup):
    version = "v2"

    @property
    def path(self) -> str:
        return self.dirs[0]

    def memory_limit_hit(self) -> bool:
        events = counters(f"{self.path}/memory.events")
        killed = events.get("oom_kill", 0) or events.get("oom_group_kill", 0)
        return events.get("oom", 0) > 0 and killed > 0

    def pids_refused(self) -> int:
        return counters(f"{self.path}/pids.events").get("max", 0)

    def kill(self) -> None:
        try:
            write(f"{self.path}/cgroup.kill", 1)
        except OSError:  # older than 5.14: one by one
            kill_members(f"{self.path}/cgroup.procs", self.name)


class V2Host(Host):
    """The broker's own cgroup in the unified hierarchy (``own``); sandboxes are made beneath it."""

    version = "v2"

    def __init__(self, own: str, controllers: tuple[str, ...], *, fs: Fs = REAL) -> None:
        super().__init__(fs)
        self.own = own
        self.controllers = controllers
        self.swap_accounted = False  # learnt from the first sandbox's files

    @classmethod
    def open(cls, own: str, *, is_root: bool = False, fs: Fs = REAL) -> V2Host:
        """Check ``own`` can hold sandboxes, enabling its controllers for its children (moving
        this process into a leaf first if it must); raises ConfinementError('cgroups').

        ``is_root``: ``own`` is the hierarchy's root, which may hold processes and still
        enable controllers.
        """
        try:
            available = read(f"{own}/cgroup.controllers").split()
            enabled = read(f"{own}/cgroup.subtree_control").split()
        except OSError as exc:
            raise ConfinementError("cgroups", f"reading {exc.filename}: {exc.strerror}") from None
        missing = [c for c in _NEEDED if c not in available]
        if missing:
            raise ConfinementError(
                "cgroups",
                f"the broker's cgroup {own} (cgroup v2) does not have the {' and '.join(missing)} "
                f"controller (its cgroup.controllers: {' '.join(available) or 'none'}); {_DELEGATE}",
            )
        if not os.access(own, os.W_OK | os.X_OK) or not os.access(f"{own}/cgroup.procs", os.W_OK):
            raise ConfinementError(
                "cgroups",
                f"uid {os.geteuid()} cannot make cgroups in {own} (cgroup v2: not delegated to it); "
                + _DELEGATE,
            )
        wanted = tuple(c for c in (*_NEEDED, "cpu") if c in available)
        todo = [c for c in wanted if c not in enabled]
        if todo:
            if not is_root:
                _leave_for_a_leaf(own, fs)
            try:
                write(f"{own}/cgroup.subtree_control", " ".join(f"+{c}" for c in todo))
            except OSError as exc:
                raise ConfinementError(
                    "cgroups", f"enabling {', '.join(todo)} in {own}/cgroup.subtree_control: {exc.strerror}; "
                    f"{_DELEGATE}"
                ) from None  # fmt: skip
        return cls(own, wanted, fs=fs)

    @property
    def parents(self) -> tuple[str, ...]:
        return (self.own,)

    def create(self, budget: Budget) -> V2Cgroup:
        if budget.cpu_percent and "cpu" not in self.controllers:
            raise ConfinementError(
                "cgroups", f"cpu_percent = {budget.cpu_percent} needs the cpu controller, which the broker's "
                f"cgroup {self.own} does not offer; remove cpu_percent (or set it to 0)"
            )  # fmt: skip
        name = sandbox_name()
        path = f"{self.own}/{name}"
        made: tuple[str, ...] = ()
        try:
            self.fs.mkdir(path)
            made = (path,)
            write(f"{path}/memory.max", budget.memory_bytes)
            if os.path.exists(f"{path}/memory.swap.max"):
                write(f"{path}/memory.swap.max", 0)
                self.swap_accounted = True
            write(f"{path}/memory.oom.group", 1)
            write(f"{path}/pids.max", budget.pids_max)
            if budget.cpu_percent:
                write(f"{path}/cpu.max", f"{budget.cpu_quota_us} {PERIOD_US}")
        except OSError as exc:
            V2Cgroup(name, made, budget, self.fs).remove()
            raise ConfinementError(
                "cgroups", f"making the sandbox's cgroup: {exc.filename or path}: {exc.strerror or exc}"
            ) from None
        return V2Cgroup(name, made, budget, self.fs)

    def describe(self) -> str:
        what = {"memory": "memory (memory_mb, no swap, killed as a whole)", "pids": "processes (pids)"}
        limited = ", ".join(what.get(c, "CPU (cpu_percent)") for c in self.controllers)
        return f"v2 beneath {self.own}; limits {limited}; OOM kills reported"


def _leave_for_a_leaf(own: str, fs: Fs) -> None:
    """Move this process out of ``own`` into a leaf of its own, so ``own`` may enable controllers.

    Only when this process is the only one in ``own``: moving someone else's
    processes is not the broker's business (and they would keep the rule from
    holding anyway).
    """
    here = pids_in(f"{own}/cgroup.procs")
    others = [pid for pid in here if pid != os.getpid()]
    if others:
        raise ConfinementError(
            "cgroups",
            f"the broker's cgroup {own} (cgroup v2) holds {len(others)} other process(es), so it cannot "
            "enable controllers for the sandboxes' cgroups (v2 allows controllers only below a cgroup "
            f"without processes); {_DELEGATE}",
        )
    if not here:
        return
    leaf = f"{own}/{leaf_name()}"
    try:
        if not os.path.isdir(leaf):
            fs.mkdir(leaf)
        write(f"{leaf}/cgroup.procs", os.getpid())
    except OSError as exc:
        raise ConfinementError(
            "cgroups", f"moving the broker into {leaf}: {exc.strerror}; {_DELEGATE}"
        ) from None
