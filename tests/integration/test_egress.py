"""Egress by host name (issue 17): unmodified clients reach allowed names, and only those.

``curl``, ``wget``, Python's ``urllib`` and ``requests``, ``git`` over http
and ``pip download`` run unmodified in the sandbox against a local HTTP
server, by the name ``api.test``, pinned to 127.0.0.1 in the policy
(``[network] hosts``: no test reaches beyond loopback, and no name is looked
up on the host). Without the proxy, their own resolver asks privsep's
(``/etc/resolv.conf``: 127.0.0.53) and their connect is admitted because that
resolver answered the address; with ``[network] proxy = true`` they go
through privsep's HTTP or SOCKS5 proxy, which decides on the name. Another
name is denied, with the fix in the report. Every test runs with the broker as
root and as an unprivileged user.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socketserver
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, RunPrivsep

PAGE = "hello by name\n"
NAME = "api.test"
OTHER = "other.test"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("curl", "wget", "git")), reason="curl, wget and git are needed"
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _wheel(path: Path) -> None:
    """The smallest valid wheel of a package ``demo-pkg`` 1.0, for pip to download."""
    dist = "demo_pkg-1.0.dist-info"
    files = {
        "demo_pkg/__init__.py": "",
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: privsep-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in {**files, f"{dist}/RECORD": record}.items():
            wheel.writestr(name, text)


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def site() -> Iterator[Path]:
    """What the local server serves: a page, a bare git repository (dumb http), a package index."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="privsep-egress-"))
    (root / "index.html").write_text(PAGE)
    work = root / "work"
    work.mkdir()
    _git("init", "-q", cwd=work)
    (work / "README").write_text("cloned by name\n")
    _git("add", "README", cwd=work)
    _git("commit", "-q", "-m", "first", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(root / "repo.git"), cwd=root)
    _git("update-server-info", cwd=root / "repo.git")
    shutil.rmtree(work)
    (root / "packages").mkdir()
    _wheel(root / "packages" / "demo_pkg-1.0-py3-none-any.whl")
    (root / "simple" / "demo-pkg").mkdir(parents=True)
    link = '<a href="../../packages/demo_pkg-1.0-py3-none-any.whl">demo_pkg-1.0-py3-none-any.whl</a>'
    (root / "simple" / "demo-pkg" / "index.html").write_text(f"<html><body>{link}</body></html>\n")
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def port(site: Path) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 serving ``site``; its port."""

    def handler(*args: object) -> _Quiet:
        return _Quiet(*args, directory=str(site))  # type: ignore[arg-type]

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def policy(shared_tmp: Path, port: int, *, base: str = "minimal", proxy: bool = False) -> list[str]:
    """``--policy FILE``: ``api.test`` pinned to 127.0.0.1 and allowed on ``port``, nothing else."""
    text = (
        f'extends = "{base}"\n[[connect]]\nhost = "{NAME}"\nports = [{port}]\n'
        f'[network]\nhosts = {{ "{NAME}" = "127.0.0.1" }}\nproxy = {"true" if proxy else "false"}\n'
    )
    path = shared_tmp / f"egress-{base}-{proxy}.toml"
    path.write_text(text)
    path.chmod(0o644)
    return ["--policy", str(path)]


@pytest.fixture
def log(shared_tmp: Path) -> Path:
    """Where ``--audit-log`` writes, in a directory the non-root broker may create it in."""
    where = shared_tmp / "audit"
    where.mkdir()
    where.chmod(0o1777)
    return where / "audit.log"


def audited(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def through_proxy(log: Path, port: int, proxy: str = "HTTP") -> bool:
    """The audit log says the broker's proxy connected to api.test:PORT."""
    return any(
        r["op"] == "connect"
        and r["target"] == f"{NAME}:{port}/tcp"
        and r["decision"] == "allow"
        and f"privsep's {proxy} proxy" in str(r.get("message"))
        for r in audited(log)
    )


