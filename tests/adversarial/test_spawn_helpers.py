"""The processes that start sandboxes for a ``Sandbox`` (its zygote, the forkserver) stay in step.

Found by the fresh-eyes attack on the zygote (issue 16), each a host-side
condition a sandbox cannot cause by itself, but whose result was one sandbox
taking another's place:

- init's first error report, sent before its fds were in place, went to
  whatever fd 4 was in the zygote: its own socket to the broker. Every later
  start then read the previous one's answer (another sandbox's pid), and a
  soft ``RLIMIT_NOFILE`` of 64 or less made every start fail that way;
- a start interrupted between the request and the answer left the next start
  reading the interrupted one's answer;
- the broker called ``waitpid`` on init's pid, a child of the zygote's, and so
  reaped the host application's own child that had been given that pid again;
- the zygote and the forkserver died with the thread that opened the Sandbox;
- a start the forkserver could not make ended the forkserver, and every
  sandbox it was running.

Each runs in a Python process of its own: it changes limits, threads and pids.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time

import pytest

from tests.conftest import PYTHON, REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the scripts start root brokers (as in CI)")


def _script(body: str, *, timeout: float = 60) -> str:
    proc = subprocess.run(
        [str(PYTHON), "-c", textwrap.dedent(body)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}"
    )
    return proc.stdout


def test_a_low_descriptor_limit_starts_every_sandbox_as_itself() -> None:
    out = _script(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (60, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        from privsep import Sandbox
        with Sandbox("minimal") as sb:
            for i in range(3):
                r = sb.run(["/bin/sh", "-c", f"echo run {i}"])
                print(r.how, r.returncode, r.stdout.decode().strip())
        """
    )
    assert out.splitlines() == [f"exited 0 run {i}" for i in range(3)]


def test_a_start_interrupted_before_the_answer_is_never_answered_by_the_next() -> None:
    out = _script(
        """
        from privsep import Sandbox, ConfinementError
        from privsep.confine.spawn import Zygote
        real = Zygote._recv
        calls = {"n": 0}
        def interrupted(self):
            calls["n"] += 1
            if calls["n"] == 2:  # the first answer after READY: the first start's
                raise KeyboardInterrupt
            return real(self)
        Zygote._recv = interrupted
        with Sandbox("minimal") as sb:
            try:
                sb.run(["/bin/true"])
            except KeyboardInterrupt:
                print("interrupted")
            try:
                r = sb.run(["/bin/sh", "-c", "echo second"])
                print("ran", r.how, r.stdout)
            except ConfinementError as exc:
                print("refused:", exc)
        """
    )
    lines = out.splitlines()
    assert lines[0] == "interrupted"
    assert lines[1].startswith("refused:") and "interrupted" in lines[1], out


def test_a_forkserver_start_interrupted_before_the_answer_is_never_answered_by_the_next() -> None:
    """As the zygote above: the forkserver answers in order, so a cut exchange puts its handle out
    of step for good (before, the next start read the cut one's answer: another sandbox's pid)."""
    out = _script(
        """
        import privsep.forkserver as fs
        from privsep import Sandbox, ConfinementError
        real = fs.channel

        class Cut:
            calls = 0
            def __getattr__(self, name):
                return getattr(real, name)
            def recv(self, sock):
                Cut.calls += 1
                if Cut.calls == 2:  # the first answer after READY: the first start's
                    raise KeyboardInterrupt
                return real.recv(sock)

        fs.channel = Cut()
        with Sandbox("python", start_method="forkserver") as sb:
            try:
                sb.call("os:getpid")
            except KeyboardInterrupt:
                print("interrupted")
            try:
                print("ran", sb.call("os:getpid"))
            except ConfinementError as exc:
                print("refused:", exc)
        """
    )
    lines = out.splitlines()
    assert lines[0] == "interrupted", out
    assert lines[1].startswith("refused:") and "interrupted" in lines[1], out


