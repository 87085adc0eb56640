"""The child's own filesystem, built: the view the broker planned (plan/view.py), mounted.

Runs in the sandbox's pid 1, the only process that can mount a ``/proc``
for the new pid namespace: a new, read-only tmpfs root holding only the
planned binds, masks, pins and generated files, then ``pivot_root`` into it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from privsep import _linux
from privsep._record import Record
from privsep.errors import ConfinementError
from privsep.plan.view import DEVICES, Bind, Mask, ViewPlan

_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
#: Where the new root is assembled, inside the child's private mount namespace.
#: Sources are opened as O_PATH fds before this is covered, so a grant below
#: the host's /tmp still binds the host's file.
_BUILD_AT = "/tmp"
_READ_ONLY = _linux.MOUNT_ATTR_RDONLY | _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV
_TMP_INODES = 16384  # tmpfs inodes cost kernel memory outside every rlimit


def _bind(fd: int, target: str, attrs: int) -> None:
    """Bind ``fd``'s tree at ``target``, submounts included, then restrict every mount of it.

    Recursive, as bwrap's binds are: the view shows what the host path shows.
    A plain bind would leave out the mounts below the path and reveal what
    they cover on the host (a directory a mount hides, the file under a
    bind-mounted file). ``mount_setattr(AT_RECURSIVE)`` then makes every mount
    in the new tree read-only (and nosuid, nodev...), not just the top one, and
    it keeps the atime flags a user namespace may not change.
    """
    _linux.mount(f"/proc/self/fd/{fd}", target, None, _linux.MS_BIND | _linux.MS_REC)
    _linux.mount_setattr_recursive(target, attrs)


def _mkdir_p(made: set[str], path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, remembering what is there: the new root is a
    tmpfs only this process writes to, so each directory is asked for once."""
    if path in made:
        return
    parent = posixpath.dirname(path)
    if parent != path:
        _mkdir_p(made, parent)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    made.add(path)


def _create(path: str, mode: int, text: str = "") -> None:
    """A new file holding ``text``: one open, one write (its mode applies to later opens only)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        if text:
            os.write(fd, text.encode())
    finally:
        os.close(fd)


def _make_mountpoint(made: set[str], path: str, is_dir: bool) -> None:
    if os.path.lexists(path):
        return  # inside a bind already: the host's own entry (never create anything there)
    if is_dir:
        _mkdir_p(made, path)
    else:
        _mkdir_p(made, posixpath.dirname(path))
        _create(path, 0o444)


def _hide_host_proc(root: str) -> None:
    """Cover the host-wide files of the fresh /proc (see _PROC_HIDDEN) with stand-ins.

    The stand-ins are made in the stand-ins directory of the new root
    (:func:`_make_stand_ins`) and removed from it once bound (:func:`_drop_stand_ins`):
    each bind keeps its file, and no path leads to them.
    """
    at = root + _STAND_INS_AT
    covers = [(name, name.replace("/", "_")) for name in _PROC_STAND_INS]
    covers += [(name, "hidden") for name in _PROC_HIDDEN]
    for name, source in covers:
        target = f"{root}/proc/{name}"
        try:
            _linux.mount(f"{at}/{source}", target, None, _linux.MS_BIND)
        except FileNotFoundError:
            continue  # this kernel has no such file
        _linux.mount_setattr_recursive(target, _MASK)


def _make_stand_ins(root: str) -> None:
    """What /proc's hidden files and the masks of deny rules are covered with: an empty file
    and an empty directory (mode 0, bound read-only), and /proc's stand-ins (read-only)."""
    at = root + _STAND_INS_AT
    os.mkdir(at, 0o755)
    os.mkdir(at + "/d", 0o000)
    _create(at + "/hidden", 0o000)
    texts = {"loadavg": _PROC_LOADAVG, "sys/kernel/random/boot_id": f"{_random_uuid()}\n"}
    for name in _PROC_STAND_INS:
        _create(f"{at}/{name.replace('/', '_')}", 0o444, texts[name])


def _drop_stand_ins(root: str) -> None:
    """Unlink the stand-ins: what is bound stays, as long as it is bound, under no other name."""
    at = root + _STAND_INS_AT
    for name in ("hidden", *(n.replace("/", "_") for n in _PROC_STAND_INS)):
        os.unlink(f"{at}/{name}")
    os.rmdir(at + "/d")
    os.rmdir(at)


