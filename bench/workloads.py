"""What the benchmarks run, and the two ways they run it.

Every workload is a ``python -c`` program (the confined child's view holds
the interpreter and privsep, not this directory) that takes its arguments
as one JSON string in ``sys.argv[1]``, times itself with
``time.perf_counter_ns`` and prints one JSON line. The same program runs

- confined: started by an in-process :class:`Broker` (this process is the
  broker), stdout and stderr going to temporary files; or
- unconfined: a plain subprocess of the same interpreter, with the same
  small environment and working directory as the confined child gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from privsep._record import replace
from privsep.broker.loop import Broker, Child
from privsep.broker.services import Services
from privsep.plan.spawnplan import SpawnPlan

VENV_BIN = Path(sys.prefix) / "bin"
PYTHON = str(VENV_BIN / "python")
PRIVSEP = str(VENV_BIN / "privsep")
#: What an unconfined child gets: what the `python` policy gives a confined one.
PLAIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}


class BenchError(RuntimeError):
    """A workload did not run as it should: the numbers would mean nothing."""


# -- statistics -----------------------------------------------------------------------------------------

Stats = dict[str, Any]


def stats(values: Sequence[float]) -> Stats:
    """Median and min-max of one value per round."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def ratios(top: Sequence[float], bottom: Sequence[float]) -> Stats:
    return stats([a / b for a, b in zip(top, bottom, strict=True)])


def skipped(why: str) -> Stats:
    return {"skipped": why}


# -- the programs ---------------------------------------------------------------------------------------

_PRELUDE = """
import json, os, sys, time
ARGS = json.loads(sys.argv[1])
if ARGS.get("cpu") is not None:
    os.sched_setaffinity(0, {ARGS["cpu"]})
pc = time.perf_counter_ns

def summary(samples):
    s = sorted(samples)
    n = len(s)
    return {"n": n, "p50_us": s[(n - 1) // 2] / 1e3, "p99_us": s[int(0.99 * (n - 1))] / 1e3,
            "mean_us": sum(s) / n / 1e3}

def timed(fn, n, warmup, server_cpu=None):
    for _ in range(warmup):
        fn()
    samples = [0] * n
    server_before = server_cpu() if server_cpu else 0.0
    before = time.process_time()
    for i in range(n):
        t0 = pc()
        fn()
        samples[i] = pc() - t0
    out = summary(samples)
    out["cpu_us"] = (time.process_time() - before) / n * 1e6  # this process
    if server_cpu:
        out["broker_cpu_us"] = (server_cpu() - server_before) / n * 1e6
    return out
"""

#: Confined: open a granted file through the broker (and ping, the round trip without a file).
BROKERED_OPEN = (
    _PRELUDE
    + """
from privsep import client
path = ARGS["path"]

def op():
    client.open(path, "rb", buffering=0).close()

out = {"open": timed(op, ARGS["n"], ARGS["warmup"]), "ping": timed(client.ping, ARGS["n"], ARGS["warmup"])}
print(json.dumps(out))
"""
)

#: Unconfined: the physical floor of the same round trip. A forked server
#: (the broker's place) answers each request with openat + SCM_RIGHTS; no
#: validation, no policy, no encoding beyond the path's bytes.
RAW_FLOOR = (
    _PRELUDE
    + """
import array, socket
path = ARGS["path"]
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
pid = os.fork()
if pid == 0:
    ours.close()
    dirfd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    while True:
        msg = theirs.recv(4096)
        if not msg:
            os._exit(0)
        if msg == b"p":
            theirs.send(b"ok")
            continue
        if msg == b"t":  # the server's CPU time so far, for the per-operation cost
            theirs.send(repr(time.process_time()).encode())
            continue
        fd = os.open(os.path.basename(msg.decode()), os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
        theirs.sendmsg([b"ok"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        os.close(fd)
theirs.close()
request = path.encode()
space = socket.CMSG_SPACE(array.array("i").itemsize)

def op():
    ours.send(request)
    _, ancdata, _, _ = ours.recvmsg(64, space, socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    fds.frombytes(ancdata[0][2])
    open(fds[0], "rb", buffering=0).close()

def ping():
    ours.send(b"p")
    ours.recv(64)

def server_cpu():
    ours.send(b"t")
    return float(ours.recv(64))

n, warmup = ARGS["n"], ARGS["warmup"]
out = {"open": timed(op, n, warmup, server_cpu), "ping": timed(ping, n, warmup, server_cpu)}
ours.close()
os.waitpid(pid, 0)
print(json.dumps(out))
"""
)

#: Unconfined: open the file directly.
DIRECT_OPEN = (
    _PRELUDE
    + """
path = ARGS["path"]

def op():
    open(path, "rb", buffering=0).close()

print(json.dumps({"open": timed(op, ARGS["n"], ARGS["warmup"])}))
"""
)

#: An unmodified Python program: os.open + os.close of a file, no privsep import (the kernel_open section).
OS_OPEN = (
    _PRELUDE
    + """
path, flags = ARGS["path"], os.O_RDONLY | os.O_CLOEXEC

def op():
    os.close(os.open(path, flags))

print(json.dumps(timed(op, ARGS["n"], ARGS["warmup"])))
"""
)

