"""privsep: run a program confined, with a privileged broker doing what it may not.

Only the names below are public; every other module is internal.
"""

from __future__ import annotations

from privsep.errors import (
    BrokerError,
    ChannelError,
    CommandError,
    CommandNotExecutableError,
    CommandNotFoundError,
    ConfinementError,
    DeniedError,
    LocalProtocolError,
    PolicyError,
    PrivsepError,
    ProtocolError,
    RemoteProtocolError,
)

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "ChannelError",
    "CommandError",
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "ConfinementError",
    "DeniedError",
    "LocalProtocolError",
    "PolicyError",
    "PrivsepError",
    "ProtocolError",
    "RemoteProtocolError",
    "__version__",
]
