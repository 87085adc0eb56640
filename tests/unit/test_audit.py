"""The audit log stays bounded whatever a child does: repeats folded, a size cap, drops said."""

from __future__ import annotations

import json
from pathlib import Path

from privsep.broker.audit import AuditLog, Record


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _denial(target: str) -> Record:
    return Record(7, "open", target, "deny", None, 3, code="denied", message="no rule")


def test_a_run_of_identical_records_is_one_line_and_a_count(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "a.jsonl"))
    for _ in range(10_000):
        log.write(_denial("/etc/shadow"))
    log.write(_denial("/etc/other"))
    log.close()
    lines = _lines(tmp_path / "a.jsonl")
    assert [(r["target"], r.get("repeated")) for r in lines] == [
        ("/etc/shadow", None),
        ("/etc/shadow", 9999),
        ("/etc/other", None),
    ]


def test_past_the_cap_records_are_dropped_and_the_log_says_how_many(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(str(path), max_bytes=10_000)
    for i in range(1000):
        log.write(_denial(f"/etc/f{i}"))  # distinct: nothing to fold
    log.close()
    lines = _lines(path)
    kept = len(lines) - 1
    assert path.stat().st_size < 10_000 + 500
    assert lines[-1]["op"] == "audit" and lines[-1]["dropped"] == 1000 - kept
    assert "cap" in str(lines[-1]["message"])


def test_a_hostile_target_cannot_forge_a_line(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "a.jsonl"))
    log.write(_denial('/x\n{"decision": "allow"}'))
    log.close()
    lines = _lines(tmp_path / "a.jsonl")
    assert len(lines) == 1 and lines[0]["decision"] == "deny"