def test_the_broker_never_reaps_a_child_of_the_host_application() -> None:
    out = _script(
        """
        import asyncio, os, subprocess, time
        from privsep import Sandbox

        async def main():
            with Sandbox("minimal") as sb:
                pending = sb._start(["/bin/true"], None, None, None)
                init_pid = pending.child.spawned.pid
                while os.path.exists(f"/proc/{init_pid}"):
                    time.sleep(0.02)  # the zygote reaps init; the broker has not looked yet
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(init_pid - 1))
                app_child = subprocess.Popen(["/bin/sh", "-c", "sleep 1; exit 3"])
                print("same pid", app_child.pid == init_pid)
                result = await sb._wait_async(pending)
                print("sandbox", result.how, result.returncode)
                print("app child", app_child.wait())

        asyncio.run(main())
        """
    )
    lines = out.splitlines()
    if lines[0] != "same pid True":
        pytest.fail(f"the pid was not reused as the test arranged (another process took it): {out}")
    assert lines[1:] == ["sandbox exited 0", "app child 3"], out


@pytest.mark.parametrize("start_method", ["exec", "forkserver"])
def test_a_sandbox_opened_in_a_thread_that_ends_keeps_its_helpers(start_method: str) -> None:
    out = _script(
        f"""
        import threading, time
        from privsep import Sandbox
        sb = Sandbox("python", start_method={start_method!r})
        # The thread outlives the helper's start (its parent-death signal would be armed).
        opened = threading.Thread(target=lambda: (sb.__enter__(), time.sleep(1)))
        opened.start()
        opened.join()
        try:
            r = sb.run(["/bin/sh", "-c", "echo still here"])
            print(r.how, r.stdout.decode().strip())
        finally:
            sb.close()
        """
    )
    assert out.splitlines() == ["exited still here"]


def test_a_start_the_forkserver_cannot_make_leaves_its_running_sandboxes_alone() -> None:
    out = _script(
        """
        import os, resource, time
        from privsep import Sandbox, ConfinementError
        with Sandbox("minimal", start_method="forkserver") as sb:
            server = sb._parts.forkserver._proc.pid
            running = sb._start(["/bin/sh", "-c", "sleep 1; echo A done"], None, None, None)
            time.sleep(0.3)
            n = len(os.listdir(f"/proc/{server}/fd"))
            # Room for the start's five fds, none for anything the start itself opens.
            resource.prlimit(server, resource.RLIMIT_NOFILE, (n + 5, 20000))
            try:
                sb._start(["/bin/true"], None, None, None)
                print("started")
            except ConfinementError as exc:
                print("refused:", exc)
            resource.prlimit(server, resource.RLIMIT_NOFILE, (1024, 20000))
            while not running.done:
                sb._parts.broker.run_once(max_wait=0.2)
            result = running.result()
            print("A", result.how, result.stdout.decode().strip())
            print("next", sb.run(["/bin/true"]).how)
        """
    )
    lines = out.splitlines()
    assert lines[0].startswith("refused:") and "forkserver" in lines[0], out
    assert lines[1:] == ["A exited A done", "next exited"], out


