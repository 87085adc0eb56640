"""The child never holds the user's terminal (issue 13, item 6).

Each test runs the real ``privsep run`` on a pty the test makes, the test
acting as the user's terminal emulator: it holds the master, types into it,
reads what is shown, and inspects the slave (the "user's terminal") before
and after. Both broker modes: the root broker reopens the terminal, the
non-root one (which may not open a root-owned pty) shares its description.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import pytest

from tests.conftest import PYTHON, REPO, privsep_argv

_ENV = {"PATH": "/usr/bin:/bin"}


def _winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _ldisc(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCGETD, b"\0" * 4))[0])


def _state(fd: int) -> tuple[object, ...]:
    """Everything a child could have changed on the terminal: termios, discipline, size."""
    try:
        mode: object = termios.tcgetattr(fd)
    except termios.error as exc:  # N_NULL takes no termios calls
        mode = f"tcgetattr failed: {exc}"
    return (mode, _ldisc(fd), _winsize(fd))


class UserTerminal:
    """A pty whose slave is the controlling terminal of ``argv``'s session, as a login's is."""

    def __init__(self, argv: Sequence[str], rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        _set_winsize(self.slave, rows, cols)
        self.output = b""
        self.status: int | None = None
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked "login"
            try:
                os.setsid()
                fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(self.slave, fd)
                os.chdir(REPO)
                os.execve(argv[0], list(argv), _ENV)
            finally:
                os._exit(127)
        self.pid = pid

    def _pump(self, wait: float) -> None:
        ready, _, _ = select.select([self.master], [], [], wait)
        if ready:
            with suppress(OSError):
                self.output += os.read(self.master, 65536)
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status

    def expect(self, marker: bytes, timeout: float = 30) -> None:
        """Read until ``marker`` has been shown."""
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            assert time.monotonic() < deadline, f"{marker!r} never shown; shown: {self.output[-3000:]!r}"
            assert self.status is None, f"exited before {marker!r}; shown: {self.output[-3000:]!r}"
            self._pump(0.1)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 60) -> int:
        """Read until the process has exited, then what is left; its exit status."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            assert time.monotonic() < deadline, f"still running; shown: {self.output[-3000:]!r}"
            self._pump(0.1)
        self._pump(0)
        while select.select([self.master], [], [], 0.2)[0]:
            before = len(self.output)
            self._pump(0)
            if len(self.output) == before:
                break
        return os.waitstatus_to_exitcode(self.status)

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.master)
        os.close(self.slave)


@contextmanager
def user_terminal(argv: Sequence[str], rows: int = 24, cols: int = 80) -> Iterator[UserTerminal]:
    term = UserTerminal(argv, rows, cols)
    try:
        yield term
    finally:
        term.close()


def _python(broker_user: str, code: str) -> list[str]:
    return privsep_argv(broker_user, ["--policy", "python", "--", str(PYTHON), "-c", code])


# The child breaks the terminal it holds on each stdio fd, then exits 0 only if each attack
# worked. N_NULL comes last: after it, the terminal neither shows nor takes termios calls.
_BREAK_IT = r"""
import fcntl, os, struct, termios
for fd in (0, 1, 2):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 1, 1, 0, 0))
    mode = termios.tcgetattr(fd)
    mode[0] |= termios.IGNCR | termios.INLCR
    mode[1] &= ~termios.OPOST
    mode[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG)
    termios.tcsetattr(fd, termios.TCSANOW, mode)
for fd in (0, 1, 2):
    fcntl.ioctl(fd, termios.TIOCSETD, struct.pack("i", 27))
    assert struct.unpack("i", fcntl.ioctl(fd, termios.TIOCGETD, b"\0" * 4))[0] == 27
os._exit(0)  # nothing to flush into a terminal that takes nothing
"""


def test_nothing_the_child_does_to_its_terminal_outlives_it(broker_user: str) -> None:
    """Line discipline N_NULL, termios and window size changed on every stdio fd:
    the user's terminal is exactly as it was when privsep has exited."""
    with user_terminal(_python(broker_user, _BREAK_IT), rows=33, cols=99) as term:
        before = _state(term.slave)
        assert before[1] == 0 and before[2] == (33, 99)
        status = term.wait()
        assert status == 0, term.output.decode(errors="replace")
        assert _state(term.slave) == before


