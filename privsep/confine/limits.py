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
    }


def apply_rlimits(values: dict[int, int]) -> None:
    for which, value in values.items():
        try:
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            raise ConfinementError("limits", f"setrlimit({which}, {value}): {exc}") from None
