"""The signal numbers and calls privsep uses, straight from the interpreter's C module ``_signal``.

Why (issue 16): the ``signal`` module is ``_signal`` plus an ``IntEnum`` for
every number, which it builds when it is imported; that and the ``enum``
import it needs cost about 2 ms of every warm ``privsep run -- /bin/true``.
The calls are the same C functions either way; only what they return
differs: plain ints (``SIG_DFL`` is 0) and sets of ints where ``signal``'s
wrappers give its enums, which compare equal to them. A signal's name
(:func:`name`) imports ``signal`` only when one is printed.

For the type checker the names come from ``signal`` (``_signal`` has no
stubs): the two hold the same objects but for the enums.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from signal import (
        SIG_BLOCK,
        SIG_DFL,
        SIG_IGN,
        SIG_SETMASK,
        SIG_UNBLOCK,
        SIGCHLD,
        SIGCONT,
        SIGHUP,
        SIGINT,
        SIGKILL,
        SIGPIPE,
        SIGQUIT,
        SIGSYS,
        SIGTERM,
        SIGTSTP,
        SIGTTOU,
        SIGWINCH,
        SIGXFSZ,
        getsignal,
        pidfd_send_signal,
        pthread_sigmask,
        set_wakeup_fd,
        signal,
        valid_signals,
    )
else:  # the same names (and the rest of _signal's), at run time
    from _signal import *  # noqa: F403

__all__ = [
    "SIGCHLD",
    "SIGCONT",
    "SIGHUP",
    "SIGINT",
    "SIGKILL",
    "SIGPIPE",
    "SIGQUIT",
    "SIGSYS",
    "SIGTERM",
    "SIGTSTP",
    "SIGTTOU",
    "SIGWINCH",
    "SIGXFSZ",
    "SIG_BLOCK",
    "SIG_DFL",
    "SIG_IGN",
    "SIG_SETMASK",
    "SIG_UNBLOCK",
    "getsignal",
    "name",
    "pidfd_send_signal",
    "pthread_sigmask",
    "set_wakeup_fd",
    "signal",
    "valid_signals",
]


def name(signum: int) -> str:
    """``"SIGTERM"`` for 15; ``"signal N"`` for a number with no name."""
    import signal as named  # noqa: PLC0415 - the enums only when a name is printed

    try:
        return named.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
