"""The broker's handle on its forkserver: requests asked ahead of their answers, and one handed over."""

from __future__ import annotations

import os

import pytest

from privsep import Sandbox
from privsep.forkserver import ForkServer, handing_over

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandboxes are started as root (as in CI)")


def test_a_prepare_asked_before_a_start_is_answered_after_it() -> None:
    with Sandbox("python", start_method="forkserver") as sb:
        server = sb._need_parts().forkserver
        assert server is not None
        server.ask_prepare("os:getpid")
        server.ask_prepare("no_such_module_here:f")
        assert sb.call("os:getpid") > 0  # the start reads both answers first, in order
        assert server.prepared() is None
        reason = server.prepared()
        assert reason is not None and "no_such_module_here" in reason
        with pytest.raises(ValueError, match="no prepare request"):
            server.prepared()


def test_a_forkserver_handed_over_is_the_sandboxs_own_and_one_not_taken_is_closed() -> None:
    early = ForkServer()
    with handing_over(early), Sandbox("python", start_method="forkserver") as sb:
        assert sb._need_parts().forkserver is early
        assert sb.call("os:getpid") > 0
    assert early._proc.poll() is not None  # the Sandbox closed it with itself
    unused = ForkServer()
    with handing_over(unused):
        pass
    assert unused._proc.poll() is not None