# --- curl and wget -------------------------------------------------------------------------------


@pytest.mark.parametrize("proxy", [False, True], ids=["resolver", "proxy"])
def test_curl_reaches_an_allowed_name_and_nothing_else(
    run_privsep: RunPrivsep, shared_tmp: Path, log: Path, port: int, proxy: bool
) -> None:
    args = [*policy(shared_tmp, port, proxy=proxy), "--audit-log", str(log)]
    ok = run_privsep(*args, "--", "curl", "-sS", "-m", "20", f"http://{NAME}:{port}/index.html")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == PAGE
    assert "denied" not in ok.stderr
    assert through_proxy(log, port) == proxy
    denied = run_privsep(*args, "--", "curl", "-sS", "-f", "-m", "20", f"http://{OTHER}:{port}/index.html")
    assert denied.returncode != 0
    assert PAGE not in denied.stdout
    if proxy:
        assert f"denied connect {OTHER}:{port}/tcp: no [[connect]] rule names this host" in denied.stderr
        assert f"re-run with --allow-connect={OTHER}:{port}" in denied.stderr
    else:
        assert f"Could not resolve host: {OTHER}" in denied.stderr
        assert (
            f"denied resolve {OTHER}/A: no [[connect]] rule names it, so it is not resolved" in denied.stderr
        )
        assert f"re-run with --allow-connect={OTHER}:PORT" in denied.stderr


def test_curl_tunnels_with_connect_and_socks5(
    run_privsep: RunPrivsep, shared_tmp: Path, log: Path, port: int
) -> None:
    args = [*policy(shared_tmp, port, proxy=True), "--audit-log", str(log)]
    url = f"http://{NAME}:{port}/index.html"
    tunnel = run_privsep(*args, "--", "curl", "-sS", "-m", "20", "--proxytunnel", url)
    assert (tunnel.returncode, tunnel.stdout) == (0, PAGE), tunnel.stderr
    socks = run_privsep(*args, "--", "curl", "-sS", "-m", "20", "-x", "socks5h://127.0.0.1:1080", url)
    assert (socks.returncode, socks.stdout) == (0, PAGE), socks.stderr
    assert through_proxy(log, port, "SOCKS5")
    refused = run_privsep(*args, "--", "curl", "-sS", "-m", "20", "--proxytunnel", f"http://{OTHER}:{port}/")
    assert refused.returncode == 56  # curl: the CONNECT was answered 403
    assert f"re-run with --allow-connect={OTHER}:{port}" in refused.stderr


@pytest.mark.parametrize("proxy", [False, True], ids=["resolver", "proxy"])
def test_wget_reaches_an_allowed_name_only(
    run_privsep: RunPrivsep, shared_tmp: Path, port: int, proxy: bool
) -> None:
    args = policy(shared_tmp, port, proxy=proxy)
    ok = run_privsep(*args, "--", "wget", "-q", "-T", "20", "-O", "-", f"http://{NAME}:{port}/index.html")
    assert (ok.returncode, ok.stdout) == (0, PAGE), ok.stderr
    denied = run_privsep(*args, "--", "wget", "-q", "-T", "20", "-O", "-", f"http://{OTHER}:{port}/")
    assert denied.returncode != 0
    assert f"--allow-connect={OTHER}:" in denied.stderr


# --- Python: urllib, requests, pip -----------------------------------------------------------------

URLLIB = """
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode(), end="")
except (urllib.error.URLError, OSError) as exc:
    print("failed:", exc, file=sys.stderr)
    sys.exit(3)
"""

REQUESTS = """
import sys, requests
try:
    reply = requests.get(sys.argv[1], timeout=20)
except requests.RequestException as exc:
    print("failed:", exc, file=sys.stderr)
    sys.exit(3)
print(reply.text, end="")
sys.exit(0 if reply.ok else 4)
"""


