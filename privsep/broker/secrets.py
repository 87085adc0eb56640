"""Secrets as capabilities: a sealed, read-only memfd, made on explicit request.

A secret's value never travels in a frame, an environment variable, argv,
a log line or an error message: the broker reads its source (an
environment variable of the broker, or a file) when the child asks, writes
it into a fresh memfd, seals it (no write, shrink or grow, and no further
seals), and hands over a read-only descriptor of it. The child can read it
and mmap it read-only, and nothing else.
"""

from __future__ import annotations

import fcntl
import os

from privsep.broker.answers import Answer, denied, failed
from privsep.policy.model import Policy

_MAX_SECRET = 1 << 20
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class SecretService:
    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def secret(self, name: str) -> Answer:
        source = self._policy.secrets.get(name)
        if source is None:
            # The name came from the child: say what to do, not what it asked.
            raise denied("the policy has no secret of that name", allow="--secret")
        rule = f"secrets.{name}"  # a key of the policy, not the child's text
        value = self._read(source.kind, source.ref, rule)
        memfd = os.memfd_create("privsep-secret", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(value)
            while view:
                view = view[os.write(memfd, view) :]
            fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _SEALS)
            # A new, read-only open file description of the same memory.
            readonly = os.open(f"/proc/self/fd/{memfd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(memfd)
        return Answer({"size": len(value)}, fd=readonly, rule=rule)

    @staticmethod
    def _read(kind: str, ref: str, rule: str) -> bytes:
        return read_source(kind, ref, rule)


def read_source(kind: str, ref: str, rule: str) -> bytes:
    """A secret's value from its source (the broker's environment, or a file); ``rule`` names it
    in the refusal. Also the proxy's injected headers' (broker/proxy.py), which no request reads."""
    if kind == "env":
        value = os.environb.get(os.fsencode(ref))
        if value is None:
            raise failed(f"{rule} is not available: the broker's environment has no {ref}", rule=rule)
        return value
    try:
        fd = os.open(ref, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise failed(f"{rule} is not available: cannot open its file ({exc.strerror})", rule=rule) from None
    try:
        chunks = []
        total = 0
        while chunk := os.read(fd, 65536):
            total += len(chunk)
            if total > _MAX_SECRET:
                raise failed(f"{rule} is larger than {_MAX_SECRET} bytes", rule=rule)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
