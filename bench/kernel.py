"""Kernel-served grants, measured as an unmodified program sees them (issue 12).

Two sections of ``python -m bench``:

- **kernel_open**: an unmodified program opens and closes one granted file
  ``n`` times and times each open+close itself (p50/p99). Two programs: a
  small C loop compiled with ``cc`` at bench time (the floor: nothing between
  the loop and the syscall) and a Python loop of ``os.open``/``os.close``.
  Each runs, within one round, (a) under ``privsep run --allow-read`` (the
  grant bound into the view, Landlock beneath it), (b) on the host, (c) under
  ``bwrap`` with the same file bound, and (d) under ``privsep run`` with the
  same directory granted ``serve = "broker"``, where each open is a seccomp
  notification that the ``privsep run`` process answers. Every command is
  pinned, with everything it starts, to one CPU: for (d) the broker and the
  program then share it (a cross-CPU wake-up costs ~40 us on a VM). (d) runs
  unpinned too, as a user would run it. The C loop runs (e) under the floor of
  (d): the same seccomp-notify round trip answered by a plain Python server
  with the same system calls and no policy (``RAW_NOTIFY``).
- **connect**: an unmodified program (a C loop) connects a TCP socket to a
  listener on 127.0.0.1 ``n`` times and times each ``connect()`` itself, on
  the host and under ``privsep run --allow-connect 127.0.0.1:PORT``, where
  each connect is a seccomp notification: the broker connects a socket of its
  own (on a worker thread) and swaps it in for the program's. Pinned like
  kernel_open, and unpinned. The listener is a thread of the bench process
  that accepts and closes; the loop closes each socket with ``SO_LINGER`` 0
  (no TIME_WAIT left behind).
- **cli**: the wall time of a whole command with a read and a write grant,
  ``privsep run --allow-read IN --allow-write OUT -- cp IN/f OUT/g``, against
  ``bwrap`` with the binds ``minimal`` gives plus the same two, against the
  bare ``cp``, and against ``privsep run -- /bin/true`` in the same round
  (what the grants add).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workloads import (
    OS_OPEN,
    PLAIN_ENV,
    PRIVSEP,
    BenchError,
    last_json,
    median_time,
    pin_cpu,
    pinned,
    python_argv,
    ratios,
    skipped,
    stats,
)

#: What both C loops share: the clock, and the one JSON line of their samples' statistics.
_C_TIMING = r"""
static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static int report(long long *s, long n, long long sum) {
    qsort(s, (size_t)n, sizeof *s, cmp);
    printf("{\"n\": %ld, \"p50_us\": %.3f, \"p99_us\": %.3f, \"mean_us\": %.3f}\n", n,
           s[(n - 1) / 2] / 1e3, s[(long)(0.99 * (n - 1))] / 1e3, sum / (double)n / 1e3);
    return 0;
}
"""

#: The C floor: open+close PATH N times after WARMUP untimed ones, each timed with
#: CLOCK_MONOTONIC; prints one JSON line like the Python workloads.
OPENLOOP_C = (
    r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
"""
    + _C_TIMING
    + r"""
static int once(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(path);
        return -1;
    }
    return close(fd);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PATH N WARMUP\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long n = atol(argv[2]), warmup = atol(argv[3]);
    long long *s = malloc(sizeof *s * (size_t)(n > 0 ? n : 1)), sum = 0;
    if (s == NULL || n < 1)
        return 2;
    for (long i = 0; i < warmup; i++)
        if (once(path) != 0)
            return 1;
    for (long i = 0; i < n; i++) {
        long long t0 = now_ns();
        if (once(path) != 0)
            return 1;
        s[i] = now_ns() - t0;
        sum += s[i];
    }
    return report(s, n, sum);
}
"""
)


