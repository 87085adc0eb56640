"""Brokered files, sockets and secrets (issue 3), from a real confined child under ``privsep run``.

Every test runs twice (``broker_user``): broker as root, and broker as an
unprivileged user on a user namespace. Grants come from the command line or
from a policy file in ``shared_tmp``. The child runs ``CHILD`` (below) plus a
few lines, reports what it got as one JSON line, and the test checks it from
inside (what the child saw) and from outside (the files on disk, the servers
the test runs, the audit log, privsep's stderr).

The layout every file test starts from (``Tree``)::

    shared_tmp/in/data.txt, in/sub/nested.txt         --allow-read
    shared_tmp/out/old.txt                            --allow-write (owned by the broker's uid)
    shared_tmp/outside/victim.txt, outside/dir/...    no grant: nothing may reach or change it
    shared_tmp/audit/                                 writable by the broker, for --audit-log

Three bugs these tests found are fixed and pinned here: a path beneath a
granted file resolved to that file (the last test), the exit report's hint
for a rename denied on its source, and a hint of ``--allow-bind=NAME:PORT``
(a value privsep refuses) for a bind to a name.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, REPO, RunPrivsep, json_output

# --- the child ------------------------------------------------------------------------------------

#: Runs in the sandbox before each test's own lines. ``ARGS`` is the JSON the test passed in argv.
#: ``attempt`` turns a call into {"ok": value} or {"error": ..., "message": ..., "permission": ...}.
CHILD = r"""
import errno, fcntl, hashlib, json, os, socket, stat, sys, time
from privsep import client

ARGS = json.loads(sys.argv[1])


def attempt(fn, *args, **kwargs):
    start = time.monotonic()
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc), "errno": getattr(exc, "errno", None),
                "code": getattr(exc, "code", None), "permission": isinstance(exc, PermissionError),
                "seconds": time.monotonic() - start}
    return {"ok": value, "seconds": time.monotonic() - start}


def fd_facts(fd):
    st = os.fstat(fd)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    return {"dev": st.st_dev, "ino": st.st_ino, "regular": stat.S_ISREG(st.st_mode),
            "access": flags & os.O_ACCMODE, "append": bool(flags & os.O_APPEND),
            "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)}


def open_(path, mode, write=None):
    with client.open(path, mode) as f:
        facts = fd_facts(f.fileno())
        facts["read"] = f.read() if f.readable() else None
        if write is not None:
            f.write(write)
    return facts


def stat_(path):
    st = client.stat(path)
    return {"dev": st.st_dev, "ino": st.st_ino, "mode": st.st_mode, "size": st.st_size}


def talk(sock, send):
    with sock:
        facts = {"family": int(sock.family), "type": int(sock.type),
                 "cloexec": bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)}
        if send is not None:
            sock.sendall(send.encode())
            facts["reply"] = sock.recv(1000).decode()
    return facts


OPS = {
    "open": open_,
    "stat": stat_,
    "listdir": lambda path: sorted(client.listdir(path)),
    "mkdir": client.mkdir,
    "unlink": client.unlink,
    "rename": client.rename,
    "connect": lambda host, port, send=None, **kw: talk(client.connect(host, port, **kw), send),
    "connect_unix": lambda path, send=None: talk(client.connect_unix(path), send),
    "bind": lambda host, port, **kw: client.bind(host, port, **kw).close(),
    "secret": lambda name: hashlib.sha256(client.secret(name)).hexdigest(),
}


def run_calls(calls):
    return [attempt(OPS[op], *args, **kwargs) for op, args, kwargs in calls]
"""

#: A child that performs ``ARGS["calls"]`` in order and reports each outcome.
CALLS = "print(json.dumps({'results': run_calls(ARGS['calls'])}))\n"

Call = tuple[str, tuple[Any, ...], dict[str, Any]]
Outcome = dict[str, Any]


def call(op: str, *args: Any, **kwargs: Any) -> Call:
    """One client call for the child: ``call("open", path, "r")`` runs ``client.open(path, "r")``."""
    return (op, args, kwargs)


def fill(calls: Sequence[Call], **names: object) -> list[Call]:
    """``calls`` with ``{name}`` in their string arguments replaced."""
    return [
        (op, tuple(a.format(**names) if isinstance(a, str) else a for a in args), kw)
        for op, args, kw in calls
    ]


def child(code: str, params: Mapping[str, object], *flags: str, policy: str = "python") -> list[str]:
    """``privsep run`` arguments: ``flags`` (grants), then a confined Python running CHILD + ``code``."""
    return ["--policy", policy, *flags, "--", str(PYTHON), "-c", CHILD + code, json.dumps(params)]


def report(
    run: RunPrivsep,
    code: str,
    params: Mapping[str, object],
    *flags: str,
    policy: str = "python",
    **kw: object,
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run CHILD + ``code`` (which prints one JSON line): what it printed, and the finished process."""
    proc = run(*child(code, params, *flags, policy=policy), **kw)
    return json_output(proc), proc


def run_calls(
    run: RunPrivsep, calls: Sequence[Call], *flags: str, policy: str = "python", **kw: object
) -> tuple[list[Outcome], subprocess.CompletedProcess[str]]:
    """Run ``calls`` in one confined child: their outcomes, in order, and the finished process."""
    out, proc = report(run, CALLS, {"calls": calls}, *flags, policy=policy, **kw)
    results = out["results"]
    assert isinstance(results, list) and len(results) == len(calls), proc.stdout
    return results, proc


# --- what a result must look like ---------------------------------------------------------------


def ok(outcome: Outcome) -> Any:
    assert "ok" in outcome, f"expected success, got {outcome}"
    return outcome["ok"]


def refused(outcome: Outcome) -> Outcome:
    assert "error" in outcome, f"expected a refusal, got {outcome}"
    return outcome


def denial(outcome: Outcome, why: str) -> str:
    """A ``DeniedError`` (a PermissionError) whose message matches ``why`` (a regex); the message."""
    assert outcome.get("error") == "DeniedError" and outcome["permission"], outcome
    message = str(outcome["message"])
    assert re.search(why, message), f"{why!r} not in {message!r}"
    return message


def denied(outcome: Outcome, why: str, hint: str | None) -> str:
    """A denial naming ``why`` and, Deno-style, ``Re-run with HINT`` (None: no flag could allow it)."""
    message = denial(outcome, why)
    if hint is None:
        assert "Re-run with" not in message, message
    else:
        assert f"Re-run with {hint}" in message, message
    return message


def rule(path: Path) -> str:
    """The regex of a recursive [[files]] rule on ``path``, as denials name it."""
    return rf"files\[\d+\] \({re.escape(str(path))}, recursive\)"


NO_FILE_RULE = re.escape("no [[files]] rule covers this path")
NO_CONNECT_RULE = re.escape("no [[connect]] rule allows this address, port and protocol")
NO_BIND_RULE = re.escape("no [[bind]] rule allows this address, port and protocol")


def reported(proc: subprocess.CompletedProcess[str], op: str, target: str) -> None:
    """``privsep run`` told the user, at exit, that ``op`` on ``target`` was denied."""
    assert f"privsep: denied {op} {target}" in proc.stderr, proc.stderr


