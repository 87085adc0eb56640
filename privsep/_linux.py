"""ctypes for the Linux interfaces Python 3.11 lacks.

Everything here is a thin, checked wrapper: it raises ``OSError`` with the
errno on failure and never decides policy. The numbers are the x86_64 ABI;
privsep's seccomp filter only admits native x86_64 calls, so there is no
other ABI to support. No ``ctypes.util.find_library`` (it spawns
subprocesses): libc is the already-loaded process image (``CDLL(None)``).
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import sys

from privsep import _signals
from privsep._memo import cached

TYPE_CHECKING = False  # typing's import costs every privsep run ~3 ms

# os.uname, not platform.machine: the same answer without importing platform on every start.
if os.uname().machine != "x86_64":  # pragma: no cover - refuse, never guess syscall numbers
    raise ImportError(f"privsep supports x86_64 only, not {os.uname().machine}")

#: The one libc handle of privsep. Functions are looked up here, at import, in the broker: a
#: forked child inherits them resolved instead of paying dlsym on its start path.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

#: The audit architecture of native x86_64 system calls (seccomp_data.arch): the filter admits
#: only these, and the broker treats every other notification as foreign.
AUDIT_ARCH_X86_64 = 0xC000003E

# x86_64 syscall numbers privsep calls or reads by number (arch/x86/entry/syscalls/syscall_64.tbl);
# tests/unit/test_linux_abi.py checks each against libseccomp. (The seccomp filter names its calls
# and libseccomp numbers them.)
# The file calls transparent brokering and ``privsep learn`` read from seccomp notifications:
NR_OPEN = 2
NR_STAT = 4
NR_LSTAT = 6
NR_ACCESS = 21
NR_CONNECT = 42
NR_BIND = 49
NR_CREAT = 85
NR_READLINK = 89
NR_OPENAT = 257
NR_NEWFSTATAT = 262
NR_READLINKAT = 267
NR_FACCESSAT = 269
NR_STATX = 332
NR_FACCESSAT2 = 439
# Per-thread credentials, as raw calls (glibc's wrappers change every thread):
NR_SETGROUPS = 116
NR_SETRESUID = 117
NR_SETRESGID = 119
NR_SETFSUID = 122
NR_SETFSGID = 123
# What Python 3.11 has no wrapper for:
NR_PIVOT_ROOT = 155
NR_CAPGET = 125
NR_CAPSET = 126
NR_SECCOMP = 317
NR_LANDLOCK_CREATE_RULESET = 444
NR_LANDLOCK_ADD_RULE = 445
NR_LANDLOCK_RESTRICT_SELF = 446
NR_CLOSE_RANGE = 436

#: The kernel's longest path, in bytes with its NUL (include/uapi/linux/limits.h).
PATH_MAX = 4096
PAGE_SIZE = 4096  # x86_64's: process_vm_read and the broker read the caller's memory page by page
#: S_ISUID | S_ISGID: a file left set-id on the host runs with its owner's rights there.
SETID_BITS = stat.S_ISUID | stat.S_ISGID

# unshare(2) / clone(2) namespace flags.
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2

# prctl(2) options python-prctl does not cover for every capability, and no_new_privs for
# the places that must not import python-prctl (the seccomp loader, doctor's probes).
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _check(result: int) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def unshare(flags: int) -> None:
    """unshare(2); Python 3.11's ``os`` has no ``unshare``."""
    _check(_libc.unshare(ctypes.c_int(flags)))


NR_CLONE = 56
# The same libc, called with the GIL held (PyDLL): clone's child must wake up holding it.
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_libc_gil.syscall.restype = ctypes.c_long
_pyapi = ctypes.pythonapi


