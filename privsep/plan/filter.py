"""The seccomp filter, compiled: a policy's syscall set as a BPF program, once, in the broker.

Building a filter with libseccomp costs about a millisecond and needs the library; loading
one is a single ``seccomp()`` call. So the broker compiles (:func:`compile_filter`, cached
per :class:`FilterSpec`) and the child, which must stay small and import nothing heavy,
only loads the bytes (:func:`privsep.confine.seccomp.load_filter`). The same module names
syscall numbers for the broker's denial reports (:func:`syscall_name`) and tells it which
calls the filter sends it (:func:`transparent_numbers`, :func:`dangerous_numbers`).

What a compiled filter does, in order:

1. Architecture: only native x86_64 passes. i386 calls (``int 0x80``) and x32 calls (the
   number carries ``0x40000000``) kill the process: both have their own syscall numbers,
   so an x86_64 allowlist means nothing for them.
2. Argument checks, on the low 32 bits of the argument, because that is all the kernel
   reads for these ``int``-typed arguments (``ioctl(fd, 0x100005412)`` *is* TIOCSTI):
   ``ioctl`` refuses TIOCSTI/TIOCLINUX (typing into the terminal of whoever owns it);
   ``clone`` refuses any ``CLONE_NEW*`` flag; ``socketpair`` accepts only ``AF_UNIX``,
   ``socket`` only ``AF_UNIX`` and TCP/UDP ``AF_INET``/``AF_INET6`` (made in the sandbox's
   empty network namespace; with ``[transparent] net = false`` ``AF_UNIX`` only); ``personality`` accepts only
   ``PER_LINUX`` and the query; ``connect`` always goes to the broker, which performs it
   on the socket it checked; the send calls refuse ``MSG_FASTOPEN`` (a connect hidden in
   a send). With transparent brokering, the open calls and ``bind`` go to the broker
   whatever their arguments, and ``socket`` also accepts ``AF_INET``/``AF_INET6``. These run as a
   short hand-written BPF prelude in front of libseccomp's program, because libseccomp
   cannot express "allow unless the masked argument equals X": an unconditional allow
   silently *swallows* conditional rules on the same syscall, and a mask of 0 is folded
   into an unconditional rule (measured with libseccomp 2.5.4;
   ``tests/integration/test_seccomp_filter.py`` pins the result).
3. The allowlist (libseccomp, binary-tree ordered); ``clone3`` fails with ``ENOSYS`` so that
   glibc falls back to ``clone``, whose flags step 2 can see.
4. Dangerous calls (``privsep.policy.syscalls.DANGEROUS``) report to the broker through a
   seccomp user notification, or kill; the broker then names the call (:func:`syscall_name`).
   Without a listener (``load_filter(..., listener=False)``) the kernel fails a notifying
   call with ``ENOSYS`` instead, which is still a denial.
5. Everything else gets the policy's default: ``EPERM``, ``ENOSYS`` or kill.
"""

from __future__ import annotations

import _thread
import ctypes
import errno
import functools
import os
import re
import socket
from types import ModuleType
from typing import Any, Literal

from privsep import _linux
from privsep._record import Record
from privsep.errors import ConfinementError, PolicyError
from privsep.policy.syscalls import DANGEROUS, SPECIAL, refuse_dangerous

__all__ = [
    "AUDIT_ARCH_X86_64",
    "BPF_MAXINSNS",
    "SOCK_FILTER",
    "FilterSpec",
    "compile_filter",
    "compiler_files",
    "dangerous_numbers",
    "syscall_name",
    "syscall_number",
    "transparent_numbers",
]

DefaultAction = Literal["eperm", "enosys", "kill"]
DangerousAction = Literal["notify", "kill"]

AUDIT_ARCH_X86_64 = _linux.AUDIT_ARCH_X86_64  # one home: _linux, the x86_64 ABI

