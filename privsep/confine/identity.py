"""Dropping identity: groups, uid/gid, every capability set, securebits, no_new_privs.

Order matters. The bounding set can only be dropped while CAP_SETPCAP is
held, so it goes first; securebits are locked before the uid change so no
later setuid can regain root's capabilities; the parent-death signal is set
last, because the kernel clears it on every credential change.
"""

from __future__ import annotations

import os
import signal

import prctl

from privsep import _linux
from privsep.errors import ConfinementError

#: The unprivileged id the child runs as, in both modes: as root the real
#: "nobody"; without root, the id the user namespace maps to the broker's uid.
SANDBOX_ID = 65534

#: noroot, no_setuid_fixup (off), keep_caps (off), no_cap_ambient_raise: set and locked.
#: Raw bits: python-prctl predates the ambient ones and refuses them.
_SECUREBITS = (
    prctl.SECBIT_NOROOT
    | prctl.SECBIT_NOROOT_LOCKED
    | prctl.SECBIT_NO_SETUID_FIXUP_LOCKED
    | prctl.SECBIT_KEEP_CAPS_LOCKED
    | (1 << 6)  # SECBIT_NO_CAP_AMBIENT_RAISE
    | (1 << 7)  # SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
)


def drop_identity(*, in_user_namespace: bool, parent_pid: int) -> None:
    """Become SANDBOX_ID with no capabilities, for good; raise ConfinementError otherwise."""
    step = "identity"
    try:
        last = _linux.cap_last_cap()
        for cap in range(last + 1):
            _linux.prctl(_linux.PR_CAPBSET_DROP, cap)
        _linux.prctl(_linux.PR_CAP_AMBIENT, _linux.PR_CAP_AMBIENT_CLEAR_ALL)
        _linux.prctl(_linux.PR_SET_SECUREBITS, _SECUREBITS)
        if not in_user_namespace:
            # In a user namespace setgroups is denied (we wrote "deny" to
            # /proc/self/setgroups before mapping ids); the broker's own
            # groups there show as the overflow gid and grant nothing new.
            os.setgroups([])
        os.setresgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)
        os.setresuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)
        _linux.capset_empty()
        prctl.set_no_new_privs(1)
        prctl.set_dumpable(0)
        prctl.set_pdeathsig(signal.SIGKILL)
    except OSError as exc:
        raise ConfinementError(step, f"{exc.strerror} (errno {exc.errno})") from None
    # Verify rather than trust: a kernel or library surprise must not fail open.
    if os.getresuid() != (SANDBOX_ID,) * 3 or os.getresgid() != (SANDBOX_ID,) * 3:
        raise ConfinementError(step, "uid/gid did not change")
    if any(_linux.capget()):
        raise ConfinementError(step, "capabilities remain after capset")
    if any(_linux.prctl(_linux.PR_CAPBSET_READ, cap) for cap in range(last + 1)):
        raise ConfinementError(step, "the bounding set is not empty")
    if _linux.prctl(_linux.PR_GET_SECUREBITS) != _SECUREBITS:
        raise ConfinementError(step, "securebits are not set and locked")
    if not prctl.get_no_new_privs():
        raise ConfinementError(step, "no_new_privs is not set")
    if os.getppid() != parent_pid:
        # The parent died before the death signal was armed: nobody would kill us.
        raise ConfinementError(step, "the parent exited during set-up")
