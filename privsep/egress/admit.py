"""May a connect to an address go ahead, when a name led to it? The rules decide, by address first.

Two paths reach an address through a name:

- the proxy: the client named a host, the broker resolved it
  (:func:`decide_named_connect`);
- the transparent connect of an unmodified program, which resolved a name
  through privsep's resolver and now connects to an address; the name is
  gone by then, so the sandbox's :class:`~privsep.egress.answered.AnswerBook`
  says which names the address was answered for (:func:`decide_answered_connect`).

Either way the address is admitted if

1. a rule names the address itself (an IP or CIDR grant): this is how a name
   resolved on the host may lead to loopback or link-local, which the name
   alone never may (DNS rebinding); or
2. a rule allows the name on this port and protocol reaching this address
   (:func:`privsep.policy.decide.decide_connect`: ports, deny rules and the
   rebinding check exactly as for ``client.connect``), and, on the
   transparent path, privsep's resolver answered the address for that name in
   this sandbox and the answer is still live. An address the policy pins the
   name to (``[network] hosts``, e.g. ``api.test = 127.0.0.1`` for a local test
   server) is the policy author's choice, not a DNS server's: the rebinding
   check does not apply to it (deny rules do).

A deny rule covering the address wins in every case. An address no rule
names and no live answer covers is denied with the hint: a forged address
for an allowed name (one the resolver never gave) gets nothing.

Pure: the book and the time are handed in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from privsep.egress.answered import AnswerBook
from privsep.egress.names import PinnedHosts
from privsep.policy.decide import NetDecision, decide_connect
from privsep.policy.model import IPAddress, Policy

__all__ = ["decide_answered_connect", "decide_named_connect"]


def _pinned(pins: PinnedHosts | None, name: str, address: IPAddress) -> bool:
    pinned = None if pins is None else pins.get(name)
    if pinned is None:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address in pinned or (mapped is not None and mapped in pinned)


def _decide(
    policy: Policy,
    names: Iterable[str],
    address: IPAddress,
    port: int,
    proto: str,
    *,
    pins: PinnedHosts | None,
) -> NetDecision | None:
    literal = decide_connect(policy, str(address), port, proto)
    if literal.allowed or literal.rule is not None:
        return literal  # an IP grant allows it, or a deny rule refuses it whatever name led here
    first_refusal: NetDecision | None = None
    for name in names:
        decision = decide_connect(policy, name, port, proto, address, pinned=_pinned(pins, name, address))
        if decision.allowed:
            return decision
        first_refusal = first_refusal or decision
    return first_refusal


def decide_named_connect(
    policy: Policy,
    name: str,
    address: IPAddress,
    port: int,
    proto: str,
    *,
    pins: PinnedHosts | None = None,
) -> NetDecision:
    """Decide a connect to ``address``, which the broker itself resolved ``name`` to (the proxy's case).

    Resolve only names :func:`privsep.policy.decide.may_resolve` allows on this
    port and protocol, then call this once per address: an IP rule then
    admits an address the name alone may not lead to, and nothing else does.
    """
    decision = _decide(policy, (name,), address, port, proto, pins=pins)
    assert decision is not None, "a name always gets a decision"
    return decision


def decide_answered_connect(
    policy: Policy,
    book: AnswerBook,
    address: IPAddress,
    port: int,
    proto: str,
    *,
    now: float,
    pins: PinnedHosts | None = None,
) -> NetDecision:
    """Decide a transparent connect to ``address``; the decision names the rule, never the address."""
    answered = [answer.name for answer in book.lookup(address, now)]
    decision = _decide(policy, answered, address, port, proto, pins=pins)
    if decision is not None:
        by_name = decision.rule is not None and policy.connect[decision.rule].network() is None
        if decision.allowed and by_name:
            return NetDecision(
                True, decision.rule, f"{decision.message}, for a name privsep's resolver answered", None
            )
        return decision
    return NetDecision(
        False,
        None,
        "no [[connect]] rule names this address, and privsep's resolver has not answered it for an "
        "allowed name in this sandbox (or the answer expired); a rule naming a host admits the "
        "addresses privsep resolved for that name, looked up through the sandbox's /etc/resolv.conf",
        "--allow-connect",
    )
