"""A well-behaved plugin: writes an upper-case copy of each text file of its input directory."""

from __future__ import annotations

from privsep import client


def run(input_dir: str, output_dir: str) -> list[str]:
    written = []
    for name in sorted(client.listdir(input_dir)):
        if name.endswith(".txt"):
            with client.open(f"{input_dir}/{name}") as src, client.open(f"{output_dir}/{name}", "w") as dst:
                dst.write(src.read().upper())
            written.append(name)
    return written
