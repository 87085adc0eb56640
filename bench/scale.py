"""One broker, many idle sandboxes: its memory, and the round trip of one busy child among them.

Run by ``bench/run.py`` in a process of its own (``python -m bench.scale
JSON``), so that the broker's RSS is a broker's, not the benchmark's. Prints
one JSON line.

The idle sandboxes run ``/bin/sleep`` under ``minimal``; the busy one opens
a granted file through the broker under ``python``, as in the round-trip
section, pinned to one CPU with the broker. Each sandbox is two processes
(init, command; three with a monitor, once the broker has worker threads) in a
cgroup of its own, which counts its processes.
With a root broker each sandbox also has a host uid of its own; the policies
still raise ``processes``, as they had to when RLIMIT_NPROC, counted per uid,
was the limit (and still is, for a sandbox without a cgroup).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.workloads import (
    BROKERED_OPEN,
    BenchError,
    mem_available_kb,
    pinned,
    python_argv,
    rss_kb,
    run_confined,
)
from privsep.broker.loop import Broker, Child
from privsep.broker.services import Services
from privsep.plan.spawnplan import make_plan
from privsep.policy.grants import grants_to_extra
from privsep.policy.load import load_policy

_PROCESSES = 16384


def _policy_file(directory: Path, base: str) -> str:
    path = directory / f"bench-{base}.toml"
    path.write_text(f'extends = "{base}"\n\n[limits]\nprocesses = {_PROCESSES}\n', encoding="utf-8")
    return str(path)


def _settle(broker: Broker, idle: list[Child], limit: float) -> None:
    """Serve until every idle sandbox's command has exec'd (its last report is the seccomp listener)."""
    deadline = time.monotonic() + limit
    while any(c.procs.listener is None for c in idle):
        ended = [c for c in idle if c.outcome is not None]
        if ended:
            raise BenchError(f"an idle sandbox ended: {ended[0].outcome}")
        if time.monotonic() > deadline:
            raise BenchError(f"idle sandboxes not running after {limit:g} s")
        broker.run_once(max_wait=0.2)


def main() -> int:
    args: dict[str, Any] = json.loads(sys.argv[1])
    counts: list[int] = args["counts"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # six fds per sandbox
    work = Path(tempfile.mkdtemp(prefix="privsep-bench-scale-"))
    target = work / "data.txt"
    target.write_bytes(b"x" * 64)
    idle_plan = make_plan(load_policy(_policy_file(work, "minimal")), ["/bin/sleep", "3600"])
    active_policy = load_policy(
        _policy_file(work, "python"), extra=grants_to_extra([str(work)], [], [], [], [])
    )
    active_plan = make_plan(active_policy, python_argv("pass", {}))
    services = Services(active_policy)
    broker = Broker()
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    work_args = {"path": str(target), "n": args["n"], "warmup": args["warmup"]}

    def active() -> dict[str, Any]:
        with pinned(args["cpu"]):
            result = run_confined(broker, active_plan, services, BROKERED_OPEN, work_args)
        return dict(result["open"])

    out: dict[str, Any] = {"levels": []}
    closed = False
    try:
        out["alone"] = active()  # also warms the broker's paths
        gc.collect()
        base_rss, base_avail = rss_kb(), mem_available_kb()
        out["broker_rss_kb_alone"] = base_rss
        idle: list[Child] = []
        for count in counts:
            started = time.monotonic()
            while len(idle) < count:
                idle.append(broker.start(idle_plan, stdio=(devnull, devnull, devnull)))
                broker.run_once(max_wait=0)
            _settle(broker, idle, limit=120)
            spawned_s = time.monotonic() - started
            gc.collect()
            rss, avail = rss_kb(), mem_available_kb()
            out["levels"].append(
                {
                    "children": count,
                    "spawn_s": spawned_s,
                    "broker_rss_kb": rss,
                    "broker_rss_per_child_kb": (rss - base_rss) / count,
                    "system_kb_per_sandbox": (base_avail - avail) / count,
                    "open": active(),
                }
            )
        started = time.monotonic()
        broker.close()
        closed = True
        out["close_s"] = time.monotonic() - started
    finally:
        if not closed:
            broker.close()
        services.close()
        os.close(devnull)
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
