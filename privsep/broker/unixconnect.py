"""A child's ``connect()`` of a unix socket, performed by the broker on the child's own socket.

Rule 2 of DESIGN: a notification is never answered "continue" for a security
decision. Handing a unix connect back to the kernel would be one: the broker
checked the socket at fd N (a copy made with ``pidfd_getfd``), but the kernel
would look fd N up again, and a second thread could have put another socket
there meanwhile (one the broker made in the host's network namespace) and
rewritten the address. So the broker connects the very socket it checked
(its copy shares the child's open file description), to an address it read
once into its own memory:

- an abstract name, an unnamed address or ``AF_UNSPEC``: passed on byte for
  byte. The kernel looks abstract names up in the *socket's* network
  namespace, which is the child's own.
- a pathname: resolved in the child's view, never the broker's. The path is
  opened ``O_PATH`` beneath the caller's root (``/proc/TID/root`` with
  ``RESOLVE_IN_ROOT``: symlinks and ``..`` stay inside it), and the socket is
  connected through ``/proc/self/fd/N``, so nothing is looked up twice.

What the kernel would have checked, the broker checks for the child:
the socket inode must be writable for the caller's fsuid/fsgid (the broker
may be root and bypass it), and a socket on a read-only mount is refused:
the child cannot have made it, so it is the host's (a daemon that created it
after the start, inside a read-only grant), reachable only through a
``[[files]]`` rule with ``connect``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct

from privsep import _linux
from privsep.broker.actas import seen_as

#: How long a connect to a socket whose backlog is full may hold a worker.
_TIMEOUT_S = 30
_TIMEVAL = struct.Struct("=qq")


class HostSocket(Exception):
    """The path names a socket the child did not make (on a read-only mount)."""


class Caller:
    """The caller's root and file-system ids, taken while its notification proved it alive.

    Taken at once, never later on a worker: by then the caller may be gone and its
    thread id reused by a host process, whose root is the host's ``/``.
    """

    __slots__ = ("gid", "root", "uid")

    def __init__(self, root: int, uid: int, gid: int) -> None:
        self.root = root  # an O_PATH fd of the caller's root directory
        self.uid = uid
        self.gid = gid

    def close(self) -> None:
        if self.root >= 0:
            os.close(self.root)
            self.root = -1


def capture(tid: int) -> Caller:
    """The caller's root and ids; check the notification is still live *after* this (see Caller)."""
    root = os.open(f"/proc/{tid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        uid, gid = _fs_ids(tid)
    except BaseException:
        os.close(root)
        raise
    return Caller(root, uid, gid)


def open_in_view(caller: Caller, path: str) -> int:
    """An O_PATH fd of the socket at ``path`` as the caller sees it; raises OSError or HostSocket."""
    fd = _linux.openat2(
        caller.root,
        path,
        os.O_PATH | os.O_CLOEXEC,
        0,
        _linux.RESOLVE_IN_ROOT | _linux.RESOLVE_NO_MAGICLINKS,
    )
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        if os.fstatvfs(fd).f_flag & os.ST_RDONLY:
            raise HostSocket(path)
        if not _writable(st, caller.uid, caller.gid):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fs_ids(tid: int) -> tuple[int, int]:
    """The caller's fsuid and fsgid as the broker sees them (what the kernel checks files against)."""
    uid = gid = -1
    with open(f"/proc/{tid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[4])
            elif line.startswith("Gid:"):
                gid = int(line.split()[4])
    if uid < 0 or gid < 0:
        raise OSError(errno.ESRCH, os.strerror(errno.ESRCH))
    return uid, gid


def _writable(st: os.stat_result, uid: int, gid: int) -> bool:
    """Write permission as the kernel grants it to a caller with no capability and no other group.

    Stricter than the kernel where a non-root broker's child keeps supplementary
    groups or an ACL would allow: such a connect is refused (never the other way).
    """
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def connect_through(sock: socket.socket, pathfd: int, ids: tuple[int, int] | None = None) -> int:
    """Connect ``sock`` to the socket inode behind ``pathfd``; 0 or the errno.

    ``ids``: the sandbox's host uid and gid, which the listening daemon sees as its peer
    (``SO_PEERCRED``) instead of a root broker's (actas.seen_as).
    """
    with seen_as(ids):
        return connect_bounded(sock, _sockaddr_un(f"/proc/self/fd/{pathfd}"))


def connect_bounded(sock: socket.socket, address: bytes) -> int:
    """``connect_raw`` whose wait (a full backlog, a blocking socket) ends after _TIMEOUT_S.

    The socket is the child's (shared file description): its send timeout is
    set only for the call and put back, so the child sees its own setting.
    """
    fd = sock.fileno()
    try:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.size)
    except OSError as exc:
        return exc.errno or errno.EIO
    seconds, micros = _TIMEVAL.unpack(before)
    bounded = (seconds, micros) != (0, 0) and seconds < _TIMEOUT_S
    if not bounded:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(_TIMEOUT_S, 0))
    try:
        err = _linux.connect_raw(fd, address)
    finally:
        if not bounded:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, before)
    return errno.ETIMEDOUT if err == errno.EAGAIN and not _nonblocking(fd) else err


def _nonblocking(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)


def _sockaddr_un(path: str) -> bytes:
    return struct.pack("=H", socket.AF_UNIX) + os.fsencode(path) + b"\0"


def sockaddr_path(address: bytes) -> str | None:
    """The pathname of an ``AF_UNIX`` sockaddr, as the kernel reads it; None when it names none.

    None: not ``AF_UNIX``, an abstract name (leading NUL) or no name at all;
    those are passed on to the kernel as they are.
    """
    if len(address) <= 2 or struct.unpack_from("=H", address)[0] != socket.AF_UNIX or address[2] == 0:
        return None
    raw = address[2:].split(b"\0", 1)[0]
    return os.fsdecode(raw)
