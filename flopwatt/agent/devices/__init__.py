"""Device backends (nvml, cpu, sim) behind one interface (:mod:`.base`); :func:`open_backend`
picks one by name."""

from __future__ import annotations

from typing import Any

from flopwatt.agent.devices.base import Backend, BackendUnavailable


def open_backend(name: str, **sim_options: Any) -> Backend:
    """Open the backend ``name``: ``nvml``, ``cpu``, ``sim`` or ``auto`` (nvml when NVML finds
    GPUs, else cpu).

    Raises:
        BackendUnavailable: the named backend cannot run here (the message says why).
        ValueError: unknown backend name or bad sim options.
    """
    if name == "auto":
        try:
            return open_backend("nvml")
        except BackendUnavailable:
            return open_backend("cpu")
    if name == "nvml":
        from flopwatt.agent.devices.nvml import NvmlBackend

        return NvmlBackend.open()
    if name == "cpu":
        from flopwatt.agent.devices.cpu import CpuBackend

        return CpuBackend.open()
    if name == "sim":
        from flopwatt.agent.devices.sim import SimBackend

        return SimBackend.from_options(**sim_options)
    raise ValueError(f"unknown device backend {name!r}; accepted: auto, nvml, cpu, sim")