@pytest.mark.parametrize(
    ("ending", "status"),
    [("timeout", 124), ("SIGTERM to privsep", 128 + signal.SIGTERM), ("two SIGINTs", 128 + signal.SIGINT)],
)
def test_the_users_terminal_is_restored_however_the_run_ends(
    broker_user: str, ending: str, status: int
) -> None:
    """The child changes its terminal and keeps running; the run ends another way."""
    script = "stty -echo -icanon -isig rows 5 cols 5; echo ready; exec sleep 30"
    timeout = ["--timeout", "3"] if ending == "timeout" else []
    argv = privsep_argv(broker_user, [*timeout, "--", "/bin/sh", "-c", script])
    with user_terminal(argv, rows=33, cols=99) as term:
        before = _state(term.slave)
        term.expect(b"ready")
        if ending == "SIGTERM to privsep":
            os.kill(term.pid, signal.SIGTERM)  # forwarded to the command
        elif ending == "two SIGINTs":
            os.kill(term.pid, signal.SIGINT)  # forwarded; sleep dies of it, but say it twice:
            os.kill(term.pid, signal.SIGINT)  # the second kills the whole sandbox
        assert term.wait() == status, term.output
        assert _state(term.slave) == before


# A job-control shell that runs privsep as its foreground job and says how the job ended
# or whether it stopped (a stopped privsep would leave its sandbox to run on unwatched).
_ONE_JOB_SHELL = r"""
import os, signal, sys
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpid())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execv(sys.argv[1], sys.argv[1:])
try:
    os.setpgid(pid, pid)
except OSError:
    pass
os.tcsetpgrp(0, pid)
_, status = os.waitpid(pid, os.WUNTRACED)
os.tcsetpgrp(0, os.getpgrp())
if os.WIFSTOPPED(status):
    print("SHELL stopped", flush=True)
    os.killpg(pid, signal.SIGKILL)
else:
    print(f"SHELL exit={os.waitstatus_to_exitcode(status)}", flush=True)
"""


