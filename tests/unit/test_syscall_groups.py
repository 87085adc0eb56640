"""The syscall group table: pure, so every property is checked without a kernel."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from privsep.errors import PolicyError
from privsep.policy import syscalls
from privsep.policy.syscalls import DANGEROUS, GROUP_DOCS, GROUPS, SPECIAL, expand

_NAME = re.compile(r"^_?[a-z][a-z0-9_]*$")


def test_every_group_is_documented_and_every_doc_has_a_group() -> None:
    assert set(GROUPS) == set(GROUP_DOCS)
    for name, doc in GROUP_DOCS.items():
        assert doc.strip(), name
        assert "\n" not in doc, f"{name}: docs are one line"


def test_the_groups_the_policy_language_promises_exist() -> None:
    promised = {
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
        "@system-service",
    }
    assert promised <= set(GROUPS)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_no_group_contains_a_dangerous_syscall(group: str) -> None:
    assert GROUPS[group] & DANGEROUS == frozenset()


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_members_are_plain_syscall_names(group: str) -> None:
    assert GROUPS[group], f"{group} is empty"
    for name in GROUPS[group]:
        assert _NAME.match(name), f"{group}: {name!r}"


def test_system_service_contains_every_other_group_but_aio() -> None:
    service = GROUPS["@system-service"]
    for name, members in GROUPS.items():
        if name == "@aio":
            # Kernel AIO draws on the host-wide fs.aio-nr: one sandbox could exhaust it for
            # every process on the host (an audit filled 65536/65536). Only on request.
            assert not members & service, "@aio must not be in @system-service"
            continue
        assert members <= service, f"{name} is not inside @system-service"


def test_system_service_has_what_libc_and_cpython_cannot_start_without() -> None:
    needed = {
        "execve",
        "mmap",
        "mprotect",
        "brk",
        "arch_prctl",
        "set_tid_address",
        "rseq",
        "openat",
        "newfstatat",
        "read",
        "close",
        "rt_sigaction",
        "clone",
        "wait4",
        "futex",
        "getrandom",
        "ioctl",
        "exit_group",
        "pipe2",
        "socketpair",
        "close_range",
    }
    assert needed <= GROUPS["@system-service"]


def test_process_group_forks_but_never_makes_namespaces() -> None:
    process = GROUPS["@process"]
    assert {"fork", "vfork", "clone", "execve", "execveat", "wait4", "waitid", "kill"} <= process
    assert not {"clone3", "unshare", "setns", "ptrace"} & process


def test_network_io_has_no_broker_bypass_beyond_argument_filtered_socket() -> None:
    # socket()/socketpair() are the only calls here that create sockets, and the compiler
    # limits both to AF_UNIX; nothing in the group opens network access by itself.
    assert {"sendmsg", "recvmsg", "accept4", "getsockopt", "socket", "socketpair"} <= GROUPS["@network-io"]


def test_dangerous_contains_the_documented_minimum() -> None:
    minimum = {
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "pidfd_getfd",
        "bpf",
        "keyctl",
        "add_key",
        "request_key",
        "userfaultfd",
        "perf_event_open",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "mount",
        "umount2",
        "pivot_root",
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
        "kcmp",
        "clone3",
        "swapon",
        "swapoff",
        "reboot",
        "acct",
        "quotactl",
        "quotactl_fd",
        "lookup_dcookie",
        "vhangup",
        "syslog",
        "iopl",
        "ioperm",
        "uselib",
        "nfsservctl",
        "_sysctl",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
        "chroot",
        "setdomainname",
        "sethostname",
        "personality",
        "fanotify_init",
    }
    assert minimum <= DANGEROUS


def test_seccomp_itself_stays_allowed() -> None:
    # A stricter filter stacked by the child is harmless; CPython/systemd-style programs use it.
    assert "seccomp" not in DANGEROUS
    assert "seccomp" in expand(["@system-service"])


def test_expand_mixes_groups_and_names() -> None:
    result = expand(["@signal", "getcpu", "@timer"])
    assert result == GROUPS["@signal"] | GROUPS["@timer"] | {"getcpu"}
    assert isinstance(result, frozenset)


def test_expand_accepts_a_lone_string() -> None:
    assert expand("@sync") == GROUPS["@sync"]


def test_expand_of_nothing_is_empty() -> None:
    assert expand([]) == frozenset()


def test_unknown_single_names_pass_through_for_the_compiler_to_check() -> None:
    assert expand(["frobnicate"]) == {"frobnicate"}


def test_unknown_group_is_named_with_the_known_ones() -> None:
    with pytest.raises(PolicyError) as info:
        expand(["@default", "@filesystem"])
    message = str(info.value)
    assert "'@filesystem'" in message
    for group in GROUPS:
        assert group in message


@pytest.mark.parametrize("name", sorted(DANGEROUS))
def test_every_dangerous_name_is_refused(name: str) -> None:
    expected = f"{name!r} is in the dangerous set and can never be allowed"
    with pytest.raises(PolicyError, match=re.escape(expected)):
        expand(["@default", name])


def test_ptrace_message_is_exact() -> None:
    with pytest.raises(PolicyError) as info:
        expand(["ptrace"])
    assert str(info.value) == "'ptrace' is in the dangerous set and can never be allowed"


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_special_calls_explain_what_happens_instead(name: str) -> None:
    assert name in DANGEROUS
    with pytest.raises(PolicyError) as info:
        expand([name])
    assert SPECIAL[name] in str(info.value)


_group_names = st.sampled_from(sorted(GROUPS))


@given(st.lists(_group_names, max_size=6))
def test_expand_is_the_union_of_its_parts(groups: list[str]) -> None:
    expected: frozenset[str] = frozenset().union(*(GROUPS[g] for g in groups))
    assert expand(groups) == expected
    assert not expand(groups) & DANGEROUS


@given(st.lists(_group_names, min_size=1, max_size=4), st.sampled_from(sorted(DANGEROUS)))
def test_one_dangerous_name_spoils_any_list(groups: list[str], bad: str) -> None:
    with pytest.raises(PolicyError):
        expand([*groups, bad])


def test_module_is_pure() -> None:
    # The policy package must stay importable without libseccomp or ctypes plumbing.
    source = Path(syscalls.__file__).read_text(encoding="utf-8")
    assert "import ctypes" not in source
    assert "seccomp import" not in source and "import pyseccomp" not in source
