"""Seccomp user notifications: how the broker learns which syscall a child tried.

The filter sends the known-dangerous syscalls to the broker
(SECCOMP_RET_USER_NOTIF) instead of killing silently, so the broker can say
"killed on ptrace" rather than "killed by SIGSYS". The broker never answers
with SECCOMP_USER_NOTIF_FLAG_CONTINUE. For the dangerous set it does not
answer at all: it kills the sandbox, and the blocked call dies with it (an
error reply would let the child run on until the kill lands). If the broker
is gone, the kernel fails the call with ENOSYS.
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