def fork_into(namespaces: int) -> int:
    """``os.fork()`` whose child starts in new ``namespaces`` (CLONE_NEW* flags): clone(2).

    The child of ``CLONE_NEWPID`` is pid 1 of the new pid namespace, which a fork
    after ``unshare`` would need one more process for. Python's own fork hooks run as
    ``os.fork`` runs them (``PyOS_BeforeFork`` and ``PyOS_AfterFork_*``: locks, the
    GIL, ``os.register_at_fork``). glibc's are skipped: they protect its locks from
    other threads, so only a single-threaded process may call this (a forked monitor
    or the zygote, which start no thread): any other raises RuntimeError, before the
    clone. Returns 0 in the child, its pid in the parent.
    """
    if threads() != 1:
        raise RuntimeError("fork_into from a process with other threads: fork a process first")
    _pyapi.PyOS_BeforeFork()
    pid = _libc_gil.syscall(
        ctypes.c_long(NR_CLONE),
        ctypes.c_ulong(namespaces | _signals.SIGCHLD),
        ctypes.c_void_p(0),  # no new stack: the child returns here, on a copy of ours, as fork's does
        ctypes.c_void_p(0),
        ctypes.c_void_p(0),
        ctypes.c_ulong(0),
    )
    if pid == 0:
        _pyapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    _pyapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, os.strerror(err))
    return int(pid)


