"""A hostile child under ``privsep run`` tries the known ways out; each must fail for the right reason.

Every test starts a real sandbox, with the broker as root and as a non-root user
(``broker_user``), and checks the outcome from both sides: what the child saw
(its own report on stdout) and what the broker said (exit status, stderr).
Where it can, a test carries a control: the same helper making a harmless call
that works, or the same attack succeeding outside the sandbox, so a pass means
"refused by privsep", not "the harness is broken".

Native attacks use ``hostile``, a small C program (``HOSTILE_C``) compiled
once per session into a world-readable directory and granted by a policy.
Its arguments are calls, run in order, each reported as one line::

    39                        a native syscall: number, then up to six arguments
    int80:20 / x32:39         the same through int 0x80 (i386) / with the x32 bit
    cat:/proc/self/status     print a file
    ids                       print the real/effective/saved uid and CapEff
    memexec:PATH              copy PATH into a memfd and execveat it with the remaining calls

An argument is a number, ``buf`` (4 KiB of zeros), ``hex:...`` (those bytes),
``pidfd1`` (a pidfd of pid 1), ``peerpidfd`` (``SO_PEERPIDFD`` of the channel:
a pidfd of the broker) or ``ppid``. Output: ``call SPEC`` before the call and
``result SPEC ret=R errno=E`` after it, so a call that killed the process has a
``call`` line and no ``result`` line.

Tests marked ``xfail(strict=True, reason="BUG: ...")`` assert the safe outcome
for a weakness that exists today; they turn into failures once it is fixed, and
then the marker goes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from privsep import _linux
from tests.conftest import (
    NONROOT_ID,
    PRIVSEP,
    PYTHON,
    REPO,
    RunPrivsep,
    as_nonroot,
    json_output,
    privsep_argv,
    python_child,
)

# --------------------------------------------------------------------------- the native helper

HOSTILE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;
static char bufs[7][4096];

static long arg(const char *s, int slot) {
    if (strncmp(s, "hex:", 4) == 0) {
        const char *h = s + 4;
        for (size_t k = 0; 2 * k + 1 < strlen(h) && k < sizeof bufs[slot]; k++)
            sscanf(h + 2 * k, "%2hhx", (unsigned char *)&bufs[slot][k]);
        return (long)bufs[slot];
    }
    if (strcmp(s, "buf") == 0) return (long)bufs[slot];
    if (strcmp(s, "ppid") == 0) return (long)getppid();
    if (strcmp(s, "pidfd1") == 0) return syscall(SYS_pidfd_open, 1, 0);
    if (strcmp(s, "peerpidfd") == 0) {
        int fd = -1; socklen_t len = sizeof fd;
        if (getsockopt(3, SOL_SOCKET, 77 /* SO_PEERPIDFD */, &fd, &len) != 0) return -1;
        return fd;
    }
    return (long)strtoull(s, NULL, 0);
}

static void cat(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { printf("cat %s failed errno=%d\n", path, errno); return; }
    char line[512];
    while (fgets(line, sizeof line, f)) fputs(line, stdout);
    fclose(f);
}

static void ids(void) {
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    printf("ids %d %d %d\n", (int)r, (int)e, (int)s);
    cat("/proc/self/status");
}

static void memexec(const char *path, char **rest) {
    int in = open(path, O_RDONLY | O_CLOEXEC);
    int mfd = memfd_create("payload", MFD_CLOEXEC);
    char chunk[65536];
    ssize_t n;
    while (in >= 0 && (n = read(in, chunk, sizeof chunk)) > 0)
        if (write(mfd, chunk, (size_t)n) != n) break;
    rest[-1] = "hostile";  /* argv[0] of the new image */
    syscall(SYS_execveat, mfd, "", rest - 1, environ, AT_EMPTY_PATH);
    printf("memexec %s failed errno=%d\n", path, errno);
    exit(1);
}

int main(int argc, char **argv) {
    pid_t me = getpid();
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int t = 1; t < argc; t++) {
        const char *spec = argv[t], *mode = "native";
        if (strcmp(spec, "ids") == 0) { ids(); continue; }
        if (strncmp(spec, "cat:", 4) == 0) { cat(spec + 4); continue; }
        if (strncmp(spec, "memexec:", 8) == 0) memexec(spec + 8, argv + t + 1);
        if (strncmp(spec, "int80:", 6) == 0) { mode = "int80"; spec += 6; }
        if (strncmp(spec, "x32:", 4) == 0) { mode = "x32"; spec += 4; }
        char *copy = strdup(spec);
        long a[7] = {0};
        int n = 0;
        for (char *p = strtok(copy, ","); p && n < 7; p = strtok(NULL, ","), n++)
            a[n] = n == 0 ? strtol(p, NULL, 0) : arg(p, n);
        printf("call %s\n", argv[t]);
        long r;
        int e = 0;
        if (strcmp(mode, "int80") == 0) {
            __asm__ volatile("int $0x80" : "=a"(r) : "a"(a[0]), "b"(a[1]), "c"(a[2]), "d"(a[3]) : "memory");
            if (r < 0 && r > -4096) { e = (int)-r; r = -1; }
        } else {
            long nr = strcmp(mode, "x32") == 0 ? (a[0] | 0x40000000L) : a[0];
            errno = 0;
            r = syscall(nr, a[1], a[2], a[3], a[4], a[5], a[6]);
            e = r == -1 ? errno : 0;
        }
        if (getpid() != me) _exit(0);  /* a clone that got through: the copy leaves at once */
        printf("result %s ret=%ld errno=%d\n", argv[t], r, e);
        free(copy);
    }
    return 0;
}
"""

# x86_64 syscall numbers used below (arch/x86/entry/syscalls/syscall_64.tbl).
NR = {
    "ioctl": 16,
    "getpid": 39,
    "socket": 41,
    "socketpair": 53,
    "clone": 56,
    "kill": 62,
    "setsid": 112,
    "personality": 135,
    "pidfd_send_signal": 424,
    "clone3": 435,
}
TIOCSTI, TIOCLINUX, TIOCSCTTY, TCGETS = 0x5412, 0x541C, 0x540E, 0x5401
HIGH = 1 << 32  # set in the upper half of a 64-bit argument; the kernel reads only the low 32 bits
GETPID = str(NR["getpid"])
_RESULT = re.compile(r"^result (\S+) ret=(-?\d+) errno=(\d+)\r?$", re.MULTILINE)
_SIGSYS_EXIT = 128 + signal.SIGSYS


def hexstr(text: str) -> str:
    """A NUL-terminated string argument for the helper."""
    return "hex:" + text.encode().hex() + "00"


def results(output: str) -> dict[str, tuple[int, int]]:
    """``{call spec: (return value, errno)}`` for every call the helper finished."""
    return {m[1]: (int(m[2]), int(m[3])) for m in _RESULT.finditer(output)}