def test_a_signal_while_the_sandbox_starts_never_leaves_the_terminal_raw(broker_user: str) -> None:
    """SIGTERM sent to privsep as soon as it takes its terminal's raw mode: privsep passes it
    on to the command once that runs, and gives the terminal back. It used to install its
    handlers only after the start, so a SIGTERM during it ended privsep by the default action
    and left the terminal raw (the 11th audit's known limit)."""
    master, slave = os.openpty()
    try:
        os.set_blocking(master, False)
        before = termios.tcgetattr(slave)
        for _ in range(5):  # the window was a few ms: each try sends into it, or just after
            proc = subprocess.Popen(
                privsep_argv(broker_user, ["--", "sleep", "30"]),
                stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True,
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while termios.tcgetattr(slave)[3] & termios.ICANON and time.monotonic() < deadline:
                pass  # busy: raw mode is the moment to send
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 128 + signal.SIGTERM, "privsep died by the signal itself"
            assert termios.tcgetattr(slave) == before
            with suppress(BlockingIOError):
                while os.read(master, 65536):  # what privsep printed: never let the pty fill up
                    pass
    finally:
        os.close(slave)
        os.close(master)


def test_a_failure_while_taking_the_terminal_gives_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw mode is taken first on entering the relay; should what follows fail, no ``with``
    block calls ``__exit__``: ``__enter__`` gives the terminal back itself."""
    from privsep.broker.terminal import Terminal

    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        terminal = Terminal.for_stdio((slave, slave, slave))
        assert terminal is not None

        def refused(*_: object) -> None:
            raise OSError("no handler for you")

        monkeypatch.setattr(Terminal, "_handle", refused)
        with pytest.raises(OSError, match="no handler"), terminal:
            pass
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(slave)
        os.close(master)


def test_a_command_that_stops_itself_cannot_outlive_the_timeout(broker_user: str) -> None:
    """Second fresh-eyes audit: the command's stop made privsep stop itself, and a stopped
    privsep enforced no timeout. With a timeout, the command is continued instead."""
    script = "echo ready; kill -STOP $$; exec sleep 60"
    job = privsep_argv(broker_user, ["--timeout", "3", "--", "/bin/sh", "-c", script])
    with user_terminal([str(PYTHON), "-c", _ONE_JOB_SHELL, *job]) as term:
        term.expect(b"ready")
        term.expect(b"SHELL ")
        assert term.wait(timeout=30) == 0, term.output
        assert b"SHELL exit=124" in term.output, term.output


def test_a_line_typed_by_the_user_reaches_the_child(broker_user: str) -> None:
    code = 'import os; print("tty", os.isatty(0)); print("got", repr(input("name? ")))'
    with user_terminal(_python(broker_user, code)) as term:
        before = termios.tcgetattr(term.slave)
        term.expect(b"name? ")
        term.type(b"world\r")  # Enter sends CR; the child's pty turns it into a newline
        assert term.wait() == 0, term.output
        assert b"tty True" in term.output
        assert b"got 'world'" in term.output
        assert b"name? world" in term.output  # echoed by the child's pty
        assert termios.tcgetattr(term.slave) == before


_WINCH = r"""
import os, signal
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGWINCH])
print("start", *os.get_terminal_size(0), flush=True)
print("ready", flush=True)
got = signal.sigtimedwait([signal.SIGWINCH], 30)
print("winch" if got else "no winch", *os.get_terminal_size(0), flush=True)
"""


def test_the_window_size_is_the_users_and_follows_it(broker_user: str) -> None:
    """At the start, and after a resize of the user's terminal (SIGWINCH reaches the child)."""
    with user_terminal(_python(broker_user, _WINCH), rows=37, cols=101) as term:
        term.expect(b"ready")
        assert b"start 101 37" in term.output
        _set_winsize(term.slave, 50, 120)  # the emulator's window changed: SIGWINCH to privsep
        term.expect(b"winch 120 50")
        assert term.wait() == 0, term.output
        assert _winsize(term.slave) == (50, 120)


def test_ctrl_c_interrupts_the_childs_foreground_job(broker_user: str) -> None:
    """^C is a byte on the child's pty; its line discipline sends SIGINT to the job."""
    argv = privsep_argv(broker_user, ["--", "/bin/sh", "-c", "stty size; echo ready; exec sleep 30"])
    with user_terminal(argv, rows=41, cols=77) as term:
        term.expect(b"ready")
        assert b"41 77" in term.output  # stty size on the child's pty: the user's size
        term.type(b"\x03")
        assert term.wait() == 128 + signal.SIGINT, term.output
        assert b"killed by SIGINT" in term.output


def test_output_larger_than_a_pipe_buffer_arrives_intact(broker_user: str) -> None:
    payload = bytes(range(32, 127)) * 11100  # 1 MB, no byte the pty would translate
    code = "import sys; sys.stdout.buffer.write(bytes(range(32, 127)) * 11100); sys.stdout.flush()"
    with user_terminal(_python(broker_user, code)) as term:
        assert term.wait() == 0, term.output[-2000:]
        assert term.output.count(payload) == 1, f"{len(term.output)} bytes shown"


# A minimal job-control shell: runs privsep as a foreground job, reports its stop,
# checks the terminal was given back, brings it to the foreground again (fg).
_SHELL = r"""
import os, signal, sys, termios
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
before = termios.tcgetattr(0)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpid())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execv(sys.argv[1], sys.argv[1:])
try:
    os.setpgid(pid, pid)
except OSError:
    pass
os.tcsetpgrp(0, pid)
print(f"SHELL job={pid}", flush=True)
_, status = os.waitpid(pid, os.WUNTRACED)
os.tcsetpgrp(0, os.getpgrp())
print(f"SHELL stopped={os.WIFSTOPPED(status)} restored={termios.tcgetattr(0) == before}", flush=True)
os.tcsetpgrp(0, pid)
os.killpg(pid, signal.SIGCONT)
_, status = os.waitpid(pid, 0)
os.tcsetpgrp(0, os.getpgrp())
print(f"SHELL exit={os.waitstatus_to_exitcode(status)} restored={termios.tcgetattr(0) == before}", flush=True)
"""


