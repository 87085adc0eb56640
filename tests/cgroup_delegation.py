"""A delegated cgroup for the non-root broker tests, as systemd's ``Delegate=yes`` gives one.

A non-root broker can make its sandboxes' cgroups only in a cgroup root has
handed to it. On cgroup v2 hosts systemd does that for services and for
``systemd-run --user --scope -p Delegate=yes``; on this project's hybrid CI
machine (memory, pids and cpu in v1) nothing does. So ``tests.as_nonroot``,
while still root, plays systemd: in each v1 hierarchy privsep uses, it makes
``test-delegated-UID-PID-START`` beneath its own cgroup, gives it (and its
``cgroup.procs`` and ``tasks``) to the test uid, and moves itself inside
before it drops to that uid and execs the broker. What the non-root broker
does there is what it would do in a real delegated cgroup.

The directory is named after the process that moves into it (the broker,
after exec): once that process has ended, :func:`remove_stale` removes it
(at the next ``as_nonroot`` and at the end of the test session).
"""

from __future__ import annotations

import contextlib
import os

from privsep import cgroups
from privsep.cgroups._common import start_time, write

PREFIX = "test-delegated-"
_HANDED_OVER = ("cgroup.procs", "tasks", "cgroup.threads", "cgroup.subtree_control")


def _parents() -> dict[str, str]:
    """This process's own cgroup in each v1 hierarchy privsep uses; {} elsewhere (v2: not needed
    by the tests on the CI machine, and not attempted)."""
    with open("/proc/self/cgroup") as f:
        own = cgroups.parse_self_cgroup(f.read())
    with open("/proc/self/mountinfo") as f:
        mounts = cgroups.parse_mountinfo(f.read())
    dirs: dict[str, str] = {}
    for mount in mounts:
        for controller in ("memory", "pids", "cpu"):
            if mount.fstype == "cgroup" and controller in mount.options and controller in own:
                rel = own[controller].rstrip("/")
                if mount.root == "/":
                    dirs.setdefault(controller, mount.point.rstrip("/") + rel)
    return dirs


def delegate(uid: int) -> None:
    """As root: give ``uid`` a cgroup beneath this process's own, and move this process into it."""
    remove_stale()
    parents = _parents()
    if "memory" not in parents or "pids" not in parents:
        return
    name = f"{PREFIX}{uid}-{os.getpid()}-{start_time(os.getpid())}"
    for parent in parents.values():
        path = f"{parent}/{name}"
        os.mkdir(path, 0o755)
        os.chown(path, uid, uid)
        for entry in _HANDED_OVER:
            with contextlib.suppress(FileNotFoundError):
                os.chown(f"{path}/{entry}", uid, uid)
        write(f"{path}/cgroup.procs", os.getpid())


def _dead(name: str) -> bool:
    parts = name.removeprefix(PREFIX).split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return False
    return start_time(int(parts[1])) != int(parts[2])


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                _remove(entry.path)
        os.rmdir(path)


def remove_stale() -> None:
    """Remove the delegated cgroups whose broker has ended (with what a killed broker left inside)."""
    for parent in _parents().values():
        with contextlib.suppress(OSError):
            for name in os.listdir(parent):
                if name.startswith(PREFIX) and _dead(name):
                    _remove(f"{parent}/{name}")