#: The transparent-connect loop: connect a fresh TCP socket to HOST:PORT N times after WARMUP
#: untimed ones, timing connect() alone; each socket is closed with SO_LINGER 0 (no TIME_WAIT).
CONNECTLOOP_C = (
    r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
"""
    + _C_TIMING
    + r"""
static long long once(const struct sockaddr_in *to) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        perror("socket");
        return -1;
    }
    long long t0 = now_ns();
    if (connect(s, (const struct sockaddr *)to, sizeof *to) != 0) {
        perror("connect");
        return -1;
    }
    long long took = now_ns() - t0;
    struct linger off = {1, 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, &off, sizeof off);
    close(s);
    return took;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s HOST PORT N WARMUP\n", argv[0]);
        return 2;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1)
        return 2;
    long n = atol(argv[3]), warmup = atol(argv[4]);
    long long *s = malloc(sizeof *s * (size_t)(n > 0 ? n : 1)), sum = 0;
    if (s == NULL || n < 1)
        return 2;
    for (long i = 0; i < warmup; i++)
        if (once(&to) < 0)
            return 1;
    for (long i = 0; i < n; i++) {
        s[i] = once(&to);
        if (s[i] < 0)
            return 1;
        sum += s[i];
    }
    return report(s, n, sum);
}
"""
)


#: The floor of a broker-served open: the same seccomp-notify round trip in plain Python, no policy.
#: A Python server starts ARGV with a filter that sends open/openat to it, and answers each as
#: privsep's broker does, with the same system calls (epoll_wait, NOTIF_RECV, process_vm_readv,
#: NOTIF_ID_VALID, openat, NOTIF_ADDFD with FLAG_SEND, close) and nothing else: no policy, no
#: pinned grants, no audit, no model. Prints what the program printed.
RAW_NOTIFY = r"""
import ctypes, errno, fcntl, json, os, select, socket, struct, subprocess, sys
ARGS = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
filt = lambda code, k, jt=0, jf=0: struct.pack("=HBBI", code, jt, jf, k)
ALLOW, NOTIFY = 0x7FFF0000, 0x7FC00000
prog = b"".join([
    filt(0x20, 4), filt(0x15, 0xC000003E, 1, 0), filt(0x06, ALLOW),  # another arch: allowed
    filt(0x20, 0), filt(0x15, 257, 2, 0), filt(0x15, 2, 1, 0), filt(0x06, ALLOW), filt(0x06, NOTIFY),
])
buf = ctypes.create_string_buffer(prog, len(prog))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

def confine():  # in the child, before execve: nothing here may open a file
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    fd = libc.syscall(317, 1, 8, ctypes.byref(fprog))  # SECCOMP_SET_MODE_FILTER, NEW_LISTENER
    theirs.sendmsg([b"l"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])

