"""Unmodified servers (issue 12): their own socket()/bind()/listen() work where --allow-bind grants.

The broker binds a socket of its own in the host's network namespace,
carrying the options the program set, and swaps it in. ``--listen`` hands
over listening sockets the systemd way. Every test runs with the broker as
root and as an unprivileged user.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, privsep_argv

SERVED = "served from the host through an unmodified server\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(broker_user: str, args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        privsep_argv(broker_user, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )


def _wait_listening(port: int, proc: subprocess.Popen[str], host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the server exited with {proc.returncode}: {err}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listens on {host}:{port}")


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_http_server_serves_a_file(
    broker_user: str, shared_tmp: Path, stopper: list[subprocess.Popen[str]]
) -> None:
    (shared_tmp / "page.txt").write_text(SERVED)
    (shared_tmp / "page.txt").chmod(0o644)
    port = _free_port()
    proc = _start(
        broker_user,
        [
            "--policy", "python", "--allow-bind", f"127.0.0.1:{port}", "--allow-read", str(shared_tmp), "--",
            str(PYTHON), "-m", "http.server", str(port),
            "--bind", "127.0.0.1", "--directory", str(shared_tmp),
        ],
    )  # fmt: skip
    stopper.append(proc)
    _wait_listening(port, proc)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/page.txt", timeout=10) as reply:
        assert reply.read().decode() == SERVED


SERVER_CODE = """
import errno, fcntl, json, os, socket, sys
port, other = int(sys.argv[1]), int(sys.argv[2])
out = {}
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setblocking(False)
fd = s.fileno()
s.bind(("127.0.0.1", port))
out["same_fd"] = s.fileno() == fd
out["reuseaddr"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
out["nodelay"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
out["nonblocking"] = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
out["cloexec"] = not s.get_inheritable()
out["name"] = list(s.getsockname())
s.listen(5)
for what, address in (("rebind", ("127.0.0.1", other)),):
    try:
        s.bind(address)
        out[what] = "bound"
    except OSError as exc:
        out[what] = exc.errno
for name, family, address in (
    ("denied", socket.AF_INET, ("127.0.0.1", other)),
    ("any_port", socket.AF_INET, ("127.0.0.1", 0)),
    ("v6", socket.AF_INET6, ("::1", port)),
):
    with socket.socket(family, socket.SOCK_STREAM) as t:
        try:
            t.bind(address)
            out[name] = "bound"
        except OSError as exc:
            out[name] = exc.errno
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
    try:
        u.bind(("127.0.0.1", port))
        out["udp"] = "bound"
    except OSError as exc:
        out["udp"] = exc.errno
print(json.dumps(out), flush=True)
s.setblocking(True)
c, _ = s.accept()
c.sendall(b"hello from the sandbox")
c.close()
"""


def test_bind_keeps_options_and_denies_what_no_rule_allows(
    broker_user: str, stopper: list[subprocess.Popen[str]]
) -> None:
    port, other = _free_port(), _free_port()
    proc = _start(
        broker_user,
        ["--policy", "python", "--allow-bind", f"127.0.0.1:{port}", "--",
         str(PYTHON), "-c", SERVER_CODE, str(port), str(other)],
    )  # fmt: skip
    stopper.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate()[1]
    out = json.loads(line)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        assert c.recv(100) == b"hello from the sandbox"
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out["same_fd"] is True
    assert out["reuseaddr"] == 1
    assert out["nodelay"] == 1
    assert out["nonblocking"] is True
    assert out["cloexec"] is True
    assert out["name"] == ["127.0.0.1", port]
    assert out["rebind"] == 22  # EINVAL: a socket the broker bound is never re-bound
    assert out["denied"] == 13  # EACCES
    assert out["any_port"] == 13  # port 0 only with a rule that says port 0
    assert out["v6"] == 13
    assert out["udp"] == 13
    assert f"denied bind 127.0.0.1:{other}/tcp" in err
    assert f"re-run with --allow-bind=127.0.0.1:{other}" in err
    assert f"denied bind 127.0.0.1:{port}/udp" in err
    assert "UDP binds are not brokered for unmodified programs" in err


def test_a_server_with_no_bind_grant_is_told_the_flag_that_works(
    broker_user: str, stopper: list[subprocess.Popen[str]]
) -> None:
    """No grant at all: ``python -m http.server`` fails, and privsep names the address and the flag.

    Its bind reaches the broker, which refuses it (nothing is bound on the host) and says
    which ``--allow-bind`` would work; run again with that flag, the same command serves.
    """
    port = _free_port()
    failed = subprocess.run(
        privsep_argv(broker_user, ["--policy", "python", "--", str(PYTHON), "-m", "http.server", str(port)]),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert failed.returncode != 0
    assert "Errno 13" in failed.stderr  # EACCES at bind(), not EAFNOSUPPORT at socket()
    fixes = [line for line in failed.stderr.splitlines() if "re-run with --allow-bind=" in line]
    assert len(fixes) == 1, failed.stderr
    flag = fixes[0].split("re-run with ", 1)[1].split()[0]
    assert flag in (f"--allow-bind=[::]:{port}", f"--allow-bind=0.0.0.0:{port}"), flag
    serve = ["--policy", "python", flag, "--", str(PYTHON), "-m", "http.server", str(port)]
    proc = _start(broker_user, serve)
    stopper.append(proc)
    _wait_listening(port, proc)


def test_port_80_needs_a_root_broker(broker_user: str, stopper: list[subprocess.Popen[str]]) -> None:
    code = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # carried: a previous run's TIME_WAIT
try:
    s.bind(("127.0.0.1", 80))
except OSError as exc:
    print("errno", exc.errno, flush=True)
    raise SystemExit(3)
s.listen()
print("listening", flush=True)
c, _ = s.accept()
c.sendall(b"port 80")
c.recv(1)  # the client closes first: the TIME_WAIT stays on its side, port 80 stays free
c.close()
"""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 80))
        except OSError:
            pytest.skip("something on this host already uses 127.0.0.1:80")
    proc = _start(
        broker_user, ["--policy", "python", "--allow-bind", "127.0.0.1:80", "--", str(PYTHON), "-c", code]
    )
    stopper.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        unprivileged = int(f.read()) <= 80
    if broker_user == "root" or unprivileged:
        assert line == "listening", proc.communicate()[1]
        with socket.create_connection(("127.0.0.1", 80), timeout=10) as c:
            assert c.recv(100) == b"port 80"
        assert proc.wait(30) == 0
    else:
        assert line == "errno 13"
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3
        assert "ports below" in err and "need a broker running as root" in err


