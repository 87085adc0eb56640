"""Transparent brokering (issue 8): unmodified programs get their files and connections from the broker.

``cat``, ``ls``, ``curl`` and a Python child that never imports
``privsep.client`` run with broker-served ``[[files]]`` grants
(``serve = "broker"``: ``--allow-read``/``--allow-write`` are served by the
kernel, see test_kernel_grants.py) and ``--allow-connect``. What the rules
allow works; what they do not fails with EACCES and shows up in the denial
report, as it would through the client. Every test runs with the broker as
root and as an unprivileged user.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import socketserver
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NONROOT_ID, PRIVSEP, PYTHON, RunPrivsep, json_output

SECRET = "the host's secret, never to be read\n"  # noqa: S105 - a marker, not a password


@pytest.fixture
def tree(shared_tmp: Path, broker_user: str) -> Path:
    """shared_tmp/in/a.txt (granted), shared_tmp/out/ (writable grant), shared_tmp/outside/secret.txt."""
    (shared_tmp / "in").mkdir()
    (shared_tmp / "in" / "a.txt").write_text("hello brokered\n")
    (shared_tmp / "out").mkdir()
    (shared_tmp / "outside").mkdir()
    (shared_tmp / "outside" / "secret.txt").write_text(SECRET)
    for path in shared_tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    if broker_user == "nonroot":
        os.chown(shared_tmp / "out", NONROOT_ID, NONROOT_ID)
    return shared_tmp


def brokered(tree: Path, *, base: str = "minimal", write: bool = False) -> tuple[str, str]:
    """``--policy FILE`` granting tree/in (and tree/out when ``write``) through the broker."""
    rules = f'[[files]]\npath = "{tree}/in"\naccess = ["read", "list"]\nserve = "broker"\n'
    if write:
        rules += (
            f'[[files]]\npath = "{tree}/out"\n'
            'access = ["read", "write", "create", "append", "truncate", "list"]\nserve = "broker"\n'
        )
    policy = tree / f"brokered-{base}{'-rw' if write else ''}.toml"
    policy.write_text(f'extends = "{base}"\n{rules}')
    policy.chmod(0o644)
    return "--policy", str(policy)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tree: Path) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 serving ``tree``; yields its port."""

    def handler(*args: object) -> _Quiet:
        return _Quiet(*args, directory=str(tree))  # type: ignore[arg-type]

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- files ---------------------------------------------------------------------------------------