@pytest.fixture(scope="session")
def helper_dir() -> Iterator[Path]:
    """A world-readable directory holding the compiled helper and a policy that grants it."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the native attack helper (bash .ci/setup installs it)")
    path = Path(tempfile.mkdtemp(prefix="privsep-adversarial-"))
    try:
        path.chmod(0o755)
        (path / "hostile.c").write_text(HOSTILE_C)
        build = subprocess.run(
            ["gcc", "-std=gnu11", "-O1", "-Wall", "-o", str(path / "hostile"), str(path / "hostile.c")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert build.returncode == 0, build.stderr
        (path / "hostile.toml").write_text(f'extends = "minimal"\n[view]\nread = ["{path}"]\n')
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def hostile(run_privsep: RunPrivsep, helper_dir: Path, *calls: str) -> subprocess.CompletedProcess[str]:
    """Run the helper confined (policy ``minimal`` + the helper), a native getpid first as the control."""
    return run_privsep(
        "--policy", str(helper_dir / "hostile.toml"), "--", str(helper_dir / "hostile"), GETPID, *calls
    )


def write_policy(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def grant_policy(directory: Path) -> str:
    """A policy: ``python`` plus ``directory``, read-only."""
    return f'extends = "python"\n[view]\nread = ["{directory}"]\n'


def assert_control_ran(proc: subprocess.CompletedProcess[str]) -> None:
    """The helper started confined and a plain native syscall worked: the harness is sound."""
    got = results(proc.stdout)
    assert got.get(GETPID) == (2, 0), f"the control getpid did not run\n{proc.stdout}\n{proc.stderr}"


# --------------------------------------------------------------------------- foreign syscall ABIs


@pytest.mark.parametrize(
    "call",
    [
        pytest.param("int80:20", id="i386-int80-getpid"),
        pytest.param("int80:26,16,1", id="i386-int80-ptrace"),
        pytest.param("x32:39", id="x32-getpid"),
        pytest.param("x32:101,16,1", id="x32-ptrace"),
    ],
)
def test_foreign_syscall_abis_kill_the_child(run_privsep: RunPrivsep, helper_dir: Path, call: str) -> None:
    """Escape class: an x86_64 allowlist bypassed through the i386 or x32 syscall tables.

    Killed by the filter's architecture check itself (SIGSYS, no notification),
    whatever the call is; the native getpid before it is the control. Second
    control: unconfined, the same ABI's getpid returns (i386: the pid; x32: the
    pid, or ENOSYS on a kernel built without x32), so SIGSYS comes from the filter.
    """
    harmless = "int80:20" if call.startswith("int80") else "x32:39"
    unconfined = subprocess.run(
        [str(helper_dir / "hostile"), harmless], capture_output=True, text=True, check=False
    )
    assert unconfined.returncode == 0 and harmless in results(unconfined.stdout), unconfined
    proc = hostile(run_privsep, helper_dir, call)
    assert proc.returncode == _SIGSYS_EXIT, proc.stderr
    assert_control_ran(proc)
    assert f"call {call}" in proc.stdout
    assert call not in results(proc.stdout), "the foreign call returned"
    assert "SIGSYS" in proc.stderr and "foreign architecture" in proc.stderr


# --------------------------------------------------------------------------- the dangerous set

# (name the broker must report, the call). Arguments aim at pid 1 (init, the
# command's parent) or the broker, and are chosen to be harmless if a call ever got through.
DANGEROUS_CALLS = [
    ("ptrace", "101,16,1"),  # PTRACE_ATTACH init
    ("ptrace", "101,0x4206,ppid,0,0"),  # PTRACE_SEIZE the parent
    ("ptrace", "101,0"),  # PTRACE_TRACEME
    ("process_vm_readv", "310,1,buf,1,buf,1,0"),
    ("process_vm_writev", "311,ppid,buf,1,buf,1,0"),
    ("pidfd_getfd", "438,pidfd1,0,0"),  # steal init's fd 0
    ("pidfd_getfd", "438,peerpidfd,0,0"),  # steal the broker's fd 0 through SO_PEERPIDFD
    ("process_madvise", "440,pidfd1,buf,1,0,0"),
    ("kcmp", "312,1,2,0,0,0"),
    ("bpf", "321,5,buf,128"),  # BPF_PROG_LOAD
    ("keyctl", "250,0,-4,0"),  # KEYCTL_GET_KEYRING_ID of the user keyring (shared with the host uid)
    ("add_key", f"248,{hexstr('user')},{hexstr('x')},hex:78,1,-4"),
    ("request_key", f"249,{hexstr('user')},{hexstr('x')},0,-4"),
    ("userfaultfd", "323,0"),
    ("perf_event_open", "298,buf,0,-1,-1,0"),
    ("open_by_handle_at", "304,-100,buf,0"),
    ("name_to_handle_at", f"303,-100,{hexstr('/')},buf,buf,0"),
    ("mount", f"165,{hexstr('none')},{hexstr('/')},{hexstr('tmpfs')},0,0"),
    ("umount2", f"166,{hexstr('/')},2"),
    ("pivot_root", f"155,{hexstr('/')},{hexstr('/')}"),
    ("chroot", f"161,{hexstr('/usr')}"),
    ("fsopen", f"430,{hexstr('tmpfs')},0"),
    ("fsmount", "432,-1,0,0"),
    ("fspick", f"433,-100,{hexstr('/')},0"),
    ("open_tree", f"428,-100,{hexstr('/')},1"),  # OPEN_TREE_CLONE
    ("move_mount", f"429,-1,{hexstr('')},-100,{hexstr('/')},0"),
    ("mount_setattr", f"442,-100,{hexstr('/')},0,buf,32"),
    ("unshare", "272,0x10000000"),  # CLONE_NEWUSER
    ("setns", "308,pidfd1,0x20000"),  # into init's mount namespace
    ("init_module", f"175,buf,16,{hexstr('')}"),
    ("finit_module", f"313,0,{hexstr('')},0"),
    ("delete_module", f"176,{hexstr('privsep-none')},0"),
    ("kexec_load", "246,0,0,0,0xffffffff"),
    ("kexec_file_load", "320,-1,-1,0,0,0xffffffff"),
    ("io_uring_setup", "425,8,buf"),
    ("io_uring_enter", "426,-1,0,0,0,0,0"),
    ("io_uring_register", "427,-1,0,0,0"),
    ("modify_ldt", "154,0,buf,16"),
    ("iopl", "172,3"),
    ("ioperm", "173,0x80,1,1"),
    ("syslog", "103,3,buf,64"),
    ("reboot", "169,0,0,0,0"),
    ("swapon", f"167,{hexstr('/privsep-none')},0"),
    ("acct", f"163,{hexstr('/privsep-none')}"),
    ("fanotify_init", "300,0,0"),
    ("vhangup", "153"),
    ("settimeofday", "164,0,0"),
    ("clock_settime", "227,99,buf"),
    ("sethostname", f"170,{hexstr('x')},1"),
]


@pytest.mark.parametrize(
    ("name", "call"), DANGEROUS_CALLS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(DANGEROUS_CALLS)]
)
def test_dangerous_syscalls_kill_the_sandbox_and_are_named(
    run_privsep: RunPrivsep, helper_dir: Path, name: str, call: str
) -> None:
    """Escape class: the classic primitives (tracing, other processes' memory and fds,
    keyrings, eBPF, io_uring, userfaultfd, perf, the mount API, namespaces, modules, kexec).

    The call goes to the broker as a seccomp notification, is never answered,
    and the whole sandbox dies with 159; the broker names the call.
    """
    proc = hostile(run_privsep, helper_dir, call)
    assert proc.returncode == _SIGSYS_EXIT, f"{proc.stdout}\n{proc.stderr}"
    assert_control_ran(proc)
    assert f"call {call}" in proc.stdout
    assert call not in results(proc.stdout), "the dangerous call returned to the child"
    assert f"killed by seccomp: the command called {name}," in proc.stderr


# --------------------------------------------------------------------------- refused with an errno

# (call, expected): an errno name, or "ok" for a control that must succeed.
# Each errno differs from what the kernel itself would answer, so it names seccomp.
ERRNO_CALLS = [
    pytest.param(f"{NR['personality']},0x0008", "EPERM", id="personality-PER_LINUX32"),
    pytest.param(f"{NR['personality']},0x0040000", "EPERM", id="personality-ADDR_NO_RANDOMIZE"),
    pytest.param(f"{NR['personality']},{HIGH | 0x0008:#x}", "EPERM", id="personality-high-bits"),
    pytest.param(f"{NR['personality']},0xffffffff", "ok", id="personality-query-control"),
    pytest.param(f"{NR['clone3']},buf,88", "ENOSYS", id="clone3"),
    pytest.param(f"{NR['clone']},{0x10000000 | 17:#x}", "EPERM", id="clone-NEWUSER"),
    # Alone, NEWNS/NEWPID/NEWNET need CAP_SYS_ADMIN and the kernel refuses them anyway; with
    # NEWUSER an unprivileged process gets them all: a container of its own.
    pytest.param(f"{NR['clone']},{0x70020000 | 17:#x}", "EPERM", id="clone-NEWUSER-NEWNS-NEWPID-NEWNET"),
    pytest.param(f"{NR['clone']},{HIGH | 0x10000000 | 17:#x}", "EPERM", id="clone-NEWUSER-high-bits"),
    pytest.param(f"{NR['clone']},17", "ok", id="clone-plain-fork-control"),
    # TCP/UDP sockets are made in the sandbox's own empty network namespace; their connect and
    # bind go to the broker (tests/integration/test_transparent_bind.py, test_policies.py).
    pytest.param(f"{NR['socket']},2,1,0", "ok", id="socket-AF_INET-empty-netns"),
    pytest.param(f"{NR['socket']},10,2,0", "ok", id="socket-AF_INET6-empty-netns"),
    pytest.param(f"{NR['socket']},16,3,0", "EAFNOSUPPORT", id="socket-AF_NETLINK"),
    pytest.param(f"{NR['socket']},17,3,0x300", "EAFNOSUPPORT", id="socket-AF_PACKET"),
    # TCP and UDP only: other types and protocols are kernel code (some autoloaded) with no use here.
    pytest.param(f"{NR['socket']},2,3,1", "ESOCKTNOSUPPORT", id="socket-AF_INET-raw"),
    pytest.param(f"{NR['socket']},2,6,33", "ESOCKTNOSUPPORT", id="socket-AF_INET-DCCP"),
    pytest.param(f"{NR['socket']},2,1,262", "EPROTONOSUPPORT", id="socket-AF_INET-MPTCP"),
    pytest.param(f"{NR['socket']},2,1,132", "EPROTONOSUPPORT", id="socket-AF_INET-SCTP"),
    pytest.param(f"{NR['socket']},10,2,136", "EPROTONOSUPPORT", id="socket-AF_INET6-UDPLITE"),
    pytest.param(f"{NR['socket']},2,2,1", "EPROTONOSUPPORT", id="socket-AF_INET-ICMP-ping"),
    pytest.param(f"{NR['socket']},2,{0x80801:#x},6", "ok", id="socket-AF_INET-TCP-cloexec-nonblock"),
    pytest.param(f"{NR['socket']},{HIGH | 16:#x},3,0", "EAFNOSUPPORT", id="socket-AF_NETLINK-high-bits"),
    pytest.param(f"{NR['socketpair']},2,1,0,buf", "EAFNOSUPPORT", id="socketpair-AF_INET"),
    pytest.param(f"{NR['socket']},1,1,0", "ok", id="socket-AF_UNIX-control"),
    pytest.param(f"{NR['socketpair']},1,5,0,buf", "ok", id="socketpair-AF_UNIX-control"),
]


@pytest.mark.parametrize(("call", "expected"), ERRNO_CALLS)
def test_argument_filtered_syscalls_fail_with_an_errno(
    run_privsep: RunPrivsep, helper_dir: Path, call: str, expected: str
) -> None:
    """Escape classes: a new user/pid/mount namespace through clone or clone3 (whose
    flags a filter cannot read), other personas, and sockets of every family but unix and
    TCP/UDP (which live in the sandbox's empty network namespace; raw ones need a capability).

    Refused in place, not killed: libc's clone3 fallback and socket probing are normal.
    """
    proc = hostile(run_privsep, helper_dir, call)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert_control_ran(proc)
    ret, err = results(proc.stdout)[call]
    if expected == "ok":
        assert (ret >= 0, err) == (True, 0), f"control failed: ret={ret} errno={errno.errorcode.get(err)}"
    else:
        assert (ret, errno.errorcode.get(err)) == (-1, expected)


# --------------------------------------------------------------------------- the terminal

# Run in the pty's session (it is the terminal's controlling process): start
# privsep, then count what is waiting in the terminal's input queue, then inject
# one byte itself (root may) to prove the count would have seen an injection.
_PTY_WRAPPER = r"""
import fcntl, os, struct, subprocess, sys, termios, tty
tty.setraw(0)  # so FIONREAD counts single bytes, not complete lines
def queued():
    return struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, b"\0" * 4))[0]
rc = subprocess.run(sys.argv[1:]).returncode
print(f"EXIT {rc}\nQUEUED {queued()}", flush=True)
fcntl.ioctl(0, termios.TIOCSTI, b"Z")
print(f"CONTROL {queued()}", flush=True)
os.read(0, 1)
"""

_TTY_ATTACKS = [
    f"16,0,{TIOCSTI:#x},hex:51",  # push "Q" into the input queue
    f"16,0,{HIGH | TIOCSTI:#x},hex:51",
    f"16,0,{TIOCLINUX:#x},hex:03",  # TIOCL_PASTESEL: paste the console selection
    f"16,0,{HIGH | TIOCLINUX:#x},hex:03",
]
_TCGETS = f"16,0,{TCGETS:#x},buf"  # control: an ordinary terminal ioctl reaches the terminal


def _read_all(fd: int, deadline: float) -> bytes:
    output = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    return output


def test_terminal_injection_is_refused_on_a_real_pty(broker_user: str, helper_dir: Path) -> None:
    """Escape class: typing commands into the caller's shell with TIOCSTI, or pasting
    with TIOCLINUX, including the 64-bit request numbers the kernel truncates.

    The command's stdin is the pty the caller's session controls. Each attempt
    gets EPERM, and nothing reaches the terminal's input queue; the wrapper's own
    TIOCSTI (as root) proves the queue check works.
    """
    import pty

    args = ["--policy", str(helper_dir / "hostile.toml"), "--", str(helper_dir / "hostile"), GETPID]
    argv = [str(PYTHON), "-c", _PTY_WRAPPER, *privsep_argv(broker_user, [*args, _TCGETS, *_TTY_ATTACKS])]
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the forked test helper
        os.chdir(REPO)
        os.execv(argv[0], argv)
    reaped = (0, 0)
    try:
        output = _read_all(master, time.monotonic() + 60).decode(errors="replace")
        deadline = time.monotonic() + 10
        while (reaped := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.close(master)
        if reaped[0] == 0:  # still running: do not leave it behind
            os.kill(pid, signal.SIGKILL)
            reaped = os.waitpid(pid, 0)
    status = reaped[1]
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert "EXIT 0" in output, output
    got = results(output)
    assert got[GETPID] == (2, 0) and got[_TCGETS] == (0, 0), output
    for call in _TTY_ATTACKS:
        assert got[call] == (-1, errno.EPERM), (call, output)
    assert "QUEUED 0" in output, output
    assert "CONTROL 1" in output, output  # the probe does see an injected byte


def _on_a_detached_pty(
    broker_user: str, args: Sequence[str]
) -> tuple[subprocess.CompletedProcess[str], int, int]:
    """Run privsep with stdin on a pty no session controls; return the run, the bytes queued
    after, and the pty's device number."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        proc = subprocess.run(
            privsep_argv(broker_user, args),
            stdin=slave,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin"},
            start_new_session=True,
            check=False,
        )
        queued = struct.unpack("i", fcntl.ioctl(slave, termios.FIONREAD, b"\0" * 4))[0]
        # Control: root may inject into any terminal; the count sees it.
        fcntl.ioctl(slave, termios.TIOCSTI, b"Z")
        assert struct.unpack("i", fcntl.ioctl(slave, termios.FIONREAD, b"\0" * 4))[0] == queued + 1
        device = os.fstat(slave).st_rdev
    finally:
        os.close(slave)
        os.close(master)
    return proc, queued, device


