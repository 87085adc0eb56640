"""privsep.Sandbox from a host application's side: run, call, and their asyncio twins."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

import privsep
from privsep import ChildError, Sandbox
from tests.conftest import PYTHON, open_fds


@pytest.fixture(params=["exec", "forkserver"])
def sb(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """Every test on both start methods: a fresh interpreter per child, or forks of a clean forkserver."""
    with Sandbox("python", start_method=request.param) as sandbox:
        yield sandbox


def test_run_captures_output_status_and_input(sb: Sandbox) -> None:
    result = sb.run(["/bin/sh", "-c", "cat; echo err >&2; exit 3"], input=b"x" * 300_000)
    assert (result.returncode, result.how) == (3, "exited")
    assert result.stdout == b"x" * 300_000  # larger than a pipe: fed and drained without a deadlock
    assert result.stderr == b"err\n"


def test_run_caps_captured_output_without_blocking_the_child(sb: Sandbox) -> None:
    small = Sandbox("python", output_limit=1000)
    with small:
        result = small.run(["/bin/sh", "-c", "head -c 5000000 /dev/zero; echo done >&2"])
    assert (result.returncode, len(result.stdout), result.stdout_truncated) == (0, 1000, True)
    assert result.stderr == b"done\n"


def test_run_reports_how_the_child_ended(sb: Sandbox) -> None:
    timeout = sb.run(["/bin/sleep", "30"], timeout=0.5)
    assert (timeout.how, timeout.returncode) == ("timeout", 124)
    killed = sb.run([str(PYTHON), "-c", "import ctypes; ctypes.CDLL(None).ptrace(0, 0, 0, 0)"])
    assert (killed.how, killed.syscall, killed.returncode) == ("seccomp", "ptrace", 128 + signal.SIGSYS)
    missing = sb.run(["/no/such/program"])
    assert (missing.how, missing.returncode) == ("exec_error", 127)


def test_run_returns_the_denials_it_met(tmp_path: Path) -> None:
    with Sandbox("python") as sandbox:
        result = sandbox.run(
            [
                str(PYTHON),
                "-c",
                "from privsep import client\ntry:\n client.open('/etc/shadow')\n"
                "except PermissionError: print('denied')",
            ]
        )
    assert result.stdout == b"denied\n"
    assert [(d.op, d.target, d.allow) for d in result.denials] == [("open", "/etc/shadow", "--allow-read")]
    denial = result.denials[0]
    assert type(denial) is privsep.Denial  # the public record, not the broker's
    assert (denial.rule, denial.subject) == (None, "/etc/shadow") and denial.message
    with pytest.raises(dataclasses.FrozenInstanceError):
        denial.op = "stat"  # type: ignore[misc]


def test_call_moves_json_values_both_ways(sb: Sandbox) -> None:
    assert sb.call("json:dumps", {"b": [1, 2.5, None, True]}, sort_keys=True) == '{"b": [1, 2.5, null, true]}'
    assert sb.call("os:getpid") == 2  # a fresh confined child: pid 2 of its own namespace
    assert sb.call("os.path:join", "a", "b") == "a/b"


def test_call_refuses_arguments_that_are_not_json_before_starting_anything(sb: Sandbox) -> None:
    before = open_fds()
    with pytest.raises(TypeError, match="JSON values only"):
        sb.call("json:dumps", object())
    with pytest.raises(ValueError, match=r"package\.module:function"):
        sb.call("not a target")
    assert open_fds() == before


def test_an_exception_in_the_child_is_a_child_error_with_its_traceback(sb: Sandbox) -> None:
    with pytest.raises(ChildError) as info:
        sb.call("json:loads", "not json")
    err = info.value
    assert err.type_name == "JSONDecodeError"
    assert "Expecting value" in err.message
    assert "Traceback" in err.traceback and "json/decoder.py" in err.traceback


def test_a_result_that_is_not_json_is_refused_in_the_child(sb: Sandbox) -> None:
    with pytest.raises(ChildError) as info:
        sb.call("os:getcwdb")  # bytes: not a JSON value
    assert info.value.type_name == "ValidationError"


def test_call_imports_from_python_path_and_stays_confined(shared_tmp: Path) -> None:
    plugins = shared_tmp / "plugins"
    plugins.mkdir()
    (plugins / "hostile.py").write_text(
        "import os, socket\n"
        "from privsep import client\n"
        "def run(name):\n"
        "    out = {'hello': f'hello {name}'}\n"
        "    for what, attempt in [('ssh', lambda: open('/root/.ssh/id_rsa')),\n"
        "                          ('shadow', lambda: client.open('/etc/shadow')),\n"
        "                          ('net', lambda: socket.create_connection(('127.0.0.1', 22)))]:\n"
        "        try:\n            attempt(); out[what] = 'GOT IT'\n"
        "        except OSError as e:\n            out[what] = type(e).__name__\n"
        "    return out\n"
    )
    with Sandbox("python", python_path=[str(plugins)]) as sandbox:
        result = sandbox.call("hostile:run", "world")
    assert result == {
        "hello": "hello world",
        "ssh": "FileNotFoundError",
        "shadow": "DeniedError",
        "net": "OSError",  # its own socket is in an empty network namespace: unreachable
    }


#: Each child signs in, then waits (up to a hang guard) until every one has: it can only end
#: well if all of them ran at the same time.
MEETING = """
import os, sys, time
me, room, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(os.path.join(room, me), "x").close()
deadline = time.monotonic() + 60
while len(os.listdir(room)) < expected:
    if time.monotonic() > deadline:
        sys.exit(f"{me} waited alone: {sorted(os.listdir(room))}")
    time.sleep(0.01)
