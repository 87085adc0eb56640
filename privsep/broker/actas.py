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

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

from privsep._linux import setfsgid, setfsuid, thread_setgroups, thread_setresgid, thread_setresuid
from privsep.errors import ConfinementError

_KEEP = 0xFFFFFFFF  # setresuid/setresgid: leave this one as it is
_UNCHANGED = 0xFFFFFFFF  # an id the call refuses: it then only returns the current one


#: What ``acting_as`` returns when there is nothing to switch (reusable: it holds no state).
_AS_ITSELF = nullcontext()


def switches(uid: int, gid: int) -> bool:
    """Whether ``acting_as(uid, gid)`` changes anything: not for a broker that is not root (uid < 0),
    nor for a grant root owns (the broker already acts as its owner)."""
    return uid >= 0 and (uid, gid) != (0, 0)


def acting_as(uid: int, gid: int) -> AbstractContextManager[None]:
    """Within the block, this thread's file operations are the given owner's (uid < 0: unchanged)."""
    return _switched(uid, gid) if switches(uid, gid) else _AS_ITSELF


@contextmanager
def _switched(uid: int, gid: int) -> Iterator[None]:
    groups = os.getgroups()
    thread_setgroups([])
    setfsgid(gid)
    setfsuid(uid)
    try:
        if setfsuid(_UNCHANGED) != uid or setfsgid(_UNCHANGED) != gid:
            raise ConfinementError("identity", f"could not act as uid {uid} gid {gid} for a file operation")
        yield
    finally:
        setfsuid(0)
        setfsgid(0)
        thread_setgroups(groups)


def current_uid() -> int:
    """The uid this thread's file operations run as now (the grant's owner inside ``acting_as``)."""
    return setfsuid(_UNCHANGED)


#: The host uid and gid of the sandbox a broker request is served for, when they are not the
#: broker's (a root broker's sandbox runs as an id of its own); set around each request.
sandbox_ids: ContextVar[tuple[int, int] | None] = ContextVar("sandbox_ids", default=None)


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
    thread_setgroups([])
    thread_setresgid(_KEEP, gid, _KEEP)
    try:
        thread_setresuid(_KEEP, uid, _KEEP)
        try:
            setfsuid(0)  # the file capabilities come back with it
            setfsgid(0)
            yield
        finally:
            thread_setresuid(_KEEP, 0, _KEEP)
            setfsuid(0)
    finally:
        thread_setresgid(_KEEP, 0, _KEEP)
        setfsgid(0)
        thread_setgroups(groups)
