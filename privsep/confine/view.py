"""The child's own filesystem: planned in the broker, built inside the sandbox.

The child does not see the host's tree with some parts forbidden; it sees a
new, read-only tmpfs root holding only what the policy grants, bound at the
same paths. That is why the interpreter can live under /root (mode 0700):
the directories leading to a granted path are fresh 0755 directories of the
view, not the host's.

Planning reads host metadata (lstat, readlink) in the broker, before any
fork, so a missing path is reported early and the fork path stays small.
Symlinks on the way to a grant are mirrored as symlinks (``/lib`` ->
``usr/lib`` on merged-/usr systems) and their targets granted too. Building
runs in the sandbox's pid 1, which is the only process that can mount a
``/proc`` for the new pid namespace.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

from privsep import _linux
from privsep.errors import ConfinementError, PolicyError
from privsep.policy.model import View

#: Device nodes every child gets; none of them gives access to anything.
DEVICES = ("null", "zero", "full", "random", "urandom")
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
_MAX_LINKS = 40
#: Where the new root is assembled, inside the child's private mount namespace.
#: Sources are opened as O_PATH fds before this is covered, so a grant below
#: the host's /tmp still binds the host's file.
_BUILD_AT = "/tmp"
_READ_ONLY = _linux.MOUNT_ATTR_RDONLY | _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV
_TMP_INODES = 16384  # tmpfs inodes cost kernel memory outside every rlimit


@dataclass(frozen=True)
class Bind:
    path: str
    is_dir: bool


@dataclass(frozen=True)
class ViewPlan:
    """What to build; paths are absolute, the same inside and outside."""

    dirs: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]
    binds: tuple[Bind, ...]
    tmp_size_mb: int | None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class _Planner:
    def __init__(self) -> None:
        self.dirs: set[str] = set()
        self.symlinks: dict[str, str] = {}
        self.binds: dict[str, bool] = {}

    def add(self, path: str, *, required: bool, links: int = 0) -> None:
        if links > _MAX_LINKS:
            raise PolicyError(f"view path {path}: too many levels of symbolic links")
        path = posixpath.normpath(path)
        parts = [p for p in path.split("/") if p]
        current = "/"
        for i, part in enumerate(parts):
            nxt = posixpath.join(current, part)
            try:
                st = os.lstat(nxt)
            except FileNotFoundError:
                if required:
                    raise PolicyError(
                        f"view path {path} does not exist on this machine ({nxt} is missing); "
                        "remove it from [view] read, or move it to read_if_exists"
                    ) from None
                return
            except OSError as exc:
                raise PolicyError(f"view path {path}: cannot inspect {nxt}: {exc.strerror}") from None
            rest = parts[i + 1 :]
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(nxt)
                self.symlinks[nxt] = target
                resolved = posixpath.normpath(posixpath.join(current, target))
                self.add(posixpath.join(resolved, *rest), required=required, links=links + 1)
                return
            if not rest:
                if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                    raise PolicyError(f"view path {path} is neither a directory nor a regular file")
                self.binds[nxt] = stat.S_ISDIR(st.st_mode)
                return
            if not stat.S_ISDIR(st.st_mode):
                raise PolicyError(f"view path {path}: {nxt} is not a directory")
            self.dirs.add(nxt)
            current = nxt

    def plan(self, tmp_size_mb: int | None) -> ViewPlan:
        # A grant inside a bound directory is already visible through it.
        bind_dirs = [p for p, is_dir in self.binds.items() if is_dir]

        def inside_bind(path: str) -> bool:
            return any(_under(path, d) and path != d for d in bind_dirs)

        binds = tuple(Bind(p, is_dir) for p, is_dir in sorted(self.binds.items()) if not inside_bind(p))
        for b in binds:
            for r in ("/proc", "/dev"):
                if _under(b.path, r) or _under(r, b.path):
                    raise PolicyError(
                        f"view path {b.path} overlaps {r}, which privsep builds itself; remove it from [view]"
                    )
            # A grant below /tmp (a venv there, say) is bound inside the private
            # /tmp; only "/" could contain /tmp, and it contains /proc too.
        bound = {b.path for b in binds}
        dirs = tuple(sorted(d for d in self.dirs if not inside_bind(d) and d not in bound))
        symlinks = tuple(sorted((p, t) for p, t in self.symlinks.items() if not inside_bind(p)))
        return ViewPlan(dirs=dirs, symlinks=symlinks, binds=binds, tmp_size_mb=tmp_size_mb)


def plan_view(view: View) -> ViewPlan:
    """Resolve the policy's view against this host (in the broker, before fork)."""
    planner = _Planner()
    for path in view.read:
        planner.add(path, required=True)
    for path in view.read_if_exists:
        planner.add(path, required=False)
    return planner.plan(view.tmp_size_mb if view.tmp else None)