def key(path: Path) -> list[int]:
    """[st_dev, st_ino] of ``path`` on the host."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino]


def got(facts: Mapping[str, Any]) -> list[int]:
    """[st_dev, st_ino] of what the child got."""
    return [int(facts["dev"]), int(facts["ino"])]


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything under ``root``: each entry's type, permission bits, and content or link target."""
    entries: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                entries[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
            else:
                entries[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    return entries


# --- the host side: a tree of files, policies, servers ------------------------------------------


@dataclass(frozen=True)
class Tree:
    root: Path
    inp: Path
    out: Path
    outside: Path
    audit: Path

    @property
    def grants(self) -> list[str]:
        return ["--allow-read", str(self.inp), "--allow-write", str(self.out)]

    def frozen(self) -> dict[str, tuple[object, ...]]:
        """What no test may change: the read grant and everything outside the grants."""
        return {"in/" + k: v for k, v in snapshot(self.inp).items()} | {
            "outside/" + k: v for k, v in snapshot(self.outside).items()
        }


@pytest.fixture
def tree(shared_tmp: Path, broker_uid: int) -> Tree:
    t = Tree(shared_tmp, shared_tmp / "in", shared_tmp / "out", shared_tmp / "outside", shared_tmp / "audit")
    (t.inp / "sub").mkdir(parents=True)
    (t.inp / "data.txt").write_text("input\n")
    (t.inp / "sub" / "nested.txt").write_text("nested\n")
    t.out.mkdir()
    (t.out / "old.txt").write_text("old\n")
    (t.outside / "dir").mkdir(parents=True)
    (t.outside / "victim.txt").write_text("victim\n")
    (t.outside / "dir" / "victim.txt").write_text("victim in dir\n")
    t.audit.mkdir()
    for path in (t.out, t.out / "old.txt", t.audit):
        os.chown(path, broker_uid, broker_uid)
    return t


WRITE_ACCESS = ("read", "write", "create", "append", "truncate", "list")  # what --allow-write grants


def grant_toml(path: Path, access: Sequence[str], *, symlinks: bool = False) -> str:
    """A [[files]] rule as a policy file writes it."""
    links = str(symlinks).lower()
    return f'[[files]]\npath = "{path}"\naccess = {json.dumps(list(access))}\nsymlinks = {links}\n'


def policy_file(where: Path, body: str) -> str:
    """A policy extending ``python``, written to ``where/policy.toml``; its path."""
    path = where / "policy.toml"
    path.write_text('extends = "python"\n' + body)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EchoServer:
    """A listening socket served by a thread: each connection gets ``pong:`` + what it sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received: list[bytes] = []
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @classmethod
    def tcp(cls) -> EchoServer:
        return cls(socket.create_server(("127.0.0.1", 0)))

    @classmethod
    def unix(cls, path: Path) -> EchoServer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        path.chmod(0o777)  # a non-root broker needs write permission to connect
        sock.listen()
        return cls(sock)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = conn.recv(1000)
                self.received.append(data)
                conn.sendall(b"pong:" + data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[Callable[[], EchoServer]]:
    """``servers()`` starts a TCP echo server on 127.0.0.1 (a port from binding port 0)."""
    started: list[EchoServer] = []

    def start() -> EchoServer:
        started.append(EchoServer.tcp())
        return started[-1]

    yield start
    for server in started:
        server.close()


# --- open: every mode ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenCase:
    mode: str
    target: str  # relative to the tree root, in a granted directory
    access: int  # F_GETFL & O_ACCMODE
    append: bool  # F_GETFL & O_APPEND
    read: str | None  # what f.read() gives right after opening
    after: str  # the file's content once the child wrote "NEW" (if the mode writes)
    created: bool
    denied_on: str  # the same mode on this path falls short of its grant
    needs: str  # the flag that would allow it


OPEN_CASES = [
    OpenCase(
        "r", "in/data.txt", os.O_RDONLY, False, "input\n", "input\n", False, "outside/victim.txt", "read"
    ),
    OpenCase("r+", "out/old.txt", os.O_RDWR, False, "old\n", "old\nNEW", False, "in/data.txt", "write"),
    OpenCase("w", "out/old.txt", os.O_WRONLY, False, None, "NEW", False, "in/data.txt", "write"),
    OpenCase("w", "out/new.txt", os.O_WRONLY, False, None, "NEW", True, "in/new.txt", "write"),
    OpenCase("a", "out/old.txt", os.O_WRONLY, True, None, "old\nNEW", False, "in/data.txt", "write"),
    OpenCase("x", "out/new.txt", os.O_WRONLY, False, None, "NEW", True, "in/new.txt", "write"),
    OpenCase("w+", "out/old.txt", os.O_RDWR, False, "", "NEW", False, "in/data.txt", "write"),
    OpenCase("a+", "out/old.txt", os.O_RDWR, True, "", "old\nNEW", False, "in/data.txt", "write"),
    OpenCase("x+", "out/new.txt", os.O_RDWR, False, "", "NEW", True, "in/new.txt", "write"),
]


@pytest.mark.parametrize("case", OPEN_CASES, ids=[f"{c.mode}:{c.target}" for c in OPEN_CASES])
def test_open_hands_over_exactly_the_granted_access_and_denies_the_rest(
    run_privsep: RunPrivsep, tree: Tree, case: OpenCase
) -> None:
    """Each mode: an fd with exactly its access, CLOEXEC, new files 0600; denied where the grant lacks it."""
    target, other = tree.root / case.target, tree.root / case.denied_on
    write = None if case.mode == "r" else "NEW"
    before = tree.frozen()
    (good, bad), proc = run_calls(
        run_privsep,
        [call("open", str(target), case.mode, write=write), call("open", str(other), case.mode, write=write)],
        *tree.grants,
    )
    facts = ok(good)
    assert (facts["access"], facts["append"], facts["cloexec"], facts["regular"]) == (
        case.access,
        case.append,
        True,
        True,
    )
    assert facts["read"] == case.read
    assert got(facts) == key(target)
    assert target.read_text() == case.after
    if case.created:
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    why = NO_FILE_RULE if case.denied_on.startswith("outside") else rule(tree.inp) + " grants read, list; "
    denied(bad, why, f"--allow-{case.needs}={other}")
    reported(proc, "open", str(other))
    assert f"re-run with --allow-{case.needs}={other}" in proc.stderr
    assert tree.frozen() == before  # the denied open created, truncated or wrote nothing


# --- stat, listdir, mkdir, unlink, rename -------------------------------------------------------


def test_stat_answers_for_a_granted_path_only(run_privsep: RunPrivsep, tree: Tree) -> None:
    """stat reports the real file's identity under a grant, and is denied outside every grant."""
    victim = tree.outside / "victim.txt"
    (good, bad), proc = run_calls(
        run_privsep, [call("stat", str(tree.inp / "data.txt")), call("stat", str(victim))], *tree.grants
    )
    facts = ok(good)
    assert got(facts) == key(tree.inp / "data.txt")
    assert (facts["size"], stat.S_ISREG(facts["mode"])) == (6, True)
    denied(bad, NO_FILE_RULE, f"--allow-read={victim}")
    reported(proc, "stat", str(victim))


def test_listdir_lists_a_granted_directory_only(run_privsep: RunPrivsep, tree: Tree) -> None:
    """listdir returns the names in a granted directory, and is denied outside every grant."""
    (good, bad), proc = run_calls(
        run_privsep, [call("listdir", str(tree.inp)), call("listdir", str(tree.outside))], *tree.grants
    )
    assert ok(good) == ["data.txt", "sub"]
    denied(bad, NO_FILE_RULE, f"--allow-read={tree.outside}")
    reported(proc, "listdir", str(tree.outside))


def test_mkdir_creates_0700_under_a_write_grant_only(run_privsep: RunPrivsep, tree: Tree) -> None:
    """mkdir makes a 0700 directory under --allow-write; under --allow-read it is denied, nothing appears."""
    before = tree.frozen()
    made, refused_dir = tree.out / "made", tree.inp / "made"
    (good, bad), proc = run_calls(
        run_privsep, [call("mkdir", str(made)), call("mkdir", str(refused_dir))], *tree.grants
    )
    assert ok(good) is None
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o700
    denied(bad, rule(tree.inp) + " grants read, list; create was needed", f"--allow-write={refused_dir}")
    reported(proc, "mkdir", str(refused_dir))
    assert tree.frozen() == before


def test_unlink_removes_under_a_write_grant_only(run_privsep: RunPrivsep, tree: Tree) -> None:
    """unlink removes a file under --allow-write; under --allow-read it is denied and the file stays."""
    before = tree.frozen()
    data = tree.inp / "data.txt"
    (good, bad), proc = run_calls(
        run_privsep, [call("unlink", str(tree.out / "old.txt")), call("unlink", str(data))], *tree.grants
    )
    assert ok(good) is None
    assert not (tree.out / "old.txt").exists()
    denied(bad, rule(tree.inp) + " grants read, list; create was needed", f"--allow-write={data}")
    reported(proc, "unlink", str(data))
    assert tree.frozen() == before


def test_rename_checks_both_paths_and_changes_nothing_when_either_is_denied(
    run_privsep: RunPrivsep, tree: Tree
) -> None:
    """rename works inside a write grant; with the source or the destination not writable, nothing moves."""
    data, old, victim = tree.inp / "data.txt", tree.out / "old.txt", tree.outside / "victim.txt"
    cases = [  # the call, why it is denied
        (call("rename", str(data), str(tree.out / "stolen.txt")), rule(tree.inp)),  # source read-only
        (call("rename", str(old), str(tree.inp / "planted.txt")), rule(tree.inp)),  # destination read-only
        (call("rename", str(victim), str(tree.out / "stolen.txt")), NO_FILE_RULE),  # source outside
        (call("rename", str(old), str(tree.outside / "planted.txt")), NO_FILE_RULE),  # destination outside
    ]
    before, before_out = tree.frozen(), snapshot(tree.out)
    results, proc = run_calls(run_privsep, [c for c, _ in cases], *tree.grants)
    for ((_, (src, dst), _), why), outcome in zip(cases, results, strict=True):
        denied(outcome, why, f"--allow-write={src} --allow-write={dst}")
        reported(proc, "rename", f"{src} -> {dst}")
    assert snapshot(tree.out) == before_out
    assert tree.frozen() == before
    (moved,), _ = run_calls(run_privsep, [call("rename", str(old), str(tree.out / "new.txt"))], *tree.grants)
    assert ok(moved) is None
    assert (tree.out / "new.txt").read_text() == "old\n" and not old.exists()


def test_a_denied_rename_is_reported_with_a_hint_that_would_allow_it(
    run_privsep: RunPrivsep, tree: Tree
) -> None:
    """At exit, the hint for a rename denied on its source names the source."""
    data = tree.inp / "data.txt"
    (outcome,), proc = run_calls(
        run_privsep, [call("rename", str(data), str(tree.out / "stolen.txt"))], *tree.grants
    )
    denied(outcome, rule(tree.inp), f"--allow-write={data}")  # the child's own message is right
    assert f"re-run with --allow-write={data}" in proc.stderr, proc.stderr


# --- paths that try to leave the grant ----------------------------------------------------------

#: (id, path, whether the normalising client lands inside the read grant).
#: {in}, {outside} are absolute; {in_rel}, {outside_rel} the same relative to the child's working
#: directory (where privsep ran, the repository: its .venv puts it in the view).
TRAVERSALS = [
    ("dotdot-out", "{in}/../outside/victim.txt", False),
    ("dotdot-twice", "{in}/sub/../../outside/victim.txt", False),
    ("dotdot-above-root", "/../../..{outside}/victim.txt", False),
    ("dotdot-back-in", "{in}/sub/../data.txt", True),
    ("a/../b", "/nonexistent/..{in}/data.txt", True),
    ("the-grants-parent", "{in}/..", False),
    ("trailing-slash", "{in}/sub/", True),
    ("dot", "{in}/./data.txt", True),
    ("empty-component", "{in}//data.txt", True),
    ("relative-into-grant", "{in_rel}/data.txt", True),
    ("relative-outside", "{outside_rel}/victim.txt", False),
    ("relative-name", "data.txt", False),
    (".", ".", False),
    ("..", "..", False),
    ("empty", "", False),
]

#: Writes through ".." out of the write grant: each must be refused, raw or normalised.
ESCAPING_WRITES = [
    call("open", "{out}/../outside/victim.txt", "a", write="PWNED"),
    call("open", "{out}/../outside/victim.txt", "w", write="PWNED"),
    call("open", "{out}/../outside/new.txt", "x", write="PWNED"),
    call("mkdir", "{out}/../outside/made"),
    call("unlink", "{out}/../outside/victim.txt"),
    call("rename", "{out}/old.txt", "{out}/../outside/moved.txt"),
]

#: The calls go once through the client (which makes paths absolute and normalises them), then raw:
#: with ``_abspath`` replaced, as a hostile client would, so the broker sees each path as written.
TRAVERSAL_CHILD = """
out = {"client": run_calls(ARGS["calls"])}
client._abspath = lambda path, what="path": os.fspath(path)
out["raw"] = run_calls(ARGS["calls"])
print(json.dumps(out))
"""


def test_traversal_strings_never_reach_outside_the_grant(run_privsep: RunPrivsep, tree: Tree) -> None:
    """../, /a/../b, trailing /, ., //, empty, relative: refused raw; once normalised, inside or refused."""
    names = {"in": str(tree.inp), "out": str(tree.out), "outside": str(tree.outside)}
    names |= {"in_rel": os.path.relpath(tree.inp, REPO), "outside_rel": os.path.relpath(tree.outside, REPO)}
    reads = fill(
        [c for _, path, _ in TRAVERSALS for c in (call("open", path, "r"), call("stat", path))], **names
    )
    writes = fill(ESCAPING_WRITES, **names)
    control = call("open", str(tree.inp / "data.txt"), "r")
    calls = [*reads, *writes, control]
    before, before_out = tree.frozen(), snapshot(tree.out)
    out, _ = report(run_privsep, TRAVERSAL_CHILD, {"calls": calls}, *tree.grants)
    inside = [key(p) for p in (tree.inp / "data.txt", tree.inp / "sub", tree.inp / "sub" / "nested.txt")]

    for spec, normalised, raw in zip(calls, out["client"], out["raw"], strict=True):
        for outcome in (normalised, raw):
            if isinstance(outcome.get("ok"), dict):  # whatever the child got is inside the grant
                assert got(outcome["ok"]) in inside, (spec, outcome)
        if spec is control:
            assert got(ok(raw)) == key(tree.inp / "data.txt")  # the raw client does reach the broker
        elif spec[1][0] == "":
            assert raw["error"] == "ValueError", raw  # the protocol's path is 1..4096 characters
        else:
            denied(raw, "not normalised|not absolute", None)

    for index, (label, _, lands_inside) in enumerate(TRAVERSALS):
        opened, statted = out["client"][2 * index], out["client"][2 * index + 1]
        if lands_inside:
            assert got(ok(statted)) in inside, (label, statted)
        else:
            refused(opened)
            refused(statted)
    for outcome in out["client"][len(reads) : len(reads) + len(writes)]:
        refused(outcome)
    assert tree.frozen() == before and snapshot(tree.out) == before_out


NUL_CHILD = """
path = ARGS["path"]
out = {"client": [attempt(client.open, path), attempt(client.stat, path), attempt(client.mkdir, ARGS["dir"])]}
client.ping()
print(json.dumps(out), flush=True)
chan = socket.socket(fileno=os.dup(int(os.environ["PRIVSEP_FD"])))
chan.send(json.dumps({"id": 77, "op": "open", "path": path, "mode": "r"}).encode())
# The broker answers, then kills: this line is printed only when the reply wins that race.
data, fds, _, _ = chan.recvmsg(65536, socket.CMSG_SPACE(253 * 4))
print(json.dumps({"reply": json.loads(data), "fds": len(fds)}), flush=True)
time.sleep(30)
"""


def test_a_nul_byte_is_refused_by_the_client_and_is_a_violation_on_the_wire(
    run_privsep: RunPrivsep, tree: Tree
) -> None:
    """A NUL in a path reaches no file: the client raises ValueError; sent raw, the broker kills the child."""
    path = f"{tree.inp}/data.txt\x00/../../outside/victim.txt"
    before, before_out = tree.frozen(), snapshot(tree.out)
    proc = run_privsep(*child(NUL_CHILD, {"path": path, "dir": f"{tree.out}/made\x00x"}, *tree.grants))
    assert proc.returncode == 128 + 9, proc.stderr  # SIGKILL: a protocol violation ends the child
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["error"] for o in lines[0]["client"]] == ["ValueError"] * 3
    for late in lines[1:]:  # the reply, if the child read it before the kill landed
        assert late["reply"]["ok"] is False and late["reply"]["error"]["code"] == "invalid"
        assert late["fds"] == 0
    assert "broke the protocol" in proc.stderr
    assert tree.frozen() == before and snapshot(tree.out) == before_out


def test_a_grant_of_srv_data_never_matches_srv_database_and_a_deny_wins(
    run_privsep: RunPrivsep, shared_tmp: Path, broker_uid: int
) -> None:
    """--allow-write srv/data gives nothing in srv/database; a policy deny on srv/data/private beats it."""
    srv = shared_tmp / "srv"
    data, database, private, private2 = (
        srv / "data",
        srv / "database",
        srv / "data" / "private",
        srv / "data" / "private2",
    )
    for d in (private, private2, database):
        d.mkdir(parents=True)
    (data / "f.txt").write_text("mine\n")
    (database / "secret.txt").write_text("theirs\n")
    (private / "key.txt").write_text("key\n")
    for path in (data, data / "f.txt", private2):
        os.chown(path, broker_uid, broker_uid)
    policy = policy_file(shared_tmp, f'[[files]]\npath = "{private}"\ndeny = true\n')
    protected = {"database": snapshot(database), "private": snapshot(private)}
    no_rule = [
        call("open", str(database / "secret.txt"), "r"),
        call("open", str(database / "new.txt"), "x", write="x"),
        call("listdir", str(database)),
        call("stat", str(database)),
        call("mkdir", str(database / "made")),
        call("unlink", str(database / "secret.txt")),
        call("rename", str(data / "f.txt"), str(database / "f.txt")),
    ]
    deny_rule = [
        call("open", str(private / "key.txt"), "r"),
        call("open", str(private / "new.txt"), "x", write="x"),
        call("listdir", str(private)),
        call("unlink", str(private / "key.txt")),
    ]
    allowed = [
        call("open", str(data / "f.txt"), "r"),
        call("listdir", str(data)),
        call("open", str(private2 / "new.txt"), "x", write="ok"),
    ]
    results, proc = run_calls(
        run_privsep, [*no_rule, *deny_rule, *allowed], "--allow-write", str(data), policy=policy
    )
    for outcome in results[: len(no_rule)]:
        denied(outcome, NO_FILE_RULE, "--allow-")
    for outcome in results[len(no_rule) : len(no_rule) + len(deny_rule)]:
        denied(outcome, rf"denied by files\[\d+\] \({re.escape(str(private))}, deny.*a deny rule wins", None)
    reported(proc, "open", str(database / "secret.txt"))
    reported(proc, "open", str(private / "key.txt"))
    opened, listed, created = (ok(o) for o in results[-3:])
    assert got(opened) == key(data / "f.txt")
    assert listed == ["f.txt", "private", "private2"]
    assert created["access"] == os.O_WRONLY and (private2 / "new.txt").read_text() == "ok"
    assert {"database": snapshot(database), "private": snapshot(private)} == protected
    assert (data / "f.txt").read_text() == "mine\n"


# --- symlinks -----------------------------------------------------------------------------------

#: Planted by the test, on the host, in out/: name -> where it points.
PLANTED = {
    "abs": "{outside}/victim.txt",
    "rel": "../outside/victim.txt",
    "dangling": "{outside}/created.txt",
    "dir": "{outside}/dir",
    "inside": "old.txt",
}
#: Requests through the planted links that point out of the grant.
THROUGH_LINKS = [
    call("open", "{out}/abs", "r"),
    call("open", "{out}/abs", "w", write="PWNED"),
    call("open", "{out}/abs", "a", write="PWNED"),
    call("open", "{out}/abs", "r+", write="PWNED"),
    call("open", "{out}/rel", "w", write="PWNED"),
    call("open", "{out}/dangling", "w", write="PWNED"),
    call("open", "{out}/dangling", "a", write="PWNED"),
    call("open", "{out}/dir/victim.txt", "w", write="PWNED"),
    call("open", "{out}/dir/new.txt", "x", write="PWNED"),
    call("stat", "{out}/abs"),
    call("listdir", "{out}/dir"),
    call("mkdir", "{out}/dir/made"),
    call("unlink", "{out}/dir/victim.txt"),
    call("rename", "{out}/old.txt", "{out}/dir/moved.txt"),
]


@pytest.mark.parametrize("follow", [False, True], ids=["symlinks-refused", "symlinks-allowed"])
def test_a_symlink_planted_in_a_write_grant_never_leads_out(
    run_privsep: RunPrivsep, tree: Tree, follow: bool
) -> None:
    """Links out are refused (ELOOP without symlinks=true, EXDEV with); nothing outside is made or changed."""
    for name, target in PLANTED.items():
        (tree.out / name).symlink_to(target.format(outside=tree.outside))
    calls = [*fill(THROUGH_LINKS, out=tree.out), call("open", str(tree.out / "inside"), "r")]
    if follow:
        policy, flags = policy_file(tree.root, grant_toml(tree.out, WRITE_ACCESS, symlinks=True)), []
        why = r"the path leads outside the grant of files\[\d+\]"
    else:
        policy, flags = "python", ["--allow-write", str(tree.out)]
        why = r"a symbolic link is in the way, and files\[\d+\] does not allow symlinks"
    before, before_out = tree.frozen(), snapshot(tree.out)
    results, proc = run_calls(run_privsep, calls, *flags, policy=policy)
    for spec, outcome in zip(calls[:-1], results, strict=False):
        assert "ok" not in outcome, (spec, outcome)
        denied(outcome, why, None)
    if follow:
        assert got(ok(results[-1])) == key(tree.out / "old.txt")  # a link that stays inside is followed
    else:
        denied(results[-1], why, None)
    reported(proc, "open", str(tree.out / "abs"))
    assert tree.frozen() == before and snapshot(tree.out) == before_out
    assert not (tree.outside / "created.txt").exists()


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names atomically (both always exist)."""
    if _libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def identity(path: Path) -> str:
    """ "DEV:INO", as the race child reports what it got."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


RACE_CHILD = """
seen, refusals, errors = {}, 0, {}
deadline = time.monotonic() + ARGS["seconds"]
while time.monotonic() < deadline:
    for path in ARGS["paths"]:
        for op in ("open", "stat"):
            try:
                if op == "open":
                    with client.open(path, "rb") as f:
                        st = os.fstat(f.fileno())
                else:
                    st = client.stat(path)
            except PermissionError:
                refusals += 1
                continue
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            k = f"{st.st_dev}:{st.st_ino}"
            seen[k] = seen.get(k, 0) + 1
print(json.dumps({"seen": seen, "refusals": refusals, "errors": errors}))
"""


@pytest.mark.parametrize("follow", [False, True], ids=["symlinks-refused", "symlinks-allowed"])
def test_a_symlink_swapped_in_and_out_in_a_tight_loop_never_yields_the_outside_file(
    run_privsep: RunPrivsep, tree: Tree, follow: bool
) -> None:
    """A host thread swaps a file and a dir with links out for 1.5 s: no fd or stat the child gets is out."""
    grant = tree.inp
    (grant / "d").mkdir()
    (grant / "d" / "victim.txt").write_text("inside d\n")
    (grant / "file").write_text("inside\n")
    (grant / "file.swap").symlink_to(tree.outside / "victim.txt")  # absolute
    (grant / "d.swap").symlink_to("../outside/dir")  # relative
    inside = {identity(p) for p in (grant / "file", grant / "d" / "victim.txt")}
    forbidden = {identity(p) for p in (tree.outside / "victim.txt", tree.outside / "dir" / "victim.txt")}
    if follow:
        policy, flags = policy_file(tree.root, grant_toml(grant, ["read", "list"], symlinks=True)), []
    else:
        policy, flags = "python", ["--allow-read", str(grant)]
    stop, swaps = threading.Event(), [0]

    def swapper() -> None:
        while not stop.is_set():
            exchange(grant / "file", grant / "file.swap")
            exchange(grant / "d", grant / "d.swap")
            swaps[0] += 1

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        params = {"seconds": 1.5, "paths": [str(grant / "file"), str(grant / "d" / "victim.txt")]}
        out, _ = report(run_privsep, RACE_CHILD, params, *flags, policy=policy)
    finally:
        stop.set()
        thread.join()
    assert not set(out["seen"]) & forbidden, out
    assert set(out["seen"]) <= inside, out
    assert sum(out["seen"].values()) > 50, out  # not vacuous: many requests got the inside file
    assert out["refusals"] > 50, out  # ... and many met the link
    assert swaps[0] > 1000
    assert (tree.outside / "victim.txt").read_text() == "victim\n"


# --- /proc and directories ----------------------------------------------------------------------

PROC_CHILD = """
out = {}
f = client.open(ARGS["file"], "rb")
fd = f.fileno()
for name, flags in (("rdwr", os.O_RDWR), ("wronly", os.O_WRONLY), ("trunc", os.O_WRONLY | os.O_TRUNC)):
    out[name] = attempt(os.open, f"/proc/self/fd/{fd}", flags)
out["write"] = attempt(os.write, fd, b"PWNED")
out["host"] = {p: attempt(lambda p: open(p, "rb").read().decode(), p) for p in ARGS["host_paths"]}
out["broker"] = {p: attempt(OPS["open"], p, "r") for p in [f"/proc/self/fd/{fd}", *ARGS["broker_paths"]]}
out["content"] = os.pread(fd, 100, 0).decode()
print(json.dumps(out))
"""


def test_proc_tricks_neither_widen_a_grant_nor_reach_the_host(run_privsep: RunPrivsep, tree: Tree) -> None:
    """A read-only fd is not reopened for write via /proc/self/fd; /proc/*/root leads nowhere on the host."""
    target = tree.inp / "data.txt"
    target.chmod(0o666)  # only the sandbox, not the host's permissions, stands between the child and a write
    assert Path("/etc/passwd").exists()
    host = [
        "/proc/1/root/etc/shadow",
        "/proc/1/root/etc/passwd",
        "/proc/self/root/etc/shadow",
        "/proc/self/root/etc/passwd",
        f"/proc/1/root{target}",
        f"/proc/self/root{target}",
        f"/proc/1/root{tree.outside}/victim.txt",
    ]
    broker = [
        "/proc/self/fd/3",
        "/proc/1/root/etc/shadow",
        f"/proc/self/root{target}",
        f"/proc/thread-self/root{target}",
        "/proc/1/environ",
    ]
    out, proc = report(
        run_privsep,
        PROC_CHILD,
        {"file": str(target), "host_paths": host, "broker_paths": broker},
        *tree.grants,
    )
    for name in ("rdwr", "wronly", "trunc"):
        # EROFS: the broker opened it beneath a read-only view of the grant (or EACCES: Landlock).
        assert refused(out[name])["errno"] in (13, 30), out[name]
    assert refused(out["write"])["errno"] == 9  # EBADF: the fd is read-only
    host_passwd = Path("/etc/passwd").read_text()
    for path, outcome in out["host"].items():
        if path.endswith("/etc/passwd") and "ok" in outcome:
            # The child's own root shows the view's generated /etc/passwd, never the host's.
            assert outcome["ok"] != host_passwd and "privsep sandbox" in outcome["ok"], (path, outcome)
            continue
        if path.endswith(str(target)) and "ok" in outcome:
            # The read grant is in the child's own view (kernel-served): reading it is what it grants.
            assert outcome["ok"] == "input\n", (path, outcome)
            continue
        assert refused(outcome)["errno"] in (2, 13), (path, outcome)
    for path, outcome in out["broker"].items():
        denied(outcome, NO_FILE_RULE, f"--allow-read={path}")
    assert out["content"] == "input\n" and target.read_text() == "input\n"
    reported(proc, "open", "/proc/self/fd/3")


DIRECTORY_CHILD = """
out = {"calls": run_calls(ARGS["calls"]), "dir_fds": []}
for fd in range(1024):
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            out["dir_fds"].append(fd)
    except OSError:
        pass
print(json.dumps(out))
"""


def test_no_directory_or_fifo_fd_is_ever_handed_out_and_listdir_works_instead(
    run_privsep: RunPrivsep, tree: Tree
) -> None:
    """open of a granted dir (any mode) or FIFO fails, without hanging; listdir and stat work; no dir fd."""
    os.mkfifo(tree.out / "fifo")
    opens = [call("open", str(tree.inp), "r"), call("open", str(tree.inp / "sub"), "r")]
    opens += [call("open", str(tree.out), mode) for mode in ("r", "r+", "w", "a", "w+", "a+", "x")]
    opens += [call("open", str(tree.out / "fifo"), mode) for mode in ("r", "w", "a", "r+")]
    listing = [
        call("listdir", str(tree.inp)),
        call("listdir", str(tree.inp / "sub")),
        call("stat", str(tree.inp)),
    ]
    before = snapshot(tree.root)
    out, _ = report(run_privsep, DIRECTORY_CHILD, {"calls": [*opens, *listing]}, *tree.grants, timeout=20)
    for spec, outcome in zip(opens, out["calls"], strict=False):
        assert refused(outcome)["error"] in ("BrokerError", "DeniedError"), (spec, outcome)
    names, sub_names, facts = (ok(o) for o in out["calls"][len(opens) :])
    assert (names, sub_names) == (["data.txt", "sub"], ["nested.txt"])
    assert stat.S_ISDIR(facts["mode"]) and got(facts) == key(tree.inp)
    assert out["dir_fds"] == []
    assert snapshot(tree.root) == before


# --- network: connect, connect_unix, bind, DNS --------------------------------------------------


def test_connect_reaches_the_granted_port_only(
    run_privsep: RunPrivsep, servers: Callable[[], EchoServer]
) -> None:
    """--allow-connect 127.0.0.1:PORT gives a TCP socket to it; another port, UDP, ::1: denied, unreached."""
    granted, other = servers(), servers()
    calls = [
        call("connect", "127.0.0.1", granted.port, send="ping"),
        call("connect", "127.0.0.1", other.port, send="ping"),
        call("connect", "127.0.0.1", granted.port, type="udp", send="ping"),
        call("connect", "::1", granted.port),
    ]
    (good, port, udp, v6), proc = run_calls(
        run_privsep, calls, "--allow-connect", f"127.0.0.1:{granted.port}"
    )
    facts = ok(good)
    assert (facts["family"], facts["type"], facts["cloexec"]) == (socket.AF_INET, socket.SOCK_STREAM, True)
    assert facts["reply"] == "pong:ping"
    denied(port, NO_CONNECT_RULE, f"--allow-connect=127.0.0.1:{other.port}")
    denied(udp, NO_CONNECT_RULE, f"--allow-connect=127.0.0.1:{granted.port}/udp")
    denied(v6, NO_CONNECT_RULE, f"'--allow-connect=[::1]:{granted.port}'")  # quoted for the shell
    reported(proc, "connect", f"127.0.0.1:{other.port}/tcp")
    assert "re-run with --allow-connect=" in proc.stderr
    assert granted.received == [b"ping"] and other.received == []


def test_connect_unix_reaches_a_socket_granted_by_a_policy_rule_only(
    run_privsep: RunPrivsep, tree: Tree
) -> None:
    """A [[files]] connect rule gives a connected unix socket; others, even in --allow-write, are denied."""
    sockets = tree.root / "sockets"
    sockets.mkdir()
    app, other, in_write = sockets / "app.sock", sockets / "other.sock", tree.out / "w.sock"
    started = [EchoServer.unix(path) for path in (app, other, in_write)]
    try:
        policy = policy_file(tree.root, grant_toml(app, ["connect"]))
        calls = [call("connect_unix", str(path), send="ping") for path in (app, other, in_write)]
        (good, ungranted, write_grant), proc = run_calls(
            run_privsep, calls, "--allow-write", str(tree.out), policy=policy
        )
    finally:
        for server in started:
            server.close()
    facts = ok(good)
    assert (facts["family"], facts["type"], facts["reply"]) == (
        socket.AF_UNIX,
        socket.SOCK_STREAM,
        "pong:ping",
    )
    denied(ungranted, NO_FILE_RULE + r".*only a policy \[\[files\]\] rule grants connect", None)
    denied(write_grant, rule(tree.out) + r" grants .*; connect was needed \(only a policy", None)
    reported(proc, "connect_unix", str(other))
    assert [s.received for s in started] == [[b"ping"], [], []]


BIND_CHILD = """
out = {
    "other_port": attempt(OPS["bind"], "127.0.0.1", ARGS["other"]),
    "any_address": attempt(OPS["bind"], "0.0.0.0", ARGS["port"]),
    "port0_elsewhere": attempt(OPS["bind"], "127.0.0.1", 0),
    "name": attempt(OPS["bind"], "localhost", ARGS["port"]),
    "udp": attempt(lambda: list(client.bind("127.0.0.1", ARGS["port"], type="udp").getsockname())),
}
def port0():
    with client.bind("127.0.0.2", 0) as s:
        return [s.getsockname()[1], s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
out["port0"] = attempt(port0)
def serve():
    with client.bind("127.0.0.1", ARGS["port"]) as s:
        facts = {"name": list(s.getsockname()), "cloexec": not os.get_inheritable(s.fileno())}
        s.settimeout(20)
        conn, _ = s.accept()
        with conn:
            data = conn.recv(100)
            conn.sendall(b"welcome:" + data)
        facts["got"] = data.decode()
        return facts
out["serve"] = attempt(serve)
print(json.dumps(out))
"""


def _knock(port: int, deadline: float) -> bytes:
    """Connect to 127.0.0.1:port once something listens there; send 'hello', return the answer."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"hello")
                return s.recv(100)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_bind_gives_a_listening_socket_on_the_granted_address_only(run_privsep: RunPrivsep) -> None:
    """--allow-bind 127.0.0.1:PORT: the child accepts a connection; other ports and hosts: refused."""
    port, other = free_port(), free_port()
    grants = [f"127.0.0.1:{port}", "127.0.0.2:0", f"127.0.0.1:{port}/udp"]
    flags = [arg for grant in grants for arg in ("--allow-bind", grant)]
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_knock, port, time.monotonic() + 30)
        out, proc = report(run_privsep, BIND_CHILD, {"port": port, "other": other}, *flags)
        assert answer.result(timeout=30) == b"welcome:hello"
    assert ok(out["serve"]) == {"name": ["127.0.0.1", port], "cloexec": True, "got": "hello"}
    picked, listening = ok(out["port0"])
    assert picked != 0 and listening == 1  # a port 0 grant allows port 0 only, and the kernel picks
    denied(out["other_port"], NO_BIND_RULE, f"--allow-bind=127.0.0.1:{other}")
    denied(out["any_address"], NO_BIND_RULE, f"--allow-bind=0.0.0.0:{port}")
    denied(out["port0_elsewhere"], NO_BIND_RULE + ".*port 0 allows port 0 only", "--allow-bind=127.0.0.1:0")
    denied(out["name"], "IP address", None)  # no flag takes a name: no hint
    assert ok(out["udp"]) == ["127.0.0.1", port]  # relayed (tests/integration/test_udp_relay.py)
    reported(proc, "bind", f"127.0.0.1:{other}/tcp")
    assert f"--allow-bind=localhost:{port}" not in proc.stderr  # privsep refuses a name in --allow-bind
    with socket.socket() as s:
        s.bind(("127.0.0.1", other))  # the denied port was never bound


def test_dns_name_rules_resolve_only_granted_names(
    run_privsep: RunPrivsep, servers: Callable[[], EchoServer]
) -> None:
    """--allow-connect localhost:PORT works; another port, the IP, an unnamed host (not looked up): denied."""
    server, other = servers(), servers()
    calls = [
        call("connect", "localhost", server.port, send="ping"),
        call("connect", "localhost", other.port, send="ping"),
        call("connect", "127.0.0.1", server.port, send="ping"),
        call("connect", "unlisted.invalid", server.port),
    ]
    (good, port, literal, unnamed), proc = run_calls(
        run_privsep, calls, "--allow-connect", f"localhost:{server.port}"
    )
    assert ok(good)["reply"] == "pong:ping"
    denied(port, "names this host, but not this port", f"--allow-connect=localhost:{other.port}")
    denied(literal, NO_CONNECT_RULE, f"--allow-connect=127.0.0.1:{server.port}")
    no_name = re.escape("no [[connect]] rule names this host") + ".*the name is not resolved"
    # Decided from the policy alone, without asking DNS: a lookup of a .invalid name would have
    # failed as not_found ("the name does not resolve"), not been denied as unresolved.
    denied(unnamed, no_name, f"--allow-connect=unlisted.invalid:{server.port}")
    reported(proc, "connect", f"unlisted.invalid:{server.port}/tcp")
    assert server.received == [b"ping"] and other.received == []


def test_a_name_that_resolves_into_a_denied_network_is_denied(
    run_privsep: RunPrivsep, shared_tmp: Path, servers: Callable[[], EchoServer]
) -> None:
    """A name rule for localhost and a [[connect]] deny of 127.0.0.0/8: the resolved address is denied."""
    server = servers()
    policy = policy_file(
        shared_tmp,
        f'[[connect]]\nhost = "localhost"\nports = [{server.port}]\n'
        '[[connect]]\nhost = "127.0.0.0/8"\ndeny = true\n',
    )
    (outcome,), proc = run_calls(
        run_privsep, [call("connect", "localhost", server.port, send="x")], policy=policy
    )
    denied(outcome, r"denied by connect\[\d+\] \(127\.0\.0\.0/8, deny, every port\): a deny rule wins", None)
    reported(proc, "connect", f"localhost:{server.port}/tcp")
    assert server.received == []


def _loopback_alias() -> str | None:
    """A name other than localhost that /etc/hosts maps to a loopback address, if any."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/hosts").read_text().splitlines():
            fields = line.split("#")[0].split()
            if len(fields) >= 2 and fields[0].startswith("127."):
                for name in fields[1:]:
                    if name != "localhost" and re.fullmatch(r"[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)*", name):
                        return name
    return None


