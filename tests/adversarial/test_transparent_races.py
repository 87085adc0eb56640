"""Argument races against transparent brokering (issue 8).

A seccomp notification carries pointers, not values: the path of an
``open`` and the address of a ``connect`` stay in the child's memory, where
its other threads can rewrite them while the broker decides. A broker that
checks the memory and then lets the kernel run the call ("continue")
decides on one value and performs another: sandlock's supervisor was
escaped that way. privsep reads the arguments once and performs the call
on its own copy.

``racer.c`` (below) is an unmodified C program: one thread flips a buffer
between an allowed and a forbidden value as fast as it can while the main
thread calls ``open`` (or ``connect``) on it in a loop. Whatever the
timing, the forbidden file must never be read and the forbidden server must
never see a connection, while the allowed ones are reached, and the denials
are EACCES. The forbidden file is tried twice: outside the child's view,
and inside it behind a ``deny`` rule (there a "check, then continue" broker
would hand it over, because the kernel itself could open it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, privsep_argv

ITERATIONS = 3000
SECRET = "SECRET: must never be read through the race\n"  # noqa: S105 - a marker, not a password

RACER_C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char path[512];
static char allowed_path[512], forbidden_path[512];
static struct sockaddr_in addr;
static unsigned short allowed_port, forbidden_port;
static volatile int stop;
static volatile unsigned long flips;

/* Keep the compiler from dropping the first of two stores, and give each value some time. */
#define BARRIER() __asm__ volatile("" ::: "memory")
static void linger(void) { for (volatile int i = 0; i < 200; i++) BARRIER(); }

static void *flip_path(void *unused) {
    (void)unused;
    while (!stop) {
        memcpy(path, forbidden_path, sizeof path);
        BARRIER();
        linger();
        memcpy(path, allowed_path, sizeof path);
        BARRIER();
        linger();
        flips++;
    }
    return NULL;
}

static void *flip_port(void *unused) {
    (void)unused;
    while (!stop) {
        addr.sin_port = forbidden_port;
        BARRIER();
        linger();
        addr.sin_port = allowed_port;
        BARRIER();
        linger();
        flips++;
    }
    return NULL;
}

static int swap_fd = 100, unix_fd, host_fd;

static void *swap_socket(void *unused) {
    (void)unused;
    while (!stop) {
        dup2(unix_fd, swap_fd);
        linger();
        dup2(host_fd, swap_fd);
        linger();
        flips++;
    }
    return NULL;
}

/* connect(fd N) while another thread swaps N between the child's own unix socket and a
 * socket the broker connected in the host's network namespace: AF_UNSPEC (which would
 * disconnect the host socket) and the forbidden address alternate. */
static int swap(int n) {
    long ok = 0, refused = 0, leaked = 0;
    struct sockaddr_in unspec = {0};
    unspec.sin_family = AF_UNSPEC;
    host_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(host_fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 3; }
    struct sockaddr_in before, after;
    socklen_t len = sizeof before;
    if (getpeername(host_fd, (struct sockaddr *)&before, &len) != 0) return 4;
    unix_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_in forbidden = addr;
    forbidden.sin_port = forbidden_port;
    pthread_t thread;
    pthread_create(&thread, NULL, swap_socket, NULL);
    for (int i = 0; i < n; i++) {
        struct sockaddr_in *to = i % 2 ? &forbidden : &unspec;
        if (connect(swap_fd, (struct sockaddr *)to, sizeof *to) == 0) {
            if (i % 2) leaked++; else ok++;
        } else {
            refused++;
        }
    }
    stop = 1;
    pthread_join(thread, NULL);
    len = sizeof after;
    int connected = getpeername(host_fd, (struct sockaddr *)&after, &len) == 0
        && after.sin_port == before.sin_port;
    printf("{\"ok\": %ld, \"refused\": %ld, \"leaked\": %ld, \"still_connected\": %d, \"flips\": %lu}\n",
           ok, refused, leaked, connected, flips);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int n = atoi(argv[4]);
    long ok = 0, denied = 0, leaked = 0, other = 0;
    pthread_t thread;
    if (strcmp(argv[1], "open") == 0) {
        strncpy(allowed_path, argv[2], sizeof allowed_path - 1);
        strncpy(forbidden_path, argv[3], sizeof forbidden_path - 1);
        memcpy(path, allowed_path, sizeof path);
        pthread_create(&thread, NULL, flip_path, NULL);
        for (int i = 0; i < n; i++) {
            int fd = open(path, O_RDONLY);
            if (fd < 0) {
                if (errno == EACCES) denied++; else other++;
                continue;
            }
            char buf[64] = {0};
            if (read(fd, buf, sizeof buf - 1) > 0 && strncmp(buf, "SECRET", 6) == 0) leaked++; else ok++;
            close(fd);
        }
    } else if (strcmp(argv[1], "swap") == 0) {
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons((unsigned short)atoi(argv[2]));
        forbidden_port = htons((unsigned short)atoi(argv[3]));
        return swap(n);
    } else {
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        allowed_port = htons((unsigned short)atoi(argv[2]));
        forbidden_port = htons((unsigned short)atoi(argv[3]));
        addr.sin_port = allowed_port;
        pthread_create(&thread, NULL, flip_port, NULL);
        for (int i = 0; i < n; i++) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0) { other++; continue; }
            if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
                if (errno == EACCES) denied++; else other++;
                close(s);
                continue;
            }
            char buf[16] = {0};
            if (read(s, buf, sizeof buf - 1) > 0 && strncmp(buf, "FORBIDDEN", 9) == 0) leaked++; else ok++;
            close(s);
        }
    }
    stop = 1;
    pthread_join(thread, NULL);
    printf("{\"ok\": %ld, \"denied\": %ld, \"leaked\": %ld, \"other\": %ld, \"flips\": %lu}\n",
           ok, denied, leaked, other, flips);
    return 0;
}
"""


