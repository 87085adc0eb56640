"""privsep run's plan cache, from where a user stands: a second run like the first imports no
pydantic, and anything that made the plan changing (a policy file, a grant, the environment it
passes through) makes the next run plan anew; a cache entry or directory someone else could have
written is never used, and a broken one never stops a run.

Whether a run planned is read the way the README says to measure a run: ``python -X
importtime`` on the real command. Only planning imports ``privsep.policy.grants`` (the
command-line grants, turned into policy); a run from a kept plan imports no pydantic at all
until its sandbox asks the broker for something.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import NONROOT_ID, PRIVSEP, PYTHON, REPO, as_nonroot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs a root broker (and chowns cache files)")

OTHER_UID = 4242


class Ran(NamedTuple):
    proc: subprocess.CompletedProcess[str]
    planned: bool
    imported: list[str]


def run(
    cache: Path | None,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    nonroot: bool = False,
) -> Ran:
    """``privsep run ARGS`` with the plan cache in ``cache`` (None: the default place, turned off
    by ``env``); and whether that run planned (see the module's docstring)."""
    full_env = {"PATH": "/usr/bin:/bin", **(env or {})}
    if cache is not None:
        full_env["PRIVSEP_CACHE_DIR"] = str(cache)
    argv = [str(PYTHON), "-X", "importtime", str(PRIVSEP), "run", *args]
    proc = subprocess.run(
        as_nonroot(argv) if nonroot else argv,
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=cwd,
        check=False,
    )
    lines = proc.stderr.splitlines()
    modules = [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
    proc.stderr = "".join(line + "\n" for line in lines if not line.startswith("import time:"))
    return Ran(proc, "privsep.policy.grants" in modules, modules)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.stdout


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.plan"))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_a_second_run_uses_the_kept_plan_and_does_the_same(cache: Path) -> None:
    args = ("--", "/bin/sh", "-c", "id -u; echo $PRIVSEP_FD; ls /")
    first, planned, first_imported = run(cache, *args)
    assert planned
    second, replanned, second_imported = run(cache, *args)
    assert not replanned, second.stderr
    assert ok(second) == ok(first)
    assert second.stderr == first.stderr
    # Nothing asked the broker for anything: no model was built, no filter compiled.
    assert "pydantic" in first_imported
    assert not {"pydantic", "pyseccomp", "privsep.protocol"} & set(second_imported)
    # Nor what only an address or a datagram needs, nor the plan's base64 helpers.
    assert not {"ipaddress", "base64"} & set(second_imported)
    # Nor what serves requests and calls the command never made, nor threads for slow ones
    # it never asked for, nor typing (each module's TYPE_CHECKING is its own).
    unused = {
        "typing", "threading", "queue",
        "privsep.broker.answers", "privsep.broker.transparent", "privsep.broker.relay",
        "privsep.broker.actas", "privsep.broker.readonly", "privsep.plan.filter",
        "privsep.policy.syscalls", "privsep.errorcodes", "privsep.plan.importpath",
        "privsep.plan.ownpaths", "privsep.plan.limits", "termios",
    }  # fmt: skip
    assert not unused & set(second_imported)
    # Nor the standard library's Python layers over C modules a run uses directly (about 8 ms
    # of every run, issue 16): the console script (pip 25+) and privsep import none of them.
    layers = {
        "re", "enum", "json", "socket", "selectors", "signal", "contextlib", "functools",
        "collections", "collections.abc", "array", "operator", "encodings.ascii",
    }  # fmt: skip
    assert not layers & set(second_imported)
    # Root's cache: the directory 0700, the entry 0600, both root's.
    assert cache.stat().st_mode & 0o777 == 0o700
    (entry,) = entries(cache)
    assert (entry.stat().st_mode & 0o777, entry.stat().st_uid) == (0o600, 0)


def test_the_command_is_not_in_the_key_but_it_is_what_runs(cache: Path) -> None:
    ok(run(cache, "--", "/bin/echo", "one")[0])
    proc, planned, _ = run(cache, "--", "/bin/echo", "two", "three")
    assert not planned
    assert ok(proc) == "two three\n"
    # A relative command path means the user's directory, as when the plan was made.
    proc, planned, _ = run(cache, "--", "bin/echo", "four", cwd=Path("/"))
    assert ok(proc) == "four\n"


def test_an_edited_policy_or_one_it_extends_is_planned_anew(cache: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text('extends = "minimal"\n[env]\nset = { WHO = "base" }\n')
    policy = tmp_path / "policy.toml"
    policy.write_text('extends = "base.toml"\n[env]\nset = { WHAT = "one" }\n')
    args = ("--policy", str(policy), "--", "/bin/sh", "-c", 'echo "$WHO $WHAT"')
    assert ok(run(cache, *args)[0]) == "base one\n"
    assert not run(cache, *args)[1]
    policy.write_text('extends = "base.toml"\n[env]\nset = { WHAT = "two" }\n')
    proc, planned, _ = run(cache, *args)
    assert planned
    assert ok(proc) == "base two\n"
    base.write_text('extends = "minimal"\n[env]\nset = { WHO = "parent" }\n')
    proc, planned, _ = run(cache, *args)
    assert planned
    assert ok(proc) == "parent two\n"
    assert not run(cache, *args)[1]


def test_a_policy_that_stops_loading_is_refused_again(cache: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('extends = "minimal"\n')
    args = ("--policy", str(policy), "--", "/bin/true")
    ok(run(cache, *args)[0])
    policy.write_text('extends = "minimal"\n[view]\nread = ["/nonexistent-privsep-test"]\n')
    proc, _, _ = run(cache, *args)
    assert proc.returncode == 125
    assert "/nonexistent-privsep-test does not exist" in proc.stderr


def test_a_grant_replaced_by_a_symlink_is_planned_anew(cache: Path, shared_tmp: Path) -> None:
    grant, elsewhere = shared_tmp / "grant", shared_tmp / "elsewhere"
    grant.mkdir()
    elsewhere.mkdir()
    (grant / "f").write_text("the grant\n")
    (elsewhere / "f").write_text("elsewhere\n")
    args = (
        "--allow-read",
        str(grant),
        "--",
        "/bin/sh",
        "-c",
        f"cat {grant}/f; test -L {grant} && echo link; true",
    )
    assert ok(run(cache, *args, cwd=shared_tmp)[0]) == "the grant\n"
    assert not run(cache, *args, cwd=shared_tmp)[1]
    grant.rename(shared_tmp / "moved")
    grant.symlink_to(elsewhere)
    proc, planned, _ = run(cache, *args, cwd=shared_tmp)
    assert planned
    # Planned anew, the view mirrors the link, as it would have without a cache.
    assert ok(proc) == "elsewhere\nlink\n"


def test_a_socket_planted_in_a_grant_is_masked_by_the_next_run(cache: Path, shared_tmp: Path) -> None:
    args = ("--allow-read", str(shared_tmp), "--", "/bin/sh", "-c", f"ls -l {shared_tmp}/sock 2>&1; true")
    ok(run(cache, *args)[0])
    assert not run(cache, *args)[1]
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(shared_tmp / "sock"))
        proc, planned, _ = run(cache, *args)
    finally:
        listener.close()
    assert planned
    # Masked: not a socket in the child's view.
    assert not ok(proc).startswith("s"), proc.stdout


def test_the_environment_the_policy_passes_through_is_read_anew(cache: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('extends = "minimal"\n[env]\npass = ["PRIVSEP_TEST_VALUE"]\n')
    args = ("--policy", str(policy), "--", "/bin/sh", "-c", 'echo "[$PRIVSEP_TEST_VALUE]"')
    assert ok(run(cache, *args, env={"PRIVSEP_TEST_VALUE": "a"})[0]) == "[a]\n"
    proc, planned, _ = run(cache, *args, env={"PRIVSEP_TEST_VALUE": "a"})
    assert (ok(proc), planned) == ("[a]\n", False)
    proc, planned, _ = run(cache, *args, env={"PRIVSEP_TEST_VALUE": "b"})
    assert (ok(proc), planned) == ("[b]\n", True)
    proc, planned, _ = run(cache, *args)
    assert (ok(proc), planned) == ("[]\n", True)


@pytest.mark.parametrize("variable", ["PYTHONPYCACHEPREFIX", "LD_LIBRARY_PATH"])
def test_a_kept_plan_is_checked_against_this_runs_import_paths(
    cache: Path, tmp_path: Path, variable: str
) -> None:
    """Audit 13: the key does not hold the bytecode prefix or the loader's path, so a plan kept
    by a run without them was applied as it was by a run with them, and its grant of that
    directory let the sandbox plant a .pyc (or a library) the root broker then loaded."""
    granted = tmp_path / "granted"
    granted.mkdir()
    args = ("--allow-write", str(granted), "--", "/bin/true")
    ok(run(cache, *args)[0])
    # Not written by this run's own start either (that changes the grant, so the facts fail and
    # the run plans anew, and planning refuses it): only the sandbox writes there.
    env = {variable: str(granted), "PYTHONDONTWRITEBYTECODE": "1"}
    proc, planned, _ = run(cache, *args, env=env)
    assert not planned  # the kept plan, from its key
    assert proc.returncode == 125, proc.stderr
    assert f"a grant to write {granted} is refused" in proc.stderr
    assert variable in proc.stderr


def test_a_sandbox_that_asks_gets_the_same_answers_from_a_kept_plan(cache: Path, shared_tmp: Path) -> None:
    (shared_tmp / "granted").write_text("granted contents")
    secret = shared_tmp / "secret"
    secret.write_text("not for the child")
    code = (
        "from privsep import client\n"
        f"print(client.open({str(shared_tmp / 'granted')!r}).read())\n"
        f"try:\n    client.open({str(secret)!r})\n"
        "except PermissionError as exc:\n    print('denied:', exc)\n"
    )
    args = (
        "--policy", "python",
        "--allow-read", str(shared_tmp / "granted"),
        "--", str(PYTHON), "-c", code,
    )  # fmt: skip
    first, planned, _ = run(cache, *args)
    assert planned
    second, replanned, second_imported = run(cache, *args)
    assert not replanned
    assert "pydantic" in second_imported  # the first request made the model
    assert ok(second) == ok(first)
    assert "granted contents" in second.stdout and "denied:" in second.stdout
    assert second.stderr == first.stderr  # the same denial report, with the same hint
    assert "--allow-read" in second.stderr


def _warm(cache: Path) -> Path:
    ok(run(cache, "--", "/bin/true")[0])
    (entry,) = entries(cache)
    return entry


@pytest.mark.parametrize(
    "tamper",
    ["other owner", "group writable", "world readable", "garbage", "truncated", "symlink", "fifo"],
)
def test_an_entry_anyone_else_could_have_written_or_read_or_a_broken_one_is_ignored(
    cache: Path, tmp_path: Path, tamper: str
) -> None:
    entry = _warm(cache)
    if tamper == "other owner":
        os.chown(entry, OTHER_UID, OTHER_UID)
    elif tamper == "group writable":
        entry.chmod(0o620)
    elif tamper == "world readable":
        entry.chmod(0o604)
    elif tamper == "garbage":
        entry.write_bytes(os.urandom(4096))
    elif tamper == "truncated":
        entry.write_bytes(entry.read_bytes()[:-100])
    elif tamper == "symlink":
        target = tmp_path / "target"
        target.write_bytes(entry.read_bytes())
        target.chmod(0o600)
        entry.unlink()
        entry.symlink_to(target)
    elif tamper == "fifo":
        entry.unlink()
        os.mkfifo(entry, 0o600)
    proc, planned, _ = run(cache, "--", "/bin/sh", "-c", "echo ran")
    assert planned, f"a {tamper} entry was used"
    assert ok(proc) == "ran\n"
    assert proc.stderr == ""
    # Replaced by a good one, which the next run uses.
    (entry,) = entries(cache)
    st = entry.lstat()
    assert (st.st_uid, st.st_mode & 0o7777, entry.is_symlink()) == (0, 0o600, False)
    assert not run(cache, "--", "/bin/true")[1]


def test_an_entry_made_for_other_inputs_is_not_taken_for_this_one(cache: Path) -> None:
    ok(run(cache, "--allow-read", "/etc/hostname", "--", "/bin/true")[0])
    (other,) = entries(cache)
    ok(run(cache, "--", "/bin/true")[0])
    (mine,) = [e for e in entries(cache) if e != other]
    mine.write_bytes(other.read_bytes())  # same owner and mode, another key inside
    proc, planned, _ = run(cache, "--", "/bin/sh", "-c", "cat /etc/hostname 2>/dev/null || echo hidden")
    assert planned
    assert ok(proc) == "hidden\n"


@pytest.mark.parametrize("tamper", ["world writable", "other owner"])
def test_a_cache_directory_anyone_else_could_write_is_never_used(cache: Path, tamper: str) -> None:
    cache.mkdir(mode=0o700)
    if tamper == "world writable":
        cache.chmod(0o777)
    else:
        os.chown(cache, OTHER_UID, OTHER_UID)
    for _ in range(2):
        proc, planned, _ = run(cache, "--", "/bin/true")
        assert planned
        ok(proc)
    assert entries(cache) == []


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_the_cache_can_be_turned_off(cache: Path, how: str) -> None:
    args: Sequence[str] = ("--no-cache", "--", "/bin/true") if how == "flag" else ("--", "/bin/true")
    env = {"PRIVSEP_NO_CACHE": "1"} if how == "environment" else {}
    for _ in range(2):
        proc, planned, _ = run(cache, *args, env=env)
        assert planned
        ok(proc)
    assert not cache.exists() or entries(cache) == []


def test_an_unwritable_cache_costs_a_cold_run_and_nothing_else(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    proc, planned, _ = run(blocked / "cache", "--", "/bin/sh", "-c", "echo ran")
    assert planned
    assert (ok(proc), proc.stderr) == ("ran\n", "")


@pytest.mark.usefixtures("nonroot_ready")
def test_a_user_s_cache_is_theirs_under_xdg_cache_home(shared_tmp: Path) -> None:
    home = shared_tmp / "home"
    home.mkdir()
    os.chown(home, NONROOT_ID, NONROOT_ID)
    env = {"XDG_CACHE_HOME": str(home / ".cache")}
    first, planned, _ = run(None, "--", "/bin/sh", "-c", "id -u", env=env, nonroot=True)
    assert planned
    second, replanned, imported = run(None, "--", "/bin/sh", "-c", "id -u", env=env, nonroot=True)
    assert not replanned and "pydantic" not in imported
    assert ok(second) == ok(first)
    (entry,) = entries(home / ".cache" / "privsep")
    st = entry.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (NONROOT_ID, 0o600)
    assert (home / ".cache" / "privsep").stat().st_mode & 0o777 == 0o700
    # Root's own runs never take a plan from it (the entry is not root's).
    os.chown(home / ".cache" / "privsep", 0, 0)
    proc, planned, _ = run(home / ".cache" / "privsep", "--", "/bin/sh", "-c", "echo root")
    assert planned and ok(proc) == "root\n"
