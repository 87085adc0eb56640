"""Run one program twice, under bubblewrap and under ``privsep run``, with the same grants.

bubblewrap is the yardstick: a case whose bwrap run fails its check is a bad
case, not a privsep bug. Both runs get a fresh copy of the inputs at the same
host paths, the same environment, umask 022, the same invoking user (root, or
NONROOT_ID through ``tests.as_nonroot``), and the same working directory:
``/`` unless the case names one (a user who ``cd``'d into OUT and typed the
command there; both runners are started from it and bwrap is told ``--chdir``
it), so the only difference left is the sandbox.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import privsep
from tests.conftest import NONROOT_ID, PRIVSEP, PYTHON, REPO, as_nonroot

#: What the user's shell would pass on; both runners get exactly this.
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
#: One run's wall-clock limit; the slowest case (a pytest suite) takes ~2 s.
RUN_TIMEOUT = 60.0
#: How long a server has to start answering, and to stop after SIGTERM.
SERVER_TIMEOUT = 10.0
#: The policies that need the interpreter and .venv in the view.
PYTHON_POLICIES = frozenset({"python", "plugin", "web-daemon"})


@dataclass(frozen=True)
class Dirs:
    """The host directories of one run: IN (read grant) and OUT (write grant), and the run's
    free port (a server's own config file, written by the setup, names it)."""

    inp: Path
    out: Path
    port: int = 0


@dataclass(frozen=True)
class Case:
    """One real program, run the way a user would type it.

    ``argv``, ``bind`` and ``cwd`` may contain ``{IN}``, ``{OUT}``, ``{PY}`` (the
    venv's interpreter) and ``{PORT}`` (a free port chosen for each run).
    ``read``/``write`` name which of ``in``/``out`` are granted, and how.
    ``cwd`` is the directory the user typed the command in (default ``/``);
    the grants are then named relative to it (``--allow-write .``,
    ``--allow-read ../in``), as a user there would type them.
    ``fetch`` lists URL paths to GET from the host once the program (a server)
    listens; it is then stopped with SIGTERM.
    """

    name: str
    argv: tuple[str, ...]
    check: Callable[[Run], None]
    setup: Callable[[Dirs], None] | None = None
    read: tuple[str, ...] = ("in",)
    write: tuple[str, ...] = ("out",)
    policy: str | None = None
    bind: str | None = None
    fetch: tuple[str, ...] = ()
    modes: tuple[str, ...] = ("root", "nonroot")
    cwd: str | None = None


@dataclass
class Run:
    """What one runner did with a case, as seen from the host afterwards."""

    runner: str
    mode: str
    dirs: Dirs
    port: int
    uid: int
    argv: list[str]
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    fetched: dict[str, bytes] = field(default_factory=dict)
    fetch_errors: dict[str, str] = field(default_factory=dict)
    stopped: bool = True
    #: A server that exited by itself before every fetch was answered.
    exited_early: bool = False
    #: IN as the setup left it, to prove afterwards that a read grant stayed read-only.
    in_before: dict[str, tuple[int, int, str, int]] = field(default_factory=dict)

    @property
    def inp(self) -> Path:
        return self.dirs.inp

    @property
    def out(self) -> Path:
        return self.dirs.out

    def describe(self) -> str:
        """Everything needed to see why a run failed, bounded so a flood stays readable."""

        def cut(text: str, limit: int = 6000) -> str:
            return text if len(text) <= limit else text[: limit // 2] + "\n[...]\n" + text[-limit // 2 :]

        lines = [
            f"--- {self.runner} ({self.mode} broker): exit {self.returncode}",
            "argv: " + " ".join(self.argv),
            f"stdout:\n{cut(self.stdout)}",
            f"stderr:\n{cut(self.stderr)}",
        ]
        if self.fetched or self.fetch_errors:
            lines.append(f"fetched: {self.fetched!r}\nfetch errors: {self.fetch_errors!r}")
        return "\n".join(lines)


def free_port() -> int:
    """A TCP port nobody listens on right now (the sandbox binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _subst(text: str, dirs: Dirs, port: int) -> str:
    return (
        text.replace("{IN}", str(dirs.inp))
        .replace("{OUT}", str(dirs.out))
        .replace("{PY}", str(PYTHON))
        .replace("{PORT}", str(port))
    )


def _cwd(case: Case, dirs: Dirs, port: int) -> str:
    """Where the user typed the command: both runners start there."""
    return _subst(case.cwd or "/", dirs, port)


def _grant_paths(case: Case, dirs: Dirs) -> tuple[list[Path], list[Path]]:
    by_name = {"in": dirs.inp, "out": dirs.out}
    return [by_name[n] for n in case.read], [by_name[n] for n in case.write]


def _python_paths() -> list[Path]:
    """What the ``python`` policy adds to the view; bwrap gets the same, read-only."""
    package = Path(privsep.__file__).resolve().parent
    return [Path(sys.base_prefix), Path(sys.prefix), package]


def bwrap_argv(case: Case, dirs: Dirs, port: int) -> list[str]:
    """The bubblewrap command a user would type for the same grants.

    bwrap has no per-address network grant, so a server shares the host's
    network. A privileged port needs CAP_NET_BIND_SERVICE in the host's
    network namespace, which bwrap can keep only without a user namespace
    (root only): then every other capability is dropped.
    """
    reads, writes = _grant_paths(case, dirs)
    argv = ["/usr/bin/bwrap"]
    bind_port = int(_subst(case.bind, dirs, port).rsplit(":", 1)[1]) if case.bind else None
    if bind_port is not None and bind_port < 1024:
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_NET_BIND_SERVICE"]
    else:
        argv += ["--unshare-all"]
        if bind_port is not None:
            argv += ["--share-net"]
    argv += ["--die-with-parent", "--chdir", _cwd(case, dirs, port)]
    argv += ["--ro-bind", "/usr", "/usr"]
    for link in ("lib", "lib64", "bin", "sbin"):
        if Path("/", link).is_symlink():
            argv += ["--symlink", os.readlink(Path("/", link)), f"/{link}"]
    argv += ["--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if case.policy in PYTHON_POLICIES:
        for path in _python_paths():
            if path != Path("/usr") and not str(path).startswith("/usr/"):
                argv += ["--ro-bind", str(path), str(path)]
    for path in reads:
        argv += ["--ro-bind", str(path), str(path)]
    for path in writes:
        argv += ["--bind", str(path), str(path)]
    return [*argv, "--", *(_subst(a, dirs, port) for a in case.argv)]


def privsep_args(case: Case, dirs: Dirs, port: int) -> list[str]:
    """``privsep run`` arguments with the natural flags for the case's grants.

    From a working directory of its own, a user names the grants relative to
    it (``--allow-write .``, ``--allow-read ../in``).
    """
    reads, writes = _grant_paths(case, dirs)
    cwd = _cwd(case, dirs, port) if case.cwd is not None else None

    def named(path: Path) -> str:
        return str(path) if cwd is None else os.path.relpath(path, cwd)

    args: list[str] = []
    if case.policy is not None:
        args += ["--policy", case.policy]
    for path in reads:
        args += ["--allow-read", named(path)]
    for path in writes:
        args += ["--allow-write", named(path)]
    if case.bind is not None:
        args += ["--allow-bind", _subst(case.bind, dirs, port)]
    return [*args, "--", *(_subst(a, dirs, port) for a in case.argv)]


def prepare(case: Case, base: Path, mode: str, port: int = 0) -> Dirs:
    """A fresh IN and OUT under ``base``, owned as the invoking user's own would be."""
    dirs = Dirs(base / "in", base / "out", port)
    for path in (dirs.inp, dirs.out):
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(mode=0o755)
        path.chmod(0o755)
    old = os.umask(0o022)
    try:
        if case.setup is not None:
            case.setup(dirs)
    finally:
        os.umask(old)
    if mode == "nonroot":
        for top in (dirs.inp, dirs.out):
            for path in [top, *top.rglob("*")]:
                os.lchown(path, NONROOT_ID, NONROOT_ID)
    return dirs


def snapshot(top: Path) -> dict[str, tuple[int, int, str, int]]:
    """Every entry under ``top``: mode, owner, content (hash or link target), mtime."""
    result: dict[str, tuple[int, int, str, int]] = {}
    for path in sorted([top, *top.rglob("*")]):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = "-> " + os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = ""
        mtime = 0 if stat.S_ISDIR(st.st_mode) and path == top else st.st_mtime_ns
        result[str(path.relative_to(top))] = (st.st_mode, st.st_uid, what, mtime)
    return result


def _fetch_all(url_base: str, paths: tuple[str, ...], proc: subprocess.Popen[bytes], run: Run) -> None:
    """GET each path from the host, retrying until the server answers or gives up."""
    deadline = time.monotonic() + SERVER_TIMEOUT
    for path in paths:
        while True:
            try:
                with urllib.request.urlopen(url_base + path, timeout=2) as reply:  # noqa: S310 - our http:// URL
                    run.fetched[path] = reply.read()
                run.fetch_errors.pop(path, None)
                break
            except (urllib.error.URLError, OSError) as exc:
                run.fetch_errors[path] = repr(exc)
                if proc.poll() is not None:
                    run.exited_early = True
                    return
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)


@contextlib.contextmanager
def _output_files(base: Path) -> Iterator[tuple[Path, Path]]:
    out, err = base / "stdout.txt", base / "stderr.txt"
    try:
        yield out, err
    finally:
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)


