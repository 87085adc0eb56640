"""privsep learn: from nothing to a policy that runs the command, and nothing more."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PRIVSEP, PYTHON, REPO, as_nonroot

JOB = """
import ctypes
from privsep import client
data = client.open("{inp}").read()
with client.open("{out}", "w") as f:
    f.write(data.upper())
sock = client.connect("127.0.0.1", {port})
print(sock.recv(10).decode())
ctypes.CDLL(None).syscall(278, -1, 0, 0, 0)  # vmsplice: outside the python policy's allowlist
print("job done")
"""


def privsep(broker_user: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(PRIVSEP), *args]
    return subprocess.run(
        as_nonroot(argv) if broker_user == "nonroot" else argv,
        capture_output=True, text=True, timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin"}, check=False,
    )  # fmt: skip


@pytest.fixture
def server() -> Iterator[int]:
    """A TCP server on loopback answering 'pong' to every connection."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    sock.close()


def test_learn_writes_the_smallest_policy_that_runs_the_command(
    broker_user: str, shared_tmp: Path, server: int
) -> None:
    inp, out = shared_tmp / "in", shared_tmp / "out"
    inp.mkdir()
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the non-root broker writes here
    (inp / "a.txt").write_text("hello\n")
    (inp / "a.txt").chmod(0o644)
    (inp / "unused.txt").write_text("never read\n")
    job = JOB.format(inp=inp / "a.txt", out=out / "b.txt", port=server)
    learned = shared_tmp / "learned"
    learned.mkdir(mode=0o777)
    learned.chmod(0o777)
    policy = learned / "job.toml"

    # 1. Learn, from the python base: the command runs, and the policy is written.
    proc = privsep(
        broker_user, "learn", "--policy", "python", "-o", str(policy), "--", str(PYTHON), "-c", job
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["pong", "job done"]
    text = policy.read_text()
    assert 'extends = "python"' in text
    assert 'allow = ["vmsplice"]' in text
    assert f'path = "{inp / "a.txt"}"\naccess = ["read"]\nrecursive = false' in text
    # A file the job created: the kernel cannot bind a file that does not exist yet, so the
    # grant learned is its directory, whole (the kernel serves it in the next run).
    assert (
        f'path = "{out}"\naccess = ["read", "write", "create", "truncate", "list"]\nrecursive = true' in text
    )
    assert f'host = "127.0.0.1"\nports = [{server}]' in text
    assert "unused.txt" not in text and f'"{inp}"' not in text  # only what was used, exactly

    # 2. Enforced: the learned policy runs the command as it is.
    (out / "b.txt").unlink()
    proc = privsep(broker_user, "run", "--policy", str(policy), "--", str(PYTHON), "-c", job)
    assert proc.returncode == 0, proc.stderr
    assert (out / "b.txt").read_text() == "HELLO\n"
    assert "denied" not in proc.stderr

    # 3. Minus one rule (the write grant): a clear denial that says how to allow it.
    without = learned / "without-write.toml"
    blocks = text.split("\n\n")
    without.write_text("\n\n".join(b for b in blocks if f'path = "{out}"' not in b))
    proc = privsep(broker_user, "run", "--policy", str(without), "--", str(PYTHON), "-c", job)
    assert proc.returncode == 1  # the job's own PermissionError
    assert "DeniedError" in proc.stderr and f"--allow-write={out / 'b.txt'}" in proc.stderr

    # 4. Minus the learned syscall: the denial names it and the line to add.
    without_syscall = learned / "without-syscall.toml"
    without_syscall.write_text(text.replace('allow = ["vmsplice"]', "allow = []"))
    proc = privsep(broker_user, "run", "--policy", str(without_syscall), "--", str(PYTHON), "-c", job)
    assert proc.returncode == 0, proc.stderr
    assert (
        'syscall vmsplice was denied once (EPERM); to allow it, add "vmsplice" to [syscalls] allow'
        in proc.stderr
    )


def test_learn_keeps_the_dangerous_set_denied(broker_user: str, shared_tmp: Path) -> None:
    policy = shared_tmp / "p.toml"
    shared_tmp.chmod(0o777)
    code = (
        "import ctypes, os\nl = ctypes.CDLL(None, use_errno=True)\n"
        "print(l.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())"
    )
    proc = privsep(
        broker_user, "learn", "--policy", "python", "-o", str(policy), "--", str(PYTHON), "-c", code
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["-1", "1"]  # EPERM, not run, not killed while learning
    assert "ptrace" not in policy.read_text()
    assert "syscall ptrace was denied once; privsep never allows it" in proc.stderr
    assert proc.returncode != 128 + signal.SIGSYS


def test_learn_turns_an_unmodified_programs_needs_into_kernel_served_grants(
    broker_user: str, shared_tmp: Path
) -> None:
    """cat, ls and a shell redirect know nothing of privsep: learn sees their opens and lookups."""
    inp, out = shared_tmp / "in", shared_tmp / "out"
    (inp / "sub").mkdir(parents=True)
    out.mkdir()
    (inp / "a.txt").write_text("a\n")
    (inp / "sub" / "b.txt").write_text("b\n")
    (inp / "unused.txt").write_text("never read\n")
    for path in [shared_tmp, *shared_tmp.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)
    script = f"cat {inp}/a.txt; ls {inp}/sub; echo made > {out}/new.txt; echo scratch > /tmp/mine"
    policy = shared_tmp / "learned.toml"
    proc = privsep(broker_user, "learn", "-o", str(policy), "--", "/bin/sh", "-c", script)
    assert "ls: cannot access" in proc.stderr  # learning grants nothing this run: ls's stat failed
    text = policy.read_text()
    assert f'path = "{inp}/a.txt"\naccess = ["read"]\nrecursive = false' in text
    assert f'path = "{inp}/sub"\naccess = ["read", "list"]\nrecursive = true' in text
    assert (
        f'path = "{out}"\naccess = ["read", "write", "create", "truncate", "list"]\nrecursive = true' in text
    )
    assert "unused.txt" not in text and '"/tmp"' not in text and "/tmp/mine" not in text
    (out / "new.txt").unlink()
    proc = privsep(broker_user, "run", "--policy", str(policy), "--", "/bin/sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "a\nb.txt\n" and (out / "new.txt").read_text() == "made\n"
    assert "denied" not in proc.stderr


def test_learn_never_writes_where_the_broker_imports_python_from(shared_tmp: Path) -> None:
    """The 8th audit: learn's permissive broker created ``colorsys.py`` for the child in a
    directory on its own sys.path (then learned a rule that run refuses)."""
    imports = shared_tmp / "imports"
    imports.mkdir(mode=0o777)
    policy = shared_tmp / "learned.toml"
    job = (
        "import os\n"
        f"try: open({str(imports / 'colorsys.py')!r}, 'w').close()\n"
        "except OSError as e: print('refused', e.errno)\n"
    )
    proc = subprocess.run(
        [str(PRIVSEP), "learn", "--policy", "python", "-o", str(policy), "--", str(PYTHON), "-c", job],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(imports)},  # on the broker's sys.path
        check=False,
    )
    assert not (imports / "colorsys.py").exists(), proc.stderr
    assert "refused" in proc.stdout, (proc.stdout, proc.stderr)
