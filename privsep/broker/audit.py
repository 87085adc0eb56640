"""The audit log: one JSON line per decision the broker makes.

Firefox's sandbox taught that good denial logs are what make a policy
debuggable. Each record says when, for which sandbox, which operation on
what, whether it was allowed, by which rule, and how long it took.
Secret *names* appear; secret values never do (the broker reads a value
only when asked, straight into the memfd it hands over). Targets are the child's input, so
they are written as JSON strings: control characters are escaped, and no
line can be forged.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    pid: int | None
    op: str
    target: str
    decision: str  # "allow" | "deny" | "error"
    rule: str | None
    latency_us: int
    code: str | None = None
    message: str | None = None


class AuditLog:
    """Appends records to a file (created 0600); each write is one line, one ``write``."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, 0o600)

    def write(self, record: Record) -> None:
        entry: dict[str, object] = {"time": round(time.time(), 6), **record.__dict__}
        line = json.dumps({k: v for k, v in entry.items() if v is not None}, ensure_ascii=True) + "\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