def test_a_name_other_than_localhost_resolving_to_loopback_is_denied(
    run_privsep: RunPrivsep, servers: Callable[[], EchoServer]
) -> None:
    """DNS rebinding: --allow-connect NAME:PORT with NAME resolving to 127.x: denied as loopback."""
    name = _loopback_alias()
    if name is None:
        pytest.skip("/etc/hosts maps no name but localhost to a loopback address")
    server = servers()
    (outcome,), proc = run_calls(
        run_privsep,
        [call("connect", name, server.port, send="x")],
        "--allow-connect",
        f"{name}:{server.port}",
    )
    denied(outcome, r"connect\[\d+\] .*allows this name, but it resolved to a loopback address", None)
    reported(proc, "connect", f"{name}:{server.port}/tcp")
    assert server.received == []


# --- secrets ------------------------------------------------------------------------------------

SECRET_CHILD = """
out = {}
value, file_value = client.secret("token"), client.secret("filetok")
out["sha"], out["file_sha"] = hashlib.sha256(value).hexdigest(), hashlib.sha256(file_value).hexdigest()
fd = client.secret_fd("token")
out["fd"], out["seals"] = fd_facts(fd), fcntl.fcntl(fd, fcntl.F_GET_SEALS)
def reopen_and_write():
    return os.write(os.open(f"/proc/self/fd/{fd}", os.O_RDWR), b"PWNED")
def mmap_write():
    import mmap
    mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
out["attacks"] = {
    "write": attempt(os.write, fd, b"PWNED"),
    "pwrite": attempt(os.pwrite, fd, b"PWNED", 0),
    "truncate": attempt(os.ftruncate, fd, 0),
    "grow": attempt(os.ftruncate, fd, 1 << 20),
    "reopen_and_write": attempt(reopen_and_write),
    "mmap_write": attempt(mmap_write),
    "add_seal": attempt(fcntl.fcntl, fd, fcntl.F_ADD_SEALS, 0),
}
out["unchanged"] = os.pread(fd, 4096, 0) == value
places = {"environ": b"\\0".join(k + b"=" + v for k, v in os.environb.items()),
          "argv": b"\\0".join(a.encode() for a in sys.argv)}
for path in ("/proc/self/environ", "/proc/self/cmdline", "/proc/1/environ", "/proc/1/cmdline"):
    try:
        places[path] = open(path, "rb").read()
    except OSError:
        places[path] = b""
out["found"] = {where: value in data or file_value in data for where, data in places.items()}
out["missing"] = attempt(client.secret, "missing")
out["unavailable"] = attempt(client.secret, "gone")
print(json.dumps(out))
"""  # noqa: S105 - the code of a child, not a password


