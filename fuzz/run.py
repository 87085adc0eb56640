"""Run every fuzz harness (or some), each in its own process, and report: ``python -m fuzz --runs N``.

Also runnable as ``python fuzz/run.py``. Options not listed here (``--seed``,
``--max-len``, ``--plain``, and libFuzzer's own ``-flags``) go to every
harness. Each harness gets a working directory of its own for its corpus
and failing inputs; it is removed when the harness passes and kept (and
named) when it fails. Exit status: 0 when every harness passed, else 1.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESSES = {"protocol": "fuzz.protocol_fuzz", "paths": "fuzz.paths_fuzz"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="inputs per harness (0: no bound)")
    parser.add_argument("--max-time", type=int, default=0, help="seconds per harness (0: no bound)")
    parser.add_argument(
        "--harness", action="append", choices=sorted(HARNESSES), help="run only this one (repeatable)"
    )
    args, extra = parser.parse_known_args(argv)
    if args.runs <= 0 and args.max_time <= 0:
        parser.error("give --runs N or --max-time S: an unbounded run never ends")
    failed = []
    for name in args.harness or list(HARNESSES):
        work = Path(tempfile.mkdtemp(prefix=f"privsep-fuzz-{name}-"))
        command = [
            sys.executable,
            "-m",
            HARNESSES[name],
            f"--runs={args.runs}",
            f"--max-time={args.max_time}",
            f"--artifacts={work / 'artifacts'}",
            f"--corpus={work / 'corpus'}",
            f"--scratch={work / 'scratch'}",
            *extra,
        ]
        started = time.monotonic()
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        status = subprocess.run(command, cwd=REPO, check=False).returncode
        took = time.monotonic() - started
        if status == 0:
            shutil.rmtree(work, ignore_errors=True)
            print(f"== {name}: passed in {took:.1f} s", flush=True)
        else:
            failed.append(name)
            print(f"== {name}: FAILED (exit {status}) in {took:.1f} s; inputs kept in {work}", flush=True)
    print(f"fuzz: {len(failed)} failed: {', '.join(failed)}" if failed else "fuzz: every harness passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
