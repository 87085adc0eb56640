"""Decisions: may the child have this file, this connection, this bound socket?

Pure and total: a decision is a function of the policy and the request,
computed without touching the file system, the network or DNS; the broker
then does the operation itself, race-free, beneath the deciding rule's root.

Files. A deny rule that covers the path wins, whatever grants say. Otherwise
the most specific covering grant (the longest path; ties: the first in policy
order) decides alone, as the innermost mount does for kernel-served grants:
grants do not add up, so a read-only grant inside a write grant stays
read-only. ``write`` implies ``append``. A recursive rule covers its path and what lies beneath
it, component-wise: /srv/data covers /srv/data/x, never /srv/database.

Network. An IP/CIDR rule allows an address inside it on one of its ports and
its protocol. A name rule allows a request for that name ("*.example.com":
one or more labels under example.com, not example.com itself), and then each
resolved address is checked: refused inside a deny rule, or when loopback,
link-local, unspecified or multicast (DNS rebinding), except loopback for the
name "localhost", and except an address an IP rule allows by itself on that
port and protocol (the address is allowed whatever name led to it), and
except the addresses the policy itself pins a name to (``[network] hosts``:
no DNS server chose them, the policy's author did; deny rules still apply).
Only a name some rule allows is ever resolved (:func:`may_resolve`): a
denied name is never sent to DNS. IPv4-mapped IPv6
addresses (::ffff:a.b.c.d) are judged as the IPv4 address they reach.

Messages name rules by index and by their own text, and never contain the
child's input (its path, host or address): the child knows what it asked,
and the client composes the "re-run with --allow-read=..." hint from
``allow_flag``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from privsep.policy.model import (
    Access,
    ConnectRule,
    FileRule,
    IPAddress,
    Policy,
    host_name,
    ip_literal,
)
from privsep.protocol import MAX_PATH

__all__ = [
    "CREATES_IF_MISSING",
    "MAX_PATH",
    "OPEN_NEEDS",
    "Access",
    "FileDecision",
    "FileRules",
    "NetDecision",
    "check_path",
    "covers",
    "decide_bind",
    "decide_connect",
    "decide_file",
    "deciding_rule",
    "may_resolve",
    "rules_within",
]

_WRITE_LIKE = frozenset({Access.WRITE, Access.CREATE, Access.APPEND, Access.TRUNCATE})

#: What the deciding rule must grant for an open, by mode (docs/PROTOCOL.md, ``open``).
OPEN_NEEDS: Mapping[str, frozenset[Access]] = {
    "r": frozenset({Access.READ}),
    "r+": frozenset({Access.READ, Access.WRITE}),
    "w": frozenset({Access.WRITE, Access.TRUNCATE}),
    "w+": frozenset({Access.READ, Access.WRITE, Access.TRUNCATE}),
    "a": frozenset({Access.APPEND}),
    "a+": frozenset({Access.READ, Access.APPEND}),
    "x": frozenset({Access.CREATE, Access.WRITE}),
    "x+": frozenset({Access.CREATE, Access.READ, Access.WRITE}),
}
#: The modes that also create a missing file when the rule grants ``create`` as well.
CREATES_IF_MISSING = frozenset({"w", "w+", "a", "a+"})


# --- files ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)  # one made per brokered file request: no __dict__
class FileDecision:
    allowed: bool
    rule: int | None
    """Index into ``policy.files`` of the deciding rule: the grant, the deny, or the grant that fell short."""
    root: str | None
    """The allowing rule's path (the broker's pinned directory or its parent); None when denied."""
    relative: str
    """The path relative to ``root``, "" when it is ``root``; "" when denied."""
    symlinks: bool
    """The allowing rule follows symlinks beneath it."""
    message: str
    """Why, in the policy's terms; never contains the requested path."""
    allow_flag: str | None
    """"--allow-read" or "--allow-write" when that flag on PATH would allow it; None otherwise."""


def check_path(path: str) -> str | None:
    """Why the broker refuses to consider ``path`` at all, or None if it is absolute and normalised.

    The reason never contains the path.
    """
    if not path:
        return "the path is empty"
    if "\x00" in path:
        return "the path contains a NUL byte"
    if len(path) > MAX_PATH:
        return f"the path is longer than {MAX_PATH} characters"
    if not path.startswith("/"):
        return (
            "the path is not absolute; the broker resolves absolute paths only "
            "(make it absolute in the child, e.g. with os.path.abspath)"
        )
    if path != "/" and _unnormal(path[1:].split("/")):
        return (
            "the path is not normalised (an empty, '.' or '..' component, or a trailing '/'); "
            "the broker never interprets '..' itself: normalise it in the child"
        )
    return None