# seccomp return values, the BPF instruction format and the opcodes the prelude uses: their
# one home is _linux (the x86_64 ABI), which the loader and doctor's probe filter also use.
_RET_KILL_PROCESS = _linux.SECCOMP_RET_KILL_PROCESS
_RET_ERRNO = _linux.SECCOMP_RET_ERRNO
_RET_USER_NOTIF = _linux.SECCOMP_RET_USER_NOTIF
_RET_ALLOW = _linux.SECCOMP_RET_ALLOW
BPF_MAXINSNS = _linux.BPF_MAXINSNS
SOCK_FILTER = _linux.SOCK_FILTER
_LD_W_ABS = _linux.BPF_LD_W_ABS
_JMP_JA = _linux.BPF_JMP_JA
_JMP_JEQ_K = _linux.BPF_JMP_JEQ_K
_JMP_JSET_K = _linux.BPF_JMP_JSET_K
_RET_K = _linux.BPF_RET_K
_ALU_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
#: socket()'s type argument without the flags it may carry (SOCK_NONBLOCK, SOCK_CLOEXEC).
_SOCK_TYPE_ONLY = 0xFFFFFFFF & ~(socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
#: The inet sockets a sandbox may make: TCP and UDP only, by type and protocol (0: the default).
_INET_KINDS = (
    (socket.SOCK_STREAM, (0, socket.IPPROTO_TCP)),
    (socket.SOCK_DGRAM, (0, socket.IPPROTO_UDP)),
)

# struct seccomp_data offsets: nr, arch, instruction_pointer, args[6] (little endian, so
# the low 32 bits of args[i] are at 16 + 8 * i).
_OFF_NR = 0
_OFF_ARCH = 4


def _arg_lo(i: int) -> int:
    return 16 + 8 * i


_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
_TIOCSCTTY = 0x540E  # taking a controlling terminal: the first step to TIOCSTI-like tricks
# CLONE_NEWTIME (0x80) lies in clone()'s exit-signal byte, so clone() itself cannot make a
# time namespace; refusing the bit only refuses "exit signals" 128-255, which are not
# signals at all, and keeps the mask the same as for unshare/clone3 should they ever pass.
_CLONE_NEW_MASK = (
    _linux.CLONE_NEWTIME
    | _linux.CLONE_NEWNS
    | _linux.CLONE_NEWCGROUP
    | _linux.CLONE_NEWUTS
    | _linux.CLONE_NEWIPC
    | _linux.CLONE_NEWUSER
    | _linux.CLONE_NEWPID
    | _linux.CLONE_NEWNET
)
_PERSONALITY_OK = (0x00000000, 0xFFFFFFFF)  # PER_LINUX, query

# x86_64 numbers of syscalls newer than the libseccomp this was built against (2.5.4 knows
# up to futex_requeue, 456). Taken from arch/x86/entry/syscalls/syscall_64.tbl; used only
# where libseccomp does not know the name, and checked against it and the kernel by tests.
_NEWER_SYSCALLS: dict[str, int] = {
    "statmount": 457,
    "listmount": 458,
    "lsm_get_self_attr": 459,
    "lsm_set_self_attr": 460,
    "lsm_list_modules": 461,
    "mseal": 462,
    "setxattrat": 463,
    "getxattrat": 464,
    "listxattrat": 465,
    "removexattrat": 466,
    "open_tree_attr": 467,
    "file_getattr": 468,
    "file_setattr": 469,
}
_NEWER_BY_NUMBER = {nr: name for name, nr in _NEWER_SYSCALLS.items()}

_DEFAULT_RET = {
    "eperm": _RET_ERRNO | errno.EPERM,
    "enosys": _RET_ERRNO | errno.ENOSYS,
    "kill": _RET_KILL_PROCESS,
}
_DANGEROUS_RET = {"notify": _RET_USER_NOTIF, "kill": _RET_KILL_PROCESS}


class FilterSpec(Record):
    """Everything a compiled filter depends on; equal specs share one cached program."""

    __slots__ = (
        "allow",
        "dangerous_action",
        "default_action",
        "learn_lookups",
        "notify_denials",
        "transparent_bind",
        "transparent_files",
        "transparent_net",
    )

    allow: frozenset[str]
    default_action: DefaultAction
    dangerous_action: DangerousAction
    notify_denials: bool
    """Send every syscall outside the allowlist to the broker (user notification),
    which answers ``default_action`` itself and can name the call in its report;
    False: the kernel answers ``default_action`` and nobody hears of it."""
    transparent_files: bool
    """Send every (allowed) ``open``/``creat``/``openat``/``openat2`` to the broker, which
    serves paths under the policy's [[files]] rules itself (transparent brokering)."""
    learn_lookups: bool
    """privsep learn: also send ``stat``/``access``/``readlink`` and their ``*at`` forms to the
    broker, which learns the path and hands the call back (LEARN_LOOKUP_CALLS)."""
    transparent_net: bool
    """Let the child make TCP/UDP sockets in its own empty network namespace; the broker
    serves their ``connect`` (sent to it in every filter) by connecting a socket of its own
    and swapping it in."""
    transparent_bind: bool
    """Let the child make TCP/UDP sockets in its own empty network namespace, and send every
    ``bind`` to the broker, which binds (and listens) a socket of its own in the host's
    network namespace and swaps it in."""

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced took them
        self,
        allow: frozenset[str],
        default_action: DefaultAction = "eperm",
        dangerous_action: DangerousAction = "notify",
        notify_denials: bool = False,
        transparent_files: bool = False,
        learn_lookups: bool = False,
        transparent_net: bool = False,
        transparent_bind: bool = False,
    ) -> None:
        # A plain set would make the spec unhashable and the cache fail far from the cause.
        allow = frozenset(allow)
        self._assign(locals())
        if self.default_action not in _DEFAULT_RET:
            raise PolicyError(
                f"unknown seccomp default action {self.default_action!r}; "
                f"use one of {', '.join(sorted(_DEFAULT_RET))}"
            )
        if self.dangerous_action not in _DANGEROUS_RET:
            raise PolicyError(
                f"unknown seccomp action for dangerous syscalls {self.dangerous_action!r}; "
                f"use one of {', '.join(sorted(_DANGEROUS_RET))}"
            )


