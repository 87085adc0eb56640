"""Shared fixtures: run the real ``privsep`` command, as root and as a non-root user."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from privsep import _linux, cgroups
from privsep.errors import ConfinementError
from privsep.plan import ownpaths
from tests import cgroup_delegation

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.prefix) / "bin"
PRIVSEP = VENV_BIN / "privsep"
PYTHON = VENV_BIN / "python"
#: An unprivileged uid/gid with no passwd entry and no supplementary groups,
#: for running the broker itself without root (the user-namespace path).
NONROOT_ID = 4242

RunPrivsep = Callable[..., subprocess.CompletedProcess[str]]


def pytest_sessionfinish() -> None:
    """No cgroup outlives the session: those handed to the non-root brokers
    (tests/cgroup_delegation.py), and those of brokers the tests killed, which the next
    broker to start would otherwise remove."""
    if os.geteuid() == 0:
        cgroup_delegation.remove_stale()
    with contextlib.suppress(ConfinementError):
        cgroups.host().reap_stale()


def pytest_report_header() -> list[str]:
    abi = _linux.landlock_abi_version()
    return [f"privsep: kernel {os.uname().release}, Landlock ABI {abi}, euid {os.geteuid()}"]


def as_nonroot(argv: Sequence[str], *, delegation: bool = True) -> list[str]:
    """``argv`` run as NONROOT_ID with no groups (see tests/as_nonroot.py); start it as root, cwd REPO.

    With ``delegation`` (the default), in a cgroup handed to NONROOT_ID, as systemd's Delegate=
    would (tests/cgroup_delegation.py); without it, as on a host that delegates none.
    """
    flag = [] if delegation else ["--no-delegation"]
    return [str(PYTHON), "-m", "tests.as_nonroot", str(NONROOT_ID), str(REPO), *flag, "--", *argv]


def privsep_argv(broker_user: str, args: Sequence[str]) -> list[str]:
    """``privsep run ARGS`` as the given broker user, for tests that need more than ``run_privsep``."""
    argv = [str(PRIVSEP), "run", *args]
    return as_nonroot(argv) if broker_user == "nonroot" else argv


@pytest.fixture(autouse=True)
def _own_paths_of_this_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit logs a test's in-process brokers guard (plan/ownpaths.py) are that test's: a
    later test's grant over the same temporary directory is not refused for them."""
    monkeypatch.setattr(ownpaths, "_guarded", {})


@pytest.fixture
def broker_uid(broker_user: str) -> int:
    """The host uid of the parametrized broker (root, or the non-root test user)."""
    return 0 if broker_user == "root" else NONROOT_ID


@pytest.fixture(scope="session")
def nonroot_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid for the non-root broker tests")
    probe = subprocess.run(
        as_nonroot([str(PYTHON), "-c", "import privsep.cli"]),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, f"uid {NONROOT_ID} cannot start privsep from this checkout:\n{probe.stderr}"


@pytest.fixture(params=["root", "nonroot"])
def broker_user(request: pytest.FixtureRequest) -> str:
    """Run each test twice: broker as root, and broker as an unprivileged user (user namespaces)."""
    if request.param == "nonroot":
        request.getfixturevalue("nonroot_ready")
    elif os.geteuid() != 0:
        pytest.skip("the root-broker variant needs root")
    return str(request.param)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory every uid can read (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="privsep-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(
    args: Sequence[str],
    *,
    user: str = "root",
    env: dict[str, str] | None = None,
    timeout: float = 60,
    input: str | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    argv = [str(PRIVSEP), "run", *args]
    full_env = {"PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run(
        as_nonroot(argv) if user == "nonroot" else argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        input=input,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def run_privsep(broker_user: str) -> RunPrivsep:
    """``run_privsep(args...)``: the real command line, as the parametrized broker user."""

    def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return _run(args, user=broker_user, **kw)  # type: ignore[arg-type]

    return run


@pytest.fixture
def run_as_root() -> RunPrivsep:
    def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return _run(args, user="root", **kw)  # type: ignore[arg-type]

    return run


def python_child(code: str) -> list[str]:
    """Arguments for ``privsep run`` that run ``code`` in a confined Python child."""
    return ["--policy", "python", "--", str(PYTHON), "-c", code]


def json_output(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def open_fds() -> set[int]:
    """The fd table, without the descriptor listdir used to read it."""
    return {fd for fd in map(int, os.listdir("/proc/self/fd")) if is_open(fd)}