def _unnormal(parts: list[str]) -> bool:
    """An empty, '.' or '..' component (each a C-level scan: this runs on every brokered call)."""
    return "" in parts or "." in parts or ".." in parts


def covers(rule: FileRule, path: str) -> bool:
    """``rule`` applies to the normalised absolute ``path`` (separator-aware)."""
    if path == rule.path:
        return True
    if not rule.recursive:
        return False
    return rule.path == "/" or path.startswith(rule.path + "/")


def _granted(rule: FileRule) -> frozenset[Access]:
    return _granted_by(rule.access)


@cache
def _granted_by(access: tuple[Access, ...]) -> frozenset[Access]:
    """What an ``access`` list grants (``write`` implies ``append``): one set per distinct list."""
    granted = frozenset(access)
    return granted | {Access.APPEND} if Access.WRITE in granted else granted


#: Each set of accesses as a message names it; at most one entry per subset of Access.
_WORDS: dict[frozenset[Access], str] = {}


def _words(accesses: frozenset[Access]) -> str:
    words = _WORDS.get(accesses)
    if words is None:  # once per set: iterating the enum costs more than the rest of a decision
        words = _WORDS[accesses] = ", ".join(a.value for a in Access if a in accesses) or "nothing"
    return words


def deciding_rule(policy: Policy, path: str) -> int | None:
    """The index of the ``[[files]]`` rule that decides ``path``, or None when no rule covers it.

    A covering deny rule wins over every grant. Otherwise the most specific
    covering grant decides alone (the longest path; ties: the first in policy
    order), as the innermost mount would: a read-only grant inside a write
    grant is read-only, whether the kernel or the broker serves it.
    """
    closest: int | None = None
    for index, rule in enumerate(policy.files):
        if not covers(rule, path):
            continue
        if rule.deny:
            return index
        if closest is None or len(rule.path) > len(policy.files[closest].path):
            closest = index
    return closest


def rules_within(policy: Policy, path: str) -> list[int]:
    """Indexes of the ``[[files]]`` rules strictly beneath ``path``.

    Moving ``path`` would move what they decide along with it, out from under
    them: a rename of an ancestor of a deny rule would take the denied files
    to a path the outer grant decides.
    """
    prefix = path.rstrip("/") + "/"
    return [i for i, rule in enumerate(policy.files) if rule.path.startswith(prefix) and rule.path != path]


def _file_flag(need: frozenset[Access]) -> str | None:
    if Access.CONNECT in need:
        return None  # no flag grants connect: only a policy rule does
    return "--allow-write" if need & _WRITE_LIKE else "--allow-read"


def _denied(rule: int | None, message: str, flag: str | None) -> FileDecision:
    return FileDecision(False, rule, None, "", False, message, flag)


def decide_file(policy: Policy, path: str, need: frozenset[Access]) -> FileDecision:
    """Decide whether the child may have ``need`` on ``path`` (absolute, normalised)."""
    return FileRules(policy).decide(path, need)