def test_secrets_arrive_as_sealed_read_only_memfds_and_nowhere_else(
    run_privsep: RunPrivsep, tree: Tree, broker_uid: int
) -> None:
    """env: and file: secrets: sealed O_RDONLY memfds; never in env, argv, /proc, stdout, stderr or audit."""
    value, file_value = f"S3CR3T-{secrets.token_hex(8)}", f"F1L3S3CR3T-{secrets.token_hex(8)}"
    source = tree.root / "secret.txt"
    source.write_text(file_value)
    os.chown(source, broker_uid, broker_uid)
    source.chmod(0o600)
    audit = tree.audit / "audit.jsonl"
    flags = ["--secret", "token=env:TOKEN", "--secret", f"filetok=file:{source}"]
    flags += ["--secret", "gone=env:PRIVSEP_TEST_UNSET", "--audit-log", str(audit)]
    out, proc = report(run_privsep, SECRET_CHILD, {}, *flags, env={"TOKEN": value})
    assert out["sha"] == hashlib.sha256(value.encode()).hexdigest()
    assert out["file_sha"] == hashlib.sha256(file_value.encode()).hexdigest()
    assert (out["fd"]["access"], out["fd"]["cloexec"], out["fd"]["regular"]) == (os.O_RDONLY, True, True)
    sealed = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    assert out["seals"] & sealed == sealed
    for name, outcome in out["attacks"].items():
        assert "error" in outcome, (name, outcome)
    assert out["unchanged"] is True
    assert out["found"] == dict.fromkeys(out["found"], False) and len(out["found"]) == 6, out["found"]
    denied(out["missing"], "no secret of that name", "--secret=missing=env:VAR")
    assert out["unavailable"]["code"] == "failed" and "PRIVSEP_TEST_UNSET" in out["unavailable"]["message"]
    log = audit.read_text()
    for text in (proc.stdout, proc.stderr, log):
        assert value not in text and file_value not in text
    records = [json.loads(line) for line in log.splitlines()]
    assert [r["target"] for r in records if r["op"] == "secret"] == [
        "token",
        "filetok",
        "token",
        "missing",
        "gone",
    ]


