"""Why a request failed, as the reply says: the codes the client maps to its exceptions.

Apart from ``framing`` (frame limits, datagram framing) because it is an
``enum``: importing ``enum`` costs about 1 ms, which the channel, imported
by every ``privsep run``, need not pay; the codes are needed only once a
request is answered. ``privsep.protocol`` re-exports :class:`ErrorCode`.
"""

from __future__ import annotations

import enum

__all__ = ["ErrorCode"]


class ErrorCode(enum.StrEnum):
    """Why a request failed; the client maps each code to an exception."""

    #: The frame broke the protocol; the broker closes the channel after this reply.
    INVALID = "invalid"
    #: The policy refused the request.
    DENIED = "denied"
    #: The broker understood the request but cannot do it here (feature missing).
    UNSUPPORTED = "unsupported"
    #: The request named something that does not exist.
    NOT_FOUND = "not_found"
    #: The policy allowed it but the operation failed.
    FAILED = "failed"
    #: A bug in the broker; the message says nothing more on purpose.
    INTERNAL = "internal"
