"""What ``@pytest.mark.privsep`` costs a test: a file of trivial marked tests against the same file unmarked.

Both files run as whole ``python -m pytest`` processes, alternately within a
round, with bwrap's ``/bin/true`` measured in the same round. The marked
run's extra time divided by the number of tests is the cost of one marked
test, everything included: the broker's import, the forkserver's start and
its import of pytest and the test module, shared by the file's tests, then
a confined fork per test. Both runs leave out the cache provider (nothing
written next to the tests) and hypothesis's pytest plugin (its end-of-session
import, ~1 s on this machine, is the same in both and would only add noise).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.workloads import PLAIN_ENV, PYTHON, median_time, ratios, skipped, stats

#: Tests in each file: enough that the forkserver's start is shared as in a real suite.
TESTS = 20
_PYTEST = (PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def _file(marked: bool) -> str:
    lines = ["import pytest", ""]
    for n in range(1, TESTS + 1):
        lines += [
            "",
            *(["@pytest.mark.privsep"] if marked else []),
            f"def test_{n}():",
            f"    assert {n} == {n}",
            "",
        ]
    return "\n".join(lines)


@contextlib.contextmanager
def _projects() -> Iterator[tuple[Path, Path]]:
    """Two test files, each in a directory of its own that the sandbox's uid can read."""
    root = Path(tempfile.mkdtemp(prefix="privsep-bench-pytest-"))
    try:
        root.chmod(0o755)
        paths = []
        for kind in ("marked", "unmarked"):
            (root / kind).mkdir(mode=0o755)
            path = root / kind / f"test_{kind}.py"
            path.write_text(_file(kind == "marked"))
            path.chmod(0o644)
            paths.append(path)
        yield paths[0], paths[1]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_marked(
    rounds: int, log: Callable[[str], None], *, bwrap: Sequence[str], no_bwrap: str | None
) -> dict[str, Any]:
    """Per marked test (ms), against bwrap's /bin/true in the same round (``no_bwrap``: why not)."""
    times: dict[str, list[float]] = {"marked": [], "unmarked": [], "per_test": [], "bwrap": []}
    with _projects() as (marked, unmarked):
        for argv in ((*_PYTEST, str(marked)), (*_PYTEST, str(unmarked))):
            median_time(argv, 1, env=PLAIN_ENV)  # warm: the page cache, privsep's bytecode
        for r in range(rounds):
            log(f"pytest marked: round {r + 1}/{rounds}")
            times["marked"].append(median_time((*_PYTEST, str(marked)), 1, env=PLAIN_ENV))
            times["unmarked"].append(median_time((*_PYTEST, str(unmarked)), 1, env=PLAIN_ENV))
            times["per_test"].append((times["marked"][-1] - times["unmarked"][-1]) / TESTS)
            if no_bwrap is None:
                times["bwrap"].append(median_time(bwrap, 5))
    out: dict[str, Any] = {"tests": TESTS, **{k: stats(v) for k, v in times.items() if v}}
    if no_bwrap is None:
        out["per_test_vs_bwrap"] = ratios(times["per_test"], times["bwrap"])
    else:
        out["bwrap"] = skipped(no_bwrap)
    return out
