"""What one sandbox's load costs its siblings, and whether children of one Sandbox overlap.

The tests assert the order of events only (tests/adversarial/test_hostile_broker.py: a
sibling is answered *while* a flood goes on, while a connect hangs, while a huge directory
is listed; tests/integration/test_sandbox.py: three runs of one Sandbox are alive at once).
How much each costs in time is measured here:

- a well-behaved sibling's ``client.ping`` round trip (p50, p99), alone and while another
  sandbox of the same in-process broker floods pings, hangs connects (to a listener whose
  accept queue is full) or lists a large directory, page after page (each page request reads
  the whole directory, on a worker thread); each against "alone" within the same round;
- ``Sandbox.arun`` of three ``/bin/sleep 0.3`` at once against one alone: about 1x if they
  run at once, 3x if one after another.

Part of ``python -m bench``; alone: ``python -m bench.isolation [--quick] [--rounds N]``
prints the same rows and the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workloads import _PRELUDE, BenchError, Stats, python_argv, ratios, stats
from privsep.broker.loop import Broker, Child
from privsep.broker.services import Services
from privsep.plan.spawnplan import make_plan
from privsep.policy.load import load_policy
from privsep.policy.model import Policy
from privsep.sandbox import Sandbox

#: The sibling: one line on stdin (a count) -> that many timed pings -> one JSON line.
SIBLING = (
    _PRELUDE
    + """
from privsep import client
client.ping()
print("ready", flush=True)
while line := sys.stdin.readline():
    print(json.dumps(timed(client.ping, int(line), 10)), flush=True)
"""
)

#: The load: the same raw request over and over (no client library: any op, no fd checks),
#: until a byte arrives on stdin.
LOAD = (
    _PRELUDE
    + """
import select, socket
s = socket.socket(fileno=int(os.environ["PRIVSEP_FD"]))
def call(**fields):
    s.send(json.dumps(fields).encode())
    return json.loads(s.recv(65536))
assert call(id=1, op="hello", versions=[1])["ok"]
n = 1
while not select.select([0], [], [], 0)[0]:
    n += 1
    reply = call(id=n, **ARGS["request"])
    assert reply["id"] == n, reply
print(json.dumps({"requests": n - 1}))
"""
)

LOADS = ("flood", "hung_connect", "listing")


def _tarpit() -> list[socket.socket]:
    """A listener (first) whose accept queue is full: a connect to it hangs until its timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    return [listener, *fillers]


class _Piped:
    """A confined child whose stdin and stdout are pipes this process (the broker) drives."""

    def __init__(self, broker: Broker, policy: Policy, services: Services, code: str, args: dict[str, Any]):
        self.broker = broker
        stdin_r, self.stdin = os.pipe2(os.O_CLOEXEC)
        self.stdout, stdout_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            plan = make_plan(policy, python_argv(code, args))
            stdio = (stdin_r, stdout_w, devnull)
            self.child: Child = broker.start(plan, services=services, timeout=600, stdio=stdio)
        finally:
            for fd in (stdin_r, stdout_w, devnull):
                os.close(fd)
        self._buffer = b""

    def line(self, limit: float = 120) -> str:
        deadline = time.monotonic() + limit
        while b"\n" not in self._buffer:
            if self.child.outcome is not None:
                raise BenchError(f"a child ended: {self.child.outcome}")
            if time.monotonic() > deadline:
                raise BenchError(f"a child said nothing for {limit:g} s")
            self.broker.run_once(max_wait=0.005)
            with contextlib.suppress(BlockingIOError):
                self._buffer += os.read(self.stdout, 65536)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def tell(self, text: str) -> None:
        os.write(self.stdin, text.encode())

    def close(self) -> None:
        os.close(self.stdin)
        deadline = time.monotonic() + 60
        while self.child.outcome is None and time.monotonic() < deadline:
            self.broker.run_once(max_wait=0.05)
        os.close(self.stdout)


@dataclass(frozen=True)
class _Arena:
    broker: Broker
    policy: Policy
    services: Services
    requests: dict[str, dict[str, Any]]
    """Each load's request, as it goes on the wire."""

    def start(self, code: str, args: dict[str, Any]) -> _Piped:
        return _Piped(self.broker, self.policy, self.services, code, args)


