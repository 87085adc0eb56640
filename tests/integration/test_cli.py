"""The command line beyond ``run``: what a user types to learn about policies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import PRIVSEP


def test_policy_schema_is_the_json_schema_of_a_policy_file() -> None:
    proc = subprocess.run([str(PRIVSEP), "policy", "schema"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"extends", "view", "files", "connect", "bind", "secrets", "syscalls", "limits", "env"} <= set(
        schema["properties"]
    )


def test_policy_schema_into_a_closed_pipe_is_not_an_error() -> None:
    """``privsep policy schema | head`` ends quietly with status 0."""
    proc = subprocess.Popen(
        [str(PRIVSEP), "policy", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait() == 0
    assert b"Traceback" not in stderr


def test_a_start_that_blocks_still_stops_on_a_signal(tmp_path: Path) -> None:
    """Fresh-eyes audit 12: an ``--audit-log`` on a FIFO nobody reads blocks the start in
    ``open``. privsep then held SIGTERM for a command that never came, and only SIGKILL ended
    it; the signal now stops the start, and privsep exits 128+N saying so."""
    fifo = tmp_path / "log"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [str(PRIVSEP), "run", "--audit-log", str(fifo), "--", "/bin/true"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while _wchan(proc.pid) != "wait_for_partner" and time.monotonic() < deadline:
            time.sleep(0.01)  # planning first (a cold run: a quarter of a second)
        assert _wchan(proc.pid) == "wait_for_partner", "privsep never reached the FIFO"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "privsep: stopped by SIGTERM while the sandbox started" in err


def _wchan(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read()
    except OSError:
        return ""