def _tty_nr(stat_line: str) -> int:
    return int(stat_line.rsplit(")", 1)[1].split()[4])


def _tty_device(tty_nr: int) -> tuple[int, int]:
    """/proc/PID/stat's tty_nr as (major, minor)."""
    return (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)


_CTTY_CALLS = [f"{NR['setsid']}", f"16,0,{TIOCSCTTY:#x},0", "cat:/proc/self/stat"]


def test_terminal_injection_is_refused_even_by_the_terminals_owner(
    broker_user: str, helper_dir: Path
) -> None:
    """Escape class: TIOCSTI from a process that made the terminal its own.

    On a terminal no session controls, the command can become its controlling
    process (see the xfail test below). The kernel then allows TIOCSTI
    (dev.tty.legacy_tiocsti=1) and only seccomp stands in the way: EPERM, and
    nothing is queued. TIOCLINUX gets EPERM where the kernel would say ENOTTY.
    """
    if os.geteuid() != 0:
        pytest.skip("the injection control needs CAP_SYS_ADMIN")
    args = ["--policy", str(helper_dir / "hostile.toml"), "--", str(helper_dir / "hostile"), GETPID]
    proc, queued, _ = _on_a_detached_pty(broker_user, [*args, *_CTTY_CALLS, *_TTY_ATTACKS])
    assert proc.returncode == 0, proc.stderr
    assert_control_ran(proc)
    got = results(proc.stdout)
    for call in _TTY_ATTACKS:
        assert got[call] == (-1, errno.EPERM), (call, proc.stdout)
    assert queued == 0


def test_command_cannot_acquire_a_controlling_terminal(broker_user: str, helper_dir: Path) -> None:
    """Escape class: taking over the user's terminal (job control, hangup on exit, TIOCSTI as its owner).

    stdin is a terminal no session controls, which a command with its own session could
    make its controlling terminal. The command gets a pty of its own instead
    (broker/terminal.py), already the controlling terminal of the sandbox's session;
    ``TIOCSCTTY`` is refused (``setsid`` fails too: the command leads its job's process
    group), and its controlling terminal is that pty, never the user's.
    """
    if os.geteuid() != 0:
        pytest.skip("the injection control needs CAP_SYS_ADMIN")
    args = ["--policy", str(helper_dir / "hostile.toml"), "--", str(helper_dir / "hostile"), GETPID]
    proc, _, users = _on_a_detached_pty(broker_user, [*args, *_CTTY_CALLS])
    assert proc.returncode == 0, proc.stderr
    assert results(proc.stdout)[_CTTY_CALLS[1]] == (-1, errno.EPERM), proc.stdout
    stat_line = next(line for line in proc.stdout.splitlines() if line.startswith("2 ("))
    major, minor = _tty_device(_tty_nr(stat_line))
    assert (major, minor) != (os.major(users), os.minor(users)), "the command took the user's terminal"
    assert 136 <= major <= 143, f"the command's controlling terminal is not a pty: {major}:{minor}"


# --------------------------------------------------------------------------- other processes

_PROC_PROBE = r"""
import json, os, socket, struct, time
out = {}
kid = os.fork()
if kid == 0:
    time.sleep(30); os._exit(0)
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["kid"] = kid
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return e.errno
for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/maps", "/proc/1/auxv", "/proc/1/stack"):
    out[path] = attempt(lambda: open(path, "rb").read(1))
out["/proc/1/fd"] = attempt(lambda: os.listdir("/proc/1/fd"))
out["/proc/1/fd/4"] = attempt(lambda: os.readlink("/proc/1/fd/4"))
out["/proc/1/exe"] = attempt(lambda: os.readlink("/proc/1/exe"))
out["/proc/1/root"] = attempt(lambda: os.listdir("/proc/1/root/"))
out["/proc/1/ns/mnt"] = attempt(lambda: os.close(os.open("/proc/1/ns/mnt", os.O_RDONLY)))
out["host_pid"] = attempt(lambda: os.kill(HOST_PID, 0))
cred = socket.socket(fileno=3).getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
out["peer_pid"] = struct.unpack("3i", cred)[0]
os.kill(kid, 9); os.waitpid(kid, 0)
print(json.dumps(out))
"""


def test_other_processes_are_invisible_and_init_is_opaque(run_privsep: RunPrivsep) -> None:
    """Escape classes: reading init's memory, environment (a forked copy of the broker's),
    fds (the control socket) or namespaces through /proc; seeing or naming host processes.

    /proc lists only init (1), the command (2) and the command's own child; init's
    private files are refused (ptrace access: not dumpable, and Landlock). With
    /proc mounted hidepid=invisible, init would vanish instead (ENOENT): fine too.
    """
    host_pid = os.getpid()
    result = json_output(run_privsep(*python_child(_PROC_PROBE.replace("HOST_PID", str(host_pid)))))
    pids, kid = result["pids"], result["kid"]
    assert isinstance(pids, list) and set(pids) in ({1, 2, kid}, {2, kid}), pids
    for path in (
        "/proc/1/mem",
        "/proc/1/environ",
        "/proc/1/maps",
        "/proc/1/auxv",
        "/proc/1/stack",
        "/proc/1/fd",
        "/proc/1/fd/4",
        "/proc/1/exe",
        "/proc/1/root",
        "/proc/1/ns/mnt",
    ):
        assert result[path] in (errno.EACCES, errno.ENOENT), (path, result[path])
    assert result["host_pid"] == errno.ESRCH  # the test process does not exist in there
    assert result["peer_pid"] == 0  # the broker, across the channel, has no pid in the sandbox


def test_the_host_command_line_is_not_readable(broker_user: str) -> None:
    """Escape class: secrets on the host application's command line, read through init."""
    marker = f"host-secret-{secrets.token_hex(8)}"
    code = (
        "try:\n    print(open('/proc/1/cmdline', 'rb').read().decode(errors='replace'))\n"
        "except OSError as e:\n    print('unreadable', e.errno)\n"
    )
    # A host application that embeds privsep (here: its CLI entry point) with a secret in its argv.
    host_app = f"# {marker}\nimport sys\nfrom privsep.cli import main\nsys.exit(main(sys.argv[1:]))"
    argv = [str(PYTHON), "-c", host_app, "run", *python_child(code)]
    proc = subprocess.run(
        as_nonroot(argv) if broker_user == "nonroot" else argv,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert marker not in proc.stdout


def test_signals_cannot_leave_the_command(run_privsep: RunPrivsep, helper_dir: Path) -> None:
    """Escape classes: killing the sandbox's init (which would tear the sandbox down on the
    child's terms), signalling the broker through the pidfd SO_PEERPIDFD hands out, or
    opening the broker's namespaces with that pidfd.

    kill(1, ...) gets EPERM from Landlock's signal scope: without it the kernel
    would return 0 (init shares the uid and drops the signal). The broker's pidfd
    is outside the pid namespace (EINVAL) and fails the ptrace check (EACCES).
    """
    calls = [
        f"{NR['kill']},1,9",
        f"{NR['kill']},1,15",
        f"{NR['kill']},1,0",
        f"{NR['pidfd_send_signal']},pidfd1,9,0,0",
        f"{NR['kill']},-1,0",
        f"{NR['pidfd_send_signal']},peerpidfd,0,0,0",
        "16,peerpidfd,0xff03,0",  # PIDFD_GET_MNT_NAMESPACE of the broker
        "16,peerpidfd,0xff09,0",  # PIDFD_GET_USER_NAMESPACE of the broker
        f"{NR['kill']},2,0",  # control: the command may signal itself
    ]
    proc = hostile(run_privsep, helper_dir, *calls)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert_control_ran(proc)
    got = {call: (ret, errno.errorcode.get(err, "0")) for call, (ret, err) in results(proc.stdout).items()}
    assert [got[c] for c in calls] == [
        (-1, "EPERM"),
        (-1, "EPERM"),
        (-1, "EPERM"),
        (-1, "EPERM"),
        (-1, "ESRCH"),  # nobody else to signal
        (-1, "EINVAL"),
        (-1, "EACCES"),
        (-1, "EACCES"),
        (0, "0"),
    ], proc.stdout


# --------------------------------------------------------------------------- privilege


def test_setuid_and_file_capabilities_do_not_raise_privilege(
    run_privsep: RunPrivsep, helper_dir: Path, shared_tmp: Path
) -> None:
    """Escape class: a setuid-root binary or one with file capabilities in a granted directory.

    Control: outside, run as uid 4242, the same binaries do get euid 0 and
    capabilities. Inside, no_new_privs and the nosuid bind keep 65534 and no caps.
    """
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("making a setuid-root binary needs root, and the control needs setpriv")
    bindir = shared_tmp / "bin"
    bindir.mkdir(mode=0o755)
    suid = bindir / "suid"
    shutil.copy(helper_dir / "hostile", suid)
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    binaries = [suid]
    if shutil.which("setcap"):
        fcap = bindir / "fcap"
        shutil.copy(helper_dir / "hostile", fcap)
        fcap.chmod(0o755)
        subprocess.run(["setcap", "cap_setuid,cap_dac_read_search+ep", str(fcap)], check=True)
        binaries.append(fcap)
    policy = write_policy(shared_tmp, "suid.toml", grant_policy(bindir))

    def ids(output: str) -> tuple[list[int], int]:
        uids = next(line for line in output.splitlines() if line.startswith("ids "))
        cap = next(line for line in output.splitlines() if line.startswith("CapEff:"))
        return [int(x) for x in uids.split()[1:]], int(cap.split()[1], 16)

    setpriv = ["setpriv", f"--reuid={NONROOT_ID}", f"--regid={NONROOT_ID}", "--clear-groups"]
    outside = {
        b: subprocess.run([*setpriv, str(b), "ids"], capture_output=True, text=True, check=True)
        for b in binaries
    }
    assert ids(outside[suid].stdout)[0][1] == 0, "control: the binary is not really setuid root"
    if len(binaries) > 1:
        assert ids(outside[binaries[1]].stdout)[1] != 0, "control: the file capabilities did not apply"
    for binary in binaries:
        proc = run_privsep("--policy", str(policy), "--", str(binary), "ids")
        assert proc.returncode == 0, proc.stderr
        assert ids(proc.stdout) == ([65534] * 3, 0), (binary.name, proc.stdout)


def test_code_executed_from_a_memfd_stays_confined(run_privsep: RunPrivsep, helper_dir: Path) -> None:
    """Escape class: executing a program that exists on no path (memfd_create + execveat),
    hoping the Landlock execute rule or the view does not cover it.

    Observed: the exec succeeds (Landlock does not govern memfds, and any code
    can be run anyway), and the new image keeps every layer: uid 65534, no
    capabilities, no_new_privs, the same seccomp filter (a dangerous call is
    still reported and kills) and the same Landlock domain (init still cannot
    be signalled).
    """
    hostile_path = str(helper_dir / "hostile")
    calls = [f"memexec:{hostile_path}", "cat:/proc/self/status", f"{NR['kill']},1,0", "101,16,1"]
    proc = hostile(run_privsep, helper_dir, *calls)
    assert f"memexec {hostile_path} failed" not in proc.stdout, proc.stdout
    status = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":\t" in line)
    status = {k: v.strip() for k, v in status.items()}
    assert status["Name"].startswith("memfd:") or status["Name"].isdigit(), status["Name"]  # the new image
    assert status["Uid"].split() == ["65534"] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
    assert results(proc.stdout)[f"{NR['kill']},1,0"] == (-1, errno.EPERM)
    assert proc.returncode == _SIGSYS_EXIT, proc.stderr
    assert "killed by seccomp: the command called ptrace," in proc.stderr