class FileRules:
    """A policy's ``[[files]]`` rules, compiled for deciding: ``decide_file`` in as few steps as can be.

    The broker decides every brokered open, stat, listdir... with one, built when
    the policy loads. ``deciding_rule`` is the same rule as the module's function
    (tests/unit/test_decide.py checks them against each other), over plain tuples
    rather than the policy's models.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        #: (index, path, the prefix of what it covers beneath it or None, deny, granted, symlinks)
        self._rules = tuple(
            (index, rule.path, _beneath(rule), rule.deny, _granted(rule), rule.symlinks)
            for index, rule in enumerate(policy.files)
        )
        self._allowed: list[str | None] = [None] * len(self._rules)  # why each rule allows, once needed

    def deciding_rule(self, path: str) -> int | None:
        """``deciding_rule(self.policy, path)``."""
        closest, longest = None, -1
        for index, rule_path, beneath, deny, _, _ in self._rules:
            if path == rule_path or (beneath is not None and path.startswith(beneath)):
                if deny:
                    return index
                if len(rule_path) > longest:
                    closest, longest = index, len(rule_path)
        return closest

    def decide(self, path: str, need: frozenset[Access]) -> FileDecision:
        """``decide_file(self.policy, path, need)``."""
        reason = check_path(path)
        if reason is not None:
            return _denied(None, reason, None)
        closest = self.deciding_rule(path)
        if closest is not None:
            _, rule_path, _, deny, granted, symlinks = self._rules[closest]
            if not deny and need <= granted:
                relative = "" if path == rule_path else path[len(rule_path) :].lstrip("/")
                message = self._allowed[closest]
                if message is None:  # made once per rule (two threads may both make it: the same text)
                    rule = self.policy.files[closest]
                    message = (
                        f"allowed by {rule.describe(closest)}, which grants {_words(frozenset(rule.access))}"
                    )
                    self._allowed[closest] = message
                return FileDecision(True, closest, rule_path, relative, symlinks, message, None)
        return _refused(self.policy, closest, need)


def _beneath(rule: FileRule) -> str | None:
    """What a path beneath ``rule`` starts with (component-wise), or None: it covers its own path only."""
    if not rule.recursive:
        return None
    return "" if rule.path == "/" else rule.path + "/"  # the root covers everything, as covers() says


def _refused(policy: Policy, closest: int | None, need: frozenset[Access]) -> FileDecision:
    """The refusal of ``need`` on a sound path that rule ``closest`` (or no rule) decides."""
    if closest is not None and policy.files[closest].deny:
        rule = policy.files[closest]
        return _denied(
            closest,
            f"denied by {rule.describe(closest)}: a deny rule wins over every grant, "
            "command-line grants included; change the policy",
            None,
        )
    flag = _file_flag(need)
    policy_only = "" if flag else " (only a policy [[files]] rule grants connect)"
    if closest is not None:
        rule = policy.files[closest]
        missing = need - _granted(rule)
        message = (
            f"{rule.describe(closest)} grants {_words(frozenset(rule.access))}; "
            f"{_words(missing)} was needed{policy_only}"
        )
        return _denied(closest, message, flag)
    return _denied(None, f"no [[files]] rule covers this path{policy_only}", flag)


# --- network -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetDecision:
    allowed: bool
    rule: int | None
    """Index into ``policy.connect`` or ``policy.bind`` of the deciding rule, if any."""
    message: str
    """Why, in the policy's terms; never contains the requested host, port or address."""
    allow_flag: str | None
    """"--allow-connect" or "--allow-bind" when that flag with the request's HOST:PORT would allow it."""


