"""privsep: run a program confined, with a privileged broker doing what it may not.

Only the names below are public; every other module is internal.
"""

from __future__ import annotations

from privsep._version import __version__
from privsep.errors import (
    BrokerError,
    ChannelError,
    ChildError,
    ConfinementError,
    DeniedError,
    LocalProtocolError,
    PolicyError,
    PrivsepError,
    ProtocolError,
    RemoteProtocolError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from privsep.policy.load import load_policy
    from privsep.policy.model import Policy
    from privsep.sandbox import Denial, RunResult, Sandbox


def __getattr__(name: str) -> Any:
    # Lazy: a confined child imports privsep for its client and must not pay
    # for (or hold) the broker's code.
    if name in ("Denial", "RunResult", "Sandbox"):
        from privsep import sandbox  # noqa: PLC0415 - lazy on purpose (see above)

        return getattr(sandbox, name)
    if name == "Policy":
        from privsep.policy.model import Policy  # noqa: PLC0415 - lazy on purpose (see above)

        return Policy
    if name == "load_policy":
        from privsep.policy.load import load_policy  # noqa: PLC0415 - lazy on purpose (see above)

        return load_policy
    raise AttributeError(f"module 'privsep' has no attribute {name!r}")


__all__ = [
    "BrokerError",
    "ChannelError",
    "ChildError",
    "ConfinementError",
    "Denial",
    "DeniedError",
    "LocalProtocolError",
    "Policy",
    "PolicyError",
    "PrivsepError",
    "ProtocolError",
    "RemoteProtocolError",
    "RunResult",
    "Sandbox",
    "__version__",
    "load_policy",
]
