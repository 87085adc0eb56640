"""The shipped policies, each running the real program it is for, through the real ``privsep run``.

The tests run twice (``broker_user``): broker as root, and broker as an
unprivileged user on a user namespace. The policies are used the way their
comment headers tell users to use them:

- ``plugin``: a Python plugin reads an input directory and writes an output
  directory through the broker, given with ``--allow-read IN --allow-write
  OUT`` or by a policy that extends ``plugin``; the network is denied.
- ``web-daemon``: a small HTTP server gets its listening socket from
  ``client.bind``, serves files from the document root through the broker
  and reads its TLS key as a secret; a client in the test fetches pages.
  The document root and key are the test's own (a policy that extends
  ``web-daemon``), and so is the port, except in the root-only tests that
  bind the shipped ports 80 and 443 (each skipped if the port is taken).
- ``cli-tool``: coreutils programs read files given on stdin or listed in
  ``[view] read`` by a policy that extends ``cli-tool``.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PRIVSEP, PYTHON, RunPrivsep, json_output

# --- plugin --------------------------------------------------------------------------------------

#: A plugin: summarise every file of IN into OUT/summary.json, and try the network twice.
PLUGIN = r"""
import errno, json, os, socket, sys, time
from privsep import client

inp, out, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
summary = {}
for name in sorted(client.listdir(inp)):
    with client.open(f"{inp}/{name}") as f:
        summary[name] = len(f.read().splitlines())
with client.open(f"{out}/summary.json", "w") as f:
    json.dump(summary, f)
try:
    client.connect("127.0.0.1", port)
    brokered = "connected"
except PermissionError as exc:
    brokered = str(exc)
try:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.connect(("127.0.0.1", port))
    direct = None
except OSError as exc:
    direct = exc.errno
try:
    open(f"{inp}/a.txt").read()
    view = "read"
except OSError as exc:
    view = exc.errno
with open("/tmp/scratch", "w") as f:
    f.write("scratch")
kids = 0
while True:  # up to the sandbox's process limit (its pids cgroup)
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    kids += 1
print(json.dumps({"summary": summary, "brokered": brokered, "direct": direct, "view": view,
                  "processes": 1 + kids}))
"""


@dataclass(frozen=True)
class Dirs:
    inp: Path
    out: Path


@pytest.fixture
def dirs(shared_tmp: Path, broker_uid: int) -> Dirs:
    d = Dirs(shared_tmp / "in", shared_tmp / "out")
    d.inp.mkdir()
    (d.inp / "a.txt").write_text("one\ntwo\n")
    (d.inp / "b.txt").write_text("three\n")
    d.out.mkdir()
    os.chown(d.out, broker_uid, broker_uid)
    return d


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP server nobody may reach from the sandbox: the test checks it got no connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


@pytest.mark.parametrize("how", ["flags", "policy"])
def test_plugin_reads_its_input_writes_its_output_and_has_no_network(
    run_privsep: RunPrivsep, dirs: Dirs, shared_tmp: Path, listener: socket.socket, how: str
) -> None:
    if how == "flags":
        args = ["--policy", "plugin", "--allow-read", str(dirs.inp), "--allow-write", str(dirs.out)]
    else:
        policy = shared_tmp / "my-plugin.toml"
        policy.write_text(
            'extends = "plugin"\n'
            f'[[files]]\npath = "{dirs.inp}"\naccess = ["read", "list"]\n'
            f'[[files]]\npath = "{dirs.out}"\naccess = ["read", "write", "create", "truncate", "list"]\n'
        )
        args = ["--policy", str(policy)]
    port = listener.getsockname()[1]
    proc = run_privsep(*args, "--", str(PYTHON), "-c", PLUGIN, str(dirs.inp), str(dirs.out), str(port))
    result = json_output(proc)
    assert result["summary"] == {"a.txt": 2, "b.txt": 1}
    assert json.loads((dirs.out / "summary.json").read_text()) == {"a.txt": 2, "b.txt": 1}
    assert "no [[connect]] rule allows this address" in str(result["brokered"])
    # Its own socket lives in the sandbox's empty network namespace: the broker refuses the
    # connect as that namespace would, and reports it with the flag that would allow it.
    assert result["direct"] == errno.ENETUNREACH
    assert result["view"] == "read"  # not in the view: a plain open() is brokered by the same rule
    assert result["processes"] == 32  # the plugin policy's own limit: itself and 31 children
    assert f"privsep: denied connect 127.0.0.1:{port}" in proc.stderr
    with pytest.raises(BlockingIOError):
        listener.accept()


def test_plugin_cannot_write_its_input(run_privsep: RunPrivsep, dirs: Dirs) -> None:
    code = (
        "import sys\nfrom privsep import client\n"
        "try:\n    client.open(sys.argv[1] + '/a.txt', 'w')\nexcept PermissionError as e:\n    print(e)\n"
    )
    proc = run_privsep(
        "--policy", "plugin", "--allow-read", str(dirs.inp), "--allow-write", str(dirs.out),
        "--", str(PYTHON), "-c", code, str(dirs.inp),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"Re-run with --allow-write={dirs.inp}/a.txt" in proc.stdout
    assert (dirs.inp / "a.txt").read_text() == "one\ntwo\n"


# --- web-daemon ----------------------------------------------------------------------------------

#: A web server: its listening socket from the broker, its pages from the document root through
#: the broker, its TLS key as a secret. Serves ARGS["requests"] requests, then reports.
SERVER = r"""
import hashlib, http.server, json, posixpath, socketserver, sys
from privsep import client

