"""The pure parts of transparent brokering: open flags to client modes, sockaddrs, paths."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from privsep.broker import transparent as t
from privsep.policy.load import load_policy
from privsep.policy.model import Access, FileRule, Policy

W, RW, C, X, TR, A = os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_APPEND


@pytest.mark.parametrize(
    ("flags", "mode"),
    [
        (os.O_RDONLY, "r"),
        (os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, "r"),
        (W | C | TR, "w"),
        (RW | C | TR, "w+"),
        (W | C | A, "a"),
        (RW | C | A, "a+"),
        (W | C | X, "x"),
        (RW | C | X, "x+"),
        (RW, "r+"),
        (W, "r+"),  # writing in place: no truncation, no append
        (W | C, "r+"),  # open-or-create: "r+", then "x" when missing (see _perform_open)
    ],
)
def test_open_flags_map_to_the_client_mode_with_the_same_meaning(flags: int, mode: str) -> None:
    assert t._mode(flags) == mode


def test_what_is_never_handed_out_is_named() -> None:
    assert t._unserved_kind(os.O_RDONLY) is None
    assert t._unserved_kind(os.O_PATH) == "O_PATH opens"
    assert t._unserved_kind(os.O_RDWR | 0o20000000 | os.O_DIRECTORY) == "O_TMPFILE opens"
    kind = t._unserved_kind(os.O_RDONLY | os.O_DIRECTORY)
    assert kind is not None and kind.startswith("directories")


def test_known_flags_hold_every_flag_glibc_passes() -> None:
    for flag in (os.O_CLOEXEC, os.O_NOFOLLOW, os.O_NOCTTY, os.O_NONBLOCK, 0o100000, os.O_DIRECTORY):
        assert flag & ~t._KNOWN_FLAGS == 0
    assert 0o40000000000 & ~t._KNOWN_FLAGS  # an unknown high bit is refused


def _sin(port: int, address: bytes) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + address + bytes(8)


def _sin6(port: int, address: bytes) -> bytes:
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!H", port) + bytes(4) + address + bytes(4)


def test_sockaddrs_are_read_as_the_kernel_reads_them() -> None:
    assert t._sockaddr(_sin(8080, bytes([127, 0, 0, 1])), socket.AF_INET) == ("127.0.0.1", 8080)
    assert t._sockaddr(_sin6(443, bytes(15) + b"\x01"), socket.AF_INET6) == ("::1", 443)
    mapped = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
    assert t._sockaddr(_sin6(80, mapped), socket.AF_INET6) == ("10.0.0.1", 80)  # v4-mapped: the v4 rules
    # A family other than the socket's, AF_UNSPEC, or too short: not ours to interpret.
    assert t._sockaddr(_sin(80, bytes(4)), socket.AF_INET6) is None
    assert t._sockaddr(struct.pack("=H", socket.AF_UNSPEC) + bytes(14), socket.AF_INET) is None
    assert t._sockaddr(_sin(80, bytes(4))[:6], socket.AF_INET) is None
    assert t._sockaddr(b"", socket.AF_INET) is None


def test_paths_are_normalised_like_the_rules() -> None:
    assert t._normalise("/srv/in/../in/./a.txt") == "/srv/in/a.txt"
    assert t._normalise("//srv//in/") == "/srv/in"
    assert t._normalise("/../../etc/shadow") == "/etc/shadow"


def test_syscall_arguments_are_read_as_ints() -> None:
    assert t._s32(0xFFFFFF9C) == -100  # AT_FDCWD as the kernel passes it
    assert t._s32(0xFFFFFFFF_FFFFFF9C) == -100
    assert t._s32(3) == 3


def test_the_view_is_handed_back_and_everything_else_is_brokered() -> None:
    roots = t.view_roots(("/usr", "/etc/ld.so.cache"), ("/lib",), tmp=False)
    serve = t.Transparent(frozenset(), roots)

    class Services:
        policy: Policy = load_policy("minimal").model_copy(
            update={"files": (FileRule(path="/usr/share/doc", access=(Access.READ,)),)}
        )

    s = Services()
    for inside in ("/", "/usr", "/usr/lib/x", "/lib/libc.so.6", "/proc/self/status", "/dev/null"):
        assert not serve._brokered(s, inside), inside  # type: ignore[arg-type]
    for outside in ("/etc/shadow", "/usrx", "/tmp/x", "/srv/in/a.txt", "/etc/ld.so.cache.d"):
        assert serve._brokered(s, outside), outside  # type: ignore[arg-type]
    # A rule inside the view wins: the broker serves it (and its deny rules are enforced there).
    assert serve._brokered(s, "/usr/share/doc/x")  # type: ignore[arg-type]