@pytest.fixture
def arena(shared_tmp: Path) -> Path:
    """The racer binary and the files it races over, readable by every uid."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: .ci/setup installs it")
    (shared_tmp / "racer.c").write_text(RACER_C)
    subprocess.run(
        ["gcc", "-O2", "-pthread", "-o", str(shared_tmp / "racer"), str(shared_tmp / "racer.c")], check=True
    )
    (shared_tmp / "view").mkdir()
    (shared_tmp / "view" / "ok.txt").write_text("allowed\n")
    (shared_tmp / "view" / "secret.txt").write_text(SECRET)
    (shared_tmp / "outside").mkdir()
    (shared_tmp / "outside" / "secret.txt").write_text(SECRET)
    for path in shared_tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() or path.name == "racer" else 0o644)
    return shared_tmp


def _race(broker_user: str, arena: Path, args: list[str], *racer: str) -> dict[str, int]:
    proc = subprocess.run(
        privsep_argv(broker_user, [*args, "--", str(arena / "racer"), *racer, str(ITERATIONS)]),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("forbidden", ["outside/secret.txt", "view/secret.txt"])
def test_flipping_the_path_never_opens_the_forbidden_file(
    broker_user: str, arena: Path, forbidden: str
) -> None:
    policy = arena / "race.toml"
    policy.write_text(
        # Broker-served, and no private /tmp (arena lies under /tmp): every open of the race
        # reaches the broker, which is what this test attacks.
        f'extends = "minimal"\n[view]\ntmp = false\nread = ["{arena}/racer", "{arena}/view"]\n'
        f'[[files]]\npath = "{arena}/view/ok.txt"\naccess = ["read"]\nserve = "broker"\n'
        f'[[files]]\npath = "{arena}/view/secret.txt"\ndeny = true\n'
    )
    policy.chmod(0o644)
    result = _race(
        broker_user, arena, ["--policy", str(policy)], "open", f"{arena}/view/ok.txt", f"{arena}/{forbidden}"
    )
    assert result["leaked"] == 0, result
    # The race really ran both ways: some opens saw the allowed path, some the forbidden one.
    assert result["ok"] > 0 and result["denied"] > 0, result
    assert result["flips"] > ITERATIONS, result


class _Server:
    """A loopback TCP server that greets every connection with its name and counts them."""

    def __init__(self, name: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._name = name
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with contextlib.suppress(OSError):
                conn.sendall(self._name + b"\n")
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    allowed, forbidden = _Server(b"ALLOWED"), _Server(b"FORBIDDEN")
    yield allowed, forbidden
    allowed.close()
    forbidden.close()


def _race_connect(
    broker_user: str, arena: Path, mode: str, allowed: _Server, forbidden: _Server
) -> dict[str, int]:
    """The racer's ``mode`` against the two servers, with a connect rule for the allowed one only."""
    policy = arena / "race.toml"
    policy.write_text(f'extends = "minimal"\n[view]\nread = ["{arena}/racer"]\n')
    policy.chmod(0o644)
    rule = ["--policy", str(policy), "--allow-connect", f"127.0.0.1:{allowed.port}"]
    return _race(broker_user, arena, rule, mode, str(allowed.port), str(forbidden.port))


def test_flipping_the_address_never_connects_elsewhere(
    broker_user: str, arena: Path, servers: tuple[_Server, _Server]
) -> None:
    allowed, forbidden = servers
    result = _race_connect(broker_user, arena, "connect", allowed, forbidden)
    assert result["leaked"] == 0, result
    assert forbidden.accepted == 0, result
    assert result["ok"] > 0 and result["denied"] > 0, result
    assert allowed.accepted == result["ok"]


def test_swapping_the_socket_never_lets_the_kernel_connect_the_hosts(
    broker_user: str, arena: Path, servers: tuple[_Server, _Server]
) -> None:
    """Rule 2: the broker decides on its copy of fd N and connects that very copy.

    A broker that checks the copy ("a unix socket: the kernel's business") and then
    answers "continue" lets the kernel look fd N up again: a thread that swapped in the
    socket the broker had connected in the host's network namespace got it disconnected
    (AF_UNSPEC), and then connectable to any address of the host's (only Landlock's TCP
    rule stopped that). Neither may happen, whatever the timing.
    """
    allowed, forbidden = servers
    result = _race_connect(broker_user, arena, "swap", allowed, forbidden)
    assert result["still_connected"] == 1, f"the host socket was disconnected through the race: {result}"
    assert result["leaked"] == 0 and forbidden.accepted == 0, result
    assert result["flips"] > ITERATIONS // 10, result