# --- the audit log ------------------------------------------------------------------------------


def test_the_audit_log_has_one_record_per_request(
    run_privsep: RunPrivsep, tree: Tree, servers: Callable[[], EchoServer]
) -> None:
    """--audit-log: one JSON line per request, in order: time, pid, op, target, decision, rule, latency_us."""
    server = servers()
    data, old, victim = tree.inp / "data.txt", tree.out / "old.txt", tree.outside / "victim.txt"
    new, made, missing = tree.out / "new.txt", tree.out / "made", tree.out / "missing"
    token = f"S3CR3T-{secrets.token_hex(8)}"
    audit = tree.audit / "audit.jsonl"
    files, port = r"files\[\d+\]", server.port
    expected = [  # the call, then the record's op, target, decision, rule (a regex; None: no rule decided)
        (call("open", str(data), "r"), "open", str(data), "allow", files),
        (call("open", str(data), "w"), "open", str(data), "deny", files),
        (call("stat", str(victim)), "stat", str(victim), "deny", None),
        (call("listdir", str(tree.inp)), "listdir", str(tree.inp), "allow", files),
        (call("mkdir", str(made)), "mkdir", str(made), "allow", files),
        (call("rename", str(old), str(new)), "rename", f"{old} -> {new}", "allow", f"{files} -> {files}"),
        (call("unlink", str(missing)), "unlink", str(missing), "error", files),
        (call("connect", "127.0.0.1", port), "connect", f"127.0.0.1:{port}/tcp", "allow", r"connect\[\d+\]"),
        (call("connect", "127.0.0.1", 9), "connect", "127.0.0.1:9/tcp", "deny", None),
        (call("secret", "token"), "secret", "token", "allow", r"secrets\.token"),
        (call("secret", "nope"), "secret", "nope", "deny", None),
    ]
    flags = [*tree.grants, "--allow-connect", f"127.0.0.1:{port}", "--secret", "token=env:TOKEN"]
    start = time.time()
    results, _ = run_calls(
        run_privsep, [c for c, *_ in expected], *flags, "--audit-log", str(audit), env={"TOKEN": token}
    )
    end = time.time()
    assert ["ok" in r for r in results] == [e[3] == "allow" for e in expected]
    text = audit.read_text()
    assert token not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == len(expected), text
    for record, (_, op, target, decision, pattern) in zip(records, expected, strict=True):
        assert {"time", "pid", "op", "target", "decision", "latency_us"} <= record.keys(), record
        assert (record["op"], record["target"], record["decision"]) == (op, target, decision), record
        assert start - 1 <= record["time"] <= end + 1
        assert isinstance(record["latency_us"], int) and 0 <= record["latency_us"] < 10_000_000
        if pattern is None:
            assert record.get("rule") is None, record
        else:
            assert re.fullmatch(pattern, record["rule"]), record
        if decision != "allow":
            assert record["message"] and record["code"], record
    assert len({r["pid"] for r in records}) == 1 and isinstance(records[0]["pid"], int)
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600


