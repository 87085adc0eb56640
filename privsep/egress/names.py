"""May the sandbox learn the addresses of a name? Decided from the policy alone, before any lookup.

A name is learnable when a ``[[connect]]`` grant names it, and only then, so a
denied name is never sent to DNS and a query cannot carry data out of the
host (exfiltration through lookups of ``secret.attacker.example``):

- an exact rule ("api.example.com") names that name;
- a wildcard rule ("*.example.com") names every name that ends in
  ".example.com", at any depth ("a.b.example.com" too), but **never the apex**
  "example.com" itself: a wildcard says "what lies under", so allowing the apex
  takes its own rule (``--allow-connect example.com:443``). This is the
  meaning :mod:`privsep.policy.decide` gives connect rules, and a test keeps the
  two in step;
- case and one trailing dot do not matter; a name that is not an RFC 1123
  host name (octets outside letters, digits and '-', a numeric last label,
  the root) is never learnable;
- port and protocol do not matter here: a query carries neither. They are
  decided at connect time, per address, by the same rules.

Mind what a wildcard gives away: the sandbox may have the host look up any
name under it, so whoever serves that zone's DNS sees the names the sandbox
makes up. Exact names, or pinned names, close that channel.

Pinned hosts (the future ``[network] hosts = {"api.test" = "127.0.0.1"}``)
say where a name's addresses come from, not whether the sandbox may learn
them: a pinned name still needs a rule that names it (the connect rules stay
the one allowlist), and it is never looked up on the host, for any type.

Record types (:func:`decide_question`), once the name is learnable:

- A and AAAA are answered (CNAME records appear only inside such an answer);
- query-only and meta types (ANY, AXFR, IXFR, MAILA, MAILB, TSIG, TKEY, OPT, 0:
  RFC 6895's 128-255 and OPT) get NOTIMP;
- every other data type (TXT, MX, SRV, HTTPS, SVCB, PTR, CNAME asked alone, ...)
  gets NOERROR with no records (NODATA). Nothing is looked up for it, so TXT is
  never answered, and nothing leaves the host. NODATA rather than REFUSED
  because stub resolvers take REFUSED for a failure of the whole name (musl
  fails the lookup, clients asking for HTTPS records beside A give up): "no
  such record" is what the sandbox can see, and it keeps the A/AAAA answers
  usable.

A name that is not learnable gets NXDOMAIN, whatever the type: the sandbox
learns nothing about the name, and stub resolvers report "no such host".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from privsep.egress.dnswire import TYPE_A, TYPE_AAAA, TYPE_OPT, Rcode
from privsep.policy.model import (
    MAX_PINNED,
    MAX_PINNED_ADDRESSES,
    ConnectRule,
    IPAddress,
    Policy,
    host_name,
    ip_literal,
    pinned_hosts,
)

__all__ = [
    "MAX_PINNED",
    "MAX_PINNED_ADDRESSES",
    "NameDecision",
    "PinnedHosts",
    "QuestionDecision",
    "Reply",
    "decide_name",
    "decide_question",
    "name_matches",
]


@dataclass(frozen=True)
class PinnedHosts:
    """Names the policy maps to addresses itself; never looked up on the host."""

    table: Mapping[str, tuple[IPAddress, ...]] = field(default_factory=lambda: MappingProxyType({}))
    """Canonical host name -> its addresses, in the policy's order."""

    @classmethod
    def parse(cls, table: Mapping[str, str | Sequence[str]]) -> PinnedHosts:
        """A policy's table (name -> an address or a list of them), checked as the policy model
        checks it (:func:`privsep.policy.model.pinned_hosts`); ValueError teaches.

        Messages quote the policy's own text: it comes from the user, not the sandbox.
        """
        try:
            canonical: dict[str, tuple[str, ...]] = pinned_hosts(dict(table))
        except ValueError as exc:
            raise ValueError(f"hosts: {exc}") from None
        out = {name: tuple(_address(text) for text in texts) for name, texts in canonical.items()}
        return cls(MappingProxyType(out))

    def get(self, name: str) -> tuple[IPAddress, ...] | None:
        return self.table.get(name)