# --------------------------------------------------------------------------- libseccomp

_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
_SYSCALL_NAME = re.compile(r"_?[a-z][a-z0-9_]*")
# _thread, not threading: importing threading gives every fork of the zygote (confine/zygote.py),
# which imports this module, an at-fork hook that costs ~140 page faults per sandbox.
_import_lock = _thread.allocate_lock()
_pyseccomp: ModuleType | None = None


def _libseccomp() -> Any:
    """Import pyseccomp without the ~30 ms of subprocesses ``find_library`` would spawn."""
    global _pyseccomp
    with _import_lock:
        if _pyseccomp is None:
            # ctypes.util itself imports subprocess: keep it off the child's import path.
            import ctypes.util  # noqa: PLC0415

            real = ctypes.util.find_library

            def known_first(name: str) -> str | None:
                return _SONAMES.get(name) or real(name)

            ctypes.util.find_library = known_first
            try:
                import pyseccomp  # noqa: PLC0415 - lazily, see above
            except (OSError, RuntimeError) as exc:
                raise ConfinementError("seccomp", f"libseccomp could not be loaded: {exc}") from exc
            finally:
                ctypes.util.find_library = real
            _pyseccomp = pyseccomp
        return _pyseccomp


def compiler_files() -> tuple[str, ...]:
    """The files a compiled filter depends on besides its spec: the libseccomp mapped into this
    process, pyseccomp's module, and the dynamic loader's cache (which picks the library).

    Empty when they cannot be told (the plan cache then keeps no plan: it could not tell an
    upgraded library from the one its filter was compiled with). Found once per process:
    a library, once mapped, stays mapped (nothing unloads it), and reading a broker's
    ``/proc/self/maps`` cost about 1 ms of every spawn's planning.
    """
    global _compiler_files
    if not _compiler_files:
        _compiler_files = _find_compiler_files()
    return _compiler_files


_compiler_files: tuple[str, ...] = ()


def _find_compiler_files() -> tuple[str, ...]:
    module = getattr(_libseccomp(), "__file__", None)
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            mapped = {line.split(None, 5)[-1].strip() for line in f if "libseccomp" in line}
    except OSError:
        return ()
    libraries = sorted(path for path in mapped if path.startswith("/"))
    if not libraries or not isinstance(module, str):
        return ()
    return (*libraries, module, "/etc/ld.so.cache")


def syscall_number(name: str) -> int | None:
    """The native x86_64 number of ``name``, or None if it does not exist there."""
    if not _SYSCALL_NAME.fullmatch(name):  # libseccomp would read "read\0x" as "read"
        return None
    sc = _libseccomp()
    nr = int(sc.resolve_syscall(sc.Arch.NATIVE, name))
    # libseccomp answers -1 for names it does not know and a negative "pseudo syscall"
    # for names that exist only on other architectures (socketcall, vm86, ...).
    if nr >= 0:
        return nr
    return _NEWER_SYSCALLS.get(name)


@functools.lru_cache(maxsize=1024)
def syscall_name(nr: int) -> str:
    """Name a native syscall number for a denial report; never fails."""
    try:
        sc = _libseccomp()
        return bytes(sc.resolve_syscall(sc.Arch.NATIVE, nr)).decode()
    except Exception:
        # A name for a report: whatever went wrong (libseccomp missing or broken, say: the
        # broker may load it only now, mid-run), the number will do.
        return _NEWER_BY_NUMBER.get(nr, f"syscall {nr}")