# --- the "Done when" --------------------------------------------------------------------

JOB = """
IN, OUT = ARGS["in"], ARGS["out"]
data = client.open(f"{IN}/data.txt").read()
with client.open(f"{OUT}/result.txt", "w") as f:
    f.write(data.upper())
with client.connect("127.0.0.1", ARGS["port"]) as s:
    s.sendall(b"ping")
    reply = s.recv(100).decode()
token = client.secret("token")
extras = {
    "read outside": attempt(client.open, ARGS["victim"]),
    "write to IN": attempt(client.open, f"{IN}/data.txt", "w"),
    "create in IN": attempt(client.open, f"{IN}/new.txt", "x"),
    "list /": attempt(client.listdir, "/"),
    "connect elsewhere": attempt(client.connect, "127.0.0.1", ARGS["other"]),
    "connect by name": attempt(client.connect, "localhost", ARGS["port"]),
    "bind": attempt(client.bind, "127.0.0.1", 0),
    "other secret": attempt(client.secret, "other"),
    # Without the client: brokered transparently (issue 8), by the same rules.
    "open directly": attempt(lambda: open(f"{IN}/data.txt").read()),
    "connect directly": attempt(socket.create_connection, ("127.0.0.1", ARGS["other"])),
}
extras["connect directly"].pop("ok", None)  # a socket object is not JSON; were it made, the key is gone
print(json.dumps({"reply": reply, "token": hashlib.sha256(token).hexdigest(), "extras": extras}))
"""