def execute(case: Case, runner: str, mode: str, base: Path) -> Run:
    """Prepare fresh inputs, run the case under ``runner`` as the ``mode`` user, and record it."""
    port = free_port()
    dirs = prepare(case, base, mode, port)
    if runner == "bwrap":
        inner = bwrap_argv(case, dirs, port)
    else:
        inner = [str(PRIVSEP), "run", *privsep_args(case, dirs, port)]
    # tests.as_nonroot starts in REPO: env -C moves both runners to the user's directory.
    inner = ["/usr/bin/env", "-C", _cwd(case, dirs, port), *inner]
    argv = as_nonroot(inner) if mode == "nonroot" else inner
    run = Run(runner, mode, dirs, port, NONROOT_ID if mode == "nonroot" else 0, argv)
    run.in_before = snapshot(dirs.inp)
    if not case.fetch:
        proc = subprocess.run(
            argv, cwd=REPO, env=ENV, umask=0o022, capture_output=True, text=True,
            timeout=RUN_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        run.returncode, run.stdout, run.stderr = proc.returncode, proc.stdout, proc.stderr
        return run
    host = _subst(case.bind or "127.0.0.1:{PORT}", dirs, port)
    with _output_files(base) as (out_path, err_path):
        with out_path.open("wb") as out_f, err_path.open("wb") as err_f:
            server = subprocess.Popen(
                argv, cwd=REPO, env=ENV, umask=0o022, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL
            )
        try:
            _fetch_all(f"http://{host}", case.fetch, server, run)
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            try:
                run.returncode = server.wait(SERVER_TIMEOUT)
            except subprocess.TimeoutExpired:
                run.stopped = False
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        run.stdout = out_path.read_text(errors="replace")
        run.stderr = err_path.read_text(errors="replace")
    return run
