"""What both cgroup versions share: the budget, the names, file access, and cleaning up."""

from __future__ import annotations

import errno
import itertools
import os
from abc import ABC, abstractmethod

from privsep import _signals
from privsep._record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from privsep.policy.model import Limits  # the model is pydantic's: a cgroup reads three numbers

#: The CPU quota's period (cpu.cfs_period_us, the second number of cpu.max): the kernel's default.
PERIOD_US = 100_000
#: privsep's own processes in a sandbox's cgroup (init), on top of ``processes``.
SUPERVISORS = 1
PREFIX = "privsep-"


class Budget(Record):
    """What the kernel holds one sandbox to, from the policy's ``[limits]``."""

    __slots__ = ("cpu_percent", "memory_mb", "processes")
    memory_mb: int
    processes: int
    cpu_percent: int
    """0: no CPU quota (no cpu controller needed)."""

    def __init__(self, memory_mb: int, processes: int, cpu_percent: int = 0) -> None:
        self._assign(locals())

    @classmethod
    def of(cls, limits: Limits) -> Budget:
        return cls(limits.memory_mb, limits.processes, limits.cpu_percent)

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb << 20

    @property
    def pids_max(self) -> int:
        """``processes`` counts the command's processes and threads; init comes on top."""
        return self.processes + SUPERVISORS

    @property
    def cpu_quota_us(self) -> int:
        """Run time per PERIOD_US; the kernel's minimum quota is 1 ms."""
        return max(1000, self.cpu_percent * PERIOD_US // 100)


def _mkdir(path: str) -> None:
    os.mkdir(path, 0o755)


class Fs(Record):
    """The two calls whose effect a plain directory does not imitate.

    The kernel fills a new cgroup with its interface files, and removes a
    cgroup whose directory still lists them. The tests of the v2 path pass a
    fake that does both in a temporary directory laid out like cgroup2; the
    rest (reading and writing the interface files) is plain file I/O there.
    """

    __slots__ = ("mkdir", "rmdir")
    mkdir: Callable[[str], None]
    rmdir: Callable[[str], None]

    def __init__(
        self, mkdir: Callable[[str], None] = _mkdir, rmdir: Callable[[str], None] = os.rmdir
    ) -> None:
        self._assign(locals())


REAL = Fs()


def write(path: str, value: str | int) -> None:
    """One write(2), as the cgroup interface files expect (a short write would be a partial value)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def read(path: str) -> str:
    """The file's text; a byte that is not ASCII reads as U+FFFD. (Read as bytes and decoded:
    bytes.decode has ASCII built in, where a text file looks its codec up and imports
    encodings.ascii, ~0.2 ms of every privsep run.)"""
    with open(path, "rb") as f:
        return f.read().decode("ascii", "replace")


def counters(path: str) -> dict[str, int]:
    """A "key value" file (memory.events, pids.events, memory.oom_control); {} if it is gone."""
    try:
        text = read(path)
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


def pids_in(procs_file: str) -> list[int]:
    try:
        return [int(p) for p in read(procs_file).split()]
    except (OSError, ValueError):
        return []


# --- names ---------------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/PID/stat field 22): with the pid, a
    name that a later process reusing the pid does not share. None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


_owner: tuple[int, int] | None = None
_counter = itertools.count()


def owner() -> tuple[int, int]:
    """This broker's (pid, start time), which every sandbox cgroup it makes is named after."""
    global _owner, _counter
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:  # a forked copy is another broker
        _owner = (pid, start_time(pid) or 0)
        _counter = itertools.count()
    return _owner


def sandbox_name() -> str:
    pid, start = owner()
    return f"{PREFIX}{pid}-{start}-{next(_counter)}"


def leaf_name() -> str:
    """v2: the leaf the broker moves itself into, so that its own cgroup may have controllers."""
    pid, start = owner()
    return f"{PREFIX}{pid}-{start}-broker"


def owned_by_the_dead(name: str) -> bool:
    """A privsep cgroup whose broker has ended (or a name privsep would not have made: False)."""
    parts = name.removeprefix(PREFIX).split("-") if name.startswith(PREFIX) else []
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return False
    return start_time(int(parts[0])) != int(parts[1])


# --- a sandbox's cgroup, and a host's ------------------------------------------------------------


