"""``privsep doctor``: what this kernel offers, and which layers ``privsep run`` applies here.

privsep fails closed: a layer it cannot apply stops the run (exit 125). The
doctor says in advance which ones would, and why, with the fix. It probes
rather than guesses from version numbers: what could change the process
(unsharing namespaces, loading a seccomp filter, dropping to uid 65534) is
tried in a forked child that exits at once; then a real sandbox runs
``/usr/bin/true`` under the ``minimal`` policy, which is the final word.

Two halves: :func:`probe` gathers :class:`Facts` (touches the kernel),
:func:`layers` turns facts into the verdict (pure, so it is tested with
made-up kernels). Exit status of ``privsep doctor``: 0 when every layer
``privsep run`` needs is available, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pwd
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from privsep import _linux, _stdout, cgroups
from privsep._assemble import assemble, plan_for
from privsep.broker import notify
from privsep.confine import identity
from privsep.confine.landlock import MIN_ABI
from privsep.confine.seccomp import load_filter
from privsep.errors import ConfinementError, PrivsepError
from privsep.plan import hostids, spawnplan
from privsep.policy.load import load_policy

__all__ = ["Facts", "Layer", "doctor_command", "layers", "probe", "render_text"]

#: What each Landlock ABI adds (the kernel's own list, include/uapi/linux/landlock.h).
LANDLOCK_FEATURES: tuple[tuple[int, str], ...] = (
    (1, "filesystem"),
    (2, "refer"),
    (3, "truncate"),
    (4, "TCP bind/connect"),
    (5, "device ioctl"),
    (6, "signal and abstract-unix-socket scopes"),
    (7, "audit logging"),
)
NAMESPACES = (
    ("mount", _linux.CLONE_NEWNS),
    ("pid", _linux.CLONE_NEWPID),
    ("net", _linux.CLONE_NEWNET),
    ("ipc", _linux.CLONE_NEWIPC),
    ("uts", _linux.CLONE_NEWUTS),
    ("cgroup", _linux.CLONE_NEWCGROUP),
)
_ALLOW_ALL_BPF = _linux.SOCK_FILTER.pack(_linux.BPF_RET_K, 0, 0, _linux.SECCOMP_RET_ALLOW)


@dataclass(frozen=True)
class Probe:
    """The outcome of trying one thing: ``error`` is None when it worked."""

    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Facts:
    """Everything the verdict depends on; gathered by :func:`probe`."""

    kernel: str
    machine: str
    euid: int
    landlock_abi: int
    landlock_lsm: bool | None
    """'landlock' is in /sys/kernel/security/lsm; None when that file cannot be read."""
    seccomp_actions: tuple[str, ...] | None
    """/proc/sys/kernel/seccomp/actions_avail; None when it does not exist."""
    seccomp_filter: Probe
    seccomp_listener: Probe
    max_user_namespaces: int | None
    seccomp_sync_wakeup: Probe = Probe()
    """SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP on a listener (Linux 6.6): optional, a speed-up."""
    userns_sysctls: dict[str, int] = field(default_factory=dict)
    """Distribution switches that restrict unprivileged user namespaces, when present."""
    namespaces: Probe = Probe()
    """unshare() of exactly what ``privsep run`` unshares here (with a user namespace when not root)."""
    unprivileged_userns: Probe = Probe()
    """An unprivileged process (uid 65534 when probed as root) could create a user namespace."""
    cgroup: str = "none"
    """The cgroup file systems mounted: v1, v2, hybrid or none."""
    cgroup_detail: str = ""
    cgroup_version: str = ""
    """The version privsep makes sandboxes' cgroups with here (v1 or v2); "" when it cannot."""
    cgroup_use: Probe = Probe()
    """Whether privsep can make a cgroup per sandbox here (beneath its own, writable)."""
    cgroup_limits: str = ""
    """Where and what a sandbox's cgroup limits, when it can."""
    openat2: Probe = Probe()
    pidfd: Probe = Probe()
    close_range: Probe = Probe()
    mount_setattr: Probe = Probe()
    host_ids: Probe = Probe()
    """Root: the range checked, an id claimed, a user namespace entered as it (in a child)."""
    host_id_range: str = ""
    """Root: the range and where it was configured, e.g. "2000000000-2000065535 (the default)"."""
    host_ids_claimed: int = 0
    """Root: ids of the range live sandboxes hold now."""
    host_ids_stale: int = 0
    """Root: lock files killed brokers left (free ids, reused when picked)."""
    subordinate_ids: int = 0
    """Not root: how many subordinate uids /etc/subuid grants this user (privsep does not use them)."""
    trial: Probe | None = None
    """A real sandbox ran /usr/bin/true; None when not tried."""
    trial_seconds: float = 0.0


