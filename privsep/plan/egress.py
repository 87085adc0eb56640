"""What a sandbox's plan carries for egress by host name: its resolver and proxies, and how it finds them.

Unmodified programs find a resolver through ``/etc/resolv.conf`` and a proxy
through ``HTTP_PROXY`` and friends, so that is what the plan gives them:

- **the sockets**, made by the sandbox's init inside the sandbox's own network
  namespace (``confine/netns.py``) and handed to the broker, which serves them
  (``broker/egress.py``): UDP and TCP on 127.0.0.53:53 for the resolver (the
  address systemd-resolved's stub uses, so a view that shows the host's stub
  ``resolv.conf`` finds it too), an HTTP proxy on 127.0.0.1:3128 and a SOCKS5
  proxy on 127.0.0.1:1080. Nothing else listens in that namespace, and the
  addresses are privsep's there: a program of the sandbox cannot bind them;
- **the files**: ``/etc/resolv.conf`` naming that resolver, generated in the
  view, and mounted over the host's file when the view shows one (a bind of
  ``/etc``); the generated ``nsswitch.conf`` then asks DNS after the files.
  The generated ``/etc/hosts`` names only localhost: a pinned name is served by
  the resolver, which records what it answered (a name answered from a file
  would reach an address no answer covers, which the broker then refuses);
- **the environment**, when the policy asks for the proxy: ``HTTP_PROXY``,
  ``HTTPS_PROXY`` (the HTTP proxy, which tunnels with CONNECT), ``ALL_PROXY``
  (SOCKS5 with names resolved by the proxy: ``socks5h://``), ``NO_PROXY``
  (loopback), and their lower-case forms, which curl and wget read. A policy's
  own ``[env] set`` wins over them.

Pure data and host metadata (lstat, realpath) read in the broker before the fork.
"""

from __future__ import annotations

import _socket
import posixpath

from privsep import _hostfacts
from privsep._record import Record, replace
from privsep.errors import PolicyError
from privsep.plan.view import ViewPlan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from privsep.policy.model import Policy

__all__ = [
    "DNS_PORT",
    "HTTP_PROXY_PORT",
    "KINDS",
    "PROXY_HOST",
    "RESOLVER",
    "SOCKS_PORT",
    "EgressPlan",
    "Endpoint",
    "egress_view",
    "plan_egress",
    "proxy_env",
]

RESOLVER = "127.0.0.53"
DNS_PORT = 53
PROXY_HOST = "127.0.0.1"
HTTP_PROXY_PORT = 3128
SOCKS_PORT = 1080
RESOLV_CONF = "/etc/resolv.conf"
_NSSWITCH = "/etc/nsswitch.conf"


class Endpoint(Record):
    """One socket of the sandbox's egress, made inside its network namespace."""

    __slots__ = ("host", "kind", "port", "udp")

    kind: str
    """"dns_udp", "dns_tcp", "http" or "socks": how the broker serves it (the control report's step)."""
    udp: bool
    host: str
    port: int

    def __init__(self, kind: str, udp: bool, host: str, port: int) -> None:
        self._assign(locals())

    @property
    def type(self) -> int:
        return _socket.SOCK_DGRAM if self.udp else _socket.SOCK_STREAM


_DNS = (Endpoint("dns_udp", True, RESOLVER, DNS_PORT), Endpoint("dns_tcp", False, RESOLVER, DNS_PORT))
_PROXY = (
    Endpoint("http", False, PROXY_HOST, HTTP_PROXY_PORT),
    Endpoint("socks", False, PROXY_HOST, SOCKS_PORT),
)
KINDS = frozenset(e.kind for e in (*_DNS, *_PROXY))


class EgressPlan(Record):
    """Which of the broker's loopback services the sandbox has (issue 17): its resolver, its proxies."""

    __slots__ = ("dns", "proxy")

    dns: bool
    """The resolver at 127.0.0.53:53 (UDP and TCP)."""
    proxy: bool
    """The HTTP proxy at 127.0.0.1:3128 and the SOCKS5 proxy at 127.0.0.1:1080."""

    def __init__(self, dns: bool, proxy: bool) -> None:
        self._assign(locals())

    def endpoints(self) -> tuple[Endpoint, ...]:
        return (*(_DNS if self.dns else ()), *(_PROXY if self.proxy else ()))


def plan_egress(policy: Policy) -> EgressPlan | None:
    """The sandbox's egress, or None when it has neither resolver nor proxy (no socket is made)."""
    if not (policy.egress_dns or policy.egress_proxy):
        return None
    return EgressPlan(dns=policy.egress_dns, proxy=policy.egress_proxy)


def proxy_env(egress: EgressPlan | None) -> dict[str, str]:
    """The proxy variables, in both cases (curl and wget read only the lower-case http_proxy)."""
    if egress is None or not egress.proxy:
        return {}
    http = f"http://{PROXY_HOST}:{HTTP_PROXY_PORT}"
    values = {
        "http_proxy": http,
        "https_proxy": http,
        "all_proxy": f"socks5h://{PROXY_HOST}:{SOCKS_PORT}",
        "no_proxy": "localhost,127.0.0.1,::1",
    }
    return {**values, **{name.upper(): value for name, value in values.items()}}


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def egress_view(view: ViewPlan, egress: EgressPlan | None) -> ViewPlan:
    """``view`` with the resolver's ``/etc/resolv.conf`` (and DNS in the generated nsswitch.conf)."""
    if egress is None or not egress.dns:
        return view
    content = (
        f"# privsep: the sandbox's resolver (the broker answers it)\nnameserver {RESOLVER}\noptions edns0\n"
    )
    files = tuple(
        (path, text.replace("\nhosts: files\n", "\nhosts: files dns\n"))
        if path == _NSSWITCH
        else (path, text)
        for path, text in view.files
    )
    shown = [b for b in view.binds if _under(RESOLV_CONF, b.path)]
    if not shown:
        # Generated in the view's own tmpfs; a mirrored symlink there (to the host's stub) gives way.
        symlinks = tuple((p, t) for p, t in view.symlinks if p != RESOLV_CONF)
        return replace(view, files=(*files, (RESOLV_CONF, content)), symlinks=symlinks)
    # A bind shows the host's file: mount the generated one over it (over the entry itself, a
    # symlink included). Only through real directories: the mount is made before pivot_root.
    parent = posixpath.dirname(RESOLV_CONF)
    if _hostfacts.realpath(parent) != parent or not _hostfacts.lexists(RESOLV_CONF):
        raise PolicyError(
            f"the view shows {shown[0].path} from the host, but privsep cannot put the sandbox's resolver "
            f"into its {RESOLV_CONF} ({parent} is a symbolic link, or the file is missing); bind narrower "
            "paths than that, or set [network] dns = false"
        )
    return replace(view, files=files, overlays=(*view.overlays, (RESOLV_CONF, content)))