"""


@pytest.mark.parametrize("start_method", ["exec", "forkserver"])
def test_async_twins_run_many_children_of_one_sandbox_at_once(
    tmp_path: Path, start_method: Literal["exec", "forkserver"]
) -> None:
    """Concurrency as behaviour, not as a wall-clock bound: three runs that each wait for the
    other two to start can only all succeed if they overlap (bench/isolation.py times it)."""
    room = tmp_path / "room"
    room.mkdir()

    async def main() -> list[privsep.RunResult]:
        with Sandbox("python", allow_write=[str(room)], start_method=start_method, timeout=120) as sb:
            argv = [str(PYTHON), "-c", MEETING]
            return list(
                await asyncio.gather(*(sb.arun([*argv, f"child{i}", str(room), "3"]) for i in range(3)))
            )

    results = asyncio.run(main())
    assert [(r.returncode, r.stderr) for r in results] == [(0, b"")] * 3
    assert sorted(os.listdir(room)) == ["child0", "child1", "child2"]


def test_async_calls_of_one_sandbox_at_once(sb: Sandbox) -> None:
    async def main() -> list[object]:
        return list(await asyncio.gather(*(sb.acall("os:getpid") for _ in range(6))))

    assert asyncio.run(main()) == [2] * 6  # each in a fresh sandbox: pid 2 behind its init


def test_closing_the_sandbox_kills_what_still_runs() -> None:
    sandbox = Sandbox("python")
    with sandbox:
        broker = sandbox._need_broker()
        pending = sandbox._start(["/bin/sleep", "60"], None, None, None)
        broker.run_once(max_wait=0.2)
    assert pending.child.outcome is not None and pending.child.outcome.how == "lost"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


PROBE_MODULE = """
import os
def facts():
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    fds = sorted(int(x) for x in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{x}"))
    return {
        "uid": os.getuid(), "nnp": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
        "caps": [status[c].strip() for c in ("CapPrm", "CapEff", "CapBnd", "CapAmb")],
        "fds": fds, "env": sorted(os.environ),
    }
"""


@pytest.mark.parametrize("method", ["exec", "forkserver"])
def test_call_children_are_confined_and_see_no_host_environment(
    shared_tmp: Path, method: Literal["exec", "forkserver"], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forkserver child never execs: it must still be fully confined, with the plan's environment."""
    (shared_tmp / "probe.py").write_text(PROBE_MODULE)
    monkeypatch.setenv("PRIVSEP_TEST_HOST_SECRET", "do-not-leak")
    with Sandbox("python", python_path=[str(shared_tmp)], start_method=method) as sandbox:
        facts = sandbox.call("probe:facts")
    assert facts["uid"] == 65534
    assert (facts["nnp"], facts["seccomp"]) == ("1", "2")
    assert facts["caps"] == ["0000000000000000"] * 4
    assert facts["fds"] == [0, 1, 2, 3]
    assert "PRIVSEP_TEST_HOST_SECRET" not in facts["env"]
    assert set(facts["env"]) <= {
        "PATH", "HOME", "PRIVSEP_FD", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONSAFEPATH",
        "TERM", "LANG", "LC_ALL", "LC_CTYPE", "TZ",
    }  # fmt: skip


def test_the_forkserver_dies_with_the_sandbox() -> None:
    sandbox = Sandbox("python", start_method="forkserver")
    with sandbox:
        forkserver = sandbox._need_parts().forkserver
        assert forkserver is not None
        pid = forkserver._proc.pid
        assert sandbox.call("os:getpid") == 2
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def test_exec_children_are_cloned_by_the_zygote_never_forked_from_the_broker() -> None:
    """The broker forks nothing: each sandbox's init is a child of the zygote, the broker's only child."""
    with Sandbox("minimal") as sandbox:
        zygote = sandbox._need_parts().zygote
        assert zygote is not None
        pending = sandbox._start(["/bin/sleep", "60"], None, None, None)
        broker = sandbox._need_broker()
        while pending.child.procs.command_pidfd is None:
            broker.run_once(max_wait=0.2)
        init = _status(pending.child.monitor_pid)
        assert (init["Name"], int(init["PPid"])) == ("privsep-init", zygote._proc.pid)
        assert int(_status(zygote._proc.pid)["PPid"]) == os.getpid()
        assert int(init["NSpid"].split()[-1]) == 1  # pid 1 of its own namespace
    assert pending.child.outcome is not None


def test_a_sandbox_whose_zygote_died_starts_nothing_and_says_why() -> None:
    with Sandbox("minimal") as sandbox:
        zygote = sandbox._need_parts().zygote
        assert zygote is not None
        assert sandbox.run(["/bin/true"]).returncode == 0
        zygote._proc.kill()
        zygote._proc.wait()
        with pytest.raises(privsep.ConfinementError, match="zygote"):
            sandbox.run(["/bin/true"])


@pytest.mark.parametrize("method", ["exec", "forkserver"])
def test_an_audit_log_that_cannot_be_opened_is_a_privsep_error_and_leaks_nothing(
    tmp_path: Path, method: Literal["exec", "forkserver"]
) -> None:
    """What was opened before the log (pinned grants, a forkserver) is released, and the error says why."""
    path = tmp_path / "missing" / "audit.log"
    before = open_fds()
    sandbox = Sandbox(
        "python",
        allow_read=["/etc"],
        allow_write=[str(tmp_path)],  # with the read grant, two pinned directory fds
        audit_log=str(path),
        start_method=method,
    )
    with pytest.raises(privsep.PrivsepError) as caught:
        sandbox.__enter__()
    assert not isinstance(caught.value, OSError)
    assert str(path) in str(caught.value) and "No such file or directory" in str(caught.value)
    assert open_fds() == before
    with pytest.raises(ChildProcessError):  # no forkserver left behind
        os.waitpid(-1, os.WNOHANG)
    with pytest.raises(privsep.PrivsepError, match="not open"):
        sandbox.run(["/bin/true"])