# --------------------------------------------------------------------------- what the child holds

_FD_PROBE = r"""
import glob, json, os
secret = SECRET
fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
fds = [fd for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")]  # drop listdir's own fd
found, tried = [], 0
paths = [f"/proc/self/fd/{N}", f"/proc/1/fd/{N}", f"/proc/thread-self/fd/{N}"]
paths += [CANARY, "/proc/self/root" + CANARY]
for path in [*paths, *glob.glob("/proc/[0-9]*/fd/*"), *glob.glob("/proc/[0-9]*/task/*/fd/*")]:
    tried += 1
    try:
        with open(path, "rb") as f:
            if secret in f.read():
                found.append(path)
    except OSError:
        pass
print(json.dumps({"fds": fds, "found": found, "tried": tried}))
"""


def test_an_inherited_broker_fd_does_not_reach_the_child(broker_user: str, shared_tmp: Path) -> None:
    """Escape class: a descriptor the broker holds without close-on-exec (a careless host
    application's log file or key), reached by inheritance or through /proc.

    Control: a plain process started the same way reads the canary through that fd.
    """
    secret = f"canary-{secrets.token_hex(8)}".encode()
    canary = shared_tmp / "canary"
    canary.write_bytes(secret)
    canary.chmod(0o644)  # readable by the child's uid: only isolation keeps it out
    fd = os.open(canary, os.O_RDONLY)
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 40)
    os.close(fd)
    os.set_inheritable(high, True)
    env = {"PATH": "/usr/bin:/bin"}
    try:
        control = subprocess.run(
            [str(PYTHON), "-c", f"import os; print(os.pread({high}, 100, 0).decode())"],
            pass_fds=[high],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        assert control.stdout.strip() == secret.decode()
        code = (
            _FD_PROBE.replace("SECRET", repr(secret))
            .replace("CANARY", repr(str(canary)))
            .replace("{N}", str(high))
        )
        proc = subprocess.run(
            privsep_argv(broker_user, python_child(code)),
            pass_fds=[high],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env=env,
            check=False,
        )
    finally:
        os.close(high)
    result = json_output(proc)
    assert result["fds"] == [0, 1, 2, 3]
    assert result["found"] == []
    assert isinstance(result["tried"], int) and result["tried"] >= 5


_ABSTRACT_PROBE = r"""
import json, os, socket
def connect(name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(name); return "connected"
    except OSError as e:
        return e.errno
own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
own.bind(b"\0privsep-own"); own.listen(1)
print(json.dumps({"host": connect(NAME), "own": connect(b"\0privsep-own")}))
"""


def test_abstract_unix_sockets_of_the_host_are_unreachable(run_privsep: RunPrivsep) -> None:
    """Escape class: talking to host daemons on abstract unix sockets (no file, no mount to hide).

    The sandbox's network namespace has its own abstract namespace: the name does
    not exist there (ECONNREFUSED). Controls: the host can connect to it, and
    the child can connect to an abstract socket of its own.
    """
    name = b"\0privsep-canary-" + secrets.token_hex(8).encode()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with server:
        server.bind(name)
        server.listen(8)
        server.setblocking(False)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(name)  # control
        server.accept()[0].close()
        result = json_output(run_privsep(*python_child(_ABSTRACT_PROBE.replace("NAME", repr(name)))))
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody from the sandbox got in
    assert result == {"host": errno.ECONNREFUSED, "own": "connected"}


def test_unix_sockets_inside_a_granted_directory_are_unreachable(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    """Escape class: a host daemon's pathname socket that lies in the view when the sandbox starts."""
    granted = shared_tmp / "granted"
    granted.mkdir(mode=0o755)
    path = granted / "daemon.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with server:
        server.bind(str(path))
        path.chmod(0o777)  # no DAC hurdle: only the sandbox may stop it
        server.listen(8)
        server.setblocking(False)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(path))  # control: the daemon is there
        server.accept()[0].close()
        policy = write_policy(shared_tmp, "granted.toml", grant_policy(granted))
        code = (
            "import socket\ns = socket.socket(socket.AF_UNIX)\n"
            f"try:\n    s.connect({str(path)!r}); print('connected')\n"
            "except OSError as e:\n    print(e.errno)\n"
        )
        proc = run_privsep("--policy", str(policy), "--", str(PYTHON), "-c", code)
        assert proc.returncode == 0, proc.stderr
        reached = True
        try:
            server.accept()[0].close()
        except BlockingIOError:
            reached = False
    assert not reached and proc.stdout.strip() != "connected", "the child connected to the host's socket"


def test_a_host_socket_made_after_the_start_in_a_read_only_grant_is_unreachable(
    broker_user: str, shared_tmp: Path
) -> None:
    """The start-time scan cannot mask a socket a daemon creates later: the broker, which performs
    every connect, refuses a socket on a read-only mount (the child cannot have made it) and
    names the rule that would allow it."""
    granted = shared_tmp / "granted-late"
    granted.mkdir(mode=0o755)
    path = granted / "late.sock"
    policy = write_policy(shared_tmp, "late.toml", grant_policy(granted))
    code = (
        "import socket, sys\nprint('ready', flush=True)\nsys.stdin.readline()\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({str(path)!r}); print('connected')\n"
        "except OSError as e:\n    print(e.errno)\n"
    )
    proc = subprocess.Popen(
        privsep_argv(broker_user, ["--policy", str(policy), "--", str(PYTHON), "-c", code]),
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=30)
        server.bind(str(path))
        path.chmod(0o777)
        server.listen(8)
        server.setblocking(False)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
        reached = True
        try:
            server.accept()[0].close()
        except BlockingIOError:
            reached = False
    finally:
        server.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert not reached and out.strip() == str(errno.EACCES), (out, err)
    assert "read-only part of the view" in err and 'access = ["connect"]' in err, err


_HOST_PROC_PROBE = r"""
import json
out = {}
for name in ("sys/kernel/random/boot_id", "loadavg", "keys", "key-users", "config.gz", "kallsyms",
             "timer_list", "cpuinfo", "meminfo", "stat"):
    try:
        with open("/proc/" + name, "rb") as f:
            out[name] = f.read(4096).decode(errors="replace")
    except OSError as e:
        out[name] = e.errno
print(json.dumps(out))
"""


def test_proc_shows_no_host_wide_state(run_privsep: RunPrivsep) -> None:
    """The host's boot id, load, keyrings, kernel config and symbols stay outside (issue 13, item 7).

    What programs need (cpuinfo, meminfo, stat) is still there.
    """
    with open("/proc/sys/kernel/random/boot_id") as f:
        host_boot_id = f.read()
    first = json_output(run_privsep(*python_child(_HOST_PROC_PROBE)))
    second = json_output(run_privsep(*python_child(_HOST_PROC_PROBE)))
    for seen in (first, second):
        boot_id = seen["sys/kernel/random/boot_id"]
        assert isinstance(boot_id, str) and len(boot_id.strip()) == 36, seen
        assert boot_id != host_boot_id, "the sandbox reads the host's boot id"
        assert seen["loadavg"] == "0.00 0.00 0.00 1/1 1\n", seen
        for name in ("keys", "key-users", "config.gz", "kallsyms", "timer_list"):
            assert seen[name] in (errno.EACCES, errno.ENOENT, ""), (name, seen[name])
        for name in ("cpuinfo", "meminfo", "stat"):
            assert isinstance(seen[name], str) and seen[name], (name, seen[name])
    assert first["sys/kernel/random/boot_id"] != second["sys/kernel/random/boot_id"], (
        "one boot id for two sandboxes"
    )


def _run_on_one_file(
    run_privsep: RunPrivsep, target: Path, probe_code: str, rule: str, *, tmp: bool = True
) -> dict[str, object]:
    """``probe_code TARGET`` confined, with one [[files]] rule (``rule``: its access and serve lines)
    for TARGET, a file holding "history" in a directory anyone may write."""
    target.parent.mkdir()
    target.parent.chmod(0o777)
    target.write_text("history\n")
    target.chmod(0o666)
    probe = write_policy(target.parent.parent, f"{target.stem}-probe.py", probe_code)
    policy = write_policy(
        target.parent.parent,
        f"{target.stem}.toml",
        f'extends = "python"\n[view]\n{"" if tmp else "tmp = false"}\nread = ["{probe}"]\n'
        f'[[files]]\npath = "{target}"\n{rule}\n',
    )
    return json_output(run_privsep("--policy", str(policy), "--", str(PYTHON), str(probe), str(target)))


_NO_TRUNCATE_PROBE = r"""
import json, os, sys
from privsep import client
path = sys.argv[1]
out = {}
with client.open(path, "r+") as f:
    try:
        os.ftruncate(f.fileno(), 0)
        out["client"] = "truncated"
    except OSError as e:
        out["client"] = e.errno
fd = os.open(path, os.O_RDWR)  # an unmodified program's open, served by the broker
try:
    os.ftruncate(fd, 0)
    out["transparent"] = "truncated"
except OSError as e:
    out["transparent"] = e.errno
os.pwrite(fd, b"H", 0)  # writing is granted
print(json.dumps(out))
"""


@pytest.mark.parametrize("serve", ["broker", "kernel"])
def test_a_grant_without_truncate_hands_out_fds_that_cannot_truncate(
    run_privsep: RunPrivsep, shared_tmp: Path, serve: str
) -> None:
    """Issue 13 item 4: read+write without truncate holds on the fd itself, not only at open."""
    target = shared_tmp / "keep" / "history.log"
    result = _run_on_one_file(
        run_privsep, target, _NO_TRUNCATE_PROBE, f'access = ["read", "write"]\nserve = "{serve}"', tmp=False
    )
    assert result["client"] == errno.EACCES, result
    if serve == "broker":  # a kernel-served grant's own opens are the kernel's (Landlock, at open)
        assert result["transparent"] == errno.EACCES, result
    assert target.read_text() == "History\n"


_APPEND_ONLY_PROBE = r"""
import fcntl, json, os, sys
from privsep import client
path = sys.argv[1]
out = {}
f = client.open(path, "a")
f.write("client line\n")
f.flush()
fd = f.fileno()
fcntl.fcntl(fd, fcntl.F_SETFL, 0)  # clear O_APPEND, as the audit did
calls = (("pwrite", lambda: os.pwrite(fd, b"OVERWRITTEN", 0)), ("ftruncate", lambda: os.ftruncate(fd, 0)))
for name, call in calls:
    try:
        call()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
f.close()
fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # an unmodified program's open
fcntl.fcntl(fd, fcntl.F_SETFL, 0)
try:
    os.pwrite(fd, b"OVERWRITTEN", 0)
    out["transparent pwrite"] = "ok"
except OSError as e:
    out["transparent pwrite"] = e.errno
os.write(fd, b"".join(b"bulk %06d\n" % i for i in range(20000)))  # 240 kB, then exit at once
print(json.dumps(out))
"""


def test_an_append_only_grant_only_ever_appends(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    """Issue 13 item 4: append-only holds whatever the child does to its fd, and nothing written is lost."""
    target = shared_tmp / "logs" / "audit.log"
    result = _run_on_one_file(run_privsep, target, _APPEND_ONLY_PROBE, 'access = ["append"]')
    assert result == {
        "pwrite": errno.ESPIPE,
        "ftruncate": errno.EINVAL,
        "transparent pwrite": errno.ESPIPE,
    }, result
    content = target.read_text()
    assert content.startswith("history\nclient line\nbulk 000000\n"), content[:100]
    assert "OVERWRITTEN" not in content
    assert content.endswith("bulk 019999\n") and content.count("bulk ") == 20000


_RENAME_AROUND_DENY = r"""
import json, sys
from privsep import client
top = sys.argv[1]
out = {}
try:
    client.rename(top + "/x", top + "/y")
    out["rename"] = "ok"
except OSError as e:
    out["rename"] = type(e).__name__
for path in (top + "/y/private/secret.txt", top + "/x/private/secret.txt"):
    try:
        out[path[len(top):]] = client.open(path).read()
    except OSError as e:
        out[path[len(top):]] = type(e).__name__
print(json.dumps(out))
"""


def test_renaming_an_ancestor_never_carries_a_deny_rule_away(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    """Issue 13 item 1, for broker-served grants: deny rules are paths, so moving an ancestor is refused."""
    data = shared_tmp / "data"
    (data / "x" / "private").mkdir(parents=True)
    (data / "x" / "private" / "secret.txt").write_text("SECRET")
    for path in (data, data / "x", data / "x" / "private"):
        path.chmod(0o777)
    (data / "x" / "private" / "secret.txt").chmod(0o666)
    probe = write_policy(shared_tmp, "rename.py", _RENAME_AROUND_DENY)
    policy = write_policy(
        shared_tmp,
        "rename.toml",
        f'extends = "python"\n[view]\nread = ["{probe}"]\n'
        f'[[files]]\npath = "{data}"\naccess = ["read", "write", "create", "list"]\nserve = "broker"\n'
        f'[[files]]\npath = "{data}/x/private"\ndeny = true\n',
    )
    result = json_output(run_privsep("--policy", str(policy), "--", str(PYTHON), str(probe), str(data)))
    assert result["rename"] == "DeniedError", result
    assert "SECRET" not in str(result), result
    assert (data / "x" / "private" / "secret.txt").exists()


_PRIVILEGED_WRITE_PROBE = r"""
import json, sys
from privsep import client
out = {}
for path in sys.argv[1:]:
    for mode in ("r+", "w", "a"):
        try:
            with client.open(path, mode) as f:
                f.write("PWNED")
            out[path + " " + mode] = "written"
        except OSError as e:
            out[path + " " + mode] = type(e).__name__
print(json.dumps(out))
"""


def test_a_broker_open_never_writes_a_privileged_program(
    run_privsep: RunPrivsep, shared_tmp: Path, broker_uid: int
) -> None:
    """Fresh-eyes audit: client.open reached the host's tree, where the view's read-only binds of
    set-id and capability files do not exist; a shared-mapping write kept the setuid bit."""
    grant = shared_tmp / "stage"
    grant.mkdir(mode=0o777)
    setuid, capable = grant / "suidprog", grant / "capprog"
    for path in (setuid, capable):
        path.write_bytes(b"\x7fELF original")
        os.chown(path, broker_uid, broker_uid)  # the broker may write it: only the check stops it
    setuid.chmod(0o4755)
    capable.chmod(0o755)
    # security.capability, VFS_CAP_REVISION_2 with the effective bit: cap_net_raw permitted.
    os.setxattr(capable, "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0))
    probe = write_policy(shared_tmp, "priv.py", _PRIVILEGED_WRITE_PROBE)
    policy = write_policy(
        shared_tmp,
        "priv.toml",
        f'extends = "python"\n[view]\nread = ["{probe}"]\n'
        f'[[files]]\npath = "{grant}"\naccess = ["read", "write", "create", "append", "truncate", "list"]\n',
    )
    result = json_output(
        run_privsep("--policy", str(policy), "--", str(PYTHON), str(probe), str(setuid), str(capable))
    )
    assert set(result.values()) == {"DeniedError"}, result
    for path in (setuid, capable):
        assert path.read_bytes() == b"\x7fELF original"
    assert setuid.stat().st_mode & 0o7777 == 0o4755


_OTHER_NAMES_PROBE = r"""
import json, os, sys
log = sys.argv[1]
os.symlink(log, "/tmp/link")
out = {}
for name in (log, "/proc/self/root" + log, "/tmp/link"):
    try:
        with open(name) as f:
            out[name] = f.read()
    except OSError as e:
        out[name] = e.errno
with open(log, "a") as f:  # the grant itself: appending works
    f.write("appended\n")
print(json.dumps(out))
"""


def test_a_broker_served_grant_inside_a_kernel_grant_is_reached_by_no_other_name(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    """Fresh-eyes audit, finding 3: an append-only log inside a read grant was readable through
    /proc/self/root or a symlink, which the broker does not decide; it is masked in the view now."""
    d = shared_tmp / "d"
    d.mkdir(mode=0o755)
    log = d / "log"
    log.write_text("PRIVATE LOG LINE\n")
    log.chmod(0o666)
    probe = write_policy(shared_tmp, "names.py", _OTHER_NAMES_PROBE)
    policy = write_policy(
        shared_tmp,
        "names.toml",
        f'extends = "python"\n[view]\nread = ["{probe}"]\n'
        f'[[files]]\npath = "{d}"\naccess = ["read", "list"]\n'
        f'[[files]]\npath = "{log}"\naccess = ["append"]\n',
    )
    result = json_output(run_privsep("--policy", str(policy), "--", str(PYTHON), str(probe), str(log)))
    assert "PRIVATE" not in str(result), result
    assert set(result.values()) == {errno.EACCES}, result
    assert log.read_text() == "PRIVATE LOG LINE\nappended\n"


_OWNER_PROBE = r"""
import json, sys
from privsep import client
top = sys.argv[1]
out = {}
with client.open(top + "/made.txt", "w") as f:
    f.write("mine")
client.mkdir(top + "/made-dir")
for name, call in (
    ("rootonly", lambda: client.open(top + "/rootonly").read()),
    ("through another's 0700 dir", lambda: client.open(top + "/bob/readable").read()),
    ("unlink in root's dir", lambda: client.unlink(top + "/rootdir/precious")),
    ("rename over root's file", lambda: client.rename(top + "/made.txt", top + "/rootdir/precious")),
    ("mkdir in root's dir", lambda: client.mkdir(top + "/rootdir/planted")),
):
    try:
        call()
        out[name] = "done"
    except OSError as e:
        out[name] = type(e).__name__
print(json.dumps(out))
"""


def test_a_root_broker_acts_in_a_grant_as_its_owner(run_as_root: RunPrivsep, shared_tmp: Path) -> None:
    """Fresh-eyes audit, finding 5: client requests made root-owned files in a user's grant, and read
    what the grant's owner could not; the kernel-served grant's idmap does neither."""
    grant = shared_tmp / "home"
    grant.mkdir(mode=0o755)
    os.chown(grant, NONROOT_ID, NONROOT_ID)
    secret = grant / "rootonly"
    secret.write_text("root's")
    secret.chmod(0o600)
    # Second fresh-eyes audit: directories the owner may not write or search.
    (grant / "rootdir").mkdir(mode=0o755)
    (grant / "rootdir" / "precious").write_text("root's")
    bob = grant / "bob"
    bob.mkdir()
    (bob / "readable").write_text("bob's")
    (bob / "readable").chmod(0o644)
    os.chown(bob, NONROOT_ID + 1, NONROOT_ID + 1)
    bob.chmod(0o700)
    probe = write_policy(shared_tmp, "owner.py", _OWNER_PROBE)
    result = json_output(
        run_as_root(
            "--policy", "python", "--allow-read", str(probe), "--allow-write", str(grant),
            "--", str(PYTHON), str(probe), str(grant),
        )
    )  # fmt: skip
    assert set(result.values()) == {"DeniedError"} and len(result) == 5, result
    assert (grant / "rootdir" / "precious").read_text() == "root's"
    assert not (grant / "rootdir" / "planted").exists()
    for made in (grant / "made.txt", grant / "made-dir"):
        st = made.stat()
        assert (st.st_uid, st.st_gid) == (NONROOT_ID, NONROOT_ID), made


_ENDPOINT_PROBE = r"""
import json, sys
from privsep import client
top = sys.argv[1]
out = {}
for name, call in (
    ("unlink", lambda: client.unlink(top + "/daemon.sock")),
    ("rename", lambda: client.rename(top + "/daemon.sock", top + "/moved")),
    ("replace", lambda: client.rename(top + "/mine", top + "/daemon.sock")),
):
    try:
        call()
        out[name] = "done"
    except OSError as e:
        out[name] = type(e).__name__
print(json.dumps(out))
"""


def test_the_broker_never_removes_or_replaces_a_hosts_socket(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    """Fresh-eyes audit: the view masks a host daemon's socket in a writable grant, but
    client.unlink and client.rename worked on the host's tree, where no mask is."""
    grant = shared_tmp / "run"
    grant.mkdir()
    grant.chmod(0o777)  # the broker may remove anything here: only the check stops it
    (grant / "mine").write_text("x")
    (grant / "mine").chmod(0o666)
    probe = write_policy(shared_tmp, "endpoint.py", _ENDPOINT_PROBE)
    with socket.socket(socket.AF_UNIX) as daemon:
        daemon.bind(str(grant / "daemon.sock"))
        daemon.listen()
        result = json_output(
            run_privsep(
                "--policy", "python", "--allow-read", str(probe), "--allow-write", str(grant),
                "--", str(PYTHON), str(probe), str(grant),
            )
        )  # fmt: skip
        assert result == {"unlink": "DeniedError", "rename": "DeniedError", "replace": "DeniedError"}
        assert stat.S_ISSOCK(os.lstat(grant / "daemon.sock").st_mode)


_PEER_PROBE = r"""
import json, socket, sys
from privsep import client
path = sys.argv[1]
native = socket.socket(socket.AF_UNIX)
native.connect(path)  # an unmodified program's connect, served by the broker
via_client = client.connect_unix(path)
print(json.dumps([native.recv(100).decode(), via_client.recv(100).decode()]))
"""


def test_a_daemon_behind_a_connect_grant_sees_the_sandbox_not_root(
    run_as_root: RunPrivsep, shared_tmp: Path
) -> None:
    """Second fresh-eyes audit: the broker connected as itself, so a daemon that trusts its peer's
    uid (D-Bus, polkit, auth_socket) saw root; it sees the sandbox's own host id now."""
    run = shared_tmp / "run"
    run.mkdir(mode=0o755)
    path = run / "daemon.sock"
    daemon = socket.socket(socket.AF_UNIX)
    daemon.bind(str(path))
    path.chmod(0o666)
    daemon.listen(2)
    daemon.settimeout(30)
    seen: list[tuple[int, int]] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = daemon.accept()
            with conn:
                _, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                seen.append((uid, gid))
                conn.sendall(f"{uid}".encode())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    probe = write_policy(shared_tmp, "peer.py", _PEER_PROBE)
    policy = write_policy(
        shared_tmp,
        "peer.toml",
        f'extends = "python"\n[view]\nread = ["{probe}"]\n[[files]]\npath = "{path}"\naccess = ["connect"]\n',
    )
    try:
        proc = run_as_root("--policy", str(policy), "--", str(PYTHON), str(probe), str(path))
        assert proc.returncode == 0, proc.stderr
        server.join(10)
    finally:
        daemon.close()
    assert len(seen) == 2, (seen, proc.stdout)
    for uid, gid in seen:
        assert uid not in (0, 65534) and gid not in (0, 65534), seen


# --------------------------------------------------------------------------- the filesystem

_FS_PROBE = r"""
import json, os, stat
out = {}
def attempt(name, fn):
    try:
        fn(); out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
def write(path):
    with open(path, "w") as f:
        f.write("x")
def read(path):
    with open(path, "rb") as f:
        if SECRET in f.read():
            raise AssertionError(f"read the host canary through {path}")
for path in ("/x", "/usr/x", "/usr/bin/x", "/dev/x", "/proc/x", "/proc/sys/kernel/hostname",
             "/proc/self/root/usr/x", "/proc/self/cwd/x", "/etc/ld.so.cache"):
    attempt("write " + path, lambda p=path: write(p))
attempt("write /dev/null", lambda: write("/dev/null"))
for path in ("/etc/shadow", "/root", "/proc/self/root/etc/shadow", "/proc/1/root/etc/shadow",
             "/proc/self/cwd/etc/shadow", "/proc/self/cwd/../../etc/shadow", "/dev/../etc/shadow",
             TESTS, CANARY, "/proc/self/root" + CANARY, "/proc/1/root" + CANARY, "/proc/2/cwd" + CANARY):
    attempt("read " + path, lambda p=path: os.listdir(p) if os.path.isdir(p) else read(p))
attempt("mknod /dev/mem", lambda: os.mknod("/dev/privsep-mem", stat.S_IFCHR | 0o666, os.makedev(1, 1)))
attempt("mknod /x", lambda: os.mknod("/privsep-fifo", stat.S_IFIFO | 0o666))
attempt("mkdir /usr/x", lambda: os.mkdir("/usr/privsep-x"))
attempt("symlink /x", lambda: os.symlink("/etc/shadow", "/privsep-link"))
attempt("chmod /usr/bin", lambda: os.chmod("/usr/bin", 0o777))
print(json.dumps(out))
"""


def test_the_filesystem_is_read_only_and_ends_at_the_view(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    """Escape classes: writing anywhere (root, /usr, /dev, /proc/sys), reading outside the
    view (/etc/shadow, /root, this checkout's tests, a world-readable host canary),
    device nodes, and the /proc/self/root, /proc/1/root, /proc/*/cwd and ``..`` detours.

    /dev/null is the control: the one write target the child does have.
    """
    secret = f"canary-{secrets.token_hex(8)}"
    canary = shared_tmp / "canary"
    canary.write_text(secret)
    canary.chmod(0o644)
    code = (
        _FS_PROBE.replace("SECRET", repr(secret.encode()))
        .replace("TESTS", repr(str(REPO / "tests")))
        .replace("CANARY", repr(str(canary)))
    )
    result = json_output(run_privsep(*python_child(code)))
    assert result.pop("write /dev/null") == "ok"
    if REPO.is_relative_to("/tmp") and result["write /proc/self/cwd/x"] == "ok":
        # The working directory is the checkout's path, which then lies in the child's own
        # private /tmp (a scratch tmpfs): the write lands there, never on the host.
        del result["write /proc/self/cwd/x"]
        assert not (REPO / "x").exists()
    refused = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT}
    wrong = {k: v for k, v in result.items() if v not in refused}
    assert wrong == {}, wrong
    # Outside the view a path does not exist at all; /proc/1 (init) is invisible (hidepid).
    assert result["read /etc/shadow"] == errno.ENOENT
    assert result["read " + str(canary)] == errno.ENOENT
    assert result["read /proc/1/root" + str(canary)] == errno.ENOENT


_REOPEN_PROBE = r"""
import json, os
out = {"read": os.read(0, 100).decode()}
for name, flags in (("rdonly", os.O_RDONLY), ("wronly", os.O_WRONLY), ("rdwr", os.O_RDWR)):
    for path in ("/proc/self/fd/0", "/dev/stdin"):
        try:
            os.close(os.open(path, flags)); out[f"{name} {path}"] = "ok"
        except OSError as e:
            out[f"{name} {path}"] = e.errno
print(json.dumps(out))
"""


def test_an_inherited_fd_cannot_be_reopened_with_more_access(broker_user: str, shared_tmp: Path) -> None:
    """Escape class: turning a read-only stdin into write access to the host file behind it,
    by reopening it through the /proc/self/fd magic link.

    The file is world-writable and on the host's writable filesystem, outside the
    view: only Landlock stands in the way (EACCES). Control: reading fd 0 works.
    """
    target = shared_tmp / "stdin.txt"
    target.write_text("host file\n")
    target.chmod(0o666)
    with open(target, "rb") as stdin:
        proc = subprocess.run(
            privsep_argv(broker_user, python_child(_REOPEN_PROBE)),
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin"},
            check=False,
        )
    result = json_output(proc)
    assert result.pop("read") == "host file\n"
    assert result == dict.fromkeys(result, errno.EACCES) and len(result) == 6, result
    assert target.read_text() == "host file\n"


def _privsep(
    argv: list[str], env: dict[str, str], preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """A whole privsep command from the repository, its output captured as text."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        check=False,
        preexec_fn=preexec_fn,
    )


@pytest.mark.parametrize("with_log", [True, False], ids=["audit-log", "no-log"])
@pytest.mark.parametrize("closed", [0, 1, 2])
def test_a_standard_fd_privsep_started_without_is_never_one_of_the_brokers(
    broker_user: str, shared_tmp: Path, closed: int, with_log: bool
) -> None:
    """Escape class: privsep started with fd 0, 1 or 2 closed (``<&-``). The next fd the broker
    opened took that number and the sandbox got it as stdin, stdout or stderr: a pinned grant's
    directory fd, outside every mask of the view (``openat`` through it read a denied file), the
    root audit log (the command wrote forged records), or the loop's epoll (filled with the
    command's own fds, it wedged the broker past its timeout). Found by a fresh-eyes audit.
    The command now finds /dev/null there; it reports on another of its standard fds."""
    grant = shared_tmp / "grant"
    grant.mkdir()
    (grant / "secret").write_text("denied\n")
    policy = shared_tmp / "deny.toml"
    policy.write_text(
        f'extends = "python"\n[[files]]\npath = "{grant}"\naccess = ["read", "list"]\n'
        f'[[files]]\npath = "{grant}/secret"\ndeny = true\n'
    )
    logs = shared_tmp / "logs"  # where the non-root broker may make its log
    logs.mkdir()
    logs.chmod(0o777)
    audit = logs / "audit.jsonl"
    report = 2 if closed == 1 else 1
    probe = (
        "import os\n"
        f"said = [os.readlink('/proc/self/fd/{closed}')]\n"
        "try:\n"
        f"    said.append(os.read(os.open('secret', os.O_RDONLY, dir_fd={closed}), 100).decode())\n"
        "except OSError as exc:\n"
        "    said.append(type(exc).__name__)\n"
        f"os.write({report}, ('\\n'.join(said) + '\\n').encode())\n"
        f'os.write({closed}, b\'{{"op": "forged"}}\\n\') if {closed} else None\n'
    )
    logging = ["--audit-log", str(audit)] if with_log else []
    argv = privsep_argv(broker_user, ["--policy", str(policy), *logging, "--", str(PYTHON), "-c", probe])
    # preexec_fn: in the test's own child, before privsep is exec'd
    proc = _privsep(argv, {"PATH": "/usr/bin:/bin"}, preexec_fn=lambda: os.close(closed))
    said = proc.stderr if report == 2 else proc.stdout
    assert said.splitlines()[:1] == ["/dev/null"], (proc.returncode, proc.stdout, proc.stderr)
    assert "denied" not in said
    assert not with_log or "forged" not in audit.read_text(), "the command wrote the audit log"


@pytest.mark.parametrize("own", ["audit log", "secret file", "plan cache"])
def test_no_write_grant_reaches_a_file_privsep_opens_by_name(
    broker_user: str, shared_tmp: Path, own: str
) -> None:
    """Escape class (11th audit): privsep opens its audit log, a secret's file and its plan cache
    by name, with its own rights. A sandbox that could write there planted a link: the root
    broker appended its next record to /etc/ld.so.preload (root code in every later process) or
    read /etc/shadow as the secret; or it edited its cached plan, which the next run applied.
    Such a grant is refused before anything starts, naming the path and what to do; the same run
    with the file elsewhere works."""
    grant = shared_tmp / "work"
    grant.mkdir()
    grant.chmod(0o777)
    elsewhere = shared_tmp / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o777)
    (grant / "token").write_text("s3cret\n")
    (elsewhere / "token").write_text("s3cret\n")
    for token in (grant / "token", elsewhere / "token"):
        token.chmod(0o644)

    def run(place: Path) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "PRIVSEP_CACHE_DIR": str(shared_tmp / "cache")}
        extra = []
        if own == "audit log":
            extra = ["--audit-log", str(place / "audit.log")]
        elif own == "secret file":
            extra = ["--secret", f"TOKEN=file:{place / 'token'}"]
        else:
            env["PRIVSEP_CACHE_DIR"] = str(place / "cache")
        argv = privsep_argv(broker_user, ["--allow-write", str(grant), *extra, "--", "/bin/true"])
        return _privsep(argv, env)

    refused = run(grant)
    assert refused.returncode == 125, refused.stderr
    assert f"a grant to write {grant} is refused" in refused.stderr
    assert str(grant) in refused.stderr.split("(", 1)[1], refused.stderr  # the path it reaches
    assert not (grant / "audit.log").exists() and not (grant / "cache").exists()
    allowed = run(elsewhere)
    assert allowed.returncode == 0, allowed.stderr


def test_a_sandbox_host_may_not_grant_write_over_its_own_audit_log(
    shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a ``Sandbox``: its audit log is guarded for the rest of the process."""
    from privsep import Sandbox
    from privsep.errors import PolicyError
    from privsep.plan import ownpaths

    monkeypatch.setattr(ownpaths, "_guarded", {})  # this test's guard ends with it
    log = shared_tmp / "logs" / "audit.log"
    log.parent.mkdir()
    with (
        Sandbox("minimal", audit_log=str(log)),
        Sandbox("minimal", allow_write=[str(shared_tmp)]) as other,
        pytest.raises(PolicyError, match="holds the audit log"),
    ):
        other.run(["/bin/true"])


def test_mounts_inside_a_grant_are_read_only_too(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    """Escape class: a host mount below a granted directory (a writable tmpfs, a disk
    mounted with suid or dev nodes) that the bind carries into the view with its own flags.

    SECURITY.md step 3b: granted paths are bound read-only, nosuid, nodev. The write
    itself is refused either way (Landlock); this checks the mount layer.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs below a grant needs root")
    granted = shared_tmp / "granted"
    sub = granted / "sub"
    sub.mkdir(mode=0o755, parents=True)
    granted.chmod(0o755)
    _linux.mount("tmpfs", str(sub), "tmpfs", 0, "mode=0777,size=1m")
    try:
        policy = write_policy(shared_tmp, "granted.toml", grant_policy(granted))
        code = (
            "import json, os\nst = os.statvfs(SUB)\nout = {'flags': st.f_flag}\n"
            "try:\n    open(SUB + '/x', 'w').write('x'); out['write'] = 'ok'\n"
            "except OSError as e:\n    out['write'] = e.errno\nprint(json.dumps(out))\n"
        ).replace("SUB", repr(str(sub)))
        result = json_output(run_privsep("--policy", str(policy), "--", str(PYTHON), "-c", code))
    finally:
        _linux.umount2(str(sub), _linux.MNT_DETACH)
    assert result["write"] in (errno.EROFS, errno.EACCES)
    flags = result["flags"]
    assert isinstance(flags, int)
    missing = [name for name in ("ST_RDONLY", "ST_NOSUID", "ST_NODEV") if not flags & getattr(os, name)]
    assert missing == [], f"the submount is visible without {missing}"


# --------------------------------------------------------------------------- limits


def test_a_huge_allocation_fails_and_the_child_survives(run_privsep: RunPrivsep) -> None:
    """Escape class: exhausting the host's memory from one process (RLIMIT_AS).

    20 GiB is over the python policy's address space (8 GiB) but within what an
    unconfined process could reserve here, so only the limit stops it.
    """
    code = (
        "import json\ntry:\n    b = bytearray(20 << 30); got = 'allocated'\n"
        "except MemoryError:\n    got = 'MemoryError'\n"
        "small = bytearray(1 << 20)\nprint(json.dumps({'got': got, 'alive': len(small)}))\n"
    )
    assert json_output(run_privsep(*python_child(code))) == {"got": "MemoryError", "alive": 1 << 20}


#: Ways to hold memory a process's RLIMIT_AS does not see (or sees once per process): each
#: holds one more CHUNK per step and prints the running total. ``{i}`` is the step.
_HOLDERS = {
    "memfd": "fd = os.memfd_create('hold'); os.posix_fallocate(fd, 0, CHUNK)",
    "sysv-shm": (
        "seg = libc.shmget(0, CHUNK, 0o1600); addr = libc.shmat(seg, None, 0)\n"
        "    ctypes.memset(addr, 1, CHUNK); libc.shmdt(ctypes.c_void_p(addr))"
    ),
    "tmpfs": "open(f'/tmp/hold{i}', 'wb').write(b'x' * CHUNK)",
    # "held" only while every child still holds its chunk: on cgroup v1 the kernel kills one
    # process of the sandbox at the limit and the broker the rest a moment later, and in that
    # moment a child killed first had freed room for the next one (a flake: "held 64"). One
    # gone: wait for the broker's kill.
    "forked-tree": (
        "r, w = os.pipe(); pid = os.fork()\n"
        "    if pid == 0:\n"
        "        kept = b'x' * CHUNK; os.write(w, b'.'); time.sleep(60); os._exit(0)\n"
        "    os.read(r, 1); children.append(pid)\n"
        "    if any(os.waitpid(child, os.WNOHANG)[0] for child in children): time.sleep(60)"
    ),
}


@pytest.mark.parametrize("holder", list(_HOLDERS))
def test_memory_held_past_rlimit_as_is_bounded_by_the_sandbox_memory_limit(
    run_privsep: RunPrivsep, shared_tmp: Path, holder: str
) -> None:
    """Escape class: exhausting memory past RLIMIT_AS, which counts one process's mappings only.

    memfds and SysV shm (attached, filled, detached) hold memory through an fd or an id,
    files on /tmp through the tmpfs, and a tree of processes each under its own RLIMIT_AS:
    none of it is the address space of the process that holds it. The sandbox's memory
    cgroup counts all of it: at memory_mb the whole sandbox is killed, and privsep says so.
    """
    policy = write_policy(
        shared_tmp,
        "mem.toml",
        'extends = "python"\n[view]\ntmp = true\ntmp_size_mb = 1024\n'
        "[limits]\naddress_space_mb = 256\nmemory_mb = 64\n",
    )
    code = (
        "import ctypes, os, time\n"
        "libc = ctypes.CDLL(None, use_errno=True); libc.shmat.restype = ctypes.c_void_p\n"
        "CHUNK = 16 << 20\nchildren = []\n"
        "for i in range(12):\n"
        f"    {_HOLDERS[holder]}\n"
        "    print('held', 16 * (i + 1), flush=True)\n"
    )
    proc = run_privsep("--policy", str(policy), "--", str(PYTHON), "-c", code)
    held = max([int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("held ")] or [0])
    assert held < 64, f"the sandbox held {held} MiB ({holder}) with memory_mb = 64"
    assert proc.returncode == 137, (proc.returncode, proc.stderr)
    assert "privsep: the sandbox reached its memory limit (64 MB) and was killed" in proc.stderr.splitlines()


@pytest.mark.parametrize(
    ("limits", "bound_mb", "expected"),
    [
        pytest.param("tmp_size_mb = 8", 8, "ENOSPC", id="tmpfs-size"),
        pytest.param("file_size_mb = 4", 4, "EFBIG", id="rlimit-fsize"),
    ],
)
def test_disk_writes_are_bounded(
    run_privsep: RunPrivsep, shared_tmp: Path, limits: str, bound_mb: int, expected: str
) -> None:
    """Escape class: filling the host's disk or memory through the writable /tmp.

    The child's /tmp is a tmpfs of tmp_size_mb, and RLIMIT_FSIZE caps each file
    (Python ignores SIGXFSZ, so the write fails with EFBIG; a C program would die of it).
    """
    table = "[view]\ntmp = true\n" + (f"{limits}\n" if limits.startswith("tmp_") else f"[limits]\n{limits}\n")
    text = f'extends = "python"\n{table}'
    policy = write_policy(shared_tmp, "disk.toml", text)
    code = (
        "import json, os\nwritten, err = 0, None\nchunk = b'x' * (1 << 20)\n"
        "with open(NAME, 'wb', buffering=0) as f:\n"
        "    while written < (64 << 20):\n"
        "        try:\n            written += f.write(chunk)\n"
        "        except OSError as e:\n            err = e.errno; break\n"
        "print(json.dumps({'written': written, 'err': err}))\n"
    )
    name = f"/tmp/privsep-fill-{secrets.token_hex(6)}"
    code = code.replace("NAME", repr(name))
    result = json_output(run_privsep("--policy", str(policy), "--", str(PYTHON), "-c", code))
    written = result["written"]
    assert isinstance(written, int) and written <= bound_mb << 20
    assert isinstance(result["err"], int) and errno.errorcode[result["err"]] == expected
    assert not os.path.exists(name)  # the child's /tmp is its own, gone with it


_HARD_LINK_PROBE = r"""
import json, os, sys
out = {}
for name in sys.argv[1:]:
    try:
        with open(name, "a") as f:
            f.write("# the sandbox was here\n")
        out[name] = "written"
    except OSError as e:
        out[name] = e.errno
    try:
        os.link(name, name + ".again")  # a new name for it, inside the grant, to write through
        with open(name + ".again", "a") as f:
            f.write("# the sandbox was here\n")
        out[name + ".again"] = "written"
    except OSError as e:
        out[name + ".again"] = e.errno
print(json.dumps(out))
"""


def test_a_file_with_another_name_outside_a_writable_grant_is_not_written_through_it(
    run_privsep: RunPrivsep, shared_tmp: Path, broker_uid: int
) -> None:
    """Fresh-eyes audit 15: a package cache (uv's, pnpm's, conda's) shares its files with the
    environments it installed, as hard links. Granted the cache, a sandbox appended to a module
    of the broker's own venv through it, and the root broker ran it. A file with other names is
    bound read-only onto itself in a writable grant (kernel-served), and never opened for
    writing by the broker (broker-served); a file with one name is written as before."""
    outside = shared_tmp / "venv-module.py"
    outside.write_text("original\n")
    probe = write_policy(shared_tmp, "links.py", _HARD_LINK_PROBE)
    for serve in ("kernel", "broker"):
        cache = shared_tmp / f"cache-{serve}"
        cache.mkdir(mode=0o777)
        os.link(outside, cache / "module.py")
        (cache / "own.py").write_text("own\n")
        for path in (outside, cache / "own.py"):
            os.chown(path, broker_uid, broker_uid)  # the sandbox may write both: only the check stops it
            path.chmod(0o666)
        policy = write_policy(
            shared_tmp,
            f"links-{serve}.toml",
            f'extends = "python"\n[view]\ntmp = false\nread = ["{probe}"]\n[[files]]\npath = "{cache}"\n'
            f'access = ["read", "write", "create", "append", "list"]\nserve = "{serve}"\n',
        )
        args = (str(cache / "module.py"), str(cache / "own.py"))
        result = json_output(run_privsep("--policy", str(policy), "--", str(PYTHON), str(probe), *args))
        assert result[str(cache / "own.py")] == "written", (serve, result)
        assert result[str(cache / "module.py")] != "written", (serve, result)
        assert result[str(cache / "module.py") + ".again"] != "written", (serve, result)
        assert outside.read_text() == "original\n", serve


def test_too_many_files_with_other_names_in_writable_grants_are_refused(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    """Each such file is a mount in the view: past MAX_FROZEN the grant is refused, saying why
    and what to do, rather than started slowly or with some left writable."""
    from privsep.plan.view import MAX_FROZEN

    source = shared_tmp / "store"
    source.write_text("x")
    cache = shared_tmp / "cache"
    cache.mkdir(mode=0o777)
    for index in range(MAX_FROZEN + 1):
        os.link(source, cache / f"f{index}")
    proc = run_privsep("--allow-write", str(cache), "--", "/bin/true")
    assert proc.returncode == 125, proc.stderr
    assert "hard links" in proc.stderr and "grant narrower directories" in proc.stderr
    assert run_privsep("--allow-read", str(cache), "--", "/bin/true").returncode == 0


def _deep_chain(top: Path, levels: int = 20) -> tuple[int, str]:
    """``levels`` directories of 250-byte names below ``top`` (more than PATH_MAX in all): an fd
    of the deepest and its path, made through fds as no path that long can be used."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path = str(top)
    for level in range(levels):
        name = f"{level:02d}" + "d" * 248
        os.mkdir(name, dir_fd=fd)
        inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd, path = inner, f"{path}/{name}"
    return fd, path


@pytest.mark.parametrize("kind", ["hard link", "socket"])
def test_what_must_be_masked_or_frozen_cannot_hide_below_path_max(
    run_privsep: RunPrivsep, shared_tmp: Path, kind: str
) -> None:
    """Fresh-eyes audit 16: in one run a sandbox moved a directory of its writable grant, with
    a hard-linked file in it, down a chain of long names (more than PATH_MAX bytes); the next
    run's start-up walk could not lstat it by its path, skipped it silently, and the sandbox
    wrote through the link into the file outside the grant. The walk goes by fds now, and what
    lies too deep to be mounted over is refused, saying so."""
    import socket

    outside = shared_tmp / "venv-module.py"
    outside.write_text("original\n")
    grant = shared_tmp / "cache"
    grant.mkdir(mode=0o777)
    fd, _ = _deep_chain(grant)
    try:
        if kind == "hard link":
            os.link(outside, "mod.py", dst_dir_fd=fd)
        else:
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(f"/proc/self/fd/{fd}/sock")
    finally:
        os.close(fd)
    proc = run_privsep("--allow-write", str(grant), "--", "/bin/true")
    assert proc.returncode == 125, proc.stderr
    assert "lies too deep in a grant" in proc.stderr, proc.stderr
    assert outside.read_text() == "original\n"


def test_a_directory_moved_while_the_walk_looks_refuses_the_grant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fresh-eyes audit 17: a second sandbox with the same writable grant swapped two of its
    directories (renameat2 RENAME_EXCHANGE) in a loop while another privsep started; the walk,
    opening each directory by name, listed one of them twice and the other, with a hard-linked
    file in it, never. The walk now checks that each directory it opens is the one it looked
    at, and that it meets none twice; either refuses the grant. Here the swap is made at the
    worst moment: between the walk's look at ``d`` and its open of it."""
    from privsep.errors import PolicyError
    from privsep.plan import view

    (tmp_path / "outside").write_text("x")
    for name in ("d", "e"):
        (tmp_path / "g" / name).mkdir(parents=True)
    os.link(tmp_path / "outside", tmp_path / "g" / "d" / "f")
    (tmp_path / "g" / "e" / "f").write_text("plain")
    real_open = os.open

    def swapping_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "d" and dir_fd is not None:
            g = tmp_path / "g"
            (g / "d").rename(g / "t")
            (g / "e").rename(g / "d")
            (g / "t").rename(g / "e")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", swapping_open)
    with pytest.raises(PolicyError, match="was moved or replaced each of the 3 times"):
        view._contents(str(tmp_path / "g"), True, True, 1000)
    monkeypatch.undo()
    _, _, frozen = view._contents(str(tmp_path / "g"), True, True, 1000)
    assert [entry[0] for entry in frozen] == [str(tmp_path / "g" / "e" / "f")]  # swapped back once


_FREEZE_PROBE = r"""
import os, sys
from privsep.confine.view import _Frozen, _freeze
path, linked = sys.argv[1], sys.argv[2]
root = os.open("/", os.O_PATH)
st = os.stat(path)
out = {}
try:
    _freeze(root, path, _Frozen(path, st.st_dev, st.st_ino + 1))
    out["wrong file"] = "frozen"
except OSError as e:
    out["wrong file"] = e.errno
try:  # the same file, through a directory swapped for a link since planning (audit 18)
    _freeze(root, linked, _Frozen(linked, st.st_dev, st.st_ino))
    out["through a link"] = "frozen"
except OSError as e:
    out["through a link"] = e.errno
_freeze(root, path, _Frozen(path, st.st_dev, st.st_ino))
try:
    open(path, "a").close()
    out["right file"] = "writable"
except OSError as e:
    out["right file"] = e.errno
print(repr(out))
"""


def test_init_freezes_only_the_very_file_planning_found(tmp_path: Path) -> None:
    """Fresh-eyes audit 17: init bound each frozen file by path, so a directory swapped on the
    way since planning froze another file and left the hard-linked one writable. Now the file
    is opened, checked by device and inode (a different one fails the start) and bound
    read-only onto that same open file. In a mount namespace of its own."""
    import errno

    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "f"
    target.write_text("x")
    (tmp_path / "s").symlink_to(tmp_path / "d")
    probe = tmp_path / "probe.py"
    probe.write_text(_FREEZE_PROBE)
    proc = subprocess.run(
        [
            "unshare", "--mount", "--propagation", "private",
            str(PYTHON), str(probe), str(target), str(tmp_path / "s" / "f"),
        ],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = {"wrong file": errno.ESTALE, "through a link": errno.ELOOP, "right file": errno.EROFS}
    assert eval(proc.stdout) == expected  # noqa: S307 - our own repr


_BOUND_TWICE = r"""
import os, socket, sys
from privsep.plan import view
g = sys.argv[1]
os.makedirs(g + "/a"); os.makedirs(g + "/b")
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).bind(g + "/a/sock")
os.system(f"mount --bind {g}/a {g}/b")
_, special, _ = view._contents(g, True, False, 1000)  # a read grant
_, _, frozen = view._contents(g, True, True, 1000)  # and a writable one: not refused
print(repr(sorted(special)))
"""


def test_a_directory_shown_twice_by_a_bind_is_walked_under_both_names(tmp_path: Path) -> None:
    """Fresh-eyes audit 18: a directory visible under two names in a grant (a bind mount inside
    it) counted as "met twice"; a read grant skipped the second name, leaving a host daemon's
    datagram socket there unmasked (sendto reached it), and a writable grant was refused. A
    directory is one walk's once per mount now. In a mount namespace of its own."""
    probe = tmp_path / "probe.py"
    probe.write_text(_BOUND_TWICE)
    grant = tmp_path / "g"
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", str(PYTHON), str(probe), str(grant)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert eval(proc.stdout) == [f"{grant}/a/sock", f"{grant}/b/sock"]  # noqa: S307 - our own repr


def test_a_directory_removed_while_the_walk_looks_is_skipped_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fresh-eyes audit 18: a writable grant on a busy build directory (other processes making
    and removing scratch directories) was refused 26 times in 30: a directory removed between
    the walk's look and its open counted as moved. Removed, it holds nothing to freeze: skipped."""
    from privsep.plan import view

    (tmp_path / "g" / "scratch").mkdir(parents=True)
    (tmp_path / "g" / "kept").write_text("x")
    real_open = os.open

    def removing_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "scratch" and dir_fd is not None:
            (tmp_path / "g" / "scratch").rmdir()
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", removing_open)
    count, special, frozen = view._contents(str(tmp_path / "g"), True, True, 1000)
    assert (count, special, frozen) == (2, [], [])


_PINNED_SUBMOUNT = r"""
set -e
W="$1"; shift
mkdir -p "$W/a/m"
echo hidden-under-a-host-mount > "$W/a/m/under.txt"
mount -t tmpfs top "$W/a/m"
echo top > "$W/a/m/top.txt"
exec "$@"
"""


def test_a_pinned_directory_keeps_the_hosts_mounts_below_it(shared_tmp: Path) -> None:
    """Fresh-eyes audit 18: a deny rule inside a writable grant pins its ancestors (each bound
    onto itself); the pin was a plain bind, which leaves out the mounts below it, so the
    sandbox saw, and wrote, what a host mount there covers. In a mount namespace of its own."""
    grant = shared_tmp / "w"
    (grant / "a").mkdir(parents=True)
    (grant / "a" / "secret").write_text("no")
    policy = write_policy(
        shared_tmp,
        "pin.toml",
        f'extends = "minimal"\n[view]\ntmp = false\n[[files]]\npath = "{grant}"\n'
        'access = ["read", "write", "create", "list"]\n'
        f'[[files]]\npath = "{grant}/a/secret"\ndeny = true\n',
    )
    script = shared_tmp / "scene.sh"
    script.write_text(_PINNED_SUBMOUNT)
    look = f"ls {grant}/a/m; echo written > {grant}/a/m/under.txt"
    proc = subprocess.run(
        [
            "unshare", "--mount", "--propagation", "private", "sh", str(script), str(grant),
            str(PRIVSEP), "run", "--no-cache", "--policy", str(policy), "--", "/bin/sh", "-c", look,
        ],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["top.txt"], proc.stdout  # the host mount, not what it covers
    assert (grant / "a" / "m" / "under.txt").read_text() == "hidden-under-a-host-mount\n"


def test_a_path_that_changes_while_it_is_planned_is_a_clear_refusal(
    shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fresh-eyes audit 18: a host process swapping a granted directory with a symlink in a
    loop made realpath's readlink fail with EINVAL (a link at its lstat, a directory at its
    readlink), and the start ended with a traceback. It is a PolicyError naming the path."""
    from privsep import _hostfacts
    from privsep.errors import PolicyError
    from privsep.plan.spawnplan import make_plan
    from privsep.policy.load import load_policy

    (shared_tmp / "g" / "secret").mkdir(parents=True)

    def swapped(path: str) -> str:
        raise OSError(errno.EINVAL, "Invalid argument", path)

    rules = [
        {"path": str(shared_tmp / "g"), "access": ["read"]},
        {"path": str(shared_tmp / "g/secret"), "deny": True},
    ]
    grants = {"view": {"tmp": False}, "files": rules}
    policy = load_policy("minimal", extra=grants)
    monkeypatch.setattr(_hostfacts, "realpath", swapped)
    with pytest.raises(PolicyError, match=r"planning the sandbox failed reading .*Invalid argument"):
        make_plan(policy, ["/bin/true"])
