"""A transparent connect by address: admitted by an IP rule, or by a live answer for an allowed name."""

from __future__ import annotations

import ipaddress
from typing import Any

from privsep.egress.admit import decide_answered_connect, decide_named_connect
from privsep.egress.answered import AnswerBook
from privsep.egress.names import PinnedHosts, decide_name
from privsep.policy.model import Policy

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
CDN, OTHER = V4("203.0.113.10"), V4("203.0.113.99")
METADATA = V4("169.254.169.254")


def policy(*rules: dict[str, Any]) -> Policy:
    return Policy.model_validate({"name": "t", "connect": rules})


POLICY = policy(
    {"host": "10.0.0.0/8", "ports": (443,)},
    {"host": "api.example.com", "ports": (443,)},
    {"host": "*.cdn.example", "ports": ("8000-8100",)},
    {"host": "169.254.0.0/16", "deny": True},
)


def book_with(*answers: tuple[str, V4 | V6], now: float = 0.0) -> AnswerBook:
    book = AnswerBook(grace=0)
    for name, address in answers:
        book.record(name, [address], ttl=60, now=now)
    return book


def test_an_ip_rule_admits_its_addresses_without_any_answer() -> None:
    decision = decide_answered_connect(POLICY, AnswerBook(), V4("10.1.2.3"), 443, "tcp", now=0)
    assert (decision.allowed, decision.rule) == (True, 0)


def test_an_address_answered_for_an_allowed_name_is_admitted_on_the_rules_ports() -> None:
    book = book_with(("api.example.com", CDN))
    decision = decide_answered_connect(POLICY, book, CDN, 443, "tcp", now=30)
    assert (decision.allowed, decision.rule) == (True, 1)
    assert decision.message == (
        "allowed by connect[1] (api.example.com, tcp 443), for a name privsep's resolver answered"
    )


def test_the_port_and_protocol_still_come_from_the_rule() -> None:
    book = book_with(("api.example.com", CDN))
    for port, proto in ((80, "tcp"), (443, "udp")):
        decision = decide_answered_connect(POLICY, book, CDN, port, proto, now=30)
        assert not decision.allowed
        assert decision.rule == 1
        assert decision.allow_flag == "--allow-connect"
        assert "names this host, but not this port and protocol" in decision.message


def test_a_forged_address_for_an_allowed_name_is_denied_with_the_hint() -> None:
    book = book_with(("api.example.com", CDN))
    decision = decide_answered_connect(POLICY, book, OTHER, 443, "tcp", now=30)
    assert (decision.allowed, decision.rule, decision.allow_flag) == (False, None, "--allow-connect")
    assert "has not answered it for an allowed name in this sandbox" in decision.message
    assert str(OTHER) not in decision.message


def test_an_expired_answer_admits_nothing() -> None:
    book = book_with(("api.example.com", CDN))
    assert decide_answered_connect(POLICY, book, CDN, 443, "tcp", now=60).allowed
    assert not decide_answered_connect(POLICY, book, CDN, 443, "tcp", now=60.5).allowed


def test_answers_in_another_sandbox_admit_nothing_here() -> None:
    theirs, ours = book_with(("api.example.com", CDN)), AnswerBook()
    assert decide_answered_connect(POLICY, theirs, CDN, 443, "tcp", now=1).allowed
    assert not decide_answered_connect(POLICY, ours, CDN, 443, "tcp", now=1).allowed


def test_a_deny_rule_wins_whatever_name_led_to_the_address() -> None:
    book = book_with(("api.example.com", METADATA))
    decision = decide_answered_connect(POLICY, book, METADATA, 443, "tcp", now=1)
    assert (decision.allowed, decision.rule) == (False, 3)
    assert "a deny rule wins" in decision.message


def test_a_denied_address_no_one_answered_is_denied_by_the_rule_not_with_a_hint() -> None:
    decision = decide_answered_connect(POLICY, AnswerBook(), METADATA, 443, "tcp", now=1)
    assert (decision.allowed, decision.rule, decision.allow_flag) == (False, 3, None)


def test_a_name_answered_with_loopback_does_not_reach_loopback() -> None:
    """DNS rebinding: an allowed name resolving to loopback or link-local is denied, as for client.connect."""
    for address in (V4("127.0.0.1"), V6("::1"), V6("fe80::1")):
        book = book_with(("x.cdn.example", address))
        decision = decide_answered_connect(POLICY, book, address, 8080, "tcp", now=1)
        assert not decision.allowed
        assert "which a name may not lead to (DNS rebinding)" in decision.message


def test_a_pinned_loopback_name_needs_an_ip_rule_for_loopback_too() -> None:
    """A pin says what api.test is; the connect rules still decide whether 127.0.0.1 may be reached."""
    pinned = policy({"host": "api.test", "ports": (8080,)})
    pins = PinnedHosts.parse({"api.test": "127.0.0.1"})
    name = decide_name(pinned, pins, "api.test")
    assert name.allowed and name.pinned == (V4("127.0.0.1"),)
    book = AnswerBook()
    book.record("api.test", name.pinned, ttl=60, now=0)
    assert not decide_answered_connect(pinned, book, V4("127.0.0.1"), 8080, "tcp", now=1).allowed
    with_ip = policy({"host": "api.test", "ports": (8080,)}, {"host": "127.0.0.1", "ports": (8080,)})
    assert decide_answered_connect(with_ip, book, V4("127.0.0.1"), 8080, "tcp", now=1).allowed


