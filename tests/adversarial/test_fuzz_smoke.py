"""CI runs the fuzz harnesses (``fuzz/``) for a bounded number of inputs: a few seconds in all.

A long run is a separate matter (``.venv/bin/python -m fuzz --max-time 3600 --runs 0``);
these tests prove that the one command works, under atheris when it is
installed and as a plain loop otherwise, and that a broken property fails it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO

HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


def fuzz(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYTHON), "-m", "fuzz", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_every_harness_runs_under_the_fuzzer() -> None:
    proc = fuzz("--runs", "2000", "--seed", "1")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "fuzz: every harness passed" in proc.stdout
    for name in ("protocol", "paths"):
        assert f"== {name}: passed" in proc.stdout
    engine = "atheris (libFuzzer)" if HAVE_ATHERIS else "plain random mutation"
    assert output.count(engine) == 2, output[-4000:]
    if HAVE_ATHERIS:
        # libFuzzer's own count: at least the runs asked for (its last round may add a few;
        # once in CI, one harness did not say "Done 2000 runs" exactly).
        done = [int(n) for n in re.findall(r"Done (\d+) runs", output)]
        assert len(done) == 2 and min(done) >= 2000, output[-4000:]


def test_the_harnesses_run_without_atheris_too() -> None:
    proc = fuzz("--runs", "500", "--seed", "2", "--plain")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("Done 500 runs") == 2


BROKEN = textwrap.dedent(
    """
    import sys
    from fuzz._driver import run

    def harness(data: bytes) -> None:
        assert b"{" not in data, "a broken property"

    sys.exit(run("broken", harness, [b"[]", b"x"], [b"{"], sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(
            [], id="atheris", marks=pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris not installed")
        ),
        pytest.param(["--plain"], id="plain"),
    ],
)
def test_a_broken_property_fails_the_run_and_keeps_the_input(mode: list[str], tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    work = [
        f"--artifacts={artifacts}",
        f"--corpus={tmp_path / 'corpus'}",
        f"--scratch={tmp_path / 'scratch'}",
    ]
    proc = subprocess.run(
        [str(PYTHON), "-c", BROKEN, "--runs", "100000", "--seed", "3", *work, *mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "a broken property" in proc.stdout + proc.stderr
    kept = list(artifacts.iterdir())
    assert len(kept) == 1 and b"{" in kept[0].read_bytes()


def test_an_unbounded_run_is_refused() -> None:
    proc = fuzz("--runs", "0")
    assert proc.returncode == 2 and "--max-time" in proc.stderr
