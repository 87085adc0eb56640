"""Denial diagnostics: which syscall was denied, how often, and the policy line that allows it."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path

import pytest

from tests.conftest import PYTHON, RunPrivsep

VMSPLICE = 278  # outside every group, not dangerous: the policy decides
PTRACE = 101

CALL = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
results = []
for _ in range({times}):
    rc = libc.syscall({nr}, -1, 0, 0, 0)
    results.append(ctypes.get_errno() if rc < 0 else 0)
print(json.dumps(results))
"""


def policy(shared_tmp: Path, body: str) -> str:
    path = shared_tmp / "policy.toml"
    path.write_text('extends = "python"\n' + body)
    return str(path)


def run_call(
    run_privsep: RunPrivsep, policy_path: str, nr: int, times: int, *extra: str
) -> tuple[int, str, str]:
    proc = run_privsep(
        "--policy", policy_path, *extra, "--", str(PYTHON), "-c", CALL.format(nr=nr, times=times)
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(("default", "err"), [("eperm", errno.EPERM), ("enosys", errno.ENOSYS)])
def test_a_denied_syscall_is_answered_counted_and_explained(
    run_privsep: RunPrivsep, shared_tmp: Path, default: str, err: int
) -> None:
    (shared_tmp / "logs").mkdir(mode=0o777)
    (shared_tmp / "logs").chmod(0o777)  # the non-root broker creates its log here
    audit = shared_tmp / "logs" / "audit.jsonl"
    status, out, stderr = run_call(
        run_privsep, policy(shared_tmp, f'[syscalls]\ndefault = "{default}"\n'), VMSPLICE, 3,
        "--audit-log", str(audit),
    )  # fmt: skip
    assert status == 0, stderr
    assert json.loads(out) == [err] * 3  # the child got the policy's errno each time, and ran on
    line = (
        f'syscall vmsplice was denied 3 times ({default.upper()}); to allow it, add "vmsplice" to [syscalls]'
    )
    assert line in stderr
    assert stderr.count("vmsplice") == 2  # once per syscall, not once per call
    records = [json.loads(x) for x in audit.read_text().splitlines()]
    # Three identical denials: one record, then one that folds the two repeats (a bounded log).
    assert [(r["op"], r["target"], r["decision"]) for r in records] == [("syscall", "vmsplice", "deny")] * 2
    assert "repeated" not in records[0] and records[1]["repeated"] == 2


def test_once_allowed_the_same_call_reaches_the_kernel(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    """The fix the report suggests works: with vmsplice allowed, the kernel answers (EBADF for fd -1)."""
    status, out, stderr = run_call(
        run_privsep, policy(shared_tmp, '[syscalls]\nallow = ["vmsplice"]\n'), VMSPLICE, 1
    )
    assert (status, json.loads(out)) == (0, [errno.EBADF]), stderr
    assert "denied" not in stderr


def test_a_kill_policy_kills_and_names_the_syscall(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    status, out, stderr = run_call(
        run_privsep, policy(shared_tmp, '[syscalls]\ndefault = "kill"\n'), VMSPLICE, 1
    )
    assert status == 128 + signal.SIGSYS
    assert out == ""
    assert "the command called vmsplice" in stderr and 'add "vmsplice" to [syscalls] allow' in stderr


def test_dangerous_syscalls_stay_fatal_whatever_the_default(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    status, _, stderr = run_call(
        run_privsep, policy(shared_tmp, '[syscalls]\ndefault = "enosys"\n'), PTRACE, 1
    )
    assert status == 128 + signal.SIGSYS
    assert "ptrace, which privsep never allows" in stderr