@contextlib.contextmanager
def _arena(files: int) -> Iterator[_Arena]:
    """One broker, and a policy that grants the loads what they ask."""
    work = Path(tempfile.mkdtemp(prefix="privsep-bench-isolation-"))
    big = work / "big"
    big.mkdir()
    for i in range(files):
        os.close(os.open(big / f"n{i:07d}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    pit = _tarpit()
    port = pit[0].getsockname()[1]
    policy = load_policy(
        "python",
        extra={
            "files": [{"path": str(big), "access": ["read", "list"]}],
            "connect": [{"host": "127.0.0.1", "ports": [port]}],
        },
    )
    requests = {
        "flood": {"op": "ping"},
        "hung_connect": {"op": "connect", "host": "127.0.0.1", "port": port, "timeout_ms": 2000},
        # The last page only: each page request reads and sorts the whole directory anyway.
        "listing": {"op": "listdir", "path": str(big), "offset": max(files - 100, 0)},
    }
    services = Services(policy)
    broker = Broker()
    try:
        yield _Arena(broker, policy, services, requests)
    finally:
        broker.close()
        services.close()
        for sock in pit:
            sock.close()
        shutil.rmtree(work, ignore_errors=True)


def _under_load(arena: _Arena, sibling: _Piped, load_name: str, pings: int) -> dict[str, float]:
    load = arena.start(LOAD, {"request": arena.requests[load_name]})
    try:
        deadline = time.monotonic() + 60
        while load.child.serving.requests < 3:  # hello, then the load is on
            if load.child.outcome is not None or time.monotonic() > deadline:
                raise BenchError(f"the load did not start: {load.child.outcome}")
            arena.broker.run_once(max_wait=0.01)
        sibling.tell(f"{pings}\n")
        measured: dict[str, float] = json.loads(sibling.line())
        if load.child.outcome is not None:
            raise BenchError(f"the load ended while the sibling was measured: {load.child.outcome}")
        load.tell("x")
        load.line()
    finally:
        load.close()
    return measured


def bench_isolation(rounds: int, pings: int, files: int, log: Callable[[str], None]) -> dict[str, Any]:
    alone: dict[str, list[float]] = {"p50_us": [], "p99_us": []}
    during: dict[str, dict[str, list[float]]] = {k: {"p50_us": [], "p99_us": []} for k in LOADS}
    with _arena(files) as arena:
        sibling = arena.start(SIBLING, {})
        try:
            if sibling.line() != "ready":
                raise BenchError("the sibling did not start")
            for r in range(rounds):
                log(f"isolation: round {r + 1}/{rounds}")
                sibling.tell(f"{pings}\n")
                base = json.loads(sibling.line())
                for key, values in alone.items():
                    values.append(base[key])
                for name in LOADS:
                    got = _under_load(arena, sibling, name, pings)
                    for key, values in during[name].items():
                        values.append(got[key])
        finally:
            sibling.close()
    out: dict[str, Any] = {"pings": pings, "files": files, "alone": {k: stats(v) for k, v in alone.items()}}
    for name in LOADS:
        out[name] = {k: stats(v) for k, v in during[name].items()}
        out[name]["p50_vs_alone"] = ratios(during[name]["p50_us"], alone["p50_us"])
    out["concurrent_runs"] = _concurrent_runs(rounds, log)
    return out


def _concurrent_runs(rounds: int, log: Callable[[str], None]) -> dict[str, Stats]:
    """Wall time (ms) of three ``Sandbox.arun`` of ``/bin/sleep 0.3`` at once, and of one."""

    async def timed(sb: Sandbox, n: int) -> float:
        started = time.perf_counter()
        results = await asyncio.gather(*(sb.arun(["/bin/sleep", "0.3"]) for _ in range(n)))
        if any(r.returncode != 0 for r in results):
            raise BenchError(f"Sandbox.arun(['/bin/sleep', '0.3']): {[r.how for r in results]}")
        return (time.perf_counter() - started) * 1e3

    async def measure() -> tuple[list[float], list[float]]:
        one: list[float] = []
        three: list[float] = []
        async with Sandbox("minimal") as sb:
            await timed(sb, 1)  # warm
            for r in range(rounds):
                log(f"isolation: concurrent runs, round {r + 1}/{rounds}")
                one.append(await timed(sb, 1))
                three.append(await timed(sb, 3))
        return one, three

    one, three = asyncio.run(measure())
    return {"one_ms": stats(one), "three_ms": stats(three), "three_vs_one": ratios(three, one)}


Row = tuple[str, str, str, str, str]


def rows(res: dict[str, Any], fmt: Callable[..., str], ratio: Callable[[Stats | None], str]) -> list[Row]:
    """The table's lines for this section (run.py's formatting helpers passed in)."""
    section = f"isolation ({res['pings']} sibling pings)"
    alone = res["alone"]

    def both(m: dict[str, Stats]) -> str:
        return f"{fmt(m['p50_us'], ' us')} / {fmt(m['p99_us'], ' us')}"

    out: list[Row] = [(section, "sibling ping p50 / p99, alone", both(alone), "", "")]
    labels = {
        "flood": "while another sandbox floods pings",
        "hung_connect": "while another sandbox's connects hang",
        "listing": f"while another sandbox lists {res['files']:,} entries, page after page",
    }
    for name, label in labels.items():
        m = res[name]
        out.append(
            (section, f"sibling ping p50 / p99, {label}", both(m), fmt(alone["p50_us"], " us"),
             ratio(m["p50_vs_alone"]))
        )  # fmt: skip
    c = res["concurrent_runs"]
    out.append(
        ("isolation", "Sandbox.arun: 3 x /bin/sleep 0.3 at once vs 1 (wall)", fmt(c["three_ms"], " ms"),
         fmt(c["one_ms"], " ms"), ratio(c["three_vs_one"]))
    )  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from bench.run import _fmt, _ratio  # noqa: PLC0415 - run.py imports this module

    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, pings and entries")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; --quick: 2)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    pings, files = (300, 20_000) if args.quick else (2000, 100_000)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    res = bench_isolation(rounds, pings, files, log)
    for row in rows(res, _fmt, _ratio):
        print("| " + " | ".join(row) + " |")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
