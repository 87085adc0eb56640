"""One cgroup per sandbox: the kernel counts memory, processes and CPU for the whole sandbox.

setrlimit counts per process or per uid. Memory a process holds through an
fd (memfds, SysV shm, files on a tmpfs) is outside ``RLIMIT_AS``; a tree of
processes multiplies it; and ``RLIMIT_NPROC`` counts every process of a
uid, so the sandboxes of a root broker (all uid 65534) shared one count and
one sandbox at its limit stopped its siblings' forks. A cgroup counts what
the kernel charges to the sandbox's processes, whoever they are, and nothing
else.

Where: only beneath the cgroup the broker itself runs in
(``/proc/self/cgroup``), never anywhere else: that is the subtree the host
gave privsep (all of it for root, a delegated one for another user). A
sandbox's cgroup is named ``privsep-PID-START-N`` after its broker (pid and
start time), so that a broker starting up can tell which ones a broker that
was killed left behind, and remove them.

When: the broker makes the cgroup and writes its limits before it starts the
sandbox; the sandbox's init joins it as its first act
(``confine/inside.py``), before it forks anything, so every other process
of the sandbox is born inside. The broker removes it once the sandbox has
ended.

Which version: v2 (``v2.py``) when the broker's own cgroup in the unified
hierarchy offers the memory and pids controllers; otherwise v1 (``v1.py``)
when hierarchies with those controllers are mounted (hybrid hosts such as
this project's CI machine, where the unified hierarchy holds no controller);
otherwise none, and the broker refuses to start a sandbox unless the policy
says ``[limits] cgroups = "optional"`` or ``"off"``.

The filesystem is injectable (:func:`detect` takes the text of
``/proc/self/cgroup`` and ``/proc/self/mountinfo``, and an :class:`Fs`), so
the v2 path is tested against a fake cgroup2 tree in a temporary directory.
"""

from __future__ import annotations

import os

from privsep._mountinfo import unescape
from privsep._record import Record
from privsep.cgroups._common import REAL, Budget, Fs, Host, SandboxCgroup, read, remove_all
from privsep.errors import ConfinementError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from privsep.cgroups.v1 import V1Cgroup, V1Host
    from privsep.cgroups.v2 import V2Cgroup, V2Host

__all__ = [
    "REAL",
    "Budget",
    "Fs",
    "Host",
    "Mount",
    "SandboxCgroup",
    "V1Cgroup",
    "V1Host",
    "V2Cgroup",
    "V2Host",
    "detect",
    "host",
    "parse_mountinfo",
    "parse_self_cgroup",
    "remove_all",
    "without",
]

_CONTROLLERS = ("memory", "pids", "cpu")
_VERSIONED = {"V1Cgroup": "v1", "V1Host": "v1", "V2Cgroup": "v2", "V2Host": "v2"}


def __getattr__(name: str) -> object:
    """``V1Host`` and the rest, imported when asked for: a run loads one version's code, its host's."""
    version = _VERSIONED.get(name)
    if version is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(f"{__name__}.{version}"), name)


class Mount(Record):
    """One cgroup file system mount from ``/proc/self/mountinfo``."""

    __slots__ = ("fstype", "options", "point", "root")

    point: str
    root: str
    """The directory of the hierarchy shown at ``point`` ("/" unless a part of it is bound)."""
    fstype: str
    options: frozenset[str]

    def __init__(self, point: str, root: str, fstype: str, options: frozenset[str]) -> None:
        self._assign(locals())


def parse_mountinfo(text: str) -> list[Mount]:
    """The ``cgroup`` and ``cgroup2`` mounts, in order.

    Split as the kernel writes the file: a line ends at a newline, a field at a space (both
    escaped within a path, ``_mountinfo.py``). Not ``splitlines()``/``split()``, which also
    break at a carriage return or another control character a mount point's path may hold
    unescaped (a FUSE mount a user names): the mount was dropped or its path cut short."""
    mounts = []
    for line in text.split("\n"):
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(" "), right.split(" ")
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(Mount(unescape(fields[4]), unescape(fields[3]), tail[0], frozenset(tail[2].split(","))))
    return mounts


