"""The book of answers: what a sandbox was told, until when, bounded without losing a live answer."""

from __future__ import annotations

import ipaddress
import random

import pytest

from privsep.egress.answered import AnswerBook, Answered

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
A1, A2, A3 = V4("192.0.2.1"), V4("192.0.2.2"), V4("192.0.2.3")


def test_an_answer_lives_for_its_ttl_and_the_grace() -> None:
    book = AnswerBook(max_ttl=300, grace=10)
    recorded = book.record("api.example.com", [A1, A2], ttl=60, now=1000.0)
    assert (recorded.ttl, recorded.addresses, recorded.refused) == (60, (A1, A2), ())
    assert book.lookup(A1, 1000.0) == (Answered("api.example.com", 1070.0),)
    assert book.lookup(A2, 1070.0) == (Answered("api.example.com", 1070.0),)
    assert book.lookup(A1, 1070.5) == ()
    assert book.lookup(A3, 1000.0) == ()


def test_the_ttl_sent_is_capped_and_never_negative() -> None:
    book = AnswerBook(max_ttl=300, grace=0)
    assert book.record("a.example", [A1], ttl=86400, now=0).ttl == 300
    assert book.record("b.example", [A2], ttl=-1, now=0).ttl == 0
    assert book.lookup(A1, 300.0) and not book.lookup(A1, 300.1)


def test_an_address_answered_for_several_names_remembers_each() -> None:
    book = AnswerBook(grace=0)
    book.record("a.example", [A1], ttl=10, now=0)
    book.record("b.example", [A1], ttl=20, now=0)
    assert book.lookup(A1, 5) == (Answered("a.example", 10), Answered("b.example", 20))
    assert book.lookup(A1, 15) == (Answered("b.example", 20),)
    assert len(book) == 2


def test_answering_again_extends_never_shortens() -> None:
    book = AnswerBook(grace=0)
    book.record("a.example", [A1], ttl=100, now=0)
    book.record("a.example", [A1], ttl=10, now=50)  # would end at 60: the earlier answer still holds
    assert book.lookup(A1, 90) == (Answered("a.example", 100),)
    book.record("a.example", [A1], ttl=100, now=90)
    assert book.lookup(A1, 150) == (Answered("a.example", 190),)
    assert len(book) == 1


def test_ipv4_mapped_addresses_are_the_ipv4_address() -> None:
    book = AnswerBook()
    book.record("a.example", [A1], ttl=10, now=0)
    assert book.lookup(V6("::ffff:192.0.2.1"), 1) == book.lookup(A1, 1) != ()
    recorded = book.record("b.example", [V6("::ffff:192.0.2.2"), A2], ttl=10, now=0)
    assert recorded.addresses == (V6("::ffff:192.0.2.2"),)  # the same address once
    assert book.lookup(A2, 1) == (Answered("b.example", 70.0),)


def test_a_full_book_refuses_new_answers_rather_than_forget_live_ones() -> None:
    book = AnswerBook(capacity=2, grace=0)
    book.record("a.example", [A1, A2], ttl=100, now=0)
    recorded = book.record("flood.example", [A3, V6("2001:db8::1")], ttl=100, now=1)
    assert recorded.addresses == ()
    assert recorded.refused == (A3, V6("2001:db8::1"))
    assert book.lookup(A1, 50) and book.lookup(A2, 50)  # the live answers are all still there
    assert book.lookup(A3, 50) == ()
    assert book.record("a.example", [A1], ttl=100, now=2).addresses == (A1,)  # a refresh needs no room


def test_expired_answers_make_room() -> None:
    book = AnswerBook(capacity=2, grace=0)
    book.record("a.example", [A1], ttl=10, now=0)
    book.record("b.example", [A2], ttl=100, now=0)
    recorded = book.record("c.example", [A3], ttl=10, now=11)
    assert recorded.addresses == (A3,)
    assert len(book) == 2
    assert book.lookup(A1, 11) == ()
    assert book.lookup(A2, 11) == (Answered("b.example", 100),)


def test_an_extended_answer_is_not_dropped_by_its_old_expiry() -> None:
    book = AnswerBook(capacity=2, grace=0)
    book.record("a.example", [A1], ttl=10, now=0)
    book.record("a.example", [A1], ttl=100, now=5)  # now ends at 105; the heap still holds 10
    book.record("b.example", [A2], ttl=10, now=5)
    assert book.record("c.example", [A3], ttl=10, now=20).addresses == (A3,)  # b made room, not a
    assert book.lookup(A1, 20) == (Answered("a.example", 105),)
    assert book.lookup(A2, 20) == ()


@pytest.mark.parametrize(("capacity", "max_ttl", "grace"), [(0, 1, 1), (1, -1, 1), (1, 1, -1)])
def test_bad_bounds_are_refused(capacity: int, max_ttl: int, grace: float) -> None:
    with pytest.raises(ValueError, match="capacity"):
        AnswerBook(capacity, max_ttl=max_ttl, grace=grace)


def test_against_a_reference_model_under_random_load() -> None:
    """Checked against the obvious model: a dict of pairs, every live pair kept, the bound never exceeded."""
    rng = random.Random(4096)  # noqa: S311 - a fixed seed: the same inputs every run
    capacity = 16
    book = AnswerBook(capacity, max_ttl=50, grace=5)
    model: dict[tuple[ipaddress.IPv4Address, str], float] = {}
    now = 0.0
    for _ in range(5000):
        now += rng.choice([0, 0.5, 1, 3, 20])
        name = rng.choice(["a.example", "b.example", "c.example", "d.example"])
        addresses = [V4(f"192.0.2.{rng.randrange(12)}") for _ in range(rng.randint(1, 3))]
        ttl = rng.choice([0, 1, 10, 100])
        recorded = book.record(name, addresses, ttl, now)
        expires = now + min(ttl, 50) + 5
        for address in dict.fromkeys(addresses):
            pair = (address, name)
            if pair not in model and len(model) >= capacity:  # expired pairs go only when room is needed
                model = {p: until for p, until in model.items() if until >= now}
            if pair in model or len(model) < capacity:
                model[pair] = max(model.get(pair, expires), expires)
                assert address in recorded.addresses
            else:
                assert all(until >= now for until in model.values())  # refused only when all are live
                assert address in recorded.refused
        assert len(book) <= capacity
        for address in {a for a, _ in model}:
            want = sorted((n, u) for (a, n), u in model.items() if a == address and u >= now)
            assert sorted((x.name, x.expires) for x in book.lookup(address, now)) == want
