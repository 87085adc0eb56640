"""How proxy clients name what they want to reach: host names, IP literals, ports."""

from __future__ import annotations

import ipaddress

import pytest

from privsep.egress.target import Target, TargetError, parse_authority, parse_host

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


@pytest.mark.parametrize(
    ("text", "default", "target"),
    [
        ("api.example.com:443", None, Target("api.example.com", 443, None)),
        ("API.Example.COM.:443", None, Target("api.example.com", 443, None)),
        ("api.example.com", 80, Target("api.example.com", 80, None)),
        ("192.0.2.1:8080", None, Target("192.0.2.1", 8080, V4("192.0.2.1"))),
        ("[2001:DB8::1]:443", None, Target("2001:db8::1", 443, V6("2001:db8::1"))),
        ("[::ffff:127.0.0.1]", 80, Target("::ffff:7f00:1", 80, V6("::ffff:127.0.0.1"))),
        ("localhost:65535", None, Target("localhost", 65535, None)),
    ],
)
def test_authorities_are_read_canonically(text: str, default: int | None, target: Target) -> None:
    assert parse_authority(text, default) == target


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("user@api.example.com:443", "userinfo"),
        ("user:pw@api.example.com:443", "userinfo"),
        ("api.example.com@evil.example:443", "userinfo"),
        ("api.example.com", "no port"),
        ("api.example.com:", "not a decimal number"),
        ("api.example.com:0", "outside 1..65535"),
        ("api.example.com:65536", "outside 1..65535"),
        ("api.example.com:+443", "not a decimal number"),
        ("api.example.com:0443 ", "not a decimal number"),
        ("api.example.com:\u0664\u0664\u0663", "not a decimal number"),  # Arabic-Indic digits
        ("api.example.com:443:443", "needs brackets"),
        ("::1:443", "needs brackets"),
        ("[::1]443", "text after the bracketed"),
        ("[::1", "does not enclose"),
        ("[192.0.2.1]:443", "not an IPv6 address"),
        ("[fe80::1%25eth0]:443", "zone id"),
        (":443", "no host"),
        ("127.1:443", "not a host name"),  # what inet_aton would read as 127.0.0.1
        ("0x7f.0.0.1:443", "not a host name"),
        ("010.0.0.1:443", "not a host name"),  # leading zeros: octal to some resolvers
        ("2130706433:443", "not a host name"),
        ("b\u00fccher.example:443", "not ASCII"),
        ("api_x.example.com:443", "not a host name"),
        ("a..b:443", "not a host name"),
        ("%61pi.example.com:443", "percent-encoding"),
    ],
)
def test_what_a_proxy_will_not_read_is_refused(text: str, error: str) -> None:
    with pytest.raises(TargetError, match=error):
        parse_authority(text, None)


def test_errors_never_echo_the_host() -> None:
    with pytest.raises(TargetError) as info:
        parse_authority("exfiltrated_secret.example:443", None)
    assert "exfiltrated" not in str(info.value)


def test_bare_ipv6_is_for_socks_domains_only() -> None:
    assert parse_host("::1", bare_ipv6=True) == ("::1", V6("::1"))
    with pytest.raises(TargetError):
        parse_host("[::1]", bare_ipv6=True)
    with pytest.raises(TargetError):
        parse_host("::1")


@pytest.mark.parametrize(
    ("target", "authority", "host_header"),
    [
        (Target("api.example.com", 443, None), "api.example.com:443", "api.example.com:443"),
        (Target("api.example.com", 80, None), "api.example.com:80", "api.example.com"),
        (Target("::1", 8080, V6("::1")), "[::1]:8080", "[::1]:8080"),
        (Target("::1", 80, V6("::1")), "[::1]:80", "[::1]"),
    ],
)
def test_targets_print_as_the_cli_and_host_headers_want(
    target: Target, authority: str, host_header: str
) -> None:
    assert target.authority() == authority
    assert target.host_header(80) == host_header