def parse_self_cgroup(text: str) -> dict[str, str]:
    """Controller -> the process's cgroup in that hierarchy; "" for the unified (v2) one."""
    own: dict[str, str] = {}
    for line in text.split("\n"):  # a cgroup's path may hold "\r": see parse_mountinfo
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            own.setdefault(controller, path)
    return own


def _beneath(mount: Mount, path: str) -> str | None:
    """Where the cgroup ``path`` of a hierarchy is, in ``mount`` of it; None when not shown there."""
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    rel = path[len(root) :].rstrip("/")
    return mount.point.rstrip("/") + rel if rel else mount.point


def _offers(directory: str, needed: tuple[str, ...]) -> bool:
    try:
        available = read(f"{directory}/cgroup.controllers").split()
    except OSError:
        return False
    return all(c in available for c in needed)


def detect(self_cgroup: str, mountinfo: str, *, fs: Fs = REAL) -> Host:
    """The cgroup host for a process whose ``/proc/self/cgroup`` and ``/proc/self/mountinfo`` read
    as given; raises ConfinementError('cgroups') saying what is missing."""
    mounts = parse_mountinfo(mountinfo)
    own = parse_self_cgroup(self_cgroup)
    unified = None
    if "" in own:
        for mount in (m for m in mounts if m.fstype == "cgroup2"):
            directory = _beneath(mount, own[""])
            if directory is not None and os.path.isdir(directory):
                unified = directory
                break
    if unified is not None and _offers(unified, ("memory", "pids")):
        return _v2(unified, fs)
    dirs: dict[str, str] = {}
    for mount in (m for m in mounts if m.fstype == "cgroup"):
        for controller in _CONTROLLERS:
            if controller in mount.options and controller in own and controller not in dirs:
                directory = _beneath(mount, own[controller])
                if directory is not None and os.path.isdir(directory):
                    dirs[controller] = directory
    if "memory" in dirs and "pids" in dirs:
        from privsep.cgroups.v1 import V1Host  # noqa: PLC0415 - each version's code only on its hosts

        return V1Host.open(dirs, fs=fs)
    if unified is not None and not dirs:
        return _v2(unified, fs)  # a v2 host: its refusal says what the broker's cgroup lacks
    v2 = (
        f"the broker's cgroup in the unified hierarchy ({unified}) does not offer memory and pids"
        if unified is not None
        else "no cgroup2 file system is mounted"
    )
    v1 = ", ".join(c for c in ("memory", "pids") if c not in dirs)
    raise ConfinementError(
        "cgroups",
        f"no cgroup can hold a sandbox here: {v2}, and no cgroup v1 hierarchy with the {v1} controller "
        "is mounted",
    )


def _v2(directory: str, fs: Fs) -> V2Host:
    from privsep.cgroups.v2 import V2Host  # noqa: PLC0415 - each version's code only on its hosts

    # The root cgroup has no cgroup.type, and may hold processes and give controllers at once.
    return V2Host.open(directory, is_root=not os.path.exists(f"{directory}/cgroup.type"), fs=fs)


def without(why: str) -> str:
    """What a sandbox without a cgroup lacks, for the line printed at its start."""
    return (
        f"this sandbox runs without a cgroup ({why}): no limit on its memory as a whole (RLIMIT_AS caps "
        "each process's mappings, not memfds, shm, /tmp or a tree of processes), its processes are "
        "counted per uid (RLIMIT_NPROC, shared with every process of that uid), and no CPU quota"
    )


_cached: tuple[int, Host | ConfinementError] | None = None


def host() -> Host:
    """This process's cgroup host, found once per process (a forked copy looks again).

    The first call also removes the cgroups that brokers which have ended
    left behind beneath it. Raises ConfinementError('cgroups') when there is none.
    """
    global _cached
    pid = os.getpid()
    if _cached is None or _cached[0] != pid:
        found: Host | ConfinementError
        try:
            found = detect(read("/proc/self/cgroup"), read("/proc/self/mountinfo"))
            found.reap_stale()
        except ConfinementError as exc:
            found = exc
        except OSError as exc:
            found = ConfinementError("cgroups", f"reading {exc.filename}: {exc.strerror}")
        _cached = (pid, found)
    result = _cached[1]
    if isinstance(result, ConfinementError):
        raise ConfinementError(result.step, result.reason)
    return result