def test_cat_reads_a_granted_file(run_privsep: RunPrivsep, tree: Path) -> None:
    proc = run_privsep("--allow-read", str(tree / "in"), "--", "cat", str(tree / "in" / "a.txt"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello brokered\n"
    assert "denied" not in proc.stderr


def test_cat_of_an_ungranted_file_is_eacces_and_reported(run_privsep: RunPrivsep, tree: Path) -> None:
    secret = tree / "outside" / "secret.txt"
    proc = run_privsep(*brokered(tree), "--", "cat", str(secret), "/etc/shadow")
    assert proc.returncode == 1
    assert SECRET not in proc.stdout
    # The host's /tmp is hidden behind the child's own (minimal has a private /tmp): the kernel
    # answers ENOENT there, and the exit report names the path on the command line with its fix.
    assert f"cat: {secret}: No such file or directory" in proc.stderr
    assert (
        f"privsep: {secret} is outside the sandbox; re-run with --allow-read={secret.parent}" in proc.stderr
    )
    # Outside the view, the broker refuses and reports what it decided.
    assert "cat: /etc/shadow: Permission denied" in proc.stderr
    assert "denied open /etc/shadow" in proc.stderr
    assert "re-run with --allow-read=/etc/shadow" in proc.stderr


def test_ls_still_lists_the_view_while_brokering_is_on(run_privsep: RunPrivsep, tree: Path) -> None:
    # Paths inside the child's own view are handed back to the kernel, not reported.
    proc = run_privsep(*brokered(tree), "--", "ls", "/usr")
    assert proc.returncode == 0, proc.stderr
    assert "bin" in proc.stdout.split()
    assert "denied" not in proc.stderr


def test_python_opens_without_the_client(run_privsep: RunPrivsep, tree: Path, broker_user: str) -> None:
    code = f"""
import ctypes, json, os
tree = {str(tree)!r}
out = {{}}
with open(tree + "/in/a.txt") as f:
    out["read"] = f.read()
    out["inheritable"] = os.get_inheritable(f.fileno())
fd = ctypes.CDLL(None).open((tree + "/in/a.txt").encode(), os.O_RDONLY)  # no O_CLOEXEC (os.open adds it)
out["os_open_inheritable"] = os.get_inheritable(fd)
os.close(fd)
with open(tree + "/out/new.txt", "w") as f:
    f.write("written by an unmodified program\\n")
with open(tree + "/out/new.txt", "a") as f:
    f.write("appended\\n")
fd = os.open(tree + "/out/inplace.bin", os.O_WRONLY | os.O_CREAT, 0o644)  # open-or-create, no O_TRUNC
os.write(fd, b"xyz")
os.close(fd)
os.chdir("/usr")
with open("../" + tree.lstrip("/") + "/in/a.txt") as f:  # relative to the cwd
    out["relative"] = f.read()
for name in ("/in/missing.txt", "/outside/secret.txt", "/in/a.txt"):
    try:
        with open(tree + name, "w" if name.endswith("a.txt") else "r") as f:
            out[name] = "opened"
    except OSError as exc:
        out[name] = exc.errno
print(json.dumps(out))
"""
    proc = run_privsep(
        *brokered(tree, base="python", write=True), "--", str(PYTHON), "-c", code,
    )  # fmt: skip
    out = json_output(proc)
    assert out["read"] == "hello brokered\n"
    assert out["relative"] == "hello brokered\n"
    assert out["inheritable"] is False
    assert out["os_open_inheritable"] is True
    assert out["/in/missing.txt"] == 2  # ENOENT: granted, but not there
    assert out["/outside/secret.txt"] == 2  # ENOENT: the host's /tmp is behind the child's own
    assert out["/in/a.txt"] == 13  # read-only grant, opened for writing
    new = tree / "out" / "new.txt"
    assert new.read_text() == "written by an unmodified program\nappended\n"
    assert stat.S_IMODE(new.stat().st_mode) == 0o600  # created 0600 by the broker, whatever the mode asked
    assert (tree / "out" / "inplace.bin").read_bytes() == b"xyz"
    assert f"denied open {tree}/in/a.txt" in proc.stderr  # opened for writing


def test_brokered_opens_are_audited_like_client_requests(run_privsep: RunPrivsep, tree: Path) -> None:
    log = tree / "out" / "audit.jsonl"
    proc = run_privsep(
        *brokered(tree), "--audit-log", str(log), "--",
        "cat", str(tree / "in" / "a.txt"), "/etc/shadow",
    )  # fmt: skip
    assert proc.returncode == 1
    records = [json.loads(line) for line in log.read_text().splitlines()]
    opens = [(r["op"], r["target"], r["decision"]) for r in records if r["op"] == "open"]
    assert ("open", f"{tree}/in/a.txt", "allow") in opens
    assert ("open", "/etc/shadow", "deny") in opens
    assert not any(target.startswith("/usr/") for _, target, _ in opens)  # the view is not brokered


def test_directories_and_o_path_are_never_handed_out(run_privsep: RunPrivsep, tree: Path) -> None:
    code = f"""
import json, os
out = {{}}
for name, flags in (("dir", os.O_RDONLY | os.O_DIRECTORY), ("path", os.O_PATH), ("plain_dir", os.O_RDONLY)):
    target = {str(tree / "in")!r} if name != "path" else {str(tree / "in" / "a.txt")!r}
    try:
        os.close(os.open(target, flags))
        out[name] = "opened"
    except OSError as exc:
        out[name] = exc.errno
print(json.dumps(out))
"""
    proc = run_privsep(*brokered(tree, base="python"), "--", str(PYTHON), "-c", code)
    out = json_output(proc)
    assert out == {"dir": 13, "path": 13, "plain_dir": 13}


def test_transparent_files_can_be_turned_off(run_privsep: RunPrivsep, tree: Path) -> None:
    policy = tree / "off.toml"
    policy.write_text(
        f'extends = "minimal"\n[transparent]\nfiles = false\n'
        f'[[files]]\npath = "{tree}/in"\naccess = ["read"]\nserve = "broker"\n'
    )
    policy.chmod(0o644)
    proc = run_privsep("--policy", str(policy), "--", "cat", str(tree / "in" / "a.txt"))
    assert proc.returncode == 1
    assert "No such file or directory" in proc.stderr  # not in the view, and nobody asked the broker
    assert "denied" not in proc.stderr


# --- network -------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_reaches_an_allowed_server_only(run_privsep: RunPrivsep, http_root: int) -> None:
    allowed = f"127.0.0.1:{http_root}"
    proc = run_privsep("--allow-connect", allowed, "--", "curl", "-sS", f"http://{allowed}/in/a.txt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello brokered\n"
    other = _free_port()
    proc = run_privsep("--allow-connect", allowed, "--", "curl", "-sS", f"http://127.0.0.1:{other}/")
    assert proc.returncode == 7  # curl: could not connect
    assert f"denied connect 127.0.0.1:{other}/tcp" in proc.stderr
    assert f"re-run with --allow-connect=127.0.0.1:{other}" in proc.stderr


def test_python_sockets_without_the_client(run_privsep: RunPrivsep, http_root: int) -> None:
    other = _free_port()
    code = f"""
import errno, json, socket
out = {{}}
s = socket.create_connection(("127.0.0.1", {http_root}), timeout=10)  # blocking connect, with a timeout
s.sendall(b"GET /in/a.txt HTTP/1.0\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
out["body"] = data.split(b"\\r\\n\\r\\n", 1)[1].decode()
out["peer"] = list(s.getpeername())
out["cloexec_kept"] = not s.get_inheritable()
try:  # a socket the broker connected is never re-aimed
    s.connect(("127.0.0.1", {other}))
except OSError as exc:
    out["reconnect"] = exc.errno
s.close()
n = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
n.setblocking(False)
out["nonblocking"] = n.connect_ex(("127.0.0.1", {http_root}))
out["still_nonblocking"] = not n.getblocking()
n.close()
for name, address in (("denied", ("127.0.0.1", {other})), ("v6", ("::1", {http_root}))):
    fam = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as t:
        out[name] = t.connect_ex(address)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
    out["udp"] = u.connect_ex(("127.0.0.1", 53))
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as f:
    try:
        f.sendto(b"x", socket.MSG_FASTOPEN, ("127.0.0.1", {http_root}))
        out["fastopen"] = "sent"
    except OSError as exc:
        out["fastopen"] = exc.errno
print(json.dumps(out))
"""
    proc = run_privsep(
        "--allow-connect", f"127.0.0.1:{http_root}", "--policy", "python", "--", str(PYTHON), "-c", code
    )
    out = json_output(proc)
    assert out["body"] == "hello brokered\n"
    assert out["peer"] == ["127.0.0.1", http_root]
    assert out["cloexec_kept"] is True
    assert out["reconnect"] == 106  # EISCONN
    assert out["nonblocking"] == 0  # connected by the broker before the call returned
    assert out["still_nonblocking"] is True
    assert out["denied"] == 13  # EACCES
    assert out["v6"] == 13  # ::1 is not 127.0.0.1
    assert out["udp"] == 13
    assert out["fastopen"] == 1  # EPERM: a connect hidden in a send
    assert f"denied connect 127.0.0.1:{other}/tcp" in proc.stderr
    assert "UDP is not brokered for unmodified programs" in proc.stderr


def test_refused_connects_leave_no_fd_in_the_broker(shared_tmp: Path) -> None:
    """Every fd the broker takes to serve a connect (the pidfd, its copy of the child's socket) is closed.

    A UDP connect is refused after the broker took both. A leak would let a child fill the
    broker's fd table one connect at a time (checked: dropping the pidfd's close fails this test).
    """
    code = """
import socket, sys
def burst(n):
    for _ in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.connect_ex(("127.0.0.1", 53))
burst(1)
print("one", flush=True); sys.stdin.readline()
burst(200)
print("many", flush=True); sys.stdin.readline()
"""
    argv = [
        str(PRIVSEP),
        "run",
        "--allow-connect",
        "127.0.0.1:1",
        "--policy",
        "python",
        "--",
        str(PYTHON),
        "-c",
        code,
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        counts = []
        for expected in ("one", "many"):
            assert proc.stdout.readline().strip() == expected
            counts.append(len(os.listdir(f"/proc/{proc.pid}/fd")))
            proc.stdin.write("\n")
            proc.stdin.flush()
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert counts[1] - counts[0] < 5, counts  # 200 more refusals, no more fds
