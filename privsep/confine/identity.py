"""Identity: the host id a sandbox runs as, and dropping everything else (groups, every
capability set, securebits, no_new_privs).

Every sandbox runs as SANDBOX_ID (65534) inside a user namespace of its own
that maps it to one host id. Without root, init is cloned into that namespace
and maps the broker's own uid (:func:`map_ids`). With root, the id is one
:mod:`privsep.plan.hostids` claimed for this sandbox alone, and init enters the
namespace only after it has built the view (:func:`enter_user_namespace`),
so the mounts are made, and idmapped, with the host privilege they need.
Init drops everything (:func:`drop_identity`) before it forks the command,
which keeps what it inherits and checks it (:func:`keep_identity`).

Order matters. The bounding set can only be dropped while CAP_SETPCAP is
held, so it goes first; securebits are locked before the uid change so no
later setuid can regain root's capabilities; the parent-death signal is set
last, because the kernel clears it on every credential change.
"""

from __future__ import annotations

import os

import _prctl  # python-prctl's C module: its Python wrapper costs ~1 ms of every start to import

from privsep import _linux, _signals
from privsep.errors import ConfinementError
from privsep.plan.spawnplan import SANDBOX_ID

#: noroot, no_setuid_fixup (off), keep_caps (off), no_cap_ambient_raise: set and locked.
#: Raw bits: python-prctl predates the ambient ones and refuses them.
_SECUREBITS = (
    _prctl.SECBIT_NOROOT
    | _prctl.SECBIT_NOROOT_LOCKED
    | _prctl.SECBIT_NO_SETUID_FIXUP_LOCKED
    | _prctl.SECBIT_KEEP_CAPS_LOCKED
    | (1 << 6)  # SECBIT_NO_CAP_AMBIENT_RAISE
    | (1 << 7)  # SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
)


def map_ids(uid: int, gid: int) -> None:
    """Map SANDBOX_ID to host ``uid``/``gid`` in this process's new user namespace; every other
    id is unmapped. Needs no privilege: this process's own euid and egid are ``uid`` and ``gid``
    (which also requires setgroups to be denied, so it is)."""
    try:
        for name, content in (
            ("setgroups", "deny"),
            ("uid_map", f"{SANDBOX_ID} {uid} 1\n"),
            ("gid_map", f"{SANDBOX_ID} {gid} 1\n"),
        ):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, content.encode())
            finally:
                os.close(fd)
    except OSError as exc:
        raise ConfinementError("namespaces", f"writing the user namespace id maps: {exc.strerror}") from None


def enter_user_namespace(host_id: int) -> None:
    """Root broker, in init once the view is built: become ``host_id`` (uid and gid) on the host,
    with no supplementary group, inside a new user namespace where it shows as SANDBOX_ID.

    The namespace is created by ``host_id`` itself, not by root: the kernel
    charges the per-user counters of everything inside a user namespace
    (processes, inotify instances, message-queue bytes, pending signals) to
    its owner as well. Owned by root, every sandbox would add up with root's
    own processes and with each other again.

    CAP_SYS_ADMIN is kept (effective) across the uid change only for the
    creation itself: a privileged creation is not subject to the switches some
    distributions put on unprivileged user namespaces. Inside, the process has
    every capability of the new namespace, which owns nothing (the mount, pid
    and other namespaces belong to the host's): :func:`drop_identity` then drops them.
    """
    if host_id in (0, SANDBOX_ID):
        raise ConfinementError("identity", f"refusing to run a sandbox as host id {host_id}")
    try:
        os.setgroups([])
        os.setresgid(host_id, host_id, host_id)
        _prctl.prctl(_prctl.PR_SET_KEEPCAPS, True)
        os.setresuid(host_id, host_id, host_id)
        admin = 1 << _linux.CAP_SYS_ADMIN
        _linux.capset(effective=admin, permitted=admin)  # and nothing else
        # A change of credentials made us non-dumpable, which makes /proc/self/*_map root's.
        _prctl.prctl(_prctl.PR_SET_DUMPABLE, True)
        _linux.unshare(_linux.CLONE_NEWUSER)
    except OSError as exc:
        raise ConfinementError(
            "identity", f"entering a user namespace as {host_id}: {exc.strerror}"
        ) from None
    map_ids(host_id, host_id)
    # Not dumpable again before the command (the same uid now) exists.
    _prctl.prctl(_prctl.PR_SET_DUMPABLE, False)


def drop_identity(*, parent_pid: int) -> None:
    """Become SANDBOX_ID with no capabilities, for good; raise ConfinementError otherwise.

    Runs inside the sandbox's user namespace, where setgroups is denied: a root
    broker's init cleared the groups before entering it; a non-root broker's
    own groups stay attached (SECURITY.md, known limits).
    """
    step = "identity"
    try:
        last = _linux.cap_last_cap()
        for cap in range(last + 1):
            _linux.prctl(_linux.PR_CAPBSET_DROP, cap)
        _linux.prctl(_linux.PR_CAP_AMBIENT, _linux.PR_CAP_AMBIENT_CLEAR_ALL)
        _linux.prctl(_linux.PR_SET_SECUREBITS, _SECUREBITS)
        os.setresgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)
        os.setresuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)
        _linux.capset_empty()
        _prctl.prctl(_prctl.PR_SET_NO_NEW_PRIVS, 1)
        _prctl.prctl(_prctl.PR_SET_DUMPABLE, 0)
        _prctl.prctl(_prctl.PR_SET_PDEATHSIG, _signals.SIGKILL)
    except OSError as exc:
        raise ConfinementError(step, f"{exc.strerror} (errno {exc.errno})") from None
    _verify(parent_pid)


def keep_identity(*, parent_pid: int) -> None:
    """The command, forked by init once init has dropped its identity: the same one, checked.

    A fork copies every credential, so nothing is left to drop; the parent-death
    signal is the exception (fork clears it), armed again before the check that
    the parent still lives.
    """
    try:
        _prctl.prctl(_prctl.PR_SET_PDEATHSIG, _signals.SIGKILL)
    except OSError as exc:
        raise ConfinementError("identity", f"{exc.strerror} (errno {exc.errno})") from None
    _verify(parent_pid)


def _verify(parent_pid: int) -> None:
    """Verify rather than trust: a kernel or library surprise must not fail open."""
    step = "identity"
    last = _linux.cap_last_cap()
    if os.getresuid() != (SANDBOX_ID,) * 3 or os.getresgid() != (SANDBOX_ID,) * 3:
        raise ConfinementError(step, "uid/gid did not change")
    if any(_linux.capget()):
        raise ConfinementError(step, "capabilities remain after capset")
    if any(_linux.prctl(_linux.PR_CAPBSET_READ, cap) for cap in range(last + 1)):
        raise ConfinementError(step, "the bounding set is not empty")
    if _linux.prctl(_linux.PR_GET_SECUREBITS) != _SECUREBITS:
        raise ConfinementError(step, "securebits are not set and locked")
    if not _prctl.prctl(_prctl.PR_GET_NO_NEW_PRIVS):
        raise ConfinementError(step, "no_new_privs is not set")
    if _prctl.prctl(_prctl.PR_GET_DUMPABLE):
        raise ConfinementError(step, "the process is still dumpable")
    if os.getppid() != parent_pid:
        # The parent died before the death signal was armed: nobody would kill us.
        raise ConfinementError(step, "the parent exited during set-up")