@dataclass(frozen=True)
class Layer:
    """One row of the verdict."""

    name: str
    applied: bool
    detail: str
    required: bool = True
    word: str = "applied"
    """What ``applied`` is called in this row ("ok" for the trial run)."""

    @property
    def status(self) -> str:
        if self.applied:
            return self.word
        if self.required:
            return "missing: privsep run will refuse to start"
        return "absent"


# --- probing -------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConfinementError):
        return exc.reason
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({os.strerror(exc.errno)})"
    return f"{type(exc).__name__}: {exc}"


def _in_child(fn: Callable[[], None]) -> Probe:
    """Run ``fn`` in a forked child, which exits at once: nothing it changes reaches this process."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        code = 0
        try:
            os.close(r)
            try:
                fn()
            except BaseException as exc:
                os.write(w, _reason(exc).encode()[:1000] or b"failed")
                code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0 and not message:
        return Probe()
    return Probe(message or f"the probe ended with wait status {status}")


def _in_process(fn: Callable[[], None]) -> Probe:
    try:
        fn()
    except (OSError, PrivsepError) as exc:
        return Probe(_reason(exc))
    return Probe()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _unshare(flags: int) -> Callable[[], None]:
    return lambda: _linux.unshare(flags)


def _drop_then_unshare_user() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(spawnplan.SANDBOX_ID, spawnplan.SANDBOX_ID, spawnplan.SANDBOX_ID)
        os.setresuid(spawnplan.SANDBOX_ID, spawnplan.SANDBOX_ID, spawnplan.SANDBOX_ID)
    _linux.unshare(_linux.CLONE_NEWUSER)


def _seccomp(listener: bool) -> Callable[[], None]:
    def load() -> None:
        _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
        fd = load_filter(_ALLOW_ALL_BPF, listener=listener)
        if listener and fd is None:
            raise OSError(errno.EINVAL, "no listener fd")

    return load


def _seccomp_sync_wakeup() -> None:
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    fd = load_filter(_ALLOW_ALL_BPF, listener=True)
    if fd is None:
        raise OSError(errno.EINVAL, "no listener fd")
    if not notify.set_sync_wakeup(fd):  # what the broker does with each sandbox's listener
        raise OSError(errno.ENOSYS, "SECCOMP_IOCTL_NOTIF_SET_FLAGS refused")


def _openat2() -> None:
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        resolve = _linux.RESOLVE_BENEATH | _linux.RESOLVE_NO_MAGICLINKS | _linux.RESOLVE_NO_SYMLINKS
        os.close(_linux.openat2(root, ".", os.O_PATH | os.O_CLOEXEC, 0, resolve))
    finally:
        os.close(root)


def _pidfd() -> None:
    fd = os.pidfd_open(os.getpid())
    try:
        signal.pidfd_send_signal(fd, 0)
    finally:
        os.close(fd)


def _close_range() -> None:
    high = 0x7FFFFFF0  # no process has this fd open: closing it is a no-op
    _linux.close_range(high, high)


def _mount_setattr() -> None:
    # Setting and clearing nothing returns before any lookup: it only tells the call exists.
    try:
        _linux.mount_setattr_recursive("/", 0)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            raise
        # EPERM (no CAP_SYS_ADMIN here) still means the kernel knows the call.


def _cgroup() -> tuple[str, str]:
    text = _read("/proc/self/mounts") or ""
    v1: list[str] = []
    v2: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("cgroup", "cgroup2"):
            (v2 if parts[2] == "cgroup2" else v1).append(parts[1])
    if v2 and not v1:
        return "v2", f"unified hierarchy at {', '.join(v2)}"
    if v2 and v1:
        return "hybrid", f"v1 controllers at /sys/fs/cgroup/*, v2 at {', '.join(v2)}"
    if v1:
        return "v1", f"{len(v1)} v1 hierarchies"
    return "none", "no cgroup file system is mounted"


def _host_ids(facts: Facts) -> Facts:
    """Root: the host id range and its claims; an id is claimed, then entered in a forked child."""
    try:
        ids = hostids.current_range()
    except PrivsepError as exc:
        return dataclasses.replace(facts, host_ids=Probe(_reason(exc)))
    facts = dataclasses.replace(facts, host_id_range=f"{ids} ({ids.source})")
    try:
        held = hostids.claim(ids)
    except PrivsepError as exc:
        return dataclasses.replace(facts, host_ids=Probe(_reason(exc)))
    try:
        entered = _in_child(lambda: identity.enter_user_namespace(held.id))
    finally:
        held.release()
    claimed, stale = hostids.census(ids)
    return dataclasses.replace(facts, host_ids=entered, host_ids_claimed=claimed, host_ids_stale=stale)


def _subordinate_ids(euid: int, path: str = "/etc/subuid") -> int:
    """How many subordinate ids ``path`` grants ``euid`` (by name or number, as newuidmap reads it)."""
    try:
        names = {str(euid), pwd.getpwuid(euid).pw_name}
    except KeyError:
        names = {str(euid)}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    total = 0
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in names and parts[2].isdigit():
            total += int(parts[2])
    return total


def _cgroup_use() -> tuple[str, Probe, str]:
    """The version privsep would use here, whether it can, and what it limits."""
    try:
        found = cgroups.host()
    except ConfinementError as exc:
        return "", Probe(exc.reason), ""
    return found.version, Probe(), found.describe()


def _trial() -> tuple[Probe, float]:
    """Start a real sandbox: the minimal policy running /usr/bin/true, stdio on /dev/null."""
    start = time.monotonic()
    true = next((p for p in ("/usr/bin/true", "/bin/true") if os.access(p, os.X_OK)), None)
    if true is None:
        return Probe("no /usr/bin/true to run"), 0.0
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        policy = load_policy("minimal")
        plan = plan_for(policy, [true])
        with assemble(policy) as parts:
            outcome = parts.broker.wait(parts.start(plan, timeout=30, stdio=(devnull,) * 3))
    except PrivsepError as exc:
        return Probe(str(exc)), time.monotonic() - start
    finally:
        os.close(devnull)
    elapsed = time.monotonic() - start
    if outcome.returncode != 0:
        return Probe(outcome.describe() or f"it exited {outcome.returncode}"), elapsed
    return Probe(), elapsed


def probe(*, trial: bool = True) -> Facts:
    """Find out what this kernel and this process can do (forks short-lived children)."""
    uname = os.uname()
    euid = os.geteuid()
    lsm = _read("/sys/kernel/security/lsm")
    actions = _read("/proc/sys/kernel/seccomp/actions_avail")
    flags = 0
    for _, flag in NAMESPACES:
        flags |= flag
    if euid != 0:
        flags |= _linux.CLONE_NEWUSER
    sysctls = {}
    for name, path in (
        ("kernel.unprivileged_userns_clone", "/proc/sys/kernel/unprivileged_userns_clone"),
        (
            "kernel.apparmor_restrict_unprivileged_userns",
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        ),
    ):
        value = _read_int(path)
        if value is not None:
            sysctls[name] = value
    cgroup, cgroup_detail = _cgroup()
    cgroup_version, cgroup_use, cgroup_limits = _cgroup_use()
    facts = Facts(
        kernel=uname.release,
        machine=uname.machine,
        euid=euid,
        landlock_abi=_linux.landlock_abi_version(),
        landlock_lsm=None if lsm is None else "landlock" in lsm.split(","),
        seccomp_actions=None if actions is None else tuple(actions.split()),
        seccomp_filter=_in_child(_seccomp(listener=False)),
        seccomp_listener=_in_child(_seccomp(listener=True)),
        seccomp_sync_wakeup=_in_child(_seccomp_sync_wakeup),
        max_user_namespaces=_read_int("/proc/sys/user/max_user_namespaces"),
        userns_sysctls=sysctls,
        namespaces=_in_child(_unshare(flags)),
        unprivileged_userns=_in_child(_drop_then_unshare_user),
        cgroup=cgroup,
        cgroup_detail=cgroup_detail,
        cgroup_version=cgroup_version,
        cgroup_use=cgroup_use,
        cgroup_limits=cgroup_limits,
        openat2=_in_process(_openat2),
        pidfd=_in_process(_pidfd),
        close_range=_in_process(_close_range),
        mount_setattr=_in_process(_mount_setattr),
    )
    if euid == 0:
        facts = _host_ids(facts)
    else:
        facts = dataclasses.replace(facts, subordinate_ids=_subordinate_ids(euid))
    if trial:
        result, seconds = _trial()
        facts = dataclasses.replace(facts, trial=result, trial_seconds=seconds)
    return facts


# --- the verdict (pure) --------------------------------------------------------------------------


def _landlock_features(abi: int) -> list[str]:
    return [name for version, name in LANDLOCK_FEATURES if version <= abi]


def _userns_fix(facts: Facts) -> str:
    fixes = []
    if facts.max_user_namespaces == 0:
        fixes.append("sysctl -w user.max_user_namespaces=15000")
    if facts.userns_sysctls.get("kernel.unprivileged_userns_clone") == 0:
        fixes.append("sysctl -w kernel.unprivileged_userns_clone=1")
    if facts.userns_sysctls.get("kernel.apparmor_restrict_unprivileged_userns") == 1:
        fixes.append("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile)")
    return (
        "; fix: " + ", or ".join(fixes or ["allow unprivileged user namespaces"]) + ", or run privsep as root"
    )


def _missing(what: Probe, since: str) -> str:
    reason = what.error or "unavailable"
    if "ENOSYS" in reason:
        return f"the kernel lacks it ({reason}); it needs Linux {since} or later"
    return reason


def layers(facts: Facts) -> list[Layer]:
    """Which layers ``privsep run`` applies on a machine with these facts (README's numbering)."""
    if facts.cgroup_use.ok:
        cgroup_detail = f"a cgroup per sandbox, {facts.cgroup_limits}"
    else:
        cgroup_detail = (
            f"{facts.cgroup_use.error}. Without it, pass --no-cgroups or set [limits] cgroups = "
            '"optional" (memory, processes and CPU are then bounded per process only)'
        )
    rows = [
        Layer("0 cgroup", facts.cgroup_use.ok, cgroup_detail),
        Layer(
            "1-2 session, fds, environment",
            facts.close_range.ok,
            "setsid, every inherited fd closed (close_range), environment rebuilt"
            if facts.close_range.ok
            else "close_range: " + _missing(facts.close_range, "5.9"),
        ),
    ]
    names = ", ".join(name for name, _ in NAMESPACES) + (", user" if facts.euid != 0 else "")
    if facts.namespaces.ok:
        ns_detail = f"{names}"
        if facts.euid == 0:
            ns_detail += " (and a user namespace init makes later, as the sandbox's own host id: see 4)"
        else:
            ns_detail += f" (the child's uid 65534 maps to yours, {facts.euid})"
    else:
        ns_detail = f"unshare({names}): {facts.namespaces.error}"
        if facts.euid != 0:
            ns_detail += _userns_fix(facts)
    rows.append(Layer("3 namespaces", facts.namespaces.ok, ns_detail))
    view_ok = facts.namespaces.ok and facts.mount_setattr.ok
    rows.append(
        Layer(
            "3b filesystem view",
            view_ok,
            "a read-only tmpfs root with only the granted paths, a fresh /proc, pivot_root"
            if view_ok
            else (
                "needs the mount namespace above"
                if not facts.namespaces.ok
                else "mount_setattr: " + _missing(facts.mount_setattr, "5.12")
            ),
        )
    )
    rows += _identity_rows(facts)
    rows.append(
        Layer(
            "5 resource limits",
            True,
            "setrlimit per process (open files, address space, file size, CPU time), and the broker's "
            "wall-clock timeout",
        )
    )
    abi = facts.landlock_abi
    if abi >= MIN_ABI:
        detail = f"ABI {abi}: the view read-only, the devices, /tmp when granted"
        detail += "; TCP bind/connect denied" if abi >= 4 else "; no TCP rules (ABI 4)"
        detail += (
            "; signals and abstract unix sockets scoped to the sandbox"
            if abi >= 6
            else "; no scopes (ABI 6): the namespaces still isolate processes and sockets"
        )
    elif abi == 0:
        detail = "Landlock is not available: it needs Linux 6.2 or later built with CONFIG_SECURITY_LANDLOCK"
        if facts.landlock_lsm is False:
            detail = "the kernel has Landlock disabled: add landlock to the lsm= boot parameter"
    else:
        detail = f"ABI {abi}, privsep needs {MIN_ABI} (truncate, Linux 6.2) or later"
    rows.append(Layer("6 Landlock", abi >= MIN_ABI, detail))
    notif = facts.seccomp_actions is None or "user_notif" in facts.seccomp_actions
    seccomp_ok = facts.seccomp_filter.ok and facts.seccomp_listener.ok and notif
    if seccomp_ok:
        seccomp_detail = "allowlist filter; dangerous syscalls reported through user notification"
    elif not facts.seccomp_filter.ok:
        seccomp_detail = (
            f"loading a filter failed: {facts.seccomp_filter.error}; "
            "it needs a kernel built with CONFIG_SECCOMP_FILTER"
        )
    else:
        seccomp_detail = (
            f"no seccomp user notification ({facts.seccomp_listener.error or 'not in actions_avail'}); "
            "it needs Linux 5.0 or later"
        )
    rows.append(Layer("7 seccomp", seccomp_ok, seccomp_detail))
    sync = facts.seccomp_sync_wakeup
    rows.append(
        Layer(
            "broker: synchronous wake-up",
            seccomp_ok and sync.ok,
            "the kernel wakes the broker, and a call it answers, on the waker's CPU "
            "(SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)"
            if sync.ok
            else "SECCOMP_IOCTL_NOTIF_SET_FLAGS: "
            + _missing(sync, "6.6")
            + "; optional: brokered calls then pay a cross-CPU wake-up, slower but confined the same",
            required=False,
        )
    )
    rows.append(
        Layer(
            "broker: children (pidfd)",
            facts.pidfd.ok,
            "pidfd_open, pidfd_send_signal" if facts.pidfd.ok else "pidfd: " + _missing(facts.pidfd, "5.3"),
        )
    )
    rows.append(
        Layer(
            "broker: files (openat2)",
            facts.openat2.ok,
            "every path resolved beneath its grant (RESOLVE_BENEATH)"
            if facts.openat2.ok
            else "openat2: " + _missing(facts.openat2, "5.6"),
        )
    )
    if facts.trial is not None:
        rows.append(
            Layer(
                "trial: minimal, /usr/bin/true",
                facts.trial.ok,
                f"a real sandbox started and ended in {facts.trial_seconds * 1000:.0f} ms"
                if facts.trial.ok
                else f"privsep run failed: {facts.trial.error}",
                word="ok",
            )
        )
    return rows


def _identity_rows(facts: Facts) -> list[Layer]:
    """Layer 4, and whether each sandbox has a host id of its own (root) or what is lost (not root)."""
    dropped = "no capabilities, securebits locked, no_new_privs"
    if not facts.namespaces.ok:
        return [Layer("4 identity", False, "needs the namespaces above")]
    if facts.euid != 0:
        granted = (
            f"/etc/subuid grants you {facts.subordinate_ids} subordinate ids, which privsep does not use"
            if facts.subordinate_ids
            else "/etc/subuid grants you no subordinate ids, and privsep would not use them"
        )
        return [
            Layer(
                "4 identity", True, f"uid/gid 65534, which is your uid {facts.euid} on the host; {dropped}"
            ),
            Layer(
                "4b host id per sandbox",
                False,
                f"without root every sandbox runs as you (uid {facts.euid}): it acts as you on the files "
                "its view shows (the grants decide which, read-only mounts and Landlock how), your own "
                "processes may signal and trace it, and its per-user kernel counts (processes, inotify "
                "instances, message queues) add up with yours and every other sandbox's; "
                f"{granted}: a subordinate id would own none of your files, so your grants would stop "
                "working, and you would still own its user namespace; run the broker as root for an id "
                "of its own per sandbox",
                required=False,
            ),
        ]
    if not facts.host_ids.ok:
        where = f" ({facts.host_id_range})" if facts.host_id_range else ""
        return [
            Layer("4 identity", False, f"no host id for a sandbox{where}: {facts.host_ids.error}"),
            Layer("4b host id per sandbox", False, "needs 4 identity"),
        ]
    return [
        Layer(
            "4 identity",
            True,
            f"uid/gid 65534 in a user namespace of its own, mapped to the sandbox's own host id; {dropped}",
        ),
        Layer(
            "4b host id per sandbox",
            True,
            f"from {facts.host_id_range}, no account or subordinate range in it; "
            f"{facts.host_ids_claimed} claimed now"
            + (f", {facts.host_ids_stale} left by killed brokers (free)" if facts.host_ids_stale else ""),
        ),
    ]


def ready(rows: list[Layer]) -> bool:
    return all(row.applied or not row.required for row in rows)


def render_text(facts: Facts, rows: list[Layer]) -> str:
    def yes(p: Probe) -> str:
        return "yes" if p.ok else f"no ({p.error})"

    abi = facts.landlock_abi
    landlock = f"ABI {abi}: " + ", ".join(_landlock_features(abi)) if abi else "not available"
    actions = " ".join(facts.seccomp_actions) if facts.seccomp_actions is not None else "(unknown)"
    notif = "yes" if facts.seccomp_listener.ok else f"no ({facts.seccomp_listener.error})"
    userns = f"max_user_namespaces = {facts.max_user_namespaces}"
    for name, value in facts.userns_sysctls.items():
        userns += f", {name} = {value}"
    who = "uid 65534" if facts.euid == 0 else "you"
    userns += f"; an unprivileged process ({who}) can create one: {yes(facts.unprivileged_userns)}"
    role = "root" if facts.euid == 0 else "not root"
    lines = [
        "privsep doctor: what this kernel supports, and what `privsep run` does here",
        "",
        f"  kernel            Linux {facts.kernel} {facts.machine}",
        f"  running as        euid {facts.euid} ({role})",
        f"  Landlock          {landlock}",
        f"  seccomp           filter: {yes(facts.seccomp_filter)}; user notification: {notif}; "
        f"synchronous wake-up: {yes(facts.seccomp_sync_wakeup)}",
        f"                    actions_avail: {actions}",
        f"  user namespaces   {userns}",
        f"  namespaces        unshare as privsep run does: {yes(facts.namespaces)}",
        f"  host ids          {_host_ids_line(facts)}",
        f"  cgroups           {facts.cgroup} ({facts.cgroup_detail}); "
        + (
            f"privsep uses {facts.cgroup_version}"
            if facts.cgroup_use.ok
            else "privsep cannot make a cgroup per sandbox here (see 0 below)"
        ),
        f"  openat2           {yes(facts.openat2)}",
        f"  pidfd             {yes(facts.pidfd)}",
        f"  close_range       {yes(facts.close_range)}",
        f"  mount_setattr     {yes(facts.mount_setattr)}",
        "",
        "layers of `privsep run` here:",
    ]
    width = max(len(row.name) for row in rows)
    for row in rows:
        lines.append(f"  {row.name.ljust(width)}  {row.status}: {row.detail}")
    lines.append("")
    if ready(rows):
        lines.append("verdict: ready; every layer privsep run needs is available here")
    else:
        missing = ", ".join(row.name for row in rows if row.required and not row.applied)
        lines.append(f"verdict: NOT ready; privsep run will refuse to start here (missing: {missing})")
    return "\n".join(lines) + "\n"


def _host_ids_line(facts: Facts) -> str:
    if facts.euid != 0:
        granted = facts.subordinate_ids
        return f"none of its own: every sandbox is your uid {facts.euid}; subordinate ids granted: {granted}"
    if not facts.host_ids.ok:
        return f"{facts.host_id_range or 'no usable range'}: {facts.host_ids.error}"
    return (
        f"{facts.host_id_range}: {facts.host_ids_claimed} claimed, {facts.host_ids_stale} stale "
        f"(a sandbox's own uid and gid; {hostids.ENV_VAR}=FIRST:COUNT to change)"
    )


def render_json(facts: Facts, rows: list[Layer]) -> str:
    data = {
        "facts": asdict(facts),
        "layers": [{**asdict(row), "status": row.status} for row in rows],
        "ready": ready(rows),
    }
    return json.dumps(data, indent=2) + "\n"


def doctor_command(*, as_json: bool) -> int:
    """``privsep doctor [--json]``: 0 when ``privsep run`` can apply every layer it needs here."""
    facts = probe()
    rows = layers(facts)
    _stdout.write(render_json(facts, rows) if as_json else render_text(facts, rows))
    return 0 if ready(rows) else 1