# --------------------------------------------------------------------------- the compiler


@functools.lru_cache(maxsize=64)
def compile_filter(spec: FilterSpec) -> bytes:
    """Compile ``spec`` to the raw BPF program (``struct sock_filter`` entries) to load.

    Raises PolicyError for a name that cannot be allowed: unknown on x86_64, or dangerous.
    """
    allowed = _resolve_allow(spec.allow)
    sc = _libseccomp()
    default_ret = _RET_USER_NOTIF if spec.notify_denials else _DEFAULT_RET[spec.default_action]
    filt = sc.SyscallFilter(default_ret)
    filt.set_attr(sc.Attr.ACT_BADARCH, _RET_KILL_PROCESS)  # i386 and (below) x32
    filt.set_attr(sc.Attr.CTL_NNP, 0)  # the loader sets no_new_privs itself, explicitly
    filt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary tree: O(log n) per syscall

    def add(action: int, nr: int) -> None:
        # libseccomp refuses (EACCES) a rule whose action is the default: it is implied.
        if action != default_ret:
            filt.add_rule(action, nr)

    for nr in allowed.values():
        add(_RET_ALLOW, nr)
    add(_RET_ERRNO | errno.ENOSYS, _must_resolve("clone3"))
    add(_RET_ALLOW, _must_resolve("personality"))  # the prelude limits the persona
    dangerous_ret = _DANGEROUS_RET[spec.dangerous_action]
    for name in sorted(DANGEROUS - SPECIAL.keys()):
        dangerous_nr = syscall_number(name)
        if dangerous_nr is not None:  # e.g. vm86 exists only on i386
            add(dangerous_ret, dangerous_nr)

    body = _export_bpf(filt)
    program = _prelude(allowed, spec) + body
    count = len(program) // SOCK_FILTER.size
    if count > BPF_MAXINSNS:
        raise PolicyError(
            f"the seccomp filter has {count} instructions, more than the kernel's "
            f"{BPF_MAXINSNS}; allow fewer syscalls"
        )
    return program


def _must_resolve(name: str) -> int:
    nr = syscall_number(name)
    if nr is None:  # only for names this module relies on: a broken libseccomp
        raise ConfinementError("seccomp", f"libseccomp does not know {name!r} on x86_64")
    return nr


def _resolve_allow(names: frozenset[str]) -> dict[str, int]:
    resolved: dict[str, int] = {}
    for name in sorted(names):
        refuse_dangerous(name)
        nr = syscall_number(name)
        if nr is None:
            hint = (
                "; expand syscall groups with privsep.policy.syscalls.expand first"
                if name.startswith("@")
                else ""
            )
            raise PolicyError(
                f"unknown syscall {name!r} (not known to libseccomp {_libseccomp_version()} on x86_64){hint}"
            )
        resolved[name] = nr
    return resolved


def _libseccomp_version() -> str:
    try:
        version = _libseccomp()._libseccomp.seccomp_version
        version.restype = ctypes.POINTER(ctypes.c_uint * 3)
        major, minor, micro = version().contents
    except (AttributeError, ValueError):
        return "(unknown version)"
    return f"{major}.{minor}.{micro}"


