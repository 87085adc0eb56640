"""privsep against its peers and its physical floor, in one run: ``.venv/bin/python -m bench``.

Prints Markdown tables and writes JSON (``bench/results.json``, or
``--out PATH``). Each number is the median over ``--rounds`` rounds, with the
min-max of the rounds beside it; ratios are taken within a round (the two
sides measured seconds apart) and then summarised the same way. Must run as
root from the repository (the broker is this process; the scale section
starts 3000 processes). Sections:

1. roundtrip: ``privsep.client.open`` of a granted file in a confined child,
   p50/p99 of many opens timed in the child, against the raw floor (plain
   Python: SEQPACKET socketpair, a forked server doing openat + SCM_RIGHTS)
   and a direct ``open`` in an unconfined process; pinned (broker and child on
   one CPU: a cross-CPU wake-up costs ~40 us on a VM) and unpinned.
2. throughput: brokered opens per second, 1, 4 and 16 children, one broker.
3. spawn: ``Sandbox.run(["/bin/true"])`` in a running process against
   ``bwrap ... /bin/true`` as a whole process, one after the other, and the
   CPU time each start costs the machine (the broker's thread, the zygote and
   the sandbox's processes it reaps, bwrap's processes); ``Broker.start`` +
   wait through a zygote, through a forked monitor and as ``privsep run`` starts
   its one sandbox (init cloned by the broker, ``bench/direct.py``), step by step; the
   forkserver's ``Sandbox.call`` against bwrap the same way; the whole
   ``privsep run -- /bin/true`` command, from a warm plan cache and planning anew
   (``--no-cache``), against its floor (a Python that imports pydantic), firejail
   and bwrap; and its imports (``python -X importtime``, every top-level import's
   cumulative time added up), warm against cold.
3b. cgroups: the same ``Broker.start+wait`` of ``/bin/true`` with the sandbox's
   cgroup and without (``bench/cgroups.py``), alternately within a round.
4. seccomp: a syscall-heavy loop, confined against unconfined.
5. kernel_open: an unmodified program (a C loop built with ``cc``, and a
   Python ``os.open`` loop) opening a granted file, timed inside it, under
   ``privsep run --allow-read`` (kernel-served), on the host, under bwrap, and
   under ``privsep run`` with the grant ``serve = "broker"`` (``bench/kernel.py``).
5b. connect: an unmodified program's TCP connect to a loopback listener, on the
   host and under ``privsep run --allow-connect`` (each connect brokered).
6. cli: the whole ``privsep run --allow-read IN --allow-write OUT -- cp IN/f
   OUT/g`` against bwrap with the same binds and the bare ``cp``.
7. scale: one broker with 100 and 1000 idle sandboxes (``bench/scale.py``).
8. isolation: a sibling's ping round trip while another sandbox floods, hangs connects or
   lists a large directory, against alone; three ``Sandbox.arun`` at once against one
   (``bench/isolation.py``; alone: ``python -m bench.isolation [--quick]``).
9. marked: a file of 20 trivial ``@pytest.mark.privsep`` tests against the
   same file unmarked, each a whole ``python -m pytest``, per test, against
   bwrap's ``/bin/true`` (``bench/marked.py``).
10. egress: a brokered DNS lookup (``getaddrinfo`` of a pinned name through the
   sandbox's resolver) against ``localhost`` from ``/etc/hosts``; an HTTP GET by name
   through privsep's proxy against the same GET connected directly
   (``bench/egress.py``; alone: ``python -m bench.egress [--quick]``).

``--only SECTION,...`` runs some of them (e.g. ``--only kernel_open,connect``).
Benchmarks measure; they never fail on a missed target (the table says so).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cgroups import bench_cgroups
from bench.direct import PHASES, spawn_phases
from bench.egress import bench_egress
from bench.egress import rows as egress_rows
from bench.isolation import bench_isolation
from bench.isolation import rows as isolation_rows
from bench.kernel import bench_cli, bench_connect, bench_kernel_open, kernel_tree
from bench.marked import bench_marked
from bench.workloads import (
    BROKERED_OPEN,
    DIRECT_OPEN,
    PLAIN_ENV,
    PRIVSEP,
    PYTHON,
    RAW_FLOOR,
    SYSCALL_LOOP,
    THROUGHPUT,
    BenchError,
    Stats,
    drive,
    last_json,
    median_time,
    pin_cpu,
    pinned,
    python_argv,
    ratios,
    release,
    run_confined,
    run_plain,
    skipped,
    start_confined,
    stats,
)
from privsep._version import __version__
from privsep.broker.loop import Broker
from privsep.broker.services import Services
from privsep.confine.spawn import Zygote
from privsep.plan.spawnplan import SpawnPlan, make_plan
from privsep.policy.grants import grants_to_extra
from privsep.policy.load import load_policy
from privsep.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results.json"
BWRAP = ("bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "/bin/true")
FIREJAIL = ("firejail", "--quiet", "--noprofile", "/bin/true")
PYDANTIC_FLOOR = (PYTHON, "-c", "from pydantic import BaseModel")
PRIVSEP_RUN = (PRIVSEP, "run", "--", "/bin/true")
PRIVSEP_RUN_COLD = (PRIVSEP, "run", "--no-cache", "--", "/bin/true")


@dataclass(frozen=True)
class Config:
    rounds: int
    quick: bool
    open_n: int  # timed opens per child, per round
    warmup: int
    throughput_s: float
    spawn_n: int  # sandboxes per round, in-process
    command_n: int  # whole commands per round
    call_n: int
    loop_n: int  # getppid calls per repeat (stat: a quarter of that)
    scale_counts: tuple[int, ...]
    scale_n: int
    kernel_n: int  # timed opens per program run, kernel-served and host
    kernel_broker_n: int  # the same, broker-served (each is a round trip to the broker)
    isolation_pings: int  # a sibling's timed pings, alone and under each load
    isolation_files: int  # entries of the directory the listing load lists


def config(args: argparse.Namespace) -> Config:
    if args.quick:
        return Config(
            args.rounds or 2, True, 1000, 100, 0.3, 4, 3, 2, 200_000, (100,), 1000, 2000, 300, 300, 20_000
        )
    return Config(
        args.rounds or 5, False, 5000, 300, 1.0, 10, 5, 5, 1_000_000, (100, 1000), 5000, 20_000, 3000, 2000,
        100_000,
    )  # fmt: skip


@contextlib.contextmanager
def _grant_dir() -> Iterator[Path]:
    """A directory with one small file, granted read-only to the benchmark's python children."""
    work = Path(tempfile.mkdtemp(prefix="privsep-bench-"))
    target = work / "data.txt"
    target.write_bytes(b"x" * 64)
    try:
        yield target
    finally:
        target.unlink()
        work.rmdir()


