"""Seccomp user notifications: how the broker learns which syscall a child tried.

The filter sends every syscall outside the allowlist to the broker
(SECCOMP_RET_USER_NOTIF) instead of failing or killing silently, so the
broker can say "killed on ptrace" rather than "killed by SIGSYS", and
"mbind was denied 3 times: add it to [syscalls] allow".

For the dangerous set (and for any call when the policy's default is
``kill``) the broker does not answer at all: it kills the sandbox, and the
blocked call dies with it. An error reply would let the child run on until
the kill lands. Any other call gets the policy's errno (EPERM or ENOSYS),
never SECCOMP_USER_NOTIF_FLAG_CONTINUE: a continued call would run with
arguments the child can change after the check.

The one exception is ``privsep learn``, which is permissive by definition:
it records the call and lets it run (``allow``). No security decision rests
on that answer, because learn mode allows every call outside the dangerous
set whatever its arguments, and everything else still confines the child.
If the broker is gone, the kernel fails a pending call with ENOSYS.
"""

from __future__ import annotations

import errno
import fcntl
import struct
from dataclasses import dataclass

# struct seccomp_notif { u64 id; u32 pid; u32 flags;
#                        struct seccomp_data { s32 nr; u32 arch; u64 ip; u64 args[6]; } }
_NOTIF = struct.Struct("=QIIiIQ6Q")
_IOC_RECV = 0xC0502100  # SECCOMP_IOCTL_NOTIF_RECV
_IOC_SEND = 0xC0182101  # SECCOMP_IOCTL_NOTIF_SEND
# struct seccomp_notif_resp { u64 id; s64 val; s32 error; u32 flags; }
_RESP = struct.Struct("=QqiI")
_FLAG_CONTINUE = 1  # SECCOMP_USER_NOTIF_FLAG_CONTINUE: learn mode only
AUDIT_ARCH_X86_64 = 0xC000003E


@dataclass(frozen=True)
class Notification:
    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, ...]


def receive(listener: int) -> Notification | None:
    """One pending notification, or None when it vanished (the caller died meanwhile)."""
    buf = bytearray(_NOTIF.size)  # the kernel insists on a zeroed struct
    try:
        fcntl.ioctl(listener, _IOC_RECV, buf, True)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
    return Notification(id=nid, pid=pid, nr=nr, arch=arch, args=tuple(args))


def _send(listener: int, notification: Notification, error: int, flags: int) -> None:
    resp = bytearray(_RESP.pack(notification.id, 0, error, flags))
    try:
        fcntl.ioctl(listener, _IOC_SEND, resp, True)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # the caller died meanwhile: nothing to answer
            raise


def refuse(listener: int, notification: Notification, err: int) -> None:
    """Fail the call with ``err`` (EPERM, ENOSYS): the enforcing answer."""
    _send(listener, notification, -err, 0)


def allow_for_learning(listener: int, notification: Notification) -> None:
    """Let the call run (``privsep learn`` only; see the module docstring for why that is sound)."""
    _send(listener, notification, 0, _FLAG_CONTINUE)
