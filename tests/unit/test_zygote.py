"""The zygote stays small (what its interpreter imports, and what it is given), and the
clone it starts sandboxes with refuses a caller it would not be safe in.

Each sandbox a ``Sandbox`` starts is a clone of the zygote, so every module
it holds is memory each sandbox maps, and every at-fork hook runs once per
sandbox process. These tests read the modules of a real zygote interpreter
(started as ``Zygote`` starts it), not timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from privsep import _linux
from privsep.confine import zygote

_LIST_MODULES = "import json, sys\nimport privsep.confine.zygote\nprint(json.dumps(sorted(sys.modules)))\n"


def _zygote_modules() -> set[str]:
    proc = subprocess.run(
        [sys.executable, *zygote.interpreter_flags(), "-c", _LIST_MODULES],
        env=zygote.environment(),
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return set(json.loads(proc.stdout))


def test_the_zygote_imports_nothing_of_the_broker() -> None:
    modules = _zygote_modules()
    assert "privsep.confine.inside" in modules  # what it runs
    heavy = {
        "pydantic",  # the policy's and the protocol's models
        "privsep.policy.model",
        "privsep.protocol",
        "privsep.channel",
        "privsep.broker",
        "site",  # no site, no editable-install finder
    }
    assert not heavy & modules
    # threading's at-fork hook would run in every sandbox process it starts (~140 page faults).
    assert "threading" not in modules


def test_the_zygote_gets_no_environment_of_the_brokers() -> None:
    env = zygote.environment()
    assert set(env) == {"PATH", "PYTHONPATH"}
    assert "-S" in zygote.interpreter_flags()  # and no site: it finds only privsep and python-prctl


def test_a_process_with_other_threads_may_not_clone() -> None:
    """fork_into skips glibc's fork handlers: with another thread alive, it refuses before the clone."""
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        with pytest.raises(RuntimeError, match="other threads"):
            _linux.fork_into(0)
    finally:
        release.set()
        other.join()
