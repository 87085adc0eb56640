"""Which names the sandbox may learn, from the connect rules; which record types are served."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from privsep.egress.dnswire import TYPE_A, TYPE_AAAA, Rcode
from privsep.egress.names import (
    MAX_PINNED_ADDRESSES,
    PinnedHosts,
    Reply,
    decide_name,
    decide_question,
    name_matches,
)
from privsep.policy.decide import may_resolve
from privsep.policy.model import ConnectRule, Policy

NO_PINS = PinnedHosts()
TXT, MX, PTR, SRV, CNAME, SVCB, HTTPS = 16, 15, 12, 33, 5, 64, 65
IXFR, AXFR, ANY, OPT = 251, 252, 255, 41


def rule(host: str, *ports: int | str, protocol: str = "tcp", deny: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"host": host, "ports": tuple(ports), "deny": deny}
    if not deny:
        out["protocol"] = protocol
    return out


def policy(*rules: dict[str, Any]) -> Policy:
    return Policy.model_validate({"name": "t", "connect": rules})


POLICY = policy(
    rule("10.0.0.0/8", 443),
    rule("api.example.com", 443),
    rule("*.example.com", 443, "8000-8100"),
    rule("db.internal", 5432),
    rule("stun.example.org", 3478, protocol="udp"),
    rule("169.254.0.0/16", deny=True),
)


@pytest.mark.parametrize(
    ("text", "name", "rules"),
    [
        ("api.example.com", "api.example.com", (1, 2)),
        ("API.Example.COM.", "api.example.com", (1, 2)),  # case and a trailing dot do not matter
        ("www.example.com", "www.example.com", (2,)),
        ("a.b.c.example.com", "a.b.c.example.com", (2,)),  # a wildcard covers every depth
        ("db.internal", "db.internal", (3,)),
        ("stun.example.org", "stun.example.org", (4,)),  # a udp rule names its name too
    ],
)
def test_names_a_rule_names_are_learnable(text: str, name: str, rules: tuple[int, ...]) -> None:
    decision = decide_name(POLICY, NO_PINS, text)
    assert decision.allowed
    assert (decision.name, decision.rules, decision.pinned) == (name, rules, None)
    assert decision.hint is None


def test_the_decision_names_the_rule_like_connect_decisions_do() -> None:
    decision = decide_name(POLICY, NO_PINS, "www.example.com")
    assert decision.message == "named by connect[2] (*.example.com, tcp 443, 8000-8100); resolved on the host"
    both = decide_name(POLICY, NO_PINS, "api.example.com")
    assert both.message == "named by connect[1] (api.example.com, tcp 443) (and 1 more); resolved on the host"


@pytest.mark.parametrize(
    "text",
    [
        "example.com",  # the apex: never covered by *.example.com
        "example.com.",
        "badexample.com",
        "example.com.evil.test",
        "api.example.com.evil.test",
        "secret-data.attacker.example",
        "internal",
        "x.db.internal",  # an exact rule does not cover what lies under it
    ],
)
def test_names_no_rule_names_are_refused_with_the_hint(text: str) -> None:
    decision = decide_name(POLICY, NO_PINS, text)
    assert not decision.allowed
    assert decision.rules == ()
    assert decision.hint == f"--allow-connect {text.rstrip('.')}:PORT"
    assert decision.message.startswith("no [[connect]] rule names it, so it is not resolved")
    if text.rstrip(".") != "example.com":  # the message never contains the name the sandbox asked for
        assert decision.message == "no [[connect]] rule names it, so it is not resolved"


def test_the_apex_of_a_wildcard_is_told_why() -> None:
    decision = decide_name(POLICY, NO_PINS, "Example.com.")
    assert decision.message == (
        "no [[connect]] rule names it, so it is not resolved (connect[2] (*.example.com, tcp 443, 8000-8100) "
        "covers the names under it, never the name itself: allow that with a rule of its own)"
    )
    assert decision.hint == "--allow-connect example.com:PORT"


@pytest.mark.parametrize(
    "text",
    [
        ".",
        "",
        "a\\046b.example.com",  # a dot inside a label, as the codec shows it
        "\\095dmarc.example.com",
        "x y.example.com",
        "x\n.example.com",  # "$" in a pattern also matches before a final LF: fullmatch only
        "api.example.com\n",
        "10.0.0.1\n.example.com",  # a glibc before 2.30 reads it as 10.0.0.1 (CVE-2016-10739)
        "10.1.2.3",  # an IP address is not a name: IP rules never let it be resolved
        "127.1",
        "0x7f.1",
        "b\u00fccher.example.com",  # not ASCII: only the IDNA form is a host name
        "a" * 64 + ".example.com",
        ("a" * 63 + ".") * 4 + "example.com",
    ],
)
def test_what_is_not_a_host_name_is_never_learnable(text: str) -> None:
    decision = decide_name(POLICY, NO_PINS, text)
    assert not decision.allowed
    assert (decision.name, decision.hint, decision.allow_flag) == (None, None, None)


def test_deny_and_ip_rules_never_name_a_name() -> None:
    only_ip = policy(rule("10.0.0.0/8", 443), rule("0.0.0.0/0", deny=True))
    assert not decide_name(only_ip, NO_PINS, "anything.example").allowed
    assert not name_matches(ConnectRule.model_validate(rule("0.0.0.0/0", deny=True)), "x.example")


# --- pinned hosts --------------------------------------------------------------------------------


def test_a_pinned_name_with_a_rule_is_answered_from_the_pin() -> None:
    pins = PinnedHosts.parse({"DB.internal.": ["127.0.0.1", "::1", "127.0.0.1"]})
    decision = decide_name(POLICY, pins, "db.internal")
    assert decision.allowed
    assert decision.pinned == (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))
    assert decision.message.endswith("pinned in [network] hosts")


def test_a_pin_alone_does_not_allow_a_name() -> None:
    pins = PinnedHosts.parse({"api.test": "127.0.0.1"})
    decision = decide_name(POLICY, pins, "api.test")
    assert not decision.allowed
    assert decision.pinned is None
    assert decision.message.startswith("it is pinned in [network] hosts, but no [[connect]] rule names it")
    assert decision.hint == "--allow-connect api.test:PORT"


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"*.example.com": "127.0.0.1"}, "not a host name"),
        ({"api test": "127.0.0.1"}, "not a host name"),
        ({"api.test": "localhost"}, "write an IP address"),
        ({"api.test": "fe80::1%eth0"}, "write an IP address"),
        ({"api.test": "127.1"}, "write an IP address"),
        ({"api.test": []}, "needs 1 to"),
        ({"api.test": ["127.0.0.1"] * (MAX_PINNED_ADDRESSES + 1)}, "needs 1 to"),
        ({"api.test": "127.0.0.1", "API.test": "127.0.0.2"}, "pinned twice"),
    ],
)
def test_pinned_tables_are_validated_with_teaching_errors(table: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        PinnedHosts.parse(table)


# --- record types --------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [TYPE_A, TYPE_AAAA])
def test_a_and_aaaa_are_answered(qtype: int) -> None:
    decision = decide_question(POLICY, NO_PINS, "api.example.com", qtype)
    assert (decision.reply, decision.rcode) == (Reply.ADDRESSES, Rcode.NOERROR)


@pytest.mark.parametrize("qtype", [TXT, MX, PTR, SRV, CNAME, SVCB, HTTPS, 99, 1000, 65535])
def test_other_data_types_of_an_allowed_name_get_nodata(qtype: int) -> None:
    decision = decide_question(POLICY, NO_PINS, "api.example.com", qtype)
    assert (decision.reply, decision.rcode) == (Reply.NODATA, Rcode.NOERROR)
    assert f"type {qtype} has none (NODATA)" in decision.message


@pytest.mark.parametrize("qtype", [0, OPT, 128, 249, 250, IXFR, AXFR, 253, 254, ANY])
def test_meta_and_query_types_get_notimp(qtype: int) -> None:
    decision = decide_question(POLICY, NO_PINS, "api.example.com", qtype)
    assert (decision.reply, decision.rcode) == (Reply.NOTIMP, Rcode.NOTIMP)


@pytest.mark.parametrize("qtype", [TYPE_A, TYPE_AAAA, TXT, ANY, AXFR])
def test_a_denied_name_is_nxdomain_whatever_the_type(qtype: int) -> None:
    decision = decide_question(POLICY, NO_PINS, "secret.attacker.example", qtype)
    assert (decision.reply, decision.rcode) == (Reply.NXDOMAIN, Rcode.NXDOMAIN)
    assert decision.name.hint == "--allow-connect secret.attacker.example:PORT"


# --- in step with the connect decision -----------------------------------------------------------


def test_learnable_names_are_exactly_those_connect_may_resolve() -> None:
    """A name is learnable iff some rule lets ``client.connect`` resolve it on one of its ports."""
    rng = random.Random(17)  # noqa: S311 - a fixed seed: the same inputs every run
    labels = ["a", "b", "example", "com", "x-1", "internal", "co"]
    for _ in range(300):
        rules = []
        for _ in range(rng.randint(0, 4)):
            host = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 3)))
            host = "com" if host.split(".")[-1].isdigit() else host
            if rng.random() < 0.5:
                host = "*." + host
            ports: list[int | str] = [80, 443, "1000-2000"]
            rules.append(rule(host, rng.choice(ports), protocol=rng.choice(["tcp", "udp"])))
        if rng.random() < 0.3:
            rules.append(rule("192.0.2.0/24", 443))
        p = policy(*rules)
        for _ in range(10):
            name = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 5)))
            expected = any(
                may_resolve(p, name, lo, r.protocol) for r in p.connect for lo, _hi in r.port_ranges()
            )
            assert decide_name(p, NO_PINS, name).allowed == expected, (name, rules)