def _random_uuid() -> str:
    """A version-4 UUID, formatted as the kernel formats boot_id."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _idmap_userns(host_uid: int, host_gid: int, sandbox_id: int, *, proc: str) -> int:
    """A user namespace (as an fd) mapping ``host_uid``/``host_gid`` onto ``sandbox_id``, the
    sandbox's host id (its uid and gid).

    Only its mapping matters: an idmapped mount made with it shows files the
    host ids own as the sandbox's, and files the sandbox creates land owned
    by the host ids. The helper process that owns it exits at once.
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - a throw-away helper
        code = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            _linux.unshare(_linux.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.read(go_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise OSError(errno.EPERM, "the idmap helper could not make a user namespace")
        for name, content in (
            ("uid_map", f"{host_uid} {sandbox_id} 1\n"),
            ("gid_map", f"{host_gid} {sandbox_id} 1\n"),
        ):
            with open(f"{proc}/{pid}/{name}", "w") as f:
                f.write(content)
        return os.open(f"{proc}/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


def _bind_idmapped(fd: int, target: str, attrs: int, userns: int) -> None:
    """Attach a clone of ``fd``'s tree (submounts included, see :func:`_bind`) at ``target``,
    idmapped and restricted before it is visible."""
    tree = _linux.open_tree_clone(fd)
    try:
        try:
            _linux.mount_setattr_fd_recursive(tree, attrs | _linux.MOUNT_ATTR_IDMAP, userns)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            # A file system in the tree cannot be idmapped: the host's ownership applies as it is.
            _linux.mount_setattr_fd_recursive(tree, attrs)
        _linux.move_mount_to(tree, target)
    finally:
        os.close(tree)


_WRITABLE = _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV
_MASK = _READ_ONLY | _linux.MOUNT_ATTR_NOEXEC
#: Where the stand-ins are made in the new root, until they are bound (then unlinked).
_STAND_INS_AT = "/.privsep-stand-ins"
#: /proc's files that get a stand-in with content of the sandbox's own (see _PROC_LOADAVG).
_PROC_STAND_INS = ("loadavg", "sys/kernel/random/boot_id")
#: Files of /proc that show the host as a whole, not the sandbox (its pid namespace already
#: limits the process entries): each is covered by an empty file nobody may read.
#: Kept, because programs need them: cpuinfo, meminfo, stat (glibc counts CPUs with it),
#: uptime, mounts and the per-process entries.
_PROC_HIDDEN = (
    "keys", "key-users", "config.gz", "kallsyms", "modules", "timer_list", "sched_debug",
    "latency_stats", "timer_stats", "kcore", "sysrq-trigger", "kpagecount", "kpageflags", "kpagecgroup",
)  # fmt: skip
#: Host facts that programs read, so the sandbox gets its own value instead: the host's
#: boot id identifies the machine across sandboxes; its load average is a side channel.
_PROC_LOADAVG = "0.00 0.00 0.00 1/1 1\n"


class _Frozen(Record):
    """A set-id or hard-linked file bound read-only onto itself (``ViewPlan.frozen``): a view step.
    ``device`` and ``inode``: the file planning found there (see :func:`_freeze`)."""

    __slots__ = ("device", "inode", "path")
    path: str
    device: int
    inode: int

    def __init__(self, path: str, device: int, inode: int) -> None:
        self._assign(locals())


_OVERLAYS_AT = "/.privsep-overlays"


def _overlay(root: str, overlays: tuple[tuple[str, str], ...]) -> None:
    """Mount each generated file read-only over the entry a bind shows at its path.

    The entry itself, not what it names: without MOVE_MOUNT_T_SYMLINKS a host
    symlink there (resolv.conf to systemd-resolved's stub) is covered, never
    followed out of the view. The files' tmpfs is detached once they are
    mounted; each mount keeps its file.
    """
    at = root + _OVERLAYS_AT
    os.makedirs(at, mode=0o755)
    _linux.mount("tmpfs", at, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV, "mode=0755,size=64k")
    try:
        for index, (path, text) in enumerate(overlays):
            source = f"{at}/{index}"
            with open(source, "x") as f:
                f.write(text)
            os.chmod(source, 0o444)
            fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
            try:
                tree = _linux.open_tree_clone(fd)
            finally:
                os.close(fd)
            try:
                _linux.mount_setattr_fd_recursive(tree, _MASK)
                _linux.move_mount_to(tree, root + path)
            finally:
                os.close(tree)
    finally:
        _linux.umount2(at, _linux.MNT_DETACH)
        os.rmdir(at)


def _beneath(root_fd: int, path: str) -> int:
    """An O_PATH fd of ``path`` in the view being built, resolved beneath its root with no
    symlink on the way (ELOOP otherwise): what the grants hold is the sandboxes' to change,
    and a directory swapped for a link since planning must not carry a mount out of the view
    (fresh-eyes audits 17 and 18: a frozen file's mount landed in the host's tree and was
    thrown away with it)."""
    resolve = _linux.RESOLVE_BENEATH | _linux.RESOLVE_NO_SYMLINKS | _linux.RESOLVE_NO_MAGICLINKS
    return _linux.openat2(
        root_fd, path.lstrip("/") or ".", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, 0, resolve
    )


def _mount_onto(source_fd: int, target_fd: int, attrs: int | None) -> None:
    """Clone ``source_fd``'s mount tree as a detached one (the mounts below it included: a pin
    must not show what a host mount below it covers), give it ``attrs`` (None: as it is), and
    attach it onto the very file or directory ``target_fd`` holds: no path is looked up twice."""
    tree = _linux.open_tree_clone(source_fd)
    try:
        if attrs is not None:
            _linux.mount_setattr_fd_recursive(tree, attrs)
        _linux.move_mount_onto(tree, target_fd)
    finally:
        os.close(tree)


def _freeze(root_fd: int, path: str, frozen: _Frozen) -> None:
    """Bind the file at ``path`` read-only onto itself, if it is the very file planning found.

    By fd, not by path: another sandbox with the same writable grant could have swapped a
    directory on the way since planning, and a mount by path then froze the wrong file and
    left the hard-linked one writable (fresh-eyes audit 17). The file is opened beneath the
    view's root with no symlink on the way, checked by device and inode, cloned as a detached
    read-only mount and attached onto that same open file; a file that is no longer the one
    planned fails the start (the next start plans again)."""
    fd = _beneath(root_fd, path)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (frozen.device, frozen.inode):
            raise OSError(
                errno.ESTALE,
                "it is not the file found when the sandbox was planned (something renamed or replaced "
                "it since; perhaps another sandbox with the same grant): start again",
            )
        _mount_onto(fd, fd, _READ_ONLY)
    finally:
        os.close(fd)


def _mask(root_fd: int, path: str, stand_in: str) -> None:
    """Mount the stand-in (in the view's own tmpfs) over ``path``, found beneath the view's root
    with no symlink on the way (see :func:`_beneath`)."""
    target = _beneath(root_fd, path)
    try:
        source = os.open(stand_in, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _mount_onto(source, target, _MASK)
        finally:
            os.close(source)
    finally:
        os.close(target)


def _pin(root_fd: int, path: str) -> None:
    """Bind the directory at ``path`` onto itself, so that it cannot be renamed away; found
    beneath the view's root (see :func:`_beneath`). With the mounts below it (the host's, bound
    with the grant; privsep's own deeper ones come after): a plain bind left them out and showed
    what a host mount there covers, writable (fresh-eyes audit 18; as old as pins)."""
    fd = _beneath(root_fd, path)
    try:
        _mount_onto(fd, fd, None)
    finally:
        os.close(fd)


def _mount_order(plan: ViewPlan) -> list[tuple[str, int, object]]:
    """Binds, pins and masks, outermost first: a mount inside another comes after it."""
    ops: list[tuple[str, int, object]] = [(b.path, 0, b) for b in plan.binds]
    ops += [(p, 1, p) for p in plan.pins]
    ops += [(m.path, 2, m) for m in plan.masks]
    ops += [(f[0], 3, _Frozen(*f)) for f in plan.frozen]
    return sorted(ops, key=lambda op: (op[0], op[1]))


def build_view(plan: ViewPlan, *, host_id: int) -> None:
    """Replace this process's root with the planned view (pid 1 of the sandbox).

    ``host_id``: the sandbox's uid and gid on the host, onto which idmapped binds map their owner.

    Raises ConfinementError naming the path that could not be set up.
    """
    step = "filesystem"
    os.umask(0o022)
    sources: dict[str, int] = {}
    namespaces: dict[tuple[int, int], int] = {}
    try:
        for b in plan.binds:
            # The planned path is real: a symlink swapped in since (by a sandbox writing
            # there) is refused, never followed.
            fd = _linux.openat2(
                _linux.AT_FDCWD,
                b.path,
                os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                0,
                _linux.RESOLVE_NO_SYMLINKS,
            )
            sources[b.path] = fd
            if stat.S_ISDIR(os.fstat(fd).st_mode) != b.is_dir:
                raise ConfinementError(step, f"{b.path} changed type since the policy was planned")
        devices = [(name, os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)) for name in DEVICES]
    except OSError as exc:
        for fd in (*sources.values(), *namespaces.values()):
            os.close(fd)
        raise ConfinementError(step, f"cannot open {exc.filename or 'a view path'}: {exc.strerror}") from None

    root = _BUILD_AT
    made = {root}
    current = "/"
    try:
        current = "/ (making mounts private)"
        _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        current = "the new root tmpfs"
        _linux.mount("tmpfs", root, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV, "mode=0755,size=1m")
        _make_stand_ins(root)
        if plan.tmp_size_mb:
            # First, so that grants below /tmp are bound inside it, not hidden by it.
            current = "/tmp"
            _mkdir_p(made, root + "/tmp")
            _linux.mount(
                "tmpfs",
                root + "/tmp",
                "tmpfs",
                _linux.MS_NOSUID | _linux.MS_NODEV,
                f"mode=1777,size={plan.tmp_size_mb}m,nr_inodes={_TMP_INODES}",
            )
        current = "/proc"
        _mkdir_p(made, root + "/proc")
        # hidepid=invisible: init (pid 1) is not dumpable, so its /proc entry,
        # cmdline included (a copy of privsep's interpreter), is hidden from the command.
        _linux.mount(
            "proc",
            root + "/proc",
            "proc",
            _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC,
            "hidepid=invisible",
        )
        current = "the host-wide files of /proc"
        _hide_host_proc(root)
        # The helpers that hold the idmaps live in our pid namespace: reach them through its /proc.
        for b in plan.binds:
            if b.idmap is not None and b.idmap not in namespaces:
                current = f"the idmapped mount of {b.path}"
                namespaces[b.idmap] = _idmap_userns(*b.idmap, host_id, proc=root + "/proc")
        for d in plan.dirs:
            current = d
            _mkdir_p(made, root + d)
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        for path, _, op in _mount_order(plan):
            current = path
            if isinstance(op, Bind):
                _make_mountpoint(made, root + path, op.is_dir)
                attrs = _WRITABLE if op.writable else _READ_ONLY
                if op.idmap is not None:
                    _bind_idmapped(sources[path], root + path, attrs, namespaces[op.idmap])
                else:
                    _bind(sources[path], root + path, attrs)
            elif isinstance(op, _Frozen):
                _freeze(root_fd, path, op)
            elif isinstance(op, Mask):
                _mask(root_fd, path, root + _STAND_INS_AT + ("/d" if op.is_dir else "/hidden"))
            else:  # a pin: the directory bound onto itself, so it cannot be renamed away
                _pin(root_fd, path)
        os.close(root_fd)
        current = "the stand-ins"
        _drop_stand_ins(root)
        for path, text in plan.files:
            current = path
            _mkdir_p(made, root + posixpath.dirname(path))
            _create(root + path, 0o644, text)
        for path, target in plan.symlinks:
            current = path
            _mkdir_p(made, root + posixpath.dirname(path))
            os.symlink(target, root + path)
        if plan.overlays:
            current = "the generated files over the host's"
            _overlay(root, plan.overlays)
        current = "/dev"
        os.mkdir(root + "/dev", 0o755)
        for name, fd in devices:
            _create(f"{root}/dev/{name}", 0o444)
            _bind(
                fd,
                f"{root}/dev/{name}",
                _linux.MOUNT_ATTR_RDONLY | _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NOEXEC,
            )
        for name, target in _DEV_LINKS.items():
            os.symlink(target, f"{root}/dev/{name}")
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
        for fd in (*sources.values(), *namespaces.values()):
            os.close(fd)
        for _, fd in devices:
            os.close(fd)
