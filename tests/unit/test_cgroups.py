"""The cgroup layer's logic without a kernel: the v2 path against a fake cgroup2 tree.

This project's CI machine is hybrid (memory, pids and cpu in v1; the unified
hierarchy holds no controller), so v1 is tested for real
(tests/integration/test_cgroups.py) and v2, the default elsewhere, here: a
temporary directory laid out like a cgroup2 mount, whose ``mkdir`` and
``rmdir`` do what cgroupfs does (fill a new cgroup with its interface files;
refuse to remove one that holds a process or a child). Everything else is
the real code reading and writing those files.
"""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import pytest

from privsep import cgroups
from privsep.cgroups import Budget, Fs, V1Host, V2Cgroup, V2Host
from privsep.cgroups._common import owned_by_the_dead, start_time
from privsep.errors import ConfinementError
from privsep.plan.spawnplan import in_cgroup, make_plan
from privsep.policy.load import load_policy
from privsep.policy.model import Limits

_FILES = {
    "cgroup.procs": "",
    "cgroup.subtree_control": "",
    "cgroup.kill": "",
    "cgroup.type": "domain\n",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.oom.group": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "pids.max": "max\n",
    "pids.events": "max 0\n",
    "cpu.max": "max 100000\n",
}


class FakeCgroup2:
    """A cgroup2 mount in a temporary directory; ``fs`` is what privsep's v2 code is given."""

    def __init__(self, root: Path, controllers: str = "cpuset cpu io memory pids") -> None:
        self.root = root
        (root / "cgroup.controllers").write_text(controllers + "\n")
        for name in ("cgroup.procs", "cgroup.subtree_control"):
            (root / name).write_text("")
        self.fs = Fs(mkdir=self.mkdir, rmdir=self.rmdir)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        parent = Path(path).parent
        handed = (parent / "cgroup.subtree_control").read_text().replace("+", "").split()
        (Path(path) / "cgroup.controllers").write_text(" ".join(handed) + "\n")
        for name, content in _FILES.items():
            controller = name.split(".")[0]
            if controller == "cgroup" or controller in handed:
                (Path(path) / name).write_text(content)

    def rmdir(self, path: str) -> None:
        here = Path(path)
        if (here / "cgroup.procs").read_text().split() or any(p.is_dir() for p in here.iterdir()):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        for entry in here.iterdir():
            entry.unlink()
        here.rmdir()

    def cgroup(self, rel: str, *, procs: str = "", subtree: str = "") -> Path:
        """A cgroup made as the host would have (its parents' subtree_control hands controllers down)."""
        path = self.root
        for part in rel.strip("/").split("/"):
            parent, path = path, path / part
            if not path.exists():
                (parent / "cgroup.subtree_control").write_text("memory pids cpu")
                self.mkdir(str(path))
        (path / "cgroup.procs").write_text(procs)
        (path / "cgroup.subtree_control").write_text(subtree)
        return path

    def mountinfo(self, root: str = "/") -> str:
        return (
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
            f"41 31 0:38 {root} {self.root} rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
        )


@pytest.fixture
def fake(tmp_path: Path) -> FakeCgroup2:
    return FakeCgroup2(tmp_path)


def _delegated(fake: FakeCgroup2) -> V2Host:
    """The broker in a delegated service cgroup whose controllers are already enabled for children."""
    fake.cgroup("/system.slice/app.service", subtree="cpu memory pids")
    found = cgroups.detect("0::/system.slice/app.service\n", fake.mountinfo(), fs=fake.fs)
    assert isinstance(found, V2Host)
    return found


# --- finding the host ----------------------------------------------------------------------------


def test_v2_is_found_beneath_the_process_own_cgroup(fake: FakeCgroup2) -> None:
    found = _delegated(fake)
    assert found.own == str(fake.root / "system.slice/app.service")
    assert found.parents == (found.own,)
    assert found.controllers == ("memory", "pids", "cpu")
    assert found.describe().startswith(f"v2 beneath {found.own}; limits memory")


def test_a_bound_subtree_of_the_hierarchy_is_followed(fake: FakeCgroup2) -> None:
    """In a container the mount shows a part of the hierarchy (mountinfo's root field)."""
    fake.cgroup("/app.service", subtree="memory pids")
    found = cgroups.detect("0::/machine/ctr/app.service\n", fake.mountinfo("/machine/ctr"), fs=fake.fs)
    assert isinstance(found, V2Host)
    assert found.own == str(fake.root / "app.service")