def test_done_when_the_job_does_exactly_what_was_granted_and_nothing_else(
    run_privsep: RunPrivsep, tree: Tree, servers: Callable[[], EchoServer]
) -> None:
    """The issue's command: read IN, write OUT, connect to one port, a secret; all else denied and audited."""
    server, other = servers(), servers()
    token = f"S3CR3T-{secrets.token_hex(8)}"
    audit = tree.audit / "audit.jsonl"
    params = {"in": str(tree.inp), "out": str(tree.out), "port": server.port, "other": other.port}
    params["victim"] = str(tree.outside / "victim.txt")
    flags = ["--allow-read", str(tree.inp), "--allow-write", str(tree.out)]
    flags += ["--allow-connect", f"127.0.0.1:{server.port}", "--secret", "token=env:TOKEN"]
    before = tree.frozen()
    out, proc = report(run_privsep, JOB, params, *flags, "--audit-log", str(audit), env={"TOKEN": token})
    assert out["reply"] == "pong:ping" and out["token"] == hashlib.sha256(token.encode()).hexdigest()
    assert (tree.out / "result.txt").read_text() == "INPUT\n"
    assert server.received == [b"ping"] and other.received == []
    extras = out["extras"]
    brokered = {k: v for k, v in extras.items() if not k.endswith("directly")}
    assert extras["open directly"]["ok"] == "input\n"  # the granted file, served by the kernel
    assert refused(extras["connect directly"])["errno"] == 13  # EACCES, and audited below
    for what, outcome in brokered.items():
        message = denial(outcome, r"files\[|\[\[files\]\]|connect|bind|secret")  # names the rule
        assert message.count("Re-run with --") == 1, what  # and how to allow it
    assert tree.frozen() == before
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    # The direct open is kernel-served, so it is not decided one by one and not audited; the
    # direct connect is brokered transparently and audited.
    assert [r["decision"] for r in records] == ["allow"] * 4 + ["deny"] * len(brokered) + ["deny"]
    ops = ["open", "open", "connect", "secret", "open", "open", "open", "listdir", "connect", "connect"]
    assert [r["op"] for r in records] == [*ops, "bind", "secret", "connect"]
    for record in records[4:]:
        reported(proc, record["op"], record["target"])
    for flag in ("--allow-read", "--allow-write", "--allow-connect", "--allow-bind", "--secret"):
        assert f"re-run with {flag}=" in proc.stderr, flag
    for text in (proc.stdout, proc.stderr, audit.read_text()):
        assert token not in text