@pytest.mark.parametrize("client", ["urllib", "requests"])
@pytest.mark.parametrize("proxy", [False, True], ids=["resolver", "proxy"])
def test_python_clients_reach_an_allowed_name_only(  # noqa: PLR0917 - fixtures and parameters
    run_privsep: RunPrivsep, shared_tmp: Path, log: Path, port: int, proxy: bool, client: str
) -> None:
    args = [*policy(shared_tmp, port, base="python", proxy=proxy), "--audit-log", str(log)]
    code = URLLIB if client == "urllib" else REQUESTS
    ok = run_privsep(*args, "--", str(PYTHON), "-c", code, f"http://{NAME}:{port}/index.html")
    assert (ok.returncode, ok.stdout) == (0, PAGE), ok.stderr
    assert through_proxy(log, port) == proxy
    denied = run_privsep(*args, "--", str(PYTHON), "-c", code, f"http://{OTHER}:{port}/index.html")
    assert denied.returncode in (3, 4)  # no such host, or the proxy's 403
    assert f"--allow-connect={OTHER}:" in denied.stderr


@pytest.mark.parametrize("proxy", [False, True], ids=["resolver", "proxy"])
def test_pip_downloads_from_an_index_by_name(
    run_privsep: RunPrivsep, shared_tmp: Path, port: int, proxy: bool
) -> None:
    args = policy(shared_tmp, port, base="python", proxy=proxy)
    pip = [str(PYTHON), "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"]
    proc = run_privsep(
        *args, "--", *pip, "--index-url", f"http://{NAME}:{port}/simple/", "--trusted-host", NAME,
        "-d", "/tmp/dl", "demo-pkg", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Saved /tmp/dl/demo_pkg-1.0-py3-none-any.whl" in proc.stdout


# --- git over http ---------------------------------------------------------------------------------


@pytest.mark.parametrize("proxy", [False, True], ids=["resolver", "proxy"])
def test_git_clones_over_http_by_name(
    run_privsep: RunPrivsep, shared_tmp: Path, port: int, proxy: bool
) -> None:
    args = policy(shared_tmp, port, proxy=proxy)
    script = f"git clone -q http://{NAME}:{port}/repo.git /tmp/clone && cat /tmp/clone/README"
    proc = run_privsep(*args, "--", "sh", "-c", script, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, "cloned by name\n"), proc.stderr
    denied = run_privsep(*args, "--", "git", "clone", "-q", f"http://{OTHER}:{port}/repo.git", "/tmp/c")
    assert denied.returncode != 0
    assert f"--allow-connect={OTHER}:" in denied.stderr


# --- the resolver's file ---------------------------------------------------------------------------


def test_the_view_of_the_hosts_etc_gets_the_sandboxs_resolver(
    run_privsep: RunPrivsep, shared_tmp: Path, port: int
) -> None:
    """With the host's /etc in the view, privsep's resolv.conf is mounted over the host's."""
    args = policy(shared_tmp, port)
    Path(args[1]).write_text(Path(args[1]).read_text() + '[view]\nread = ["/etc"]\n')
    proc = run_privsep(*args, "--", "sh", "-c", f"cat /etc/resolv.conf; curl -sS -m 20 http://{NAME}:{port}/")
    assert proc.returncode == 0, proc.stderr
    assert "nameserver 127.0.0.53\n" in proc.stdout
    assert proc.stdout.endswith(PAGE)


def test_without_a_name_rule_nothing_listens(run_privsep: RunPrivsep, shared_tmp: Path, port: int) -> None:
    """IP rules only: no resolver is made, and a name is not resolved (as before)."""
    proc = run_privsep(
        "--allow-connect", f"127.0.0.1:{port}", "--", "sh", "-c",
        f"cat /etc/resolv.conf; curl -sS -m 20 http://127.0.0.1:{port}/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "127.0.0.53" not in proc.stdout and proc.stdout.endswith(PAGE)
