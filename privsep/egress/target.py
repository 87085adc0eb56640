"""What a proxy client asks to reach: a host name or an IP literal, and a port.

Shared by the HTTP and SOCKS5 proxies so both read a host the same way, and
the way :mod:`privsep.policy.decide` will judge it:

- a host name is canonical (:func:`privsep.policy.model.host_name`: lower
  case, no trailing dot, RFC 1123 labels, a numeric last label refused, so
  "127.1" and "0x7f.1" are neither names nor addresses);
- an IPv4 literal is four decimal octets, nothing else (no "127.1", no
  leading zeros: the forms resolvers disagree on);
- an IPv6 literal is bracketed in an authority ("[::1]:443"), bare in a SOCKS5
  domain field; zone ids ("%eth0") are refused;
- an IP literal is kept as an address: the broker decides it by IP rules and
  never resolves it; a name is resolved by the broker, never by the client.

Errors name the broken rule and never echo the client's bytes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from privsep.policy.model import IPAddress, host_name

__all__ = ["Target", "TargetError", "parse_authority", "parse_host"]


class TargetError(ValueError):
    """The host or authority is not one a proxy serves; the message says which rule it broke."""


@dataclass(frozen=True)
class Target:
    host: str
    """A canonical host name, or the IP address's canonical text."""
    port: int
    address: IPAddress | None
    """The IP literal the client named; None for a name (the broker resolves it)."""

    def authority(self) -> str:
        """HOST:PORT as ``--allow-connect`` takes it ([v6]:PORT)."""
        host = f"[{self.host}]" if self.address is not None and self.address.version == 6 else self.host
        return f"{host}:{self.port}"

    def host_header(self, default_port: int) -> str:
        """The Host header value: the authority, without the port when it is the default one."""
        if self.port != default_port:
            return self.authority()
        return self.authority().rpartition(":")[0]


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise TargetError("the port is not a decimal number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise TargetError("the port is outside 1..65535")
    return port


def parse_host(text: str, *, bare_ipv6: bool = False) -> tuple[str, IPAddress | None]:
    """(canonical host, the IP literal or None); ``bare_ipv6``: an IPv6 address needs no brackets."""
    if not text.isascii():
        raise TargetError("the host is not ASCII (send the IDNA form, xn--...)")
    if "%" in text:
        raise TargetError("a zone id or percent-encoding in the host")
    if text.startswith("["):
        if not text.endswith("]") or bare_ipv6:
            raise TargetError("a '[' that does not enclose an IPv6 address")
        text = text[1:-1]
        try:
            v6 = ipaddress.IPv6Address(text)
        except ValueError:
            raise TargetError("the bracketed host is not an IPv6 address") from None
        return str(v6), v6
    if ":" in text:
        if not bare_ipv6:
            raise TargetError("an IPv6 address in an authority needs brackets, e.g. [::1]:443")
        try:
            v6 = ipaddress.IPv6Address(text)
        except ValueError:
            raise TargetError("the host is not an IPv6 address or a host name") from None
        return str(v6), v6
    try:
        v4 = ipaddress.IPv4Address(text)
    except ValueError:
        pass
    else:
        return str(v4), v4
    name = host_name(text)
    if name is None:
        raise TargetError(
            "the host is not a host name (RFC 1123 labels, a last label that is not a number) "
            "or an IP address (four decimal octets, or [IPv6])"
        )
    return name, None


def parse_authority(text: str, default_port: int | None) -> Target:
    """HOST[:PORT] (``default_port`` None: the port is required); no userinfo, no empty port."""
    if "@" in text:
        raise TargetError("userinfo (user@) in the authority: credentials are never sent through the proxy")
    if text.startswith("["):
        host_text, bracket, after = text.partition("]")
        host_text += bracket
        if after and not after.startswith(":"):
            raise TargetError("text after the bracketed IPv6 address")
        port_text: str | None = after[1:] if after else None
    elif text.count(":") > 1:
        raise TargetError("an IPv6 address in an authority needs brackets, e.g. [::1]:443")
    else:
        host_text, colon, rest = text.partition(":")
        port_text = rest if colon else None
    if not host_text:
        raise TargetError("the authority has no host")
    host, address = parse_host(host_text)
    if port_text is None:
        if default_port is None:
            raise TargetError("the authority has no port (write HOST:PORT)")
        return Target(host, default_port, address)
    return Target(host, _port(port_text), address)
