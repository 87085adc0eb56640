"""A fresh-eyes audit of egress by host name (issue 17): what a hostile sandbox found, pinned.

Same harness as ``test_egress_attacks.py`` (real confined children on an
in-process broker; :class:`FakeDns` stands in for the host's resolver and
records every name it is asked).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from privsep.broker.loop import Broker
from tests.adversarial.test_egress_attacks import (
    PROXY,
    FakeDns,
    broker,  # noqa: F401 - a fixture
    fake_dns,  # noqa: F401 - a fixture
    origin,
    policy_with,
    run,
)


@pytest.fixture
def echo_origin() -> Iterator[int]:
    """A local origin on 127.0.0.1 that answers every request with its head as the body (as TRACE
    asks, and as many debugging endpoints do for any method); its port."""

    def echo(raw: bytes) -> bytes:
        head = raw + b"\r\n\r\n"
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\n"
            + f"Content-Length: {len(head)}\r\nConnection: close\r\n\r\n".encode()
            + head
        )

    yield from origin(echo)


def test_trace_never_carries_the_injected_header_back_to_the_sandbox(
    broker: Broker,  # noqa: F811 - the fixture
    echo_origin: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TRACE asks the origin to send the request back as it received it (RFC 9110 9.3.8): forwarded
    with the injected header, the value would come back to the sandbox that must never hold it."""
    port = echo_origin
    monkeypatch.setenv("EGRESS_AUDIT_TOKEN", "s3cret-value")
    inject = {"host": "api.test", "header": "X-Api-Key", "source": "env:EGRESS_AUDIT_TOKEN"}
    policy = policy_with(
        connect=[{"host": "api.test", "ports": [port]}],
        network={"hosts": {"api.test": "127.0.0.1"}, "proxy": True, "inject": [inject]},
    )
    a = f"api.test:{port}"
    code = (
        PROXY
        + f"""
out = {{}}
for method in ("TRACE", "trace", "TRACK"):
    out[method] = proxied(b"%s http://{a}/ HTTP/1.1\\r\\nHost: {a}\\r\\n\\r\\n" % method.encode())[1]
out["GET"] = proxied(b"GET http://{a}/ HTTP/1.1\\r\\nHost: {a}\\r\\n\\r\\n")[1]
print(json.dumps(out))
"""
    )
    _, out = run(broker, policy, code)
    for method in ("TRACE", "trace", "TRACK"):
        assert "s3cret" not in out[method], method
        assert out[method].startswith("HTTP/1.1 501"), (method, out[method])
    # The control: an echoing origin does give back what it was sent (SECURITY.md says so).
    assert "X-Api-Key: s3cret-value" in out["GET"]


def test_a_socks_domain_with_a_line_feed_is_not_a_host_name(
    broker: Broker,  # noqa: F811 - the fixture
    fake_dns: Callable[..., FakeDns],  # noqa: F811 - the fixture
) -> None:
    """``host_name`` used ``re.match`` with ``$``, which also matches before a final LF, so a label
    ending in LF passed as an RFC 1123 label. A SOCKS5 domain may hold any octet: under a wildcard
    rule the broker then handed the host's resolver a name that is no host name (and a glibc
    before 2.30 reads "10.0.0.1\\n.allowed.test" as the address 10.0.0.1, CVE-2016-10739)."""
    fake = fake_dns({"*.allowed.test": "203.0.113.7"})
    policy = policy_with(connect=[{"host": "*.allowed.test", "ports": [443]}], network={"proxy": True})
    code = r"""
import json, socket, struct
def socks(domain):
    s = socket.create_connection(("127.0.0.1", 1080), timeout=20)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(domain)]) + domain + struct.pack("!H", 443))
    reply = s.recv(10)
    s.close()
    return reply[1]
print(json.dumps({
    "lf-in-a-label": socks(b"x\n.allowed.test"),
    "address-then-lf": socks(b"10.0.0.1\n.allowed.test"),
    "lf-at-the-end": socks(b"x.allowed.test\n"),
}))
"""
    _, out = run(broker, policy, code)
    assert out == {"lf-in-a-label": 4, "address-then-lf": 4, "lf-at-the-end": 4}  # host unreachable
    assert fake.asked == []
