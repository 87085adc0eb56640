"""The x86_64 numbers privsep writes down itself agree with libseccomp, and each list of calls
that lives on both sides of the filter (named in the filter, numbered in the broker) is one set."""

from __future__ import annotations

import errno

import pytest

from privsep import _linux
from privsep.broker import transparent
from privsep.plan import filter as seccomp

NUMBERS = {name: value for name, value in vars(_linux).items() if name.startswith("NR_")}


def test_there_are_syscall_numbers_to_check() -> None:
    assert len(NUMBERS) > 20


@pytest.mark.parametrize("constant", sorted(NUMBERS))
def test_each_syscall_number_is_the_one_libseccomp_knows(constant: str) -> None:
    name = constant.removeprefix("NR_").lower()
    assert seccomp.syscall_number(name) == NUMBERS[constant]


def test_the_broker_learns_from_exactly_the_lookups_the_filter_sends_it() -> None:
    sent = {seccomp.syscall_number(name) for name in seccomp.LEARN_LOOKUP_CALLS}
    assert set(transparent._LOOKUP_PATH_ARG) == sent


def test_the_broker_reads_the_arguments_of_exactly_the_open_calls_the_filter_sends_it() -> None:
    sent = {seccomp.syscall_number(name) for name in seccomp.TRANSPARENT_FILE_CALLS}
    assert sent == {_linux.NR_OPEN, _linux.NR_CREAT, _linux.NR_OPENAT}
    assert {seccomp.syscall_number(n) for n in seccomp.CONNECT_CALLS} == {_linux.NR_CONNECT}
    assert {seccomp.syscall_number(n) for n in seccomp.TRANSPARENT_BIND_CALLS} == {_linux.NR_BIND}


def test_the_clone_mask_refuses_every_namespace_flag_and_nothing_else() -> None:
    flags = {value for name, value in vars(_linux).items() if name.startswith("CLONE_NEW")}
    assert len(flags) == 8
    assert sum(flags) == seccomp._CLONE_NEW_MASK


@pytest.mark.parametrize(
    ("length", "err"), [(_linux.PATH_MAX - 1, errno.ENOENT), (_linux.PATH_MAX, errno.ENAMETOOLONG)]
)
def test_the_kernel_path_limit_counts_the_nul(length: int, err: int) -> None:
    path = ("/nowhere" * length)[:length]  # short components: only the whole length is too long
    with pytest.raises(OSError) as raised:
        _linux.openat2(_linux.AT_FDCWD, path, 0, 0, 0)
    assert raised.value.errno == err
