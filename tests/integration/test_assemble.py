"""``privsep._assemble``: the one sequence that opens a broker's parts, and releases them on any failure.

``privsep run``, ``privsep learn``, the doctor and ``Sandbox`` all go through
it; their own tests check what a user sees. These check the contract the
four rely on: whatever step fails, or however the block is left, nothing
stays open: no fd, no listening port, no forkserver.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from privsep import PrivsepError
from privsep._assemble import assemble, plan_for
from privsep.policy.grants import Listen, grants_to_extra
from privsep.policy.load import load_policy
from privsep.policy.model import Policy
from tests.conftest import open_fds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _can_bind(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _policy(tmp_path: Path, port: int) -> Policy:
    """Every part that holds something: two pinned grants and a bind rule for the listening socket."""
    granted = tmp_path / "granted"  # not where the tests keep their audit logs (plan/ownpaths.py)
    granted.mkdir(exist_ok=True)
    extra = grants_to_extra(["/etc"], [str(granted)], [], [f"127.0.0.1:{port}"], [])
    return load_policy("minimal", extra=extra)


def _no_child_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_a_step_that_fails_releases_every_step_before_it(tmp_path: Path) -> None:
    """The audit log comes after the forkserver, the grants and the listening socket: all are undone."""
    port = _free_port()
    before = open_fds()
    log = tmp_path / "missing" / "audit.log"
    with (
        pytest.raises(PrivsepError, match=f"cannot open the audit log {log}: No such file or directory"),
        assemble(
            _policy(tmp_path, port),
            audit_log=str(log),
            listen=[Listen("listen", "127.0.0.1", port)],
            forkserver=True,
        ),
    ):
        pytest.fail("assembled with an audit log in a missing directory")
    assert open_fds() == before
    assert _can_bind(port)
    assert _no_child_left()


def test_leaving_the_block_by_an_exception_releases_everything(tmp_path: Path) -> None:
    port = _free_port()
    before = open_fds()
    with (
        pytest.raises(RuntimeError, match="the caller failed"),
        assemble(
            _policy(tmp_path, port),
            audit_log=str(tmp_path / "audit.log"),
            listen=[Listen("listen", "127.0.0.1", port)],
            forkserver=True,
        ) as parts,
    ):
        assert parts.forkserver is not None and not _can_bind(port)
        raise RuntimeError("the caller failed")
    assert open_fds() == before
    assert _can_bind(port)
    assert _no_child_left()


def test_the_listening_sockets_go_to_the_first_sandbox_only(tmp_path: Path) -> None:
    """Once started, the sandbox holds the socket (the broker's copy is closed); the bind is audited."""
    port = _free_port()
    policy = _policy(tmp_path, port)
    log = tmp_path / "audit.log"
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        with assemble(policy, audit_log=str(log), listen=[Listen("listen", "127.0.0.1", port)]) as parts:
            child = parts.start(plan_for(policy, ["/bin/true"]), timeout=30, stdio=(devnull,) * 3)
            assert parts.broker.wait(child).returncode == 0
            assert _can_bind(port)  # the sandbox's copy ended with it, and the broker kept none
            with pytest.raises(ValueError, match="serve one sandbox"):
                parts.start(plan_for(policy, ["/bin/true"]), stdio=(devnull,) * 3)
    finally:
        os.close(devnull)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["op"], r["target"], r["decision"]) for r in records] == [
        ("bind", f"127.0.0.1:{port}/tcp", "allow")
    ]


def test_a_plan_and_an_assembly_must_agree_on_learning(tmp_path: Path) -> None:
    policy = load_policy("minimal")
    with assemble(policy) as parts, pytest.raises(ValueError, match="disagree on learn"):
        parts.start(plan_for(policy, ["/bin/true"], learn=True))