def threads() -> int:
    """How many threads this process has (C-level ones included, which ``threading`` does not see)."""
    return len(os.listdir("/proc/self/task"))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2) with str arguments; None becomes NULL."""

    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)))


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)))


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(NR_PIVOT_ROOT, os.fsencode(new_root), os.fsencode(put_old)))


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    """close_range(2): one call closes every inherited fd, however many there are."""
    _check(_syscall(NR_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)))


_prctl = _libc.prctl
# Declared once: a call then converts plain ints, instead of building five ctypes objects
# (dropping the bounding set is ~40 calls on every sandbox's start).
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl(option, arg2, arg3, arg4, arg5))


def setfsuid(uid: int) -> int:
    """setfsuid(2) for the calling thread only; the previous id (the call reports no error)."""
    return int(_syscall(NR_SETFSUID, ctypes.c_uint(uid)))


def setfsgid(gid: int) -> int:
    """setfsgid(2) for the calling thread only; the previous id (the call reports no error)."""
    return int(_syscall(NR_SETFSGID, ctypes.c_uint(gid)))


def thread_setgroups(groups: list[int]) -> None:
    """setgroups(2) for the calling thread only (glibc's ``os.setgroups`` changes every thread)."""
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    _check(_syscall(NR_SETGROUPS, ctypes.c_size_t(len(groups)), array))


def thread_setresuid(ruid: int, euid: int, suid: int) -> None:
    """setresuid(2) for the calling thread only; 0xFFFFFFFF leaves that id as it is."""
    _check(_syscall(NR_SETRESUID, ctypes.c_uint(ruid), ctypes.c_uint(euid), ctypes.c_uint(suid)))


def thread_setresgid(rgid: int, egid: int, sgid: int) -> None:
    """setresgid(2) for the calling thread only; 0xFFFFFFFF leaves that id as it is."""
    _check(_syscall(NR_SETRESGID, ctypes.c_uint(rgid), ctypes.c_uint(egid), ctypes.c_uint(sgid)))


@cached
def cap_last_cap() -> int:
    """The highest capability this kernel knows (not the one python-prctl was built with).

    Read once per process (and the zygote reads it before it clones anything).
    """
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


CAP_SYS_ADMIN = 21


def capset(effective: int = 0, permitted: int = 0, inheritable: int = 0) -> None:
    """Set this thread's effective, permitted and inheritable sets (64-bit masks)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        mask = 0xFFFFFFFF
        data[i].effective = (effective >> shift) & mask
        data[i].permitted = (permitted >> shift) & mask
        data[i].inheritable = (inheritable >> shift) & mask
    _check(_syscall(NR_CAPSET, ctypes.byref(header), ctypes.byref(data)))


def capset_empty() -> None:
    """Clear the effective, permitted and inheritable sets (all 64 bits)."""
    capset(0, 0, 0)


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_syscall(NR_CAPGET, ctypes.byref(header), ctypes.byref(data)))
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


# Landlock (include/uapi/linux/landlock.h).
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

ACCESS_NET_BIND_TCP = 1 << 0  # ABI 4
ACCESS_NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel struct is __attribute__((packed))
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi_version() -> int:
    """The Landlock ABI the kernel offers; 0 when Landlock is absent or disabled."""
    result = _syscall(NR_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    return 0 if result < 0 else int(result)


def landlock_create_ruleset(handled_fs: int, handled_net: int, scoped: int) -> int:
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    return _check(
        _syscall(NR_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0)
    )


def landlock_add_path_rule(ruleset_fd: int, parent_fd: int, allowed: int) -> None:
    attr = _PathBeneathAttr(allowed, parent_fd)
    _check(_syscall(NR_LANDLOCK_ADD_RULE, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(attr), 0))


def landlock_restrict_self(ruleset_fd: int) -> None:
    _check(_syscall(NR_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0))


# openat2(2): path resolution the kernel confines (include/uapi/linux/openat2.h).
NR_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_OPEN_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
_FS_ENCODING = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())  # os.fsencode's
# One struct per (flags, mode, resolve) the callers use (a few dozen): the kernel only reads it.
_HOWS: dict[tuple[int, int, int], ctypes._Pointer[_OpenHow]] = {}


def openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """openat2(2); raises OSError (with ``filename``) like ``os.open``. On every brokered open's path."""
    return openat2_how(dirfd, path, path.encode(*_FS_ENCODING), open_how(flags, mode, resolve))


if TYPE_CHECKING:
    OpenHow = ctypes._Pointer[_OpenHow]
else:
    OpenHow = ctypes._Pointer  # not subscriptable at run time


def open_how(flags: int, mode: int, resolve: int) -> OpenHow:
    """The ``struct open_how`` for these arguments (one per combination; the kernel only reads it)."""
    key = (flags, mode, resolve)
    how = _HOWS.get(key)
    if how is None:
        how = ctypes.pointer(_OpenHow(flags, mode, resolve))
        if len(_HOWS) < 256:
            _HOWS[key] = how
    return how


def openat2_how(dirfd: int, path: str, encoded: bytes, how: OpenHow) -> int:
    """``openat2`` with ``path`` encoded already (``os.fsencode``) and its ``open_how`` made:
    for a caller that opens the same path again and again."""
    fd: int = _syscall(NR_OPENAT2, dirfd, encoded, how, _OPEN_HOW_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


# mount_setattr(2): change the attributes of a whole mount tree at once.
NR_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


MOUNT_ATTR_IDMAP = 0x00100000
AT_EMPTY_PATH = 0x1000
NR_OPEN_TREE = 428
NR_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40


def open_tree_clone(source_fd: int) -> int:
    """open_tree(2) with OPEN_TREE_CLONE | AT_RECURSIVE: a detached copy of the tree at
    ``source_fd``, submounts included (without them a lookup would see what they cover).

    Unlike ``mount --bind``, the copy can be given attributes (an idmapping,
    read-only) before anyone can see it, then attached with :func:`move_mount_to`.
    """
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE
    return int(_check(_syscall(NR_OPEN_TREE, ctypes.c_int(source_fd), b"", ctypes.c_uint(flags))))


def mount_setattr_fd_recursive(mount_fd: int, attr_set: int, userns_fd: int = 0) -> None:
    """mount_setattr(2) with AT_RECURSIVE on a detached mount tree (``userns_fd``: its idmapping)."""
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    _check(
        _syscall(
            NR_MOUNT_SETATTR,
            ctypes.c_int(mount_fd),
            b"",
            ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
    )


def move_mount_to(mount_fd: int, target: str) -> None:
    """move_mount(2): attach the detached mount ``mount_fd`` at ``target``."""
    _check(
        _syscall(
            NR_MOVE_MOUNT,
            ctypes.c_int(mount_fd),
            b"",
            ctypes.c_int(AT_FDCWD),
            os.fsencode(target),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        )
    )


STATX_MNT_ID = 0x1000
_STATX_SIZE = 256
_STATX_MNT_ID_AT = 0x90  # struct statx: __u64 stx_mnt_id


def mount_id(fd: int) -> int:
    """The id of the mount ``fd`` is on (statx STATX_MNT_ID, Linux 5.8): two names of one
    directory through two mounts (a bind) have two ids."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    _check(
        _syscall(
            NR_STATX, ctypes.c_int(fd), b"", ctypes.c_int(AT_EMPTY_PATH), ctypes.c_uint(STATX_MNT_ID), buf
        )
    )
    return int.from_bytes(buf.raw[_STATX_MNT_ID_AT : _STATX_MNT_ID_AT + 8], "little")


def move_mount_onto(mount_fd: int, target_fd: int) -> None:
    """move_mount(2): attach the detached mount ``mount_fd`` onto the very file or directory
    ``target_fd`` (an O_PATH fd) holds, with no path to look up again."""
    _check(
        _syscall(
            NR_MOVE_MOUNT,
            ctypes.c_int(mount_fd),
            b"",
            ctypes.c_int(target_fd),
            b"",
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
        )
    )


def mount_setattr_recursive(path: str, attr_set: int) -> None:
    """Set ``attr_set`` on the mount at ``path`` and every mount below it."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    _check(
        _syscall(
            NR_MOUNT_SETATTR,
            AT_FDCWD,
            os.fsencode(path),
            AT_RECURSIVE,
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
    )


# pidfds and another process's memory: what the broker needs to serve a seccomp
# notification (the arguments live in the child's memory, its fds in its table).
NR_PIDFD_OPEN = 434
NR_PIDFD_GETFD = 438
PIDFD_THREAD = os.O_EXCL  # a pidfd for one thread, not only a thread-group leader (6.9)


def pidfd_open(pid: int, flags: int = 0) -> int:
    """pidfd_open(2); close-on-exec, as every pidfd is."""
    return int(_check(_syscall(NR_PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(flags))))


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """pidfd_getfd(2): our own copy of another process's fd (same open file, close-on-exec)."""
    return int(
        _check(_syscall(NR_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(targetfd), ctypes.c_uint(0)))
    )


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_process_vm_readv = _libc.process_vm_readv
_process_vm_readv.restype = ctypes.c_ssize_t
# Declared once: ctypes then converts plain ints itself, with no c_int()/c_ulong() built per call.
_process_vm_readv.argtypes = (
    ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong
)  # fmt: skip


def process_vm_read(pid: int, address: int, size: int) -> bytes:
    """Copy ``size`` bytes at ``address`` in process ``pid``; fewer if the range runs into unmapped memory.

    One remote iovec per page: the kernel stops at the first iovec it cannot
    read in full, so a string that ends just before an unmapped page is still
    read whole. Raises OSError (EFAULT) when not even the first byte is readable.
    Called once per brokered call, so it builds no more ctypes objects than it must.
    """
    if size <= 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    first = min(size, PAGE_SIZE - address % PAGE_SIZE)
    count = 1 + -(-(size - first) // PAGE_SIZE)
    remote = (_IOVec * count)()
    remote[0].base, remote[0].len = address, first
    at, end = address + first, address + size
    for i in range(1, count):
        step = min(end - at, PAGE_SIZE)
        remote[i].base, remote[i].len = at, step
        at += step
    local = _IOVec(ctypes.addressof(buf), size)
    got = _process_vm_readv(pid, ctypes.addressof(local), 1, ctypes.addressof(remote), count, 0)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[:got]


_connect = _libc.connect
_connect.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
_connect.restype = ctypes.c_int


def connect_raw(fd: int, address: bytes) -> int:
    """connect(2) with a sockaddr exactly as given (any family, any length); 0 or the errno.

    Python's ``socket.connect`` builds the sockaddr from the socket's own family;
    the broker must pass on what the child asked for, byte for byte (an
    ``AF_UNSPEC`` disconnect, an abstract name with its trailing bytes).
    """
    if _connect(fd, address, len(address)) == 0:
        return 0
    return ctypes.get_errno()


# seccomp(2) and the classic BPF it loads (include/uapi/linux/seccomp.h, filter.h, bpf_common.h).
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ALLOW = 0x7FFF0000
BPF_MAXINSNS = 4096
#: struct sock_filter: code, jt, jf, k.
SOCK_FILTER = struct.Struct("<HBBI")
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JMP_JA = 0x05  # BPF_JMP | BPF_JA
BPF_JMP_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JMP_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def seccomp_set_mode_filter(bpf: bytes, flags: int) -> int:
    """seccomp(SECCOMP_SET_MODE_FILTER) with ``bpf`` (whole sock_filter entries): the
    notification fd with SECCOMP_FILTER_FLAG_NEW_LISTENER, else 0."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // SOCK_FILTER.size, ctypes.addressof(buf))
    return int(
        _check(
            _syscall(
                ctypes.c_long(NR_SECCOMP),
                ctypes.c_ulong(SECCOMP_SET_MODE_FILTER),
                ctypes.c_ulong(flags),
                ctypes.byref(prog),
            )
        )
    )
