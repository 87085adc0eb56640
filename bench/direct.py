"""One ``Broker.start`` + wait of ``/bin/true``, timed step by step; and ``privsep run``'s way of it.

:func:`spawn_phases` drives one sandbox by hand and notes when the broker saw
each of its steps. ``bench/run.py`` uses it in its own process for the two
ways a broker with threads starts a sandbox (a zygote's clone; a forked
monitor). ``privsep run``'s broker has one thread and clones init itself
(``confine/spawn.py``): that way is measured here, in a process of its own
(``python -m bench.direct N``), because the benchmark's process has threads
and would fork a monitor instead. Prints one JSON line: each step's median
over ``N`` starts, and the loop's median wake-ups per start.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from bench.workloads import BenchError
from privsep import _linux
from privsep.broker.loop import Broker
from privsep.broker.services import Services
from privsep.plan.spawnplan import SpawnPlan, make_plan
from privsep.policy.load import load_policy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from privsep.broker.lifecycle import Spawner

#: When the broker saw each step of one sandbox, from before ``Broker.start``: the start
#: returned (forked or cloned), init reported (only a monitor's init reports itself), the
#: command reported (view built), the seccomp listener arrived (just before execve), the
#: sandbox ended (its first process reaped, init gone).
PHASES = ("forked", "init", "command", "exec", "ended")


def spawn_phases(
    broker: Broker, plan: SpawnPlan, services: Services, devnull: int, spawner: Spawner | None = None
) -> dict[str, float]:
    """One /bin/true sandbox, driven by hand to time its steps (ms) and count the loop's wake-ups."""
    started = time.perf_counter()
    child = broker.start(plan, services=services, stdio=(devnull,) * 3, spawner=spawner)
    seen = {"forked": (time.perf_counter() - started) * 1e3}
    wakeups = 0
    while child.outcome is None:
        broker.run_once()
        wakeups += 1
        now = (time.perf_counter() - started) * 1e3
        for phase, fd in (
            ("init", child.procs.init_pidfd),
            ("command", child.procs.command_pidfd),
            ("exec", child.procs.listener),
        ):
            if fd is not None and phase not in seen:
                seen[phase] = now
    seen["ended"] = (time.perf_counter() - started) * 1e3
    if child.outcome.returncode != 0:
        raise BenchError(f"Broker.start(/bin/true): {child.outcome.describe()}")
    for phase in PHASES:
        seen.setdefault(phase, seen["ended"])  # released in the same wake-up as the end
    return {**seen, "wakeups": float(wakeups)}


def main(n: int) -> dict[str, float]:
    """``n`` starts from this process, a broker of one thread, as ``privsep run`` makes them."""
    minimal = load_policy("minimal")
    plan = make_plan(minimal, ["/bin/true"])
    services = Services(minimal)
    broker = Broker()
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        threads = _linux.threads()
        if threads != 1:
            raise BenchError(f"the broker has {threads} threads: it would fork a monitor, not clone init")
        spawn_phases(broker, plan, services, devnull)  # warm: first-use imports
        runs = [spawn_phases(broker, plan, services, devnull) for _ in range(n)]
    finally:
        broker.close()
        services.close()
        os.close(devnull)
    return {key: statistics.median(r[key] for r in runs) for key in (*PHASES, "wakeups")}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
