"""One broker, many real confined children: isolation between them, and no leaks."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from privsep.broker.loop import Broker, Child
from privsep.broker.outcome import Outcome
from privsep.plan.spawnplan import make_plan
from privsep.policy.load import load_policy
from tests.conftest import PYTHON, open_fds

HELLO = (
    "import socket, json\n"
    "s = socket.socket(fileno=3)\n"
    "s.send(json.dumps({'id': 1, 'op': 'hello', 'versions': [1]}).encode())\n"
    "assert json.loads(s.recv(65536))['ok']\n"
    "s_ping = json.dumps({'id': 2, 'op': 'ping'}).encode()\n"
)


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    yield b
    b.close()


def start(broker: Broker, code: str, *, timeout: float | None = 30) -> Child:
    plan = make_plan(load_policy("python"), [str(PYTHON), "-c", code])
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        return broker.start(plan, timeout=timeout, stdio=(devnull, devnull, devnull))
    finally:
        os.close(devnull)


def wait_all(broker: Broker, children: list[Child], limit: float = 60) -> list[Outcome]:
    deadline = time.monotonic() + limit
    while any(c.outcome is None for c in children):
        assert time.monotonic() < deadline, "children did not finish"
        broker.run_once(max_wait=0.5)
    return [c.outcome for c in children if c.outcome is not None]


def test_many_children_are_served_at_once(broker: Broker) -> None:
    code = "from privsep import client\nfor _ in range(50): client.ping()\nraise SystemExit({})"
    children = [start(broker, code.format(i)) for i in range(8)]
    outcomes = wait_all(broker, children)
    assert [o.how for o in outcomes] == ["exited"] * 8
    assert [o.returncode for o in outcomes] == list(range(8))
    assert all(c.serving.requests == 51 for c in children)  # hello + 50 pings each


@pytest.mark.parametrize(
    ("attack", "why"),
    [
        ("s.send(b'not json at all')", "invalid request"),
        ("s.send(b'x' * 70000)", "larger than"),
        (
            "s.sendmsg([s_ping], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [0, 1]))])",
            "file descriptors",
        ),
        ("s.send(json.dumps({'id': 2, 'op': 'hello', 'versions': [1]}).encode())", "only once"),
        ("s.send(json.dumps({'id': 2, 'op': 'ping', 'extra': 1}).encode())", "extra_forbidden"),
        ("s.send(json.dumps({'id': '2', 'op': 'ping'}).encode())", "int_type"),
        ("s.send(json.dumps({'id': 2, 'op': 'rm -rf'}).encode())", "union_tag_invalid"),
        ("s.send(b'[' * 5000 + b']' * 5000)", "invalid request"),
    ],
)
def test_a_violator_is_cut_off_and_its_sibling_carries_on(broker: Broker, attack: str, why: str) -> None:
    hostile = start(broker, "import array, time\n" + HELLO + attack + "\ntime.sleep(30)\n")
    sibling = start(
        broker,
        "import time\nfrom privsep import client\ntime.sleep(0.5)\nfor _ in range(20): client.ping()\n",
    )
    bad, good = wait_all(broker, [hostile, sibling])
    assert bad.how == "violation", bad
    assert why in bad.detail
    assert bad.returncode == 128 + signal.SIGKILL
    assert (good.how, good.returncode) == ("exited", 0)
    assert sibling.serving.requests == 21


def test_a_child_that_never_reads_replies_does_not_stall_others(broker: Broker) -> None:
    flood = start(
        broker,
        HELLO + "while True:\n    s.send(json.dumps({'id': 2, 'op': 'ping'}).encode())\n",
        timeout=10,  # long enough to be a hang guard, not a bound on the sibling's speed
    )
    quick = start(broker, "from privsep import client\nfor _ in range(300): client.ping()\n")
    wait_all(broker, [quick])
    assert quick.outcome is not None and quick.outcome.returncode == 0
    assert flood.outcome is None  # served while the flooder was still blocked
    (flooded,) = wait_all(broker, [flood])
    assert flooded.how == "timeout"


def count_rounds(broker: Broker) -> list[int]:
    """Count the loop's wake-ups from now on: the list's one item (a count, never a time)."""
    rounds = [0]
    run_once = broker.run_once

    def counted(max_wait: float | None = None) -> None:
        rounds[0] += 1
        run_once(max_wait)

    broker.run_once = counted  # type: ignore[method-assign]
    return rounds


def test_a_later_deadline_is_kept_when_the_sooner_ones_are_done() -> None:
    """The loop keeps only the soonest deadline: one of a sandbox that ended before it, or of one
    already killed for it, must neither hide a later sandbox's deadline nor spin the loop."""
    broker = Broker()
    rounds = count_rounds(broker)
    try:
        ended = start(broker, "pass", timeout=3)  # the soonest deadline, never reached
        killed = start(broker, "import time\ntime.sleep(120)", timeout=4)
        late = start(broker, "import time\ntime.sleep(120)", timeout=6)
        # wait() gives no max_wait: only the deadlines wake the loop when nothing else happens.
        outcomes = [broker.wait(child) for child in (ended, killed, late)]
    finally:
        broker.close()
    assert [o.how for o in outcomes] == ["exited", "timeout", "timeout"]
    # A count of wake-ups, not a time: each deadline wakes the loop about once.
    assert rounds[0] < 80


