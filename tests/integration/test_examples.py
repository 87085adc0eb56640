"""The examples of examples/ run end to end, each through the one command the README gives it.

Each runs as a subprocess from the repository root, as root and with a
non-root broker (the user-namespace path), and its output is checked for
what the example promises.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from collections.abc import Sequence

import pytest

from tests.conftest import PYTHON, REPO, as_nonroot

TIMEOUT = 120


def run_example(argv: Sequence[str], broker_user: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        as_nonroot(argv) if broker_user == "nonroot" else list(argv),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_plugin_host_runs_every_plugin_and_reports_the_hostile_ones_denials(broker_user: str) -> None:
    out = run_example([str(PYTHON), "examples/plugin_host/host.py"], broker_user).stdout
    assert "found 3 plugins" in out
    hostile = out.split("== plugin hostile")[1].split("== plugin")[0]
    assert "failed: DeniedError: connect('203.0.113.7', 443" in hostile
    assert "open /root/.ssh/id_rsa: no [[files]] rule covers this path" in hostile
    assert "open /etc/shadow: no [[files]] rule covers this path" in hostile
    assert re.search(r"socket AF_INET: \w+Error: ", hostile)  # an empty network namespace
    assert "fork bomb: stopped after" in hostile
    assert "GOT" not in hostile
    # ... and the host went on to the next plugins.
    assert '{"fox.txt": 9, "lorem.txt": 5}' in out.split("== plugin wordcount")[1]
    assert "THE QUICK BROWN FOX" in out.split("== plugin shout")[1]
    assert out.rstrip().endswith("all 3 plugins ran; the hostile one was contained")


def test_daemon_serves_a_page_from_its_doc_root_and_stops(broker_user: str) -> None:
    proc = run_example([str(PYTHON), "examples/daemon/run.py"], broker_user)
    scheme = "https" if shutil.which("openssl") else "http"
    assert f"daemon: listening on {scheme}://127.0.0.1:" in proc.stdout
    assert " -> 200\n<!doctype html>" in proc.stdout
    assert "<h1>Hello from a confined daemon</h1>" in proc.stdout
    assert "(a symlink to the key) -> 403" in proc.stdout
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    assert "daemon: stopped\ndaemon exit status 0" in proc.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("privsep.pytest_plugin") is None,
    reason="privsep.pytest_plugin does not exist yet: the security_tests example needs it",
)
def test_security_tests_pass_under_the_pytest_plugin(broker_user: str) -> None:
    proc = run_example([str(PYTHON), "-m", "pytest", "examples/security_tests", "-q"], broker_user)
    assert " passed" in proc.stdout
    assert "failed" not in proc.stdout and "skipped" not in proc.stdout


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on this machine")
def test_c_client_speaks_the_wire_protocol(broker_user: str) -> None:
    out = run_example(["/bin/sh", "examples/c_client/run.sh"], broker_user).stdout
    assert 'hello: protocol version 1, broker "privsep ' in out
    assert 'ping: {"id":2,"ok":true,"result":{}}' in out
    assert "greeting.txt by myself: No such file or directory (not in my view)" in out
    assert "greeting.txt: granted, fd " in out
    assert "Hello from a file only the broker can open." in out
    assert "open /etc/shadow: refused: code=denied message=no [[files]] rule covers this path" in out
