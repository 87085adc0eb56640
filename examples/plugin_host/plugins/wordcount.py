"""A well-behaved plugin: counts the words of each text file of its input directory.

It reaches its directories only through the broker (``privsep.client``): the
input is not in its view at all.
"""

from __future__ import annotations

import json
from typing import Any

from privsep import client


def run(input_dir: str, output_dir: str) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for name in sorted(client.listdir(input_dir)):
        if name.endswith(".txt"):
            with client.open(f"{input_dir}/{name}") as f:
                counts[name] = len(f.read().split())
    with client.open(f"{output_dir}/wordcount.json", "w") as f:
        json.dump(counts, f, sort_keys=True)
    return {"files": len(counts), "words": sum(counts.values())}