def test_the_broker_leaks_no_fd_and_no_child(broker: Broker) -> None:
    wait_all(broker, [start(broker, "pass")])  # warm caches (seccomp filter, policy)
    before = open_fds()
    children = [start(broker, "from privsep import client\nclient.ping()") for _ in range(10)]
    children.append(start(broker, "import ctypes, os\nctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0)"))
    children.append(start(broker, "import time\ntime.sleep(30)", timeout=0.5))
    outcomes = wait_all(broker, children)
    assert [o.how for o in outcomes] == ["exited"] * 10 + ["seccomp", "timeout"]
    assert open_fds() == before
    assert broker.children == frozenset()
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # every child reaped, no zombie left


def test_close_kills_what_still_runs() -> None:
    broker = Broker()
    child = start(broker, "import time\ntime.sleep(60)", timeout=None)
    broker.run_once(max_wait=0.2)
    broker.close()
    assert child.outcome is not None and child.outcome.how == "lost"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_an_ended_command_does_not_spin_the_loop() -> None:
    """Regression: the seccomp listener of an ended command stays readable (hang-up);
    left registered, it made the loop spin ~600 times per sandbox until init exited."""
    broker = Broker()
    rounds = count_rounds(broker)
    try:
        plan = make_plan(load_policy("minimal"), ["/bin/true"])
        for _ in range(5):
            broker.wait(broker.start(plan))
    finally:
        broker.close()
    # A count of loop wake-ups, not a time: with no deadline the loop wakes only for events,
    # however slow the machine, so a /bin/true sandbox takes a bounded number of rounds.
    assert rounds[0] / 5 < 40


def test_a_signal_passed_on_before_the_command_exists_reaches_it(broker: Broker) -> None:
    """``privsep run`` passes a SIGTERM (or ^C) it gets to the command. One that came before the
    command had reported was dropped, and the command ran to its end (fresh-eyes audit): it is
    now held and sent once the command exists."""
    child = start(broker, "import time; time.sleep(60)", timeout=30)
    assert child.procs.command_pidfd is None  # nothing has been read from the sandbox yet
    broker.send_signal(child, signal.SIGTERM)
    (outcome,) = wait_all(broker, [child])
    assert (outcome.how, outcome.returncode) == ("signaled", 128 + signal.SIGTERM), outcome.describe()


def test_killing_a_sandbox_that_has_ended_does_nothing(broker: Broker) -> None:
    """Audit 13: a second ^C to ``privsep run`` after its command had ended killed the ended
    sandbox through its closed pidfd: EBADF out of the signal handler (a traceback, exit 1,
    clean-up skipped), or, had the number been reused by another sandbox's pidfd, that
    sandbox killed. Killing an ended sandbox is now a no-op."""
    child = start(broker, "pass", timeout=30)
    (outcome,) = wait_all(broker, [child])
    broker.kill(child, Outcome("signaled", 130, detail="interrupted twice"))
    broker.send_signal(child, signal.SIGINT)
    assert child.outcome == outcome