#: Both ways: a syscall-heavy loop; the best of a few repeats, in ns per call.
SYSCALL_LOOP = (
    _PRELUDE
    + """
getppid, stat, target = os.getppid, os.stat, ARGS["stat_path"]
if ARGS.get("one_rule_filter"):
    # The cost of having any seccomp filter: allow everything but one syscall.
    import pyseccomp
    one_rule = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    one_rule.add_rule(pyseccomp.ERRNO(1), "ptrace")
    one_rule.load()

def per_call(fn, n, *args):
    best = None
    for _ in range(ARGS["repeats"]):
        t0 = pc()
        for _ in range(n):
            fn(*args)
        took = (pc() - t0) / n
        best = took if best is None else min(best, took)
    return best

out = {"getppid_ns": per_call(getppid, ARGS["n"]), "stat_ns": per_call(stat, ARGS["n"] // 4, target)}
print(json.dumps(out))
"""
)

#: Confined: say hello, wait for the go byte on stdin, then open as fast as possible for a while.
THROUGHPUT = (
    _PRELUDE
    + """
from privsep import client
path = ARGS["path"]
client.ping()
sys.stdin.buffer.read(1)
start = now = pc()
end = start + int(ARGS["seconds"] * 1e9)
count = 0
while now < end:
    client.open(path, "rb", buffering=0).close()
    count += 1
    now = pc()
print(json.dumps({"count": count, "start": start, "end": now}))
"""
)


# -- running them ---------------------------------------------------------------------------------------


def python_argv(code: str, args: dict[str, Any]) -> tuple[str, ...]:
    return (PYTHON, "-c", code, json.dumps(args))


def median_time(argv: Sequence[str], n: int, *, env: dict[str, str] | None = None) -> float:
    """Median wall time in ms of ``n`` runs of a whole command; raises BenchError if it fails."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        proc = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        times.append((time.perf_counter() - started) * 1e3)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-300:]
            raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {err}")
    return statistics.median(times)


def last_json(text: str, what: str) -> dict[str, Any]:
    lines = text.strip().splitlines()
    if not lines:
        raise BenchError(f"{what} printed nothing")
    try:
        value = json.loads(lines[-1])
    except ValueError as exc:
        raise BenchError(f"{what} printed no JSON: {lines[-1][:200]!r}") from exc
    if not isinstance(value, dict):
        raise BenchError(f"{what} printed {value!r}, not an object")
    return value


def run_plain(code: str, args: dict[str, Any], *, timeout: float = 120) -> dict[str, Any]:
    """Run a workload unconfined; return what it printed."""
    proc = subprocess.run(
        python_argv(code, args),
        env=PLAIN_ENV,
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"unconfined workload exited {proc.returncode}: {proc.stderr[-2000:]}")
    return last_json(proc.stdout, "unconfined workload")


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """This thread (the broker) on one CPU; children started meanwhile inherit it."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_cpu() -> int:
    """The CPU to pin to: the last one this process may use (CPU 0 takes most interrupts)."""
    return max(os.sched_getaffinity(0))


@dataclass(eq=False)
class Confined:
    """One confined workload started by an in-process broker."""

    child: Child
    out: IO[bytes]
    err: IO[bytes]
    go: int | None  # the write end of its stdin, for THROUGHPUT

    def result(self) -> dict[str, Any]:
        outcome = self.child.outcome
        self.out.seek(0)
        self.err.seek(0)
        out, err = self.out.read().decode(errors="replace"), self.err.read().decode(errors="replace")
        self.out.close()
        self.err.close()
        if outcome is None or outcome.how != "exited" or outcome.returncode != 0:
            raise BenchError(f"confined workload ended {outcome}: {err[-2000:]}")
        return last_json(out, "confined workload")


def start_confined(
    broker: Broker, plan: SpawnPlan, services: Services | None, argv: Sequence[str], *, gate: bool = False
) -> Confined:
    """Start ``argv`` under ``plan`` (its policy, filter and view; only the command changes)."""
    # Files, not pipes: nobody has to read them while the broker serves. Confined.result closes them.
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115
    stdin_r, go = os.pipe2(os.O_CLOEXEC) if gate else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), None)
    try:
        child = broker.start(
            replace(plan, argv=tuple(argv)),
            services=services,
            timeout=600,
            stdio=(stdin_r, out.fileno(), err.fileno()),
        )
    except BaseException:
        out.close()
        err.close()
        if go is not None:
            os.close(go)
        raise
    finally:
        os.close(stdin_r)
    return Confined(child, out, err, go)


def drive(broker: Broker, children: Sequence[Confined], *, limit: float = 300) -> list[dict[str, Any]]:
    """Serve until every child has ended; return what each printed."""
    deadline = time.monotonic() + limit
    while any(c.child.outcome is None for c in children):
        if time.monotonic() > deadline:
            raise BenchError(f"confined workloads still running after {limit:g} s")
        broker.run_once(max_wait=1.0)
    return [c.result() for c in children]


def release(children: Sequence[Confined]) -> None:
    """Send the go byte to every gated child."""
    for c in children:
        if c.go is not None:
            with contextlib.suppress(OSError):
                os.write(c.go, b"g")
            os.close(c.go)
            c.go = None


def run_confined(
    broker: Broker, plan: SpawnPlan, services: Services | None, code: str, args: dict[str, Any]
) -> dict[str, Any]:
    """One confined workload, start to end."""
    return drive(broker, [start_confined(broker, plan, services, python_argv(code, args))])[0]


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for {pid}")


def mem_available_kb() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise BenchError("no MemAvailable in /proc/meminfo")
