"""Start the least-privilege HTTPS daemon of this directory, fetch a page from it, stop it.

    .venv/bin/python examples/daemon/run.py [--port 443]

In a temporary directory it makes a doc root and, with the ``openssl``
command, a self-signed certificate for 127.0.0.1 and its key (no
``openssl``: a dummy key, and the daemon serves plain HTTP). Then it runs

    privsep run --policy RUN.toml -- .venv/bin/python examples/daemon/server.py ...

where RUN.toml extends ``daemon.toml`` (itself the shipped ``web-daemon``)
with this run's paths. It fetches ``/`` as a client that trusts only that
certificate, prints the page, checks that a page outside the doc root is not
served, and stops the daemon with SIGTERM (which ``privsep run`` forwards).
Exit status 0 when all of that went as expected.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # .venv/bin: privsep and the interpreter the child runs
PAGE = """<!doctype html>
<title>privsep demo</title>
<h1>Hello from a confined daemon</h1>
<p>This page was opened by the broker and served by a process that cannot open it by itself.</p>
"""
START_TIMEOUT = 30.0


def make_tls(tls: Path) -> tuple[Path, Path | None]:
    """key.pem and cert.pem for 127.0.0.1, or a dummy key and no certificate without openssl."""
    tls.mkdir(mode=0o700)
    key, cert = tls / "key.pem", tls / "cert.pem"
    openssl = shutil.which("openssl")
    if openssl is not None:
        made = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if made.returncode == 0:
            return key, cert
        print(f"openssl failed ({made.stderr.strip()}): serving plain HTTP", file=sys.stderr)
    else:
        print("no openssl command: serving plain HTTP", file=sys.stderr)
    key.write_text("-----BEGIN PRIVATE KEY-----\nZHVtbXk=\n-----END PRIVATE KEY-----\n")
    return key, None


def write_policy(path: Path, docroot: Path, key: Path, cert: Path | None, port: int) -> None:
    """This run's layer over daemon.toml: the server's code in the view, the doc root, cert and key."""
    lines = [
        "# Written by examples/daemon/run.py for one run.",
        f"extends = {json.dumps(str(HERE / 'daemon.toml'))}",
        "[view]",
        f"read = [{json.dumps(str(HERE))}]",
        "[[files]]",
        f"path = {json.dumps(str(docroot))}",
        'access = ["read", "list"]',
    ]
    if cert is not None:
        lines += ["[[files]]", f"path = {json.dumps(str(cert))}", 'access = ["read"]', "recursive = false"]
    if port:  # daemon.toml allows 127.0.0.1 port 0 (the kernel picks) only
        lines += ["[[bind]]", 'host = "127.0.0.1"', f"port = {port}"]
    lines += ["[secrets]", f"tls_key = {json.dumps('file:' + str(key))}"]
    path.write_text("\n".join(lines) + "\n")


def fetch(url: str, path: str, cert: Path | None) -> tuple[int, str]:
    host_port = url.split("//", 1)[1].rstrip("/")
    conn: http.client.HTTPConnection
    if cert is not None:
        context = ssl.create_default_context(cafile=str(cert))  # trusts this certificate only
        conn = http.client.HTTPSConnection(host_port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(host_port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, default=0, help="listen on 127.0.0.1:PORT (default: one the kernel picks)"
    )
    port = parser.parse_args().port
    work = Path(tempfile.mkdtemp(prefix="privsep-daemon-"))
    daemon: subprocess.Popen[str] | None = None
    try:
        docroot = work / "www"
        docroot.mkdir()
        (docroot / "index.html").write_text(PAGE)
        key, cert = make_tls(work / "tls")
        (docroot / "key.pem").symlink_to(key)  # planted: the broker does not follow it out of the root
        policy = work / "run.toml"
        write_policy(policy, docroot, key, cert, port)

        server = [
            str(BIN / "python"),
            str(HERE / "server.py"),
            "--docroot",
            str(docroot),
            "--port",
            str(port),
        ]
        if cert is not None:
            server += ["--cert", str(cert)]
        argv = [str(BIN / "privsep"), "run", "--policy", str(policy), "--", *server]
        print("$", " ".join(argv), flush=True)
        daemon = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert daemon.stdout is not None
        url = ""
        for line in daemon.stdout:  # the daemon says where it listens (the kernel picked the port)
            print("daemon:", line.rstrip(), flush=True)
            if line.startswith("listening on "):
                url = line.split()[-1]
                break
        if not url:
            print(f"the daemon did not start (exit status {daemon.wait(START_TIMEOUT)})", file=sys.stderr)
            return 1

        status, body = fetch(url, "/", cert)
        print(f"GET {url} -> {status}")
        print(body, end="")
        outside, leaked = fetch(url, "/key.pem", cert)
        print(f"GET {url}key.pem (a symlink to the key) -> {outside}")

        daemon.send_signal(signal.SIGTERM)  # privsep run forwards it to the server
        rest, _ = daemon.communicate(timeout=START_TIMEOUT)
        for line in rest.splitlines():
            print("daemon:", line)
        print(f"daemon exit status {daemon.returncode}")
        ok = (
            status == 200
            and body == PAGE
            and outside == 403
            and "PRIVATE KEY" not in leaked
            and daemon.returncode == 0
        )
        return 0 if ok else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