proc = subprocess.Popen(ARGS["argv"], preexec_fn=confine, close_fds=False, stdout=subprocess.PIPE)
_, anc, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(4))
listener = struct.unpack("i", anc[0][2][:4])[0]
NOTIF = struct.Struct("=QIIiIQ6Q")
ADDFD, ID, RESP = struct.Struct("=QIIII"), struct.Struct("=Q"), struct.Struct("=QqiI")
vm_readv = libc.process_vm_readv
vm_readv.restype = ctypes.c_ssize_t
vm_readv.argtypes = (
    ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong
)
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def read_path(pid, at):
    size = 4096 - at % 4096
    out = ctypes.create_string_buffer(size)
    local, remote = Iov(ctypes.addressof(out), size), Iov(at, size)
    got = vm_readv(pid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
    raw = out.raw[:max(got, 0)]
    if b"\0" not in raw:
        raise OSError(errno.ENAMETOOLONG, "a floor serves short paths only")
    return raw[:raw.index(b"\0")]

ep = select.epoll()
ep.register(listener, select.EPOLLIN)
pidfd = os.pidfd_open(proc.pid)
ep.register(pidfd, select.EPOLLIN)
while True:
    if any(fd == pidfd for fd, _ in ep.poll()):
        break
    req = bytearray(NOTIF.size)
    try:
        fcntl.ioctl(listener, 0xC0502100, req, True)  # NOTIF_RECV
    except OSError:
        continue
    nid, pid, _, nr, _, _, *args = NOTIF.unpack(req)
    path_at, flags, mode = (args[0], args[1], args[2]) if nr == 2 else (args[1], args[2], args[3])
    try:
        path = read_path(pid, path_at)
        fcntl.ioctl(listener, 0x40082102, bytearray(ID.pack(nid)), True)  # NOTIF_ID_VALID
        fd = os.open(path, (flags & 0xFFFFFFFF) | os.O_CLOEXEC, mode & 0o7777)
    except OSError as exc:
        fcntl.ioctl(listener, 0xC0182101, bytearray(RESP.pack(nid, 0, -(exc.errno or errno.EIO), 0)), True)
        continue
    try:
        cloexec = os.O_CLOEXEC if flags & os.O_CLOEXEC else 0
        fcntl.ioctl(listener, 0x40182103, bytearray(ADDFD.pack(nid, 2, fd, 0, cloexec)), True)  # ADDFD, SEND
    except OSError:
        pass
    finally:
        os.close(fd)
out, _ = proc.communicate()
if proc.returncode:
    sys.exit(f"the program exited {proc.returncode}")
sys.stdout.write(out.decode())
"""


@dataclass(frozen=True)
class Tree:
    """The files both sections use, in one temporary directory (mode 0755: the child runs as 65534)."""

    root: Path
    bin_dir: Path  # the compiled loop; granted read-only (kernel) in every privsep run
    data: Path  # the directory granted to the open loops
    target: Path  # data/f, the file they open
    in_dir: Path  # cli: read grant, holds f
    out_dir: Path  # cli: write grant
    openloop: Path | None  # None: no C compiler (why in ``no_c``)
    connectloop: Path | None  # the same
    no_c: str | None
    broker_policy: Path  # data served by the broker, for the C loop (extends minimal)
    broker_policy_py: Path  # the same, for the Python loop (extends python)


def _broker_policy(base: str, bin_dir: Path, data: Path) -> str:
    return (
        f"# bench: {data} served by the broker; every open() of it is a seccomp notification.\n"
        f'extends = "{base}"\n'
        "[view]\n"
        f'read = ["{bin_dir}"]\n'
        "[[files]]\n"
        f'path = "{data}"\n'
        'access = ["read"]\n'
        'serve = "broker"\n'
    )


def _compile(src_dir: Path, out: Path, source: str) -> str | None:
    """Build a C loop; why it could not be built, or None."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler (cc) on PATH"
    src = src_dir / f"{out.name}.c"
    src.write_text(source, encoding="ascii")
    proc = subprocess.run(
        [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return f"cc failed: {proc.stderr.strip()[-300:]}"
    return None


@contextlib.contextmanager
def kernel_tree() -> Iterator[Tree]:
    root = Path(tempfile.mkdtemp(prefix="privsep-kernel-"))
    try:
        paths = {name: root / name for name in ("bin", "data", "in", "out", "src")}
        for p in paths.values():
            p.mkdir()
        for p in (root, *paths.values()):
            p.chmod(0o755)
        target = paths["data"] / "f"
        target.write_bytes(b"x" * 64)
        (paths["in"] / "f").write_bytes(os.urandom(64 * 1024))
        for f in (target, paths["in"] / "f"):
            f.chmod(0o644)
        openloop: Path | None = paths["bin"] / "openloop"
        connectloop: Path | None = paths["bin"] / "connectloop"
        assert openloop is not None and connectloop is not None
        no_c = _compile(paths["src"], openloop, OPENLOOP_C) or _compile(
            paths["src"], connectloop, CONNECTLOOP_C
        )
        if no_c is not None:
            openloop = connectloop = None
        broker_policy, broker_policy_py = root / "broker.toml", root / "broker-python.toml"
        broker_policy.write_text(_broker_policy("minimal", paths["bin"], paths["data"]), encoding="utf-8")
        broker_policy_py.write_text(_broker_policy("python", paths["bin"], paths["data"]), encoding="utf-8")
        yield Tree(
            root, paths["bin"], paths["data"], target, paths["in"], paths["out"], openloop, connectloop, no_c,
            broker_policy, broker_policy_py,
        )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- bwrap ----------------------------------------------------------------------------------------------


def _merged_usr() -> list[str]:
    """bwrap arguments for the top-level links and directories ``minimal`` shows (/bin, /lib64...)."""
    out: list[str] = []
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            out += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            out += ["--ro-bind", name, name]
    return out


def bwrap_argv(read: Sequence[Path | str], write: Sequence[Path | str], command: Sequence[str]) -> list[str]:
    """bwrap with the view ``minimal`` gives (/usr, the merged-usr links, /proc, /dev, /tmp), plus binds."""
    argv = ["bwrap", "--ro-bind", "/usr", "/usr", *_merged_usr()]
    if os.path.exists("/etc/ld.so.cache"):
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for p in read:
        argv += ["--ro-bind", str(p), str(p)]
    for p in write:
        argv += ["--bind", str(p), str(p)]
    return [*argv, "--unshare-all", "--die-with-parent", "--", *command]


def _bwrap_missing() -> str | None:
    if shutil.which("bwrap") is None:
        return "bwrap is not installed"
    proc = subprocess.run(bwrap_argv([], [], ["/bin/true"]), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"bwrap does not run here: {proc.stderr.strip()[-300:]}"
    return None


# -- kernel_open ----------------------------------------------------------------------------------------


def _run_json(argv: Sequence[str], what: str) -> dict[str, Any]:
    proc = subprocess.run(
        argv, env=PLAIN_ENV, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BenchError(f"{what} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return last_json(proc.stdout, what)


#: (key, pinned) for every way each loop runs, in the order they run within a round.
VARIANTS = (
    ("privsep_kernel", True),
    ("host", True),
    ("bwrap", True),
    ("privsep_broker", True),
    ("privsep_broker_unpinned", False),
    ("raw_notify", True),  # the C loop only: the floor of the broker-served open (RAW_NOTIFY)
)


def _loop_argvs(tree: Tree, program: str, n: int, nb: int, warmup: int) -> dict[str, list[str]]:
    """The command line of each variant; ``nb`` opens for the broker-served ones (they are ~50x slower)."""
    if program == "c":
        assert tree.openloop is not None
        loop = [str(tree.openloop), str(tree.target), str(n), str(warmup)]
        loop_b = [str(tree.openloop), str(tree.target), str(nb), str(warmup)]
        policy, policy_b = ["--allow-read", str(tree.bin_dir)], ["--policy", str(tree.broker_policy)]
        binds: list[Path | str] = [tree.bin_dir, tree.data]
    else:
        loop = list(python_argv(OS_OPEN, {"path": str(tree.target), "n": n, "warmup": warmup}))
        loop_b = list(python_argv(OS_OPEN, {"path": str(tree.target), "n": nb, "warmup": warmup}))
        policy, policy_b = ["--policy", "python"], ["--policy", str(tree.broker_policy_py)]
        binds = [sys.prefix, tree.data]  # the venv; the interpreter lives under /usr here
        if not sys.base_prefix.startswith("/usr"):
            binds.append(sys.base_prefix)
    broker = [PRIVSEP, "run", *policy_b, "--", *loop_b]
    argvs = {
        "privsep_kernel": [PRIVSEP, "run", *policy, "--allow-read", str(tree.data), "--", *loop],
        "host": loop,
        "bwrap": bwrap_argv(binds, [], loop),
        "privsep_broker": broker,
        "privsep_broker_unpinned": broker,
    }
    if program == "c":
        argvs["raw_notify"] = list(python_argv(RAW_NOTIFY, {"argv": loop_b}))
    return argvs


def bench_kernel_open(
    tree: Tree, log: Callable[[str], None], *, rounds: int, n: int, n_broker: int, warmup: int
) -> dict[str, Any]:
    cpu = pin_cpu()
    no_bwrap = _bwrap_missing()
    programs = {"c": tree.no_c, "python": None}
    keys = [k for k, _ in VARIANTS if not (k == "bwrap" and no_bwrap)]
    samples = {
        prog: {k: {"p50_us": [], "p99_us": []} for k in keys if k != "raw_notify" or prog == "c"}
        for prog, why in programs.items()
        if why is None
    }  # type: dict[str, dict[str, dict[str, list[float]]]]
    for r in range(rounds):
        log(f"kernel_open: round {r + 1}/{rounds}")
        for prog, by_key in samples.items():
            argvs = _loop_argvs(tree, prog, n, n_broker, warmup)
            for key, pin in VARIANTS:
                if key not in by_key:
                    continue
                with pinned(cpu if pin else None):
                    got = _run_json(argvs[key], f"kernel_open {prog} {key}")
                for p in ("p50_us", "p99_us"):
                    by_key[key][p].append(float(got[p]))
    out: dict[str, Any] = {"cpu": cpu, "opens": n, "broker_opens": n_broker, "warmup": warmup}
    for prog, why in programs.items():
        if why is not None:
            out[prog] = skipped(why)
            continue
        by_key = samples[prog]
        sec: dict[str, Any] = {k: {p: stats(v) for p, v in ps.items()} for k, ps in by_key.items()}
        p50 = {k: ps["p50_us"] for k, ps in by_key.items()}
        sec["kernel_vs_host_p50"] = ratios(p50["privsep_kernel"], p50["host"])
        sec["broker_vs_host_p50"] = ratios(p50["privsep_broker"], p50["host"])
        sec["broker_vs_kernel_p50"] = ratios(p50["privsep_broker"], p50["privsep_kernel"])
        if "raw_notify" in p50:
            sec["raw_notify_vs_host_p50"] = ratios(p50["raw_notify"], p50["host"])
            sec["broker_vs_raw_notify_p50"] = ratios(p50["privsep_broker"], p50["raw_notify"])
        if no_bwrap:
            sec["bwrap"] = skipped(no_bwrap)
        else:
            sec["kernel_vs_bwrap_p50"] = ratios(p50["privsep_kernel"], p50["bwrap"])
            sec["bwrap_vs_host_p50"] = ratios(p50["bwrap"], p50["host"])
        out[prog] = sec
    return out


# -- connect --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tcp_listener() -> Iterator[int]:
    """A listener on 127.0.0.1 whose connections a thread accepts and closes; yields its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(socket.SOMAXCONN)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed: the section is over
            conn.close()

    thread = threading.Thread(target=serve, name="bench-connect-listener", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)  # wakes accept()
        server.close()
        thread.join(timeout=10)


#: (key, pinned) for every way the connect loop runs, in the order they run within a round.
CONNECT_VARIANTS = (("host", True), ("privsep_broker", True), ("privsep_broker_unpinned", False))


def bench_connect(
    tree: Tree, log: Callable[[str], None], *, rounds: int, n: int, n_broker: int, warmup: int
) -> dict[str, Any]:
    if tree.connectloop is None:
        assert tree.no_c is not None
        return skipped(tree.no_c)
    cpu = pin_cpu()
    samples: dict[str, dict[str, list[float]]] = {
        k: {"p50_us": [], "p99_us": []} for k, _ in CONNECT_VARIANTS
    }
    with _tcp_listener() as port:
        loop = [str(tree.connectloop), "127.0.0.1", str(port)]
        broker = [
            PRIVSEP, "run", "--allow-read", str(tree.bin_dir), "--allow-connect", f"127.0.0.1:{port}", "--",
            *loop, str(n_broker), str(warmup),
        ]  # fmt: skip
        argvs = {
            "host": [*loop, str(n), str(warmup)],
            "privsep_broker": broker,
            "privsep_broker_unpinned": broker,
        }
        for r in range(rounds):
            log(f"connect: round {r + 1}/{rounds}")
            for key, pin in CONNECT_VARIANTS:
                with pinned(cpu if pin else None):
                    got = _run_json(argvs[key], f"connect {key}")
                for p in ("p50_us", "p99_us"):
                    samples[key][p].append(float(got[p]))
    out: dict[str, Any] = {"cpu": cpu, "connects": n, "broker_connects": n_broker, "warmup": warmup}
    out.update({k: {p: stats(v) for p, v in ps.items()} for k, ps in samples.items()})
    out["broker_vs_host_p50"] = ratios(samples["privsep_broker"]["p50_us"], samples["host"]["p50_us"])
    return out


# -- cli ------------------------------------------------------------------------------------------------


def bench_cli(tree: Tree, log: Callable[[str], None], *, rounds: int, per_round: int) -> dict[str, Any]:
    src, dst = tree.in_dir / "f", tree.out_dir / "g"
    cp = ["/bin/cp", str(src), str(dst)]
    no_bwrap = _bwrap_missing()
    commands: dict[str, list[str]] = {
        "privsep_run": [
            PRIVSEP, "run", "--allow-read", str(tree.in_dir), "--allow-write", str(tree.out_dir), "--", *cp
        ],
        "privsep_run_true": [PRIVSEP, "run", "--", "/bin/true"],
        "bare": cp,
    }  # fmt: skip
    if no_bwrap is None:
        commands["bwrap"] = bwrap_argv([tree.in_dir], [tree.out_dir], cp)
    times: dict[str, list[float]] = {k: [] for k in commands}
    for r in range(rounds):
        log(f"cli: round {r + 1}/{rounds}")
        for key, argv in commands.items():
            times[key].append(median_time(argv, per_round, env=PLAIN_ENV))
    out: dict[str, Any] = {
        "command": "cp IN/f OUT/g (64 KiB)",
        "runs_per_round": per_round,
        **{k: stats(v) for k, v in times.items()},
        "vs_bare": ratios(times["privsep_run"], times["bare"]),
        "vs_privsep_run_true": ratios(times["privsep_run"], times["privsep_run_true"]),
    }
    if no_bwrap is None:
        out["vs_bwrap"] = ratios(times["privsep_run"], times["bwrap"])
        out["bwrap_vs_bare"] = ratios(times["bwrap"], times["bare"])
    else:
        out["bwrap"] = skipped(no_bwrap)
    return out
