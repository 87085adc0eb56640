"""What a child can make the broker hold or do, and what the broker touches once a sandbox (or it) is gone.

Found by the audit after the loop was split (issue 15), all three older than
the split:

- the relay bound counted selector entries, not relays, so a child held twice
  the append-only files it was said to (two fds of the broker's each);
- refusing an unmodified open() past that bound closed a relay whose fd the
  child already had, and closing drained the pipe until it was empty: threads
  writing into it kept the loop appending up to ``file_size_mb``;
- a slow operation that finished after the broker closed woke the loop through
  a descriptor number the broker had given back, so whatever the host process
  opened next under that number received a byte, when the child chose.

Real confined children on an in-process broker.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from privsep.broker.loop import Broker, Child
from privsep.broker.requests import MAX_RELAYS
from privsep.broker.services import Services
from privsep.plan.spawnplan import make_plan
from privsep.policy.load import load_policy
from privsep.policy.model import Policy
from tests.conftest import PYTHON


def _start(broker: Broker, policy: Policy, services: Services, code: str, out: int) -> Child:
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        return broker.start(
            make_plan(policy, [str(PYTHON), "-c", code]),
            services=services,
            timeout=60,
            stdio=(devnull, out, out),
        )
    finally:
        os.close(devnull)


@pytest.fixture
def logs(shared_tmp: Path) -> Path:
    """A directory of files the child may only append to."""
    logs = shared_tmp / "logs"
    logs.mkdir(mode=0o755)
    for i in range(2 * MAX_RELAYS + 40):
        (logs / f"{i}.log").write_text("")
        (logs / f"{i}.log").chmod(0o666)
    return logs


def test_a_child_holds_at_most_max_relays_append_only_files(logs: Path) -> None:
    """Each append-only file is two fds of the broker's (the pipe's end, the file): at most
    MAX_RELAYS per child, whether opened through the client (refused past it) or by an
    unmodified open() (the pipe is closed: its writes fail with EPIPE). The bound counted
    selector entries, and an append relay has one, not a UDP flow's two: a child held
    2 * MAX_RELAYS of them."""
    policy = load_policy("python", extra={"files": [{"path": str(logs), "access": ["append"]}]})
    half = MAX_RELAYS // 2 + 4
    code = (
        "import errno, json, os\nfrom privsep import client\n"
        f"logs, half = {str(logs)!r}, {half}\nfiles, fds, refused, broken = [], [], [], 0\n"
        "for i in range(half):\n"
        "    try:\n        files.append(client.open(f'{logs}/{i}.log', 'a'))\n"
        "        fds.append(files[-1].fileno())\n"
        "    except Exception as e:\n        refused.append(str(e))\n"
        f"for i in range(half, {2 * MAX_RELAYS + 8}):\n"
        "    fds.append(os.open(f'{logs}/{i}.log', os.O_WRONLY | os.O_APPEND))\n"
        "client.ping()  # after the broker has dealt with the last open\n"
        "for fd in fds:\n"
        "    try:\n        os.write(fd, b'x\\n')\n"
        "    except OSError as e:\n        assert e.errno == errno.EPIPE, e\n        broken += 1\n"
        "print(json.dumps({'working': len(fds) - broken, 'refused': refused}))\n"
    )
    services = Services(policy)
    broker = Broker()
    try:
        with tempfile.TemporaryFile() as out:
            child = _start(broker, policy, services, code, out.fileno())
            most = 0
            while child.outcome is None:
                broker.run_once(max_wait=0.05)
                most = max(most, len(set(child.serving.relays.values())))
            out.seek(0)
            raw = out.read()
        assert child.outcome.returncode == 0, (child.outcome, raw)
        result = json.loads(raw)
    finally:
        broker.close()
        services.close()
    assert (result["working"], most) == (MAX_RELAYS, MAX_RELAYS), result
    assert not result["refused"], result  # the client's opens came first: all within the bound
    assert sum((logs / f"{i}.log").read_text() == "x\n" for i in range(2 * MAX_RELAYS + 8)) == MAX_RELAYS


#: Holds ``2 * MAX_RELAYS`` append-only files (past the bound, whichever way it is counted),
#: then, 40 times, opens one more while four threads write into the fd number it gets, as fast as they can.
FLOODER_C = r"""
#define _GNU_SOURCE
#define ATTEMPTS 40
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int next_fd;
static char chunk[65536];

static void *flood(void *arg) {
    /* The first thread makes the pipe as large as it may be (1 MiB): the others fill it meanwhile. */
    while (arg != NULL && fcntl(next_fd, F_SETPIPE_SZ, 1 << 20) < 0 && errno == EBADF) {}
    for (;;) {
        if (write(next_fd, chunk, 4096) < 0 && errno != EBADF && errno != EINTR) return NULL;
    }
}