@pytest.mark.parametrize("how", ["ctrl-z", "sigtstp"])
def test_a_stop_gives_the_terminal_back_and_fg_takes_it_again(broker_user: str, how: str) -> None:
    """^Z stops the child's job on its pty, and privsep stops in turn; SIGTSTP (from the
    user's shell) stops privsep. Either way the user's shell gets its terminal back as it
    was; on fg, raw mode again, and the child carries on where it was."""
    code = 'import sys; print("ready", flush=True); print("resumed", sys.stdin.readline().strip())'
    argv = [str(PYTHON), "-c", _SHELL, *_python(broker_user, code)]
    with user_terminal(argv) as term:
        term.expect(b"ready")
        if how == "ctrl-z":
            term.type(b"\x1a")
        else:
            os.killpg(int(term.output.split(b"SHELL job=")[1].split()[0]), signal.SIGTSTP)
        term.expect(b"SHELL stopped=True restored=True")
        deadline = time.monotonic() + 30
        while termios.tcgetattr(term.slave)[3] & termios.ICANON:  # raw again: privsep relays
            assert time.monotonic() < deadline, term.output
            time.sleep(0.02)
        term.type(b"again\r")
        term.expect(b"SHELL exit=0 restored=True")
        assert term.wait() == 0, term.output
        assert b"resumed again" in term.output


def test_end_of_input_is_passed_on(broker_user: str) -> None:
    """The user's terminal hangs up: the child's read ends (its pty's EOF character)."""
    master, slave = os.openpty()
    code = "import sys; data = sys.stdin.read(); print(len(data), repr(data))"
    try:
        proc = subprocess.Popen(
            _python(broker_user, code),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=_ENV,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while termios.tcgetattr(slave)[3] & termios.ICANON:  # raw: privsep is relaying
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            os.write(master, b"hello\r")
            shown = b""
            while b"hello" not in shown:  # echoed by the child's pty: the child has the line
                assert time.monotonic() < deadline, shown
                if select.select([master], [], [], 0.1)[0]:
                    shown += os.read(master, 4096)
            os.close(master)
            master = -1
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        os.close(slave)
        if master >= 0:
            os.close(master)
    assert proc.returncode == 0, err
    assert out.decode().strip() == "6 'hello\\n'"


_WHAT_IS_STDIO = r"""
import os, stat
for fd in (0, 1, 2):
    st = os.fstat(fd)
    kind = "tty" if os.isatty(fd) else "fifo" if stat.S_ISFIFO(st.st_mode) else "other"
    print(fd, kind, st.st_rdev, flush=True)
"""


def _kinds(text: str) -> dict[int, tuple[str, int]]:
    kinds = {}
    for line in text.splitlines():
        fd, kind, rdev = line.split()
        kinds[int(fd)] = (kind, int(rdev))
    return kinds


def test_stdio_that_is_not_a_terminal_gets_no_pty(broker_user: str) -> None:
    proc = subprocess.run(
        _python(broker_user, _WHAT_IS_STDIO),
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_ENV,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert {fd: kind for fd, (kind, _) in _kinds(proc.stdout).items()} == {0: "fifo", 1: "fifo", 2: "fifo"}


def test_only_the_terminal_fds_become_the_childs_pty(broker_user: str) -> None:
    """stdin on the user's terminal, stdout a pipe: the child's stdin is a pty of its own
    (never the user's), its stdout the very pipe."""
    master, slave = os.openpty()
    try:
        proc = subprocess.run(
            _python(broker_user, _WHAT_IS_STDIO),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=REPO,
            env=_ENV,
            timeout=60,
            start_new_session=True,
            check=False,
        )
        users = os.fstat(slave).st_rdev
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    kinds = _kinds(proc.stdout.decode())
    assert kinds[1][0] == "fifo"
    assert kinds[0][0] == kinds[2][0] == "tty"
    assert kinds[0][1] == kinds[2][1] != users
