"""What a sandbox's plan carries for egress by name: its sockets, its resolv.conf, its proxy variables."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from privsep import channel
from privsep.errors import PolicyError
from privsep.plan.control import decode_control, encode_control
from privsep.plan.egress import EgressPlan, egress_view, plan_egress, proxy_env
from privsep.plan.spawnplan import make_plan
from privsep.plan.view import Bind, ViewPlan
from privsep.policy.model import Policy


def policy(**more: Any) -> Policy:
    more.setdefault("syscalls", {"allow": ("@system-service",)})  # a plan's filter must let it start
    return Policy.model_validate({"name": "t", "connect": ({"host": "api.test", "ports": (443,)},), **more})


def test_a_name_rule_gets_the_resolver_and_the_proxy_only_when_asked() -> None:
    assert plan_egress(policy()) == EgressPlan(dns=True, proxy=False)
    assert plan_egress(policy(network={"proxy": True})) == EgressPlan(dns=True, proxy=True)
    assert plan_egress(policy(network={"dns": False, "proxy": True})) == EgressPlan(dns=False, proxy=True)
    assert plan_egress(policy(network={"dns": False})) is None
    ip_only = Policy.model_validate({"name": "t", "connect": ({"host": "10.0.0.0/8", "ports": (443,)},)})
    assert plan_egress(ip_only) is None
    kinds = [(e.kind, e.host, e.port, e.udp) for e in EgressPlan(dns=True, proxy=True).endpoints()]
    assert kinds == [
        ("dns_udp", "127.0.0.53", 53, True),
        ("dns_tcp", "127.0.0.53", 53, False),
        ("http", "127.0.0.1", 3128, False),
        ("socks", "127.0.0.1", 1080, False),
    ]


def test_the_proxy_variables_are_set_in_both_cases_and_a_policy_may_override_them() -> None:
    env = proxy_env(EgressPlan(dns=True, proxy=True))
    assert env["http_proxy"] == env["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert env["ALL_PROXY"] == "socks5h://127.0.0.1:1080"
    assert env["no_proxy"] == "localhost,127.0.0.1,::1"
    assert proxy_env(EgressPlan(dns=True, proxy=False)) == {} == proxy_env(None)
    plan = make_plan(
        policy(network={"proxy": True}, env={"set": {"NO_PROXY": "internal.test"}}), ["/bin/true"]
    )
    assert plan.env["NO_PROXY"] == "internal.test" and plan.env["no_proxy"] == "localhost,127.0.0.1,::1"
    assert plan.egress == EgressPlan(dns=True, proxy=True)
    assert "http_proxy" not in make_plan(policy(), ["/bin/true"]).env


def _view(*binds: Bind) -> ViewPlan:
    generated = (("/etc/nsswitch.conf", "passwd: files\nhosts: files\nservices: files\n"),)
    return ViewPlan(dirs=(), symlinks=(("/etc/resolv.conf", "../run/stub.conf"),), binds=binds,
                    tmp_size_mb=None, files=generated)  # fmt: skip


def test_resolv_conf_is_generated_and_dns_asked_after_the_files() -> None:
    view = egress_view(_view(), EgressPlan(dns=True, proxy=False))
    files = dict(view.files)
    assert files["/etc/resolv.conf"].endswith("nameserver 127.0.0.53\noptions edns0\n")
    assert "\nhosts: files dns\n" in files["/etc/nsswitch.conf"]
    assert view.symlinks == () and view.overlays == ()  # the mirrored link gives way to the file
    assert egress_view(_view(), EgressPlan(dns=False, proxy=True)) == _view()
    assert egress_view(_view(), None) == _view()


def test_a_bound_etc_gets_resolv_conf_mounted_over_the_hosts() -> None:
    view = egress_view(_view(Bind("/etc", True)), EgressPlan(dns=True, proxy=False))
    assert [path for path, _ in view.overlays] == ["/etc/resolv.conf"]
    assert "/etc/resolv.conf" not in dict(view.files)


def test_a_plan_that_cannot_place_resolv_conf_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("privsep._hostfacts.lexists", lambda path: False)
    with pytest.raises(PolicyError, match=r"set \[network\] dns = false"):
        egress_view(_view(Bind("/etc", True)), EgressPlan(dns=True, proxy=False))


def test_an_egress_report_carries_one_socket_and_names_its_kind() -> None:
    ours, theirs = channel.socketpair()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        channel.send(theirs, encode_control("egress", step="dns_udp"), [sock.fileno()])
        frame = channel.recv(ours)
        assert frame is not None
        msg = decode_control(frame)
        assert (msg.kind, msg.step) == ("egress", "dns_udp") and msg.fd is not None
        socket.socket(fileno=msg.fd).close()
    finally:
        sock.close()
        ours.close()
        theirs.close()
