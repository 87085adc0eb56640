"""A least-privilege HTTPS daemon: everything it touches comes from the broker.

    privsep run --policy <a policy extending daemon.toml> -- \
        .venv/bin/python examples/daemon/server.py --docroot DIR [--cert FILE]

In the sandbox it has no network and sees no file of the host. It asks the
broker for the listening socket (``client.bind``), the TLS key
(``client.secret_fd``: a sealed memfd, never a file or an environment
variable) and each page it serves (``client.open`` beneath the doc root).
Without ``--cert`` it serves plain HTTP, and says so.

It prints ``listening on URL`` once the socket is ready, serves until
SIGTERM (``privsep run`` forwards it), and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import posixpath
import signal
import socket
import socketserver
import ssl
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any

from privsep import DeniedError, client

TYPES = {".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".css": "text/css"}


class BrokeredServer(socketserver.BaseServer):
    """socketserver on a listening socket handed over by the broker.

    TCPServer would create and bind its own socket; that works too when the policy has a
    [[bind]] rule (the broker serves the bind), but this daemon shows the explicit way.
    """

    def __init__(self, sock: socket.socket, handler: type[Handler], docroot: str) -> None:
        super().__init__(sock.getsockname(), handler)
        self.socket = sock
        self.docroot = docroot

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self) -> tuple[Any, Any]:
        return self.socket.accept()

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
        request.close()

    def server_close(self) -> None:
        self.socket.close()


class Handler(BaseHTTPRequestHandler):
    server: BrokeredServer
    server_version = "privsep-demo/1"

    def do_GET(self) -> None:
        path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        if path.endswith("/"):
            path += "index.html"
        target = self.server.docroot + path  # normpath: no ".." left above "/"
        try:
            if client.stat(target).st_mode & 0o170000 == 0o040000:
                target += "/index.html"
            with client.open(target, "rb") as f:
                body = f.read()
        except FileNotFoundError:
            self.send_error(404)
            return
        except DeniedError:  # the broker's answer, whatever this code got wrong
            self.send_error(403)
            return
        self.send_response(200)
        self.send_header("Content-Type", TYPES.get(posixpath.splitext(target)[1], "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def tls_context(cert: str) -> ssl.SSLContext:
    """A server context from the certificate (opened by the broker) and the key (a secret)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with client.open(cert, "rb") as f:
        chain = f.read()
    # OpenSSL loads from paths: those of our own descriptors, in the sandbox's
    # /proc. The certificate is copied into a memfd of ours: reopening the
    # broker's descriptor by path would be a new open, and the file is not ours.
    cert_fd = os.memfd_create("cert.pem", os.MFD_CLOEXEC)
    key_fd = client.secret_fd("tls_key")  # sealed, read-only: opening it again is fine
    try:
        os.write(cert_fd, chain)
        context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        os.close(key_fd)
        os.close(cert_fd)
    return context


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docroot", required=True)
    parser.add_argument("--cert", help="the certificate; without it, plain HTTP")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    listener = client.bind(args.host, args.port)
    if args.cert:
        listener = tls_context(args.cert).wrap_socket(listener, server_side=True)
        scheme = "https"
    else:
        key = client.secret("tls_key")  # a demo without a certificate still proves the secret arrives
        print(f"no certificate: serving plain HTTP (the tls_key secret holds {len(key)} bytes)", flush=True)
        scheme = "http"
    host, port = listener.getsockname()[:2]
    server = BrokeredServer(listener, Handler, args.docroot.rstrip("/"))
    print(f"listening on {scheme}://{host}:{port}/", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