@pytest.mark.parametrize("start_method", ["exec", "forkserver"])
def test_a_killed_host_takes_its_helpers_and_their_sandboxes_with_it(start_method: str) -> None:
    """The helpers watch the broker's process, not a parent-death signal: they still go with it."""
    marker = f"{os.getpid()}{start_method == 'exec'}".replace("True", "1").replace("False", "2")
    host = subprocess.Popen(
        [
            str(PYTHON),
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from privsep import Sandbox
                sb = Sandbox("minimal", start_method={start_method!r}).__enter__()
                sb._start(["/bin/sleep", "{marker}"], None, None, None)
                print("started", flush=True)
                time.sleep(60)
                """
            ),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None
        assert host.stdout.readline().strip() == "started"
        helpers = _children_of(host.pid)
        assert helpers, "the host started no helper process"
        time.sleep(0.3)
        assert _sleepers(marker), "the sandbox's command is not running"
    finally:
        host.kill()
        host.wait()
    deadline = time.monotonic() + 10
    while (_sleepers(marker) or _alive(helpers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _sleepers(marker), "a sandbox outlived its host"
    assert not _alive(helpers), "a helper outlived its host"


def _children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _alive(pids: list[int]) -> bool:
    return any(os.path.exists(f"/proc/{p}") for p in pids)


def _sleepers(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"/bin/sleep", marker.encode()]:
                found.append(int(entry))
    return found


def test_a_broker_of_one_thread_clones_init_and_leaves_nothing_behind() -> None:
    """``privsep run``'s way: no monitor. Each start leaves the broker's signal mask as it was
    (every signal is blocked only across the clone), and each ended sandbox gives back every
    fd, the lifeline included; the sandbox's processes are init and the command only."""
    out = _script(
        """
        import os, signal
        from privsep.broker.loop import Broker
        from privsep.broker.services import Services
        from privsep.plan.spawnplan import make_plan
        from privsep.policy.load import load_policy

        minimal = load_policy("minimal")
        plan = make_plan(minimal, ["/bin/sh", "-c", "echo $PPID; exit 7"])
        services = Services(minimal)
        broker = Broker()
        read, write = os.pipe2(os.O_CLOEXEC)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])  # the host's own mask, kept
        fds = lambda: sorted(os.listdir("/proc/self/fd"))
        before = None
        for i in range(3):
            child = broker.start(plan, services=services, stdio=(0, write, 2))
            print("cloned by the broker", child.spawned.lifeline is not None)
            print("mask", [s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])])
            print("outcome", broker.wait(child).returncode, os.read(read, 100).decode().strip())
            before = before or fds()
            print("fds", fds() == before)
        broker.close()
        """
    )
    runs = out.splitlines()
    assert runs == ["cloned by the broker True", "mask ['SIGUSR2']", "outcome 7 1", "fds True"] * 3, out


def test_a_signal_held_back_during_the_clone_never_leaves_init_unwatched() -> None:
    """A ^C that arrived while the broker cloned init (every signal blocked) runs its handler when
    the mask is restored. Raised there, it lost init's pid and lifeline: spawn let go of the host
    id and the sockets while init ran on, neither killed nor reaped (fresh-eyes audit). Now init
    is killed and reaped first, and nothing of it is left."""
    out = _script(
        """
        import os, signal
        from privsep._record import replace
        from privsep.broker.loop import Broker
        from privsep.broker.services import Services
        from privsep.confine import inside
        from privsep.plan.spawnplan import make_plan
        from privsep.policy.load import load_policy

        minimal = load_policy("minimal")
        plan = make_plan(minimal, ["/bin/sleep", "60"])
        services = Services(minimal)
        broker = Broker()
        clone = inside.start_init

        def interrupted(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGUSR1)  # blocked: held until the mask is restored
            return clone(*args, **kwargs)

        def handler(*_):
            raise KeyboardInterrupt

        signal.signal(signal.SIGUSR1, handler)
        inside.start_init = interrupted
        fds = sorted(os.listdir("/proc/self/fd"))
        try:
            broker.start(plan, services=services, stdio=(0, 1, 2))
        except KeyboardInterrupt:
            print("interrupted")
        try:
            print("children left", os.waitpid(-1, os.WNOHANG))
        except ChildProcessError:
            print("no child left")
        print("fds", sorted(os.listdir("/proc/self/fd")) == fds)
        inside.start_init = clone
        child = broker.start(replace(plan, argv=("/bin/true",)), services=services, stdio=(0, 1, 2))
        print("next", broker.wait(child).returncode)
        broker.close()
        """
    )
    assert out.splitlines() == ["interrupted", "no child left", "fds True", "next 0"], out
