"""``privsep run`` from where a user stands: a real confined child, checked from inside.

Every test runs twice (``broker_user``): with the broker as root, and with the
broker as an unprivileged user, where the sandbox rests on a user namespace.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import resource
import secrets
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, RunPrivsep, json_output, privsep_argv, python_child

# Collects, from inside the child, what the tests below assert on.
PROBE = r"""
import json, os, socket, stat
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
fds = [fd for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")]  # drop listdir's own fd
chan = int(os.environ["PRIVSEP_FD"])
s = socket.socket(fileno=chan)
try:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inet:
        inet.sendto(b"x", ("192.0.2.1", 9))  # a datagram needs no broker: the namespace decides
    inet_err = None
except OSError as e:
    inet_err = e.errno
def visible(p):
    try:
        os.stat(p); return True
    except OSError:
        return False
print(json.dumps({
    "status": {k: v.strip() for k, v in status.items()},
    "uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(),
    "fds": fds, "chan": chan, "chan_type": [s.family, s.type], "chan_cloexec": not os.get_inheritable(chan),
    "env": dict(os.environ), "cwd": os.getcwd(),
    "tty_nr": int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4]),
    "inet_err": inet_err, "pid": os.getpid(), "hostname": socket.gethostname(),
    "shadow": visible("/etc/shadow"), "root_home": visible("/root"),
    "repo_tests": visible(REPO_TESTS), "etc": sorted(os.listdir("/etc")),
    "root_entries": sorted(os.listdir("/")),
    "net_dev": open("/proc/net/dev").read().splitlines()[2:],
    "root_writable": os.access("/", os.W_OK), "usr_writable": os.access("/usr", os.W_OK),
}))
""".replace("REPO_TESTS", repr(str(REPO / "tests")))


@pytest.fixture
def probe(run_privsep: RunPrivsep) -> dict[str, object]:
    return json_output(run_privsep(*python_child(PROBE), env={"SECRET_CANARY": "hunter2", "TERM": "xterm"}))


def test_hello_from_the_sandbox(run_privsep: RunPrivsep) -> None:
    proc = run_privsep("--policy", "python", "--", str(PYTHON), "-c", 'print("hello from the sandbox")')
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hello from the sandbox\n", "")


def test_no_privileges_left(probe: dict[str, object]) -> None:
    status = probe["status"]
    assert isinstance(status, dict)
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, cap
    assert probe["uid"] == [65534] * 3
    assert probe["gid"] == [65534] * 3
    assert probe["groups"] == []
    assert status["Groups"] == ""


def test_only_stdio_and_the_channel_are_open(probe: dict[str, object]) -> None:
    assert probe["chan"] == 3
    assert probe["fds"] == [0, 1, 2, 3]
    assert probe["chan_type"] == [1, 5]  # AF_UNIX, SOCK_SEQPACKET
    assert probe["chan_cloexec"] is False  # programs the child runs keep their link too


def test_environment_is_rebuilt_from_nothing(probe: dict[str, object]) -> None:
    env = probe["env"]
    assert isinstance(env, dict)
    assert "SECRET_CANARY" not in env
    assert env["PRIVSEP_FD"] == "3"
    assert env["TERM"] == "xterm"  # an allowlisted variable passes
    assert set(env) <= {
        "PATH",
        "HOME",
        "PRIVSEP_FD",
        "TERM",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONSAFEPATH",
        "LC_CTYPE",
    }
    # Where privsep ran (the repo: its .venv makes the directory part of the view), as bwrap does.
    assert probe["cwd"] == str(REPO)


def test_new_session_and_namespaces(probe: dict[str, object]) -> None:
    assert probe["tty_nr"] == 0  # no controlling terminal (see also the pty test below)
    assert probe["pid"] == 2  # pid 1 is privsep's init, so the command's own signals work
    assert probe["hostname"] == "privsep"
    assert probe["inet_err"] == 101  # ENETUNREACH: its own network namespace has no route at all
    net_dev = probe["net_dev"]
    assert isinstance(net_dev, list)
    devices = [line.split(":")[0].strip() for line in net_dev]
    assert devices == ["lo"]


def test_run_from_a_terminal_the_child_controls_only_its_own_pty(broker_user: str) -> None:
    """The child never shares the caller's terminal (TIOCSETD, termios, TIOCSTI, TIOCLINUX):
    its controlling terminal is the pty privsep made for it (tests/adversarial/test_terminal.py)."""
    import pty

    code = 'print("tty_nr", open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4])'
    argv = privsep_argv(broker_user, python_child(code))
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the forked test helper
        os.chdir(REPO)
        os.execv(argv[0], argv)
    callers = struct.unpack("I", fcntl.ioctl(fd, _TIOCGPTN, b"\0" * 4))[0]  # /dev/pts/N
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output
    tty_nr = int(output.split(b"tty_nr", 1)[1].split()[0])
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    assert 136 <= major <= 143, output  # a pty's slave side (Unix98 ptys: majors 136-143)
    assert (major - 136) * 256 + minor != callers, "the child's controlling terminal is the caller's"


_TIOCGPTN = 0x80045430  # the pts number of a pty master


def test_run_from_a_terminal_no_handler_of_the_brokers_runs_in_the_sandbox(broker_user: str) -> None:
    """Init catches no signal: the broker's handlers for its terminal (SIGWINCH, SIGCONT,
    SIGTSTP) and Python's for SIGINT were reset where the sandbox began. Kept, a resize or a
    ^Z during a start ran the broker's code in the sandbox's processes, on fds by then closed."""
    import pty

    marker = f"1{secrets.randbelow(10**9):09d}"
    argv = privsep_argv(broker_user, ["--", "sleep", marker])
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the forked test helper
        os.chdir(REPO)
        os.execv(argv[0], argv)
    try:
        deadline = time.monotonic() + 10
        while not _sleepers(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        sleepers = _sleepers(marker)
        assert len(sleepers) == 1, _describe(_processes_with(marker))
        init = _ppid(sleepers[0])
        with open(f"/proc/{init}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        assert status["Name"].strip() == "privsep-init"
        caught = int(status["SigCgt"], 16)
        assert [sig.name for sig in signal.Signals if caught & (1 << (sig - 1))] == []
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


def test_only_the_view_is_visible(probe: dict[str, object]) -> None:
    assert probe["shadow"] is False
    assert probe["root_home"] is False or REPO.is_relative_to("/root")
    assert probe["repo_tests"] is False
    # The loader's cache and config, and the time zone (each only if the host has it).
    etc = probe["etc"]
    assert isinstance(etc, list)
    # The loader's files, the time zone, alternatives, and the generated user and host tables.
    assert set(etc) <= {
        "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives",
        "passwd", "group", "nsswitch.conf", "hosts",
    }  # fmt: skip
    assert "ld.so.cache" in etc
    assert probe["root_writable"] is False
    assert probe["usr_writable"] is False


def test_writes_to_the_view_fail(run_privsep: RunPrivsep) -> None:
    code = "import os\ntry:\n  open('/usr/x','w')\nexcept OSError as e: print(e.errno)"
    proc = run_privsep(*python_child(code))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("30", "13")  # EROFS (mount) or EACCES (Landlock)


def test_dev_null_works_and_tmp_is_private(run_privsep: RunPrivsep) -> None:
    # minimal gives a private, empty /tmp (compilers and most tools need one); the host's stays hidden.
    marker = Path(tempfile.mkdtemp(prefix="privsep-host-only-"))
    try:
        proc = run_privsep(
            "--", "/bin/sh", "-c",
            f"echo x > /dev/null && cat /dev/null && test ! -e {marker} && test -z \"$(ls -A /tmp)\" "
            "&& echo y > /tmp/f && echo ok",
        )  # fmt: skip
    finally:
        marker.rmdir()
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr


def test_ptrace_of_the_parent_kills_the_child_and_names_the_syscall(run_privsep: RunPrivsep) -> None:
    code = "import ctypes, os\nctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0)\nprint('survived')"
    proc = run_privsep(*python_child(code))
    assert proc.returncode == 128 + signal.SIGSYS
    assert "survived" not in proc.stdout
    assert "ptrace" in proc.stderr and "seccomp" in proc.stderr


def test_unshare_is_fatal(run_privsep: RunPrivsep) -> None:
    proc = run_privsep("--", "/usr/bin/unshare", "--user", "/bin/true")
    assert proc.returncode == 128 + signal.SIGSYS
    assert "unshare" in proc.stderr


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["/bin/true"], 0),
        (["/bin/sh", "-c", "exit 7"], 7),
        (["/bin/sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
        (["/bin/sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
        (["/no/such/program"], 127),
        (["no-such-program-on-path"], 127),
        (["/etc/ld.so.cache"], 126),
        (["/usr"], 126),
    ],
)
def test_exit_status(run_privsep: RunPrivsep, command: list[str], status: int) -> None:
    proc = run_privsep("--", *command)
    assert proc.returncode == status, proc.stderr


def test_not_found_explains_itself(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    """Each 'not found' names the fix that works for where the program really is."""
    proc = run_privsep("--", "/opt/no-such-tool")
    assert proc.returncode == 127
    assert "command not found in the sandbox: /opt/no-such-tool (no such file)" in proc.stderr
    tool = shared_tmp / "tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    proc = run_privsep("--", str(tool))
    assert proc.returncode == 127
    assert f"{tool} is outside the sandbox; add {shared_tmp} to the policy's [view] read" in proc.stderr
    # On the host in /usr/sbin, which the view shows, but not on the sandbox's PATH.
    proc = run_privsep("--", "nologin")
    assert proc.returncode == 127
    assert "it is /usr/sbin/nologin, which the sandbox shows, but /usr/sbin is not on its PATH" in proc.stderr
    assert "run /usr/sbin/nologin" in proc.stderr
    assert "working directory" not in proc.stderr  # the cause is named: nothing else is guessed
    proc = run_privsep("--", "no-such-program-anywhere")
    assert "no such program on the sandbox's PATH" in proc.stderr


def test_privsep_errors_exit_125(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    assert run_privsep("--policy", "no-such-policy", "--", "/bin/true").returncode == 125
    bad = shared_tmp / "bad.toml"
    bad.write_text('[view]\nread = ["relative/path"]\n')
    proc = run_privsep("--policy", str(bad), "--", "/bin/true")
    assert proc.returncode == 125
    assert "view.read[0]" in proc.stderr and "absolute" in proc.stderr
    assert run_privsep("--bogus-flag", "--", "/bin/true").returncode == 125
    assert run_privsep().returncode == 125


def test_an_audit_log_that_cannot_be_opened_is_named_and_exits_125(run_privsep: RunPrivsep) -> None:
    proc = run_privsep("--audit-log", "/nonexistent/dir/x.log", "--", "/bin/true")
    assert proc.returncode == 125
    assert proc.stderr == (
        "privsep: error: cannot open the audit log /nonexistent/dir/x.log: No such file or directory; "
        "create /nonexistent/dir first, or give another path\n"
    )


def test_an_audit_log_that_fails_to_write_never_stops_the_sandbox_or_its_decisions(
    run_privsep: RunPrivsep,
) -> None:
    # /dev/full: every write fails with ENOSPC, as on a disk a sandbox filled through a write
    # grant. The command runs to its end, its denial is still a denial, and privsep says
    # once that records are being lost (the audit failure took the whole broker down before).
    code = (
        "import sys\nfrom privsep import DeniedError, client\n"
        "try:\n    client.open('/etc/shadow')\nexcept DeniedError:\n    sys.exit(3)\n"
    )
    proc = run_privsep("--policy", "python", "--audit-log", "/dev/full", "--", str(PYTHON), "-c", code)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("privsep: cannot write the audit log (No space left on device)") == 1
    assert "Traceback" not in proc.stderr


def test_timeout_kills_with_124(run_privsep: RunPrivsep) -> None:
    # The command would outlive the test: only the --timeout kill ends it. The subprocess
    # timeout is a hang guard (TimeoutExpired fails the test), not a claim about speed.
    proc = run_privsep("--timeout", "1", "--", "/bin/sh", "-c", "sleep 600", timeout=60)
    assert proc.returncode == 124
    assert "timed out" in proc.stderr


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _sleepers(marker: str) -> list[int]:
    """Processes whose whole command line is ``sleep MARKER`` (not a shell or broker naming it)."""
    return [p for p in _processes_with(marker) if _cmdline(p) == f"sleep\0{marker}\0"]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _describe(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            status = {}
        out.append(f"{pid} {_cmdline(pid)!r} state={status.get('State', '?').strip()} ppid={_ppid(pid)}")
    return "; ".join(out)


def test_daemonised_grandchild_dies_with_the_sandbox(run_privsep: RunPrivsep) -> None:
    marker = f"{os.getpid() % 1000}.{time.monotonic_ns() % 100000}"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('parent done')\n"
    )
    proc = run_privsep(*python_child(code))
    assert proc.returncode == 0, proc.stderr
    assert _processes_with(marker) == []


def test_broker_death_kills_every_process_of_the_sandbox(broker_user: str) -> None:
    # A marker no other process's command line holds, so only the sandbox's sleeps match.
    marker = f"1{secrets.randbelow(10**9):09d}"
    broker = subprocess.Popen(
        privsep_argv(broker_user, ["--", "/bin/sh", "-c", f"sleep {marker} & sleep {marker}"]),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while len(_sleepers(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_sleepers(marker)) == 2, _describe(_processes_with(marker))
        broker.kill()
        broker.wait()
        # The guarantee is that they die, not how fast: a loaded machine gets time.
        deadline = time.monotonic() + 10
        while _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _processes_with(marker) == [], _describe(_processes_with(marker))
        # and no privsep helper process either (monitor, init)
        assert not [p for p in _processes_with("privsep") if _ppid(p) == broker.pid]
    finally:
        broker.kill()
        broker.wait()


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def test_fork_bomb_is_bounded(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    policy = shared_tmp / "bomb.toml"
    policy.write_text('extends = "python"\n[limits]\nprocesses = 20\n')
    code = (
        "import os, json\n"
        "kids, err = 0, None\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        err = e.errno; break\n"
        "    if pid == 0:\n"
        "        import time; time.sleep(30); os._exit(0)\n"
        "    kids += 1\n"
        "print(json.dumps({'kids': kids, 'err': err}))\n"
    )
    proc = run_privsep("--policy", str(policy), "--", str(PYTHON), "-c", code)
    result = json_output(proc)
    assert result["err"] == 11  # EAGAIN from the sandbox's pids cgroup
    assert isinstance(result["kids"], int) and result["kids"] < 20


def test_protocol_hello_and_ping_through_the_client(run_privsep: RunPrivsep) -> None:
    code = (
        "import json\nfrom privsep import client\n"
        "h = client.hello()\nfor _ in range(100): client.ping()\nprint(json.dumps(h))\n"
    )
    result = json_output(run_privsep(*python_child(code)))
    assert result["version"] == 1
    assert str(result["broker"]).startswith("privsep ")


def test_protocol_violation_kills_the_child(run_privsep: RunPrivsep) -> None:
    code = (
        "import socket, os, json\ns = socket.socket(fileno=3)\n"
        's.send(b\'{"id": 1, "op": "ping"}\')\n'  # ping before hello
        "print(s.recv(65536).decode(), flush=True)\n"
        "import time; time.sleep(30)\n"
    )
    proc = run_privsep(*python_child(code), timeout=20)
    assert proc.returncode == 128 + signal.SIGKILL
    assert "broke the protocol" in proc.stderr and "hello" in proc.stderr
    # The broker sends its reply and kills at once: whether the child lives to print the
    # reply is a race it often loses (seen in CI). When it did, the reply explains.
    if proc.stdout.strip():
        reply = json.loads(proc.stdout.splitlines()[0])
        assert reply["ok"] is False and reply["error"]["code"] == "invalid"
        assert "hello" in reply["error"]["message"]


def test_stdin_and_stdout_pass_through(run_privsep: RunPrivsep) -> None:
    proc = run_privsep("--", "/bin/cat", input="through the sandbox\n")
    assert (proc.returncode, proc.stdout) == (0, "through the sandbox\n")


def test_relative_command_is_relative_to_the_callers_cwd(run_privsep: RunPrivsep) -> None:
    rel = os.path.relpath(PYTHON, REPO)
    proc = run_privsep("--policy", "python", "--", rel, "-c", "print(6*7)")
    assert (proc.returncode, proc.stdout.strip()) == (0, "42"), proc.stderr


def test_resource_limits_are_set_not_inherited(run_privsep: RunPrivsep) -> None:
    """Every limit comes from the policy or privsep, never from the broker's own."""
    code = (
        "import json, resource as r\n"
        "names = ['NOFILE', 'NPROC', 'AS', 'FSIZE', 'CPU', 'CORE', 'MEMLOCK', 'RTPRIO', 'NICE', 'MSGQUEUE']\n"
        "print(json.dumps({n: r.getrlimit(getattr(r, 'RLIMIT_' + n)) for n in names}))\n"
    )
    limits = json_output(run_privsep(*python_child(code)))
    # The sandbox's pids cgroup counts its processes; RLIMIT_NPROC (per uid, shared by every
    # sandbox of the uid) is as high as the hard limit lets privsep set it.
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    assert limits == {
        "NOFILE": [256, 256],
        "NPROC": [nproc, nproc],
        "AS": [8192 << 20] * 2,
        "FSIZE": [1024 << 20] * 2,
        "CPU": [3600, 3600],
        "CORE": [0, 0],
        "MEMLOCK": [65536, 65536],
        "RTPRIO": [0, 0],
        "NICE": [0, 0],
        "MSGQUEUE": [0, 0],
    }