host, port, root, requests = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
key = client.secret("tls_key")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = posixpath.normpath(root + self.path)
        try:
            with client.open(path, "rb") as f:
                body = f.read()
        except PermissionError:
            self.send_error(403)
            return
        except FileNotFoundError:
            self.send_error(404)
            return
        except Exception:
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.HTTPServer):
    def __init__(self, sock):  # the socket comes from the broker: the child could not make it
        socketserver.BaseServer.__init__(self, sock.getsockname(), Handler)
        self.socket = sock


server = Server(client.bind(host, port))
for _ in range(requests):
    server.handle_request()
denied = {}
for what, call in (("bind", lambda: client.bind("127.0.0.1", 1)),
                   ("connect", lambda: client.connect("127.0.0.1", port))):
    try:
        call().close()
        denied[what] = None
    except PermissionError as exc:
        denied[what] = str(exc)
print(json.dumps({"key_sha256": hashlib.sha256(key).hexdigest(), "denied": denied}))
"""

PAGE = b"<h1>hello from the sandbox</h1>\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n"


@dataclass(frozen=True)
class Site:
    root: Path
    key: Path
    policy: Path


def _site(shared_tmp: Path, broker_uid: int, *, extra_bind: tuple[str, int] | None) -> Site:
    root = shared_tmp / "www"
    root.mkdir()
    (root / "index.html").write_bytes(PAGE)
    (shared_tmp / "private.txt").write_text("not for the web\n")
    tls = shared_tmp / "tls"
    tls.mkdir(mode=0o700)
    key = tls / "key.pem"
    key.write_bytes(KEY)
    key.chmod(0o600)
    for path in (tls, key):
        os.chown(path, broker_uid, broker_uid)
    text = (
        'extends = "web-daemon"\n'
        f'[[files]]\npath = "{root}"\naccess = ["read", "list"]\n'
        f'[secrets]\ntls_key = "file:{key}"\n'
    )
    if extra_bind is not None:
        text += f'[[bind]]\nhost = "{extra_bind[0]}"\nport = {extra_bind[1]}\n'
    policy = shared_tmp / "site.toml"
    policy.write_text(text)
    return Site(root, key, policy)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, deadline: float) -> tuple[int, bytes]:
    """GET ``path`` from 127.0.0.1:``port``, waiting for the server to listen."""
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


def _serve_and_fetch(run: RunPrivsep, site: Site, host: str, port: int) -> dict[str, object]:
    paths = ["/index.html", "/missing.html", "/../private.txt"]
    # web-daemon has no timeout of its own: a server that never got its requests ends anyway.
    args = ["--policy", str(site.policy), "--timeout", "60", "--", str(PYTHON), "-c", SERVER]
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run, *args, host, str(port), str(site.root), str(len(paths)))
        deadline = time.monotonic() + 30
        try:
            pages = [_get(port, path, deadline) for path in paths]
        except OSError as exc:
            proc = future.result(timeout=90)
            raise AssertionError(f"{exc}; the server: exit {proc.returncode}\n{proc.stderr}") from exc
        proc = future.result(timeout=90)
    assert pages[0] == (200, PAGE)
    assert pages[1][0] == 404
    assert pages[2][0] == 403  # /private.txt is beside the document root: no rule covers it
    assert b"not for the web" not in pages[2][1]
    result = json_output(proc)
    assert result["key_sha256"] == hashlib.sha256(KEY).hexdigest()
    assert KEY.decode() not in proc.stdout + proc.stderr
    return result


def test_web_daemon_serves_its_document_root_on_a_brokered_socket(
    run_privsep: RunPrivsep, shared_tmp: Path, broker_uid: int
) -> None:
    port = free_port()
    site = _site(shared_tmp, broker_uid, extra_bind=("127.0.0.1", port))
    result = _serve_and_fetch(run_privsep, site, "127.0.0.1", port)
    denied = result["denied"]
    assert isinstance(denied, dict)
    assert "no [[bind]] rule allows this address, port and protocol" in str(denied["bind"])
    assert "no [[connect]] rule allows this address" in str(denied["connect"])


@pytest.mark.parametrize("port", [80, 443])
def test_web_daemon_binds_its_shipped_ports_with_a_root_broker(
    run_as_root: RunPrivsep, shared_tmp: Path, port: int
) -> None:
    """The shipped [[bind]] rules themselves: a root broker binds the low port for the server."""
    if os.geteuid() != 0:
        pytest.skip("binding a port below 1024 needs a root broker")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the broker does
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104 - the shipped rule's own address
        except OSError as exc:
            pytest.skip(f"port {port} is taken on this machine: {exc.strerror}")
    site = _site(shared_tmp, 0, extra_bind=None)
    _serve_and_fetch(run_as_root, site, "0.0.0.0", port)  # noqa: S104


# --- cli-tool ------------------------------------------------------------------------------------


def test_cli_tool_reads_stdin_and_writes_stdout(run_privsep: RunPrivsep) -> None:
    proc = run_privsep("--policy", "cli-tool", "--", "/usr/bin/wc", "-l", input="a\nb\nc\n")
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "3", "")


@pytest.fixture
def files(shared_tmp: Path) -> tuple[Path, Path, Path]:
    """A file shown to the tool, its unshown sibling, and a policy that extends cli-tool."""
    shown = shared_tmp / "data.txt"
    shown.write_text("pear\napple\nfig\n")
    hidden = shared_tmp / "hidden.txt"
    hidden.write_text("hidden\n")
    policy = shared_tmp / "tool.toml"
    policy.write_text(f'extends = "cli-tool"\n[view]\nread = ["{shown}"]\n')
    return shown, hidden, policy


def test_cli_tool_reads_the_files_its_policy_shows_and_no_other(
    run_privsep: RunPrivsep, files: tuple[Path, Path, Path]
) -> None:
    shown, hidden, policy = files
    proc = run_privsep("--policy", str(policy), "--", "/usr/bin/sha256sum", str(shown))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{hashlib.sha256(shown.read_bytes()).hexdigest()}  {shown}\n"
    proc = run_privsep("--policy", str(policy), "--", "/usr/bin/sha256sum", str(hidden), "/etc/shadow")
    assert proc.returncode == 1
    assert f"{hidden}: No such file or directory" in proc.stderr
    assert "/etc/shadow: No such file or directory" in proc.stderr
    # Each hidden path on the command line gets one line with a fix that would work.
    assert (
        f"privsep: {hidden} is outside the sandbox; re-run with --allow-read={hidden.parent}" in proc.stderr
    )
    assert "privsep: /etc/shadow is outside the sandbox; re-run with --allow-read=/etc/shadow" in proc.stderr


def test_cli_tool_has_a_scratch_tmp_and_cannot_write_elsewhere(
    run_privsep: RunPrivsep, files: tuple[Path, Path, Path]
) -> None:
    shown, _, policy = files
    script = 'sort "$1" > /tmp/sorted && cat /tmp/sorted && echo changed > "$1"'
    proc = run_privsep("--policy", str(policy), "--", "/usr/bin/sh", "-c", script, "sh", str(shown))
    assert proc.stdout == "apple\nfig\npear\n"
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr
    assert shown.read_text() == "pear\napple\nfig\n"


def test_cli_tool_processes_are_limited(run_privsep: RunPrivsep) -> None:
    """16 processes for the whole sandbox (its pids cgroup): the command and 15 children."""
    fork_all = (
        "import os, time\nkids = 0\nwhile True:\n    try:\n        pid = os.fork()\n"
        "    except OSError as e:\n        print(kids, e.errno); break\n"
        "    if pid == 0:\n        time.sleep(60); os._exit(0)\n    kids += 1\n"
    )
    proc = run_privsep("--policy", "cli-tool", "--", "/usr/bin/python3", "-c", fork_all)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["15", "11"]  # EAGAIN
    assert "re-run with --processes=32" in proc.stderr


def test_a_policy_whose_syscalls_cannot_start_a_sandbox_is_refused_not_left_to_hang(
    shared_tmp: Path,
) -> None:
    """Fresh-eyes audit 18: a policy without [syscalls] (and no extends) allows nothing, so the
    command's own report of its seccomp listener (a sendmsg, under the filter) became a
    notification for a broker that had no listener yet: every start hung until --timeout.
    Planning refuses it now, naming what is missing and the fix."""
    policy = shared_tmp / "bare.toml"
    policy.write_text('[view]\nread = ["/usr"]\nread_if_exists = ["/bin", "/lib", "/lib64"]\n')
    policy.chmod(0o644)
    proc = subprocess.run(
        [str(PRIVSEP), "run", "--no-cache", "--policy", str(policy), "--timeout", "20", "--", "/bin/true"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 125, proc.stderr
    assert "lacks sendmsg, close, execve, exit_group" in proc.stderr
    assert 'extends = "minimal"' in proc.stderr
