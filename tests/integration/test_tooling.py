"""``privsep policy check``, ``privsep policy show`` and ``privsep doctor``, through the real command line.

``check`` must report every error with the file and field that carry it,
and exit 1; ``show`` must print a policy file equivalent to the one shown,
groups expanded and noted; ``doctor`` must describe this machine truthfully
(the kernel facts it reports are checked against the kernel here) and, on a
machine with every layer, exit 0, as root and as a non-root user.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from privsep import _linux
from privsep.policy.load import load_policy, shipped_names
from privsep.policy.model import Policy
from privsep.policy.syscalls import GROUPS, expand
from tests.conftest import NONROOT_ID, PRIVSEP, REPO, as_nonroot


def privsep(*args: str, user: str = "root", cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    argv = [str(PRIVSEP), *args]
    return subprocess.run(
        as_nonroot(argv) if user == "nonroot" else argv,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


@pytest.fixture(params=["root", "nonroot"])
def user(request: pytest.FixtureRequest) -> str:
    if os.geteuid() != 0:
        if request.param == "root":
            pytest.skip("the root variant needs root")
        return "self"
    if request.param == "nonroot":
        request.getfixturevalue("nonroot_ready")
    return str(request.param)


def write(where: Path, name: str, text: str) -> str:
    path = where / name
    path.write_text(text)
    return str(path)


# --- policy check --------------------------------------------------------------------------------


def test_every_shipped_policy_checks_ok(user: str) -> None:
    proc = privsep("policy", "check", *shipped_names(), user=user)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    heads = [line for line in proc.stdout.splitlines() if not line.startswith(" ")]
    assert [h.split(":")[0] for h in heads] == shipped_names()
    assert all(re.fullmatch(r"[a-z-]+: ok( \(\d+ warnings?\))?", h) for h in heads), heads
    if user == "nonroot":  # a non-root broker cannot bind web-daemon's ports: said, not an error
        assert "port 80 is below 1024" in proc.stdout and "port 443 is below 1024" in proc.stdout


def test_check_reports_an_unknown_syscall_name_with_its_file_and_field(shared_tmp: Path) -> None:
    path = write(
        shared_tmp, "typo.toml", 'extends = "minimal"\n[syscalls]\nallow = ["@system-service", "opne"]\n'
    )
    proc = privsep("policy", "check", path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == f"{path}: 1 error"
    assert f"error: {path}: syscalls.allow[1]: unknown syscall 'opne'" in proc.stdout
    assert "did you mean 'open'" in proc.stdout


def test_check_reports_an_unknown_key_with_its_file_and_field(shared_tmp: Path) -> None:
    path = write(shared_tmp, "key.toml", 'extends = "python"\n[view]\nreed = ["/srv"]\n')
    proc = privsep("policy", "check", path)
    assert proc.returncode == 1
    assert f"error: {path}: view.reed: unknown key" in proc.stdout


def test_check_names_the_file_of_the_chain_that_wrote_the_entry(shared_tmp: Path) -> None:
    parent = write(shared_tmp, "parent.toml", 'extends = "minimal"\n[syscalls]\nallow = ["not_a_syscall"]\n')
    child = write(shared_tmp, "child.toml", 'extends = "parent.toml"\n[syscalls]\nallow = ["getcpu"]\n')
    proc = privsep("policy", "check", child, cwd=Path("/"))
    assert proc.returncode == 1
    assert f"error: {parent}: syscalls.allow[0]: unknown syscall 'not_a_syscall'" in proc.stdout
    assert "getcpu" not in proc.stdout


def test_check_reports_every_error_of_every_file(shared_tmp: Path) -> None:
    good = write(shared_tmp, "good.toml", 'extends = "python"\n')
    bad = write(
        shared_tmp,
        "bad.toml",
        'extends = "python"\n'
        '[syscalls]\nallow = ["ptrace", "@file-sytem"]\n'
        f'[view]\nread = ["{shared_tmp}/nowhere"]\n'
        f'[[files]]\npath = "{shared_tmp}/no/such/dir"\naccess = ["read"]\n',
    )
    proc = privsep("policy", "check", bad, good)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{bad}: 4 errors"
    assert lines[-1] == f"{good}: ok"
    errors = "\n".join(lines[1:5])
    assert f"{bad}: syscalls.allow[0]: 'ptrace' is in the dangerous set" in errors
    assert f"{bad}: syscalls.allow[1]: unknown syscall group '@file-sytem'" in errors
    assert f"{bad}: view.read[0]: view path {shared_tmp}/nowhere does not exist" in errors
    assert f"{bad}: files[0]: {shared_tmp}/no/such/dir: neither it nor its directory" in errors


def test_check_warns_about_what_does_not_exist_yet_and_still_passes(shared_tmp: Path) -> None:
    path = write(
        shared_tmp,
        "site.toml",
        'extends = "web-daemon"\n'
        f'[[files]]\npath = "{shared_tmp}/www"\naccess = ["read"]\n'
        f'[secrets]\ntls_key = "file:{shared_tmp}/key.pem"\n',
    )
    proc = privsep("policy", "check", path)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith(f"{path}: ok (")
    assert f"warning: {path}: files[0]: {shared_tmp}/www does not exist on this machine" in proc.stdout
    assert f"warning: {path}: secrets.tls_key: {shared_tmp}/key.pem does not exist" in proc.stdout


def test_check_of_something_that_is_not_a_policy(shared_tmp: Path) -> None:
    broken = write(shared_tmp, "broken.toml", "[view\n")
    proc = privsep("policy", "check", broken, "no-such-policy", str(shared_tmp / "missing.toml"))
    assert proc.returncode == 1
    assert "is not valid TOML" in proc.stdout
    assert "no shipped policy named 'no-such-policy'" in proc.stdout
    assert "cannot read policy file" in proc.stdout


# --- policy show ---------------------------------------------------------------------------------


def _same(a: Policy, b: Policy) -> None:
    """Equal but for the name, with ``a``'s syscall groups expanded."""
    da, db = a.model_dump(exclude={"name"}), b.model_dump(exclude={"name"})
    da["syscalls"]["allow"] = sorted(expand(a.syscalls.allow))
    db["syscalls"]["allow"] = sorted(db["syscalls"]["allow"])
    assert da == db