int main(int argc, char **argv) {
    char path[4096];
    int held = atoi(argv[2]);
    signal(SIGPIPE, SIG_IGN);  /* EPIPE, once the broker closed the pipe, ends the threads */
    for (int i = 0; i < held; i++) {
        snprintf(path, sizeof path, "%s/%d.log", argv[1], i);
        if (open(path, O_WRONLY | O_APPEND) < 0) return 2;
    }
    memset(chunk, 'y', sizeof chunk);
    for (int k = 0; k < ATTEMPTS; k++) {  /* a race: each refused open is one more chance */
        next_fd = dup(0);
        close(next_fd);
        pthread_t threads[4];
        for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, flood, i == 0 ? chunk : NULL);
        snprintf(path, sizeof path, "%s/%d.log", argv[1], held + k);
        if (open(path, O_WRONLY | O_APPEND) != next_fd) return 3;
        for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
        close(next_fd);
    }
    return 0;
}
"""


def test_a_refused_append_only_file_costs_the_loop_no_more_than_its_pipe(
    shared_tmp: Path, logs: Path
) -> None:
    """An unmodified open() past the bound has its fd already: the broker refuses by closing the
    relay, and closing appended whatever came through the pipe until it was empty. Threads
    writing into that fd as fast as the loop drained it kept the loop appending (up to
    ``file_size_mb``, 1 GiB by default), and every sibling waited. Only what was queued when
    it was refused (at most a pipe's capacity) may be appended."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: .ci/setup installs it")
    tools = shared_tmp / "bin"
    tools.mkdir(mode=0o755)
    (tools / "flooder.c").write_text(FLOODER_C)
    subprocess.run(
        ["gcc", "-O2", "-pthread", "-o", str(tools / "flooder"), str(tools / "flooder.c")], check=True
    )
    policy = load_policy(
        "python",
        extra={
            "view": {"read": [str(tools)]},
            "files": [{"path": str(logs), "access": ["append"]}],
            "limits": {"file_size_mb": 16},
        },
    )
    held = 2 * MAX_RELAYS
    services = Services(policy)
    broker = Broker()
    try:
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            child = broker.start(
                make_plan(policy, [str(tools / "flooder"), str(logs), str(held)]),
                services=services,
                timeout=60,
                stdio=(devnull, devnull, devnull),
            )
        finally:
            os.close(devnull)
        while child.outcome is None:
            broker.run_once(max_wait=0.05)
        assert child.outcome.returncode == 0, child.outcome
    finally:
        broker.close()
        services.close()
    appended = max((logs / f"{held + k}.log").stat().st_size for k in range(40))
    assert appended <= (1 << 20) + 65536, f"the loop appended {appended >> 20} MiB for a refused relay"


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A port whose accept queue is full: a connect to it hangs until its timeout."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    try:
        yield listener.getsockname()[1]
    finally:
        for sock in (*fillers, listener):
            sock.close()


def test_a_slow_request_that_ends_after_the_broker_closed_touches_no_fd_of_the_host(tarpit: int) -> None:
    """``Broker.close`` cannot wait for a connect on a worker (up to 600 s, the child's choice).
    When it ended, the worker woke the loop by writing to the wake-up pipe's number, which the
    broker had closed and the host process had reused meanwhile: a byte the child timed landed
    in a stranger's socket, pipe or file."""
    policy = load_policy("python", extra={"connect": [{"host": "127.0.0.1", "ports": [tarpit]}]})
    code = (
        "import socket, time\nfrom privsep import client\n"
        f"try:\n    client.connect('127.0.0.1', {tarpit}, timeout=1.5)\nexcept OSError:\n    pass\n"
        "time.sleep(60)\n"
    )
    services = Services(policy)
    broker = Broker()
    pairs: list[tuple[socket.socket, socket.socket]] = []
    closed = False
    try:
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            child = _start(broker, policy, services, code, devnull)
        finally:
            os.close(devnull)
        deadline = time.monotonic() + 30
        while not child.serving.pending:
            assert child.outcome is None and time.monotonic() < deadline, child.outcome
            broker.run_once(max_wait=0.01)
        broker.close()  # the connect is still on its worker
        closed = True
        # The host goes on: every number the broker gave back is now one of these.
        pairs = [socket.socketpair() for _ in range(64)]
        time.sleep(3)  # the connect times out after 1.5 s; its worker is done
        ends = [end for pair in pairs for end in pair]
        touched = select.select(ends, [], [], 0)[0]
        assert not touched, "a worker wrote into a descriptor the broker no longer owned"
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        if not closed:
            broker.close()
        services.close()
