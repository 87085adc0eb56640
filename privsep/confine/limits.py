"""Resource limits, so one child cannot exhaust the machine for everyone else."""

from __future__ import annotations

import resource

from privsep.errors import ConfinementError
from privsep.policy.model import Limits

_MB = 1 << 20


def rlimits(limits: Limits) -> dict[int, int]:
    """The (soft = hard) limits for a policy; computed in the broker, applied in the child."""
    return {
        resource.RLIMIT_NOFILE: limits.open_files,
        resource.RLIMIT_NPROC: limits.processes,
        resource.RLIMIT_AS: limits.address_space_mb * _MB,
        resource.RLIMIT_FSIZE: limits.file_size_mb * _MB,
        resource.RLIMIT_CPU: limits.cpu_seconds,
        resource.RLIMIT_CORE: 0,
        # Not policy knobs, but never inherited from the broker either: a broker
        # allowed real-time scheduling or locked memory must not pass it on.
        resource.RLIMIT_MEMLOCK: 64 * 1024,
        resource.RLIMIT_RTPRIO: 0,
        resource.RLIMIT_NICE: 0,
        resource.RLIMIT_MSGQUEUE: 0,
    }


def apply_rlimits(values: dict[int, int]) -> None:
    for which, value in values.items():
        try:
            hard = resource.getrlimit(which)[1]
            if hard != resource.RLIM_INFINITY and value > hard:
                value = hard  # noqa: PLW2901 - lowering is always allowed; raising needs a privilege
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            raise ConfinementError("limits", f"setrlimit({which}, {value}): {exc}") from None