@contextlib.contextmanager
def _python_broker(grant: Path) -> Iterator[tuple[Broker, SpawnPlan, Services]]:
    """An in-process broker, the `python` policy with ``grant``'s directory readable through it."""
    policy = load_policy("python", extra=grants_to_extra([str(grant.parent)], [], [], [], []))
    plan = make_plan(policy, python_argv("pass", {}))
    services = Services(policy)
    broker = Broker()
    try:
        yield broker, plan, services
    finally:
        broker.close()
        services.close()


def _thread_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def _brokered_roundtrip(
    broker: Broker, plan: SpawnPlan, services: Services, work: dict[str, Any]
) -> dict[str, Any]:
    """BROKERED_OPEN in one child, plus the broker's own CPU time per timed open and per timed ping.

    The child asks one request at a time, so its request count says which
    loop it is in: hello, ``warmup`` opens, ``n`` timed opens, then the same for ping.
    """
    n, warmup = work["n"], work["warmup"]
    marks = {"open": (1 + warmup, 1 + warmup + n), "ping": (1 + 2 * warmup + n, 1 + 2 * warmup + 2 * n)}
    cpu_at: dict[int, float] = {}
    wanted = sorted({m for pair in marks.values() for m in pair})
    proc = start_confined(broker, plan, services, python_argv(BROKERED_OPEN, work))
    deadline = time.monotonic() + 300
    while proc.child.outcome is None:
        if time.monotonic() > deadline:
            raise BenchError("the round-trip child is still running after 300 s")
        broker.run_once(max_wait=1.0)
        while wanted and proc.child.serving.requests >= wanted[0]:
            cpu_at[wanted.pop(0)] = _thread_cpu_s()
    result = proc.result()
    for op, (first, last) in marks.items():
        result[op]["broker_cpu_us"] = (cpu_at[last] - cpu_at[first]) / n * 1e6
    return result


# -- 1. round trip --------------------------------------------------------------------------------------


#: What each round records per workload: latency percentiles, and CPU time per operation
#: of the timing process (the child) and, for the brokered ones, of the broker.
_PER_OP = ("p50_us", "p99_us", "cpu_us", "broker_cpu_us")


def bench_roundtrip(cfg: Config, grant: Path, log: Callable[[str], None]) -> dict[str, Any]:
    cpu = pin_cpu()
    work = {"path": str(grant), "n": cfg.open_n, "warmup": cfg.warmup}
    keys = ("brokered_open", "brokered_ping", "raw_open", "raw_ping", "direct_open")
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        mode: {k: {p: [] for p in _PER_OP} for k in keys} for mode in ("pinned", "unpinned")
    }
    with _python_broker(grant) as (broker, plan, services):
        for r in range(cfg.rounds):
            log(f"roundtrip: round {r + 1}/{cfg.rounds}")
            for mode, where in (("pinned", cpu), ("unpinned", None)):
                with pinned(where):
                    brokered = _brokered_roundtrip(broker, plan, services, work)
                raw = run_plain(RAW_FLOOR, {**work, "cpu": where})
                direct = run_plain(DIRECT_OPEN, {**work, "cpu": where})
                got = {
                    "brokered_open": brokered["open"],
                    "brokered_ping": brokered["ping"],
                    "raw_open": raw["open"],
                    "raw_ping": raw["ping"],
                    "direct_open": direct["open"],
                }
                for key, summary in got.items():
                    for p in _PER_OP:
                        if p in summary:
                            samples[mode][key][p].append(summary[p])
    out: dict[str, Any] = {"cpu": cpu, "opens_per_round": cfg.open_n}
    for mode, by_key in samples.items():
        section: dict[str, Any] = {k: {p: stats(v) for p, v in ps.items() if v} for k, ps in by_key.items()}
        section["open_vs_raw_p50"] = ratios(by_key["brokered_open"]["p50_us"], by_key["raw_open"]["p50_us"])
        section["ping_vs_raw_p50"] = ratios(by_key["brokered_ping"]["p50_us"], by_key["raw_ping"]["p50_us"])
        section["open_vs_direct_p50"] = ratios(
            by_key["brokered_open"]["p50_us"], by_key["direct_open"]["p50_us"]
        )
        out[mode] = section
    return out


# -- 2. throughput --------------------------------------------------------------------------------------


