"""A cgroup per sandbox, for real (cgroup v1 on this project's CI machine; v2: tests/unit/test_cgroups.py).

Checked from the outside: where the sandbox's processes are, what the
broker reports when a limit is reached, what is left once it has ended. The
non-root broker runs in a cgroup handed to it as systemd's Delegate= would
(tests/cgroup_delegation.py); without one, it refuses unless told otherwise.
What memory a sandbox may not hold (memfds, shm, /tmp, a tree of processes)
is in tests/adversarial/test_escapes.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from privsep import cgroups
from privsep._record import replace
from privsep.broker.loop import Broker
from privsep.plan.spawnplan import SpawnPlan, in_cgroup, make_plan
from privsep.policy.load import load_policy
from privsep.sandbox import Sandbox
from tests.conftest import PYTHON, REPO, RunPrivsep, as_nonroot, json_output, privsep_argv, python_child

#: Forks until the process limit refuses one, says how far it got, then holds its children
#: until its stdin closes.
_FILL_UP = (
    "import json, os, sys, time\n"
    "kids, err = 0, None\n"
    "while kids < 500:\n"
    "    try:\n        pid = os.fork()\n"
    "    except OSError as e:\n        err = e.errno; break\n"
    "    if pid == 0:\n        time.sleep(60); os._exit(0)\n"
    "    kids += 1\n"
    "print(json.dumps({'kids': kids, 'err': err}), flush=True)\n"
    "sys.stdin.read()\n"
)
_FORK_FOUR = (
    "import json, os\nkids, err = 0, None\n"
    "for _ in range(4):\n"
    "    try:\n        pid = os.fork()\n"
    "    except OSError as e:\n        err = e.errno; break\n"
    "    if pid == 0:\n        os._exit(0)\n"
    "    os.waitpid(pid, 0); kids += 1\n"
    "print(json.dumps({'kids': kids, 'err': err}))\n"
)


def _policy(directory: Path, name: str, limits: str) -> str:
    path = directory / name
    path.write_text(f'extends = "python"\n[limits]\n{limits}\n')
    path.chmod(0o644)
    return str(path)


def _cgroup_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return cgroups.parse_self_cgroup(f.read())


def _pids_with(marker: str) -> list[int]:
    """The processes whose command line starts with ``marker`` (arguments separated by NUL)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(marker.encode()):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _ours(pid: int) -> list[str]:
    """The privsep cgroups of the broker with this pid, beneath this test process's own cgroups."""
    host = cgroups.host()
    return sorted(
        f"{parent}/{name}"
        for parent in host.parents
        for name in os.listdir(parent)
        if name.startswith(f"privsep-{pid}-")
    )


@pytest.fixture
def root_only() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the in-process broker tests need root")
    yield


