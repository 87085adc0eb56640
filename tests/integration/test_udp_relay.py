"""UDP through the broker: a relay to one peer, never a UDP socket that could reach anyone."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import RunPrivsep, json_output, python_child


@pytest.fixture
def echo_server() -> Iterator[tuple[int, list[bytes]]]:
    """A UDP echo server on loopback; yields its port and what it received."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            received.append(data)
            sock.sendto(b"echo:" + data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], received
    stop.set()
    thread.join()
    sock.close()


def test_udp_connect_is_relayed_to_the_one_peer(
    run_privsep: RunPrivsep, echo_server: tuple[int, list[bytes]]
) -> None:
    port, received = echo_server
    code = f"""
import json, socket, errno
from privsep import client
s = client.connect("127.0.0.1", {port}, type="udp")
replies = []
for m in (b"one", b"two", b"x" * 60000):
    s.send(m)
    replies.append(len(s.recv(65535)))
# The child holds a connected unix socket: an address it names is ignored,
# and the datagram still goes to the one peer, through the relay.
s.sendto(b"elsewhere", "/run/other.sock")
redirected = s.recv(100)
raw = None
try:  # with a [[connect]] rule a UDP socket can be made, in the child's own empty network...
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"raw", ("127.0.0.1", {port}))  # ...where it reaches nothing
except OSError as e:
    raw = e.errno
out = {{"replies": replies, "family": s.family, "type": s.type, "raw": raw}}
print(json.dumps({{**out, "redirected": redirected.decode()}}))
"""
    proc = run_privsep("--allow-connect", f"127.0.0.1:{port}/udp", *python_child(code))
    result = json_output(proc)
    assert result["replies"] == [8, 8, 60005]
    assert (result["family"], result["type"]) == (socket.AF_UNIX, socket.SOCK_SEQPACKET)
    assert result["redirected"] == "echo:elsewhere"
    assert result["raw"] == 101  # ENETUNREACH: its own network namespace has no interface up
    assert received == [b"one", b"two", b"x" * 60000, b"elsewhere"]


def test_udp_connect_needs_a_udp_rule(run_privsep: RunPrivsep, echo_server: tuple[int, list[bytes]]) -> None:
    port, received = echo_server
    code = (
        "from privsep import client\n"
        f"try:\n    client.connect('127.0.0.1', {port}, type='udp')\n"
        "except PermissionError as e:\n    print(e)\n"
    )
    proc = run_privsep("--allow-connect", f"127.0.0.1:{port}", *python_child(code))  # tcp only
    assert proc.returncode == 0, proc.stderr
    assert f"--allow-connect=127.0.0.1:{port}/udp" in proc.stdout
    assert received == []


def test_udp_bind_answers_only_peers_that_wrote_first(run_privsep: RunPrivsep) -> None:
    """A UDP server in the sandbox hears any peer and answers it; other destinations are dropped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # never writes to the server
        silent.bind(("127.0.0.1", 0))
        silent.settimeout(0.5)
        silent_port = silent.getsockname()[1]
        code = f"""
from privsep import client
server = client.bind("127.0.0.1", {port}, type="udp")
server.sendto(b"unsolicited", ("127.0.0.1", {silent_port}))
data, peer = server.recvfrom()
server.sendto(b"re:" + data, peer)
"""
        result: dict[str, bytes] = {}

        def talk() -> None:
            deadline = time.monotonic() + 20
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                peer.settimeout(0.2)
                while time.monotonic() < deadline:  # until the sandbox has bound the port
                    peer.sendto(b"hello", ("127.0.0.1", port))
                    try:
                        result["reply"] = peer.recv(100)
                        return
                    except TimeoutError:
                        continue

        thread = threading.Thread(target=talk)
        thread.start()
        proc = run_privsep("--allow-bind", f"127.0.0.1:{port}/udp", *python_child(code))
        thread.join()
        assert proc.returncode == 0, proc.stderr
        assert result["reply"] == b"re:hello"
        with pytest.raises(TimeoutError):
            silent.recv(100)  # the unsolicited datagram never left the broker
    assert f"denied sendto 127.0.0.1:{silent_port}/udp" in proc.stderr
    assert "may only answer" in proc.stderr
