"""Rule 6: no input from a child makes the broker raise; an internal error is logged and answered.

Found by an audit: an unmodified program's ``open(b"/granted/\\xff")`` built a
request model that rejected the lone surrogate, and the ValidationError
stopped the broker (``privsep run`` died with a traceback; every sibling with it).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from privsep import protocol
from privsep.broker.answers import Answer
from privsep.broker.loop import Broker
from privsep.broker.outcome import Outcome
from privsep.broker.services import Services
from privsep.plan.spawnplan import make_plan
from privsep.policy.load import load_policy
from privsep.policy.model import Policy
from tests.conftest import PYTHON, RunPrivsep


@pytest.fixture
def granted(shared_tmp: Path) -> Path:
    """A broker-served grant outside /tmp's private tmpfs reach: shared_tmp/g with a.txt."""
    (shared_tmp / "g").mkdir(mode=0o755)
    (shared_tmp / "g" / "a.txt").write_text("hi\n")
    (shared_tmp / "g" / "a.txt").chmod(0o644)
    policy = shared_tmp / "p.toml"
    policy.write_text(
        f'extends = "python"\n[view]\ntmp = false\n'
        f'[[files]]\npath = "{shared_tmp}/g"\naccess = ["read", "list"]\nserve = "broker"\n'
    )
    policy.chmod(0o644)
    return shared_tmp