def test_an_ipv4_mapped_address_is_the_answered_ipv4_address() -> None:
    book = book_with(("api.example.com", CDN))
    decision = decide_answered_connect(POLICY, book, V6("::ffff:203.0.113.10"), 443, "tcp", now=1)
    assert (decision.allowed, decision.rule) == (True, 1)


def test_any_name_the_address_was_answered_for_may_admit_it() -> None:
    """A shared address (a CDN): answered for two names, admitted on the ports of either."""
    book = book_with(("api.example.com", CDN), ("img.cdn.example", CDN))
    assert decide_answered_connect(POLICY, book, CDN, 443, "tcp", now=1).rule == 1
    assert decide_answered_connect(POLICY, book, CDN, 8080, "tcp", now=1).rule == 2
    refused = decide_answered_connect(POLICY, book, CDN, 22, "tcp", now=1)
    assert (refused.allowed, refused.rule) == (False, 1)  # the first name's reason


# --- the proxy's case: the broker resolved the name itself ---------------------------------------


def test_a_resolved_name_is_decided_by_its_rule() -> None:
    decision = decide_named_connect(POLICY, "api.example.com", CDN, 443, "tcp")
    assert (decision.allowed, decision.rule) == (True, 1)
    assert decision.message == "allowed by connect[1] (api.example.com, tcp 443)"
    assert not decide_named_connect(POLICY, "api.example.com", CDN, 80, "tcp").allowed


def test_a_pinned_loopback_name_is_reached_when_an_ip_rule_allows_loopback() -> None:
    """The issue's test setup: api.test pinned to 127.0.0.1, a local server on 8080."""
    alone = policy({"host": "api.test", "ports": (8080,)})
    with_ip = policy({"host": "api.test", "ports": (8080,)}, {"host": "127.0.0.1", "ports": (8080,)})
    loopback = V4("127.0.0.1")
    assert "DNS rebinding" in decide_named_connect(alone, "api.test", loopback, 8080, "tcp").message
    assert decide_named_connect(with_ip, "api.test", loopback, 8080, "tcp").rule == 1


def test_the_metadata_address_behind_an_allowed_name_is_denied() -> None:
    decision = decide_named_connect(POLICY, "api.example.com", METADATA, 443, "tcp")
    assert (decision.allowed, decision.rule) == (False, 3)
    no_deny = policy({"host": "api.example.com", "ports": (443,)})
    assert "link-local" in decide_named_connect(no_deny, "api.example.com", METADATA, 443, "tcp").message


def test_an_address_the_policy_pins_a_name_to_needs_no_ip_rule() -> None:
    """A pin is the policy author's choice, not a DNS server's: no rebinding check, but rules still hold."""
    pinned = policy({"host": "api.test", "ports": (8080,)}, {"host": "127.0.0.2", "deny": True})
    pins = PinnedHosts.parse({"api.test": ["127.0.0.1", "127.0.0.2"], "meta.test": "169.254.169.254"})
    book = AnswerBook()
    book.record("api.test", pins.table["api.test"], ttl=60, now=0)
    loopback = V4("127.0.0.1")
    allowed = decide_answered_connect(pinned, book, loopback, 8080, "tcp", now=1, pins=pins)
    assert (allowed.allowed, allowed.rule) == (True, 0)
    assert decide_answered_connect(
        pinned, book, V6("::ffff:127.0.0.1"), 8080, "tcp", now=1, pins=pins
    ).allowed
    assert decide_named_connect(pinned, "api.test", loopback, 8080, "tcp", pins=pins).allowed
    # The port is still the rule's; a deny rule still wins; the answer is still needed.
    assert not decide_answered_connect(pinned, book, loopback, 8081, "tcp", now=1, pins=pins).allowed
    assert not decide_answered_connect(pinned, book, V4("127.0.0.2"), 8080, "tcp", now=1, pins=pins).allowed
    assert not decide_answered_connect(pinned, AnswerBook(), loopback, 8080, "tcp", now=1, pins=pins).allowed
    # Another name that led to the same address through the host's DNS gets no such pass.
    other = policy({"host": "api.test", "ports": (8080,)}, {"host": "*.example.com", "ports": (8080,)})
    host_book = book_with(("rebind.example.com", loopback))
    refused = decide_answered_connect(other, host_book, loopback, 8080, "tcp", now=1, pins=pins)
    assert not refused.allowed and "DNS rebinding" in refused.message
    # Nor does an address the pin does not name.
    assert (
        "DNS rebinding"
        in decide_named_connect(pinned, "api.test", V4("127.0.0.3"), 8080, "tcp", pins=pins).message
    )