SHUT_LISTENER_CODE = """
import json, socket, sys
s = socket.socket(fileno=3)  # the --listen socket: the broker's, in the host's network namespace
s.shutdown(socket.SHUT_RD)  # a TCP listener shut down for reading is closed, and connectable again
out = {}
for name, call in (
    ("fastopen", lambda: s.sendto(b"x", socket.MSG_FASTOPEN, ("127.0.0.1", int(sys.argv[1])))),
    ("connect", lambda: s.connect(("127.0.0.1", int(sys.argv[1])))),
):
    try:
        call()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
print(json.dumps(out))
"""


def test_a_host_socket_the_child_holds_is_never_connected_by_the_kernel(
    broker_user: str, arena: Path, servers: tuple[_Server, _Server]
) -> None:
    """The broker refuses a connect on a socket of its own (EISCONN), it never leaves it to Landlock.

    ``--listen`` hands the child a listening socket of the host's network namespace.
    Shut down, it is closed and could be connected anywhere the host reaches.
    """
    _, forbidden = servers
    (arena / "shut.py").write_text(SHUT_LISTENER_CODE)
    (arena / "shut.py").chmod(0o644)
    port = _free_port()
    proc = subprocess.run(
        privsep_argv(
            broker_user,
            ["--policy", "python", "--allow-read", str(arena / "shut.py"), "--listen", f"127.0.0.1:{port}",
             "--", str(PYTHON), str(arena / "shut.py"), str(forbidden.port)],
        ),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"fastopen": errno.EPERM, "connect": errno.EISCONN}, out
    assert forbidden.accepted == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STALE_TID_CHILD = r"""
import os, socket, sys, threading, time, signal
shared, target = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX); srv.bind("/tmp/l"); srv.listen(0)
first = socket.socket(socket.AF_UNIX); first.connect("/tmp/l")  # the backlog is full now
def slow():  # holds this sandbox's one slow-call slot until the listener accepts
    socket.socket(socket.AF_UNIX).connect("/tmp/l")
threading.Thread(target=slow, daemon=True).start()
time.sleep(0.5)
s = socket.socket(socket.AF_UNIX)  # shared with the forked caller
pid = os.fork()
if pid == 0:
    try:
        s.connect(target)  # outside the view: queued behind the slow connect
    except OSError:
        pass
    os._exit(0)
open(shared + "/caller", "w").write(str(pid))
time.sleep(0.5)
os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
while not os.path.exists(shared + "/go"):
    time.sleep(0.05)
srv.accept()  # the slow connect ends: the queued one runs now
time.sleep(1)
try:
    print("connected to", s.getpeername())
except OSError as e:
    print("not connected", e.errno)
"""


def _host_pid_of(nspid: str) -> int:
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                fields = line.split()
                if fields[:1] == ["NSpid:"] and len(fields) == 3 and fields[2] == nspid:
                    return int(fields[1])
    raise AssertionError(f"no process with pid {nspid} in a sandbox")


def test_a_queued_unix_connect_never_resolves_in_another_processs_root(shared_tmp: Path) -> None:
    """Second fresh-eyes audit: a unix connect queued behind a slow one read /proc/TID/root when
    its turn came; the caller was dead by then, and a host process had its pid, so the path was
    resolved in the host's root and the child's socket reached a root-only host daemon."""
    shared = shared_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "child.py").write_text(STALE_TID_CHILD)
    target = shared_tmp / "daemon.sock"
    daemon = socket.socket(socket.AF_UNIX)
    daemon.bind(str(target))
    target.chmod(0o777)
    daemon.listen(5)
    daemon.settimeout(0.1)
    child = subprocess.Popen(
        [str(PYTHON.parent / "privsep"), "run", "--policy", "python", "--allow-write", str(shared),
         "--", str(PYTHON), str(shared / "child.py"), str(shared), str(target)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    victim = None
    try:
        deadline = time.monotonic() + 30
        while not (shared / "caller").exists():
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        time.sleep(0.1)
        host_pid = _host_pid_of((shared / "caller").read_text().strip())
        while Path(f"/proc/{host_pid}").exists():
            time.sleep(0.02)
        for _ in range(50):  # a host process takes the dead caller's pid (natural churn, hurried)
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(host_pid - 1))
            victim = subprocess.Popen(["sleep", "60"])
            if victim.pid == host_pid:
                break
            victim.kill()
            victim.wait()
        assert victim is not None and victim.pid == host_pid, "could not reuse the caller's pid"
        (shared / "go").touch()
        out, _ = child.communicate(timeout=60)
        reached = True
        try:
            daemon.accept()[0].close()
        except TimeoutError:
            reached = False
        assert not reached and "not connected" in out, out
    finally:
        daemon.close()
        if victim is not None:
            victim.kill()
            victim.wait()
        if child.poll() is None:
            child.kill()
            child.wait()