def test_every_process_of_the_sandbox_is_in_its_cgroup(broker_user: str) -> None:
    """init, the command and what it forks: all in the sandbox's memory and pids cgroups,
    named after the broker, beneath the broker's own; the broker itself is not in them."""
    marker = f"2{secrets.randbelow(10**9):09d}"
    broker = subprocess.Popen(
        privsep_argv(broker_user, ["--", "/bin/sh", "-c", f"sleep {marker} & sleep {marker}; wait"]),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while len(_pids_with(f"sleep\0{marker}")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        sleepers = _pids_with(f"sleep\0{marker}")
        assert len(sleepers) == 2
        own = _cgroup_of(broker.pid)
        for pid in sleepers:
            inside = _cgroup_of(pid)
            for controller in ("memory", "pids"):
                path = inside[controller]
                assert os.path.basename(path).startswith(f"privsep-{broker.pid}-"), (controller, path)
                assert os.path.dirname(path) == (own[controller].rstrip("/") or "/"), (controller, path, own)
        assert not any(os.path.basename(p).startswith("privsep-") for p in own.values())
    finally:
        broker.kill()
        broker.wait()


def test_one_sandbox_at_its_process_limit_leaves_a_siblings_forks_untouched(
    broker_user: str, shared_tmp: Path
) -> None:
    """Two sandboxes under the same policy (processes = 8), at once: the first forks until its
    limit refuses; the second forks as usual. With RLIMIT_NPROC (per uid, and every sandbox of a
    root broker is uid 65534) the second could not fork at all."""
    policy = _policy(shared_tmp, "eight.toml", "processes = 8")
    full = subprocess.Popen(
        privsep_argv(broker_user, ["--policy", policy, "--", str(PYTHON), "-c", _FILL_UP]),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert full.stdin is not None and full.stdout is not None
    try:
        filled = json.loads(full.stdout.readline())
        assert filled["err"] == 11 and 0 < filled["kids"] <= 8, filled  # EAGAIN at its own limit
        sibling = subprocess.run(
            privsep_argv(broker_user, ["--policy", policy, "--", str(PYTHON), "-c", _FORK_FOUR]),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert json_output(sibling) == {"kids": 4, "err": None}
    finally:
        full.stdin.close()
        stderr = full.stderr.read() if full.stderr is not None else ""
        full.wait(timeout=60)
    # The refused forks are in the exit report, with the fix, like a denial.
    assert full.returncode == 0, stderr
    assert (
        "privsep: denied fork once: the sandbox reached its process limit ([limits] processes = 8" in stderr
    )
    assert "privsep: to allow it, re-run with --processes=16" in stderr


def test_a_sandbox_that_cannot_join_its_cgroup_does_not_start(
    root_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: init's join fails (here: a cgroup that is not there), nothing is forked."""
    import privsep.broker.lifecycle

    def gone(plan: SpawnPlan, cgroup: cgroups.SandboxCgroup | None) -> SpawnPlan:
        return replace(in_cgroup(plan, cgroup), cgroup_join=("/sys/fs/cgroup/pids/privsep-gone/tasks",))

    monkeypatch.setattr(privsep.broker.lifecycle, "in_cgroup", gone)
    broker = Broker()
    try:
        child = broker.start(make_plan(load_policy("minimal"), ["/bin/true"]), timeout=30, stdio=(0, 1, 2))
        outcome = broker.wait(child)
    finally:
        broker.close()
    assert (outcome.how, outcome.returncode) == ("setup_error", 125)
    assert outcome.detail == (
        "could not confine the child: step 'cgroups': joining the sandbox's cgroup "
        "(/sys/fs/cgroup/pids/privsep-gone/tasks): No such file or directory"
    )
    assert child.command_pid is None  # no command was ever forked


def test_the_memory_kill_is_reported_in_run_result(root_only: None) -> None:
    code = (
        "import os\n"
        "for i in range(16):\n"
        "    fd = os.memfd_create('hold'); os.posix_fallocate(fd, 0, 16 << 20)\n"
        "    print('held', 16 * (i + 1), flush=True)\n"
    )
    policy = load_policy("python", extra={"limits": {"memory_mb": 64}})
    with Sandbox(policy) as sb:
        result = sb.run([str(PYTHON), "-c", code])
    assert (result.how, result.returncode) == ("memory", 137), result
    assert result.detail == "the sandbox reached its memory limit (64 MB) and was killed"
    held = [int(line.split()[1]) for line in result.stdout.decode().splitlines()]
    assert max(held, default=0) < 64


def test_the_cpu_quota_throttles_the_sandbox(root_only: None) -> None:
    """cpu_percent = 10: a busy loop is throttled by the cgroup's quota (cpu.stat says so)."""
    policy = load_policy("python", extra={"limits": {"cpu_percent": 10}})
    spin = "import time\nend = time.monotonic() + 0.6\nwhile time.monotonic() < end: pass\n"
    broker = Broker()
    try:
        child = broker.start(make_plan(policy, [str(PYTHON), "-c", spin + "time.sleep(30)\n"]), timeout=60)
        cg = child.cgroup
        assert isinstance(cg, cgroups.V1Cgroup) and "cpu" in cg.by_controller
        cpu = cg.by_controller["cpu"]
        assert Path(f"{cpu}/cpu.cfs_quota_us").read_text().strip() == "10000"
        assert Path(f"{cpu}/cpu.cfs_period_us").read_text().strip() == "100000"
        deadline = time.monotonic() + 30
        throttled = 0
        while time.monotonic() < deadline and not throttled:
            broker.run_once(max_wait=0.1)
            throttled = cgroups._common.counters(f"{cpu}/cpu.stat").get("nr_throttled", 0)
        assert throttled > 0
        assert child.outcome is None
    finally:
        broker.close()


def test_a_killed_brokers_cgroups_are_removed_by_the_next_broker(
    root_only: None, run_as_root: RunPrivsep
) -> None:
    marker = f"3{secrets.randbelow(10**9):09d}"
    broker = subprocess.Popen(
        [sys.executable, "-m", "privsep", "run", "--", "/bin/sleep", marker],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _pids_with(f"/bin/sleep\0{marker}") and time.monotonic() < deadline:
            time.sleep(0.02)
        left = _ours(broker.pid)
        assert left, "the sandbox's cgroups were not made"
    finally:
        broker.kill()
        broker.wait()
    deadline = time.monotonic() + 10
    while _pids_with(f"/bin/sleep\0{marker}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(os.path.isdir(p) for p in left)  # nobody removed them: the broker was killed
    assert run_as_root("--", "/bin/true").returncode == 0  # the next broker, at its start
    assert [p for p in left if os.path.exists(p)] == []


def test_without_a_delegated_cgroup_a_nonroot_broker_refuses_unless_told(
    nonroot_ready: None, shared_tmp: Path
) -> None:
    """A host that hands the user no cgroup: refused (125), saying what to do; --no-cgroups or
    cgroups = "optional" run it with the missing layer said at the start, and RLIMIT_NPROC back."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = as_nonroot([str(REPO / ".venv/bin/privsep"), "run", *args], delegation=False)
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)

    refused = run("--", "/bin/true")
    assert refused.returncode == 125, refused.stderr
    assert (
        "privsep: error: confinement step 'cgroups' failed: uid 4242 cannot make cgroups in" in refused.stderr
    )
    assert "Delegate=" in refused.stderr and "--no-cgroups" in refused.stderr
    nproc = "import resource; print(resource.getrlimit(resource.RLIMIT_NPROC)[0])"
    optional = _policy(shared_tmp, "optional.toml", 'processes = 40\ncgroups = "optional"')
    for args in (
        ["--no-cgroups", *python_child(nproc)],
        ["--policy", optional, "--", str(PYTHON), "-c", nproc],
    ):
        proc = run(*args)
        assert proc.returncode == 0, proc.stderr
        assert "privsep: warning: this sandbox runs without a cgroup (" in proc.stderr
        assert "no limit on its memory as a whole" in proc.stderr
        assert proc.stdout.strip() == ("128" if "--no-cgroups" in args else "40")


def test_the_opt_out_is_said_even_where_cgroups_work(run_privsep: RunPrivsep) -> None:
    proc = run_privsep("--no-cgroups", "--", "/bin/true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(
        'privsep: warning: this sandbox runs without a cgroup (--no-cgroups, or [limits] cgroups = "off")'
    )


def test_the_command_line_limits_reach_the_cgroup(root_only: None) -> None:
    from privsep import _argparser, cli

    args = _argparser.parse(
        ["run", "--memory-mb", "96", "--processes", "5", "--cpu-percent", "150", "--", "x"]
    )
    policy = load_policy("minimal", extra={"limits": cli._limits_extra(args)})
    assert (policy.limits.memory_mb, policy.limits.processes, policy.limits.cpu_percent) == (96, 5, 150)
    broker = Broker()
    try:
        child = broker.start(make_plan(policy, ["/bin/true"]), timeout=30, stdio=(0, 1, 2))
        cg = child.cgroup
        assert isinstance(cg, cgroups.V1Cgroup)
        values = {
            name: Path(f"{cg.by_controller[c]}/{name}").read_text().strip()
            for c, name in (
                ("memory", "memory.limit_in_bytes"),
                ("memory", "memory.memsw.limit_in_bytes"),
                ("pids", "pids.max"),
                ("cpu", "cpu.cfs_quota_us"),
            )
        }
        assert values == {
            "memory.limit_in_bytes": str(96 << 20),
            "memory.memsw.limit_in_bytes": str(96 << 20),
            "pids.max": "6",  # 5 for the command, + init
            "cpu.cfs_quota_us": "150000",
        }
        assert broker.wait(child).returncode == 0
        assert not any(os.path.exists(d) for d in cg.dirs)  # removed as the sandbox ended
    finally:
        broker.close()
