"""The seccomp filter, proved two ways.

1. A classic-BPF interpreter runs the compiled program against a reference model of the
   intended semantics, for every syscall number and for argument values that probe the
   edges (high bits, masks). This is where "libseccomp did something surprising" shows.
2. Real children: fork, set no_new_privs, load the filter, make the call, report the
   result through a pipe. Each refusal has a control showing the kernel would otherwise
   have done the thing, so no test passes because a call was impossible anyway.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privsep.confine.seccomp import load_filter
from privsep.errors import ConfinementError, PolicyError
from privsep.plan import filter as seccomp_mod
from privsep.plan.filter import (
    AUDIT_ARCH_X86_64,
    FilterSpec,
    compile_filter,
    syscall_name,
    syscall_number,
)
from privsep.policy.syscalls import DANGEROUS, GROUPS, expand

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
    reason="the filter compiler targets Linux x86_64 only",
)

# Kernel ABI numbers for x86_64, written out so the tests do not trust the code under test.
NR = {
    "read": 0,
    "write": 1,
    "ioctl": 16,
    "getpid": 39,
    "socket": 41,
    "socketpair": 53,
    "clone": 56,
    "fork": 57,
    "ptrace": 101,
    "getppid": 110,
    "personality": 135,
    "clone3": 435,
    "open_tree_attr": 467,
}
X32_BIT = 0x40000000
AUDIT_ARCH_I386 = 0x40000003

RET_KILL_PROCESS = 0x80000000
RET_USER_NOTIF = 0x7FC00000
RET_ALLOW = 0x7FFF0000
MSG_FASTOPEN = 0x20000000


def RET_ERRNO(err: int) -> int:
    return 0x00050000 | err


TIOCSTI, TIOCLINUX, FIONREAD = 0x5412, 0x541C, 0x541B
CLONE_NEW = {
    "CLONE_NEWTIME": 0x80,
    "CLONE_NEWNS": 0x20000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
NS_MASK = 0
for _flag in CLONE_NEW.values():
    NS_MASK |= _flag
SIGCHLD = int(signal.SIGCHLD)
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
NOTIF = struct.Struct("<QIIiIQ6Q")  # struct seccomp_notif with its seccomp_data

SYSTEM_SERVICE = expand(["@system-service"])
U64 = (1 << 64) - 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def raw(nr: int, *args: int) -> list[int]:
    """One syscall with every argument a full 64-bit register: [return value, errno]."""
    ctypes.set_errno(0)
    rc = int(_libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & U64) for a in args)))
    return [rc, ctypes.get_errno() if rc == -1 else 0]


# --------------------------------------------------------------------------- a BPF interpreter


def run_bpf(program: bytes, nr: int, arch: int, args: tuple[int, ...]) -> int:
    """Evaluate a classic-BPF seccomp program the way the kernel does (only the opcodes we expect)."""
    data = struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0, *args)
    insns: list[tuple[int, int, int, int]] = [
        struct.unpack_from("<HBBI", program, off) for off in range(0, len(program), 8)
    ]
    pc, acc = 0, 0
    for _ in range(len(insns)):  # forward-only jumps: at most one pass
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld [k]
            acc = int.from_bytes(data[k : k + 4], "little")
            pc += 1
        elif code == 0x54:  # and #k
            acc &= k
            pc += 1
        elif code == 0x05:  # ja
            pc += 1 + k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x} at {pc}")
    raise AssertionError("program ran off its end")


_DEFAULT_RET = {"eperm": RET_ERRNO(errno.EPERM), "enosys": RET_ERRNO(errno.ENOSYS), "kill": RET_KILL_PROCESS}
_DANGEROUS_RET = {"notify": RET_USER_NOTIF, "kill": RET_KILL_PROCESS}


def _names_by_number() -> dict[int, str]:
    names: dict[int, str] = {}
    for nr in range(600):
        name = syscall_name(nr)
        if not name.startswith("syscall "):
            names[nr] = name
    return names


NAMES = _names_by_number()


#: The syscalls whose mode argument (this index) may not carry S_ISUID or S_ISGID.
MODE_ARG = {
    "chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2,
    "open": 2, "openat": 3, "creat": 1, "mknod": 1, "mknodat": 2,
}  # fmt: skip


def model(spec: FilterSpec, nr: int, arch: int, args: tuple[int, ...]) -> int:  # noqa: PLR0911
    """The intended semantics, written independently of the compiler."""
    nr &= 0xFFFFFFFF
    if arch != AUDIT_ARCH_X86_64:
        return RET_KILL_PROCESS
    if nr >= X32_BIT and nr != 0xFFFFFFFF:  # x32; -1 is "skip this syscall" for tracers
        return RET_KILL_PROCESS
    name = NAMES.get(nr)

    def lo(i: int) -> int:
        return args[i] & 0xFFFFFFFF

    if name == "clone3":
        return RET_ERRNO(errno.ENOSYS)
    if name == "personality":
        return RET_ALLOW if lo(0) in (0, 0xFFFFFFFF) else RET_ERRNO(errno.EPERM)
    if name in spec.allow:
        if name == "connect":
            return RET_USER_NOTIF  # the broker performs every connect on the socket it checked
        if (name in ("sendto", "sendmmsg") and lo(3) & MSG_FASTOPEN) or (
            name == "sendmsg" and lo(2) & MSG_FASTOPEN
        ):
            return RET_ERRNO(errno.EPERM)  # a connect hidden in a send
        if name == "ioctl" and lo(1) in (TIOCSTI, TIOCLINUX):
            return RET_ERRNO(errno.EPERM)
        if name == "clone" and lo(0) & NS_MASK:
            return RET_ERRNO(errno.EPERM)
        if name in ("socket", "socketpair") and lo(0) != socket.AF_UNIX:
            return RET_ERRNO(errno.EAFNOSUPPORT)
        if name in MODE_ARG and lo(MODE_ARG[name]) & 0o6000:
            return RET_ERRNO(errno.EPERM)  # never a setuid or setgid file on the host
        if name == "fallocate" and lo(1) & 0x28:
            return RET_ERRNO(errno.EOPNOTSUPP)  # COLLAPSE_RANGE, INSERT_RANGE: a truncate by other means
        if name == "openat2":
            return RET_ERRNO(errno.ENOSYS)  # its mode and flags live in memory: never checked
        return RET_ALLOW
    if name in DANGEROUS:
        return _DANGEROUS_RET[spec.dangerous_action]
    return _DEFAULT_RET[spec.default_action]


SMALL = frozenset({"read", "write", "exit_group", "ioctl", "clone", "socket", "socketpair"})
SPECS = [
    FilterSpec(SYSTEM_SERVICE),
    FilterSpec(SYSTEM_SERVICE, default_action="enosys", dangerous_action="kill"),
    FilterSpec(SYSTEM_SERVICE, default_action="kill"),
    FilterSpec(SMALL, default_action="kill", dangerous_action="kill"),
    FilterSpec(frozenset({"read", "write"}), default_action="enosys"),  # no arg-checked calls
]
SPEC_IDS = ["service", "service-enosys-kill", "service-kill", "small-kill", "tiny-enosys"]

_edge_args = [
    0,
    1,
    2,
    0xFFFFFFFF,
    1 << 32,
    (1 << 32) | 1,
    (1 << 32) | 2,
    U64,
    TIOCSTI,
    TIOCLINUX,
    FIONREAD,
    (1 << 32) | TIOCSTI,
    (0xFFFFFFFF << 32) | TIOCLINUX,
    (1 << 63) | TIOCSTI,
    SIGCHLD,
    SIGCHLD | 0x10000000,
    (1 << 40) | SIGCHLD,
    0x0040000,
    0x8,
    *CLONE_NEW.values(),
    *((v | SIGCHLD | (1 << 33)) for v in CLONE_NEW.values()),
]


def test_the_specials_have_the_numbers_the_tests_assume() -> None:
    for name, nr in NR.items():
        assert syscall_number(name) == nr, name
        assert syscall_name(nr) == name


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_every_syscall_number_matches_the_model(spec: FilterSpec) -> None:
    program = compile_filter(spec)
    for nr in [*range(600), 0xFFFFFFFF, 0x7FFFFFFF]:
        for args in [(0,) * 6, *((a, a, 0, 0, 0, 0) for a in _edge_args)]:
            for arch in (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386):
                assert run_bpf(program, nr, arch, args) == model(spec, nr, arch, args), (nr, arch, args)
    for nr in (X32_BIT | 39, X32_BIT | 16, X32_BIT, 0x7FFFFFFE, 0x80000000):
        assert run_bpf(program, nr, AUDIT_ARCH_X86_64, (0,) * 6) == RET_KILL_PROCESS


_interesting_nr = (
    st.sampled_from([*NR.values(), *(X32_BIT | v for v in NR.values()), 0xFFFFFFFF])
    | st.integers(0, 0xFFFFFFFF)
    | st.integers(0, 520)
)
_arg = (
    st.sampled_from(_edge_args)
    | st.integers(0, U64)
    | st.builds(lambda hi, lo: (hi << 32) | lo, st.integers(0, 0xFFFFFFFF), st.sampled_from(_edge_args[:20]))
)
_arch = st.sampled_from([AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, 0x40000028]) | st.integers(0, 0xFFFFFFFF)


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(range(len(SPECS))),
    _interesting_nr,
    st.one_of(st.just(AUDIT_ARCH_X86_64), _arch),
    st.tuples(_arg, _arg, _arg, _arg, _arg, _arg),
)
def test_random_calls_match_the_model(spec_index: int, nr: int, arch: int, args: tuple[int, ...]) -> None:
    spec = SPECS[spec_index]
    assert run_bpf(compile_filter(spec), nr, arch, args) == model(spec, nr, arch, args)


def _libseccomp_filter_pfc(rules: Callable[[Any], None]) -> str:
    sc = seccomp_mod._libseccomp()
    filt = sc.SyscallFilter(RET_ERRNO(errno.EPERM))
    rules(filt)
    fd = os.memfd_create("pfc")
    try:
        with open(fd, "w", closefd=False) as handle:
            filt.export_pfc(handle)
        return os.pread(fd, 1 << 20, 0).decode()
    finally:
        os.close(fd)


def test_libseccomp_still_swallows_conditional_rules_next_to_an_unconditional_allow() -> None:
    """Why the argument checks live in our own prelude (see privsep.plan.filter).

    If a libseccomp upgrade stops doing this, the prelude is still correct, but this test
    tells whoever reads it that the simpler all-libseccomp design became possible.
    """
    sc = seccomp_mod._libseccomp()

    def rules(filt: Any) -> None:
        filt.add_rule(RET_ALLOW, "ioctl")
        filt.add_rule(RET_ERRNO(errno.EACCES), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))

    pfc = _libseccomp_filter_pfc(rules)
    assert "ERRNO(13)" not in pfc, "libseccomp now keeps the conditional rule"

    def masked_zero(filt: Any) -> None:
        filt.add_rule(RET_ALLOW, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0, 0))
        filt.add_rule(RET_ERRNO(errno.EACCES), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))

    assert "ERRNO(13)" not in _libseccomp_filter_pfc(masked_zero), "mask 0 is no longer folded"


# --------------------------------------------------------------------------- compile-time errors


def test_unknown_syscall_is_a_policy_error_naming_libseccomp() -> None:
    expected = r"unknown syscall 'frobnicate' \(not known to libseccomp \d+\.\d+\.\d+ on x86_64\)"
    with pytest.raises(PolicyError, match=expected):
        compile_filter(FilterSpec(frozenset({"read", "frobnicate"})))


def test_syscall_of_another_architecture_is_unknown_here() -> None:
    with pytest.raises(PolicyError, match="unknown syscall 'socketcall'"):
        compile_filter(FilterSpec(frozenset({"socketcall"})))


def test_names_that_are_not_identifiers_are_unknown() -> None:
    # libseccomp reads a C string: "read\0ptrace" would otherwise resolve as "read".
    with pytest.raises(PolicyError, match="unknown syscall"):
        compile_filter(FilterSpec(frozenset({"read\x00ptrace"})))
    assert syscall_number("READ") is None


def test_unexpanded_group_gets_a_hint() -> None:
    with pytest.raises(PolicyError, match="expand"):
        compile_filter(FilterSpec(frozenset({"@default"})))


@pytest.mark.parametrize("name", ["ptrace", "clone3", "personality", "mount"])
def test_dangerous_name_in_allow_is_a_policy_error(name: str) -> None:
    with pytest.raises(PolicyError, match=f"'{name}' is in the dangerous set"):
        compile_filter(FilterSpec(frozenset({"read", name})))


def test_spec_values_are_checked_and_sets_made_hashable() -> None:
    with pytest.raises(PolicyError, match="default action"):
        FilterSpec(frozenset(), default_action="allow")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="dangerous"):
        FilterSpec(frozenset(), dangerous_action="log")  # type: ignore[arg-type]
    spec = FilterSpec({"read"})  # type: ignore[arg-type]
    assert spec.allow == frozenset({"read"}) and hash(spec) == hash(FilterSpec(frozenset({"read"})))


def test_compiling_is_cached_per_spec() -> None:
    first = compile_filter(FilterSpec(frozenset(GROUPS["@default"])))
    again = compile_filter(FilterSpec(frozenset(GROUPS["@default"])))
    assert first is again
    assert compile_filter(FilterSpec(frozenset(GROUPS["@default"]), default_action="kill")) != first


def test_every_group_member_exists_on_x86_64() -> None:
    missing = sorted(n for g in GROUPS.values() for n in g if syscall_number(n) is None)
    assert missing == []


def test_system_service_filter_fits_the_kernel_limit() -> None:
    program = compile_filter(FilterSpec(SYSTEM_SERVICE))
    assert len(program) % 8 == 0
    assert 0 < len(program) // 8 <= 4096


def test_syscall_names_for_reports() -> None:
    assert syscall_name(101) == "ptrace"
    assert syscall_name(467) == "open_tree_attr"  # newer than libseccomp 2.5.4
    assert syscall_name(100_000) == "syscall 100000"


def test_a_syscall_is_named_by_its_number_when_libseccomp_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit 12: a broken libseccomp, loaded mid-run to name a denied call, raised AttributeError
    out of the listener and ended the broker with every sandbox it served."""
    from privsep.plan import filter as seccomp_filter

    def broken() -> object:
        raise AttributeError("undefined symbol: seccomp_syscall_resolve_num_arch")

    monkeypatch.setattr(seccomp_filter, "_libseccomp", broken)
    syscall_name.cache_clear()  # names are kept per number: an earlier test's are not this one's
    try:
        assert syscall_name(101) == "syscall 101"
        assert syscall_name(467) == "open_tree_attr"
    finally:
        syscall_name.cache_clear()  # nor this one's the next test's


