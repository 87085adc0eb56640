"""The operations a child may ask for, routed to their resource module.

One ``Services`` per policy: it owns the pinned grant directories, so it is
built once (when the policy loads) and shared by every child of that
policy. ``slow`` ops (name resolution, connecting) run on the broker's
worker threads; everything else is answered inline by the event loop.

``LazyServices`` is the same, with the policy's model (pydantic) and the
resource modules built when the first request needs them: ``privsep run``
with a warm plan cache never imports pydantic for a sandbox that asks for
nothing. Only the grants are pinned at once (``pins.py`` says why).
"""

from __future__ import annotations

import _thread

from privsep._lazy import lazy_module

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from privsep import protocol
    from privsep.broker import actas, answers
    from privsep.broker.answers import Answer, Refusal
    from privsep.broker.files import FileService
    from privsep.broker.net import NetService
    from privsep.broker.pins import Pins
    from privsep.broker.secrets import SecretService
    from privsep.policy.model import Policy
else:
    protocol = lazy_module("privsep.protocol", globals())
    # With the first request: LazyServices is made for every privsep run, served or not.
    actas = lazy_module("privsep.broker.actas", globals())
    answers = lazy_module("privsep.broker.answers", globals())

#: Run on a worker, one in flight per child: they wait on the network, or read a whole
#: directory (a listing of a huge one must not stall every sibling on the event loop).
SLOW_OPS = frozenset({"connect", "connect_unix", "listdir"})


class Services:
    policy: Policy
    files: FileService
    net: NetService
    secrets: SecretService

    def __init__(self, policy: Policy, pins: Pins | None = None) -> None:
        """``pins``: the grants of ``policy``, pinned already; by default they are pinned here."""
        self._load(policy, pins)

    def _load(self, policy: Policy, pins: Pins | None = None) -> None:
        # The resource modules import the policy's decisions and the protocol: pydantic.
        from privsep.broker.files import FileService  # noqa: PLC0415
        from privsep.broker.net import NetService  # noqa: PLC0415
        from privsep.broker.secrets import SecretService  # noqa: PLC0415

        self.policy = policy
        self.files = FileService(policy, pins)
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
        raise answers.Refusal(protocol.ErrorCode.UNSUPPORTED, "this broker does not perform that operation")


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
    token = actas.sandbox_ids.set(ids)
    try:
        return services.handle(request)
    except answers.Refusal as refusal:
        return refusal
    finally:
        actas.sandbox_ids.reset(token)


class LazyServices(Services):
    """``Services`` of a policy whose model is made on first use: by ``policy()``, once.

    The grants are pinned already (``pins``, opened at start from the same
    specs ``Services`` would pin), so the services built later decide and
    resolve exactly as ones built at start would: same model, same pins.
    Until then it holds only the pins; the first access to ``policy``,
    ``files``, ``net`` or ``secrets`` (a request, a transparently brokered
    call) builds everything, on whichever thread gets there first.
    """

    def __init__(self, pins: Pins, policy: Callable[[], Policy]) -> None:
        # No super().__init__: building is what is deferred (see __getattr__).
        self._pins = pins
        self._make_policy: Callable[[], Policy] | None = policy
        self._building = _thread.allocate_lock()  # threading.Lock, without importing threading

    @property
    def built(self) -> bool:
        """Whether the first use has come (and the model was made)."""
        return self._make_policy is None

    def __getattr__(self, name: str) -> object:
        """Called only for an attribute not set yet: the parts ``_load`` makes."""
        if name not in {"policy", "files", "net", "secrets"}:
            raise AttributeError(name)
        with self._building:
            if self._make_policy is not None:
                self._load(self._make_policy(), self._pins)
                self._make_policy = None
        return object.__getattribute__(self, name)

    def close(self) -> None:
        with self._building:
            if self._make_policy is None:
                super().close()  # the file service owns the pins now
            else:
                self._pins.close()
