"""The loop's epoll (privsep/broker/events.py) keeps what ``selectors`` guaranteed the loop."""

from __future__ import annotations

import os
import socket
import time

import pytest

from privsep.broker.events import READ, WRITE, Events


def test_reports_owner_and_role_of_ready_fds_only() -> None:
    events = Events()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        events.watch(a, "channel", "first")
        events.watch(c.fileno(), "control", "second")
        assert events.select(0) == []
        b.send(b"x")
        assert events.select(0) == [(a.fileno(), "first", "channel")]
    finally:
        events.close()
        for s in (a, b, c, d):
            s.close()


def test_want_switches_interest_and_owner_and_none_forgets() -> None:
    events = Events()
    a, b = socket.socketpair()
    try:
        events.want(a, READ, "channel", "x")
        assert events.select(0) == []
        events.want(a, WRITE, "channel", "y")  # writable at once: reported with the new owner
        assert events.select(0) == [(a.fileno(), "y", "channel")]
        events.want(a, 0, "channel", "y")
        assert events.select(0) == []
        events.want(a, 0, "channel", "y")  # not watched: nothing to do
    finally:
        events.close()
        a.close()
        b.close()


def test_refuses_what_selectors_refused() -> None:
    events = Events()
    a, b = socket.socketpair()
    try:
        events.watch(a, "channel", None)
        with pytest.raises(KeyError):
            events.watch(a.fileno(), "channel", None)
        with pytest.raises(ValueError, match="Invalid events"):
            events.watch(b, "channel", None, 0)
        with pytest.raises(ValueError, match="Invalid events"):
            events.watch(b, "channel", None, 4)
        with pytest.raises(ValueError, match="Invalid file descriptor"):
            events.watch(-1, "channel", None)
    finally:
        events.close()
        a.close()
        b.close()


def test_a_closed_socket_is_found_by_identity_and_forgotten() -> None:
    events = Events()
    a, b = socket.socketpair()
    number = a.fileno()
    events.watch(a, "channel", None)
    a.close()  # fileno() is -1 now
    events.forget(a)
    events.forget(a)  # twice: nothing left to forget
    r, w = os.pipe()  # may take the same number: it is not reported as the old one
    try:
        os.write(w, b"x")
        assert all(fd != number or role != "channel" for fd, _, role in events.select(0))
    finally:
        events.close()
        b.close()
        os.close(r)
        os.close(w)


def test_a_short_timeout_waits_rather_than_spins() -> None:
    events = Events()
    try:
        started = time.monotonic()
        assert events.select(0.0001) == []  # rounded up to epoll's millisecond
        assert time.monotonic() - started >= 0.0009
    finally:
        events.close()