@pytest.mark.parametrize("name", shipped_names())
def test_show_prints_a_policy_file_equivalent_to_the_one_shown(name: str, shared_tmp: Path) -> None:
    proc = privsep("policy", "show", name)
    assert proc.returncode == 0, proc.stderr
    assert "${" not in proc.stdout
    tomllib.loads(proc.stdout)
    shown = write(shared_tmp, "shown.toml", proc.stdout)
    assert privsep("policy", "check", shown).returncode == 0
    _same(load_policy(name), load_policy(shown))


def test_show_expands_groups_and_notes_where_each_syscall_comes_from() -> None:
    proc = privsep("policy", "show", "python")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "# resolved from: <shipped policy 'python'> -> <shipped policy 'minimal'>" in out
    assert "# as written: @system-service" in out
    assert re.search(r'^    "openat", +# @file-system$', out, re.M)
    assert re.search(r'^    "brk", +# @default, @memory$', out, re.M)
    assert re.search(r'^    "ioctl", +# @system-service$', out, re.M)  # in no finer group
    assert sys.prefix in out  # ${sys.prefix} expanded
    assert "timeout_seconds = 0.0" in out  # defaults written out


def test_show_prints_a_policy_that_allows_no_syscall_and_says_a_run_would_refuse_it(
    shared_tmp: Path,
) -> None:
    """Fresh-eyes audit 18, an aside: `policy show` of a policy without [syscalls] crashed
    (max() of no widths) where it should print `allow = []`, and the run's refusal."""
    proc = privsep("policy", "show", write(shared_tmp, "bare.toml", '[view]\nread = ["/usr"]\n'))
    assert proc.returncode == 1, proc.stderr  # shown, and the refusal said: as for any such policy
    assert "Traceback" not in proc.stderr
    assert "\nallow = []\n" in proc.stdout
    assert "lacks sendmsg, close, execve, exit_group" in proc.stderr


