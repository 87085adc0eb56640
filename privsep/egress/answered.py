"""What privsep's resolver told one sandbox: which addresses, for which names, until when.

The transparent connect path admits an address by name only if this
sandbox's resolver answered it for a name the rules allow (see
:mod:`privsep.egress.admit`); this book is that memory. Pure: the time is
passed in, so tests and the broker agree on the clock (the broker passes
``time.monotonic()``).

Bounded, and never at the price of a live answer:

- the book holds at most ``capacity`` (address, name) pairs;
- an answer lives for the TTL sent to the sandbox (capped at ``max_ttl``)
  plus ``grace`` (programs connect a little after they resolve, and some
  cache a little longer than told); answering the same pair again extends it;
- when the book is full, expired pairs go first; if every pair is still live,
  the new pair is **refused**, not recorded, and :meth:`AnswerBook.record`
  says so. The resolver answers only the addresses that were recorded (and
  answers SERVFAIL when none was), so a sandbox that floods its resolver
  fills only its own book, and can never push out an answer a program of its
  own still relies on: that connect would then fail with no one told why.
  The refusal is visible instead, in the answer, the audit and the report.

IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are kept and looked up as the
IPv4 address they reach, as :mod:`privsep.policy.decide` judges them.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from privsep.policy.model import IPAddress

__all__ = ["AnswerBook", "Answered", "Recorded"]


def _key(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class Answered:
    """One name an address was answered for."""

    name: str
    expires: float
    """Book time after which the answer no longer admits a connect."""


@dataclass(frozen=True)
class Recorded:
    ttl: int
    """The TTL to send with the answer (the asked one, capped)."""
    addresses: tuple[IPAddress, ...]
    """Recorded, so they may be answered; in the order given."""
    refused: tuple[IPAddress, ...]
    """Not recorded because the book is full of live answers: never answer these."""


class AnswerBook:
    def __init__(self, capacity: int = 4096, *, max_ttl: int = 300, grace: float = 60.0) -> None:
        if capacity < 1 or max_ttl < 0 or grace < 0:
            raise ValueError("capacity must be positive; max_ttl and grace must not be negative")
        self._capacity = capacity
        self._max_ttl = max_ttl
        self._grace = grace
        self._by_address: dict[IPAddress, dict[str, float]] = {}
        self._size = 0
        # (expires, address, name); stale items (since extended or dropped) are skipped when popped.
        self._expiries: list[tuple[float, str, str]] = []

    def __len__(self) -> int:
        """Pairs held, expired ones not yet dropped included."""
        return self._size

    def record(self, name: str, addresses: Sequence[IPAddress], ttl: int, now: float) -> Recorded:
        """Remember that ``name`` was answered with ``addresses``; answer only what comes back recorded."""
        ttl = max(0, min(ttl, self._max_ttl))
        expires = now + ttl + self._grace
        kept: dict[IPAddress, IPAddress] = {}
        refused: list[IPAddress] = []
        for address in addresses:
            key = _key(address)
            if key in kept:
                continue
            names = self._by_address.get(key)
            if names is None or name not in names:
                if self._size >= self._capacity:
                    self._drop_expired(now)
                if self._size >= self._capacity:
                    refused.append(address)
                    continue
                names = self._by_address.setdefault(key, {})
                self._size += 1
            names[name] = max(names.get(name, expires), expires)
            heapq.heappush(self._expiries, (names[name], str(key), name))
            kept[key] = address
        self._compact()
        return Recorded(ttl, tuple(kept.values()), tuple(refused))

    def lookup(self, address: IPAddress, now: float) -> tuple[Answered, ...]:
        """The names ``address`` was answered for that are still live, in the order first answered."""
        names = self._by_address.get(_key(address), {})
        return tuple(Answered(name, expires) for name, expires in names.items() if expires >= now)

    def _drop_expired(self, now: float) -> None:
        """Drop every pair expired by ``now``."""
        while self._expiries and self._expiries[0][0] < now:
            expires, text, name = heapq.heappop(self._expiries)
            key = ipaddress.ip_address(text)
            names = self._by_address.get(key)
            if names is None or names.get(name) != expires:
                continue  # extended since, or already dropped
            del names[name]
            if not names:
                del self._by_address[key]
            self._size -= 1

    def _compact(self) -> None:
        """Keep the heap within twice the pairs held: extensions leave stale items behind."""
        if len(self._expiries) > 2 * self._capacity:
            self._expiries = [
                (expires, str(key), name)
                for key, names in self._by_address.items()
                for name, expires in names.items()
            ]
            heapq.heapify(self._expiries)
