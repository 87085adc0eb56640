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
import sys
import threading
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


#: Bytes one run may write to the audit log; past it, records are counted, not written.
MAX_AUDIT_BYTES = 64 << 20


class AuditLog:
    """Appends records to a file (created 0600); each write is one line, one ``write``.

    Bounded, because a hostile child decides how many records there are (an
    audit measured 60-90 MB in 4 s of denied calls):

    - a record identical to the one before it (same sandbox, op, target,
      decision, rule, code) is not written again; when the run of repeats ends,
      one line says how many were folded (``"repeated": N``);
    - past ``max_bytes`` nothing more is written but a final line, at close,
      saying how many records were dropped (``"dropped": N``).

    A write that fails (the disk is full, perhaps filled by a sandbox through a
    write grant) never stops the broker: the decisions are enforced as before, the
    record is counted as dropped, and the first failure is said once on stderr.
    Worker threads write too (a bug of ours they met), so writes take a lock.
    """

    def __init__(self, path: str, *, max_bytes: int = MAX_AUDIT_BYTES) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, 0o600)
        self._max = max_bytes
        self._written = 0
        self._dropped = 0
        self._last: tuple[object, ...] | None = None
        self._last_record: Record | None = None
        self._repeats = 0
        self._failed: str | None = None  # why writing failed, once it has
        self._lock = threading.Lock()

    def write(self, record: Record) -> None:
        key = (record.pid, record.op, record.target, record.decision, record.rule, record.code)
        with self._lock:
            if key == self._last:
                self._repeats += 1
                return
            self._flush_repeats()
            self._last, self._last_record = key, record
            self._emit(record.__dict__)

    def _flush_repeats(self) -> None:
        if self._repeats and self._last_record is not None:
            last = self._last_record
            self._emit(
                {"pid": last.pid, "op": last.op, "target": last.target, "decision": last.decision,
                 "rule": last.rule, "repeated": self._repeats}
            )  # fmt: skip
        self._repeats = 0

    def _emit(self, fields: dict[str, object], *, final: bool = False) -> None:
        entry: dict[str, object] = {"time": round(time.time(), 6), **fields}
        line = (
            json.dumps({k: v for k, v in entry.items() if v is not None}, ensure_ascii=True) + "\n"
        ).encode()
        if not final and self._written + len(line) > self._max:
            repeated = fields.get("repeated")
            self._dropped += 1 + (repeated if isinstance(repeated, int) else 0)
            return
        try:
            os.write(self._fd, line)
        except OSError as exc:
            self._dropped += 1
            if self._failed is None:
                self._failed = exc.strerror or str(exc)
                print(
                    f"privsep: cannot write the audit log ({self._failed}); later records are counted, "
                    "not written. Every decision is still enforced.",
                    file=sys.stderr,
                    flush=True,
                )
            return
        self._written += len(line)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self._flush_repeats()
                if self._dropped:
                    note = (
                        f"writing the audit log failed ({self._failed}); records were dropped"
                        if self._failed is not None
                        else f"the audit log reached its cap of {self._max} bytes; later records were dropped"
                    )
                    self._emit({"op": "audit", "dropped": self._dropped, "message": note}, final=True)
            finally:
                os.close(self._fd)
                self._fd = -1