def test_show_json_lists_the_sorted_names_and_their_groups(shared_tmp: Path) -> None:
    path = write(
        shared_tmp, "small.toml", 'extends = "minimal"\n[syscalls]\nallow = ["@default", "getcpu", "brk"]\n'
    )
    proc = privsep("policy", "show", "--json", path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    syscalls = data["syscalls"]
    assert syscalls["written"] == ["@system-service", "@default", "getcpu", "brk"]
    assert syscalls["allow"] == sorted(GROUPS["@system-service"])
    assert syscalls["groups"]["getcpu"] == ["@resources", "by name"]
    assert syscalls["groups"]["brk"] == ["@default", "@memory", "by name"]
    assert data["resolved_from"] == [path, "<shipped policy 'minimal'>"]
    assert data["limits"]["processes"] == 128


def test_show_of_a_policy_privsep_run_would_refuse(shared_tmp: Path) -> None:
    path = write(shared_tmp, "bad.toml", 'extends = "minimal"\n[syscalls]\nallow = ["opne"]\n')
    proc = privsep("policy", "show", path)
    assert proc.returncode == 1
    assert '"opne",' in proc.stdout  # shown as it is ...
    assert f"{path}: syscalls.allow[0]: unknown syscall 'opne'" in proc.stderr  # ... and why it fails


def test_show_into_a_closed_pipe_is_not_an_error() -> None:
    proc = subprocess.Popen(
        [str(PRIVSEP), "policy", "show", "python"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait() == 0
    assert b"Traceback" not in stderr


# --- doctor --------------------------------------------------------------------------------------


def _cgroup_here() -> str:
    kinds = {line.split()[2] for line in Path("/proc/self/mounts").read_text().splitlines()}
    v1, v2 = "cgroup" in kinds, "cgroup2" in kinds
    return "hybrid" if v1 and v2 else "v2" if v2 else "v1" if v1 else "none"


def _sync_wakeup_here() -> bool:
    """SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP came with Linux 6.6."""
    major, minor = (int(part) for part in re.findall(r"\d+", os.uname().release)[:2])
    return (major, minor) >= (6, 6)


def test_doctor_describes_this_machine_and_finds_every_layer(user: str) -> None:
    proc = privsep("doctor", user=user)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    abi = _linux.landlock_abi_version()
    assert f"Linux {os.uname().release}" in out
    assert f"Landlock          ABI {abi}: filesystem, refer, truncate" in out
    assert "user notification: yes" in out
    assert f"cgroups           {_cgroup_here()} (" in out
    assert re.search(r"^  0 cgroup +applied: a cgroup per sandbox, v[12] beneath ", out, re.M)
    layers = (
        "3 namespaces",
        "3b filesystem view",
        "0 cgroup",
        "6 Landlock",
        "7 seccomp",
        "broker: files (openat2)",
    )
    for layer in layers:
        assert re.search(rf"^  {re.escape(layer)} +applied: ", out, re.M), layer
    assert re.search(r"^  trial: minimal, /usr/bin/true +ok: ", out, re.M)
    sync = "applied" if _sync_wakeup_here() else "absent"
    assert re.search(rf"^  broker: synchronous wake-up +{sync}: ", out, re.M)
    assert out.rstrip().endswith("verdict: ready; every layer privsep run needs is available here")
    if user == "root":
        assert re.search(r"^  4b host id per sandbox +applied: from \d+-\d+ \(", out, re.M)
        assert re.search(r"^  host ids          \d+-\d+ \(.*\): \d+ claimed, \d+ stale", out, re.M)
    else:
        assert "mount, pid, net, ipc, uts, cgroup, user (the child's uid 65534 maps to yours" in out
        # What a non-root broker lacks is said, not hidden; it does not stop privsep run.
        assert re.search(
            r"^  4b host id per sandbox +absent: without root every sandbox runs as you", out, re.M
        )
        assert "subordinate id would own none of your files" in out


def test_doctor_json_is_the_same_verdict_for_machines(user: str) -> None:
    proc = privsep("doctor", "--json", user=user)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["ready"] is True
    assert data["facts"]["landlock_abi"] == _linux.landlock_abi_version()
    assert data["facts"]["euid"] == (0 if user == "root" else os.geteuid() if user == "self" else NONROOT_ID)
    assert "user_notif" in data["facts"]["seccomp_actions"]
    assert data["facts"]["cgroup"] == _cgroup_here()
    statuses = {layer["name"]: layer["status"] for layer in data["layers"]}
    assert statuses.pop("4b host id per sandbox") == ("applied" if user == "root" else "absent")
    assert statuses.pop("broker: synchronous wake-up") == ("applied" if _sync_wakeup_here() else "absent")
    assert set(statuses.values()) == {"applied", "ok"}
    if user == "root":
        assert data["facts"]["host_id_range"] and data["facts"]["host_ids"] == {"error": None}
    else:
        assert data["facts"]["host_id_range"] == ""
