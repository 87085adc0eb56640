"""The pure parts of transparent brokering: open flags to client modes, sockaddrs, paths."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
from collections.abc import Iterator

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


_PAGE = 4096


@pytest.fixture
def two_pages() -> Iterator[int]:
    """Two pages of this process's memory, the second unmapped again once a test asks (``munmap``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    base = libc.mmap(
        None, 2 * _PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0
    )
    assert base not in (None, ctypes.c_void_p(-1).value)
    try:
        yield base
    finally:
        libc.munmap(base, 2 * _PAGE)  # the second page may be gone already: munmap ignores that


def _put(address: int, data: bytes) -> None:
    ctypes.memmove(address, data, len(data))


def _unmap_second(base: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    assert libc.munmap(base + _PAGE, _PAGE) == 0


def _refused(address: int) -> int | None:
    with pytest.raises(t._Unserved) as caught:
        t._read_path(os.getpid(), address)
    return caught.value.err


def test_a_path_is_read_whole_wherever_it_lies_in_its_pages(two_pages: int) -> None:
    """Up to the end of its page first, then on into the next one when no NUL came (_read_path)."""
    pid = os.getpid()
    _put(two_pages, b"/at/the/start\0")
    assert t._read_path(pid, two_pages) == "/at/the/start"
    across = two_pages + _PAGE - 5
    _put(across, b"/across/the/boundary\0")
    assert t._read_path(pid, across) == "/across/the/boundary"
    _put(two_pages + _PAGE - 4, b"/end\0")  # its NUL is the next page's first byte
    assert t._read_path(pid, two_pages + _PAGE - 4) == "/end"
    _put(two_pages + _PAGE - 4, b"/en\0")  # ends on the page's last byte
    assert t._read_path(pid, two_pages + _PAGE - 4) == "/en"
    _put(two_pages + 1, b"\0")
    assert _refused(two_pages + 1) == errno.ENOENT  # an empty path


def test_a_path_runs_into_unmapped_memory_or_past_path_max(two_pages: int) -> None:
    _put(two_pages, b"/" * (2 * _PAGE))
    assert _refused(two_pages) == errno.ENAMETOOLONG  # 4096 bytes and no NUL
    assert _refused(two_pages + 100) == errno.ENAMETOOLONG  # the same, across the boundary
    _unmap_second(two_pages)
    assert _refused(two_pages + _PAGE - 3) == errno.EFAULT  # no NUL before the unmapped page
    _put(two_pages + _PAGE - 3, b"/a\0")
    assert t._read_path(os.getpid(), two_pages + _PAGE - 3) == "/a"  # a path ending just before it
    assert _refused(two_pages + _PAGE) == errno.EFAULT  # nothing readable at all


def test_the_close_on_exec_flag_of_a_callers_fd_is_read_from_its_fdinfo() -> None:
    """What the broker's socket gets when it replaces the caller's (its copy is always close-on-exec)."""
    with socket.socket() as closed_on_exec, socket.socket() as inherited:
        inherited.set_inheritable(True)
        assert t._fd_cloexec(os.getpid(), closed_on_exec.fileno()) is True
        assert t._fd_cloexec(os.getpid(), inherited.fileno()) is False
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    assert t._fd_cloexec(os.getpid(), r) is True  # no such fd: the safer answer