def test_a_v2_cgroup_without_memory_and_pids_falls_back_to_v1(tmp_path: Path) -> None:
    """This CI machine: the unified hierarchy holds hugetlb only; memory and pids are v1."""
    (tmp_path / "unified").mkdir()
    fake = FakeCgroup2(tmp_path / "unified", controllers="hugetlb")
    for name in ("memory", "pids", "cpu"):
        (tmp_path / name / "machine").mkdir(parents=True)
    (tmp_path / "memory" / "machine" / "memory.memsw.limit_in_bytes").write_text("max")
    mountinfo = fake.mountinfo() + "".join(
        f"{32 + i} 31 0:{29 + i} / {tmp_path / name} rw,relatime - cgroup cgroup rw,{opts}\n"
        for i, (name, opts) in enumerate((("cpu", "cpu,cpuacct"), ("memory", "memory"), ("pids", "pids")))
    )
    own = "9:pids:/machine\n4:memory:/machine\n2:cpu,cpuacct:/machine\n0::/\n"
    found = cgroups.detect(own, mountinfo, fs=fake.fs)
    assert isinstance(found, V1Host)
    assert found.dirs == {c: str(tmp_path / c / "machine") for c in ("cpu", "memory", "pids")}
    assert found.swap_accounted


def test_a_host_with_neither_is_refused_saying_what_is_missing(fake: FakeCgroup2) -> None:
    with pytest.raises(ConfinementError) as err:
        cgroups.detect("0::/\n", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", fs=fake.fs)
    assert err.value.step == "cgroups"
    assert "no cgroup2 file system is mounted" in err.value.reason
    assert "memory, pids controller" in err.value.reason


def test_a_cgroup_that_was_not_delegated_is_refused(fake: FakeCgroup2) -> None:
    fake.cgroup("/user.slice")
    (fake.root / "user.slice" / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(ConfinementError, match=r"does not have the memory and pids controller.*Delegate=yes"):
        cgroups.detect("0::/user.slice\n", fake.mountinfo(), fs=fake.fs)


def test_the_broker_moves_into_a_leaf_before_enabling_controllers(fake: FakeCgroup2) -> None:
    """v2 hands controllers to children only from a cgroup without processes: the broker, alone in
    its delegated scope, moves into a leaf of its own, then enables them."""
    scope = fake.cgroup("/user.slice/run-1.scope", procs=f"{os.getpid()}\n")
    host = V2Host.open(str(scope), fs=fake.fs)
    leaves = [p for p in scope.iterdir() if p.is_dir()]
    assert [p.name for p in leaves] == [f"privsep-{os.getpid()}-{start_time(os.getpid())}-broker"]
    assert (leaves[0] / "cgroup.procs").read_text() == str(os.getpid())
    assert (scope / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert host.controllers == ("memory", "pids", "cpu")


def test_a_cgroup_shared_with_other_processes_is_refused(fake: FakeCgroup2) -> None:
    """Moving someone else's processes is not the broker's business: it says how to get a cgroup."""
    scope = fake.cgroup("/user.slice/session-2.scope", procs=f"1\n{os.getpid()}\n")
    with pytest.raises(ConfinementError, match=r"holds 1 other process.*systemd-run --user --scope"):
        V2Host.open(str(scope), fs=fake.fs)
    assert (scope / "cgroup.subtree_control").read_text() == ""  # nothing was changed


def test_the_root_cgroup_enables_controllers_without_moving(fake: FakeCgroup2) -> None:
    (fake.root / "cgroup.procs").write_text(f"1\n{os.getpid()}\n")
    found = cgroups.detect("0::/\n", fake.mountinfo(), fs=fake.fs)
    assert isinstance(found, V2Host)
    assert found.own == str(fake.root)
    assert (fake.root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert not [p for p in fake.root.iterdir() if p.is_dir()]


# --- one sandbox's cgroup ------------------------------------------------------------------------


def test_a_sandbox_cgroup_gets_the_policy_limits(fake: FakeCgroup2) -> None:
    host = _delegated(fake)
    cg = host.create(Budget(memory_mb=64, processes=20, cpu_percent=50))
    path = Path(host.own) / cg.name
    assert cg.join == (str(path / "cgroup.procs"),)  # v2: the whole process (tasks is v1 only)
    assert (path / "memory.max").read_text() == str(64 << 20)
    assert (path / "memory.swap.max").read_text() == "0"  # no swap
    assert (path / "memory.oom.group").read_text() == "1"  # an OOM kill takes the whole sandbox
    assert (path / "pids.max").read_text() == "21"  # 20 for the command, + init
    assert (path / "cpu.max").read_text() == "50000 100000"
    assert cg.oom_fd is None  # the kernel kills the group itself: nothing for the broker to watch
    assert cg.remove()
    assert not path.exists()


def test_no_cpu_quota_unless_the_policy_sets_one(fake: FakeCgroup2) -> None:
    cg = _delegated(fake).create(Budget(memory_mb=64, processes=20))
    assert (Path(cg.dirs[0]) / "cpu.max").read_text() == "max 100000\n"


def test_a_cpu_quota_without_the_cpu_controller_is_refused(fake: FakeCgroup2) -> None:
    fake.cgroup("/svc", subtree="memory pids")
    (fake.root / "svc" / "cgroup.controllers").write_text("memory pids\n")
    host = V2Host.open(str(fake.root / "svc"), fs=fake.fs)
    with pytest.raises(ConfinementError, match="cpu_percent = 50 needs the cpu controller"):
        host.create(Budget(64, 20, cpu_percent=50))
    assert not [p for p in (fake.root / "svc").iterdir() if p.is_dir()]


def test_a_failure_while_writing_limits_leaves_no_cgroup(fake: FakeCgroup2) -> None:
    host = _delegated(fake)

    def mkdir_without_pids(path: str) -> None:
        fake.mkdir(path)
        os.unlink(f"{path}/pids.max")

    host.fs = Fs(mkdir=mkdir_without_pids, rmdir=fake.rmdir)
    with pytest.raises(ConfinementError, match=r"making the sandbox's cgroup: .*pids\.max"):
        host.create(Budget(64, 20))
    assert not [p for p in Path(host.own).iterdir() if p.is_dir()]


def test_the_oom_kill_is_read_from_memory_events(fake: FakeCgroup2) -> None:
    cg = _delegated(fake).create(Budget(64, 20))
    events = Path(cg.dirs[0]) / "memory.events"
    assert not cg.memory_limit_hit()
    # A host-wide OOM kill counts in oom_kill too, but only the cgroup's own limit counts in oom.
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 1\noom_group_kill 0\n")
    assert not cg.memory_limit_hit()
    events.write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 3\noom_group_kill 1\n")
    assert cg.memory_limit_hit()


def test_refused_forks_are_read_from_pids_events(fake: FakeCgroup2) -> None:
    cg = _delegated(fake).create(Budget(64, 20))
    assert cg.pids_refused() == 0
    (Path(cg.dirs[0]) / "pids.events").write_text("max 7\n")
    assert cg.pids_refused() == 7


def test_a_cgroup_still_holding_a_process_is_killed_through_cgroup_kill_and_kept(fake: FakeCgroup2) -> None:
    cg = _delegated(fake).create(Budget(64, 20))
    assert isinstance(cg, V2Cgroup)
    path = Path(cg.path)
    (path / "cgroup.procs").write_text("999999999\n")
    assert not cg.remove()
    assert (path / "cgroup.kill").read_text() == "1"
    assert path.exists()
    (path / "cgroup.procs").write_text("")  # the kernel has reaped it
    assert cg.remove()
    assert not path.exists()


# --- stale cgroups -------------------------------------------------------------------------------


def test_stale_cgroups_of_dead_brokers_are_removed_and_nothing_else(fake: FakeCgroup2) -> None:
    host = _delegated(fake)
    own = Path(host.own)
    ours = host.create(Budget(64, 20)).name
    dead = f"privsep-999999999-{start_time(os.getpid())}-4"  # no such pid
    reused = f"privsep-{os.getpid()}-1-0"  # this pid, but another process's start time: a dead broker's
    for name in (dead, reused, "privsep-999999999-1-broker", "app-worker", "privsep-oddly-named"):
        fake.mkdir(str(own / name))
    # A dead broker's cgroup that still lists a process: not removed, and the process (this
    # test, which is not in that cgroup) is never signalled.
    busy = "privsep-999999998-1-0"
    fake.mkdir(str(own / busy))
    (own / busy / "cgroup.procs").write_text(f"{os.getpid()}\n")
    assert host.reap_stale() == 3
    left = sorted(p.name for p in own.iterdir() if p.is_dir())
    assert left == sorted([ours, "app-worker", "privsep-oddly-named", busy])


def test_names_say_whose_they_are() -> None:
    me = f"privsep-{os.getpid()}-{start_time(os.getpid())}"
    assert not owned_by_the_dead(f"{me}-0")
    assert not owned_by_the_dead(f"{me}-broker")
    assert owned_by_the_dead("privsep-999999999-0-0")
    assert not owned_by_the_dead("privsep-x-1-2")  # not a name privsep makes: left alone
    assert not owned_by_the_dead("user.slice")


# --- the budget and the plan ---------------------------------------------------------------------


def test_the_budget_comes_from_the_policy_limits() -> None:
    budget = Budget.of(Limits(memory_mb=256, processes=10, cpu_percent=0))
    assert (budget.memory_bytes, budget.pids_max, budget.cpu_percent) == (256 << 20, 11, 0)
    assert Budget(64, 1, cpu_percent=1).cpu_quota_us == 1000
    assert Budget(64, 1, cpu_percent=250).cpu_quota_us == 250_000


def test_rlimit_nproc_bounds_only_a_sandbox_without_a_cgroup(fake: FakeCgroup2) -> None:
    """With the pids cgroup, RLIMIT_NPROC (per uid, shared by sibling sandboxes) is not lowered."""
    plan = make_plan(load_policy("cli-tool"), ["/bin/true"])
    assert plan.rlimits[resource.RLIMIT_NPROC] == resource.RLIM_INFINITY
    assert plan.budget == Budget(1024, 16)
    cg = _delegated(fake).create(plan.budget)
    inside = in_cgroup(plan, cg)
    assert inside.cgroup_join == cg.join
    assert inside.rlimits[resource.RLIMIT_NPROC] == resource.RLIM_INFINITY
    without = in_cgroup(plan, None)
    assert without.cgroup_join == ()
    assert without.rlimits[resource.RLIMIT_NPROC] == 16
