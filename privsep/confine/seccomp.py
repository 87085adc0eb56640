"""The seccomp layer, loaded: attach the filter the broker compiled (plan/filter.py), in the child.

The command's last step before execve. Compiling needs libseccomp and a
millisecond; loading is one ``seccomp()`` call on bytes the broker already
made, so this module imports nothing heavy and never libseccomp.
"""

from __future__ import annotations

import ctypes
import errno
import os

from privsep.errors import ConfinementError
from privsep.plan.filter import BPF_MAXINSNS, SOCK_FILTER

__all__ = ["load_filter"]

# seccomp(2) and prctl(2) constants.
_NR_SECCOMP = 317  # x86_64
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
_PR_GET_NO_NEW_PRIVS = 39


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _load_libc() -> ctypes.CDLL:
    # dlopen(NULL) finds the libc already mapped into the process: no path search at all.
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    lib.prctl.restype = ctypes.c_int
    return lib


# Resolved at import, in the broker (and the forkserver): forked children inherit the handles
# instead of each paying ~0.2 ms for dlopen/dlsym on the start path.
_libc = _load_libc()


def load_filter(bpf: bytes, *, listener: bool) -> int | None:
    """Attach ``bpf`` to the calling thread (the child is single-threaded); irreversible.

    With ``listener=True`` returns the notification fd (close-on-exec, set by the kernel)
    that the child must hand to the broker before it execs; otherwise returns None.
    """
    if not bpf or len(bpf) % SOCK_FILTER.size:
        raise ConfinementError("seccomp", f"not a BPF program: {len(bpf)} bytes")
    count = len(bpf) // SOCK_FILTER.size
    if count > BPF_MAXINSNS:
        raise ConfinementError("seccomp", f"filter has {count} instructions, over {BPF_MAXINSNS}")
    libc = _libc
    nnp = libc.prctl(
        ctypes.c_int(_PR_GET_NO_NEW_PRIVS),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    if nnp != 1:
        # Root could load a filter without it, but then a setuid exec could shed the
        # rest of the confinement: we never rely on privilege to skip this.
        raise ConfinementError(
            "seccomp",
            "no_new_privs is not set; call prctl(PR_SET_NO_NEW_PRIVS, 1) before loading the filter",
        )
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(count, ctypes.addressof(buf))
    flags = _SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0
    ctypes.set_errno(0)
    rc = libc.syscall(
        ctypes.c_long(_NR_SECCOMP),
        ctypes.c_ulong(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_ulong(flags),
        ctypes.byref(prog),
    )
    if rc < 0:
        err = ctypes.get_errno()
        name = errno.errorcode.get(err, str(err))
        raise ConfinementError(
            "seccomp", f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {name} ({os.strerror(err)})"
        )
    return int(rc) if listener else None