def name_matches(rule: ConnectRule, name: str) -> bool:
    """``rule`` names the canonical host ``name`` (a wildcard covers what lies under, not the apex)."""
    if rule.deny or rule.network() is not None:
        return False
    if rule.host.startswith("*."):
        return name.endswith(rule.host[1:])
    return name == rule.host


@dataclass(frozen=True)
class NameDecision:
    allowed: bool
    name: str | None
    """The canonical host name; None when the query's name is not one."""
    rules: tuple[int, ...]
    """Indexes into ``policy.connect`` of every grant naming it; the first is named in ``message``."""
    pinned: tuple[IPAddress, ...] | None
    """The policy's own addresses for the name; None: look it up on the host."""
    message: str
    """Why, in the policy's terms; never contains the name."""
    allow_flag: str | None
    """"--allow-connect" when that flag, with the name and a port, would allow it."""

    @property
    def hint(self) -> str | None:
        """``--allow-connect NAME:PORT``, for the audit record and the exit report (not for the sandbox)."""
        if self.allow_flag is None or self.name is None:
            return None
        return f"{self.allow_flag} {self.name}:PORT"


def decide_name(policy: Policy, pins: PinnedHosts, text: str) -> NameDecision:
    """May the sandbox learn the addresses of ``text`` (a query's name, any case, trailing dot or not)?"""
    name = host_name(text)
    if name is None:
        return NameDecision(
            False, None, (), None, "the name is not a host name (RFC 1123), so no rule can name it", None
        )
    rules = tuple(i for i, rule in enumerate(policy.connect) if name_matches(rule, name))
    pinned = pins.get(name)
    if not rules:
        where = "it is pinned in [network] hosts, but " if pinned is not None else ""
        message = f"{where}no [[connect]] rule names it, so it is not resolved"
        apex = next((i for i, rule in enumerate(policy.connect) if rule.host == f"*.{name}"), None)
        if apex is not None:
            message += (
                f" ({policy.connect[apex].describe(apex)} covers the names under it, never the name "
                "itself: allow that with a rule of its own)"
            )
        return NameDecision(False, name, (), None, message, "--allow-connect")
    first = policy.connect[rules[0]]
    more = f" (and {len(rules) - 1} more)" if len(rules) > 1 else ""
    source = "pinned in [network] hosts" if pinned is not None else "resolved on the host"
    message = f"named by {first.describe(rules[0])}{more}; {source}"
    return NameDecision(True, name, rules, pinned, message, None)


class Reply(enum.Enum):
    ADDRESSES = "addresses"
    """Answer with the name's addresses of the asked type (pinned, or resolved on the host)."""
    NODATA = "nodata"
    NXDOMAIN = "nxdomain"
    NOTIMP = "notimp"


@dataclass(frozen=True)
class QuestionDecision:
    reply: Reply
    rcode: Rcode
    name: NameDecision
    message: str
    """The name's decision, and what the type changed; never contains the name."""


def _meta_type(qtype: int) -> bool:
    return qtype in (0, TYPE_OPT) or 128 <= qtype <= 255


def decide_question(policy: Policy, pins: PinnedHosts, text: str, qtype: int) -> QuestionDecision:
    """The whole decision for one question: the name first (NXDOMAIN whatever the type), then the type."""
    name = decide_name(policy, pins, text)
    if not name.allowed:
        return QuestionDecision(Reply.NXDOMAIN, Rcode.NXDOMAIN, name, name.message)
    if qtype in (TYPE_A, TYPE_AAAA):
        return QuestionDecision(Reply.ADDRESSES, Rcode.NOERROR, name, name.message)
    if _meta_type(qtype):
        message = f"{name.message}; type {qtype} is a query or meta type, not served (NOTIMP)"
        return QuestionDecision(Reply.NOTIMP, Rcode.NOTIMP, name, message)
    message = f"{name.message}; only A and AAAA records are served, so type {qtype} has none (NODATA)"
    return QuestionDecision(Reply.NODATA, Rcode.NOERROR, name, message)


def _address(text: str) -> IPAddress:
    address = ip_literal(text)
    assert address is not None  # pinned_hosts checked it
    return address