def _throughput_once(
    broker: Broker, plan: SpawnPlan, services: Services, k: int, work: dict[str, Any]
) -> float:
    children = [
        start_confined(broker, plan, services, python_argv(THROUGHPUT, work), gate=True) for _ in range(k)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all(c.child.serving.requests >= 2 or c.child.outcome is not None for c in children):
            if time.monotonic() > deadline:
                raise BenchError("throughput children did not say hello within 120 s")
            broker.run_once(max_wait=1.0)
    finally:
        release(children)
    results = drive(broker, children)
    total = sum(r["count"] for r in results)
    window = max(r["end"] for r in results) - min(r["start"] for r in results)
    return float(total / (window / 1e9))


def bench_throughput(cfg: Config, grant: Path, log: Callable[[str], None]) -> dict[str, Any]:
    levels = (1, 4, 16)
    per: dict[int, list[float]] = {k: [] for k in levels}
    work = {"path": str(grant), "seconds": cfg.throughput_s}
    with _python_broker(grant) as (broker, plan, services):
        for r in range(cfg.rounds):
            log(f"throughput: round {r + 1}/{cfg.rounds}")
            for k in levels:
                per[k].append(_throughput_once(broker, plan, services, k, work))
    return {"seconds_per_run": cfg.throughput_s, "children": {str(k): stats(v) for k, v in per.items()}}


# -- 3. spawn -------------------------------------------------------------------------------------------


def _peer(name: str, argv: Sequence[str]) -> str | None:
    """Why a peer cannot be measured here, or None."""
    if shutil.which(argv[0]) is None:
        return f"{name} is not installed"
    try:
        median_time(argv, 1)
    except BenchError as exc:
        return f"{name} does not run here: {exc}"
    return None


def _cpu_with_reaped(pid: int) -> float:
    """CPU seconds of process ``pid`` and of the children it has reaped (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _Paired:
    """Sandbox.run(['/bin/true']) and bwrap's /bin/true one after the other, so that both sides of
    each ratio meet the same load; with the CPU each start costs the machine, all rounds together:
    the broker's thread, the zygote and the sandbox processes it reaped, and bwrap's processes."""

    def __init__(self, sb: Sandbox, bwrap: bool) -> None:
        self.sb = sb
        self.bwrap = bwrap
        parts = sb._need_parts()  # the zygote is the Sandbox's own; only the bench reads its CPU
        assert parts.zygote is not None
        self.zygote_pid = parts.zygote._proc.pid
        self.starts = 0
        self.broker_cpu = self.bwrap_cpu = 0.0
        self.zygote_cpu_at = _cpu_with_reaped(self.zygote_pid)

    def round(self, n: int) -> tuple[float, float | None]:
        """Median wall ms of ``n`` starts of each (bwrap None when it is not measured)."""
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(n):
            cpu, started = time.thread_time(), time.perf_counter()
            result = self.sb.run(["/bin/true"])
            ours.append((time.perf_counter() - started) * 1e3)
            self.broker_cpu += time.thread_time() - cpu
            if result.returncode != 0:
                raise BenchError(f"Sandbox.run(['/bin/true']): {result.how} {result.detail}")
            if self.bwrap:
                cpu = _children_cpu()
                theirs.append(median_time(BWRAP, 1))
                self.bwrap_cpu += _children_cpu() - cpu
        self.starts += n
        return statistics.median(ours), statistics.median(theirs) if theirs else None

    def cpu_ms(self) -> dict[str, float]:
        time.sleep(0.1)  # the zygote reaps the last init when its pidfd says so
        zygote = _cpu_with_reaped(self.zygote_pid) - self.zygote_cpu_at
        out = {"broker": self.broker_cpu, "zygote_and_sandbox": zygote}
        if self.bwrap:
            out["bwrap"] = self.bwrap_cpu
        return {k: v / self.starts * 1e3 for k, v in out.items()}


def _direct_phases(n: int) -> dict[str, float]:
    """``bench/direct.py``'s medians of ``n`` starts from a broker of one thread."""
    proc = subprocess.run(
        [PYTHON, "-m", "bench.direct", str(n)], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"python -m bench.direct: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return {k: float(v) for k, v in last_json(proc.stdout, "bench.direct").items()}


def bench_spawn(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    peers = {"bwrap": BWRAP, "firejail": FIREJAIL}
    unavailable = {name: _peer(name, argv) for name, argv in peers.items()}
    whole: dict[str, tuple[str, ...]] = {
        "privsep_run": PRIVSEP_RUN,
        "privsep_run_cold": PRIVSEP_RUN_COLD,
        "pydantic_floor": PYDANTIC_FLOOR,
        "process_floor": ("/bin/true",),
    }
    whole.update({name: argv for name, argv in peers.items() if unavailable[name] is None})
    paired_bwrap = unavailable["bwrap"] is None
    imports = ("imports_warm", "imports_cold")
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "sandbox_run", "bwrap_paired", "monitor_start_wait", "zygote_start_wait", "direct_start_wait",
            "sandbox_call",
            "forkserver_call", "bwrap_paired_call", *whole, *imports,
        )
    }  # fmt: skip
    # A plan cache of the bench's own: warm after the first run, and nobody else's.
    cache = tempfile.TemporaryDirectory(prefix="privsep-bench-cache-")
    env = {**os.environ, "PRIVSEP_CACHE_DIR": f"{cache.name}/plans"}
    median_time(PRIVSEP_RUN, 1, env=env)
    hows = ("monitor", "zygote", "direct")
    phases: dict[str, dict[str, list[float]]] = {how: {phase: [] for phase in PHASES} for how in hows}
    wakeups: dict[str, list[float]] = {how: [] for how in hows}
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    minimal = load_policy("minimal")
    plan = make_plan(minimal, ["/bin/true"])
    services = Services(minimal)
    zygote = Zygote()
    broker = Broker()
    try:
        with (
            Sandbox("minimal") as sb,
            Sandbox("python") as py,
            Sandbox("python", start_method="forkserver") as fs,
        ):
            sb.run(["/bin/true"])  # warm: the first start waits for the zygote
            fs.call("os:getpid")
            paired = _Paired(sb, paired_bwrap)
            for r in range(cfg.rounds):
                log(f"spawn: round {r + 1}/{cfg.rounds}")
                ours, theirs = paired.round(cfg.spawn_n)
                times["sandbox_run"].append(ours)
                if theirs is not None:
                    times["bwrap_paired"].append(theirs)
                # This process has threads (its Sandboxes): its broker forks a monitor.
                for how, spawner in (("monitor", None), ("zygote", zygote.spawn)):
                    spawns = [
                        spawn_phases(broker, plan, services, devnull, spawner) for _ in range(cfg.spawn_n)
                    ]
                    for phase in PHASES:
                        phases[how][phase].append(statistics.median(p[phase] for p in spawns))
                    wakeups[how].append(statistics.median(p["wakeups"] for p in spawns))
                direct = _direct_phases(cfg.spawn_n)
                for phase in PHASES:
                    phases["direct"][phase].append(direct[phase])
                wakeups["direct"].append(direct["wakeups"])
                for how in hows:
                    times[f"{how}_start_wait"].append(phases[how]["ended"][-1])
                one: list[float] = []
                for _ in range(cfg.call_n):
                    started = time.perf_counter()
                    py.call("os:getpid")
                    one.append((time.perf_counter() - started) * 1e3)
                times["sandbox_call"].append(statistics.median(one))
                one, peer = [], []
                for _ in range(cfg.call_n):
                    started = time.perf_counter()
                    fs.call("os:getpid")
                    one.append((time.perf_counter() - started) * 1e3)
                    if paired_bwrap:
                        peer.append(median_time(BWRAP, 1))
                times["forkserver_call"].append(statistics.median(one))
                if peer:
                    times["bwrap_paired_call"].append(statistics.median(peer))
                for name, argv in whole.items():
                    times[name].append(median_time(argv, cfg.command_n, env=env))
                times["imports_warm"].append(import_ms(PRIVSEP_RUN, cfg.command_n, env=env))
                times["imports_cold"].append(import_ms(PRIVSEP_RUN_COLD, cfg.command_n, env=env))
            cpu = paired.cpu_ms()
    finally:
        broker.close()
        zygote.close()
        services.close()
        os.close(devnull)
        cache.cleanup()
    out: dict[str, Any] = {k: stats(v) for k, v in times.items() if v}
    for how in hows:
        out[f"{how}_start_wait_phases_ms"] = {phase: stats(v) for phase, v in phases[how].items()}
        out[f"{how}_wakeups_per_spawn"] = stats(wakeups[how])
    out["sandbox_run_cpu_ms"] = cpu
    for name, why in unavailable.items():
        if why is not None:
            out[name] = skipped(why)
    if "bwrap" in times:
        out["sandbox_run_vs_bwrap"] = ratios(times["sandbox_run"], times["bwrap_paired"])
        out["forkserver_call_vs_bwrap"] = ratios(times["forkserver_call"], times["bwrap_paired_call"])
        for how in hows:
            out[f"{how}_start_wait_vs_bwrap"] = ratios(times[f"{how}_start_wait"], times["bwrap"])
        out["privsep_run_vs_bwrap"] = ratios(times["privsep_run"], times["bwrap"])
        out["privsep_run_cold_vs_bwrap"] = ratios(times["privsep_run_cold"], times["bwrap"])
    if "firejail" in times:
        out["privsep_run_vs_firejail"] = ratios(times["privsep_run"], times["firejail"])
    out["privsep_run_vs_pydantic_floor"] = ratios(times["privsep_run"], times["pydantic_floor"])
    out["imports_warm_vs_cold"] = ratios(times["imports_warm"], times["imports_cold"])
    return out


def import_ms(argv: Sequence[str], n: int, *, env: dict[str, str]) -> float:
    """Median over ``n`` runs of the time ``argv`` (a Python command) spends importing, in ms: the
    cumulative times ``python -X importtime`` gives each top-level import, added up."""
    totals = []
    for _ in range(n):
        proc = subprocess.run(
            [PYTHON, "-X", "importtime", *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        total = 0
        for line in proc.stderr.splitlines():
            fields = line.removeprefix("import time:").split("|")
            if line.startswith("import time:") and len(fields) == 3 and fields[2][1:2] not in (" ", ""):
                with contextlib.suppress(ValueError):  # the header line
                    total += int(fields[1])
        totals.append(total / 1e3)
    return statistics.median(totals)


# -- 4. seccomp -----------------------------------------------------------------------------------------


def bench_seccomp(cfg: Config, grant: Path, log: Callable[[str], None]) -> dict[str, Any]:
    cpu = pin_cpu()
    work = {"n": cfg.loop_n, "repeats": 3, "stat_path": "/usr/bin/true"}
    sides = ("confined", "plain", "one_rule")
    got: dict[str, list[float]] = {f"{side}_{call}": [] for side in sides for call in ("getppid", "stat")}
    with _python_broker(grant) as (broker, plan, services):
        for r in range(cfg.rounds):
            log(f"seccomp: round {r + 1}/{cfg.rounds}")
            with pinned(cpu):
                confined = run_confined(broker, plan, services, SYSCALL_LOOP, work)
            plain = run_plain(SYSCALL_LOOP, {**work, "cpu": cpu})
            one_rule = run_plain(SYSCALL_LOOP, {**work, "cpu": cpu, "one_rule_filter": True})
            for side, result in zip(sides, (confined, plain, one_rule), strict=True):
                got[f"{side}_getppid"].append(result["getppid_ns"])
                got[f"{side}_stat"].append(result["stat_ns"])
    out: dict[str, Any] = {"calls_per_repeat": cfg.loop_n, **{k: stats(v) for k, v in got.items()}}
    for call in ("getppid", "stat"):
        out[f"{call}_ratio"] = ratios(got[f"confined_{call}"], got[f"plain_{call}"])
        out[f"{call}_one_rule_ratio"] = ratios(got[f"one_rule_{call}"], got[f"plain_{call}"])
    return out


# -- 5. kernel_open and 6. cli: bench/kernel.py ---------------------------------------------------------


def bench_kernel(cfg: Config, log: Callable[[str], None], wanted: set[str]) -> dict[str, Any]:
    """The sections of bench/kernel.py that are ``wanted``, by name."""
    out: dict[str, Any] = {}
    if not wanted & {"kernel_open", "connect", "cli"}:
        return out
    with kernel_tree() as tree:
        if "kernel_open" in wanted:
            out["kernel_open"] = bench_kernel_open(
                tree, log, rounds=cfg.rounds, n=cfg.kernel_n, n_broker=cfg.kernel_broker_n, warmup=cfg.warmup
            )
        if "connect" in wanted:
            out["connect"] = bench_connect(
                tree, log, rounds=cfg.rounds, n=cfg.kernel_n, n_broker=cfg.kernel_broker_n, warmup=cfg.warmup
            )
        if "cli" in wanted:
            out["cli"] = bench_cli(tree, log, rounds=cfg.rounds, per_round=cfg.command_n)
    return out


# -- 7. scale -------------------------------------------------------------------------------------------


def bench_scale(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"scale: {', '.join(map(str, cfg.scale_counts))} idle sandboxes (one round)")
    args = {"counts": list(cfg.scale_counts), "n": cfg.scale_n, "warmup": 200, "cpu": pin_cpu()}
    proc = subprocess.run(
        [PYTHON, "-m", "bench.scale", json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"bench.scale exited {proc.returncode}: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["rounds"] = 1
    return result


# -- the report -----------------------------------------------------------------------------------------


def _fmt(s: Stats, unit: str = "", digits: int = 1) -> str:
    if "skipped" in s:
        return f"skipped: {s['skipped']}"
    return f"{s['median']:,.{digits}f}{unit} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def _ratio(s: Stats | None) -> str:
    return "" if s is None or "skipped" in s else f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def _target(
    name: str, measured: float | None, limit: float, unit: str, note: str = "", *, issue: int = 7
) -> dict[str, Any]:
    met = None if measured is None else measured <= limit
    return {
        "target": name, "issue": issue, "measured": measured, "limit": limit, "unit": unit, "met": met,
        "note": note,
    }  # fmt: skip


def roundtrip_targets(rt: dict[str, Any]) -> list[dict[str, Any]]:
    """The round trip's targets: issue 7's, and issue 16's (validate once, allocate little)."""
    ratio = rt["pinned"]["open_vs_raw_p50"]["median"]
    return [
        _target("brokered open p50 <= 1.6x raw floor (pinned)", ratio, 1.6, "x"),
        _target("client.open p50 <= 3x raw floor (pinned)", ratio, 3.0, "x", issue=16),
    ]


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issues 7, 12, 14 and 16, each measured and met or not (None: not measured)."""
    out: list[dict[str, Any]] = []

    def add(
        name: str, measured: float | None, limit: float, unit: str, note: str = "", *, issue: int = 7
    ) -> None:
        out.append(_target(name, measured, limit, unit, note, issue=issue))

    if "roundtrip" in res:
        out += roundtrip_targets(res["roundtrip"])
    if "spawn" in res:
        spawn = res["spawn"]
        if "sandbox_run_vs_bwrap" in spawn:
            add("Sandbox.run(['/bin/true']) <= bwrap", spawn["sandbox_run_vs_bwrap"]["median"], 1.0, "x")
        else:
            add("Sandbox.run(['/bin/true']) <= bwrap", None, 1.0, "x", spawn["bwrap"]["skipped"])
        add("forkserver Sandbox.call < 10 ms", spawn["forkserver_call"]["median"], 10.0, "ms")
        for name, key, limit in (
            ("Sandbox.run(['/bin/true']) <= 1.5x bwrap", "sandbox_run_vs_bwrap", 1.5),
            ("forkserver Sandbox.call <= 2.5x bwrap /bin/true", "forkserver_call_vs_bwrap", 2.5),
        ):
            if key in spawn:
                add(name, spawn[key]["median"], limit, "x", issue=16)
            else:
                add(name, None, limit, "x", spawn["bwrap"]["skipped"], issue=16)
        add(
            "privsep run -- /bin/true <= 1.2x pydantic-import floor",
            spawn["privsep_run_vs_pydantic_floor"]["median"],
            1.2,
            "x",
        )
        name = "privsep run -- /bin/true <= 10x bwrap (warm plan cache)"
        if "privsep_run_vs_bwrap" in spawn:
            add(name, spawn["privsep_run_vs_bwrap"]["median"], 10.0, "x", issue=16)
        else:
            add(name, None, 10.0, "x", spawn["bwrap"]["skipped"], issue=16)
    if "cgroups" in res:
        cg, name = res["cgroups"], "a cgroup per sandbox adds <= 1 ms per spawn"
        if "skipped" in cg:
            add(name, None, 1.0, "ms", cg["skipped"], issue=14)
        else:
            add(name, cg["added_ms"]["median"], 1.0, "ms", issue=14)
    if "seccomp" in res:
        add("seccomp getppid loop <= 1.05x unconfined", res["seccomp"]["getppid_ratio"]["median"], 1.05, "x")
    if "scale" in res:
        levels = {lvl["children"]: lvl for lvl in res["scale"]["levels"]}
        name = "broker RSS with 1000 children <= 100 MB"
        if 1000 in levels:
            add(name, levels[1000]["broker_rss_kb"] / 1024, 100.0, "MB")
        else:
            add(name, None, 100.0, "MB", "not measured (--quick: 100 only)")
    if "kernel_open" in res:
        ko = res["kernel_open"]
        for prog, label in (("c", "C loop"), ("python", "Python os.open loop")):
            name = f"kernel-served open p50 <= 2x host ({label}, pinned)"
            if "skipped" in ko[prog]:
                add(name, None, 2.0, "x", ko[prog]["skipped"], issue=12)
            else:
                add(name, ko[prog]["kernel_vs_host_p50"]["median"], 2.0, "x", issue=12)
        for prog, label in (("c", "C loop"), ("python", "Python os.open loop")):
            name = f'broker-served (serve = "broker") open p50 <= 2x host ({label}, pinned)'
            if "skipped" in ko[prog]:
                add(name, None, 2.0, "x", ko[prog]["skipped"], issue=16)
            else:
                add(name, ko[prog]["broker_vs_host_p50"]["median"], 2.0, "x", issue=16)
    if "cli" in res:
        cli, name = res["cli"], "privsep run --allow-read --allow-write -- cp <= 10x bwrap, same binds"
        if "vs_bwrap" in cli:
            add(name, cli["vs_bwrap"]["median"], 10.0, "x", issue=16)
        else:
            add(name, None, 10.0, "x", cli["bwrap"]["skipped"], issue=16)
    if "marked" in res:
        marked, name = res["marked"], "one @pytest.mark.privsep test, per test, <= 10x bwrap /bin/true"
        if "per_test_vs_bwrap" in marked:
            add(name, marked["per_test_vs_bwrap"]["median"], 10.0, "x", issue=16)
        else:
            add(name, None, 10.0, "x", marked["bwrap"]["skipped"], issue=16)
    return out


Row = tuple[str, str, str, str, str]


def _rows(res: dict[str, Any]) -> list[Row]:
    """(section, measure, privsep, floor or peer, ratio) for every line of the table (sections run only)."""
    rows: list[Row] = []
    for key, section_rows in _SECTION_ROWS:
        if key in res:
            rows += section_rows(res[key])
    return rows


def roundtrip_rows(rt: dict[str, Any]) -> list[Row]:
    """The round trip's lines of the table, pinned then unpinned."""
    rows: list[Row] = []
    for mode in ("pinned", "unpinned"):
        m, section = rt[mode], f"open round trip, {mode}"
        ours = _fmt(m["brokered_open"]["p50_us"], " us")
        rows += [
            (section, "client.open p50 vs raw floor", ours, _fmt(m["raw_open"]["p50_us"], " us"),
             _ratio(m["open_vs_raw_p50"])),
            (section, "client.open p99 vs raw floor", _fmt(m["brokered_open"]["p99_us"], " us"),
             _fmt(m["raw_open"]["p99_us"], " us"), ""),
            (section, "client.open p50 vs direct open()", ours, _fmt(m["direct_open"]["p50_us"], " us"),
             _ratio(m["open_vs_direct_p50"])),
            (section, "client.ping p50 vs raw ping", _fmt(m["brokered_ping"]["p50_us"], " us"),
             _fmt(m["raw_ping"]["p50_us"], " us"), _ratio(m["ping_vs_raw_p50"])),
        ]  # fmt: skip
        for op in ("open", "ping"):
            ours, raw = m[f"brokered_{op}"], m[f"raw_{op}"]
            rows.append(
                (section, f"CPU per {op}: child + broker vs raw client + server",
                 f"{_fmt(ours['cpu_us'], ' us')} + {_fmt(ours['broker_cpu_us'], ' us')}",
                 f"{_fmt(raw['cpu_us'], ' us')} + {_fmt(raw['broker_cpu_us'], ' us')}", "")
            )  # fmt: skip
    return rows


def _throughput_rows(tp: dict[str, Any]) -> list[Row]:
    return [
        ("throughput", f"opens/s, {k} children, one broker", _fmt(s, "", 0), "", "")
        for k, s in tp["children"].items()
    ]


def _spawn_rows(sp: dict[str, Any]) -> list[Row]:
    bwrap = _fmt(sp.get("bwrap", skipped("bwrap is not installed")), " ms", 2)
    firejail = _fmt(sp.get("firejail", skipped("firejail is not installed")), " ms")
    run = _fmt(sp["privsep_run"], " ms")
    missing = skipped("bwrap is not installed")
    paired = _fmt(sp.get("bwrap_paired", missing), " ms", 2)
    paired_call = _fmt(sp.get("bwrap_paired_call", missing), " ms", 2)
    cpu = sp["sandbox_run_cpu_ms"]
    return [
        ("spawn", "Sandbox.run(['/bin/true']) vs bwrap process, alternately",
         _fmt(sp["sandbox_run"], " ms", 2), paired, _ratio(sp.get("sandbox_run_vs_bwrap"))),
        ("spawn", "CPU per start, all rounds: broker + zygote and sandbox vs bwrap", _cpu(cpu),
         f"{cpu['bwrap']:.2f} ms" if "bwrap" in cpu else "", _cpu_ratio(cpu)),
        ("spawn", "Broker.start+wait from a zygote (Sandbox's way), plan prebuilt, vs bwrap",
         _fmt(sp["zygote_start_wait"], " ms", 2), bwrap, _ratio(sp.get("zygote_start_wait_vs_bwrap"))),
        ("spawn", "its steps: cloned / command / execve / ended", _steps(sp, "zygote"), "",
         f"{sp['zygote_wakeups_per_spawn']['median']:.0f} loop wake-ups"),
        ("spawn", "Broker.start+wait cloning init itself (privsep run's way: one thread), vs bwrap",
         _fmt(sp["direct_start_wait"], " ms", 2), bwrap, _ratio(sp.get("direct_start_wait_vs_bwrap"))),
        ("spawn", "its steps: cloned / command / execve / ended", _steps(sp, "direct"), "",
         f"{sp['direct_wakeups_per_spawn']['median']:.0f} loop wake-ups"),
        ("spawn", "Broker.start+wait forking a monitor (a broker with threads), vs bwrap",
         _fmt(sp["monitor_start_wait"], " ms", 2), bwrap, _ratio(sp.get("monitor_start_wait_vs_bwrap"))),
        ("spawn", "its steps: forked / init / command / execve / ended", _steps(sp, "monitor"), "",
         f"{sp['monitor_wakeups_per_spawn']['median']:.0f} loop wake-ups"),
        ("spawn", "Sandbox.call('os:getpid'), fresh child", _fmt(sp["sandbox_call"], " ms"), "", ""),
        ("spawn", "Sandbox.call, forkserver start method, vs bwrap /bin/true alternately",
         _fmt(sp["forkserver_call"], " ms"), paired_call, _ratio(sp.get("forkserver_call_vs_bwrap"))),
        ("whole command", "privsep run -- /bin/true vs python -c 'from pydantic import BaseModel'", run,
         _fmt(sp["pydantic_floor"], " ms"), _ratio(sp["privsep_run_vs_pydantic_floor"])),
        ("whole command", "privsep run vs firejail --quiet --noprofile /bin/true", run, firejail,
         _ratio(sp.get("privsep_run_vs_firejail"))),
        ("whole command", "privsep run vs bwrap --ro-bind / / --unshare-all /bin/true", run, bwrap,
         _ratio(sp.get("privsep_run_vs_bwrap"))),
        ("whole command", "privsep run --no-cache (plans anew) vs bwrap", _fmt(sp["privsep_run_cold"], " ms"),
         bwrap, _ratio(sp.get("privsep_run_cold_vs_bwrap"))),
        ("whole command", "imports (-X importtime total) of privsep run -- /bin/true, warm vs --no-cache",
         _fmt(sp["imports_warm"], " ms"), _fmt(sp["imports_cold"], " ms"),
         _ratio(sp["imports_warm_vs_cold"])),
        ("whole command", "/bin/true, no sandbox (process floor)", _fmt(sp["process_floor"], " ms", 2),
         "", ""),
    ]  # fmt: skip


def _steps(sp: dict[str, Any], how: str) -> str:
    # Only a monitor's init reports itself: a zygote's answer carries init's pidfd, and a broker
    # that cloned init opens it.
    shown = [p for p in PHASES if how == "monitor" or p != "init"]
    return " / ".join(f"{sp[f'{how}_start_wait_phases_ms'][p]['median']:.1f}" for p in shown) + " ms"


def _cpu(cpu: dict[str, float]) -> str:
    return f"{cpu['broker']:.2f} + {cpu['zygote_and_sandbox']:.2f} ms"


def _cpu_ratio(cpu: dict[str, float]) -> str:
    if "bwrap" not in cpu:
        return ""
    return f"{(cpu['broker'] + cpu['zygote_and_sandbox']) / cpu['bwrap']:.2f}x"


def _cgroups_rows(cg: dict[str, Any]) -> list[Row]:
    if "skipped" in cg:
        return [("cgroups", "Broker.start+wait with the sandbox's cgroup vs without", _fmt(cg), "", "")]
    return [
        ("cgroups", f"Broker.start+wait with its cgroup ({cg['version']}) vs cgroups off",
         _fmt(cg["spawn_with_cgroup_ms"], " ms", 2), _fmt(cg["spawn_without_cgroup_ms"], " ms", 2),
         _ratio(cg["with_vs_without"])),
        ("cgroups", "added per spawn; make + remove one cgroup alone", _fmt(cg["added_ms"], " ms", 2),
         _fmt(cg["make_and_remove_us"], " us", 0), ""),
    ]  # fmt: skip


def _seccomp_rows(sc: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, label in (("getppid", "os.getppid()"), ("stat", "os.stat('/usr/bin/true')")):
        rows += [
            ("seccomp", f"{label} loop, confined vs unconfined", _fmt(sc[f"confined_{name}"], " ns"),
             _fmt(sc[f"plain_{name}"], " ns"), _ratio(sc[f"{name}_ratio"])),
            ("seccomp", f"{label} loop, unconfined + a one-rule seccomp filter",
             _fmt(sc[f"one_rule_{name}"], " ns"), _fmt(sc[f"plain_{name}"], " ns"),
             _ratio(sc[f"{name}_one_rule_ratio"])),
        ]  # fmt: skip
    return rows


def _isolation_rows(iso: dict[str, Any]) -> list[Row]:
    return isolation_rows(iso, _fmt, _ratio)


def _egress_rows(eg: dict[str, Any]) -> list[Row]:
    return egress_rows(eg, _fmt, _ratio)


def _scale_rows(scale: dict[str, Any]) -> list[Row]:
    alone = scale["alone"]
    rows: list[Row] = [
        (
            "scale (1 round)",
            "open p50 / p99, alone",
            f"{alone['p50_us']:.1f} / {alone['p99_us']:.1f} us",
            "",
            "",
        )
    ]
    for lvl in scale["levels"]:
        n, opened = lvl["children"], lvl["open"]
        rows += [
            ("scale (1 round)", f"open p50 / p99 among {n} idle children",
             f"{opened['p50_us']:.1f} / {opened['p99_us']:.1f} us", "",
             f"{opened['p50_us'] / alone['p50_us']:.2f}x alone"),
            ("scale (1 round)", f"broker RSS with {n} children (per child)",
             f"{lvl['broker_rss_kb'] / 1024:.1f} MB ({lvl['broker_rss_per_child_kb']:.1f} kB)",
             f"{scale['broker_rss_kb_alone'] / 1024:.1f} MB alone", ""),
            ("scale (1 round)", f"system memory per idle sandbox, {n} children",
             f"{lvl['system_kb_per_sandbox'] / 1024:.1f} MB", "", f"spawned in {lvl['spawn_s']:.1f} s"),
        ]  # fmt: skip
    return rows


def _kernel_rows(ko: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for prog, label in (("c", "C loop"), ("python", "Python os.open loop")):
        section, m = f"kernel open, {label}", ko[prog]
        if "skipped" in m:
            rows.append((section, "open+close of a granted file", _fmt(m), "", ""))
            continue
        kern, host, broker, unpinned = (
            m[k] for k in ("privsep_kernel", "host", "privsep_broker", "privsep_broker_unpinned")
        )
        k50, h50, k99 = (
            _fmt(kern["p50_us"], " us", 2),
            _fmt(host["p50_us"], " us", 2),
            _fmt(kern["p99_us"], " us", 2),
        )
        b50 = _fmt(broker["p50_us"], " us")
        w50 = _fmt(m["bwrap"] if "skipped" in m["bwrap"] else m["bwrap"]["p50_us"], " us", 2)
        rows += [
            (section, "p50, privsep run --allow-read (kernel-served) vs host, pinned", k50, h50,
             _ratio(m["kernel_vs_host_p50"])),
            (section, "p50, privsep run --allow-read vs bwrap --ro-bind, pinned", k50, w50,
             _ratio(m.get("kernel_vs_bwrap_p50"))),
            (section, "p50, bwrap --ro-bind vs host, pinned", w50, h50, _ratio(m.get("bwrap_vs_host_p50"))),
            (section, "p99, kernel-served vs host, pinned", k99, _fmt(host["p99_us"], " us", 2), ""),
            (section, 'p50, broker-served (serve = "broker") vs host, pinned', b50, h50,
             _ratio(m["broker_vs_host_p50"])),
            (section, "p50, broker-served vs kernel-served, pinned", b50, k50,
             _ratio(m["broker_vs_kernel_p50"])),
            (section, "p99, broker-served, pinned", _fmt(broker["p99_us"], " us"), "", ""),
            *_raw_notify_rows(section, m),
            (section, "p50 / p99, broker-served, unpinned",
             f"{_fmt(unpinned['p50_us'], ' us')} / {_fmt(unpinned['p99_us'], ' us')}", "", ""),
        ]  # fmt: skip
    return rows


def _raw_notify_rows(section: str, m: dict[str, Any]) -> list[Row]:
    """The floor of a broker-served open (the C loop's section only)."""
    if "raw_notify" not in m:
        return []
    raw, ours = _fmt(m["raw_notify"]["p50_us"], " us"), _fmt(m["privsep_broker"]["p50_us"], " us")
    return [
        (section, "p50, raw seccomp-notify floor (plain Python server, same syscalls, no policy) vs host, "
         "pinned", raw, _fmt(m["host"]["p50_us"], " us", 2), _ratio(m["raw_notify_vs_host_p50"])),
        (section, "p50, broker-served vs the raw seccomp-notify floor, pinned", ours, raw,
         _ratio(m["broker_vs_raw_notify_p50"])),
    ]  # fmt: skip


def _connect_rows(co: dict[str, Any]) -> list[Row]:
    section = "transparent connect, C loop"
    if "skipped" in co:
        return [(section, "connect() to a listener on 127.0.0.1", _fmt(co), "", "")]
    host, broker, unpinned = (co[k] for k in ("host", "privsep_broker", "privsep_broker_unpinned"))
    return [
        (section, "p50, privsep run --allow-connect (broker-served) vs host, pinned",
         _fmt(broker["p50_us"], " us"), _fmt(host["p50_us"], " us", 2), _ratio(co["broker_vs_host_p50"])),
        (section, "p99, broker-served vs host, pinned", _fmt(broker["p99_us"], " us"),
         _fmt(host["p99_us"], " us", 2), ""),
        (section, "p50 / p99, broker-served, unpinned",
         f"{_fmt(unpinned['p50_us'], ' us')} / {_fmt(unpinned['p99_us'], ' us')}", "", ""),
    ]  # fmt: skip


def _cli_rows(cli: dict[str, Any]) -> list[Row]:
    section = "whole CLI run"
    ours = _fmt(cli["privsep_run"], " ms")
    bare = _fmt(cli["bare"], " ms", 2)
    bwrap = _fmt(cli["bwrap"], " ms", 2)
    return [
        (section, "privsep run --allow-read IN --allow-write OUT -- cp IN/f OUT/g vs bwrap, same binds", ours,
         bwrap, _ratio(cli.get("vs_bwrap"))),
        (section, "the same privsep run vs bare cp", ours, bare, _ratio(cli["vs_bare"])),
        (section, "the same privsep run vs privsep run -- /bin/true (same round)", ours,
         _fmt(cli["privsep_run_true"], " ms"), _ratio(cli["vs_privsep_run_true"])),
        (section, "bwrap, same binds, vs bare cp", bwrap, bare, _ratio(cli.get("bwrap_vs_bare"))),
    ]  # fmt: skip


def _marked_rows(m: dict[str, Any]) -> list[Row]:
    section, n = "pytest plugin", m["tests"]
    return [
        (section, "one @pytest.mark.privsep test, per test, vs bwrap /bin/true", _fmt(m["per_test"], " ms"),
         _fmt(m["bwrap"], " ms", 2), _ratio(m.get("per_test_vs_bwrap"))),
        (section, f"python -m pytest, a file of {n} trivial tests, marked vs unmarked",
         _fmt(m["marked"], " ms"), _fmt(m["unmarked"], " ms"), ""),
    ]  # fmt: skip


#: Every section, in the order of the table, with the rows it adds to it.
_SECTION_ROWS: tuple[tuple[str, Callable[[dict[str, Any]], list[Row]]], ...] = (
    ("roundtrip", roundtrip_rows),
    ("throughput", _throughput_rows),
    ("spawn", _spawn_rows),
    ("cgroups", _cgroups_rows),
    ("seccomp", _seccomp_rows),
    ("kernel_open", _kernel_rows),
    ("connect", _connect_rows),
    ("cli", _cli_rows),
    ("marked", _marked_rows),
    ("isolation", _isolation_rows),
    ("egress", _egress_rows),
    ("scale", _scale_rows),
)
SECTIONS = tuple(key for key, _ in _SECTION_ROWS)


def render(res: dict[str, Any]) -> str:
    """The Markdown tables: every measurement, then the targets."""
    meta = res["meta"]
    lines = [
        f"privsep {meta['privsep']} ({meta['commit']}), {meta['rounds']} rounds: "
        f"median (min-max of the rounds); kernel {meta['kernel']}, {meta['cpus']} CPUs, "
        f"load average {meta['loadavg_start']:.1f} at start"
        + (
            f", {meta['loadavg_before_scale']:.1f} before the scale section"
            if "loadavg_before_scale" in meta
            else ""
        )
        + " (other work on the machine inflates every number)"
        + (f"; sections run: {', '.join(meta['only'])}" if meta.get("only") else ""),
        "",
        "| section | measure | privsep | floor / peer | ratio |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(res)]
    lines += ["", "| target | issue | measured | met |", "|---|---|---|---|"]
    for t in res["targets"]:
        measured = "-" if t["measured"] is None else f"{t['measured']:.2f}{t['unit']}"
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']} | {t['issue']} | {measured} | {met}{note} |")
    return "\n".join(lines) + "\n"


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return proc.stdout.strip() or None


def _meta(cfg: Config, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "command": " ".join([".venv/bin/python", "-m", "bench", *argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "privsep": __version__,
        "commit": _git_commit(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "euid": os.geteuid(),
        "loadavg_start": os.getloadavg()[0],
        "rounds": cfg.rounds,
        "quick": cfg.quick,
        "env": {k: v for k, v in PLAIN_ENV.items() if k != "PATH"},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per section (default 5; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer rounds and iterations")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"the JSON file (default {DEFAULT_OUT}; none with --only)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--only",
        metavar="SECTION[,SECTION...]",
        type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
        default=(),
        help=f"run only these sections, of: {', '.join(SECTIONS)}",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    unknown = [name for name in args.only if name not in SECTIONS]
    if unknown:
        parser.error(f"--only: no section named {', '.join(unknown)} (sections: {', '.join(SECTIONS)})")
    wanted = set(args.only or SECTIONS)
    out_path: Path | None = args.out or (None if args.only else DEFAULT_OUT)
    cfg = config(args)
    started = time.monotonic()

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {"meta": _meta(cfg, sys.argv[1:] if argv is None else argv)}
    results["meta"]["only"] = list(args.only)
    # privsep is installed editable: without its bytecode on disk (PYTHONDONTWRITEBYTECODE=1, as in CI
    # and in every workload's environment) each `privsep run` would compile it from source, ~50 ms that
    # an installed privsep never pays. Compile it once (a no-op when up to date).
    results["meta"]["bytecode_compiled"] = compileall.compile_dir(
        REPO / "privsep", quiet=1, workers=1, legacy=False
    )
    with _grant_dir() as grant:
        if "roundtrip" in wanted:
            results["roundtrip"] = bench_roundtrip(cfg, grant, log)
        if "throughput" in wanted:
            results["throughput"] = bench_throughput(cfg, grant, log)
        if "spawn" in wanted:
            results["spawn"] = bench_spawn(cfg, log)
        if "cgroups" in wanted:
            results["cgroups"] = bench_cgroups(cfg.rounds, 2 * cfg.spawn_n, log)
        if "seccomp" in wanted:
            results["seccomp"] = bench_seccomp(cfg, grant, log)
    if "isolation" in wanted:
        results["isolation"] = bench_isolation(cfg.rounds, cfg.isolation_pings, cfg.isolation_files, log)
    if "egress" in wanted:
        results["egress"] = bench_egress(cfg.rounds, 50 if cfg.quick else 300, log)
    results.update(bench_kernel(cfg, log, wanted))
    if "marked" in wanted:
        results["marked"] = bench_marked(cfg.rounds, log, bwrap=BWRAP, no_bwrap=_peer("bwrap", BWRAP))
    if "scale" in wanted:
        results["meta"]["loadavg_before_scale"] = os.getloadavg()[0]
        results["scale"] = bench_scale(cfg, log)
    results["targets"] = targets(results)
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    table = render(results)
    results["table"] = table
    print(table, end="")
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {out_path}")
    return 0
