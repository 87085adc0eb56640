"""Each sandbox of a root broker runs as a host uid and gid of its own (issue 14).

Checked from the host, where the ids are real: ``/proc/<pid>/status`` of the
sandboxed processes, the owner of what they create in a write grant, what a
host process running as ``nobody`` may do to them, the per-uid process
count, and the lock files of the claims (``/run/privsep/ids``), while the
sandboxes live, after they end, and after their broker is killed. Inside,
the child still sees 65534 (tests/integration/test_run.py checks that).
A thousand sandboxes in a row leave no claim behind:
tests/adversarial/test_hostile_broker.py::test_a_thousand_sandboxes_in_a_row_leave_nothing_behind.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from privsep.broker.loop import Broker, Child
from privsep.broker.outcome import Outcome
from privsep.plan import hostids
from privsep.plan.hostids import IdRange, census
from privsep.plan.spawnplan import make_plan
from privsep.policy.grants import grants_to_extra
from privsep.policy.load import load_policy
from tests.conftest import PRIVSEP, PYTHON, REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a host id per sandbox is the root broker's")

#: A range of one id, used by no other test: its lock file is this module's to watch.
LONE = IdRange(2_100_000_000, 1, "PRIVSEP_IDS")
LONE_ENV = {"PATH": "/usr/bin:/bin", hostids.ENV_VAR: f"{LONE.first}:{LONE.count}"}


def ids_of(pid: int) -> tuple[list[int], list[int], str]:
    """(Uid, Gid, Groups) of a host process, as the host sees them."""
    fields = dict(line.partition(":")[::2] for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    uids, gids = ([int(v) for v in fields[name].split()] for name in ("Uid", "Gid"))
    return uids, gids, fields["Groups"].strip()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def lock_file(value: int) -> Path:
    return Path(hostids.LOCK_DIR) / str(value)


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    yield b
    b.close()


@pytest.fixture
def devnull() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def serve_until(broker: Broker, done: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        broker.run_once(max_wait=0.05)


def end(broker: Broker, children: list[Child]) -> None:
    for child in children:
        broker.kill(child, Outcome("lost", 125, detail="the test is over"))
    for child in children:
        broker.wait(child)


def test_two_concurrent_sandboxes_run_under_host_ids_of_their_own(
    broker: Broker, devnull: int, shared_tmp: Path
) -> None:
    """Neither 0 nor 65534, not each other's; files they create land owned by the grant's owner."""
    root_owned, other_owned = shared_tmp / "root-owned", shared_tmp / "other-owned"
    for grant in (root_owned, other_owned):
        grant.mkdir(mode=0o755)
    os.chown(other_owned, 4321, 4321)
    policy = load_policy(
        "minimal", extra=grants_to_extra([], [str(root_owned), str(other_owned)], [], [], [])
    )
    script = 'touch "$1/made-by-$3" "$2/made-by-$3" && exec sleep 60'
    children = [
        broker.start(
            make_plan(policy, ["/bin/sh", "-c", script, "sh", str(root_owned), str(other_owned), str(n)]),
            timeout=60,
            stdio=(devnull,) * 3,
        )
        for n in (1, 2)
    ]
    try:
        serve_until(
            broker,
            lambda: all((other_owned / f"made-by-{n}").exists() for n in (1, 2)),
            "both sandboxes to create their files",
        )
        seen = []
        for child in children:
            assert child.command_pid is not None
            uids, gids, groups = ids_of(child.command_pid)
            host = uids[0]
            assert uids == [host] * 4 and gids == [host] * 4, (uids, gids)
            assert groups == "", "no supplementary group on the host"
            assert host not in (0, 65534)
            assert host in hostids.current_range()
            assert child.spawned.host_ids is not None and child.spawned.host_ids.id == host
            assert lock_file(host).exists(), "claimed while the sandbox lives"
            seen.append(host)
        assert seen[0] != seen[1], "two live sandboxes never share a host id"
        # The documented rule: what a sandbox creates in a write grant belongs to the grant's owner.
        for n in (1, 2):
            made = (root_owned / f"made-by-{n}").stat(), (other_owned / f"made-by-{n}").stat()
            assert [(st.st_uid, st.st_gid) for st in made] == [(0, 0), (4321, 4321)]
    finally:
        end(broker, children)
    assert not [host for host in seen if lock_file(host).exists()], "released when the sandbox ended"


NOBODY = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_SEIZE = 0x4206
pid = int(sys.argv[1])
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
def ptrace():
    if libc.ptrace(PTRACE_SEIZE, pid, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")
attempt("kill", lambda: os.kill(pid, 0))
attempt("mem", lambda: open(f"/proc/{pid}/mem", "rb").close())
attempt("environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
attempt("ptrace", ptrace)
print(json.dumps(out))
"""


