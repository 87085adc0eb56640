"""Policy decisions, checked against obviously-correct reference models."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from privsep.policy.decide import (
    Access,
    FileDecision,
    FileRules,
    check_path,
    decide_bind,
    decide_connect,
    decide_file,
    deciding_rule,
    may_resolve,
)
from privsep.policy.model import IPAddress, Policy


def _tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def policy(**rules: Any) -> Policy:
    return Policy.model_validate({"name": "test", **_tuples(rules)})


def grant(path: str, *access: str, recursive: bool = True, symlinks: bool = False) -> dict[str, Any]:
    return {"path": path, "access": list(access), "recursive": recursive, "symlinks": symlinks}


def deny(path: str, *, recursive: bool = True) -> dict[str, Any]:
    return {"path": path, "deny": True, "recursive": recursive}


R, W, C, A, T, L, X = (
    Access.READ, Access.WRITE, Access.CREATE, Access.APPEND, Access.TRUNCATE, Access.LIST, Access.CONNECT,
)  # fmt: skip
READ = frozenset({R})
WRITE = frozenset({W})


# --- the reference model for files ---------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    parts: tuple[str, ...]
    access: frozenset[Access]
    recursive: bool
    deny: bool
    symlinks: bool

    @property
    def path(self) -> str:
        return "/" + "/".join(self.parts)

    def as_dict(self) -> dict[str, Any]:
        if self.deny:
            return deny(self.path, recursive=self.recursive)
        return grant(self.path, *sorted(self.access), recursive=self.recursive, symlinks=self.symlinks)


def reference(rules: list[Rule], path: str, need: frozenset[Access]) -> FileDecision:
    """Component lists, no string prefixes: obviously separator-aware."""
    if not path.startswith("/") or "\x00" in path:
        return FileDecision(False, None, None, "", False, "", None)
    parts = tuple(path[1:].split("/")) if path != "/" else ()
    if any(p in ("", ".", "..") for p in parts):
        return FileDecision(False, None, None, "", False, "", None)

    def covering(rule: Rule) -> bool:
        n = len(rule.parts)
        return parts == rule.parts or (rule.recursive and parts[:n] == rule.parts)

    for i, rule in enumerate(rules):
        if rule.deny and covering(rule):
            return FileDecision(False, i, None, "", False, "", None)
    flag = None if X in need else ("--allow-write" if need & {W, C, A, T} else "--allow-read")

    def granted(rule: Rule) -> frozenset[Access]:
        return rule.access | {A} if W in rule.access else rule.access

    grants = [(i, r) for i, r in enumerate(rules) if not r.deny and covering(r)]
    if grants:
        # The most specific covering grant decides alone (most components; ties: the first),
        # as the innermost mount does: grants never add up.
        i, rule = min(grants, key=lambda ir: (-len(ir[1].parts), ir[0]))
        if need <= granted(rule):
            relative = "/".join(parts[len(rule.parts) :])
            return FileDecision(True, i, rule.path, relative, rule.symlinks, "", None)
        return FileDecision(False, i, None, "", False, "", flag)
    return FileDecision(False, None, None, "", False, "", flag)


COMPONENTS = ["srv", "data", "database", "x", "d"]
rule_parts = st.lists(st.sampled_from(COMPONENTS), max_size=3).map(tuple)
access_sets = st.frozensets(st.sampled_from(list(Access)))
rules_st = st.lists(
    st.builds(
        lambda parts, access, recursive, is_deny, symlinks: Rule(
            parts,
            frozenset() if is_deny else (access or frozenset({R})),
            recursive,
            is_deny,
            symlinks and not is_deny,
        ),
        rule_parts,
        access_sets,
        st.booleans(),
        st.integers(0, 3).map(lambda n: n == 0),  # a deny rule one time in four
        st.booleans(),
    ),
    max_size=6,
).map(lambda rules: [_links_only_around_nothing(r, rules) for r in rules])


def _links_only_around_nothing(rule: Rule, rules: list[Rule]) -> Rule:
    """A rule that follows symlinks may hold no other rule beneath it (the policy refuses that)."""
    n = len(rule.parts)
    holds = any(len(o.parts) > n and o.parts[:n] == rule.parts for o in rules)
    return dataclasses.replace(rule, symlinks=False) if holds else rule


# Requested paths: prefix confusion, empty/'.'/'..' components, trailing slashes, relative paths.
request_parts = st.lists(st.sampled_from([*COMPONENTS, "", ".", "..", "data2"]), max_size=5)
paths = st.builds(
    lambda lead, parts: lead + "/".join(parts), st.sampled_from(["/", "/", "/", "", "//"]), request_parts
)


@settings(max_examples=1000)
@given(rules_st, paths, access_sets)
@example([Rule(("srv", "data"), READ, True, False, False)], "/srv/database", READ)
@example([Rule(("srv", "data"), READ, True, False, False)], "/srv/data/", READ)
@example([Rule((), READ, True, False, False)], "/", READ)
def test_decide_file_equals_the_reference(rules: list[Rule], path: str, need: frozenset[Access]) -> None:
    pol = policy(files=[r.as_dict() for r in rules])
    got = decide_file(pol, path, need)
    want = reference(rules, path, need)
    assert (got.allowed, got.rule, got.root, got.relative, got.symlinks, got.allow_flag) == (
        want.allowed, want.rule, want.root, want.relative, want.symlinks, want.allow_flag,
    )  # fmt: skip
    assert got.message
    if got.allowed:
        assert got.root is not None
        joined = got.root.rstrip("/") + "/" + got.relative if got.relative else got.root
        assert joined == path


@settings(max_examples=500)
@given(rules_st, paths)
@example([Rule((), READ, True, False, False)], "/x")
@example([Rule(("srv",), READ, False, False, False)], "/srv/x")
def test_compiled_rules_pick_the_rule_deciding_rule_picks(rules: list[Rule], path: str) -> None:
    # FileRules (the broker's, over tuples) and deciding_rule (the view's, over the models) agree.
    pol = policy(files=[r.as_dict() for r in rules])
    assert FileRules(pol).deciding_rule(path) == deciding_rule(pol, path)


MARKER = st.text(alphabet="QZ0123456789", min_size=4, max_size=10).map(lambda s: "QZ" + s)


@settings(max_examples=500)
@given(
    rules_st,
    st.tuples(
        st.sampled_from(["/", "", "//"]),
        st.lists(st.sampled_from(COMPONENTS), max_size=3),
        MARKER,
        st.lists(st.sampled_from([*COMPONENTS, "", ".."]), max_size=2),
    ),
    access_sets,
)
def test_messages_never_contain_the_requested_path(
    rules: list[Rule], parts: tuple[str, list[str], str, list[str]], need: frozenset[Access]
) -> None:
    lead, before, marker, after = parts
    path = lead + "/".join([*before, marker, *after])
    pol = policy(files=[r.as_dict() for r in rules])
    assert marker not in decide_file(pol, path, need).message
    nul = decide_file(pol, path + "\x00", need)
    assert marker not in nul.message and not nul.allowed


# --- files, by example ---------------------------------------------------------------------------


def test_a_grant_never_covers_a_sibling_sharing_its_prefix() -> None:
    pol = policy(files=[grant("/srv/data", "read")])
    assert decide_file(pol, "/srv/data", READ).allowed
    assert decide_file(pol, "/srv/data/x/y", READ).allowed
    for other in ("/srv/database", "/srv/data2/x", "/srv", "/srv/dat"):
        decision = decide_file(pol, other, READ)
        assert not decision.allowed and decision.rule is None
        assert decision.message == "no [[files]] rule covers this path"
        assert decision.allow_flag == "--allow-read"


def test_the_decision_carries_the_root_and_the_relative_path() -> None:
    pol = policy(files=[grant("/srv/data", "read", symlinks=True), grant("/", "list")])
    d = decide_file(pol, "/srv/data/a/b", READ)
    assert (d.allowed, d.rule, d.root, d.relative, d.symlinks) == (True, 0, "/srv/data", "a/b", True)
    assert d.message == "allowed by files[0] (/srv/data, recursive), which grants read"
    d = decide_file(pol, "/srv/data", READ)
    assert (d.root, d.relative) == ("/srv/data", "")
    d = decide_file(pol, "/etc/passwd", frozenset({L}))
    assert (d.allowed, d.root, d.relative, d.symlinks) == (True, "/", "etc/passwd", False)
    assert decide_file(pol, "/", frozenset({L})).relative == ""


def test_a_non_recursive_rule_covers_its_path_only() -> None:
    pol = policy(files=[grant("/srv/data", "list", recursive=False)])
    assert decide_file(pol, "/srv/data", frozenset({L})).allowed
    assert not decide_file(pol, "/srv/data/x", frozenset({L})).allowed
    pol = policy(files=[grant("/srv", "read"), deny("/srv/data", recursive=False)])
    assert not decide_file(pol, "/srv/data", READ).allowed
    assert decide_file(pol, "/srv/data/x", READ).allowed


@pytest.mark.parametrize(
    "path",
    ["", "srv/data", "./srv", "/srv/data/", "/srv//data", "//srv", "/srv/./data", "/srv/../etc", "/..",
     "/.", "/srv/\x00", "/" + "a" * 4096],
)  # fmt: skip
def test_unnormalised_paths_are_refused_without_echoing_them(path: str) -> None:
    reason = check_path(path)
    assert reason is not None
    decision = decide_file(policy(files=[grant("/", "read")]), path, READ)
    assert not decision.allowed and decision.message == reason and decision.allow_flag is None
    assert decision.rule is None and decision.root is None
    if path.strip("/"):
        assert path not in reason


def test_check_path_accepts_normalised_absolute_paths() -> None:
    for path in ("/", "/srv", "/srv/data", "/srv/.hidden", "/srv/..x", "/a b/é"):
        assert check_path(path) is None
    assert "not absolute" in (check_path("srv") or "")
    assert "NUL" in (check_path("/a\x00") or "")
    assert "not normalised" in (check_path("/a/") or "")


@given(st.text(alphabet="/.a", max_size=12))
def test_check_path_refuses_exactly_the_paths_with_an_empty_dot_or_dotdot_component(tail: str) -> None:
    # check_path looks for "//", "/./", "/../" and such endings; the rule is per component.
    path = "/" + tail
    bad = path != "/" and any(part in ("", ".", "..") for part in path[1:].split("/"))
    assert (check_path(path) is not None) == bad


def test_deny_wins_over_a_more_specific_grant() -> None:
    pol = policy(files=[deny("/srv"), grant("/srv/data/x", "read", "write")])
    decision = decide_file(pol, "/srv/data/x", READ)
    assert not decision.allowed and decision.rule == 0 and decision.allow_flag is None
    assert decision.message.startswith("denied by files[0] (/srv, deny, recursive)")


def test_the_most_specific_sufficient_grant_decides() -> None:
    pol = policy(
        files=[grant("/srv", "read"), grant("/srv/data", "read", "write"), grant("/srv/data", "read")]
    )
    assert decide_file(pol, "/srv/data/f", READ).rule == 1  # most specific; ties: first
    assert decide_file(pol, "/srv/data/f", WRITE).rule == 1
    assert decide_file(pol, "/srv/f", READ).rule == 0
    # Access comes from one grant: a broader grant does not lend what a narrower one lacks,
    # so a read-only grant inside a write grant stays read-only (as its read-only mount does).
    pol = policy(files=[grant("/srv", "write"), grant("/srv/data", "read")])
    assert not decide_file(pol, "/srv/data/f", frozenset({R, W})).allowed
    assert not decide_file(pol, "/srv/data/f", WRITE).allowed
    assert decide_file(pol, "/srv/other", WRITE).rule == 0


def test_an_insufficient_grant_is_named_with_what_it_grants_and_what_was_needed() -> None:
    pol = policy(files=[grant("/", "list"), grant("/srv", "read"), grant("/srv/data", "list", "read")])
    decision = decide_file(pol, "/srv/data/report.csv", frozenset({R, W}))
    assert not decision.allowed and decision.rule == 2
    assert decision.message == "files[2] (/srv/data, recursive) grants read, list; write was needed"
    assert decision.allow_flag == "--allow-write"
    decision = decide_file(pol, "/srv/x", frozenset({L}))
    assert not decision.allowed and decision.rule == 1, "the most specific grant decides alone"
    decision = decide_file(pol, "/srv/x", frozenset({R, L}))
    assert decision.message == "files[1] (/srv, recursive) grants read; list was needed"
    assert decision.allow_flag == "--allow-read"


def test_write_implies_append_only() -> None:
    pol = policy(files=[grant("/log", "write")])
    assert decide_file(pol, "/log/a", frozenset({A})).allowed
    assert not decide_file(pol, "/log/a", frozenset({T})).allowed
    assert not decide_file(policy(files=[grant("/log", "append")]), "/log/a", WRITE).allowed


def test_connect_access_has_no_flag() -> None:
    pol = policy(files=[grant("/run", "read")])
    decision = decide_file(pol, "/run/app.sock", frozenset({X}))
    assert decision.allow_flag is None and "policy" in decision.message
    assert decide_file(policy(), "/run/app.sock", frozenset({X})).allow_flag is None
    allowed = decide_file(policy(files=[grant("/run/app.sock", "connect")]), "/run/app.sock", frozenset({X}))
    assert allowed.allowed


@pytest.mark.parametrize(
    ("need", "flag"),
    [({R}, "--allow-read"), ({L}, "--allow-read"), ({R, L}, "--allow-read"), ({W}, "--allow-write"),
     ({C}, "--allow-write"), ({A}, "--allow-write"), ({T}, "--allow-write"), ({R, C}, "--allow-write"),
     ({X}, None), ({R, X}, None)],
)  # fmt: skip
def test_the_suggested_flag_follows_what_was_needed(need: set[Access], flag: str | None) -> None:
    assert decide_file(policy(), "/srv/x", frozenset(need)).allow_flag == flag


# --- network -------------------------------------------------------------------------------------


ANY4 = "0.0.0.0"  # noqa: S104 - an address in a rule, nothing binds here


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def conn(host: str, *ports: int | str, protocol: str = "tcp") -> dict[str, Any]:
    return {"host": host, "ports": list(ports), "protocol": protocol}


def test_ip_and_cidr_rules_v4_and_v6() -> None:
    pol = policy(connect=[conn("10.0.0.0/8", 443), conn("fd00::/16", "8000-8100"), conn("127.0.0.1", 80)])
    assert decide_connect(pol, "10.1.2.3", 443, "tcp").rule == 0
    assert decide_connect(pol, "10.1.2.3", 443, "tcp", ip("10.1.2.3")).allowed
    assert not decide_connect(pol, "11.0.0.1", 443, "tcp").allowed
    assert not decide_connect(pol, "10.1.2.3", 444, "tcp").allowed
    assert not decide_connect(pol, "10.1.2.3", 443, "udp").allowed
    assert decide_connect(pol, "fd00:1::5", 8000, "tcp").rule == 1
    assert decide_connect(pol, "FD00:1::5", 8100, "tcp").allowed
    assert not decide_connect(pol, "fd00:1::5", 7999, "tcp").allowed
    assert not decide_connect(pol, "fd00:1::5", 8101, "tcp").allowed
    assert not decide_connect(pol, "fd01::5", 8000, "tcp").allowed
    assert decide_connect(pol, "127.0.0.1", 80, "tcp").allowed  # an explicit IP rule: loopback is fine
    denied = decide_connect(pol, "10.1.2.3", 1, "tcp")
    assert denied.allow_flag == "--allow-connect" and denied.rule is None
    assert "10.1.2.3" not in denied.message


def test_an_ip_literal_must_match_the_address() -> None:
    pol = policy(connect=[conn("10.0.0.0/8", 443)])
    decision = decide_connect(pol, "10.0.0.1", 443, "tcp", ip("10.0.0.2"))
    assert not decision.allowed and decision.allow_flag is None


def test_ipv4_mapped_addresses_are_judged_as_ipv4() -> None:
    pol = policy(connect=[conn("10.0.0.0/8", 443), {"host": "10.9.0.0/16", "deny": True}])
    assert decide_connect(pol, "::ffff:10.0.0.1", 443, "tcp").allowed
    assert decide_connect(pol, "::ffff:10.9.0.1", 443, "tcp").rule == 1
    assert not decide_connect(pol, "::ffff:10.9.0.1", 443, "tcp").allowed
    names = policy(connect=[conn("*.example.com", 443)])
    assert not decide_connect(names, "a.example.com", 443, "tcp", ip("::ffff:127.0.0.1")).allowed


def test_deny_cidrs_win_over_ip_and_name_grants() -> None:
    pol = policy(
        connect=[
            conn("0.0.0.0/0", "1-65535"),
            conn("*.example.com", 443),
            {"host": "169.254.169.254", "deny": True},
            {"host": "10.0.0.0/8", "ports": [22], "deny": True},
        ]
    )
    decision = decide_connect(pol, "169.254.169.254", 80, "tcp")
    assert not decision.allowed and decision.rule == 2 and decision.allow_flag is None
    assert decision.message.startswith("denied by connect[2] (169.254.169.254, deny, every port)")
    assert not decide_connect(pol, "10.0.0.1", 22, "tcp").allowed
    assert decide_connect(pol, "10.0.0.1", 23, "tcp").allowed
    assert not decide_connect(pol, "a.example.com", 443, "tcp", ip("169.254.169.254")).allowed
    assert decide_connect(pol, "a.example.com", 443, "tcp", ip("93.184.216.34")).allowed
    udp = policy(connect=[conn("10.0.0.0/8", 53, protocol="udp"), {"host": "10.0.0.53", "deny": True}])
    assert not decide_connect(udp, "10.0.0.53", 53, "udp").allowed, "a deny rule covers every protocol"


def test_wildcard_names() -> None:
    pol = policy(connect=[conn("*.example.com", 443)])
    addr = ip("93.184.216.34")
    for host in ("a.example.com", "a.b.example.com", "A.Example.COM.", "x-1.example.com"):
        assert may_resolve(pol, host, 443, "tcp"), host
        assert decide_connect(pol, host, 443, "tcp", addr).allowed, host
    for host in ("example.com", "badexample.com", "a.example.com.evil", "a.example.comm", "*.example.com",
                 "a..example.com", "a.example.com..", "a b.example.com"):  # fmt: skip
        assert not may_resolve(pol, host, 443, "tcp"), host
        assert not decide_connect(pol, host, 443, "tcp", addr).allowed, host


def test_names_are_ascii_only() -> None:
    pol = policy(connect=[conn("k.example.com", 443)])
    assert not may_resolve(pol, "\u212a.example.com", 443, "tcp"), "KELVIN SIGN lower-cases to 'k'"
    assert may_resolve(pol, "K.example.com", 443, "tcp")


def test_exact_names_ignore_case_and_one_trailing_dot() -> None:
    pol = policy(connect=[conn("db.internal", 5432)])
    for host in ("db.internal", "DB.Internal", "db.internal."):
        assert may_resolve(pol, host, 5432, "tcp")
        assert decide_connect(pol, host, 5432, "tcp", ip("10.0.0.5")).rule == 0
    for host in ("x.db.internal", "db.internal..", "db", "db.internal2"):
        assert not may_resolve(pol, host, 5432, "tcp"), host


def test_may_resolve_only_names_a_rule_allows() -> None:
    pol = policy(
        connect=[conn("db.internal", 5432), conn("10.0.0.0/8", 80), conn("dns.internal", 53, protocol="udp")]
    )
    assert may_resolve(pol, "db.internal", 5432, "tcp")
    assert not may_resolve(pol, "db.internal", 5433, "tcp")
    assert not may_resolve(pol, "db.internal", 5432, "udp")
    assert may_resolve(pol, "dns.internal", 53, "udp")
    assert not may_resolve(pol, "10.0.0.1", 80, "tcp"), "an IP literal is never resolved"
    assert not may_resolve(pol, "secret-data.attacker.example", 80, "tcp")
    assert not may_resolve(pol, "10.1", 80, "tcp"), "numeric forms the resolver would read as addresses"
    assert not may_resolve(pol, "0x0a.1", 80, "tcp")
    assert not may_resolve(pol, "db.internal\x00", 5432, "tcp")
    assert not may_resolve(policy(), "localhost", 80, "tcp")


def test_ip_rules_do_not_allow_names() -> None:
    pol = policy(connect=[conn("10.0.0.0/8", 80)])
    decision = decide_connect(pol, "db.internal", 80, "tcp", ip("10.0.0.1"))
    assert not decision.allowed and decision.allow_flag == "--allow-connect"
    assert "names this host" in decision.message and "db.internal" not in decision.message
    wrong_port = decide_connect(policy(connect=[conn("db.internal", 80)]), "db.internal", 81, "tcp")
    assert wrong_port.rule == 0 and not wrong_port.allowed
    assert (
        wrong_port.message
        == "connect[0] (db.internal, tcp 80) names this host, but not this port and protocol"
    )


@pytest.mark.parametrize(
    ("address", "kind"),
    [("127.0.0.1", "loopback"), ("127.8.8.8", "loopback"), ("::1", "loopback"),
     ("::ffff:127.0.0.1", "loopback"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
     (ANY4, "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast")],
)  # fmt: skip
def test_a_name_may_not_lead_to_local_addresses(address: str, kind: str) -> None:
    pol = policy(connect=[conn("*.example.com", 80), conn("localhost", 80)])
    decision = decide_connect(pol, "rebind.example.com", 80, "tcp", ip(address))
    assert not decision.allowed and decision.rule == 0 and decision.allow_flag is None
    assert f"resolved to a {kind} address" in decision.message
    assert address not in decision.message
    localhost = decide_connect(pol, "localhost", 80, "tcp", ip(address))
    assert localhost.allowed == (kind == "loopback")


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "169.254.169.254"])
def test_an_ip_rule_lets_a_name_lead_to_the_address_it_allows(address: str) -> None:
    # A name pinned to a local test server: the address is allowed by itself, so the name may lead there.
    pol = policy(connect=[conn("api.test", 80), conn("127.0.0.1", 80), conn("169.254.169.254", 80)])
    decision = decide_connect(pol, "api.test", 80, "tcp", ip(address))
    assert decision.allowed and decision.rule in (1, 2)
    # Only on the port and protocol the IP rule allows: elsewhere the name alone decides, and refuses.
    other_port = policy(
        connect=[conn("api.test", 80, 81), conn("127.0.0.1", 80), conn("169.254.169.254", 80)]
    )
    refused = decide_connect(other_port, "api.test", 81, "tcp", ip(address))
    assert not refused.allowed and "DNS rebinding" in refused.message
    # A deny rule still wins over both.
    denying = policy(
        connect=[conn("api.test", 80), conn("0.0.0.0/0", 80), {"host": "127.0.0.0/8", "deny": True}]
    )
    assert not decide_connect(denying, "api.test", 80, "tcp", ip("127.0.0.1")).allowed


def test_an_address_the_policy_pins_the_name_to_is_no_rebinding() -> None:
    pol = policy(connect=[conn("api.test", 80), {"host": "169.254.0.0/16", "deny": True}])
    assert decide_connect(pol, "api.test", 80, "tcp", ip("127.0.0.1"), pinned=True).allowed
    assert not decide_connect(pol, "api.test", 80, "tcp", ip("127.0.0.1")).allowed
    assert not decide_connect(pol, "api.test", 81, "tcp", ip("127.0.0.1"), pinned=True).allowed
    denied = decide_connect(pol, "api.test", 80, "tcp", ip("169.254.169.254"), pinned=True)
    assert not denied.allowed and denied.rule == 1  # a deny rule still wins


def test_private_addresses_through_names_are_fine() -> None:
    pol = policy(connect=[conn("*.internal", 80)])
    assert decide_connect(pol, "db.internal", 80, "tcp", ip("10.0.0.5")).allowed
    assert decide_connect(pol, "db.internal", 80, "tcp", ip("fd00::5")).allowed
    no_address = decide_connect(pol, "db.internal", 80, "tcp")
    assert not no_address.allowed and no_address.allow_flag is None


def test_an_unparseable_host_is_denied_without_a_flag() -> None:
    for host in ("", "a b", "fe80::1%eth0", "[::1]", "-x.com"):
        decision = decide_connect(policy(connect=[conn("0.0.0.0/0", 80)]), host, 80, "tcp")
        assert not decision.allowed and decision.allow_flag is None


@dataclass(frozen=True)
class NameRule:
    labels: tuple[str, ...]
    wildcard: bool

    @property
    def host(self) -> str:
        return ("*." if self.wildcard else "") + ".".join(self.labels)


LABELS = ["a", "b", "example", "com", "x-1"]


@settings(max_examples=500)
@given(
    st.lists(
        st.builds(
            NameRule, st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(tuple), st.booleans()
        ),
        max_size=4,
    ),
    st.lists(st.sampled_from([*LABELS, "", "A", "Com"]), min_size=1, max_size=4),
    st.booleans(),
)
def test_name_matching_equals_the_label_reference(
    rules: list[NameRule], labels: list[str], dot: bool
) -> None:
    host = ".".join(labels) + ("." if dot else "")
    pol = policy(connect=[conn(r.host, 443) for r in rules])
    text = host[:-1] if host.endswith(".") else host  # one trailing dot is ignored
    want_labels = tuple(text.lower().split("."))
    valid = all(want_labels)

    def matches(rule: NameRule) -> bool:
        if rule.wildcard:
            n = len(rule.labels)
            return len(want_labels) > n and want_labels[-n:] == rule.labels
        return want_labels == rule.labels

    expected = next((i for i, r in enumerate(rules) if matches(r)), None) if valid else None
    assert may_resolve(pol, host, 443, "tcp") == (expected is not None)
    decision = decide_connect(pol, host, 443, "tcp", ip("192.0.2.1"))
    assert (decision.allowed, decision.rule if decision.allowed else None) == (expected is not None, expected)


@settings(max_examples=500)
@given(
    st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 100)), min_size=1, max_size=4),
    st.integers(1, 65535),
    st.sampled_from(["tcp", "udp"]),
)
def test_port_ranges_equal_the_reference(ranges: list[tuple[int, int]], port: int, proto: str) -> None:
    specs: list[int | str] = [lo if span == 0 else f"{lo}-{min(lo + span, 65535)}" for lo, span in ranges]
    pol = policy(connect=[conn("192.0.2.0/24", *specs)])
    expected = proto == "tcp" and any(lo <= port <= min(lo + span, 65535) for lo, span in ranges)
    assert decide_connect(pol, "192.0.2.7", port, proto).allowed == expected


@settings(max_examples=300)
@given(MARKER, st.sampled_from(["", ".example.com", ".internal"]))
def test_net_messages_never_contain_the_host(marker: str, suffix: str) -> None:
    pol = policy(
        connect=[conn("*.example.com", 443), conn("10.0.0.0/8", 80)], bind=[{"host": "::1", "port": 1}]
    )
    host = marker.lower() + suffix
    for decision in (
        decide_connect(pol, host, 443, "tcp", ip("127.0.0.1")),
        decide_connect(pol, host, 80, "tcp", ip("10.0.0.1")),
        decide_connect(pol, marker, 443, "tcp"),
        decide_bind(pol, host, 1, "tcp"),
    ):
        assert marker.lower() not in decision.message.lower()


# --- bind ----------------------------------------------------------------------------------------


def test_bind_matches_exactly() -> None:
    pol = policy(
        bind=[
            {"host": ANY4, "port": 443},
            {"host": "127.0.0.1", "port": 0},
            {"host": "::1", "port": 53, "protocol": "udp"},
        ]
    )
    assert decide_bind(pol, ANY4, 443, "tcp").rule == 0
    assert decide_bind(pol, "127.0.0.1", 0, "tcp").rule == 1
    assert decide_bind(pol, "0:0::1", 53, "udp").rule == 2
    for host, port, proto in [
        ("127.0.0.1", 443, "tcp"),  # 0.0.0.0 is not "any address"
        (ANY4, 443, "udp"),
        (ANY4, 444, "tcp"),
        ("127.0.0.1", 8080, "tcp"),  # port 0 allows only 0
        ("::", 443, "tcp"),
        ("::ffff:127.0.0.1", 0, "tcp"),
        ("::1", 53, "tcp"),
    ]:
        decision = decide_bind(pol, host, port, proto)
        assert not decision.allowed and decision.allow_flag == "--allow-bind", (host, port, proto)
        assert decision.rule is None
    name = decide_bind(pol, "localhost", 443, "tcp")
    assert not name.allowed and name.allow_flag is None and "127.0.0.1" in name.message
