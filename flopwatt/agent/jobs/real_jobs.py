"""GEMM and model jobs on real devices (the host CPU, NVIDIA GPUs).

The measurements live in the benchmark modules; until those are wired in, a real device answers
with a clear UNAVAILABLE status rather than anything resembling a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flopwatt.agent.devices.base import Backend, Device
from flopwatt.agent.jobs.runner import JobUnavailableError
from flopwatt.agent.sampler import Sampler
from flopwatt.records import JobResult, JobSpec


def run(
    job_id: str,
    spec: JobSpec,
    devices: Sequence[Device],
    sampler: Sampler,
    backend: Backend,
    options: dict[str, Any],
) -> list[JobResult]:
    """Run a job on real devices.

    Raises:
        JobUnavailableError: always, for now — the benchmark jobs are not available yet.
    """
    raise JobUnavailableError(
        f"{spec.kind} jobs on {backend.name} devices are not available in this build"
    )
