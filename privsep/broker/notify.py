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

Transparent brokering (``transparent.py``) answers the calls it serves with
an fd the broker opened or connected itself, injected into the child
(SECCOMP_IOCTL_NOTIF_ADDFD), or with an error. It reads the arguments from
the child's memory once and checks that the notification is still live
afterwards (SECCOMP_IOCTL_NOTIF_ID_VALID), so the pid it read from was the
caller's.

CONTINUE is sent in two cases only, and neither is a security decision:
``privsep learn``, which is permissive by definition (it allows every call
outside the dangerous set whatever its arguments, and everything else still
confines the child), and ``hand_back``: a transparent call the broker does
not serve (a path inside the child's own view, a unix socket), which then
runs exactly as if the filter had allowed it, under the mount namespace and
Landlock, whatever the child writes into its buffers meanwhile.
If the broker is gone, the kernel fails a pending call with ENOSYS.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from privsep import _linux

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass

# struct seccomp_notif { u64 id; u32 pid; u32 flags;
#                        struct seccomp_data { s32 nr; u32 arch; u64 ip; u64 args[6]; } }
_NOTIF = struct.Struct("=QIIiIQ6Q")
_IOC_RECV = 0xC0502100  # SECCOMP_IOCTL_NOTIF_RECV
_IOC_SEND = 0xC0182101  # SECCOMP_IOCTL_NOTIF_SEND
# struct seccomp_notif_resp { u64 id; s64 val; s32 error; u32 flags; }
_RESP = struct.Struct("=QqiI")
_FLAG_CONTINUE = 1  # SECCOMP_USER_NOTIF_FLAG_CONTINUE: see the module docstring
_IOC_ID_VALID = 0x40082102  # SECCOMP_IOCTL_NOTIF_ID_VALID
_ID = struct.Struct("=Q")
_IOC_ADDFD = 0x40182103  # SECCOMP_IOCTL_NOTIF_ADDFD
# struct seccomp_notif_addfd { u64 id; u32 flags; u32 srcfd; u32 newfd; u32 newfd_flags; }
_ADDFD = struct.Struct("=QIIII")
_ADDFD_FLAG_SETFD = 1  # put the fd at newfd (replacing what is there), as dup2 would
_ADDFD_FLAG_SEND = 2  # and answer the call with the new fd number, atomically
_IOC_SET_FLAGS = 0x40082104  # SECCOMP_IOCTL_NOTIF_SET_FLAGS (Linux 6.6); its argument is the value
_FD_SYNC_WAKE_UP = 1  # SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
AUDIT_ARCH_X86_64 = _linux.AUDIT_ARCH_X86_64  # one home: _linux, the x86_64 ABI


class Notification(tuple[int, int, int, int, tuple[int, ...]]):
    """One call the filter sent: its id, pid, syscall number, arch and arguments.

    A tuple (built once per notification, it costs a quarter of a dataclass) with named
    parts, as a NamedTuple would be, without importing ``typing`` (``broker/events.py``).
    """

    __slots__ = ()

    def __new__(cls, id: int, pid: int, nr: int, arch: int, args: tuple[int, ...]) -> Notification:
        return tuple.__new__(cls, (id, pid, nr, arch, args))

    @property
    def id(self) -> int:
        return self[0]

    @property
    def pid(self) -> int:
        return self[1]

    @property
    def nr(self) -> int:
        return self[2]

    @property
    def arch(self) -> int:
        return self[3]

    @property
    def args(self) -> tuple[int, ...]:
        return self[4]


def set_sync_wakeup(listener: int) -> bool:
    """Ask for synchronous wake-ups on ``listener``; False when this kernel has none (before 6.6).

    With SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP the kernel wakes the broker on the
    CPU of the notifying thread, and the caller on the CPU of the broker when
    it answers (SECCOMP_IOCTL_NOTIF_SEND: a refusal, a hand-back, a swapped-in
    socket), instead of waking each on a CPU of its own: the two take turns,
    and a cross-CPU wake-up costs tens of microseconds on a VM. An answer by
    ADDFD_FLAG_SEND (an opened file) is woken as before: the kernel applies the
    flag to NOTIF_SEND only. A speed-up, never a confinement matter: without
    it every answer is the same, only slower.
    """
    try:
        fcntl.ioctl(listener, _IOC_SET_FLAGS, _FD_SYNC_WAKE_UP)
    except OSError:
        return False  # ENOTTY, EINVAL: an older kernel (no such ioctl, no such flag); EINTR: next time
    return True


def receive(listener: int) -> Notification | None:
    """One pending notification, or None when it vanished (the caller died meanwhile)."""
    buf = bytearray(_NOTIF.size)  # the kernel insists on a zeroed struct
    try:
        fcntl.ioctl(listener, _IOC_RECV, buf, True)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    fields = _NOTIF.unpack(buf)  # id, pid, flags, nr, arch, ip, args[6]
    return Notification(fields[0], fields[1], fields[3], fields[4], fields[6:])


def _send(listener: int, notification: Notification, error: int, flags: int, value: int = 0) -> None:
    resp = bytearray(_RESP.pack(notification.id, value, error, flags))
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


def hand_back(listener: int, notification: Notification) -> None:
    """Let a call the broker does not serve run under the child's own confinement (see above)."""
    _send(listener, notification, 0, _FLAG_CONTINUE)


def succeed(listener: int, notification: Notification, value: int = 0) -> None:
    """Answer the call with ``value`` (what the broker did on its behalf succeeded)."""
    _send(listener, notification, 0, 0, value)


def is_live(listener: int, notification: Notification) -> bool:
    """Whether the caller is still blocked in this call; after it, a pid read earlier was the caller's."""
    try:
        fcntl.ioctl(listener, _IOC_ID_VALID, bytearray(_ID.pack(notification.id)), True)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def inject_fd(listener: int, notification: Notification, fd: int, *, cloexec: bool) -> int:
    """Install ``fd`` in the caller and answer the call with its number, in one step.

    Returns the caller's fd number; raises OSError (EMFILE when the caller's
    table is full, ENOENT when it died meanwhile): the caller then gets nothing.
    """
    req = bytearray(_ADDFD.pack(notification.id, _ADDFD_FLAG_SEND, fd, 0, os.O_CLOEXEC if cloexec else 0))
    return int(fcntl.ioctl(listener, _IOC_ADDFD, req, True))


def replace_fd(listener: int, notification: Notification, fd: int, at_fd: int, *, cloexec: bool) -> None:
    """Put ``fd`` at the caller's fd number ``at_fd`` (the old file there is closed); no answer yet."""
    flags = os.O_CLOEXEC if cloexec else 0
    fcntl.ioctl(
        listener,
        _IOC_ADDFD,
        bytearray(_ADDFD.pack(notification.id, _ADDFD_FLAG_SETFD, fd, at_fd, flags)),
        True,
    )