def test_a_host_process_running_as_nobody_cannot_signal_or_trace_a_sandboxed_command(
    broker: Broker, devnull: int
) -> None:
    """The command is dumpable after execve; with 65534 as its host uid, nobody could trace it."""
    child = broker.start(
        make_plan(load_policy("minimal"), ["/bin/sleep", "60"]), timeout=60, stdio=(devnull,) * 3
    )
    try:
        serve_until(broker, lambda: child.procs.listener is not None, "the command to start")
        assert child.command_pid is not None
        serve_until(
            broker, lambda: Path(f"/proc/{child.command_pid}/exe").resolve().name == "sleep", "execve"
        )
        proc = subprocess.run(
            [str(PYTHON), "-c", NOBODY, str(child.command_pid)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {
            "kill": "EPERM",
            "mem": "EACCES",
            "environ": "EACCES",
            "ptrace": "EPERM",
        }
    finally:
        end(broker, [child])


FORKS = r"""
import os, sys, time
role, out = sys.argv[1], sys.argv[2]
kids = 0
while role == "hog":
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except BlockingIOError:
        break
    kids += 1
if role == "sibling":
    try:
        pid = os.fork()
    except OSError as exc:
        kids = -exc.errno
    else:
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        kids = 1
with open(f"{out}/{role}.tmp", "w") as f:
    f.write(str(kids))
os.rename(f"{out}/{role}.tmp", f"{out}/{role}")
time.sleep(60)
"""


def test_one_sandbox_at_its_process_limit_leaves_a_siblings_forks_untouched(
    broker: Broker, devnull: int, shared_tmp: Path
) -> None:
    """RLIMIT_NPROC counts a uid's processes: with one shared uid, one sandbox's fork bomb
    stopped every sibling's first fork (EAGAIN)."""
    out = shared_tmp / "out"
    out.mkdir(mode=0o755)
    extra = grants_to_extra([], [str(out)], [], [], [])
    extra["limits"] = {"processes": 12}
    policy = load_policy("python", extra=extra)
    hog = broker.start(
        make_plan(policy, [str(PYTHON), "-c", FORKS, "hog", str(out)]), timeout=60, stdio=(devnull,) * 3
    )
    children = [hog]
    try:
        serve_until(broker, (out / "hog").exists, "the first sandbox to reach its process limit")
        assert 0 < int((out / "hog").read_text()) < 12
        sibling = broker.start(
            make_plan(policy, [str(PYTHON), "-c", FORKS, "sibling", str(out)]),
            timeout=60,
            stdio=(devnull,) * 3,
        )
        children.append(sibling)
        serve_until(broker, (out / "sibling").exists, "the sibling to fork")
        assert int((out / "sibling").read_text()) == 1, "the sibling's fork failed"
    finally:
        end(broker, children)


KILLED_BROKER = r"""
import os
from privsep.broker.loop import Broker
from privsep.plan.spawnplan import make_plan
from privsep.policy.load import load_policy

broker = Broker()
devnull = os.open("/dev/null", os.O_RDWR)
child = broker.start(make_plan(load_policy("minimal"), ["/bin/sleep", "600"]), stdio=(devnull,) * 3)
while child.procs.listener is None:
    broker.run_once(0.1)
print(child.spawned.host_ids.id, child.command_pid, flush=True)
while True:
    broker.run_once(1)
"""


def test_a_killed_brokers_claim_is_free_and_its_lock_file_reused() -> None:
    """The kernel drops the lock with the broker; the file left behind is taken over, then removed."""
    proc = subprocess.Popen(
        [str(PYTHON), "-c", KILLED_BROKER], cwd=REPO, env=LONE_ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the broker did not start its sandbox"
        host, command = map(int, proc.stdout.readline().split())
        assert host == LONE.first
        assert census(LONE) == (1, 0)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while alive(command):
            assert time.monotonic() < deadline, "the sandbox outlived its broker"
            time.sleep(0.01)
        assert census(LONE) == (0, 1), "left behind, and free"
        run = subprocess.run(
            [str(PRIVSEP), "run", "--", "/bin/true"],
            cwd=REPO,
            env=LONE_ENV,
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr  # the range's only id: taken over
        assert not lock_file(LONE.first).exists(), "removed when that sandbox ended"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_range_holding_nobody_is_refused_before_anything_runs() -> None:
    """A range is checked before the first claim (an account's id: tests/unit/test_hostids.py)."""
    env = {"PATH": "/usr/bin:/bin", hostids.ENV_VAR: "65534:3"}
    run = subprocess.run(
        [str(PRIVSEP), "run", "--", "/bin/true"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 125
    assert "confinement step 'host ids' failed" in run.stderr
    assert "PRIVSEP_IDS=FIRST:COUNT" in run.stderr