def kill_members(procs_file: str, name: str) -> None:
    """SIGKILL every process listed in ``procs_file`` (where cgroup.kill is missing).

    Through a pidfd, and only if the process is still in the cgroup called
    ``name`` once the pidfd pins it: a pid that exits and is reused by some
    host process between the listing and the signal is never signalled.
    """
    for pid in pids_in(procs_file):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            lines = read(f"/proc/{pid}/cgroup").split("\n")  # "\n" alone: a path may hold "\r"
            inside = any(line.endswith("/" + name) for line in lines)
            if inside:
                _signals.pidfd_send_signal(pidfd, _signals.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)


class SandboxCgroup(ABC):
    """One sandbox's cgroup (one directory per hierarchy on v1, one on v2)."""

    version: str
    join_file: str = "cgroup.procs"
    """What the sandbox's init writes "0" to, in each of ``dirs``, to move itself inside."""

    def __init__(self, name: str, dirs: tuple[str, ...], budget: Budget, fs: Fs) -> None:
        self.name = name
        self.dirs = dirs
        self.budget = budget
        self.fs = fs
        self.oom_fd: int | None = None
        """v1: an eventfd the kernel signals when the sandbox runs out of memory (the broker then
        ends the whole sandbox, as v2's memory.oom.group does in the kernel). None on v2."""

    @property
    def join(self) -> tuple[str, ...]:
        """The files init writes "0" to, to move itself (and all it will fork) inside."""
        return tuple(f"{d}/{self.join_file}" for d in self.dirs)

    @abstractmethod
    def memory_limit_hit(self) -> bool:
        """The sandbox's own memory limit made the kernel kill a process of it."""

    @abstractmethod
    def pids_refused(self) -> int:
        """How many forks and clones the process limit refused (EAGAIN)."""

    def oom_pending(self) -> bool:
        """Whether ``oom_fd`` says the sandbox's own memory limit ran it out of memory (v1 only)."""
        return False

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL every process inside (normally none is left: init's death empties the pid namespace)."""

    def remove(self) -> bool:
        """Remove the cgroup; False when a process is still inside (it was killed: try again later)."""
        for path in self.dirs:
            try:
                self.fs.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                self.kill()
                return False
        if self.oom_fd is not None:
            os.close(self.oom_fd)
            self.oom_fd = None
        return True


class Host(ABC):
    """Where this broker makes its sandboxes' cgroups, and how."""

    version: str
    controllers: tuple[str, ...]
    """The controllers a sandbox's cgroup can use here (memory and pids always; cpu if present)."""

    def __init__(self, fs: Fs) -> None:
        self.fs = fs

    @property
    @abstractmethod
    def parents(self) -> tuple[str, ...]:
        """The directories sandbox cgroups are made in: beneath the broker's own cgroup."""

    @abstractmethod
    def create(self, budget: Budget) -> SandboxCgroup:
        """Make one sandbox's cgroup with ``budget`` written; raises ConfinementError('cgroups')."""

    @abstractmethod
    def describe(self) -> str:
        """One line for ``privsep doctor``: the version, where, what is limited and how."""

    def reap_stale(self) -> int:
        """Remove the cgroups of brokers that have ended (killed, say); how many were removed.

        A cgroup that still holds a process is left for the next start: the
        sandbox's processes die with their broker, a moment after it.
        rmdir fails on a cgroup that holds a process, so a live sandbox's
        cgroup is never removed, even by a mistaken guess about its owner.
        """
        removed = 0
        for parent in self.parents:
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                if owned_by_the_dead(name) and _remove_tree(f"{parent}/{name}", name, self.fs):
                    removed += 1
        return removed


def _remove_tree(path: str, name: str, fs: Fs) -> bool:
    """rmdir a stale cgroup, its children first (a dead v2 broker's leaf holds none, but be total)."""
    try:
        children = [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return False
    for child in children:
        _remove_tree(f"{path}/{child}", child, fs)
    kill_members(f"{path}/cgroup.procs", name)
    try:
        fs.rmdir(path)
    except OSError:
        return False
    return True


def remove_all(cgroups: Iterable[SandboxCgroup]) -> list[SandboxCgroup]:
    """Try to remove each; return those that still hold a process."""
    return [cg for cg in cgroups if not cg.remove()]
