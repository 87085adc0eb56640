"""The control messages from the sandbox's own processes: parsed defensively all the same."""

from __future__ import annotations

import os

import pytest

from privsep.channel import Frame
from privsep.confine.spawn import decode_control
from privsep.errors import RemoteProtocolError


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
