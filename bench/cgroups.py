"""What a cgroup per sandbox costs a spawn (issue 14: at most 1 ms more).

One section of ``python -m bench``, and a quick run of its own
(``python -m bench.cgroups [--rounds N] [--n N]``, as root). Each round
starts ``n`` ``/bin/true`` sandboxes under ``minimal`` with their cgroup and
``n`` without one (the same plan with ``[limits] cgroups = "off"``),
alternately, on one in-process ``Broker`` with the plan prebuilt, and times
``Broker.start`` + ``wait`` (the cgroup is made before the fork, joined by
init, and removed at the end: all of it inside that time). The ratio
and the difference are taken within the round. Also timed: making and
removing one sandbox cgroup with no process in it (the broker's share of
the cost; the rest is init joining it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.workloads import BenchError, ratios, stats
from privsep import cgroups
from privsep._record import replace
from privsep.broker.loop import Broker
from privsep.errors import ConfinementError
from privsep.plan.spawnplan import SpawnPlan, make_plan
from privsep.policy.load import load_policy


def _spawn_ms(broker: Broker, plan: SpawnPlan, devnull: int) -> float:
    started = time.perf_counter()
    outcome = broker.wait(broker.start(plan, stdio=(devnull,) * 3))
    elapsed = (time.perf_counter() - started) * 1e3
    if outcome.returncode != 0:
        raise BenchError(f"Broker.start(/bin/true): {outcome.describe()}")
    return elapsed


def bench_cgroups(rounds: int, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    try:
        host = cgroups.host()
    except ConfinementError as exc:  # reported, not raised: the other sections still run
        return {"skipped": f"no cgroup per sandbox here: {exc.reason}"}
    with_cg = make_plan(load_policy("minimal"), ["/bin/true"])
    without = replace(with_cg, cgroups="off")
    budget = with_cg.budget
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    broker = Broker()
    times: dict[str, list[float]] = {"with": [], "without": [], "make_remove_us": []}
    try:
        for _ in range(3):  # warm: the first forks of a process pay its page faults
            _spawn_ms(broker, with_cg, devnull)
            _spawn_ms(broker, without, devnull)
        for r in range(rounds):
            log(f"cgroups: round {r + 1}/{rounds}")
            one: dict[str, list[float]] = {"with": [], "without": []}
            for _ in range(n):
                one["with"].append(_spawn_ms(broker, with_cg, devnull))
                one["without"].append(_spawn_ms(broker, without, devnull))
            times["with"].append(statistics.median(one["with"]))
            times["without"].append(statistics.median(one["without"]))
            made = []
            for _ in range(n):
                started = time.perf_counter()
                cg = host.create(budget)
                if not cg.remove():
                    raise BenchError(f"an empty cgroup could not be removed: {cg.dirs}")
                made.append((time.perf_counter() - started) * 1e6)
            times["make_remove_us"].append(statistics.median(made))
    finally:
        broker.close()
        os.close(devnull)
    return {
        "version": host.version,
        "controllers": list(host.controllers),
        "spawn_with_cgroup_ms": stats(times["with"]),
        "spawn_without_cgroup_ms": stats(times["without"]),
        "with_vs_without": ratios(times["with"], times["without"]),
        "added_ms": stats([a - b for a, b in zip(times["with"], times["without"], strict=True)]),
        "make_and_remove_us": stats(times["make_remove_us"]),
        "rounds": rounds,
        "spawns_per_round": n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cgroups", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=20, help="sandboxes of each kind per round")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.cgroups: run it as root", file=sys.stderr)
        return 2
    res = bench_cgroups(args.rounds, args.n, lambda line: print(line, file=sys.stderr))
    if "skipped" in res:
        print(res["skipped"], file=sys.stderr)
        return 1

    def fmt(s: dict[str, Any], unit: str, digits: int = 2) -> str:
        return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

    print(
        f"cgroup {res['version']} ({', '.join(res['controllers'])}), {args.rounds} rounds of {args.n}: "
        "median (min-max of the rounds)\n"
        f"  Broker.start+wait /bin/true, with its cgroup   {fmt(res['spawn_with_cgroup_ms'], ' ms')}\n"
        f"  the same, cgroups off                          {fmt(res['spawn_without_cgroup_ms'], ' ms')}\n"
        f"  ratio with / without                           {fmt(res['with_vs_without'], 'x')}\n"
        f"  added per spawn                                {fmt(res['added_ms'], ' ms')}\n"
        f"  make + remove one cgroup, no process           {fmt(res['make_and_remove_us'], ' us', 0)}"
    )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
