"""Read-only views of read grants, for the fds the broker hands out.

The kernel checks a change of metadata (``fchmod``, ``futimens``, xattrs,
ACLs) against the inode's owner, not against the fd's open mode. An fd the
broker opened for reading on the host's own (writable) mount therefore lets
a child that owns the file there change its mode, times or xattrs: with a
non-root broker the child is the broker's uid, which owns the files it
grants. So a grant that does not write is pinned beneath a *detached
read-only clone* of its directory (``open_tree(OPEN_TREE_CLONE)`` then
``mount_setattr(MOUNT_ATTR_RDONLY)``): every fd opened beneath it refuses
every change with ``EROFS``, whoever owns the file.

A root broker makes the clone itself. A non-root broker cannot (it needs
CAP_SYS_ADMIN over the mount namespace), so a short-lived helper process
enters a user and mount namespace of its own, makes the clone there and
sends its fd back; the clone outlives the helper, held by that fd.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket

from privsep import _linux

__all__ = ["readonly_clone"]

_ATTRS = _linux.MOUNT_ATTR_RDONLY | _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV


def _clone(dir_fd: int) -> int:
    # Recursive: the view must show what the host path shows. Without the mounts below it, a
    # lookup would find what a mount covers on the host (a shadowed directory, the file under a
    # bind-mounted file) instead of what is mounted there.
    tree = _linux.open_tree_clone(dir_fd)
    try:
        _linux.mount_setattr_fd_recursive(tree, _ATTRS)
    except BaseException:
        os.close(tree)
        raise
    return tree


def readonly_clone(path: str) -> int:
    """An fd of a detached, read-only copy of the directory ``path`` (OSError if impossible)."""
    if os.geteuid() == 0:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _clone(fd)
        finally:
            os.close(fd)
    return _via_helper(path)


def _via_helper(path: str) -> int:
    uid, gid = os.geteuid(), os.getegid()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - a throw-away helper; its result is checked by the caller
        code = 1
        try:
            mine.close()
            _linux.unshare(_linux.CLONE_NEWUSER | _linux.CLONE_NEWNS)
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", f"{uid} {uid} 1\n"),
                ("gid_map", f"{gid} {gid} 1\n"),
            ):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            # Looked up again inside the new namespace: a clone needs a mount of its own namespace.
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            socket.send_fds(theirs, [b"ok"], [_clone(fd)])
            code = 0
        except BaseException as exc:
            err = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EPERM
            with contextlib.suppress(OSError):
                theirs.send(f"err {err}".encode())
        finally:
            os._exit(code)
    theirs.close()
    try:
        message, fds, _flags, _addr = socket.recv_fds(mine, 64, 1)
    finally:
        mine.close()
        os.waitpid(pid, 0)
    if message == b"ok" and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    code = int(message.split()[1]) if message.startswith(b"err ") else errno.EPERM
    raise OSError(code, f"cannot make a read-only view of {path}: {os.strerror(code)}")
