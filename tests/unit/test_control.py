"""The control messages from the sandbox's own processes: parsed defensively all the same."""

from __future__ import annotations

import os

import pytest

from privsep.channel import Frame
from privsep.errors import RemoteProtocolError
from privsep.plan.control import (
    FD_KINDS,
    KINDS,
    MAX_CONTROL_FRAME,
    ControlMessage,
    decode_control,
    encode_control,
)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_what_the_sandbox_encodes_the_broker_decodes(kind: str) -> None:
    fds: tuple[int, ...] = ()
    if kind in FD_KINDS:
        r, w = os.pipe()
        os.close(w)
        fds = (r,)
    try:
        frame = encode_control(kind, step="landlock", reason="no ABI 3", status=125, errno=2)
        msg = decode_control(Frame(frame, fds))
    finally:
        for fd in fds:
            os.close(fd)
    sent = fds[0] if fds else None
    assert msg == ControlMessage(kind, fd=sent, step="landlock", reason="no ABI 3", status=125, errno=2)


def test_a_long_error_is_cut_to_what_the_broker_keeps_not_refused() -> None:
    frame = encode_control("error", step="s" * 1000, reason="\u00e9" * MAX_CONTROL_FRAME, status=125)
    msg = decode_control(Frame(frame, ()))
    assert (msg.kind, len(msg.step), msg.reason[:3], msg.status) == ("error", 64, "\u00e9" * 3, 125)


def test_an_unknown_kind_is_never_sent() -> None:
    with pytest.raises(ValueError, match="unknown control message kind"):
        encode_control("nonsense")


def test_an_exit_report_is_decoded() -> None:
    msg = decode_control(Frame(b'{"kind": "exit", "status": 256}', ()))
    assert (msg.kind, msg.status) == ("exit", 256)


@pytest.mark.parametrize(
    "data",
    [
        b'{"kind": "exit", "status": 1e999}',  # OverflowError in int(): caught
        b'{"kind": "exit", "status": "x"}',
        b'{"kind": "nonsense"}',
        b"[]",
        b"not json",
        b'{"kind": "exit", "reason": "' + b"x" * 5000 + b'"}',
    ],
)
def test_malformed_reports_are_refused_and_their_fds_closed(data: bytes) -> None:
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(RemoteProtocolError):
        decode_control(Frame(data, (r,)))
    with pytest.raises(OSError):
        os.fstat(r)  # closed by decode_control


def test_an_fd_report_needs_exactly_one_fd() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_control(Frame(b'{"kind": "listener"}', ()))
