"""A root broker's file operations done as the grant's owner, on the calling thread only.

A kernel-served grant is an idmapped bind: the child acts there as the grant's
owner would, and the kernel checks every directory and file on the way. A
broker-served operation (``privsep.client``, a transparently brokered open)
is made by the broker, and a root broker would make it as root: reading
through another user's 0700 directory, removing root's files, leaving
root-owned files behind. So, for the length of one operation, the calling
thread's file-system ids become the owner's and its supplementary groups
none (``setfsuid``/``setfsgid``/``setgroups`` as raw system calls: per
thread in the kernel, unlike glibc's wrappers, which apply to every
thread). A file-system uid other than 0 also clears the thread's file
capabilities (``CAP_DAC_OVERRIDE``, ``CAP_FOWNER``...), so the kernel checks
exactly what it would check for the owner, and creates files as the owner.
Back to 0, they return.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from privsep.errors import ConfinementError

_libc = ctypes.CDLL(None, use_errno=True)
_NR_SETGROUPS, _NR_SETRESUID, _NR_SETRESGID, _NR_SETFSUID, _NR_SETFSGID = 116, 117, 119, 122, 123
_KEEP = 0xFFFFFFFF  # setresuid/setresgid: leave this one as it is
_UNCHANGED = 0xFFFFFFFF  # an id the call refuses: it then only returns the current one


def _fs(nr: int, value: int) -> int:
    """setfsuid/setfsgid: returns the previous id (the calls report no error)."""
    return int(_libc.syscall(nr, ctypes.c_uint(value)))


def _setgroups(groups: list[int]) -> None:
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    if _libc.syscall(_NR_SETGROUPS, ctypes.c_size_t(len(groups)), array) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def acting_as(uid: int, gid: int) -> Iterator[None]:
    """Within the block, this thread's file operations are the given owner's (uid < 0: unchanged)."""
    if uid < 0 or (uid, gid) == (0, 0):
        yield  # not a root broker, or a grant root owns: the broker already acts as its owner
        return
    groups = os.getgroups()
    _setgroups([])
    _fs(_NR_SETFSGID, gid)
    _fs(_NR_SETFSUID, uid)
    try:
        if _fs(_NR_SETFSUID, _UNCHANGED) != uid or _fs(_NR_SETFSGID, _UNCHANGED) != gid:
            raise ConfinementError("identity", f"could not act as uid {uid} gid {gid} for a file operation")
        yield
    finally:
        _fs(_NR_SETFSUID, 0)
        _fs(_NR_SETFSGID, 0)
        _setgroups(groups)


def current_uid() -> int:
    """The uid this thread's file operations run as now (the grant's owner inside ``acting_as``)."""
    return _fs(_NR_SETFSUID, _UNCHANGED)


#: The host uid and gid of the sandbox a broker request is served for, when they are not the
#: broker's (a root broker's sandbox runs as an id of its own); set around each request.
sandbox_ids: ContextVar[tuple[int, int] | None] = ContextVar("sandbox_ids", default=None)


def _res(nr: int, effective: int) -> None:
    if _libc.syscall(nr, ctypes.c_uint(_KEEP), ctypes.c_uint(effective), ctypes.c_uint(_KEEP)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def seen_as(ids: tuple[int, int] | None) -> Iterator[None]:
    """Within the block, this thread's credentials as a peer sees them (``SO_PEERCRED``) are ``ids``.

    A unix connect the broker makes for a sandbox records the connecting thread's
    effective ids: a root broker would hand a daemon that trusts its peer's uid (D-Bus,
    polkit, ``auth_socket``) a root peer. Only the effective ids change, on this thread
    (raw ``setresuid``/``setresgid``); the file-system uid goes back to 0 at once, so the
    path is still resolved with the broker's rights (the policy granted it).
    """
    if ids is None or os.geteuid() != 0:
        yield
        return
    uid, gid = ids
    groups = os.getgroups()
    _setgroups([])
    _res(_NR_SETRESGID, gid)
    try:
        _res(_NR_SETRESUID, uid)
        try:
            _fs(_NR_SETFSUID, 0)  # the file capabilities come back with it
            _fs(_NR_SETFSGID, 0)
            yield
        finally:
            _res(_NR_SETRESUID, 0)
            _fs(_NR_SETFSUID, 0)
    finally:
        _res(_NR_SETRESGID, 0)
        _fs(_NR_SETFSGID, 0)
        _setgroups(groups)