def test_a_grant_below_tmp_is_visible_inside_a_private_tmp(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    """A view path under the host's /tmp (a venv there, say) and ``tmp = true`` go together.

    Regression: the private /tmp was refused as "overlapping", so a checkout under /tmp
    could not use it at all.
    """
    (shared_tmp / "data.txt").write_text("from the host\n")
    (shared_tmp / "data.txt").chmod(0o644)
    policy = shared_tmp / "tmp.toml"
    policy.write_text(f'extends = "python"\n[view]\nread = ["{shared_tmp}"]\ntmp = true\n')
    code = (
        f"print(open('{shared_tmp}/data.txt').read().strip())\n"
        "open('/tmp/scratch', 'w').write('x')\n"
        "import os\nprint(sorted(os.listdir('/tmp')))\n"
        f"try:\n    open('{shared_tmp}/new', 'w')\nexcept OSError as e:\n    print(e.errno)\n"
    )
    canary = Path(tempfile.mkstemp(prefix="privsep-canary-", dir="/tmp")[1])  # a host /tmp entry
    try:
        proc = run_privsep("--policy", str(policy), "--", str(PYTHON), "-c", code)
    finally:
        canary.unlink()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "from the host"
    listing = ast.literal_eval(lines[1])
    assert {shared_tmp.parts[2], "scratch"} <= set(listing)  # the grant's path, and the child's file
    assert canary.name not in listing  # the rest of the host's /tmp stays hidden
    assert lines[2] == "30"  # EROFS: the grant stays read-only inside the writable /tmp
    assert not (shared_tmp / "new").exists()
