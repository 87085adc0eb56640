"""The one table of named system-call groups, in the spirit of systemd's ``SystemCallFilter=``.

A policy names groups (``"@file-system"``) or single calls (``"getcpu"``); :func:`expand`
turns them into a set of names that ``privsep.plan.filter`` compiles into a filter.
The table is x86_64's: every name in a group exists on x86_64 (a test holds it to that),
so ``@system-service`` compiles without "unknown syscall" noise.

Two rules shape it:

* ``DANGEROUS`` is disjoint from every group and can never be allowed by name: those calls
  either reach state outside the sandbox (ptrace, keyrings, mounts, the clock) or are
  classic kernel-exploit primitives (io_uring, userfaultfd, bpf). The filter makes them
  *report* (seccomp user notification, the broker kills the child and says which call it
  was) instead of failing quietly, so a denial there explains itself.
* A few calls are allowed only with safe arguments; the compiler, not this table, enforces
  that: ``socket``/``socketpair`` for ``AF_UNIX`` only, ``clone`` without namespace flags,
  ``ioctl`` without ``TIOCSTI``/``TIOCLINUX``, ``personality`` for ``PER_LINUX`` or the
  query only, and ``clone3`` always fails with ``ENOSYS`` (its flags live in memory a
  filter cannot read, and ``ENOSYS`` is what makes libc fall back to ``clone``).

This module is pure: no syscalls, no libseccomp. Unknown *single* names pass through
:func:`expand` and are checked against libseccomp by the compiler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from privsep.errors import PolicyError

__all__ = ["DANGEROUS", "GROUPS", "GROUP_DOCS", "SPECIAL", "expand", "refuse_dangerous"]

# Every program: the dynamic loader, libc start-up, threads, time and identity queries.
# execve is here (as in systemd) because the filter is loaded *before* the command is exec'd.
_DEFAULT = frozenset(
    {
        "arch_prctl",
        "brk",
        "clock_getres",
        "clock_gettime",
        "clock_nanosleep",
        "execve",
        "exit",
        "exit_group",
        "futex",
        "futex_requeue",
        "futex_wait",
        "futex_waitv",
        "futex_wake",
        "get_robust_list",
        "getegid",
        "geteuid",
        "getgid",
        "getgroups",
        "getpgid",
        "getpgrp",
        "getpid",
        "getppid",
        "getrandom",
        "getresgid",
        "getresuid",
        "getrlimit",
        "getsid",
        "gettid",
        "gettimeofday",
        "getuid",
        "membarrier",
        "mmap",
        "mprotect",
        "munmap",
        "nanosleep",
        "pause",
        "prlimit64",
        "restart_syscall",
        "rseq",
        "rt_sigreturn",
        "sched_getaffinity",
        "sched_yield",
        "set_robust_list",
        "set_tid_address",
        "time",
        "uname",
    }
)

_BASIC_IO = frozenset(
    {
        "close",
        "close_range",
        "copy_file_range",
        "dup",
        "dup2",
        "dup3",
        "fcntl",
        "lseek",
        "pread64",
        "preadv",
        "preadv2",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "read",
        "readv",
        "sendfile",
        "splice",
        "tee",
        "write",
        "writev",
    }
)

# Path-based calls are safe to allow here because Landlock and the broker decide which
# paths exist for the child at all.
_FILE_SYSTEM = frozenset(
    {
        "access",
        "cachestat",
        "chdir",
        "chmod",
        "creat",
        "faccessat",
        "faccessat2",
        "fadvise64",
        "fallocate",
        "fchdir",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "fgetxattr",
        "file_getattr",
        "file_setattr",
        "flistxattr",
        "flock",
        "fremovexattr",
        "fsetxattr",
        "fstat",
        "fstatfs",
        "ftruncate",
        "futimesat",
        "getcwd",
        "getdents",
        "getdents64",
        "getxattr",
        "getxattrat",
        "inotify_add_watch",
        "inotify_init",
        "inotify_init1",
        "inotify_rm_watch",
        "lgetxattr",
        "link",
        "linkat",
        "listxattr",
        "listxattrat",
        "llistxattr",
        "lremovexattr",
        "lsetxattr",
        "lstat",
        "mkdir",
        "mkdirat",
        "mknod",
        "mknodat",
        "newfstatat",
        "open",
        "openat",
        "openat2",
        "readahead",
        "readlink",
        "readlinkat",
        "removexattr",
        "removexattrat",
        "rename",
        "renameat",
        "renameat2",
        "rmdir",
        "setxattr",
        "setxattrat",
        "stat",
        "statfs",
        "statx",
        "symlink",
        "symlinkat",
        "truncate",
        "umask",
        "unlink",
        "unlinkat",
        "utime",
        "utimensat",
        "utimes",
    }
)

_IO_EVENT = frozenset(
    {
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_pwait",
        "epoll_pwait2",
        "epoll_wait",
        "eventfd",
        "eventfd2",
        "poll",
        "ppoll",
        "pselect6",
        "select",
    }
)

# SysV IPC objects are global unless the child has its own IPC namespace (it normally
# does); process_vm_* and process_madvise are *not* here: they reach into other processes.
_IPC = frozenset(
    {
        "memfd_create",
        "mq_getsetattr",
        "mq_notify",
        "mq_open",
        "mq_timedreceive",
        "mq_timedsend",
        "mq_unlink",
        "msgctl",
        "msgget",
        "msgrcv",
        "msgsnd",
        "pipe",
        "pipe2",
        "semctl",
        "semget",
        "semop",
        "semtimedop",
        "shmat",
        "shmctl",
        "shmdt",
        "shmget",
    }
)

# mlock is bounded by RLIMIT_MEMLOCK; mseal and pkeys only take rights away.
_MEMORY = frozenset(
    {
        "brk",
        "get_mempolicy",
        "madvise",
        "map_shadow_stack",
        "mbind",
        "mincore",
        "mlock",
        "mlock2",
        "mlockall",
        "mmap",
        "mprotect",
        "mremap",
        "mseal",
        "msync",
        "munlock",
        "munlockall",
        "munmap",
        "pkey_alloc",
        "pkey_free",
        "pkey_mprotect",
        "set_mempolicy",
    }
)

# On sockets the child already holds (from the broker, or AF_UNIX ones it made itself).
_NETWORK_IO = frozenset(
    {
        "accept",
        "accept4",
        "bind",
        "connect",
        "getpeername",
        "getsockname",
        "getsockopt",
        "listen",
        "recvfrom",
        "recvmmsg",
        "recvmsg",
        "sendmmsg",
        "sendmsg",
        "sendto",
        "setsockopt",
        "shutdown",
        "socket",
        "socketpair",
    }
)

_PROCESS = frozenset(
    {
        "capget",
        "clone",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "fork",
        "getrusage",
        "kill",
        "pidfd_open",
        "pidfd_send_signal",
        "prctl",
        "rt_sigqueueinfo",
        "rt_tgsigqueueinfo",
        "setpgid",
        "setsid",
        "tgkill",
        "times",
        "tkill",
        "vfork",
        "wait4",
        "waitid",
    }
)

_SIGNAL = frozenset(
    {
        "rt_sigaction",
        "rt_sigpending",
        "rt_sigprocmask",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "sigaltstack",
        "signalfd",
        "signalfd4",
    }
)

_TIMER = frozenset(
    {
        "alarm",
        "getitimer",
        "setitimer",
        "timer_create",
        "timer_delete",
        "timer_getoverrun",
        "timer_gettime",
        "timer_settime",
        "timerfd_create",
        "timerfd_gettime",
        "timerfd_settime",
        "times",
    }
)

_SYNC = frozenset(
    {
        "fdatasync",
        "fsync",
        "msync",
        "sync",
        "sync_file_range",
        "syncfs",
    }
)

# Reading limits and usage, and *lowering* one's own limits or priority: raising a hard
# limit or a scheduling priority needs CAP_SYS_RESOURCE / CAP_SYS_NICE, which the child
# has dropped, so prlimit64/setrlimit cannot undo the rlimits layer.
_RESOURCES = frozenset(
    {
        "getcpu",
        "getpriority",
        "getrlimit",
        "getrusage",
        "ioprio_get",
        "ioprio_set",
        "prlimit64",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_getaffinity",
        "sched_getattr",
        "sched_getparam",
        "sched_getscheduler",
        "sched_rr_get_interval",
        "sched_setaffinity",
        "sched_setattr",
        "sched_setparam",
        "sched_setscheduler",
        "setpriority",
        "setrlimit",
        "sysinfo",
    }
)

# Without CAP_CHOWN / CAP_SETUID the child can only shuffle ids it already has.
_CHOWN = frozenset({"chown", "fchown", "fchownat", "lchown"})
_SETUID = frozenset(
    {
        "capset",
        "setfsgid",
        "setfsuid",
        "setgid",
        "setgroups",
        "setregid",
        "setresgid",
        "setresuid",
        "setreuid",
        "setuid",
    }
)

# Legacy kernel AIO (bounded by fs.aio-max-nr); io_uring is in DANGEROUS instead.
_AIO = frozenset(
    {
        "io_cancel",
        "io_destroy",
        "io_getevents",
        "io_pgetevents",
        "io_setup",
        "io_submit",
    }
)

# Self-restriction only: a stacked seccomp filter can never loosen ours (the kernel takes
# the strictest verdict of all filters), and Landlock domains only ever shrink.
_SANDBOX = frozenset(
    {
        "landlock_add_rule",
        "landlock_create_ruleset",
        "landlock_restrict_self",
        "seccomp",
    }
)

_GROUP_TABLE: dict[str, tuple[frozenset[str], str]] = {
    "@default": (_DEFAULT, "what every program needs to start and run: loader, libc, threads, time, ids"),
    "@basic-io": (_BASIC_IO, "read, write, seek, duplicate and close file descriptors already held"),
    "@file-system": (_FILE_SYSTEM, "path-based calls; which paths exist is Landlock's and the broker's say"),
    "@io-event": (_IO_EVENT, "poll, select, epoll and eventfd event loops"),
    "@ipc": (_IPC, "pipes, memfds, POSIX and SysV IPC (SysV isolated by the IPC namespace)"),
    "@memory": (_MEMORY, "map, protect, advise, lock and seal the process's own memory"),
    "@network-io": (
        _NETWORK_IO,
        "use sockets already held; socket()/socketpair() are limited to AF_UNIX by argument",
    ),
    "@process": (
        _PROCESS,
        "fork, exec, wait and signal processes; clone without namespace flags (clone3: ENOSYS)",
    ),
    "@signal": (_SIGNAL, "install handlers, mask, wait for and read signals"),
    "@timer": (_TIMER, "interval timers, POSIX timers and timerfds"),
    "@sync": (_SYNC, "flush file data to storage"),
    "@resources": (_RESOURCES, "read limits, usage and scheduling; lower one's own limits and priority"),
    "@chown": (_CHOWN, "change file ownership (only to ids the child already has)"),
    "@setuid": (_SETUID, "change credentials (only among ids the child already has)"),
    "@aio": (_AIO, "legacy Linux kernel AIO (not io_uring, which is never allowed)"),
    "@sandbox": (_SANDBOX, "restrict oneself further with Landlock or a stricter seccomp filter"),
}

# The groups @system-service is made of, plus the odd calls no group owns (systemd does
# the same): ioctl (argument-filtered) and personality's safe forms, handled by the compiler.
_SYSTEM_SERVICE_PARTS = (
    "@default",
    "@basic-io",
    "@file-system",
    "@io-event",
    "@ipc",
    "@memory",
    "@network-io",
    "@process",
    "@signal",
    "@timer",
    "@sync",
    "@resources",
    "@chown",
    "@setuid",
    # Not @aio: every io_setup draws on the host-wide fs.aio-nr (65536 here), which one
    # sandbox could exhaust for the whole host. A policy that needs it lists "@aio".
    "@sandbox",
)
_SYSTEM_SERVICE_EXTRA = frozenset({"ioctl"})

_GROUP_TABLE["@system-service"] = (
    frozenset().union(*(_GROUP_TABLE[g][0] for g in _SYSTEM_SERVICE_PARTS)) | _SYSTEM_SERVICE_EXTRA,
    "what dynamically linked programs, bash, coreutils and CPython need: every group above plus ioctl",
)

#: Group name -> the syscall names it allows.
GROUPS: Mapping[str, frozenset[str]] = MappingProxyType({k: v[0] for k, v in _GROUP_TABLE.items()})
#: Group name -> a one-line explanation, shown by ``privsep policy`` and in errors.
GROUP_DOCS: Mapping[str, str] = MappingProxyType({k: v[1] for k, v in _GROUP_TABLE.items()})

#: Calls the compiler always treats the same way, whatever the policy allows; naming them
#: in a policy is refused with this explanation.
SPECIAL: Mapping[str, str] = MappingProxyType(
    {
        "clone3": "clone3 always fails with ENOSYS so that libc falls back to clone, "
        "whose flags the filter can check; allow 'clone' (in @process) instead",
        "personality": "personality(PER_LINUX) and the query personality(0xffffffff) are always "
        "allowed; every other persona (e.g. ADDR_NO_RANDOMIZE) is refused",
    }
)

#: Never allowed, by any group or by name. The filter reports them (seccomp notification)
#: or kills, per the policy. Names that do not exist on x86_64 are kept so that a policy
#: written for another architecture is refused the same way.
DANGEROUS: frozenset[str] = frozenset(
    {
        # Reading or steering other processes.
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "pidfd_getfd",
        "kcmp",
        "process_madvise",  # acts on another process's memory, like process_vm_*
        # Classic kernel-exploit primitives with large, fast-moving attack surface.
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "bpf",
        "userfaultfd",
        "perf_event_open",
        "modify_ldt",  # x86 LDT: a string of CVEs; only Wine/DOSEMU-style emulators need it
        "subpage_prot",
        "switch_endian",
        "vm86",
        "vm86old",  # CPU emulation, other archs
        # Keyrings are not namespaced: they reach the host's keys.
        "keyctl",
        "add_key",
        "request_key",
        # Kernel, modules and the machine itself.
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "create_module",
        "get_kernel_syms",
        "query_module",  # obsolete module calls
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "quotactl",
        "quotactl_fd",
        "syslog",
        "vhangup",
        "lookup_dcookie",
        "iopl",
        "ioperm",
        "uselib",
        "nfsservctl",
        "_sysctl",
        "fanotify_init",
        # The filesystem tree and namespaces: confinement is set up before exec and must stay.
        "mount",
        "umount",
        "umount2",
        "pivot_root",
        "chroot",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "open_tree_attr",
        "mount_setattr",
        "unshare",
        "setns",
        "open_by_handle_at",
        "name_to_handle_at",
        # Machine-wide identity and clocks.
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
        "setdomainname",
        "sethostname",
        # Handled specially by the compiler (see SPECIAL), never by name.
        "clone3",
        "personality",
    }
)


def expand(names: Iterable[str]) -> frozenset[str]:
    """Resolve group names so the compiler only ever sees syscall names.

    Refusing a dangerous name here, not later, lets the error name the policy entry the
    user wrote rather than a compiled filter.
    """
    if isinstance(names, str):  # a lone "@default" would otherwise iterate per character
        names = (names,)
    result: set[str] = set()
    for name in names:
        if name.startswith("@"):
            group = GROUPS.get(name)
            if group is None:
                known = ", ".join(sorted(GROUPS))
                raise PolicyError(f"unknown syscall group {name!r}; known groups: {known}")
            result |= group
        else:
            refuse_dangerous(name)
            result.add(name)
    return frozenset(result)


def refuse_dangerous(name: str) -> None:
    """Raise PolicyError if ``name`` is dangerous; shared so every layer words it the same."""
    if name in DANGEROUS:
        message = f"{name!r} is in the dangerous set and can never be allowed"
        if name in SPECIAL:
            message += f" ({SPECIAL[name]})"
        raise PolicyError(message)
