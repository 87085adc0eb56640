"""The command line beyond ``run``: what a user types to learn about policies."""

from __future__ import annotations

import json
import subprocess

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
