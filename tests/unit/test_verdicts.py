"""The broker's answer to each syscall the filter hands it (broker/verdicts.py), branch by branch."""

from __future__ import annotations

import errno

import pytest

from privsep._linux import AUDIT_ARCH_X86_64
from privsep.broker.verdicts import SyscallRules, Verdict, decide_syscall

_OPENAT, _PTRACE, _MOUNT = 257, 101, 165
_I386 = 0x40000003


def _rules(default: str = "eperm", *, learning: bool = False) -> SyscallRules:
    return SyscallRules(frozenset({_OPENAT}), frozenset({_PTRACE}), default, learning)


def _decide(nr: int, rules: SyscallRules, arch: int = AUDIT_ARCH_X86_64) -> Verdict:
    return decide_syscall(
        nr, arch, rules, {_OPENAT: "openat", _PTRACE: "ptrace", _MOUNT: "mount"}.__getitem__
    )


def test_a_transparently_served_call_goes_to_transparent_py_and_is_not_audited_here() -> None:
    verdict = _decide(_OPENAT, _rules())
    assert verdict.action == "serve" and verdict.audited is None


@pytest.mark.parametrize(("default", "err"), [("eperm", errno.EPERM), ("enosys", errno.ENOSYS)])
def test_a_call_outside_the_allowlist_fails_with_the_policy_errno(default: str, err: int) -> None:
    assert _decide(_MOUNT, _rules(default)) == Verdict("refuse", "mount", err)
    assert _decide(_MOUNT, _rules(default)).audited == "deny"


def test_with_default_kill_a_call_outside_the_allowlist_kills_and_says_how_to_allow_it() -> None:
    verdict = _decide(_MOUNT, _rules("kill"))
    assert verdict.action == "kill" and verdict.name == "mount"
    assert 'add "mount" to [syscalls] allow' in verdict.why


def test_a_dangerous_call_kills_whatever_the_default() -> None:
    for default in ("eperm", "enosys", "kill"):
        verdict = _decide(_PTRACE, _rules(default))
        assert (verdict.action, verdict.why) == ("kill", "which privsep never allows")


def test_a_foreign_architecture_is_dangerous_even_for_a_served_number() -> None:
    verdict = _decide(_OPENAT, _rules(), arch=_I386)
    assert verdict.action == "kill" and verdict.name == f"syscall {_OPENAT} (arch {_I386:#x})"


def test_learn_mode_allows_and_records_except_the_dangerous_set() -> None:
    learning = _rules("kill", learning=True)
    assert _decide(_MOUNT, learning) == Verdict("allow", "mount")
    assert _decide(_MOUNT, learning).audited == "allow"
    assert _decide(_PTRACE, learning) == Verdict("refuse", "ptrace", errno.EPERM)
    assert _decide(_OPENAT, learning, arch=_I386).action == "refuse"