def _export_bpf(filt: Any) -> bytes:
    fd = os.memfd_create("privsep-seccomp", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as handle:
            filt.export_bpf(handle)
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    except OSError as exc:
        raise ConfinementError("seccomp", f"libseccomp could not export the filter: {exc}") from exc
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the prelude

# A check is (syscall number, argument index, kind, values, errno); kinds:
#   "deny_values": refuse if the argument's low 32 bits equal one of values
#   "allow_values": refuse unless they equal one of values
#   "deny_mask": refuse if they share a bit with values[0]
#   "notify": send the call to the broker whatever its arguments (transparent brokering)
#   "refuse": fail with errno whatever its arguments
_Check = tuple[int, int, str, tuple[int, ...], int]


_MSG_FASTOPEN = 0x20000000
TRANSPARENT_FILE_CALLS = ("open", "creat", "openat")
#: S_ISUID | S_ISGID. A file the child leaves setuid or setgid on the host would run with
#: its owner's rights for whoever executes it there (on an idmapped grant the owner is the
#: grant's, root included); a nosuid mount inside the sandbox does nothing for the host.
_SETID_BITS = _linux.SETID_BITS
_FALLOC_SHIFTS = 0x08 | 0x20  # FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE
#: (syscall, index of its mode argument): each refuses a mode with a set-id bit.
_MODE_ARGS = (
    ("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2),
    ("open", 2), ("openat", 3), ("creat", 1), ("mknod", 1), ("mknodat", 2),
)  # fmt: skip
#: Always sent to the broker, which performs every connect itself on the socket it checked
#: (DESIGN rule 2): a connect handed back to the kernel would look its fd up again, and the
#: child may hold sockets of the host's network namespace (client.connect, bind, --listen).
CONNECT_CALLS = ("connect",)
LEARN_LOOKUP_CALLS = (
    "stat", "lstat", "access", "readlink", "newfstatat", "readlinkat", "faccessat", "statx", "faccessat2",
)  # fmt: skip
TRANSPARENT_BIND_CALLS = ("bind",)


@functools.lru_cache(maxsize=64)
def transparent_numbers(spec: FilterSpec) -> frozenset[int]:
    """The syscalls the filter sends to the broker for transparent brokering (allowed ones only)."""
    names = (
        (TRANSPARENT_FILE_CALLS if spec.transparent_files else ())
        + CONNECT_CALLS
        + (LEARN_LOOKUP_CALLS if spec.learn_lookups else ())
        + (TRANSPARENT_BIND_CALLS if spec.transparent_bind else ())
    )
    allowed = _resolve_allow(spec.allow)
    return frozenset(allowed[name] for name in names if name in allowed)


def _checks(allowed: dict[str, int], spec: FilterSpec) -> list[_Check]:
    checks: list[_Check] = []
    notified = transparent_numbers(spec)
    for nr in sorted(notified):
        checks.append((nr, 0, "notify", (), 0))
    for name, mode_arg in _MODE_ARGS:
        # A notified open is checked by the broker on the registers it read (transparent.py).
        if name in allowed and allowed[name] not in notified:
            checks.append((allowed[name], mode_arg, "deny_mask", (_SETID_BITS,), errno.EPERM))
    if "fallocate" in allowed:
        # COLLAPSE_RANGE and INSERT_RANGE shift a file's contents: a grant without truncate
        # could shrink a file with them. Programs fall back on EOPNOTSUPP.
        checks.append((allowed["fallocate"], 1, "deny_mask", (_FALLOC_SHIFTS,), errno.EOPNOTSUPP))
    if "openat2" in allowed:
        # Its flags and mode live in the child's memory, where another thread can change them
        # after any check; glibc never calls it and programs that do fall back to openat.
        checks.append((allowed["openat2"], 0, "refuse", (), errno.ENOSYS))
    if "ioctl" in allowed:
        checks.append((allowed["ioctl"], 1, "deny_values", (_TIOCSTI, _TIOCLINUX, _TIOCSCTTY), errno.EPERM))
    if "clone" in allowed:
        checks.append((allowed["clone"], 0, "deny_mask", (_CLONE_NEW_MASK,), errno.EPERM))
    inet = spec.transparent_net or spec.transparent_bind
    if "socket" in allowed:
        # With transparent networking the child may make inet sockets: they live in its own
        # empty network namespace, and only the broker's connect or bind (a socket of the
        # broker's, swapped in) makes them reach anything.
        if inet:
            # TCP and UDP only: every other protocol of the family (MPTCP, UDP-Lite, SCTP, DCCP,
            # ICMP...) is kernel code the sandbox has no use for, and some would be autoloaded.
            checks.append((allowed["socket"], 0, "socket_inet", (socket.AF_UNIX,), errno.EAFNOSUPPORT))
        else:
            checks.append((allowed["socket"], 0, "allow_values", (socket.AF_UNIX,), errno.EAFNOSUPPORT))
    if "socketpair" in allowed:
        checks.append((allowed["socketpair"], 0, "allow_values", (socket.AF_UNIX,), errno.EAFNOSUPPORT))
    # A connect hidden in a send: refused always, since a socket of the host's network
    # namespace the child holds (a listener it shut down) would otherwise connect anywhere.
    for name, flags_arg in (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)):
        if name in allowed:
            checks.append((allowed[name], flags_arg, "deny_mask", (_MSG_FASTOPEN,), errno.EPERM))
    checks.append((_must_resolve("personality"), 0, "allow_values", _PERSONALITY_OK, errno.EPERM))
    return checks


def _prelude(allowed: dict[str, int], spec: FilterSpec) -> bytes:
    """Assemble the argument checks; every path ends in a refusal or libseccomp's program.

    Jumps are relative and forward-only in classic BPF, so prepending leaves libseccomp's
    own jumps intact; "start" below is the first instruction of its program.
    """
    checks = _checks(allowed, spec)
    # Instructions as (code, jt, jf, k) with jt/jf/k possibly symbolic labels.
    code: list[tuple[int, int | str, int | str, int | str]] = []
    labels: dict[str, int] = {}

    def emit(op: int, jt: int | str = 0, jf: int | str = 0, k: int | str = 0) -> None:
        code.append((op, jt, jf, k))

    emit(_LD_W_ABS, k=_OFF_ARCH)
    emit(_JMP_JEQ_K, jt=0, jf="start", k=AUDIT_ARCH_X86_64)
    emit(_LD_W_ABS, k=_OFF_NR)
    for i, (nr, *_rest) in enumerate(checks):
        emit(_JMP_JEQ_K, jt=f"check{i}", jf=0, k=nr)
    emit(_JMP_JA, k="start")
    for i, (_nr, arg, kind, values, err) in enumerate(checks):
        labels[f"check{i}"] = len(code)
        if kind == "notify":
            emit(_RET_K, k=_RET_USER_NOTIF)
            continue
        if kind == "refuse":
            emit(_RET_K, k=_RET_ERRNO | err)
            continue
        emit(_LD_W_ABS, k=_arg_lo(arg))
        if kind == "deny_values":
            for value in values:
                emit(_JMP_JEQ_K, jt=f"deny{i}", jf=0, k=value)
            emit(_JMP_JA, k="start")
        elif kind == "allow_values":
            for value in values:
                emit(_JMP_JEQ_K, jt="start", jf=0, k=value)
        elif kind == "deny_mask":
            emit(_JMP_JSET_K, jt=0, jf="start", k=values[0])
        elif kind == "socket_inet":
            # arg0 (family): the values given pass; AF_INET/AF_INET6 go on to the type and
            # protocol checks; anything else is refused with err.
            for value in values:
                emit(_JMP_JEQ_K, jt="start", jf=0, k=value)
            emit(_JMP_JEQ_K, jt=f"inet{i}", jf=0, k=socket.AF_INET)
            emit(_JMP_JEQ_K, jt=f"inet{i}", jf=0, k=socket.AF_INET6)
            emit(_RET_K, k=_RET_ERRNO | err)
            labels[f"inet{i}"] = len(code)
            emit(_LD_W_ABS, k=_arg_lo(1))
            emit(_ALU_AND_K, k=_SOCK_TYPE_ONLY)
            for n, (kind_type, _protocols) in enumerate(_INET_KINDS):
                emit(_JMP_JEQ_K, jt=f"proto{i}.{n}", jf=0, k=kind_type)
            emit(_RET_K, k=_RET_ERRNO | errno.ESOCKTNOSUPPORT)
            for n, (_type, protocols) in enumerate(_INET_KINDS):
                labels[f"proto{i}.{n}"] = len(code)
                emit(_LD_W_ABS, k=_arg_lo(2))
                for protocol in protocols:
                    emit(_JMP_JEQ_K, jt="start", jf=0, k=protocol)
                emit(_RET_K, k=_RET_ERRNO | errno.EPROTONOSUPPORT)
            continue
        else:  # pragma: no cover - the table above is the only producer
            raise AssertionError(kind)
        labels[f"deny{i}"] = len(code)
        emit(_RET_K, k=_RET_ERRNO | err)
    labels["start"] = len(code)

    def target(ref: int | str, pos: int) -> int:
        return ref if isinstance(ref, int) else labels[ref] - (pos + 1)

    out = bytearray()
    for pos, (op, jt, jf, k) in enumerate(code):
        if op == _JMP_JA:  # the only jump whose target lives in k (32 bits)
            out += SOCK_FILTER.pack(op, 0, 0, target(k, pos))
        else:  # jt/jf are 8 bits: fine for a prelude of a few dozen instructions
            out += SOCK_FILTER.pack(op, target(jt, pos), target(jf, pos), target(k, pos))
    return bytes(out)


@functools.cache
def dangerous_numbers() -> frozenset[int]:
    """The x86_64 numbers of the dangerous set, for the broker's decision on a notification."""
    return frozenset(nr for name in DANGEROUS if (nr := syscall_number(name)) is not None)