def _canonical(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address reaches the IPv4 address: judge it as that."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _inside(rule: ConnectRule, address: IPAddress) -> bool:
    network = rule.network()
    if network is None:
        return False
    return address in network or _canonical(address) in network


def _is_name_rule(rule: ConnectRule) -> bool:
    return rule.network() is None


def _name_matches(rule: ConnectRule, name: str) -> bool:
    if rule.host.startswith("*."):
        return name.endswith(rule.host[1:])  # "*.example.com" -> ".example.com": one label or more
    return name == rule.host


def _serves(rule: ConnectRule, port: int, proto: str) -> bool:
    return not rule.deny and rule.protocol == proto and rule.allows_port(port)


def _request_name(host: str) -> str | None:
    return None if ip_literal(host) is not None else host_name(host)


def may_resolve(policy: Policy, host: str, port: int, proto: str) -> bool:
    """True only for a host name some name rule allows on this port and protocol.

    An IP literal never needs resolving (False); a name no rule allows is never
    sent to DNS, so a denied request cannot leak data through lookups.
    """
    name = _request_name(host)
    if name is None:
        return False
    return any(
        _is_name_rule(rule) and _name_matches(rule, name) and _serves(rule, port, proto)
        for rule in policy.connect
    )


def _deny_hit(policy: Policy, address: IPAddress, port: int) -> NetDecision | None:
    for index, rule in enumerate(policy.connect):
        if rule.deny and rule.allows_port(port) and _inside(rule, address):
            return NetDecision(
                False,
                index,
                f"denied by {rule.describe(index)}: a deny rule wins over every grant, "
                "command-line grants included; change the policy",
                None,
            )
    return None


def _decide_literal(policy: Policy, literal: IPAddress, port: int, proto: str) -> NetDecision:
    hit = _deny_hit(policy, literal, port)
    if hit is not None:
        return hit
    for index, rule in enumerate(policy.connect):
        if not _is_name_rule(rule) and _serves(rule, port, proto) and _inside(rule, literal):
            return NetDecision(True, index, f"allowed by {rule.describe(index)}", None)
    return NetDecision(
        False, None, "no [[connect]] rule allows this address, port and protocol", "--allow-connect"
    )


def _name_rule(policy: Policy, name: str, port: int, proto: str) -> int | NetDecision:
    """The first name rule allowing ``name`` on this port and protocol, or why there is none."""
    named = [i for i, rule in enumerate(policy.connect) if _is_name_rule(rule) and _name_matches(rule, name)]
    for index in named:
        if _serves(policy.connect[index], port, proto):
            return index
    if named:
        first = policy.connect[named[0]]
        message = f"{first.describe(named[0])} names this host, but not this port and protocol"
        return NetDecision(False, named[0], message, "--allow-connect")
    return NetDecision(
        False,
        None,
        "no [[connect]] rule names this host (IP rules apply to IP addresses only; the name is not resolved)",
        "--allow-connect",
    )


def _rebinding(address: IPAddress, name: str) -> str | None:
    """The kind of address a name may not lead to, or None."""
    reached = _canonical(address)
    for kind, bad in (
        ("loopback", reached.is_loopback and name != "localhost"),
        ("link-local", reached.is_link_local),
        ("unspecified", reached.is_unspecified),
        ("multicast", reached.is_multicast),
    ):
        if bad:
            return kind
    return None


def _decide_name(
    policy: Policy, name: str, port: int, proto: str, address: IPAddress | None, *, pinned: bool
) -> NetDecision:
    found = _name_rule(policy, name, port, proto)
    if isinstance(found, NetDecision):
        return found
    rule = policy.connect[found]
    if address is None:
        return NetDecision(False, found, "a host name is decided per resolved address; none was given", None)
    hit = _deny_hit(policy, address, port)
    if hit is not None:
        return hit
    kind = None if pinned else _rebinding(address, name)
    if kind is not None:
        literal = _decide_literal(policy, address, port, proto)
        if literal.allowed:
            return literal  # an IP rule allows the address itself: no name is needed to reach it
        return NetDecision(
            False,
            found,
            f"{rule.describe(found)} allows this name, but it resolved to a {kind} address, which a "
            "name may not lead to (DNS rebinding); connect to the address itself, allowed by an IP rule",
            None,
        )
    return NetDecision(True, found, f"allowed by {rule.describe(found)}", None)


def decide_connect(
    policy: Policy,
    host: str,
    port: int,
    proto: str,
    address: IPAddress | None = None,
    *,
    pinned: bool = False,
) -> NetDecision:
    """Decide a connect to ``host`` (as the child wrote it) reaching ``address``.

    For a host name, call once per resolved address (and resolve only when
    :func:`may_resolve` says so). For an IP literal ``address`` may be
    omitted: it is the literal. Called without an address for a name, the
    decision explains why the name may not be resolved (or, if it may, denies:
    each address must be checked). ``pinned``: ``address`` is one the policy
    pins the name to ([network] hosts), so no rebinding check applies to it.
    """
    literal = ip_literal(host)
    if literal is not None:
        if address is not None and address != literal:
            return NetDecision(False, None, "the address is not the requested IP address", None)
        return _decide_literal(policy, literal, port, proto)
    name = host_name(host)
    if name is None:
        return NetDecision(
            False, None, "the host is neither an IP address nor a valid host name (RFC 1123)", None
        )
    return _decide_name(policy, name, port, proto, address, pinned=pinned)


def decide_bind(policy: Policy, host: str, port: int, proto: str) -> NetDecision:
    """Decide a bind: the address, port and protocol must equal one ``[[bind]]`` rule's."""
    literal = ip_literal(host)
    if literal is None:
        return NetDecision(
            False, None, "a bind host must be an IP address (e.g. 127.0.0.1, not localhost)", None
        )
    for index, rule in enumerate(policy.bind):
        if rule.address() == literal and rule.port == port and rule.protocol == proto:
            return NetDecision(True, index, f"allowed by {rule.describe(index)}", None)
    return NetDecision(
        False,
        None,
        "no [[bind]] rule allows this address, port and protocol (bind rules match exactly: "
        "0.0.0.0 allows 0.0.0.0 only, port 0 allows port 0 only)",
        "--allow-bind",
    )