@pytest.mark.parametrize("length", [1, 1200])
def test_a_non_utf8_path_is_refused_and_reported_not_a_crash(
    run_privsep: RunPrivsep, granted: Path, length: int
) -> None:
    """1200 bytes of \\xff escape to 4800 characters: more than a request model holds (fresh-eyes audit)."""
    bad = (str(granted) + "/g/").encode() + b"\xff" * length
    code = (
        "import json\nout = {}\n"
        f"for _ in range(20):\n    try:\n        open({bad!r})\n    except OSError as e:\n"
        "        out['bad'] = e.errno\n"
        f"out['good'] = open({str(granted / 'g' / 'a.txt')!r}).read()\nprint(json.dumps(out))\n"
    )
    proc = run_privsep("--policy", str(granted / "p.toml"), "--", str(PYTHON), "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"bad": 13, "good": "hi\n"}
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert f"denied open {granted}/g/\\xff" in proc.stderr and "the path is not valid UTF-8" in proc.stderr


class _Broken(Services):
    """Services with a bug that a request reaches: the broker must survive it."""

    def handle(self, request: protocol.Request) -> Answer:
        if isinstance(request, protocol.Stat):
            raise RuntimeError("a bug of ours \x1b[2J")  # as if the child's input were quoted
        return super().handle(request)


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    yield b
    b.close()


def _run_python(
    broker: Broker, policy: Policy, services: Services, code: str, *, timeout: float
) -> tuple[Outcome, bytes]:
    """Run ``code`` in a confined Python served by ``services``: how it ended, and its output."""
    with tempfile.TemporaryFile() as out:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            child = broker.start(
                make_plan(policy, [str(PYTHON), "-c", code]),
                services=services,
                timeout=timeout,
                stdio=(devnull, out.fileno(), out.fileno()),
            )
        finally:
            os.close(devnull)
        outcome = broker.wait(child)
        out.seek(0)
        return outcome, out.read()


def test_an_internal_error_is_logged_answered_eio_and_the_child_goes_on(
    broker: Broker, capfd: pytest.CaptureFixture[str]
) -> None:
    policy = load_policy("python")
    services = _Broken(policy)
    code = (
        "from privsep import client\nimport json\nout = {}\n"
        "for _ in range(20):\n"
        "    try:\n        client.stat('/usr')\n    except Exception as e:\n"
        "        out['stat'] = [type(e).__name__, getattr(e, 'errno', None), str(e)]\n"
        "client.ping(); out['ping'] = 'ok'\nprint(json.dumps(out))\n"
    )
    outcome, raw = _run_python(broker, policy, services, code, timeout=30)
    services.close()
    assert raw.startswith(b"{"), (outcome, raw)
    result = json.loads(raw)
    assert outcome.returncode == 0
    assert result["ping"] == "ok", result  # the same child is still served afterwards
    assert result["stat"][0] == "BrokerError" and "internal error in the broker" in result["stat"][2]
    err = capfd.readouterr().err
    assert "privsep: internal error while serving a stat request" in err
    # Escaped for the terminal, and bounded: 20 errors, 5 tracebacks (the audit log counts the rest).
    assert "\x1b" not in err and "RuntimeError: a bug of ours \\x1b[2J" in err
    assert err.count("RuntimeError: a bug of ours") == 5


def test_a_frame_that_fails_before_it_is_a_request_cuts_off_that_sandbox_alone(
    broker: Broker, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 6 before a request exists: decoding a frame (the first one also imports the
    protocol's models: a broken install fails there) raised out of the loop, and ``wait``
    raised: every sibling died with the broker. Now the sandbox is logged, cut off and
    killed, and a sibling served by the same broker carries on."""
    receive = protocol.BrokerProtocol.receive

    def failing(self: protocol.BrokerProtocol, frame: bytes) -> protocol.Request:
        if b"/boom" in frame:
            raise RuntimeError("a bug of ours while decoding")
        return receive(self, frame)

    monkeypatch.setattr(protocol.BrokerProtocol, "receive", failing)
    policy = load_policy("python")
    services = Services(policy)
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        with tempfile.TemporaryFile() as out:
            hit = broker.start(
                make_plan(policy, [str(PYTHON), "-c", "from privsep import client\nclient.stat('/boom')\n"]),
                services=services,
                timeout=30,
                stdio=(devnull, devnull, devnull),
            )
            sibling = broker.start(
                make_plan(
                    policy,
                    [
                        str(PYTHON),
                        "-c",
                        "import time\ntime.sleep(1)\nfrom privsep import client\n"
                        "client.ping()\nprint('served')\n",
                    ],
                ),
                services=services,
                timeout=30,
                stdio=(devnull, out.fileno(), out.fileno()),
            )
            lost = broker.wait(hit)
            ended = broker.wait(sibling)
            out.seek(0)
            assert out.read() == b"served\n", ended
    finally:
        os.close(devnull)
        services.close()
    assert lost.how == "lost" and "failed to read the sandbox's request" in lost.detail, lost
    assert ended.how == "exited" and ended.returncode == 0, ended
    assert "RuntimeError: a bug of ours while decoding" in capfd.readouterr().err


def test_a_huge_listing_of_control_character_names_is_paged(run_privsep: RunPrivsep, granted: Path) -> None:
    """Names made of control characters grow sixfold in JSON: the reply once outgrew its frame."""
    big = granted / "g" / "big"
    big.mkdir(mode=0o755)
    names = {f"{chr(1) * 100}{i}" for i in range(3000)}
    for name in names:
        (big / name).touch()
    code = (
        "import json\nfrom privsep import client\n"
        f"a = client.listdir({str(big)!r})\nb = client.listdir({str(big)!r})\n"
        "print(json.dumps({'n': len(a), 'same': sorted(a) == sorted(b), 'names': sorted(a)}))\n"
    )
    proc = run_privsep("--policy", str(granted / "p.toml"), "--", str(PYTHON), "-c", code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n"] == 3000 and out["same"] and set(out["names"]) == names


def test_a_denial_naming_a_very_long_grant_is_cut_not_fatal(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    deep = shared_tmp.joinpath(*("d" * 250 for _ in range(6)))
    deep.mkdir(parents=True)
    for path in [shared_tmp, *shared_tmp.rglob("*")]:
        path.chmod(0o755)
    (deep / "f").write_text("x")
    (deep / "f").chmod(0o644)
    policy = shared_tmp / "long.toml"
    policy.write_text(
        f'extends = "python"\n[view]\ntmp = false\n'
        f'[[files]]\npath = "{deep}"\naccess = ["read"]\nserve = "broker"\n'
    )
    policy.chmod(0o644)
    code = (
        "from privsep import client\n"
        f"try:\n    client.open({str(deep / 'f')!r}, 'w')\nexcept PermissionError as e:\n"
        "    print('denied', len(str(e)) > 100)\n"
    )
    proc = run_privsep("--policy", str(policy), "--", str(PYTHON), "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "denied True"


def test_one_sandbox_connecting_to_a_black_hole_does_not_hold_up_its_siblings() -> None:
    """Guarantee 9 for transparent connects: one in flight per sandbox, so a sandbox with many
    threads stuck in connect() takes one worker, and a sibling's connect is served at once
    (it waited behind all of them, ~90 s, before)."""
    import asyncio
    import socket

    from privsep import Sandbox

    tarpit = socket.create_server(("127.0.0.1", 0), backlog=0)  # never accepts: SYNs pile up
    good = socket.create_server(("127.0.0.1", 0))
    fillers = []
    for _ in range(4):  # fill the tarpit's accept queue so that further connects hang
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(tarpit.getsockname())
        fillers.append(filler)
    hostile = (
        "import socket, threading\n"
        "def go():\n    s = socket.socket(); s.settimeout(60)\n"
        f"    try:\n        s.connect(('127.0.0.1', {tarpit.getsockname()[1]}))\n"
        "    except OSError:\n        pass\n"
        "ts = [threading.Thread(target=go) for _ in range(12)]\n"
        "[t.start() for t in ts]\n[t.join() for t in ts]\n"
    )
    sibling = (
        "import socket, time\ntime.sleep(1.5)\nstart = time.monotonic()\n"
        f"socket.create_connection(('127.0.0.1', {good.getsockname()[1]})).close()\n"
        "print(round(time.monotonic() - start, 1))\n"
    )
    allow = [f"127.0.0.1:{tarpit.getsockname()[1]}", f"127.0.0.1:{good.getsockname()[1]}"]

    async def both() -> tuple[float, str]:
        with Sandbox("python", allow_connect=allow, timeout=120) as sb:
            hostile_run = asyncio.ensure_future(sb.arun([str(PYTHON), "-c", hostile]))
            result = await sb.arun([str(PYTHON), "-c", sibling])
            still_stuck = not hostile_run.done()
            hostile_run.cancel()
            return float(result.stdout or b"-1") if result.returncode == 0 else -1.0, str(still_stuck)

    try:
        seconds, still_stuck = asyncio.run(both())
    finally:
        for sock in (*fillers, tarpit, good):
            sock.close()
    assert seconds >= 0, "the sibling's connect failed"
    # Served while the hostile sandbox still had a dozen connects hanging (each up to 30 s).
    assert still_stuck == "True" and seconds < 20, seconds


def test_kernel_aio_is_off_by_default_so_the_host_wide_limit_stays_the_hosts(run_privsep: RunPrivsep) -> None:
    """io_setup in a loop filled the host's fs.aio-nr (65536/65536): host programs' io_setup failed."""
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nctx = ctypes.c_ulong(0)\n"
        "r = libc.syscall(206, 128, ctypes.byref(ctx))\nprint(r, ctypes.get_errno())\n"
    )
    before = int(Path("/proc/sys/fs/aio-nr").read_text())
    proc = run_privsep("--policy", "python", "--", str(PYTHON), "-c", code)
    assert proc.stdout.split() == ["-1", "1"], proc.stderr  # EPERM
    assert "io_setup" in proc.stderr and "@aio" in proc.stderr  # the report names the group to add
    assert int(Path("/proc/sys/fs/aio-nr").read_text()) <= before


class _BrokenConnect(Services):
    """A bug that a transparently brokered connect reaches, on a worker thread."""

    def handle(self, request: protocol.Request) -> Answer:
        if isinstance(request, protocol.Connect):
            raise RuntimeError("a bug of ours in a slow call")
        return super().handle(request)


def test_an_internal_error_in_a_slow_transparent_call_is_answered_eio_and_logged(
    broker: Broker, capfd: pytest.CaptureFixture[str]
) -> None:
    """The worker answers the call itself, on its own copy of the listener (the loop's may be
    closed by then), and hands the log line back to the loop: the call never hangs."""
    policy = load_policy("python", extra={"connect": [{"host": "127.0.0.1", "ports": [9]}]})
    services = _BrokenConnect(policy)
    code = (
        "import socket, json\nfrom privsep import client\nout = []\n"
        "for _ in range(3):\n"
        "    try:\n        socket.create_connection(('127.0.0.1', 9), timeout=20)\n"
        "    except OSError as e:\n        out.append(e.errno)\n"
        "client.ping(); print(json.dumps(out))\n"
    )
    outcome, raw = _run_python(broker, policy, services, code, timeout=60)
    services.close()
    assert outcome.returncode == 0, (outcome, raw)
    assert json.loads(raw) == [5, 5, 5]  # EIO, each time; the same child is served afterwards
    assert capfd.readouterr().err.count("privsep: internal error while serving syscall 42") == 3
