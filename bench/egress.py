"""Egress by host name (issue 17): what a name costs an unmodified program in the sandbox.

- a brokered DNS lookup: ``socket.getaddrinfo`` of a name pinned in the policy, which
  glibc asks privsep's resolver for (UDP to 127.0.0.53, answered by the broker's loop),
  against ``getaddrinfo("localhost")`` in the same sandbox, answered from the view's
  ``/etc/hosts`` without any DNS (the library's own cost);
- a proxied request against a direct one: an HTTP GET by name on a new connection each
  time, through privsep's HTTP proxy (absolute-form: the broker decides the name,
  connects, relays) against the same GET connected directly to the address the
  resolver answered (a transparent connect the broker admits and performs). The origin
  is a separate process on 127.0.0.1, so it shares no interpreter lock with the broker.

Every number is p50 per operation, in microseconds, within one round; rounds give
median (min-max). Part of ``python -m bench``; alone: ``python -m bench.egress [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from bench.workloads import _PRELUDE, PYTHON, BenchError, Stats, ratios, run_confined, stats
from privsep.broker.loop import Broker
from privsep.broker.services import Services
from privsep.plan.spawnplan import make_plan
from privsep.policy.load import load_policy

Row = tuple[str, str, str, str, str]
NAME = "api.test"

RESOLVE = (
    _PRELUDE
    + """
import socket
name = ARGS["name"]

def op():
    socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)

print(json.dumps(timed(op, ARGS["n"], ARGS["warmup"])))
"""
)

FETCH = (
    _PRELUDE
    + """
import socket
host, port = ARGS["host"], ARGS["port"]
if ARGS["proxy"]:
    address = ("127.0.0.1", 3128)
    request = f"GET http://{host}:{port}/ HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n".encode()
else:
    address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    request = f"GET / HTTP/1.1\\r\\nHost: {host}:{port}\\r\\nConnection: close\\r\\n\\r\\n".encode()

def op():
    s = socket.create_connection(address, timeout=30)
    s.sendall(request)
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    if not reply.endswith(b"ok"):
        raise SystemExit(f"unexpected reply {reply[:200]!r}")

print(json.dumps(timed(op, ARGS["n"], ARGS["warmup"])))
"""
)

#: The origin: answers every request with "ok" and closes; prints its port, then serves until killed.
ORIGIN = """
import socket, threading
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(256)
print(listener.getsockname()[1], flush=True)

def serve(conn):
    with conn:
        data = b""
        while b"\\r\\n\\r\\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")

while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@contextmanager
def _origin() -> Iterator[int]:
    proc = subprocess.Popen([PYTHON, "-c", ORIGIN], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise BenchError(f"the origin did not start: {line!r}")
        yield int(line)
    finally:
        proc.kill()
        proc.wait()


def bench_egress(rounds: int, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    values: dict[str, list[float]] = {"resolve": [], "localhost": [], "direct": [], "proxied": []}
    with _origin() as port:
        policy = load_policy(
            "python",
            extra={
                "connect": [{"host": NAME, "ports": [port]}],
                "network": {"hosts": {NAME: "127.0.0.1"}, "proxy": True},
            },
        )
        services = Services(policy)
        broker = Broker()
        try:
            plan = make_plan(policy, [PYTHON])
            for r in range(rounds):
                log(f"egress: round {r + 1}/{rounds}")
                warm = max(5, n // 10)
                for key, name in (("resolve", NAME), ("localhost", "localhost")):
                    got = run_confined(
                        broker, plan, services, RESOLVE, {"name": name, "n": n, "warmup": warm}
                    )
                    values[key].append(got["p50_us"])
                for key, proxy in (("direct", False), ("proxied", True)):
                    args = {"host": NAME, "port": port, "proxy": proxy, "n": n, "warmup": warm}
                    values[key].append(run_confined(broker, plan, services, FETCH, args)["p50_us"])
        finally:
            broker.close()
            services.close()
    out: dict[str, Any] = {"n": n, **{k: stats(v) for k, v in values.items()}}
    out["resolve_vs_localhost"] = ratios(values["resolve"], values["localhost"])
    out["proxied_vs_direct"] = ratios(values["proxied"], values["direct"])
    return out


def rows(res: dict[str, Any], fmt: Callable[..., str], ratio: Callable[[Stats | None], str]) -> list[Row]:
    """The table's lines for this section (run.py's formatting helpers passed in)."""
    if "skipped" in res:
        return [("egress", "brokered DNS lookup; proxied request", fmt(res), "", "")]
    section = f"egress ({res['n']} per round, p50)"
    return [
        (section, "getaddrinfo of a pinned name through the sandbox's resolver (UDP, the broker answers)",
         fmt(res["resolve"], " us"), fmt(res["localhost"], " us") + " (localhost, /etc/hosts)",
         ratio(res["resolve_vs_localhost"])),
        (section, "HTTP GET by name, new connection each: through privsep's proxy vs direct (transparent)",
         fmt(res["proxied"], " us"), fmt(res["direct"], " us"), ratio(res["proxied_vs_direct"])),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from bench.run import _fmt, _ratio  # noqa: PLC0415 - run.py imports this module

    parser = argparse.ArgumentParser(prog="python -m bench.egress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 50 operations")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    res = bench_egress(rounds, 50 if args.quick else 300, lambda m: print(m, file=sys.stderr, flush=True))
    for row in rows(res, _fmt, _ratio):
        print("| " + " | ".join(row) + " |")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
