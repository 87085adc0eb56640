"""The seccomp layer, loaded: attach the filter the broker compiled (plan/filter.py), in the child.

The command's last step before execve. Compiling needs libseccomp and a
millisecond; loading is one ``seccomp()`` call on bytes the broker already
made, so this module imports nothing heavy and never libseccomp.
"""

from __future__ import annotations

import errno
import os

from privsep import _linux
from privsep.errors import ConfinementError

__all__ = ["load_filter"]


def load_filter(bpf: bytes, *, listener: bool) -> int | None:
    """Attach ``bpf`` to the calling thread (the child is single-threaded); irreversible.

    With ``listener=True`` returns the notification fd (close-on-exec, set by the kernel)
    that the child must hand to the broker before it execs; otherwise returns None.
    """
    if not bpf or len(bpf) % _linux.SOCK_FILTER.size:
        raise ConfinementError("seccomp", f"not a BPF program: {len(bpf)} bytes")
    count = len(bpf) // _linux.SOCK_FILTER.size
    if count > _linux.BPF_MAXINSNS:
        raise ConfinementError("seccomp", f"filter has {count} instructions, over {_linux.BPF_MAXINSNS}")
    if _linux.prctl(_linux.PR_GET_NO_NEW_PRIVS) != 1:
        # Root could load a filter without it, but then a setuid exec could shed the
        # rest of the confinement: we never rely on privilege to skip this.
        raise ConfinementError(
            "seccomp",
            "no_new_privs is not set; call prctl(PR_SET_NO_NEW_PRIVS, 1) before loading the filter",
        )
    flags = _linux.SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0
    try:
        fd = _linux.seccomp_set_mode_filter(bpf, flags)
    except OSError as exc:
        err = exc.errno or 0
        name = errno.errorcode.get(err, str(err))
        raise ConfinementError(
            "seccomp", f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {name} ({os.strerror(err)})"
        ) from None
    return fd if listener else None