# --- a bug these tests found (fixed in ea6b749) --------------------------------------------------


def test_a_path_beneath_a_granted_file_is_not_that_file(run_privsep: RunPrivsep, tree: Tree) -> None:
    """F/x under a grant of the file F is refused (not a directory); it never stats, opens or unlinks F."""
    data, old = tree.inp / "data.txt", tree.out / "old.txt"
    calls = [
        call("stat", str(data)),  # the control: the grant itself works
        call("stat", f"{data}/x"),
        call("open", f"{data}/x/y", "r"),
        call("open", f"{old}/x", "w", write="PWNED"),
        call("unlink", f"{old}/x"),
    ]
    results, _ = run_calls(run_privsep, calls, "--allow-read", str(data), "--allow-write", str(old))
    assert got(ok(results[0])) == key(data)
    for spec, outcome in zip(calls[1:], results[1:], strict=True):
        assert (outcome.get("code"), outcome.get("error")) == ("failed", "BrokerError"), (spec, outcome)
        assert "not a directory" in outcome["message"], outcome
    assert old.read_text() == "old\n"


def test_disk_filling_through_a_brokered_file_stops_at_the_file_size_limit(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    """Escape class: filling the host's disk through a write grant. The child writes
    through the fd it was handed, so its own RLIMIT_FSIZE (file_size_mb) bounds it."""
    out = shared_tmp / "fill"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    policy = shared_tmp / "fill.toml"
    policy.write_text('extends = "python"\n[limits]\nfile_size_mb = 2\n')
    code = (
        "import json, errno\nfrom privsep import client\n"
        f"f = client.open('{out}/big', 'wb', buffering=0)\n"
        "written, err = 0, None\n"
        "try:\n"
        "    while written < 64 << 20:\n"
        "        written += f.write(b'x' * 65536)\n"
        "except OSError as e:\n"
        "    err = e.errno\n"
        "print(json.dumps({'written': written, 'err': err}))\n"
    )
    result = json_output(
        run_privsep("--policy", str(policy), "--allow-write", str(out), "--", str(PYTHON), "-c", code)
    )
    assert result["err"] == 27  # EFBIG: the limit, not the disk, ended it
    assert (out / "big").stat().st_size == 2 << 20