def _bind(fd: int, target: str, attrs: int) -> None:
    """Bind ``fd``'s tree at ``target``, then restrict it and every mount below it.

    A plain bind is tried first (submounts stay hidden). In a user namespace
    the kernel refuses that when the source has locked submounts, so the
    bind is recursive there. Either way, ``mount_setattr(AT_RECURSIVE)``
    makes every mount in the new tree read-only (and nosuid, nodev...), not
    just the top one, and it keeps the atime flags a user namespace may not
    change.
    """
    source = f"/proc/self/fd/{fd}"
    try:
        _linux.mount(source, target, None, _linux.MS_BIND)
    except OSError as exc:
        if exc.errno != 22:  # EINVAL: the source hides locked mounts; only a recursive bind is allowed
            raise
        _linux.mount(source, target, None, _linux.MS_BIND | _linux.MS_REC)
    _linux.mount_setattr_recursive(target, attrs)


def _make_mountpoint(path: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.makedirs(posixpath.dirname(path), mode=0o755, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))


def build_view(plan: ViewPlan) -> None:
    """Replace this process's root with the planned view (pid 1 of the sandbox).

    Raises ConfinementError naming the path that could not be set up.
    """
    step = "filesystem"
    os.umask(0o022)
    sources: list[tuple[Bind, int]] = []
    try:
        for b in plan.binds:
            fd = os.open(b.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            if stat.S_ISDIR(os.fstat(fd).st_mode) != b.is_dir:
                raise ConfinementError(step, f"{b.path} changed type since the policy was planned")
            sources.append((b, fd))
        devices = [(name, os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)) for name in DEVICES]
    except OSError as exc:
        raise ConfinementError(step, f"cannot open {exc.filename or 'a view path'}: {exc.strerror}") from None

    root = _BUILD_AT
    current = "/"
    try:
        current = "/ (making mounts private)"
        _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        current = "the new root tmpfs"
        _linux.mount("tmpfs", root, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV, "mode=0755,size=1m")
        if plan.tmp_size_mb:
            # First, so that grants below /tmp are bound inside it, not hidden by it.
            current = "/tmp"
            os.makedirs(root + "/tmp", mode=0o755)
            _linux.mount(
                "tmpfs",
                root + "/tmp",
                "tmpfs",
                _linux.MS_NOSUID | _linux.MS_NODEV,
                f"mode=1777,size={plan.tmp_size_mb}m,nr_inodes={_TMP_INODES}",
            )
        for d in plan.dirs:
            current = d
            os.makedirs(root + d, mode=0o755, exist_ok=True)
        for b, fd in sources:
            current = b.path
            _make_mountpoint(root + b.path, b.is_dir)
            _bind(fd, root + b.path, _READ_ONLY)
        for path, target in plan.symlinks:
            current = path
            os.makedirs(root + posixpath.dirname(path), mode=0o755, exist_ok=True)
            os.symlink(target, root + path)
        current = "/dev"
        os.makedirs(root + "/dev", mode=0o755)
        for name, fd in devices:
            _make_mountpoint(f"{root}/dev/{name}", is_dir=False)
            _bind(
                fd,
                f"{root}/dev/{name}",
                _linux.MOUNT_ATTR_RDONLY | _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NOEXEC,
            )
        for name, target in _DEV_LINKS.items():
            os.symlink(target, f"{root}/dev/{name}")
        current = "/proc"
        os.makedirs(root + "/proc", mode=0o755)
        # hidepid=invisible: init (pid 1) is not dumpable, so its /proc entry,
        # cmdline included (a forked copy of the broker's), is hidden from the command.
        _linux.mount(
            "proc",
            root + "/proc",
            "proc",
            _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC,
            "hidepid=invisible",
        )
        current = "pivot_root"
        os.chdir(root)
        _linux.pivot_root(".", ".")
        _linux.umount2(".", _linux.MNT_DETACH)
        os.chdir("/")
        current = "/ (read-only)"
        _linux.mount(
            None,
            "/",
            None,
            _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | _linux.MS_NOSUID | _linux.MS_NODEV,
        )
    except OSError as exc:
        raise ConfinementError(step, f"setting up {current}: {exc.strerror}") from None
    finally:
        for _, fd in sources:
            os.close(fd)
        for _, fd in devices:
            os.close(fd)
