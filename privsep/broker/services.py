"""The operations a child may ask for, routed to their resource module.

One ``Services`` per policy: it owns the pinned grant directories, so it is
built once (when the policy loads) and shared by every child of that
policy. ``slow`` ops (name resolution, connecting) run on the broker's
worker threads; everything else is answered inline by the event loop.
"""

from __future__ import annotations

from privsep import protocol
from privsep.broker.actas import sandbox_ids
from privsep.broker.answers import Answer, Refusal
from privsep.broker.files import FileService
from privsep.broker.net import NetService
from privsep.broker.secrets import SecretService
from privsep.policy.model import Policy

#: Run on a worker, one in flight per child: they wait on the network, or read a whole
#: directory (a listing of a huge one must not stall every sibling on the event loop).
SLOW_OPS = frozenset({"connect", "connect_unix", "listdir"})


class Services:
    def __init__(self, policy: Policy) -> None:
        self._load(policy)

    def _load(self, policy: Policy) -> None:
        self.policy = policy
        self.files = FileService(policy)
        self.net = NetService(policy, self.files)
        self.secrets = SecretService(policy)

    def close(self) -> None:
        self.files.close()

    def handle(self, request: protocol.Request) -> Answer:  # noqa: PLR0911 - one return per op
        """Perform one request; raises Refusal for anything the child does not get."""
        match request:
            case protocol.Open():
                return self.files.open(request.path, request.mode)
            case protocol.Stat():
                return self.files.stat(request.path)
            case protocol.Listdir():
                return self.files.listdir(request.path, request.offset)
            case protocol.Mkdir():
                return self.files.mkdir(request.path)
            case protocol.Unlink():
                return self.files.unlink(request.path)
            case protocol.Rename():
                return self.files.rename(request.src, request.dst)
            case protocol.Connect():
                return self.net.connect(request.host, request.port, request.type, request.timeout_ms)
            case protocol.ConnectUnix():
                return self.net.connect_unix(request.path)
            case protocol.Bind():
                return self.net.bind(request.host, request.port, request.type, request.backlog)
            case protocol.Secret():
                return self.secrets.secret(request.name)
        raise Refusal(protocol.ErrorCode.UNSUPPORTED, "this broker does not perform that operation")


def target(request: protocol.Request) -> str:
    """What a request is about, for the audit log and the denial report (never a secret value)."""
    match request:
        case protocol.Rename():
            return f"{request.src} -> {request.dst}"
        case protocol.Connect() | protocol.Bind():
            host = f"[{request.host}]" if ":" in request.host else request.host
            return f"{host}:{request.port}/{request.type}"
        case protocol.Secret():
            return request.name
    path = getattr(request, "path", None)
    return path if isinstance(path, str) else ""


def perform(services: Services, request: protocol.Request, ids: tuple[int, int] | None) -> Answer | Refusal:
    """Perform one request for a sandbox whose host uid and gid are ``ids``: the one way in for
    requests from the client and for transparently brokered calls alike.

    Every refusal becomes a value (it is a reply, not an error of ours). Anything
    else that escapes is a bug of ours: the caller logs it and answers EIO (rule 6).
    """
    token = sandbox_ids.set(ids)
    try:
        return services.handle(request)
    except Refusal as refusal:
        return refusal
    finally:
        sandbox_ids.reset(token)
