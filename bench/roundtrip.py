"""The open round trip alone: ``.venv/bin/python -m bench.roundtrip [--quick] [--rounds N]`` (as root).

Section 1 of ``python -m bench`` (bench/run.py) and its targets, without the
other sections: ``privsep.client.open`` in a confined child against the raw
floor, pinned and unpinned, in a minute instead of several. The number to
watch while working on the request path (client, channel, protocol, the
broker's request server and file service). Prints the table's lines, then the
JSON of the section.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from bench.run import (  # noqa: PLC0415 - run.py's imports are heavy; --help should not wait for them
        _grant_dir,
        bench_roundtrip,
        config,
        roundtrip_rows,
        roundtrip_targets,
    )

    parser = argparse.ArgumentParser(prog="python -m bench.roundtrip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and opens (2 rounds of 1000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; --quick: 2)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with _grant_dir() as grant:
        res = bench_roundtrip(config(args), grant, log)
    print("| section | measure | privsep | floor / peer | ratio |")
    print("|---|---|---|---|---|")
    for row in roundtrip_rows(res):
        print("| " + " | ".join(row) + " |")
    print()
    for t in roundtrip_targets(res):
        met = "met" if t["met"] else "not met"
        print(f"{t['target']} (issue {t['issue']}): {t['measured']:.2f}{t['unit']}, {met}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