ACTIVATED_CODE = """
import json, os, socket
assert os.environ["LISTEN_PID"] == str(os.getpid())
n = int(os.environ["LISTEN_FDS"])
socks = [socket.socket(fileno=3 + i) for i in range(n)]
print(json.dumps({
    "n": n,
    "names": os.environ["LISTEN_FDNAMES"],
    "privsep_fd": os.environ["PRIVSEP_FD"],
    "pid_is_not_1": os.getpid() != 1,
    "addresses": [list(s.getsockname()[:2]) for s in socks],
    "listening": [s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in socks],
}), flush=True)
from privsep import client
client.ping()
for s in socks:
    c, _ = s.accept()
    c.sendall(s.getsockname()[0].encode())
    c.close()
"""


def test_listen_socket_activation(
    broker_user: str, stopper: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    first, second = _free_port(), _free_port()
    audit = Path("/tmp") / f"privsep-listen-audit-{os.getpid()}-{broker_user}.jsonl"
    audit.unlink(missing_ok=True)
    proc = _start(
        broker_user,
        ["--policy", "python", "--listen", f"web=127.0.0.1:{first}", "--listen", f"[::1]:{second}",
         "--audit-log", str(audit), "--", str(PYTHON), "-c", ACTIVATED_CODE],
    )  # fmt: skip
    stopper.append(proc)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate()[1]
        out = json.loads(line)
        for host, port in (("127.0.0.1", first), ("::1", second)):
            with socket.create_connection((host, port), timeout=10) as c:
                assert c.recv(100) == host.encode()
        assert proc.wait(30) == 0
        assert out == {
            "n": 2,
            "names": "web:listen",
            "privsep_fd": "5",
            "pid_is_not_1": True,
            "addresses": [["127.0.0.1", first], ["::1", second]],
            "listening": [1, 1],
        }
        records = [json.loads(r) for r in audit.read_text().splitlines()]
        binds = [(r["target"], r["decision"]) for r in records if r["op"] == "bind"]
        assert (f"127.0.0.1:{first}/tcp", "allow") in binds
        assert (f"[::1]:{second}/tcp", "allow") in binds
    finally:
        audit.unlink(missing_ok=True)


RACE_CODE = """
import ctypes, json, os, socket, sys, threading
allowed, forbidden = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)  # ctypes calls drop the GIL: the threads truly race
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
mine = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
N = os.dup(mine.fileno())
stop = False

def flip():
    while not stop:
        libc.dup2(unix.fileno(), N)
        libc.dup2(mine.fileno(), N)

class SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_ushort),
                ("addr", ctypes.c_uint32), ("zero", ctypes.c_char * 8)]

def addr(port):
    loopback = int.from_bytes(socket.inet_aton("127.0.0.1"), "little")
    return SockaddrIn(socket.AF_INET, socket.htons(port), loopback)

bad = addr(forbidden)
counts = {}
t = threading.Thread(target=flip)
t.start()
for _ in range(2000):
    rc = libc.bind(N, ctypes.byref(bad), ctypes.sizeof(bad))
    key = "ok" if rc == 0 else str(ctypes.get_errno())
    counts[key] = counts.get(key, 0) + 1
    if rc == 0:  # bound something: never the forbidden address in the host (checked outside)
        libc.dup2(mine.fileno(), N)
stop = True
t.join()
good = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
good.bind(("127.0.0.1", allowed))
good.listen()
print(json.dumps(counts), flush=True)
c, _ = good.accept()
c.sendall(b"allowed")
c.recv(1)
"""


def test_swapping_the_fd_never_binds_a_forbidden_address(
    broker_user: str, stopper: list[subprocess.Popen[str]]
) -> None:
    """A thread flips fd N between a unix and a TCP socket while another binds N to a forbidden address."""
    allowed, forbidden = _free_port(), _free_port()
    proc = _start(
        broker_user,
        ["--policy", "python", "--allow-bind", f"127.0.0.1:{allowed}", "--",
         str(PYTHON), "-c", RACE_CODE, str(allowed), str(forbidden)],
    )  # fmt: skip
    stopper.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate()[1]
    counts = json.loads(line)
    with pytest.raises(ConnectionRefusedError):  # the child still holds whatever it got
        socket.create_connection(("127.0.0.1", forbidden), timeout=5).close()
    with socket.create_connection(("127.0.0.1", allowed), timeout=10) as c:
        assert c.recv(100) == b"allowed"
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    print(counts)  # e.g. {"13": ..., "22": ...}: the broker's EACCES, a unix socket's EINVAL
    assert "ok" not in counts, counts  # neither in the host nor (Landlock) in the child's own namespace
    assert counts.get("13", 0) > 0, counts  # the broker's refusals: EACCES
    assert f"denied bind 127.0.0.1:{forbidden}/tcp" in err


REUSEPORT_CODE = r"""
import json, socket, sys
port = int(sys.argv[1])
out = {}
mine = []
for i in range(2):  # the program's own two workers sharing the port: its own group
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind(("127.0.0.1", port)); s.listen(); mine.append(s); out[f"worker{i}"] = "bound"
    except OSError as e:
        out[f"worker{i}"] = e.errno
print(json.dumps(out), flush=True)
"""


def _reuseport_workers(broker_user: str, port: int) -> dict[str, object]:
    """REUSEPORT_CODE under a bind grant for 127.0.0.1:``port``: what each worker's bind did."""
    argv = ["--policy", "python", "--allow-bind", f"127.0.0.1:{port}", "--"]
    proc = subprocess.run(
        privsep_argv(broker_user, [*argv, str(PYTHON), "-c", REUSEPORT_CODE, str(port)]),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_so_reuseport_never_joins_a_host_services_port(broker_user: str) -> None:
    """A host service listening with SO_REUSEPORT keeps its port: the sandbox's bind is refused
    (EADDRINUSE) rather than put in the service's group, where it would take a share of its
    connections (fresh-eyes attack). The broker's socket is owned by the sandbox's host uid."""
    port = _free_port()
    host = socket.socket()
    host.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    host.bind(("127.0.0.1", port))
    host.listen()
    try:
        assert _reuseport_workers(broker_user, port) == {"worker0": 98, "worker1": 98}  # EADDRINUSE
    finally:
        host.close()


def test_so_reuseport_shares_a_port_among_the_sandboxs_own_sockets(broker_user: str) -> None:
    assert _reuseport_workers(broker_user, _free_port()) == {"worker0": "bound", "worker1": "bound"}