def test_pyseccomp_is_imported_lazily() -> None:
    code = (
        "import sys, privsep.confine.seccomp, privsep.plan.filter;"
        "print('pyseccomp' in sys.modules, 'subprocess' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_import_does_not_spawn_find_library_subprocesses(tmp_path: Path) -> None:
    # With find_library left alone, pyseccomp's import runs ldconfig/gcc; a PATH with
    # nothing but a tripwire shows whether anything tried.
    tripwire = tmp_path / "bin"
    tripwire.mkdir()
    marker = tmp_path / "spawned"
    for tool in ("ldconfig", "gcc", "cc", "ld", "objdump", "sh"):
        script = tripwire / tool
        script.write_text(f"#!/bin/sh\necho {tool} >> {marker}\nexit 1\n")
        script.chmod(0o755)
    code = (
        "from privsep.plan.filter import compile_filter, FilterSpec;"
        "compile_filter(FilterSpec(frozenset({'read'})))"
    )
    env = {**os.environ, "PATH": str(tripwire)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert not marker.exists(), marker.read_text()


# --------------------------------------------------------------------------- real children


@dataclass
class Outcome:
    status: int
    reports: list[Any] = field(default_factory=list)

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None


Report = Callable[[Any], None]


def _set_no_new_privs() -> None:
    if (
        _libc.prctl(
            PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)
        )
        != 0
    ):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def run_child(
    spec: FilterSpec | None,
    body: Callable[[Report, int | None], None],
    *,
    listener: bool = False,
    no_new_privs: bool = True,
    timeout: float = 30.0,
) -> Outcome:
    """Fork; in the child set no_new_privs, load the filter (unless spec is None), run body."""
    program = compile_filter(spec) if spec is not None else None  # in the parent, like the broker
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(rfd)

            def report(obj: Any) -> None:
                os.write(wfd, json.dumps(obj).encode() + b"\n")

            if no_new_privs:
                _set_no_new_privs()
            listener_fd = load_filter(program, listener=listener) if program is not None else None
            body(report, listener_fd)
        except BaseException as exc:
            os.write(wfd, json.dumps(["error", type(exc).__name__, str(exc)]).encode() + b"\n")
            code = 70
        finally:
            os._exit(code)
    os.close(wfd)
    data = _read_until_eof(rfd, pid, timeout)
    _, status = os.waitpid(pid, 0)
    return Outcome(status, [json.loads(line) for line in data.splitlines()])


def _read_until_eof(fd: int, pid: int, timeout: float) -> bytes:
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("child hung")
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def test_allowed_calls_work() -> None:
    parent = os.getpid()
    out = run_child(FilterSpec(SYSTEM_SERVICE), lambda report, _: report(raw(NR["getppid"])))
    assert out.reports == [[parent, 0]]
    assert out.exit_code == 0


@pytest.mark.parametrize(("default", "expected_errno"), [("eperm", errno.EPERM), ("enosys", errno.ENOSYS)])
def test_not_allowed_call_gets_the_default_errno(default: str, expected_errno: int) -> None:
    spec = FilterSpec(SYSTEM_SERVICE - {"getppid"}, default_action=default)  # type: ignore[arg-type]
    out = run_child(spec, lambda report, _: report(raw(NR["getppid"])))
    assert out.reports == [[-1, expected_errno]]


def test_not_allowed_call_kills_with_default_kill() -> None:
    def body(report: Report, _: int | None) -> None:
        report("calling")
        report(raw(NR["getppid"]))

    out = run_child(FilterSpec(SYSTEM_SERVICE - {"getppid"}, default_action="kill"), body)
    assert out.reports == ["calling"]
    assert out.signal == signal.SIGSYS


def test_clone3_fails_with_enosys_so_libc_falls_back() -> None:
    def body(report: Report, _: int | None) -> None:
        report(raw(NR["clone3"], 0, 0))

    assert run_child(None, body).reports == [[-1, errno.EINVAL]]  # control: the kernel has clone3
    assert run_child(FilterSpec(SYSTEM_SERVICE), body).reports == [[-1, errno.ENOSYS]]


def _clone_and_reap(report: Report, flags: int) -> None:
    rc, err = raw(NR["clone"], flags, 0, 0, 0, 0)
    if rc == 0:  # the new child, should the filter ever let it through
        os._exit(0)
    if rc > 0:
        os.waitpid(rc, 0x40000000)  # __WALL: the exit signal may not be SIGCHLD (0x80 bit)
    report([rc > 0, err])


@pytest.mark.parametrize("flag", sorted(CLONE_NEW), ids=str)
def test_clone_with_a_namespace_flag_is_refused(flag: str) -> None:
    flags = SIGCHLD | CLONE_NEW[flag]
    out = run_child(FilterSpec(SYSTEM_SERVICE), lambda report, _: _clone_and_reap(report, flags))
    assert out.reports == [[False, errno.EPERM]]


def test_clone_new_user_works_without_the_filter() -> None:
    out = run_child(None, lambda report, _: _clone_and_reap(report, SIGCHLD | CLONE_NEW["CLONE_NEWUSER"]))
    assert out.reports == [[True, 0]]


def test_plain_fork_and_clone_work() -> None:
    def body(report: Report, _: int | None) -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        report(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        _clone_and_reap(report, SIGCHLD)
        _clone_and_reap(report, SIGCHLD | (1 << 40))  # high bits carry no namespace flag

    assert run_child(FilterSpec(SYSTEM_SERVICE), body).reports == [7, [True, 0], [True, 0]]


def _socket_calls(report: Report, _: int | None) -> None:
    for family in (
        socket.AF_UNIX,
        (1 << 32) | socket.AF_UNIX,
        socket.AF_INET,
        socket.AF_INET6,
        socket.AF_NETLINK,
        socket.AF_PACKET,
        (1 << 32) | socket.AF_INET,
    ):
        rc, err = raw(NR["socket"], family, socket.SOCK_DGRAM, 0)
        if rc >= 0:
            os.close(rc)
        report([rc >= 0, err])
    pair = (ctypes.c_int * 2)()
    for family in (socket.AF_UNIX, socket.AF_INET):
        rc, err = raw(NR["socketpair"], family, socket.SOCK_STREAM, 0, ctypes.addressof(pair))
        report([rc == 0, err])


def test_socket_families_without_the_filter() -> None:
    out = run_child(None, _socket_calls)
    assert out.reports[0] == [True, 0] and out.reports[2] == [True, 0]  # AF_UNIX and AF_INET exist


def test_only_af_unix_sockets_can_be_made() -> None:
    out = run_child(FilterSpec(SYSTEM_SERVICE), _socket_calls)
    no = [False, errno.EAFNOSUPPORT]
    assert out.reports == [[True, 0], [True, 0], no, no, no, no, no, [True, 0], no]


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def _terminal_body(slave: int, requests: list[int]) -> Callable[[Report, int | None], None]:
    """Try to make the pty our controlling terminal (TIOCSCTTY: then the kernel itself
    would allow TIOCSTI, even without root), then each request, then a harmless FIONREAD."""
    char = ctypes.c_char(b"z")
    count = ctypes.c_int(-1)

    def body(report: Report, _: int | None) -> None:
        os.setsid()
        report(raw(NR["ioctl"], slave, termios.TIOCSCTTY, 0))
        for request in requests:
            report(raw(NR["ioctl"], slave, request, ctypes.addressof(char)))
        report(raw(NR["ioctl"], slave, FIONREAD, ctypes.addressof(count)))

    return body


def test_terminal_injection_works_without_the_filter(pty_pair: tuple[int, int]) -> None:
    if os.geteuid() != 0 and Path("/proc/sys/dev/tty/legacy_tiocsti").read_text().strip() != "1":
        pytest.skip("the kernel refuses TIOCSTI itself (dev.tty.legacy_tiocsti=0 and not root)")
    master, slave = pty_pair
    # The kernel reads the request as 32 bits: 0x100005412 is TIOCSTI.
    out = run_child(None, _terminal_body(slave, [(1 << 32) | TIOCSTI]))
    assert out.reports == [[0, 0], [0, 0], [0, 0]]
    assert os.read(master, 1) == b"z"


def test_terminal_injection_is_refused(pty_pair: tuple[int, int]) -> None:
    _master, slave = pty_pair
    requests = [TIOCSTI, (1 << 32) | TIOCSTI, (0xFFFFFFFF << 32) | TIOCSTI, TIOCLINUX, (1 << 32) | TIOCLINUX]
    out = run_child(FilterSpec(SYSTEM_SERVICE), _terminal_body(slave, requests))
    assert out.reports == [[-1, errno.EPERM]] * 6 + [[0, 0]]  # TIOCSCTTY, then the five


def test_personality_only_linux_or_query() -> None:
    def body(report: Report, _: int | None) -> None:
        for persona in (0xFFFFFFFF, 0, (1 << 32), 0x0008, 0x0040000, 0xFFFFFFFE):
            report(raw(NR["personality"], persona))

    assert run_child(None, body).reports[3] == [0, 0]  # control: the kernel would take 0x0008
    out = run_child(FilterSpec(frozenset(GROUPS["@default"]) | {"write"}), body)
    eperm = [-1, errno.EPERM]
    assert out.reports == [[0, 0], [0, 0], [0, 0], eperm, eperm, eperm]


def test_dangerous_call_kills_when_asked() -> None:
    def body(report: Report, _: int | None) -> None:
        report("calling")
        report(raw(NR["ptrace"], 0, 0, 0, 0))  # PTRACE_TRACEME

    out = run_child(FilterSpec(SYSTEM_SERVICE, dangerous_action="kill"), body)
    assert out.reports == ["calling"]
    assert out.signal == signal.SIGSYS


def test_dangerous_call_without_a_listener_fails_with_enosys() -> None:
    out = run_child(FilterSpec(SYSTEM_SERVICE), lambda report, _: report(raw(NR["ptrace"], 0, 0, 0, 0)))
    assert out.reports == [[-1, errno.ENOSYS]]


def test_dangerous_call_notifies_the_listener() -> None:
    program = compile_filter(FilterSpec(SYSTEM_SERVICE))
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            parent_sock.close()
            _set_no_new_privs()
            fd = load_filter(program, listener=True)
            assert fd is not None
            cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
            socket.send_fds(child_sock, [json.dumps([cloexec]).encode()], [fd])
            os.close(fd)
            raw(NR["ptrace"], 0, 11, 22, 33)  # blocks until the broker answers or kills us
        finally:
            os._exit(0)
    child_sock.close()
    fds: list[int] = []
    try:
        parent_sock.settimeout(30)
        msg, fds, _flags, _addr = socket.recv_fds(parent_sock, 1024, 1)
        assert json.loads(msg) == [True], "the listener fd must be close-on-exec"
        (listener,) = fds
        ready, _, _ = select.select([listener], [], [], 30)
        assert ready, "no notification arrived"
        buf = bytearray(NOTIF.size)  # must be zeroed for the kernel to accept it
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        _id, notif_pid, _fl, nr, arch, _ip, *args = NOTIF.unpack(buf)
        assert (nr, arch, notif_pid) == (NR["ptrace"], AUDIT_ARCH_X86_64, pid)
        assert args[:4] == [0, 11, 22, 33]
        assert syscall_name(nr) == "ptrace"
    finally:
        # Kill before closing the listener: closing it first would fail the pending call
        # with ENOSYS and let the child run on (which the broker must never allow).
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        for fd in fds:
            os.close(fd)
        parent_sock.close()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_load_requires_no_new_privs() -> None:
    out = run_child(FilterSpec(SYSTEM_SERVICE), lambda report, _: report("loaded"), no_new_privs=False)
    assert out.reports[0][:2] == ["error", "ConfinementError"]
    assert "no_new_privs" in out.reports[0][2]


def test_load_rejects_malformed_programs() -> None:
    with pytest.raises(ConfinementError, match="not a BPF program"):
        load_filter(b"\x00" * 7, listener=False)
    with pytest.raises(ConfinementError, match="not a BPF program"):
        load_filter(b"", listener=False)


def test_kernel_rejection_is_reported_with_the_errno_name() -> None:
    no_return = struct.pack("<HBBI", 0x20, 0, 0, 0)  # ld [0] and then nothing: invalid

    def body(report: Report, _: int | None) -> None:
        try:
            load_filter(no_return, listener=False)
        except ConfinementError as exc:
            report([exc.step, str(exc)])

    out = run_child(None, body)
    assert out.reports[0][0] == "seccomp"
    assert "EINVAL" in out.reports[0][1]


def test_newer_syscall_numbers_agree_with_libseccomp_and_the_kernel() -> None:
    table = seccomp_mod._NEWER_SYSCALLS
    sc = seccomp_mod._libseccomp()
    for name, nr in table.items():
        known = int(sc.resolve_syscall(sc.Arch.NATIVE, name))
        assert known in (-1, nr), name
    release = tuple(int(p) for p in os.uname().release.split(".")[:2])
    if release < (6, 17):
        pytest.skip("the kernel predates file_setattr (6.17); only libseccomp was compared")

    def body(report: Report, _: int | None) -> None:
        report({name: raw(nr, 0, 0, 0, 0, 0)[1] for name, nr in table.items()})

    results = run_child(None, body).reports[0]
    assert {name: err for name, err in results.items() if err == errno.ENOSYS} == {}


# --------------------------------------------------------------------------- foreign ABIs

_ABI_PROGRAM = r"""
/* No libc: the only syscalls are the one under test and exit. */
static long sys64(long nr) {
    long r;
    __asm__ volatile ("syscall" : "=a"(r) : "a"(nr) : "rcx", "r11", "memory");
    return r;
}
static int sys32(int nr) {
    int r;
    __asm__ volatile ("int $0x80" : "=a"(r) : "a"(nr) : "memory");
    return r;
}
__attribute__((noreturn)) static void leave(long code) {
    for (;;) __asm__ volatile ("syscall" :: "a"(60L), "D"(code) : "rcx", "r11", "memory");
}
__attribute__((noreturn, used)) void cstart(long *sp) {
    char mode = sp[0] > 1 ? ((char **)(sp + 1))[1][0] : '?';
    long r;
    if (mode == 'n') r = sys64(39);                     /* x86_64 getpid */
    else if (mode == 'i') r = sys32(20);                /* i386 getpid via int 0x80 */
    else if (mode == 'x') r = sys64(39 | 0x40000000L);  /* x32 getpid */
    else leave(3);
    leave(r > 0 ? 0 : 1);
}
__asm__(".globl _start\n_start:\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call cstart\n");
"""


@pytest.fixture(scope="module")
def abi_program(tmp_path_factory: pytest.TempPathFactory) -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to build the foreign-ABI probe")
    src = tmp_path_factory.mktemp("abi") / "probe.c"
    src.write_text(textwrap.dedent(_ABI_PROGRAM))
    exe = src.with_suffix("")
    subprocess.run(
        [
            gcc,
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fcf-protection=none",
            "-O1",
            "-o",
            str(exe),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return str(exe)


def _exec_probe(program: str, mode: str) -> Callable[[Report, int | None], None]:
    def body(report: Report, _: int | None) -> None:
        os.execv(program, [program, mode])

    return body


def test_abi_probe_controls(abi_program: str) -> None:
    assert run_child(None, _exec_probe(abi_program, "n")).exit_code == 0
    i386 = run_child(None, _exec_probe(abi_program, "i")).exit_code
    if i386 != 0:
        pytest.skip("this kernel cannot run i386 syscalls at all (no IA32 emulation)")
    # Without CONFIG_X86_X32_ABI the call fails (exit 1) but is not fatal: seccomp is what kills.
    assert run_child(None, _exec_probe(abi_program, "x")).exit_code in (0, 1)


def test_native_syscalls_pass_the_arch_check(abi_program: str) -> None:
    out = run_child(FilterSpec(SYSTEM_SERVICE), _exec_probe(abi_program, "n"))
    assert out.exit_code == 0


@pytest.mark.parametrize("mode", ["i", "x"], ids=["i386-int80", "x32"])
def test_foreign_abi_syscalls_kill(abi_program: str, mode: str) -> None:
    out = run_child(FilterSpec(SYSTEM_SERVICE), _exec_probe(abi_program, mode))
    assert out.signal == signal.SIGSYS


# --------------------------------------------------------------------------- real workloads

_PYTHON_WORKLOAD = """
import asyncio, hashlib, json, os, socket, subprocess, tempfile, threading
t = threading.Thread(target=lambda: None); t.start(); t.join()
subprocess.run(["/bin/true"], check=True)
a, b = socket.socketpair(); a.send(b"x"); assert b.recv(1) == b"x"
with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "f"), "w") as f: f.write("x")
    os.rename(os.path.join(d, "f"), os.path.join(d, "g"))
asyncio.run(asyncio.sleep(0))
hashlib.sha256(os.urandom(16)).hexdigest()
print(json.dumps(sorted(os.listdir("/"))))
"""

_SHELL_WORKLOAD = r"""
set -e
ls -la / | wc -l >/dev/null
d=$(mktemp -d); echo hi > "$d/f"; cp "$d/f" "$d/g"; mv "$d/g" "$d/h"
sort "$d/f" "$d/h" | uniq -c | grep -q 2; sha256sum "$d/f" >/dev/null; rm -r "$d"
test -n "$(date +%s)"; id -u >/dev/null; sleep 0.01
echo done
"""


def _run_capturing(spec: FilterSpec, argv: list[str]) -> tuple[Outcome, str]:
    out_r, out_w = os.pipe()

    def body(report: Report, _: int | None) -> None:
        os.dup2(out_w, 1)
        os.execve(argv[0], argv, {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})

    try:
        outcome = run_child(spec, body)
    finally:
        os.close(out_w)
    with os.fdopen(out_r) as pipe:
        return outcome, pipe.read()


@pytest.mark.parametrize("default", ["kill", "eperm"])
def test_cpython_runs_under_system_service(default: str) -> None:
    # "kill" makes any syscall missing from the table fatal instead of quietly tolerated.
    spec = FilterSpec(SYSTEM_SERVICE, default_action=default, dangerous_action="kill")  # type: ignore[arg-type]
    outcome, stdout = _run_capturing(spec, [sys.executable, "-I", "-c", _PYTHON_WORKLOAD])
    assert (outcome.exit_code, outcome.signal) == (0, None), outcome
    assert json.loads(stdout) == sorted(os.listdir("/"))


def test_bash_and_coreutils_run_under_system_service() -> None:
    bash = shutil.which("bash") or "/bin/bash"
    spec = FilterSpec(SYSTEM_SERVICE, default_action="kill", dangerous_action="kill")
    outcome, stdout = _run_capturing(spec, [bash, "-c", _SHELL_WORKLOAD])
    assert (outcome.exit_code, outcome.signal) == (0, None), outcome
    assert stdout.strip() == "done"


def test_a_too_small_policy_really_breaks_cpython() -> None:
    # Control for the two tests above: without @file-system, the interpreter cannot start.
    spec = FilterSpec(SYSTEM_SERVICE - GROUPS["@file-system"], default_action="kill", dangerous_action="kill")
    outcome, _ = _run_capturing(spec, [sys.executable, "-I", "-c", "print(1)"])
    assert outcome.signal == signal.SIGSYS
